// The model options `forward` and `generate` share: --dtype, --load-in-4bit, --adapter.
#include "absl/strings/str_cat.h"
#include "llmtrain/commands.h"
#include "llmtrain/lora/lora.h"

namespace llmtrain::cli {

bool ModelFlags::Parse(const std::string& option, const std::vector<std::string>& args, size_t* i,
                       std::string* error) {
  if (option == "--load-in-4bit") {
    load_in_4bit = true;
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
  // transformers' load_in_4bit defaults: blocks of 64 with double quantization (QLoRA's recipe).
  if (load_in_4bit) options.quantize_4bit = quant::Quant4Options{quant_type, 64, /*double_quant=*/true};
  auto model = model::Decoder::Load(path, options);
  if (!model.ok()) return model.status();
  if (!adapter.empty()) {
    auto config = lora::LoadAdapter(model->get(), adapter);
    if (!config.ok()) return config.status();
  }
  return model;
}

}  // namespace llmtrain::cli
