// Writes a decoder as a Hugging Face folder (config.json + model.safetensors) that transformers'
// from_pretrained loads: dense tensors in one dtype, and 4-bit projections in bitsandbytes'
// format with config.json's quantization_config (quant/bnb_format.h). It lives in lora/, the
// lowest layer that knows both 4-bit layers and adapters: an adapter's base is written (merge
// first with MergeAdapters to write the adapted weights).
//
//   lora::HfFolderOptions options;
//   options.dtype = Dtype::kBf16;
//   LLMTRAIN_ASSIGN_OR_RETURN(lora::HfFolderReport report, lora::SaveHfFolder(*model, "out/merged", options));
#pragma once

#include <cstdint>
#include <optional>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "llmtrain/core/dtype.h"
#include "llmtrain/model/decoder.h"
#include "llmtrain/quant/quant4.h"

namespace llmtrain::lora {

struct HfFolderOptions {
  /// dtype of the dense tensors (f32, bf16, f16); unset = the model's.
  std::optional<Dtype> dtype;
  /// Quantize the dense projections to 4 bits on the way out (projections already 4-bit are
  /// written as they are). Unset: dense projections stay dense.
  std::optional<quant::Quant4Options> quantize_4bit;
  /// Instead, store the dense projections as LLM.int8 (bitsandbytes' 8-bit format: int8 weight,
  /// float32 row scales "SCB", "weight_format" 0 = row; quantization_config load_in_8bit).
  bool quantize_int8 = false;
};

struct HfFolderReport {
  int64_t tensors = 0;
  int64_t bytes = 0;           ///< of tensor data
  int64_t quantized = 0;       ///< projections written 4-bit or 8-bit
  /// Projections quantized by this save, and the error that added:
  /// ‖dequant(quant(W)) − W‖ / ‖W‖ over all of them together (Frobenius), W in the saved dtype.
  int64_t requantized = 0;
  double requantize_rel_error = 0.0;
};

/// Writes `dir`/config.json and `dir`/model.safetensors, each atomically. Adapters are not
/// written (merge them first, or save them with lora::SaveAdapter); their base layers are.
absl::StatusOr<HfFolderReport> SaveHfFolder(const model::Decoder& model, absl::string_view dir,
                                            const HfFolderOptions& options);

/// InvalidArgument naming the field: a dtype other than f32/bf16/f16, or both 4-bit and int8.
absl::Status Validate(const HfFolderOptions& options);

}  // namespace llmtrain::lora
