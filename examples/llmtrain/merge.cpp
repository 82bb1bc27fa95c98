// llmtrain merge --model PATH --adapter DIR --output DIR [--dtype bf16] [--requantize nf4|fp4]
//                [--load-in-4bit]
// Merges a PEFT LoRA adapter into its base (PEFT merge_and_unload) and writes a Hugging Face
// folder; optionally re-quantizes the merged weights and reports the error that adds.
#include <cstdio>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "llmtrain/commands.h"
#include "llmtrain/core/status.h"
#include "llmtrain/lora/lora.h"
#include "llmtrain/lora/hf_folder.h"

namespace llmtrain::cli {
namespace {

constexpr char kHelp[] =
    "usage: llmtrain merge --model PATH --adapter DIR --output DIR [--dtype bf16]\n"
    "                      [--requantize nf4|fp4] [--load-in-4bit]\n"
    "  Writes base + adapter as one model folder (config.json + model.safetensors) in --dtype\n"
    "  (f32, bf16 or f16; default bf16), which transformers loads.\n"
    "  --load-in-4bit: the base is NF4 as in QLoRA training; merging adds the adapter to the\n"
    "    dequantized weights (what the adapter was trained against).\n"
    "  --requantize nf4|fp4: store the merged projections 4-bit (blocks of 64, double\n"
    "    quantization). Rounding the merged weights again adds error; it is reported.\n";

}  // namespace

int RunMerge(const std::vector<std::string>& args) {
  std::string model_path, adapter, out, requantize;
  Dtype dtype = Dtype::kBf16;
  bool load_in_4bit = false;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "--help" || a == "-h") {
      std::fputs(kHelp, stdout);
      return 0;
    }
    if (a == "--load-in-4bit") {
      load_in_4bit = true;
      continue;
    }
    if (i + 1 >= args.size()) return Fail("merge", absl::StrCat(a, " needs a value\n", kHelp), 2);
    const std::string& v = args[++i];
    if (a == "--model") {
      model_path = v;
    } else if (a == "--adapter") {
      adapter = v;
    } else if (a == "--output") {
      out = v;
    } else if (a == "--requantize") {
      if (v != "nf4" && v != "fp4") return Fail("merge", absl::StrCat("--requantize: \"", v, "\" is not nf4 or fp4"), 2);
      requantize = v;
    } else if (a == "--dtype") {
      auto parsed = DtypeFromUserName(v);
      if (!parsed.ok()) return Fail("merge", std::string(parsed.status().message()), 2);
      dtype = *parsed;
    } else {
      return Fail("merge", absl::StrCat("unknown option ", a, "\n", kHelp), 2);
    }
  }
  if (model_path.empty() || adapter.empty() || out.empty()) {
    return Fail("merge", absl::StrCat("--model, --adapter and --output are required\n", kHelp), 2);
  }
  try {
    // Merge in float32, whatever the output dtype: the sum is rounded once, on the way out.
    ModelFlags flags;
    flags.load_in_4bit = load_in_4bit;
    flags.adapter = adapter;
    auto model = flags.Load(model_path, Dtype::kF32);
    if (!model.ok()) return Fail("merge", std::string(model.status().message()));
    const size_t n_adapters = lora::Adapters(**model).size();
    if (absl::Status merged = lora::MergeAdapters(model->get()); !merged.ok()) {
      return Fail("merge", std::string(merged.message()));
    }
    lora::HfFolderOptions save;
    save.dtype = dtype;
    if (!requantize.empty()) {
      quant::Quant4Options q4;
      q4.type = requantize == "nf4" ? quant::QuantType::kNf4 : quant::QuantType::kFp4;
      q4.blocksize = 64;
      q4.double_quant = true;
      save.quantize_4bit = q4;
    }
    auto report = lora::SaveHfFolder(**model, out, save);
    if (!report.ok()) return Fail("merge", std::string(report.status().message()));
    std::printf("merge: %zu adapted projections merged; %lld tensors, %.1f MiB written to %s\n", n_adapters,
                static_cast<long long>(report->tensors), report->bytes / 1048576.0, out.c_str());
    if (!requantize.empty()) {
      std::printf("merge: re-quantized %lld merged projections to %s: weight error ‖dequant(quant(W)) − W‖ / ‖W‖ = "
                  "%.4f against the merged (dequantized base + adapter) weights\n",
                  static_cast<long long>(report->requantized), requantize.c_str(), report->requantize_rel_error);
    }
  } catch (...) {
    return Fail("merge", std::string(StatusFromCurrentException("merge").message()));
  }
  return 0;
}

}  // namespace llmtrain::cli
