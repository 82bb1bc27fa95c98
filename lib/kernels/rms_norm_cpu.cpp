// RMSNorm in ATen ops, in transformers' order of operations: the CPU path and the oracle the CUDA
// kernel is compared with (kernels/rms_norm.h).
#include <ATen/ATen.h>

#include "llmtrain/kernels/rms_norm.h"

namespace llmtrain::kernels::detail {

at::Tensor RmsNormComposite(const at::Tensor& x, const at::Tensor& w, const RmsNormOptions& options) {
  // float32 as transformers computes it (float64 inputs stay float64, for gradient checks).
  const c10::ScalarType compute = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const at::Tensor xf = x.to(compute);
  const at::Tensor normed = xf * at::rsqrt(xf.pow(2).mean(-1, /*keepdim=*/true) + options.eps);
  if (options.scale == NormScale::kOnePlusWeight) {
    // Gemma3RMSNorm: (1 + w) in float32, one cast at the end.
    return (normed * (1.0 + w.to(compute))).to(x.scalar_type());
  }
  // Qwen2RMSNorm: cast to the input dtype, then times w.
  return w * normed.to(x.scalar_type());
}

}  // namespace llmtrain::kernels::detail
