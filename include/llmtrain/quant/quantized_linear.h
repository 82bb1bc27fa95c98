// A frozen linear layer whose weight is stored 4-bit (NF4/FP4, quant/quant4.h): QLoRA's base.
//
// Forward never materializes more than a bounded tile of the weight in 16/32 bits. For a few
// float32 input rows (generation) each weight row is decoded a piece (1,024 values) at a time into
// an L1 buffer and dotted with every input row there (kernels::BlockMatmul), so the packed weight is
// read once. For a few bfloat16/float16 rows each thread dequantizes its own tile of output rows
// (about 1 MiB) into a reused buffer with a vectorized kernel and multiplies the input by it
// straight into the output's columns. For many rows (training: at least kLargeRows) a bigger tile (at most LargeTileBytes(),
// 16 MiB by default) is dequantized on all cores and multiplied by one GEMM on all cores, which
// runs several times faster than per-thread GEMMs on small tiles. The
// weight values are code × block scale in float32, rounded straight to the input's dtype, as
// bitsandbytes' 4-bit matmul computes them (Dequantize4bit instead rounds to the state's dtype
// first; the two differ only when the state's dtype is narrower than the input's).
// Backward gives the input gradient through the frozen weight, tile by tile the same way; the
// weight gets no gradient. On CUDA tensors the tile is dequantized by our kernel and multiplied
// by cuBLASLt (see docs/benchmarks.md). The dequantization itself is kernels/dequant4.h.
//
//   LLMTRAIN_ASSIGN_OR_RETURN(quant::Quantized4 q, quant::Quantize4bit(w, {.double_quant = true}));
//   auto layer = std::make_shared<quant::QuantizedLinear>(std::move(q), bias);
//   at::Tensor y = layer->Forward(x);   // x: (…, in) float32/bfloat16/float16
//
// Under autocast (train/autocast.h) a float32 input is cast to the autocast dtype, and the layer
// computes and returns that dtype, as torch.autocast treats linear.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include <ATen/core/Tensor.h>

#include "llmtrain/model/linear.h"
#include "llmtrain/quant/quant4.h"

namespace llmtrain::quant {

class QuantizedLinear;

namespace detail {
/// The weight and kernels of one QuantizedLinear (quantized_linear.cpp), shared with the autograd
/// nodes of its forwards so backward holds its own reference.
struct QuantizedLinearState;

/// The forward and backward kernels without autograd: out (…, out) = x (…, in) · Wᵀ, and
/// grad_x = grad_y · W. For tests and benchmarks; QuantizedLinear::Forward is the API.
at::Tensor MatmulNoGrad(const QuantizedLinear& layer, const at::Tensor& x);
at::Tensor MatmulTransposedNoGrad(const QuantizedLinear& layer, const at::Tensor& grad_y);
}  // namespace detail

class QuantizedLinear final : public model::Linear {
 public:
  /// `weight` is a quantized 2-D (out, in) tensor; bias (out) or undefined. Throws c10::Error
  /// when they do not fit.
  explicit QuantizedLinear(Quantized4 weight, at::Tensor bias = {});
  ~QuantizedLinear() override;

  at::Tensor Forward(const at::Tensor& x) const override;
  int64_t in_features() const override;
  int64_t out_features() const override;
  at::Tensor DenseWeight(c10::ScalarType dtype) const override;
  const at::Tensor& bias() const override { return bias_; }
  at::Tensor stored_weight() const override { return {}; }
  void AppendTrainable(std::vector<at::Tensor>* out) const override {}
  void AppendFrozen(std::vector<at::Tensor>* out) const override;
  absl::string_view kind() const override;

  const Quantized4& quantized() const;
  /// Bytes of the packed weight and its quant state (scales, nested scales, code tables).
  int64_t StorageBytes() const;

  /// Inputs with at least this many rows take the large-tile path (see the top of this file).
  static constexpr int64_t kLargeRows = 32;
  /// The large-tile budget in bytes of dequantized weight (process-wide; at least 64 KiB is used).
  static void SetLargeTileBytes(int64_t bytes);
  static int64_t LargeTileBytes();

  /// Dequantizes output rows [row_begin, row_end) into `out` ((row_end − row_begin) × in,
  /// contiguous, float32/bfloat16/float16, CPU): code × scale in float32 rounded to out's dtype.
  void DequantizeRows(int64_t row_begin, int64_t row_end, at::Tensor& out) const;

 private:
  friend at::Tensor detail::MatmulNoGrad(const QuantizedLinear&, const at::Tensor&);
  friend at::Tensor detail::MatmulTransposedNoGrad(const QuantizedLinear&, const at::Tensor&);
  std::shared_ptr<const detail::QuantizedLinearState> impl_;
  at::Tensor bias_;
};

/// The projection factory of a 4-bit base (DecoderOptions::linear_factory): a projection the
/// checkpoint stores in bitsandbytes' 4-bit format (HF folders saved by transformers) loads as
/// it is; any other projection is quantized with `quantize` as it loads (its dense weight is
/// dropped at once), or stays dense when `quantize` is unset. Errors name the tensor.
model::LinearFactory QuantizedLinearFactory(std::optional<Quant4Options> quantize);

}  // namespace llmtrain::quant
