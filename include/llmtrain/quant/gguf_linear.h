// A frozen linear layer that keeps a GGUF weight in the blocks the file stores (Q4_K, Q5_0, Q6_K,
// Q8_0, … every type io::CanDequantize reads) and multiplies from them, so decoding reads the
// packed bytes once per token instead of a float32 copy.
//
// Forward with fewer than kLargeRows input rows (decoding) runs kernels::BlockMatmul: each thread
// decodes a piece of a weight row into an L1 buffer and dots every input row with it. With more
// rows (a prompt's prefill) tiles of rows are decoded to float32 on all cores and multiplied by a
// GEMM. Either way the weight's values are exactly gguf's dequantization, and the products are
// float32 (an input in another dtype is widened and the result rounded back), so the layer agrees
// with a DenseLinear over the dequantized weight to float32 summation order. The exception: where
// kernels::BestDotIsa() is kAvx512I16 and the type has that path (Q5_0, Q6_K), both paths multiply
// x rounded to int16 per 32 columns (kernels::I16Rows, about 2⁻¹⁶ of the 32 values' largest), so
// that a row's output still does not depend on the number of rows in the call (a decoding batch,
// a prompt prefilled with others) beyond float32 summation order. Backward gives the
// input's gradient through the frozen weight (tile by tile); the weight gets none.
//
// On CUDA (the blocks moved there, e.g. by Decoder::MoveTo, and the input on the same device) the
// types F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K and Q6_K compute there: fewer than
// kLargeRows rows take a fused kernel (one warp per output row decodes each value, bit for bit
// gguf's, and multiply-adds it into every input row's sum), more take tiles decoded to float32 on
// the device and cuBLAS. x is never rounded to int16 there. Other types are refused on CUDA by name.
//
//   model::DecoderOptions options;
//   options.linear_factory = quant::PackedLinearFactory(std::nullopt);
//   options.head_through_factory = true;                // the tied Q8_0 embedding as the head
//   auto model = model::Decoder::Load("gemma-3-270m-q4_k_m.gguf", options);
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include <ATen/core/Tensor.h>

#include "llmtrain/io/gguf.h"
#include "llmtrain/model/linear.h"
#include "llmtrain/quant/quant4.h"

namespace llmtrain::quant {

namespace detail {
struct GgufLinearState;
}  // namespace detail

class GgufLinear final : public model::Linear {
 public:
  /// `blocks`: uint8, out rows of in / block_elems blocks of `type`; bias (out) or undefined.
  /// Throws c10::Error when they do not fit or the type cannot be decoded.
  GgufLinear(io::GgmlType type, at::Tensor blocks, int64_t out, int64_t in, at::Tensor bias = {});
  ~GgufLinear() override;

  at::Tensor Forward(const at::Tensor& x) const override;
  int64_t in_features() const override;
  int64_t out_features() const override;
  /// gguf's dequantization of the blocks (bit for bit), in `dtype`.
  at::Tensor DenseWeight(c10::ScalarType dtype) const override;
  const at::Tensor& bias() const override { return bias_; }
  at::Tensor stored_weight() const override { return {}; }
  void AppendTrainable(std::vector<at::Tensor>* out) const override {}
  void AppendFrozen(std::vector<at::Tensor>* out) const override;
  /// The ggml type's name in lower case: "q4_k", "q8_0", …
  absl::string_view kind() const override;

  io::GgmlType type() const;
  /// Bytes of the blocks: what one decoding step reads of this layer.
  int64_t StorageBytes() const;

  /// Inputs with at least this many rows take the decode-tiles-and-GEMM path.
  static constexpr int64_t kLargeRows = 16;

 private:
  std::shared_ptr<const detail::GgufLinearState> impl_;
  at::Tensor bias_;
};

/// The projection factory of decoding from packed weights (DecoderOptions::linear_factory): a GGUF
/// projection stored in blocks (any type but F32) loads as a GgufLinear over its blocks; every other
/// projection is what QuantizedLinearFactory(quantize) makes (4-bit with `quantize`, whose small-M
/// forward decodes and dots the same way, or dense). With `quantize` set a GGUF base is quantized
/// to 4 bits like any other (QLoRA's base), not kept in its blocks.
model::LinearFactory PackedLinearFactory(std::optional<Quant4Options> quantize);

}  // namespace llmtrain::quant
