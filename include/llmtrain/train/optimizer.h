// The optimizer side of training: AdamW with float32 state, transformers' learning-rate schedules,
// and gradient clipping by global norm, each computing what PyTorch / transformers compute, op for
// op (torch.optim.AdamW's single-tensor CPU path, LambdaLR over get_*_schedule_with_warmup,
// torch.nn.utils.clip_grad_norm_), so a run matches theirs number for number.
//
//   train::AdamW adam(params, {.lr = 2e-4, .weight_decay = 0.01});
//   train::LrSchedule schedule(train::ScheduleKind::kCosine, /*warmup=*/10, /*total=*/300);
//   double norm = train::ClipGradNorm(params, 1.0);
//   adam.Step(2e-4 * schedule.Factor(step));
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include <ATen/core/Tensor.h>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace llmtrain::train {

struct AdamWOptions {
  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.01;  ///< decoupled: p ← p · (1 − lr · wd) before the Adam update
};

/// InvalidArgument naming the field: lr ≤ 0, a beta outside [0, 1), eps ≤ 0, weight_decay < 0.
absl::Status Validate(const AdamWOptions& options);

/// AdamW over tensors that require grad. The moments are float32 whatever the parameter dtype;
/// a bf16 parameter is updated through a float32 copy of itself (the master copy) and rounded
/// once per step.
class AdamW {
 public:
  AdamW(std::vector<at::Tensor> params, const AdamWOptions& options);

  /// One update with learning rate `lr` from each parameter's .grad (parameters without a
  /// gradient are skipped, as torch does). Increments the step count.
  void Step(double lr);
  int64_t step() const { return step_; }
  const AdamWOptions& options() const { return options_; }
  /// The tensors it updates, in the order given.
  const std::vector<at::Tensor>& params() const { return params_; }

  /// State for checkpoints: per parameter exp_avg, exp_avg_sq (and the master copy of bf16
  /// parameters), and the step count. Not for a sharded optimizer (ShardStateTensors).
  std::vector<at::Tensor> StateTensors() const;
  /// Restores what StateTensors returned (same parameters, same order). Errors name the mismatch.
  /// A sharded optimizer takes its slice of them (its values: the master copies of bf16
  /// parameters, the parameters' current values for float32 ones).
  absl::Status LoadState(const std::vector<at::Tensor>& tensors, int64_t step);

  /// ZeRO's sharded optimizer state: keep the state of elements [begin, end) of the parameters
  /// flattened in order (each parameter's elements, one after the other) and free the rest. The
  /// slice's float32 values start from the parameters' values. Then StepShard updates the slice
  /// from the slice's gradient (summed over processes) with the same arithmetic as Step, element
  /// by element, and the caller writes the values back into the parameters of every process.
  /// Refused after the first step, or for a slice outside [0, numel()].
  /// The state lives on `state_device` (the CPU for offloading), else on the parameters' device.
  absl::Status ShardState(int64_t begin, int64_t end, std::optional<c10::Device> state_device = std::nullopt);
  bool sharded() const { return sharded_; }
  int64_t shard_begin() const { return begin_; }
  int64_t shard_end() const { return end_; }
  /// Elements of all the parameters.
  int64_t numel() const;
  /// One update of the slice from `grad` (float32, shard_end() − shard_begin() elements, on the
  /// state's device); returns the slice's updated float32 values. Increments the step count.
  const at::Tensor& StepShard(double lr, const at::Tensor& grad);
  /// The slice's exp_avg, exp_avg_sq and float32 values (for the gather of a checkpoint).
  std::vector<at::Tensor> ShardStateTensors() const { return {exp_avg_[0], exp_avg_sq_[0], master_[0]}; }

 private:
  std::vector<at::Tensor> params_;
  // Per parameter; when sharded, one flat tensor each: the slice's moments and values.
  std::vector<at::Tensor> exp_avg_, exp_avg_sq_, master_;
  AdamWOptions options_;
  int64_t step_ = 0;
  bool sharded_ = false;
  int64_t begin_ = 0, end_ = 0;
};

enum class ScheduleKind { kLinear, kCosine, kConstant };
absl::StatusOr<ScheduleKind> ParseScheduleKind(absl::string_view name);  ///< linear, cosine, constant

/// transformers' get_{linear,cosine,constant}_schedule_with_warmup as a factor of the peak
/// learning rate; Factor(s) is what LambdaLR multiplies the base lr by at optimizer step s (0-based).
class LrSchedule {
 public:
  LrSchedule(ScheduleKind kind, int64_t warmup_steps, int64_t total_steps);
  double Factor(int64_t step) const;

 private:
  ScheduleKind kind_;
  int64_t warmup_, total_;
};

/// Scales the gradients so their global L2 norm is at most max_norm (no-op when max_norm ≤ 0, and
/// the norm is still computed). Returns the norm before clipping (+inf / NaN when a gradient is
/// not finite: the caller skips that step).
double ClipGradNorm(const std::vector<at::Tensor>& params, double max_norm);

}  // namespace llmtrain::train
