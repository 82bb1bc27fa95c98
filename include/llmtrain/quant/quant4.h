// NF4 and FP4 blockwise 4-bit quantization with optional double quantization of the block
// scales, byte for byte what bitsandbytes' quantize_4bit produces (docs/bitsandbytes-cpu.md):
//   - the weight is flattened and cut into blocks of `blocksize`; each block is scaled by its
//     absolute maximum (full blocks multiply by the rounded reciprocal, a partial last block
//     divides) and each value takes the nearest code of the 16-entry table (ties to the lower code);
//   - two codes per byte, the first element in the high nibble;
//   - double quantization stores the block scales as 8-bit codes of the dynamic map, in blocks of
//     256, after subtracting their mean (the `offset`).
// Dequantization is code × block scale in float32, cast to the weight's dtype.
//
//   LLMTRAIN_ASSIGN_OR_RETURN(quant::Quantized4 q, quant::Quantize4bit(weight, {.double_quant = true}));
//   at::Tensor w = quant::Dequantize4bit(q);   // (out, in) in weight's dtype
#pragma once

#include <cstdint>
#include <vector>

#include <ATen/core/Tensor.h>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace llmtrain::quant {

enum class QuantType { kNf4, kFp4 };
absl::string_view QuantTypeName(QuantType type);  ///< "nf4" / "fp4"

struct Quant4Options {
  QuantType type = QuantType::kNf4;
  /// Elements per block: one of 32, 64, 128, 256, 512, 1024, 2048, 4096 (what bitsandbytes takes).
  int64_t blocksize = 64;
  bool double_quant = false;  ///< bitsandbytes compress_statistics / bnb_4bit_use_double_quant
};

/// InvalidArgument naming the field: a blocksize bitsandbytes does not take.
absl::Status Validate(const Quant4Options& options);

/// bitsandbytes QuantState of a 4-bit tensor.
struct Quant4State {
  QuantType type = QuantType::kNf4;
  int64_t blocksize = 64;
  std::vector<int64_t> shape;        ///< of the original tensor
  c10::ScalarType dtype = c10::kFloat;  ///< of the original tensor, and of Dequantize4bit's result
  at::Tensor code;                   ///< float32 (16): the code table
  /// Block scales: float32 (n_blocks), or with double quantization uint8 (n_blocks) codes of
  /// nested_code, scaled per 256 blocks by nested_absmax, plus offset.
  at::Tensor absmax;
  bool nested = false;
  float offset = 0.0f;               ///< mean of the float32 block scales
  at::Tensor nested_absmax;          ///< float32 (ceil(n_blocks / 256))
  at::Tensor nested_code;            ///< float32 (256): the dynamic map
  int64_t nested_blocksize = 256;
};

struct Quantized4 {
  at::Tensor packed;  ///< uint8 ((numel + 1) / 2, 1), as bitsandbytes stores it
  Quant4State state;
};

/// Quantizes a float32, float16 or bfloat16 CPU tensor of any shape. Errors name the bad option
/// or dtype.
absl::StatusOr<Quantized4> Quantize4bit(const at::Tensor& weight, const Quant4Options& options = {});

/// The block scales as float32 (n_blocks) on the CPU: absmax itself, or rebuilt from the nested
/// codes.
at::Tensor BlockScales(const Quant4State& state);

/// Dequantizes to state.dtype and state.shape, on the CPU whatever device the quantized tensors
/// are on: code[nibble] × scale in float32, then cast.
at::Tensor Dequantize4bit(const Quantized4& quantized);

/// The 16-entry float32 code table of `type` (bitsandbytes get_4bit_type).
at::Tensor CodeTable(QuantType type);

/// bitsandbytes create_dynamic_map(signed=True): the 256 float32 codes of the scales in double
/// quantization.
at::Tensor DynamicMap();

}  // namespace llmtrain::quant
