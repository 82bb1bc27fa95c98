// Checkpoint folders and trainer_state.json (train/checkpoint.h).
#include "llmtrain/train/checkpoint.h"

#include "train/trainer_state_fields.h"

#include <torch/headeronly/version.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "llmtrain/core/atomic_file.h"
#include "llmtrain/core/status.h"
#include "nlohmann/json.hpp"

namespace llmtrain::train {
namespace {

namespace fs = std::filesystem;

}  // namespace

std::string TrainerStateJson(const TrainerState& state) {
  nlohmann::json j = nlohmann::json::object();
  for (const auto& field : detail::TrainerStateFields()) j[field.key] = state.*field.member;
  if (!state.data_positions.empty()) {
    nlohmann::json positions = nlohmann::json::array();
    for (const TrainerState::DataPosition& p : state.data_positions) positions.push_back({p.epoch, p.cursor});
    j["data_positions"] = positions;
  }
  j["versions"] = {{"llmtrain", "0.1.0"},
                   {"torch", absl::StrCat(TORCH_VERSION_MAJOR, ".", TORCH_VERSION_MINOR, ".", TORCH_VERSION_PATCH)}};
  return j.dump(2) + "\n";
}

std::string CheckpointDir(absl::string_view run_dir, int64_t step) {
  return absl::StrFormat("%s/checkpoints/step-%06d", run_dir, step);
}

std::vector<CheckpointEntry> CompleteCheckpoints(absl::string_view run_dir) {
  std::vector<CheckpointEntry> out;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(absl::StrCat(run_dir, "/checkpoints"), ec)) {
    const std::string name = entry.path().filename().string();
    int64_t step = 0;
    if (name.size() == 11 && absl::StartsWith(name, "step-") && absl::SimpleAtoi(name.substr(5), &step)) {
      out.push_back({step, entry.path().string()});
    }
  }
  std::sort(out.begin(), out.end(), [](const CheckpointEntry& a, const CheckpointEntry& b) { return a.step < b.step; });
  return out;
}

void RemovePartialCheckpoints(absl::string_view run_dir) {
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(absl::StrCat(run_dir, "/checkpoints"), ec)) {
    if (absl::StrContains(entry.path().filename().string(), ".tmp-")) fs::remove_all(entry.path(), ec);
  }
}

absl::Status CommitCheckpoint(absl::string_view run_dir, int64_t step, int64_t keep_last,
                              const std::function<absl::Status(const std::string& dir)>& fill) {
  const std::string final_dir = CheckpointDir(run_dir, step);
  if (IsDirectory(final_dir)) return absl::OkStatus();
  LLMTRAIN_RETURN_IF_ERROR(MakeDirectories(absl::StrCat(run_dir, "/checkpoints")));
  const std::string tmp = absl::StrCat(final_dir, ".tmp-", getpid());
  std::error_code ec;
  fs::remove_all(tmp, ec);
  LLMTRAIN_RETURN_IF_ERROR(MakeDirectories(tmp));
  LLMTRAIN_RETURN_IF_ERROR(fill(tmp));
  // The folder appears under its final name only when everything in it is written.
  fs::rename(tmp, final_dir, ec);
  if (ec) return absl::InternalError(absl::StrCat(final_dir, ": ", ec.message()));
  const std::vector<CheckpointEntry> all = CompleteCheckpoints(run_dir);
  for (size_t i = 0; i + static_cast<size_t>(std::max<int64_t>(keep_last, 1)) < all.size(); ++i) {
    // Out of sight first (one rename), then deleted: a kill mid-delete leaves only a .tmp- folder.
    const std::string doomed = absl::StrCat(all[i].dir, ".tmp-", getpid(), "-old");
    fs::rename(all[i].dir, doomed, ec);
    if (!ec) fs::remove_all(doomed, ec);
  }
  return absl::OkStatus();
}

}  // namespace llmtrain::train
