// RoPE front end (kernels/rope.h): the inverse frequencies and cos/sin tables, and routing of
// ApplyRope to rope_cpu.cpp (ATen ops, the oracle) or rope.cu (the fused CUDA forward).
#include "llmtrain/kernels/rope.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <ATen/record_function.h>

#if LLMTRAIN_WITH_CUDA
#include <c10/cuda/CUDAStream.h>

#include "kernels/kernels_cuda.h"
#endif

namespace llmtrain::kernels {

at::Tensor RopeInverseFrequencies(int64_t head_dim, double theta, double linear_factor) {
  TORCH_CHECK(head_dim > 0 && head_dim % 2 == 0, "RopeInverseFrequencies: head_dim must be even and positive, is ",
              head_dim);
  TORCH_CHECK(theta > 0 && linear_factor > 0, "RopeInverseFrequencies: theta and linear_factor must be positive");
  // float32 as transformers computes it: 1 / (theta ^ (arange(0, D, 2) / D)) / factor.
  const at::Tensor exponents = at::arange(0, head_dim, 2, at::kLong).to(at::kFloat) / static_cast<double>(head_dim);
  at::Tensor inv = 1.0 / at::pow(theta, exponents);
  if (linear_factor != 1.0) inv = inv / linear_factor;
  return inv;
}

RopeTables MakeRopeTables(const at::Tensor& positions, const at::Tensor& inv_freq, c10::ScalarType dtype) {
  TORCH_CHECK(positions.dim() == 2, "MakeRopeTables: positions must be (B, T), is ", positions.sizes());
  TORCH_CHECK(inv_freq.dim() == 1, "MakeRopeTables: inv_freq must be (D/2), is ", inv_freq.sizes());
  const at::Tensor freqs = positions.to(at::kFloat).unsqueeze(-1) *
                           inv_freq.to(positions.device()).view({1, 1, -1});  // (B, T, D/2)
  const at::Tensor emb = at::cat({freqs, freqs}, -1);                          // (B, T, D)
  return {emb.cos().to(dtype).unsqueeze(1), emb.sin().to(dtype).unsqueeze(1)};  // (B, 1, T, D)
}

at::Tensor ApplyRope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  TORCH_CHECK(x.dim() == 4 && cos.dim() == 4 && sin.sizes() == cos.sizes(), "ApplyRope: x must be (B, H, T, D) and "
              "cos, sin (B, 1, T, D); they are ", x.sizes(), ", ", cos.sizes(), ", ", sin.sizes());
  TORCH_CHECK(cos.size(0) == x.size(0) && cos.size(1) == 1 && cos.size(2) == x.size(2) && cos.size(3) == x.size(3),
              "ApplyRope: cos ", cos.sizes(), " does not fit x ", x.sizes());
  TORCH_CHECK(x.size(3) % 2 == 0, "ApplyRope: D must be even, is ", x.size(3));
  TORCH_CHECK(x.device() == cos.device() && x.device() == sin.device(), "ApplyRope: x is on ", x.device(),
              ", cos on ", cos.device(), ", sin on ", sin.device());
#if LLMTRAIN_WITH_CUDA
  const bool autograd = at::GradMode::is_enabled() && x.requires_grad();
  const c10::ScalarType t = x.scalar_type();
  const bool float_type = t == at::kFloat || t == at::kBFloat16 || t == at::kHalf;
  if (x.is_cuda() && !autograd && float_type && cos.scalar_type() == t && sin.scalar_type() == t && x.numel() > 0) {
    RECORD_FUNCTION("llmtrain::rope", std::vector<c10::IValue>());
    const at::Tensor xc = x.contiguous(), cc = cos.contiguous(), sc = sin.contiguous();
    at::Tensor y = at::empty_like(xc);
    const int dtype = t == at::kFloat ? detail::kCudaF32 : t == at::kBFloat16 ? detail::kCudaBf16 : detail::kCudaF16;
    const std::string error =
        detail::RopeCuda(xc.data_ptr(), cc.data_ptr(), sc.data_ptr(), y.data_ptr(), xc.size(0), xc.size(1),
                         xc.size(2), xc.size(3), dtype, c10::cuda::getCurrentCUDAStream(x.device().index()).stream());
    TORCH_CHECK(error.empty(), "ApplyRope (CUDA): ", error);
    return y;
  }
#endif
  return detail::ApplyRopeComposite(x, cos, sin);
}

}  // namespace llmtrain::kernels
