// The model options `forward` and `generate` share: --dtype, --load-in-4bit, --adapter.
#include "absl/strings/str_cat.h"
#include "llmtrain/commands.h"
#include "llmtrain/core/atomic_file.h"
#include "llmtrain/core/status.h"
#include "llmtrain/data/image.h"
#include "llmtrain/lora/lora.h"
#include "llmtrain/quant/gguf_linear.h"
#include "llmtrain/quant/quantized_linear.h"

namespace llmtrain::cli {

bool ModelFlags::Parse(const std::string& option, const std::vector<std::string>& args, size_t* i,
                       std::string* error) {
  if (option == "--load-in-4bit") {
    load_in_4bit = true;
    return true;
  }
  if (option == "--packed") {
    packed = true;
    return true;
  }
  if (option != "--adapter" && option != "--quant-type") return false;
  if (*i + 1 >= args.size()) {
    *error = absl::StrCat(option, " needs a value");
    return true;
  }
  const std::string& value = args[++*i];
  if (option == "--adapter") {
    adapter = value;
  } else if (value == "nf4" || value == "fp4") {
    quant_type = value == "nf4" ? quant::QuantType::kNf4 : quant::QuantType::kFp4;
  } else {
    *error = absl::StrCat("--quant-type: \"", value, "\" is not nf4 or fp4");
  }
  return true;
}

absl::StatusOr<std::unique_ptr<model::Decoder>> ModelFlags::Load(const std::string& path, Dtype dtype) const {
  model::DecoderOptions options;
  options.dtype = dtype;
  // QLoRA's recipe: blocks of 64 with double quantization. A folder saved 4-bit by
  // transformers + bitsandbytes loads 4-bit whatever --load-in-4bit says.
  std::optional<quant::Quant4Options> quantize;
  if (load_in_4bit) {
    quantize.emplace();
    quantize->type = quant_type;
    quantize->blocksize = 64;
    quantize->double_quant = true;
  }
  options.linear_factory = packed ? quant::PackedLinearFactory(quantize) : quant::QuantizedLinearFactory(quantize);
  // A GGUF head in blocks is read from them; a 4-bit base keeps QLoRA's dense head.
  options.head_through_factory = packed && !load_in_4bit;
  auto model = model::Decoder::Load(path, options);
  if (!model.ok()) return model.status();
  if (!adapter.empty()) {
    auto config = lora::LoadAdapter(model->get(), adapter);
    if (!config.ok()) return config.status();
  }
  return model;
}

absl::StatusOr<c10::ScalarType> ParseKvCacheDtype(const std::string& value) {
  if (value == "f32") return c10::ScalarType::Float;
  if (value == "bf16") return c10::ScalarType::BFloat16;
  if (value == "f16") return c10::ScalarType::Half;
  return absl::InvalidArgumentError(absl::StrCat("--kv-cache: \"", value, "\" is not f32, bf16 or f16"));
}

absl::StatusOr<data::ImageOptions> ModelImageOptions(const std::string& model_path, tokenizer::Tokenizer* tokenizer,
                                                     const model::Decoder& model) {
  LLMTRAIN_ASSIGN_OR_RETURN(data::ImageOptions options,
                            data::MakeImageOptions(tokenizer, model.tokens_per_image(), model.image_size()));
  if (IsRegularFile(model_path + "/preprocessor_config.json")) {
    LLMTRAIN_ASSIGN_OR_RETURN(options.processor, data::LoadImageProcessorConfig(model_path));
  }
  if (!options.processor.do_resize) {
    return absl::InvalidArgumentError(
        absl::StrCat(model_path, "/preprocessor_config.json: do_resize false is not supported"));
  }
  return options;
}

}  // namespace llmtrain::cli
