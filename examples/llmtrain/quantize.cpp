// llmtrain quantize --model PATH --output DIR [--method nf4|fp4|int8] [--blocksize 64]
//                   [--double-quant] [--dtype f32|bf16|f16]
// Writes the model as a Hugging Face folder whose projections are stored the way bitsandbytes +
// transformers store them (load_in_4bit / load_in_8bit), and reports the rounding error.
#include <cstdio>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "llmtrain/commands.h"
#include "llmtrain/core/status.h"
#include "llmtrain/io/gguf.h"
#include "llmtrain/io/hf_config.h"
#include "llmtrain/lora/hf_folder.h"
#include "llmtrain/quant/quantized_linear.h"

namespace llmtrain::cli {
namespace {

constexpr char kHelp[] =
    "usage: llmtrain quantize --model PATH --output DIR [--method nf4|fp4|int8] [--blocksize 64]\n"
    "                         [--double-quant] [--dtype f32|bf16|f16]\n"
    "  PATH: a model folder or a .gguf file. DIR gets config.json (with quantization_config) and\n"
    "  model.safetensors in bitsandbytes' format, which transformers' from_pretrained loads.\n"
    "  --method: nf4 (default) or fp4 blockwise 4-bit, or int8 (LLM.int8 row-wise).\n"
    "  --blocksize: 4-bit block size (32 … 4096; default 64). --double-quant: 8-bit block scales.\n"
    "  --dtype: of the other tensors and of the weights before quantization; default: the\n"
    "  checkpoint's dtype (config.json dtype / torch_dtype; float32 when it names none, and for\n"
    "  GGUF files, which dequantize to float32), as transformers' from_pretrained(load_in_4bit).\n";

// The dtype transformers' from_pretrained loads `path` in when given no dtype: the one
// config.json names, else float32 (GGUF tensors dequantize to float32).
absl::StatusOr<Dtype> CheckpointDtype(const std::string& path) {
  io::HfConfig config;
  if (absl::EndsWith(path, ".gguf")) {
    LLMTRAIN_ASSIGN_OR_RETURN(auto gguf, io::GgufFile::Open(path));
    LLMTRAIN_ASSIGN_OR_RETURN(config, io::HfConfigFromGguf(*gguf));
  } else {
    LLMTRAIN_ASSIGN_OR_RETURN(config, io::LoadHfConfig(path + "/config.json"));
  }
  if (!config.dtype || *config.dtype == "float32") return Dtype::kF32;
  if (*config.dtype == "bfloat16") return Dtype::kBf16;
  if (*config.dtype == "float16") return Dtype::kF16;
  return absl::InvalidArgumentError(absl::StrCat(path, ": config dtype \"", *config.dtype,
                                                 "\" is not float32, bfloat16 or float16; pass --dtype"));
}

}  // namespace

int RunQuantize(const std::vector<std::string>& args) {
  std::string model_path, out, method = "nf4";
  std::optional<Dtype> dtype;
  quant::Quant4Options q4;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "--help" || a == "-h") {
      std::fputs(kHelp, stdout);
      return 0;
    }
    if (a == "--double-quant") {
      q4.double_quant = true;
      continue;
    }
    if (i + 1 >= args.size()) return Fail("quantize", absl::StrCat(a, " needs a value\n", kHelp), 2);
    const std::string& v = args[++i];
    if (a == "--model") {
      model_path = v;
    } else if (a == "--output") {
      out = v;
    } else if (a == "--method") {
      if (v != "nf4" && v != "fp4" && v != "int8") {
        return Fail("quantize", absl::StrCat("--method: \"", v, "\" is not nf4, fp4 or int8"), 2);
      }
      method = v;
    } else if (a == "--blocksize") {
      if (!absl::SimpleAtoi(v, &q4.blocksize)) return Fail("quantize", absl::StrCat("--blocksize: not a number: \"", v, "\""), 2);
    } else if (a == "--dtype") {
      auto parsed = DtypeFromUserName(v);
      if (!parsed.ok()) return Fail("quantize", std::string(parsed.status().message()), 2);
      dtype = *parsed;
    } else {
      return Fail("quantize", absl::StrCat("unknown option ", a, "\n", kHelp), 2);
    }
  }
  if (model_path.empty() || out.empty()) return Fail("quantize", absl::StrCat("--model and --output are required\n", kHelp), 2);
  q4.type = method == "fp4" ? quant::QuantType::kFp4 : quant::QuantType::kNf4;
  try {
    if (!dtype) {
      auto from_checkpoint = CheckpointDtype(model_path);
      if (!from_checkpoint.ok()) return Fail("quantize", std::string(from_checkpoint.status().message()));
      dtype = *from_checkpoint;
    }
    model::DecoderOptions options;
    options.dtype = *dtype;
    options.linear_factory = quant::QuantizedLinearFactory(std::nullopt);  // 4-bit folders load as they are
    auto model = model::Decoder::Load(model_path, options);
    if (!model.ok()) return Fail("quantize", std::string(model.status().message()));
    lora::HfFolderOptions save;
    if (method == "int8") {
      save.quantize_int8 = true;
    } else {
      save.quantize_4bit = q4;
    }
    int64_t dense_bytes = 0;
    for (const std::string& name : (*model)->LinearNames()) {
      const auto layer = (*model)->linear(name);
      dense_bytes += layer->in_features() * layer->out_features() * (ElementBits(*dtype) / 8);
    }
    auto report = lora::SaveHfFolder(**model, out, save);
    if (!report.ok()) return Fail("quantize", std::string(report.status().message()));
    std::printf("quantize: %lld projections to %s%s; %lld tensors, %.1f MiB written to %s\n",
                static_cast<long long>(report->quantized), method.c_str(),
                method == "int8" ? "" : absl::StrCat(" (blocks of ", q4.blocksize, q4.double_quant ? ", double quantization)" : ")").c_str(),
                static_cast<long long>(report->tensors), report->bytes / 1048576.0, out.c_str());
    std::printf("quantize: weight error ‖dequant(quant(W)) − W‖ / ‖W‖ = %.4f over all projections; their %s size "
                "was %.1f MiB\n", report->requantize_rel_error, std::string(SafetensorsName(*dtype)).c_str(),
                dense_bytes / 1048576.0);
  } catch (...) {
    return Fail("quantize", std::string(StatusFromCurrentException("quantize").message()));
  }
  return 0;
}

}  // namespace llmtrain::cli
