// llmtrain quantize --model PATH --output DIR [--method nf4|fp4|int8] [--blocksize 64]
//                   [--double-quant] [--dtype bf16]
// Writes the model as a Hugging Face folder whose projections are stored the way bitsandbytes +
// transformers store them (load_in_4bit / load_in_8bit), and reports the rounding error.
#include <cstdio>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "llmtrain/commands.h"
#include "llmtrain/core/status.h"
#include "llmtrain/model/save.h"

namespace llmtrain::cli {
namespace {

constexpr char kHelp[] =
    "usage: llmtrain quantize --model PATH --output DIR [--method nf4|fp4|int8] [--blocksize 64]\n"
    "                         [--double-quant] [--dtype bf16]\n"
    "  PATH: a model folder or a .gguf file. DIR gets config.json (with quantization_config) and\n"
    "  model.safetensors in bitsandbytes' format, which transformers' from_pretrained loads.\n"
    "  --method: nf4 (default) or fp4 blockwise 4-bit, or int8 (LLM.int8 row-wise).\n"
    "  --blocksize: 4-bit block size (32 … 4096; default 64). --double-quant: 8-bit block scales.\n"
    "  --dtype: of the other tensors and of the weights before quantization (default bf16).\n";

}  // namespace

int RunQuantize(const std::vector<std::string>& args) {
  std::string model_path, out, method = "nf4";
  Dtype dtype = Dtype::kBf16;
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
    model::DecoderOptions options;
    options.dtype = dtype;
    auto model = model::Decoder::Load(model_path, options);
    if (!model.ok()) return Fail("quantize", std::string(model.status().message()));
    model::SaveOptions save;
    if (method == "int8") {
      save.quantize_int8 = true;
    } else {
      save.quantize_4bit = q4;
    }
    int64_t dense_bytes = 0;
    for (const std::string& name : (*model)->LinearNames()) {
      const auto layer = (*model)->linear(name);
      dense_bytes += layer->in_features() * layer->out_features() * 2;
    }
    auto report = model::SaveHfFolder(**model, out, save);
    if (!report.ok()) return Fail("quantize", std::string(report.status().message()));
    std::printf("quantize: %lld projections to %s%s; %lld tensors, %.1f MiB written to %s\n",
                static_cast<long long>(report->quantized), method.c_str(),
                method == "int8" ? "" : absl::StrCat(" (blocks of ", q4.blocksize, q4.double_quant ? ", double quantization)" : ")").c_str(),
                static_cast<long long>(report->tensors), report->bytes / 1048576.0, out.c_str());
    std::printf("quantize: weight error ‖dequant(quant(W)) − W‖ / ‖W‖ = %.4f over all projections; their bf16 size "
                "was %.1f MiB\n", report->requantize_rel_error, dense_bytes / 1048576.0);
  } catch (...) {
    return Fail("quantize", std::string(StatusFromCurrentException("quantize").message()));
  }
  return 0;
}

}  // namespace llmtrain::cli
