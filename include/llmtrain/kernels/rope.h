// Rotary position embeddings (Su et al. 2021, "RoFormer", §3.4) in transformers' form: the
// rotation pairs dimension i with i + D/2 (rotate_half), and the angle of position p in pair i is
// p · inv_freq[i], computed in float32 and turned into cos/sin tables in the model dtype.
//
//   at::Tensor inv_freq = kernels::RopeInverseFrequencies(head_dim, /*theta=*/1e6, /*linear_factor=*/8);
//   kernels::RopeTables t = kernels::MakeRopeTables(position_ids, inv_freq, at::kBFloat16);
//   q = kernels::ApplyRope(q, t.cos, t.sin);   // q (B, H, T, D)
#pragma once

#include <cstdint>

#include <ATen/core/Tensor.h>

namespace llmtrain::kernels {

/// 1 / theta^(arange(0, D, 2) / D) / linear_factor as float32 (D/2): transformers'
/// _compute_default_rope_parameters, and its "linear" scaling (positions divided by the factor).
at::Tensor RopeInverseFrequencies(int64_t head_dim, double theta, double linear_factor = 1.0);

struct RopeTables {
  at::Tensor cos, sin;  ///< (B, 1, T, D) in the model dtype
};

/// The cos/sin tables of positions (B, T) int64: angle = position · inv_freq in float32, both
/// halves of D repeated (cat(freqs, freqs)), then cast to `dtype` (transformers' RotaryEmbedding).
RopeTables MakeRopeTables(const at::Tensor& positions, const at::Tensor& inv_freq, c10::ScalarType dtype);

/// x · cos + rotate_half(x) · sin, each product and the sum rounded to x's dtype as ATen's
/// elementwise ops round them. x: (B, H, T, D); cos, sin: (B, 1, T, D) in x's dtype. Differentiable
/// in x. On CUDA without autograd a fused kernel computes the same roundings in one pass (equal
/// to the ATen path). Throws c10::Error on mismatched shapes, dtypes or devices.
at::Tensor ApplyRope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin);

namespace detail {
/// The ATen-op path (the CPU oracle), on any device.
at::Tensor ApplyRopeComposite(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin);
}  // namespace detail

}  // namespace llmtrain::kernels
