// llmtrain export --model PATH [--adapter DIR] [--load-in-4bit] --output OUT.gguf
//                 [--type f32|f16|bf16|q8_0|q4_0|q4_k_m] [--vocab FILE.gguf] [--name NAME] [--adapter-only]
// A model, with its adapter merged, as a GGUF for llama.cpp and Ollama, or the adapter alone as a
// LoRA GGUF for llama.cpp's --lora (serve/export.h).
#include <cstdio>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "llmtrain/commands.h"
#include "llmtrain/core/status.h"
#include "llmtrain/io/families.h"
#include "llmtrain/io/gguf.h"
#include "llmtrain/io/hf_config.h"
#include "llmtrain/lora/lora.h"
#include "llmtrain/model/decoder.h"
#include "llmtrain/serve/export.h"
#include "llmtrain/tokenizer/tokenizer.h"

namespace llmtrain::cli {
namespace {

constexpr char kHelp[] =
    "usage: llmtrain export --model PATH --output OUT.gguf [--type f32|f16|bf16|q8_0|q4_0|q4_k_m]\n"
    "                       [--adapter DIR] [--load-in-4bit] [--vocab FILE.gguf] [--name NAME]\n"
    "                       [--adapter-only]\n"
    "  Writes the model, with the adapter merged, as a GGUF that llama.cpp, Ollama and\n"
    "  transformers (gguf_file=) load: llama.cpp's architecture keys and tensor names, the\n"
    "  vocabulary and chat template. --type (default f16): the 2-D weights' type; q8_0 and q4_0\n"
    "  round as gguf.quants.quantize; q4_k_m is llama-quantize's Q4_K_M (its Q4_K/Q6_K mix by tensor\n"
    "  and layer, its k-quant rounding); norms and biases stay f32.\n"
    "  The vocabulary: --vocab's (a GGUF), else the model's own GGUF's, else the model folder's\n"
    "  tokenizer.json (byte-level BPE: Qwen).\n"
    "  --load-in-4bit: merge into the NF4 base the adapter was trained on (QLoRA), as merge does.\n"
    "  --adapter-only: write the --adapter alone as a LoRA GGUF for llama.cpp's --lora (f32, f16,\n"
    "  bf16, q8_0), to use with the base model's GGUF; nothing is merged and no vocabulary written.\n";

}  // namespace

int RunExport(const std::vector<std::string>& args) {
  std::string model_path, output, vocab_path, name, type_name = "f16";
  bool adapter_only = false;
  ModelFlags flags;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "--help" || a == "-h") {
      std::fputs(kHelp, stdout);
      return 0;
    }
    std::string flag_error;
    if (flags.Parse(a, args, &i, &flag_error)) {
      if (!flag_error.empty()) return Fail("export", flag_error, 2);
      continue;
    }
    if (a == "--adapter-only") {
      adapter_only = true;
      continue;
    }
    if (i + 1 >= args.size()) return Fail("export", absl::StrCat(a, " needs a value\n", kHelp), 2);
    const std::string& v = args[++i];
    if (a == "--model") {
      model_path = v;
    } else if (a == "--output") {
      output = v;
    } else if (a == "--type") {
      type_name = v;
    } else if (a == "--vocab") {
      vocab_path = v;
    } else if (a == "--name") {
      name = v;
    } else {
      return Fail("export", absl::StrCat("unknown option ", a, "\n", kHelp), 2);
    }
  }
  if (model_path.empty() || output.empty()) return Fail("export", absl::StrCat("--model and --output are required\n", kHelp), 2);
  auto type = serve::ParseExportType(type_name);
  if (!type.ok()) return Fail("export", std::string(type.status().message()), 2);
  if (adapter_only) {
    if (flags.adapter.empty()) return Fail("export", "--adapter-only needs --adapter DIR", 2);
    if (*type == serve::ExportType::kQ4_0) return Fail("export", "--adapter-only: --type is f32, f16, bf16 or q8_0", 2);
    try {
      auto model = flags.Load(model_path, Dtype::kF32);
      if (!model.ok()) return Fail("export", std::string(model.status().message()));
      serve::ExportOptions options;
      options.type = *type;
      options.name = name;
      auto report = serve::ExportLoraGguf(**model, output, options);
      if (!report.ok()) return Fail("export", std::string(report.status().message()));
      std::string types;
      for (const auto& [t, n] : report->by_type) absl::StrAppend(&types, types.empty() ? "" : ", ", n, " ", t);
      std::printf("export: %s: LoRA adapter, %lld tensors (%s) for %zu projections, %.1f MiB\n", output.c_str(),
                  static_cast<long long>(report->tensors), types.c_str(), lora::Adapters(**model).size(),
                  report->bytes / 1048576.0);
    } catch (...) {
      return Fail("export", std::string(StatusFromCurrentException("export").message()));
    }
    return 0;
  }
  try {
    // The vocabulary first: a missing one is refused before the model loads.
    serve::GgufVocabulary vocab;
    const std::string vocab_source = !vocab_path.empty() ? vocab_path : absl::EndsWith(model_path, ".gguf") ? model_path : "";
    if (!vocab_source.empty()) {
      auto gguf = io::GgufFile::Open(vocab_source);
      if (!gguf.ok()) return Fail("export", std::string(gguf.status().message()));
      vocab = serve::GgufVocabularyFromGguf(**gguf);
    }
    std::unique_ptr<tokenizer::Tokenizer> tok;
    if (vocab_source.empty()) {
      auto loaded = tokenizer::Tokenizer::Load(model_path);
      if (!loaded.ok()) return Fail("export", std::string(loaded.status().message()));
      if ((*loaded)->kind() != "byte_level") {
        return Fail("export", "a SentencePiece-style tokenizer.json (Gemma) cannot be exported as a GGUF vocabulary: "
                              "give the model's GGUF with --vocab");
      }
      tok = *std::move(loaded);
    }
    auto model = flags.Load(model_path, Dtype::kF32);
    if (!model.ok()) return Fail("export", std::string(model.status().message()));
    if (tok != nullptr) {
      const io::TextConfig& text = (*model)->config().text;
      const io::FamilyInfo* family = io::FindFamily(text.model_type);
      auto built = serve::GgufVocabularyFromTokenizer(
          *tok, family ? family->gguf_pre_tokenizer : "", text.vocab_size, text.bos_token_id,
          text.eos_token_ids.empty() ? std::nullopt : std::optional<int64_t>(text.eos_token_ids[0]));
      if (!built.ok()) return Fail("export", std::string(built.status().message()));
      vocab = *std::move(built);
    }
    const size_t n_adapters = lora::Adapters(**model).size();
    if (absl::Status merged = lora::MergeAdapters(model->get()); !merged.ok()) {
      return Fail("export", std::string(merged.message()));
    }
    serve::ExportOptions options;
    options.type = *type;
    options.name = name;
    auto report = serve::ExportGguf(**model, vocab, output, options);
    if (!report.ok()) return Fail("export", std::string(report.status().message()));
    std::string types;
    for (const auto& [t, n] : report->by_type) absl::StrAppend(&types, types.empty() ? "" : ", ", n, " ", t);
    std::printf("export: %s: %lld tensors (%s), %.1f MiB%s%s\n", output.c_str(), static_cast<long long>(report->tensors),
                types.c_str(), report->bytes / 1048576.0,
                n_adapters ? absl::StrCat(", ", n_adapters, " adapted projections merged").c_str() : "",
                report->skipped_vision ? absl::StrCat("; ", report->skipped_vision,
                                                      " vision-tower tensors left out (llama.cpp keeps them in an mmproj file)")
                                             .c_str()
                                       : "");
  } catch (...) {
    return Fail("export", std::string(StatusFromCurrentException("export").message()));
  }
  return 0;
}

}  // namespace llmtrain::cli
