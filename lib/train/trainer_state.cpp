// trainer_state.json's parser (train/checkpoint.h): LibTorch-free, so its fuzz target
// (tests/fuzz/trainer_state_fuzz.cpp) links it alone.
#include "absl/strings/str_cat.h"
#include "llmtrain/train/checkpoint.h"
#include "nlohmann/json.hpp"
#include "train/trainer_state_fields.h"

namespace llmtrain::train {

absl::StatusOr<TrainerState> ParseTrainerState(absl::string_view where, absl::string_view json_text) {
  const nlohmann::json j = nlohmann::json::parse(json_text.begin(), json_text.end(), nullptr, /*allow_exceptions=*/false);
  if (!j.is_object()) return absl::DataLossError(absl::StrCat(where, ": expected a JSON object"));
  TrainerState state;
  for (const auto& [key, member, required] : detail::TrainerStateFields()) {
    const auto it = j.find(key);
    if (it == j.end() && !required) continue;
    if (it == j.end()) return absl::DataLossError(absl::StrCat(where, ": \"", key, "\" is missing"));
    if (!it->is_number_integer() || it->get<int64_t>() < 0) {
      return absl::DataLossError(
          absl::StrCat(where, ": \"", key, "\": expected a non-negative integer, found ", it->dump()));
    }
    state.*member = it->get<int64_t>();
  }
  if (state.world_size < 1) return absl::DataLossError(absl::StrCat(where, ": \"world_size\": expected ≥ 1, found 0"));
  if (const auto it = j.find("data_positions"); it != j.end()) {
    const auto bad = [&](const std::string& why) {
      return absl::DataLossError(absl::StrCat(where, ": \"data_positions\": ", why));
    };
    if (!it->is_array() || static_cast<int64_t>(it->size()) != state.world_size) {
      return bad(absl::StrCat("expected ", state.world_size, " [epoch, cursor] pairs (one per process), found ",
                              it->dump()));
    }
    for (const nlohmann::json& p : *it) {
      if (!p.is_array() || p.size() != 2 || !p[0].is_number_integer() || !p[1].is_number_integer() ||
          p[0].get<int64_t>() < 0 || p[1].get<int64_t>() < 0) {
        return bad(absl::StrCat("expected [epoch, cursor] of non-negative integers, found ", p.dump()));
      }
      state.data_positions.push_back({p[0].get<int64_t>(), p[1].get<int64_t>()});
    }
  }
  return state;
}

}  // namespace llmtrain::train
