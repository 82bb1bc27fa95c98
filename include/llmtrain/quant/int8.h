// LLM.int8-style row-wise absmax quantization, byte for byte what bitsandbytes'
// int8_vectorwise_quant computes (docs/bitsandbytes-cpu.md §4): per row, scale = 127 / max|row|
// (a rounded reciprocal times 127), q = round-half-even(x · scale). With a threshold, values with
// |x| ≥ threshold are outliers: they do not count in the row maximum, and their columns are
// listed and zeroed in q (LLM.int8's mixed-precision decomposition keeps them in 16 bits).
//
//   LLMTRAIN_ASSIGN_OR_RETURN(quant::Int8Quantized q, quant::QuantizeInt8(weight));
//   at::Tensor w = quant::DequantizeInt8(q);   // float32
#pragma once

#include <ATen/core/Tensor.h>

#include "absl/status/statusor.h"

namespace llmtrain::quant {

struct Int8Quantized {
  at::Tensor q;             ///< int8 (rows, cols)
  at::Tensor row_stats;     ///< float32 (rows): max |x| per row, outliers excluded
  at::Tensor outlier_cols;  ///< int64 (k): columns holding an outlier; undefined without a threshold
};

/// `weight`: a 2-D float32/float16/bfloat16 CPU tensor. threshold 0 = no outliers; otherwise it is
/// compared in the weight's dtype, as bitsandbytes does.
absl::StatusOr<Int8Quantized> QuantizeInt8(const at::Tensor& weight, double threshold = 0.0);

/// q · row_stats / 127 in float32 (two float32 multiplies, as bitsandbytes).
at::Tensor DequantizeInt8(const Int8Quantized& quantized);

}  // namespace llmtrain::quant
