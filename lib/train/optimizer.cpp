// AdamW, the LR schedules and gradient clipping (train/optimizer.h). Each follows the PyTorch /
// transformers source it names, in the same order of operations and with the same scalar math in
// double, so results are bit-identical to theirs on the same inputs.
#include "llmtrain/train/optimizer.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <ATen/record_function.h>

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace llmtrain::train {

AdamW::AdamW(std::vector<at::Tensor> params, const AdamWOptions& options)
    : params_(std::move(params)), options_(options) {
  for (const at::Tensor& p : params_) {
    exp_avg_.push_back(at::zeros(p.sizes(), p.options().dtype(at::kFloat)));
    exp_avg_sq_.push_back(at::zeros(p.sizes(), p.options().dtype(at::kFloat)));
    master_.push_back(p.scalar_type() == at::kFloat ? at::Tensor() : p.detach().to(at::kFloat));
  }
}

namespace {

// The parameters' elements [begin, end) of their flattened concatenation, as float32 on
// `device`; `pick(i)` gives the tensor that stands for parameter i (any device).
template <typename Pick>
at::Tensor FlatSlice(const std::vector<at::Tensor>& params, int64_t begin, int64_t end, c10::Device device, Pick pick) {
  std::vector<at::Tensor> parts;
  int64_t offset = 0;
  for (size_t i = 0; i < params.size(); ++i) {
    const int64_t n = params[i].numel();
    const int64_t lo = std::max(begin, offset), hi = std::min(end, offset + n);
    if (lo < hi) {
      parts.push_back(pick(i).detach().reshape({-1}).slice(0, lo - offset, hi - offset).to(device, at::kFloat));
    }
    offset += n;
  }
  const at::TensorOptions options = at::TensorOptions().dtype(at::kFloat).device(device);
  return parts.empty() ? at::empty({0}, options) : at::cat(parts).contiguous();
}

}  // namespace

int64_t AdamW::numel() const {
  int64_t n = 0;
  for (const at::Tensor& p : params_) n += p.numel();
  return n;
}

absl::Status AdamW::ShardState(int64_t begin, int64_t end, std::optional<c10::Device> state_device) {
  if (step_ != 0) return absl::FailedPreconditionError("AdamW::ShardState: after the first step");
  if (begin < 0 || end < begin || end > numel()) {
    return absl::InvalidArgumentError(absl::StrCat("AdamW::ShardState: slice [", begin, ", ", end, ") of ", numel(),
                                                   " elements"));
  }
  if (params_.empty()) return absl::FailedPreconditionError("AdamW::ShardState: no parameters");
  at::NoGradGuard no_grad;
  sharded_ = true;
  begin_ = begin;
  end_ = end;
  const c10::Device device = state_device ? *state_device : params_.front().device();
  master_ = {FlatSlice(params_, begin, end, device,
                       [&](size_t i) { return master_[i].defined() ? master_[i] : params_[i]; })};
  exp_avg_ = {at::zeros_like(master_[0])};
  exp_avg_sq_ = {at::zeros_like(master_[0])};
  return absl::OkStatus();
}

namespace {

// One AdamW update of `param` in place from float32 `grad` at step `step` (1-based):
// torch/optim/adam.py _single_tensor_adam (decoupled weight decay, no amsgrad), with the scalar
// math in double. Step and StepShard both call it, so a slice gets each element's arithmetic.
void AdamWUpdate(at::Tensor& param, at::Tensor& exp_avg, at::Tensor& exp_avg_sq, const at::Tensor& grad,
                 const AdamWOptions& o, double lr, int64_t step) {
  const double bias_correction1 = 1 - std::pow(o.beta1, static_cast<double>(step));
  const double bias_correction2 = 1 - std::pow(o.beta2, static_cast<double>(step));
  const double step_size = lr / bias_correction1;
  const double bias_correction2_sqrt = std::pow(bias_correction2, 0.5);
  if (o.weight_decay != 0) param.mul_(1 - lr * o.weight_decay);
  exp_avg.lerp_(grad, 1 - o.beta1);
  exp_avg_sq.mul_(o.beta2).addcmul_(grad, grad, 1 - o.beta2);
  const at::Tensor denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(o.eps);
  param.addcdiv_(exp_avg, denom, -step_size);
}

}  // namespace

const at::Tensor& AdamW::StepShard(double lr, const at::Tensor& grad) {
  TORCH_CHECK(sharded_, "AdamW::StepShard: the optimizer is not sharded (ShardState)");
  TORCH_CHECK(grad.scalar_type() == at::kFloat && grad.numel() == end_ - begin_,
              "AdamW::StepShard: expected a float32 gradient of ", end_ - begin_, " elements, got ", grad.numel());
  RECORD_FUNCTION("llmtrain::adamw", std::vector<c10::IValue>());
  at::NoGradGuard no_grad;
  ++step_;
  AdamWUpdate(master_[0], exp_avg_[0], exp_avg_sq_[0], grad.reshape({-1}), options_, lr, step_);
  return master_[0];
}

void AdamW::Step(double lr) {
  TORCH_CHECK(!sharded_, "AdamW::Step: a sharded optimizer steps with StepShard");
  RECORD_FUNCTION("llmtrain::adamw", std::vector<c10::IValue>());
  at::NoGradGuard no_grad;
  ++step_;
  for (size_t i = 0; i < params_.size(); ++i) {
    at::Tensor p = params_[i];
    if (!p.grad().defined()) continue;
    at::Tensor param = master_[i].defined() ? master_[i] : p;
    AdamWUpdate(param, exp_avg_[i], exp_avg_sq_[i], p.grad().to(at::kFloat), options_, lr, step_);
    if (master_[i].defined()) p.copy_(param);
  }
}

std::vector<at::Tensor> AdamW::StateTensors() const {
  TORCH_CHECK(!sharded_, "AdamW::StateTensors: a sharded optimizer holds a slice (ShardStateTensors)");
  std::vector<at::Tensor> out;
  for (size_t i = 0; i < params_.size(); ++i) {
    out.push_back(exp_avg_[i]);
    out.push_back(exp_avg_sq_[i]);
    out.push_back(master_[i].defined() ? master_[i] : at::empty({0}, at::kFloat));
  }
  return out;
}

absl::Status AdamW::LoadState(const std::vector<at::Tensor>& tensors, int64_t step) {
  if (tensors.size() != 3 * params_.size()) {
    return absl::InvalidArgumentError(absl::StrCat("optimizer state: ", tensors.size(), " tensors for ",
                                                   params_.size(), " parameters (expected 3 each)"));
  }
  at::NoGradGuard no_grad;
  if (sharded_) {
    for (size_t i = 0; i < params_.size(); ++i) {
      for (int k = 0; k < 2; ++k) {
        if (tensors[3 * i + k].sizes() != params_[i].sizes()) {
          return absl::InvalidArgumentError(absl::StrCat("optimizer state: tensor ", 3 * i + k,
                                                         " does not have the shape of parameter ", i));
        }
      }
      if (params_[i].scalar_type() != at::kFloat && tensors[3 * i + 2].sizes() != params_[i].sizes()) {
        return absl::InvalidArgumentError(absl::StrCat("optimizer state: no master copy for parameter ", i));
      }
    }
    const c10::Device device = master_[0].device();
    exp_avg_[0].copy_(FlatSlice(params_, begin_, end_, device, [&](size_t i) { return tensors[3 * i]; }));
    exp_avg_sq_[0].copy_(FlatSlice(params_, begin_, end_, device, [&](size_t i) { return tensors[3 * i + 1]; }));
    master_[0].copy_(FlatSlice(params_, begin_, end_, device, [&](size_t i) {
      return params_[i].scalar_type() == at::kFloat ? params_[i] : tensors[3 * i + 2];
    }));
    step_ = step;
    return absl::OkStatus();
  }
  for (size_t i = 0; i < params_.size(); ++i) {
    for (int k = 0; k < 2; ++k) {
      const at::Tensor& t = tensors[3 * i + k];
      if (t.sizes() != params_[i].sizes()) {
        return absl::InvalidArgumentError(absl::StrCat("optimizer state: tensor ", 3 * i + k,
                                                       " does not have the shape of parameter ", i));
      }
    }
    exp_avg_[i].copy_(tensors[3 * i]);
    exp_avg_sq_[i].copy_(tensors[3 * i + 1]);
    if (master_[i].defined()) {
      if (tensors[3 * i + 2].sizes() != params_[i].sizes()) {
        return absl::InvalidArgumentError(absl::StrCat("optimizer state: no master copy for parameter ", i));
      }
      master_[i].copy_(tensors[3 * i + 2]);
    }
  }
  step_ = step;
  return absl::OkStatus();
}

absl::StatusOr<ScheduleKind> ParseScheduleKind(absl::string_view name) {
  if (name == "linear") return ScheduleKind::kLinear;
  if (name == "cosine") return ScheduleKind::kCosine;
  if (name == "constant") return ScheduleKind::kConstant;
  return absl::InvalidArgumentError(absl::StrCat("lr_scheduler: \"", name, "\" is not linear, cosine or constant"));
}

LrSchedule::LrSchedule(ScheduleKind kind, int64_t warmup_steps, int64_t total_steps)
    : kind_(kind), warmup_(warmup_steps), total_(total_steps) {}

double LrSchedule::Factor(int64_t step) const {
  // transformers/optimization.py _get_*_schedule_with_warmup_lr_lambda.
  if (step < warmup_) {
    return static_cast<double>(step) / static_cast<double>(std::max<int64_t>(1, warmup_));
  }
  switch (kind_) {
    case ScheduleKind::kConstant:
      return 1.0;
    case ScheduleKind::kLinear:
      return std::max(0.0, static_cast<double>(total_ - step) /
                               static_cast<double>(std::max<int64_t>(1, total_ - warmup_)));
    case ScheduleKind::kCosine: {
      const double progress = static_cast<double>(step - warmup_) /
                              static_cast<double>(std::max<int64_t>(1, total_ - warmup_));
      return std::max(0.0, 0.5 * (1.0 + std::cos(M_PI * 0.5 * 2.0 * progress)));
    }
  }
  return 1.0;
}

double ClipGradNorm(const std::vector<at::Tensor>& params, double max_norm) {
  // torch/nn/utils/clip_grad.py: the norm of the per-tensor norms, then grads × min(1,
  // max_norm / (norm + 1e-6)) as a float32 tensor.
  at::NoGradGuard no_grad;
  std::vector<at::Tensor> norms;
  std::vector<at::Tensor> grads;
  for (const at::Tensor& p : params) {
    if (!p.grad().defined()) continue;
    grads.push_back(p.grad());
    norms.push_back(at::linalg_vector_norm(p.grad(), 2));
  }
  if (norms.empty()) return 0.0;
  const at::Tensor total = at::linalg_vector_norm(at::stack(norms), 2);
  if (max_norm > 0) {
    // Python's `max_norm / tensor` is tensor.reciprocal() * max_norm.
    const at::Tensor coef = at::clamp((total + 1e-6).reciprocal() * max_norm, c10::nullopt, 1.0);
    for (at::Tensor& g : grads) g.mul_(coef);
  }
  return total.item<double>();
}

absl::Status Validate(const AdamWOptions& o) {
  std::vector<std::string> errors;
  if (!(o.lr > 0) || !std::isfinite(o.lr)) errors.push_back(absl::StrCat("AdamWOptions.lr: expected > 0, found ", o.lr));
  if (!(o.beta1 >= 0 && o.beta1 < 1)) errors.push_back(absl::StrCat("AdamWOptions.beta1: expected [0, 1), found ", o.beta1));
  if (!(o.beta2 >= 0 && o.beta2 < 1)) errors.push_back(absl::StrCat("AdamWOptions.beta2: expected [0, 1), found ", o.beta2));
  if (!(o.eps > 0)) errors.push_back(absl::StrCat("AdamWOptions.eps: expected > 0, found ", o.eps));
  if (!(o.weight_decay >= 0)) {
    errors.push_back(absl::StrCat("AdamWOptions.weight_decay: expected ≥ 0, found ", o.weight_decay));
  }
  if (errors.empty()) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrJoin(errors, "\n"));
}

}  // namespace llmtrain::train
