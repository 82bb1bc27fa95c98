// SaveHfFolder (lora/hf_folder.h).
#include "llmtrain/lora/hf_folder.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <cmath>

#include "absl/strings/str_cat.h"
#include "llmtrain/core/atomic_file.h"
#include "llmtrain/core/status.h"
#include "llmtrain/io/tensors.h"
#include "llmtrain/lora/lora.h"
#include "llmtrain/quant/bnb_format.h"
#include "llmtrain/quant/int8.h"
#include "llmtrain/quant/quantized_linear.h"
#include "nlohmann/json.hpp"

namespace llmtrain::lora {
namespace {

const char* TorchName(c10::ScalarType t) {
  return t == c10::kBFloat16 ? "bfloat16" : t == c10::kHalf ? "float16" : "float32";
}

}  // namespace

absl::Status Validate(const HfFolderOptions& options) {
  if (options.dtype && *options.dtype != Dtype::kF32 && *options.dtype != Dtype::kBf16 && *options.dtype != Dtype::kF16) {
    return absl::InvalidArgumentError(absl::StrCat("HfFolderOptions.dtype: expected f32, bf16 or f16, found ",
                                                   SafetensorsName(*options.dtype)));
  }
  if (options.quantize_int8 && options.quantize_4bit) {
    return absl::InvalidArgumentError("HfFolderOptions: quantize_4bit and quantize_int8 are both set; choose one");
  }
  return absl::OkStatus();
}

absl::StatusOr<HfFolderReport> SaveHfFolder(const model::Decoder& model, absl::string_view dir_view,
                                            const HfFolderOptions& options) {
  const std::string dir(dir_view);
  LLMTRAIN_RETURN_IF_ERROR(Validate(options));
  const c10::ScalarType dtype = io::ToScalarType(options.dtype.value_or(model.dtype()));
  HfFolderReport report;
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  std::optional<quant::Quant4Options> written_4bit;
  double err2 = 0.0, ref2 = 0.0;
  try {
    at::NoGradGuard no_grad;
    // Projections first: a 4-bit one is written in bitsandbytes' keys; a dense one is listed in
    // named_parameters() and written below, unless it is quantized here.
    std::map<std::string, bool> handled;  // weight keys written as 4-bit
    for (const std::string& name : model.LinearNames()) {
      std::shared_ptr<model::Linear> layer = model.linear(name);
      if (auto adapter = std::dynamic_pointer_cast<LoraLinear>(layer)) layer = adapter->base();
      const std::string key = name + ".weight";
      std::optional<quant::Quantized4> q;
      if (auto* q4 = dynamic_cast<const quant::QuantizedLinear*>(layer.get())) {
        if (options.quantize_int8) {
          return absl::InvalidArgumentError(absl::StrCat(name, ": is 4-bit already; an int8 folder needs dense projections"));
        }
        q = q4->quantized();
        written_4bit = quant::Quant4Options{.type = q->state.type, .blocksize = q->state.blocksize, .double_quant = q->state.nested};
      } else if (options.quantize_int8) {
        const at::Tensor w = layer->DenseWeight(dtype);
        auto q8 = quant::QuantizeInt8(w);
        if (!q8.ok()) return Annotate(q8.status(), name);
        const at::Tensor back = quant::DequantizeInt8(*q8).to(at::kDouble);
        const at::Tensor ref = w.to(at::kDouble);
        err2 += (back - ref).pow(2).sum().item<double>();
        ref2 += ref.pow(2).sum().item<double>();
        ++report.requantized;
        ++report.quantized;
        tensors.emplace_back(key, q8->q);
        tensors.emplace_back(name + ".SCB", q8->row_stats);
        tensors.emplace_back(name + ".weight_format", at::zeros({}, at::kByte));
        handled[key] = true;
        continue;
      } else if (options.quantize_4bit) {
        const at::Tensor w = layer->DenseWeight(dtype);
        auto quantized = quant::Quantize4bit(w, *options.quantize_4bit);
        if (!quantized.ok()) return Annotate(quantized.status(), name);
        q = *std::move(quantized);
        const at::Tensor back = quant::Dequantize4bit(*q).to(at::kDouble);
        const at::Tensor ref = w.to(at::kDouble);
        err2 += (back - ref).pow(2).sum().item<double>();
        ref2 += ref.pow(2).sum().item<double>();
        ++report.requantized;
        written_4bit = options.quantize_4bit;
      }
      if (!q) continue;
      for (auto& entry : quant::ToBnbTensors(key, *q)) tensors.push_back(std::move(entry));
      handled[key] = true;
      ++report.quantized;
    }
    for (const auto& [name, tensor] : model.named_parameters()) {
      if (handled.count(name) != 0) continue;
      tensors.emplace_back(name, tensor.detach().to(dtype).contiguous());
    }
    report.requantize_rel_error = ref2 > 0 ? std::sqrt(err2 / ref2) : 0.0;
    for (const auto& [name, t] : tensors) report.bytes += static_cast<int64_t>(t.nbytes());
    report.tensors = static_cast<int64_t>(tensors.size());

    nlohmann::json config = nlohmann::json::parse(model.config().resolved_json);
    config["dtype"] = TorchName(dtype);
    if (options.quantize_int8 && report.quantized > 0) {
      config["quantization_config"] = {
          {"_load_in_4bit", false}, {"_load_in_8bit", true}, {"bnb_4bit_compute_dtype", "float32"},
          {"bnb_4bit_quant_storage", "uint8"}, {"bnb_4bit_quant_type", "fp4"},
          {"bnb_4bit_use_double_quant", false}, {"llm_int8_enable_fp32_cpu_offload", false},
          {"llm_int8_has_fp16_weight", false}, {"llm_int8_skip_modules", nullptr},
          {"llm_int8_threshold", 6.0}, {"load_in_4bit", false}, {"load_in_8bit", true},
          {"quant_method", "bitsandbytes"}};
    } else if (written_4bit) {
      config["quantization_config"] = nlohmann::json::parse(quant::BnbQuantizationConfigJson(*written_4bit, dtype));
    } else {
      config.erase("quantization_config");
    }
    LLMTRAIN_RETURN_IF_ERROR(MakeDirectories(dir));
    LLMTRAIN_RETURN_IF_ERROR(io::SaveSafetensors(dir + "/model.safetensors", tensors, {{"format", "pt"}}));
    LLMTRAIN_RETURN_IF_ERROR(WriteFileAtomically(dir + "/config.json", config.dump(2) + "\n"));
  } catch (...) {
    return StatusFromCurrentException(absl::StrCat("saving ", dir));
  }
  return report;
}

}  // namespace llmtrain::lora
