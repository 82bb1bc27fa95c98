// RMSNorm as transformers computes it for the families llmtrain runs (Zhang & Sennrich 2019,
// "Root Mean Square Layer Normalization"):
//   x̂ = x · rsqrt(mean(x², -1) + eps), computed in float32
//   kWeight        (Qwen2RMSNorm, Llama style):  y = w · cast(x̂)       (cast first, then times w)
//   kOnePlusWeight (Gemma2RMSNorm, Gemma3RMSNorm): y = cast(x̂ · (1 + w)) (weight in float32)
//
//   kernels::RmsNormOptions options;
//   options.eps = config.rms_norm_eps;
//   options.scale = kernels::NormScale::kOnePlusWeight;
//   at::Tensor y = kernels::RmsNorm(x, w, options);   // x (…, C), w (C)
#pragma once

#include <ATen/core/Tensor.h>

#include "absl/status/status.h"

namespace llmtrain::kernels {

enum class NormScale {
  kWeight,         ///< y = w · cast(x̂): Qwen2/Qwen3 (and Llama)
  kOnePlusWeight,  ///< y = cast(x̂ · (1 + w)) in float32: Gemma 2 and Gemma 3
};

struct RmsNormOptions {
  double eps = 1e-6;                   ///< config.rms_norm_eps
  NormScale scale = NormScale::kWeight;
};

/// InvalidArgument naming the field when eps is negative or not finite.
absl::Status Validate(const RmsNormOptions& options);

/// RMSNorm of x over its last dimension. x: (…, C) float32/bfloat16/float16; w: (C), any float
/// dtype; returns x's dtype and shape. Differentiable in x and w (ATen ops, transformers' order
/// of operations, so results equal transformers' on the CPU). On CUDA without autograd (no grad
/// mode, or neither input requires grad) a fused kernel computes it: one pass over x, the sum of
/// squares in float32 (a different summation order: it agrees with the ATen path to float32
/// rounding). Throws c10::Error on mismatched sizes or devices.
at::Tensor RmsNorm(const at::Tensor& x, const at::Tensor& w, const RmsNormOptions& options = {});

namespace detail {
/// The ATen-op path (the CPU oracle), on any device.
at::Tensor RmsNormComposite(const at::Tensor& x, const at::Tensor& w, const RmsNormOptions& options);
}  // namespace detail

}  // namespace llmtrain::kernels
