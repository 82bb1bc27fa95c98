// Memory planning: what one process of a run needs, worked out from the run spec and the model's
// config alone (no weight is read), before anything loads. `llmtrain plan` prints it; the trainer
// (spec::BuildTrainerComponents) refuses a run whose plan exceeds distributed.memory_limit, with
// the plan's figures, before it loads the model.
//
// The plan lists what stays resident from the end of loading to the end of the run (the frozen
// base or this process's shards of it, the embedding, the adapter with its gradients and AdamW
// state, the layers a sharded engine gathers, the runtime), then the phases that add to it:
// loading (the mapped model file and the largest temporary), forward and loss (activations kept
// for backward, the cross-entropy chunk) and backward (a checkpointed layer's recompute and the
// gradient work). The peak is the largest phase. Tensor sizes are exact for the way llmtrain
// stores them; activations follow the decoder's eager math (docs/distributed.md, "Memory plan");
// the runtime is measured (this process's resident memory) or an estimate named in the plan.
//
//   LLMTRAIN_ASSIGN_OR_RETURN(spec::RunSpec run, spec::LoadRunSpec("run.textproto"));
//   spec::MemoryPlanOptions options;
//   options.world_size = 3;
//   LLMTRAIN_ASSIGN_OR_RETURN(spec::MemoryPlan plan, spec::PlanMemory(run, options));
//   std::fputs(plan.ToString().c_str(), stdout);
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "llmtrain/io/hf_config.h"
#include "llmtrain/spec/run_spec.h"

namespace llmtrain::spec {

/// One line of a plan: an amount of memory of one process.
struct MemoryItem {
  std::string name;
  int64_t bytes = 0;
  std::string note;  ///< how it is counted, when that is not obvious from the name
};

/// A phase of the run and what exists at its peak (the resident items are not repeated here,
/// except in the loading phase, which lists everything it holds).
struct MemoryPhase {
  std::string name;
  std::vector<MemoryItem> items;
  bool includes_resident = true;  ///< false for loading: its items are all it holds
  int64_t item_bytes() const;
};

struct MemoryPlanOptions {
  /// Processes of the run; 0: distributed.world_size, else 1 for the single engine, else the
  /// launcher's WORLD_SIZE (dist::DistEnvFromEnvironment), else 1.
  int world_size = 0;
  /// Processes sharing this machine's memory (divides the host's memory on a CPU run); 0: the
  /// launcher's LOCAL_WORLD_SIZE, else world_size.
  int local_world_size = 0;
  /// The device the run trains on ("cpu", "cuda", "cuda:N"); empty: model.device.
  std::string device;
  /// The model's config, for planning a model whose files are not on this machine (what
  /// `llmtrain plan --model-config` reads). Unset: read from model.path.
  std::optional<io::HfConfig> config;
  /// Bytes of the model's files (loading maps them); -1: their size on disk (0 without them).
  int64_t file_bytes = -1;
  /// This process's memory outside the run's tensors (code, libraries, data, tokenizer); -1: the
  /// estimate for the device (kCpuRuntimeBytes, kCudaRuntimeBytes).
  int64_t runtime_bytes = -1;
  std::string runtime_note;  ///< where runtime_bytes comes from, for the table
};

/// The estimates used when MemoryPlanOptions::runtime_bytes is not given. CPU: the resident
/// memory of a trainer process outside its tensors (LibTorch's and llmtrain's code and data, the
/// OpenMP pool, a tokenizer of 262k entries), measured on the 270M run (docs/distributed.md).
/// CUDA: the CUDA context with LibTorch's kernels loaded lazily and cuBLAS/cuBLASLt workspaces.
inline constexpr int64_t kCpuRuntimeBytes = int64_t{560} << 20;
inline constexpr int64_t kCudaRuntimeBytes = int64_t{768} << 20;
/// What a CPU trainer process's own memory grows by once it trains, over what it holds before the
/// model loads (OpenMP and autograd threads, LibTorch kernels paged in, allocator caches):
/// measured on the 270M run (docs/distributed.md).
inline constexpr int64_t kTrainingRuntimeGrowthBytes = int64_t{96} << 20;

struct MemoryPlan {
  std::string model;    ///< "gemma3_text, 18 layers, hidden 640, vocab 262144, 268.1 M parameters"
  std::string run;      ///< engine, processes, device, dtypes, LoRA, batch, checkpointing
  std::string device;   ///< "cpu" or "cuda…": whose memory the peak is
  int world_size = 1;
  int local_world_size = 1;
  std::vector<MemoryItem> resident;
  std::vector<MemoryPhase> phases;
  /// Activations kept for backward with activation checkpointing the other way (for the table).
  MemoryItem other_checkpointing;
  /// Shards per process / whole model, for the sharded parts (1 when nothing is sharded).
  int64_t trainable_parameters = 0;

  int64_t resident_bytes() const;
  int64_t PhaseBytes(const MemoryPhase& phase) const;
  /// The largest phase: the process's peak memory on `device`.
  int64_t peak_bytes() const;
  const MemoryPhase& peak_phase() const;
  /// The table `llmtrain plan` prints (MiB, one item per line, every phase's total, the peak).
  std::string ToString() const;
};

/// The plan of `spec` (filled with defaults; the fields it uses are validated by
/// ValidateRunSpec). Errors: the model's config cannot be read (names the path), or an option is
/// out of range.
absl::StatusOr<MemoryPlan> PlanMemory(const RunSpec& spec, const MemoryPlanOptions& options = {});

/// "24GiB", "24 GiB", "1.5GB", "512MiB", "4096" (bytes), "8K"…: binary units for KiB/MiB/GiB/TiB
/// and K/M/G/T, decimal for KB/MB/GB/TB. Errors name the text.
absl::StatusOr<int64_t> ParseByteSize(absl::string_view text);

/// "640.0 MiB", "1.61 GiB".
std::string FormatBytes(int64_t bytes);

/// The host memory this machine can still give: MemAvailable of /proc/meminfo, or less under a
/// cgroup v2 limit (memory.max − memory.current). 0 when neither can be read.
int64_t HostMemoryAvailable();

/// This process's resident memory now (VmRSS of /proc/self/status); 0 when unknown.
int64_t CurrentRssBytes();

/// OK when the plan's peak fits `limit_bytes`; otherwise ResourceExhausted with the plan's table,
/// the limit and where it comes from (`limit_source`), and what would make it fit.
absl::Status CheckPlanFits(const MemoryPlan& plan, int64_t limit_bytes, absl::string_view limit_source);

}  // namespace llmtrain::spec
