// The fields of trainer_state.json (internal to lib/train/): one table, read by the writer
// (checkpoint.cpp) and the parser (trainer_state.cpp).
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

#include "llmtrain/train/checkpoint.h"

namespace llmtrain::train::detail {

struct TrainerStateField {
  const char* key;
  int64_t TrainerState::*member;
  bool required = true;  ///< false: added later; an older file without it keeps the default
};

/// TrainerState's fields in file order, with their members.
inline const std::vector<TrainerStateField>& TrainerStateFields() {
  static const auto* fields = new std::vector<TrainerStateField>{
      {"step", &TrainerState::step},
      {"adam_step", &TrainerState::adam_step},
      {"data_epoch", &TrainerState::data_epoch},
      {"data_cursor", &TrainerState::data_cursor},
      {"nonfinite_in_row", &TrainerState::nonfinite_in_row},
      {"skipped_total", &TrainerState::skipped_total},
      {"total_steps", &TrainerState::total_steps},
      {"world_size", &TrainerState::world_size, false},
      {"global_micro_batches", &TrainerState::global_micro_batches, false},
  };
  return *fields;
}

}  // namespace llmtrain::train::detail
