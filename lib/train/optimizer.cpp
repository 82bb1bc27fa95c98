// AdamW, the LR schedules and gradient clipping (train/optimizer.h). Each follows the PyTorch /
// transformers source it names, in the same order of operations and with the same scalar math in
// double, so results are bit-identical to theirs on the same inputs.
#include "llmtrain/train/optimizer.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <ATen/record_function.h>

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

void AdamW::Step(double lr) {
  RECORD_FUNCTION("llmtrain::adamw", std::vector<c10::IValue>());
  at::NoGradGuard no_grad;
  ++step_;
  const double beta1 = options_.beta1, beta2 = options_.beta2;
  // torch/optim/adam.py _single_tensor_adam (decoupled weight decay, no amsgrad).
  const double bias_correction1 = 1 - std::pow(beta1, static_cast<double>(step_));
  const double bias_correction2 = 1 - std::pow(beta2, static_cast<double>(step_));
  const double step_size = lr / bias_correction1;
  const double bias_correction2_sqrt = std::pow(bias_correction2, 0.5);
  for (size_t i = 0; i < params_.size(); ++i) {
    at::Tensor p = params_[i];
    if (!p.grad().defined()) continue;
    at::Tensor param = master_[i].defined() ? master_[i] : p;
    const at::Tensor grad = p.grad().to(at::kFloat);
    if (options_.weight_decay != 0) param.mul_(1 - lr * options_.weight_decay);
    exp_avg_[i].lerp_(grad, 1 - beta1);
    exp_avg_sq_[i].mul_(beta2).addcmul_(grad, grad, 1 - beta2);
    const at::Tensor denom = (exp_avg_sq_[i].sqrt() / bias_correction2_sqrt).add_(options_.eps);
    param.addcdiv_(exp_avg_[i], denom, -step_size);
    if (master_[i].defined()) p.copy_(param);
  }
}

std::vector<at::Tensor> AdamW::StateTensors() const {
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
