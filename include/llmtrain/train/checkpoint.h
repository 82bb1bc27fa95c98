// Checkpoints of a training run, written so that a kill at any moment leaves the last complete
// one intact: each is written under a temporary name and renamed into place when complete, and
// older ones are renamed out of sight before they are deleted.
//
//   run_dir/checkpoints/step-000120/   adapter/ (PEFT format), optimizer.safetensors,
//                                      trainer_state.json, and the run's files (spec.textproto)
//
//   LLMTRAIN_RETURN_IF_ERROR(train::CommitCheckpoint(dir, step, keep_last, [&](const std::string& tmp) {
//     return WriteEverything(tmp);
//   }));
//   std::vector<train::CheckpointEntry> all = train::CompleteCheckpoints(dir);   // oldest first
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace llmtrain::train {

/// trainer_state.json: where the loop stands. Every field is required on load.
struct TrainerState {
  int64_t step = 0;              ///< optimizer steps done
  int64_t adam_step = 0;         ///< AdamW's step count (bias correction)
  int64_t data_epoch = 0;        ///< the loader's position (data::Sampler::Position)
  int64_t data_cursor = 0;       ///< records of the epoch's order consumed by all processes
  int64_t nonfinite_in_row = 0;  ///< skipped steps in a row so far
  int64_t skipped_total = 0;
  int64_t total_steps = 0;       ///< the run's length when the checkpoint was written
  int64_t world_size = 1;        ///< processes of the run that wrote it (absent before: 1)
  /// Micro-batches per optimizer step over all processes (world size × accumulation); a resumed
  /// run must keep it. Absent in older checkpoints: 0, not checked.
  int64_t global_micro_batches = 0;
  /// Each process's own loader position, in rank order ("data_positions": [[epoch, cursor], ...]).
  /// With packing, a token budget or skipped examples the processes consume different numbers of
  /// records: such a run resumes exactly at the same world size only. Absent in older
  /// checkpoints: empty (every process was taken to stand where process 0 stood).
  struct DataPosition {
    int64_t epoch = 0;
    int64_t cursor = 0;  ///< slots of that process's share of the epoch
    bool operator==(const DataPosition&) const = default;
  };
  std::vector<DataPosition> data_positions;
};

/// trainer_state.json's text: the fields above, plus the llmtrain and torch versions (informative).
std::string TrainerStateJson(const TrainerState& state);

/// Parses trainer_state.json. DataLoss naming `where` and the key when the text is not a JSON
/// object, a key is missing, a value is not a non-negative integer, or "data_positions" is not
/// world_size pairs of them.
absl::StatusOr<TrainerState> ParseTrainerState(absl::string_view where, absl::string_view json_text);

struct CheckpointEntry {
  int64_t step = 0;
  std::string dir;
};

/// The checkpoint folder of `step`: run_dir/checkpoints/step-%06d.
std::string CheckpointDir(absl::string_view run_dir, int64_t step);

/// Complete checkpoints (folders named step-NNNNNN), oldest first.
std::vector<CheckpointEntry> CompleteCheckpoints(absl::string_view run_dir);

/// Removes what interrupted checkpoint writes left (folders with ".tmp-" in their names); they
/// are never under a final name and never read.
void RemovePartialCheckpoints(absl::string_view run_dir);

/// Writes the checkpoint of `step`: `fill` writes everything into a fresh temporary folder, which
/// is then renamed to CheckpointDir(run_dir, step); then all but the newest `keep_last` complete
/// checkpoints are removed. Does nothing when that checkpoint exists already.
absl::Status CommitCheckpoint(absl::string_view run_dir, int64_t step, int64_t keep_last,
                              const std::function<absl::Status(const std::string& dir)>& fill);

}  // namespace llmtrain::train
