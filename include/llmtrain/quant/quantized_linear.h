// A frozen linear layer whose weight is stored 4-bit (NF4/FP4, quant/quant4.h): QLoRA's base.
//
// Forward never materializes more than a bounded tile of the weight in 16/32 bits. For a few input
// rows (generation) each thread dequantizes its own tile of output rows (about 1 MiB) into a
// reused buffer with a vectorized kernel and multiplies the input by it straight into the output's
// columns. For many rows (training: at least kLargeRows) a bigger tile (at most LargeTileBytes(),
// 16 MiB by default) is dequantized on all cores and multiplied by one GEMM on all cores, which
// runs several times faster than per-thread GEMMs on small tiles. The
// weight values are code × block scale in float32, rounded straight to the input's dtype, as
// bitsandbytes' 4-bit matmul computes them (Dequantize4bit instead rounds to the state's dtype
// first; the two differ only when the state's dtype is narrower than the input's).
// Backward gives the input gradient through the frozen weight, tile by tile the same way; the
// weight gets no gradient. On CUDA tensors the tile is dequantized by our kernel and multiplied
// by cuBLASLt (see docs/benchmarks.md).
//
//   LLMTRAIN_ASSIGN_OR_RETURN(quant::Quantized4 q, quant::Quantize4bit(w, {.double_quant = true}));
//   auto layer = std::make_shared<quant::QuantizedLinear>(std::move(q), bias);
//   at::Tensor y = layer->Forward(x);   // x: (…, in) float32/bfloat16/float16
//
// Under autocast (train/autocast.h) a float32 input is cast to the autocast dtype, and the layer
// computes and returns that dtype, as torch.autocast treats linear.
#pragma once

#include <cstdint>
#include <vector>

#include <ATen/core/Tensor.h>

#include "llmtrain/model/linear.h"
#include "llmtrain/quant/quant4.h"

namespace llmtrain::quant {

class QuantizedLinear final : public model::Linear {
 public:
  /// `weight` is a quantized 2-D (out, in) tensor; bias (out) or undefined.
  explicit QuantizedLinear(Quantized4 weight, at::Tensor bias = {});

  at::Tensor Forward(const at::Tensor& x) const override;
  int64_t in_features() const override { return in_; }
  int64_t out_features() const override { return out_; }
  at::Tensor DenseWeight(c10::ScalarType dtype) const override;
  const at::Tensor& bias() const override { return bias_; }
  at::Tensor stored_weight() const override { return {}; }
  void AppendTrainable(std::vector<at::Tensor>* out) const override {}
  absl::string_view kind() const override { return QuantTypeName(weight_.state.type); }

  const Quantized4& quantized() const { return weight_; }
  /// Bytes of the packed weight and its quant state (scales, nested scales, code tables).
  int64_t StorageBytes() const;

  /// Inputs with at least this many rows take the large-tile path (see the top of this file).
  static constexpr int64_t kLargeRows = 32;
  /// The large-tile budget in bytes of dequantized weight (process-wide; at least 64 KiB is used).
  static void SetLargeTileBytes(int64_t bytes);
  static int64_t LargeTileBytes();

  /// out (…, out) = x (…, in) · W[rows]ᵀ without autograd (the forward kernel), and
  /// grad_x = grad_y · W (the backward one). Public for the benchmarks and tests.
  at::Tensor MatmulNoGrad(const at::Tensor& x) const;
  at::Tensor MatmulTransposedNoGrad(const at::Tensor& grad_y) const;

  /// Dequantizes output rows [row_begin, row_end) into `out` ((row_end − row_begin) × in,
  /// contiguous, float32/bfloat16/float16, CPU): code × scale in float32 rounded to out's dtype.
  void DequantizeRows(int64_t row_begin, int64_t row_end, at::Tensor& out) const;

 private:
  // Output rows [r0, r0 + rows) dequantized to `dtype` in `buffer` (grown as needed): a view of it.
  at::Tensor DequantizedTile(int64_t r0, int64_t rows, c10::ScalarType dtype, std::vector<char>* buffer) const;
  // The CUDA path: tiles dequantized by our kernel and multiplied by cuBLASLt (or the fused
  // kernel for small M). x2 is (M, in) or, transposed, (M, out).
  at::Tensor CudaMatmul(const at::Tensor& x2, bool transposed) const;

  Quantized4 weight_;
  at::Tensor bias_;
  at::Tensor scales_;  // float32 (n_blocks): the block scales, rebuilt once from the nested codes
  at::Tensor code_;    // float32 (16)
  int64_t out_ = 0, in_ = 0;
  // Device copies of the packed data, scales and code, made on the first CUDA forward.
  mutable at::Tensor device_packed_, device_scales_, device_code_;
};

/// The dequantization kernel on raw memory: elements [begin, begin + count) of a 4-bit tensor
/// (bitsandbytes layout) into `out` as float32 (out_dtype kFloat), bfloat16 or float16, each value
/// code[nibble] × scales[element / blocksize] in float32, rounded to `state_dtype` first when it
/// is narrower than float32 (what Dequantize4bit then .to(out_dtype) gives). Single-threaded;
/// AVX-512 or AVX2 where the CPU has them (LLMTRAIN_NO_AVX512=1 forces AVX2, for tests).
void DequantizeElements(const uint8_t* packed, const float* scales, const float* code,
                        int64_t blocksize, int64_t begin, int64_t count, c10::ScalarType state_dtype,
                        c10::ScalarType out_dtype, void* out);

}  // namespace llmtrain::quant
