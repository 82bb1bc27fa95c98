// RmsNorm front end (kernels/rms_norm.h): checks and routing; the arithmetic is in
// rms_norm_cpu.cpp (ATen ops, the oracle) and rms_norm.cu (the fused CUDA forward).
#include "llmtrain/kernels/rms_norm.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <ATen/record_function.h>

#include <cmath>

#include "absl/strings/str_cat.h"

#if LLMTRAIN_WITH_CUDA
#include <c10/cuda/CUDAStream.h>

#include "kernels/kernels_cuda.h"
#endif

namespace llmtrain::kernels {

absl::Status Validate(const RmsNormOptions& options) {
  if (!(options.eps >= 0.0) || !std::isfinite(options.eps)) {
    return absl::InvalidArgumentError(absl::StrCat("RmsNormOptions.eps: expected a finite value ≥ 0, found ", options.eps));
  }
  return absl::OkStatus();
}

#if LLMTRAIN_WITH_CUDA
namespace {

int CudaDtypeOf(c10::ScalarType t) {
  return t == at::kFloat ? detail::kCudaF32 : t == at::kBFloat16 ? detail::kCudaBf16 : detail::kCudaF16;
}

bool IsCudaFloat(c10::ScalarType t) { return t == at::kFloat || t == at::kBFloat16 || t == at::kHalf; }

}  // namespace
#endif

at::Tensor RmsNorm(const at::Tensor& x, const at::Tensor& w, const RmsNormOptions& options) {
  RECORD_FUNCTION("llmtrain::rms_norm", std::vector<c10::IValue>());
  TORCH_CHECK(x.dim() >= 1 && w.dim() == 1 && x.size(-1) == w.size(0), "RmsNorm: x has ", x.size(-1),
              " features, w has shape ", w.sizes());
  TORCH_CHECK(x.device() == w.device(), "RmsNorm: x is on ", x.device(), ", w on ", w.device());
#if LLMTRAIN_WITH_CUDA
  const bool autograd = at::GradMode::is_enabled() && (x.requires_grad() || w.requires_grad());
  // kWeight multiplies in the promoted dtype of w and x: the kernel covers the common case of one dtype.
  const bool dtypes_ok = IsCudaFloat(x.scalar_type()) && IsCudaFloat(w.scalar_type()) &&
                         (options.scale == NormScale::kOnePlusWeight || w.scalar_type() == x.scalar_type());
  if (x.is_cuda() && !autograd && dtypes_ok && x.numel() > 0) {
    const at::Tensor xc = x.contiguous(), wc = w.contiguous();
    at::Tensor y = at::empty_like(xc);
    const std::string error = detail::RmsNormCuda(
        xc.data_ptr(), wc.data_ptr(), y.data_ptr(), xc.numel() / xc.size(-1), xc.size(-1), options.eps,
        options.scale == NormScale::kOnePlusWeight, CudaDtypeOf(xc.scalar_type()), CudaDtypeOf(wc.scalar_type()),
        c10::cuda::getCurrentCUDAStream(x.device().index()).stream());
    TORCH_CHECK(error.empty(), "RmsNorm (CUDA): ", error);
    return y;
  }
#endif
  return detail::RmsNormComposite(x, w, options);
}

}  // namespace llmtrain::kernels
