// The tensors transformers + bitsandbytes save for a 4-bit Linear weight, and back
// (docs/bitsandbytes-cpu.md §5). For a weight "P" (e.g. "model.layers.0.mlp.up_proj.weight"):
//   P                                   uint8 ((n + 1) / 2, 1)  packed codes
//   P.absmax                            float32 (n_blocks), or uint8 with double quantization
//   P.quant_map                         float32 (16)
//   P.nested_absmax, P.nested_quant_map float32, double quantization only
//   P.quant_state.bitsandbytes__nf4     uint8: UTF-8 JSON {"quant_type", "blocksize", "dtype",
//                                       "shape", and with double quantization "nested_blocksize",
//                                       "nested_dtype", "nested_offset"}  (…__fp4 for FP4)
#pragma once

#include <functional>
#include <string>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "llmtrain/quant/quant4.h"

namespace llmtrain::quant {

/// The name of the JSON quant-state tensor of weight `prefix` for `type`.
std::string BnbQuantStateKey(absl::string_view prefix, QuantType type);

/// The tensors to save for weight `prefix`, in the order above.
std::vector<std::pair<std::string, at::Tensor>> ToBnbTensors(absl::string_view prefix, const Quantized4& q);

/// True if `has(name)` reports a quant-state tensor for weight `prefix` (either type).
bool IsBnbQuantized(absl::string_view prefix, const std::function<bool(const std::string&)>& has);

/// Rebuilds weight `prefix` from its saved tensors. `get(name)` returns a tensor or NotFound.
/// Every field is checked against the others (packed size against shape, absmax length against
/// the blocks, code tables' sizes, a known blocksize and dtype); errors name the key at fault, so
/// a corrupted quant state is refused rather than dequantized into garbage.
absl::StatusOr<Quantized4> FromBnbTensors(
    absl::string_view prefix, const std::function<absl::StatusOr<at::Tensor>(const std::string&)>& get);

/// config.json's "quantization_config" for a model saved 4-bit with `options`, computing in
/// `compute_dtype` (as transformers writes it), as JSON text.
std::string BnbQuantizationConfigJson(const Quant4Options& options, c10::ScalarType compute_dtype);

}  // namespace llmtrain::quant
