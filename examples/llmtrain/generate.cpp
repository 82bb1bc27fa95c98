// llmtrain generate --model PATH (--prompt TEXT | --input-ids JSON) [--max-new-tokens N]
//                   [--temperature T] [--top-k K] [--top-p P] [--repetition-penalty R]
//                   [--seed S] [--json]
// Streams the new tokens as they are produced; --json prints {"ids": [...], "text": "..."}.
#include <ATen/ATen.h>

#include <cstdio>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "llmtrain/commands.h"
#include "llmtrain/core/status.h"
#include "llmtrain/io/gguf.h"
#include "llmtrain/model/decoder.h"
#include "llmtrain/model/generate.h"
#include "nlohmann/json.hpp"

namespace llmtrain::cli {
namespace {

constexpr char kHelp[] =
    "usage: llmtrain generate --model PATH (--prompt TEXT | --input-ids JSON)\n"
    "                         [--max-new-tokens 32] [--temperature 0] [--top-k 0] [--top-p 1]\n"
    "                         [--repetition-penalty 1] [--seed 0] [--dtype f32] [--json]\n"
    "  --input-ids: a JSON array of prompt token ids, e.g. [2, 818, 5279].\n"
    "  --temperature 0 is greedy. Stops at the model's end tokens or after --max-new-tokens.\n"
    "  --json prints {\"ids\": [new ids], \"text\": \"...\"} instead of streaming.\n";

// Text of token pieces from a GGUF SentencePiece vocabulary ("▁" is a space, "<0xHH>" a byte).
// Empty when the model has no such vocabulary (an HF folder before the tokenizer lands).
class PieceDecoder {
 public:
  explicit PieceDecoder(const std::string& model_path) {
    if (!absl::EndsWith(model_path, ".gguf")) return;
    auto gguf = io::GgufFile::Open(model_path);
    if (!gguf.ok()) return;
    const io::GgufValue* kind = (*gguf)->FindMetadata("tokenizer.ggml.model");
    const io::GgufValue* tokens = (*gguf)->FindMetadata("tokenizer.ggml.tokens");
    if (kind == nullptr || kind->AsString() == nullptr || *kind->AsString() != "llama" || tokens == nullptr) return;
    pieces_ = tokens->strings;
  }
  bool available() const { return !pieces_.empty(); }
  std::string Decode(int64_t id) const {
    if (id < 0 || id >= static_cast<int64_t>(pieces_.size())) return "";
    const std::string& p = pieces_[id];
    if (p.size() == 6 && absl::StartsWith(p, "<0x") && p.back() == '>') {
      int byte = 0;
      if (absl::SimpleHexAtoi(p.substr(3, 2), &byte)) return std::string(1, static_cast<char>(byte));
    }
    std::string out;
    for (size_t i = 0; i < p.size(); ++i) {
      if (p.compare(i, 3, "\xe2\x96\x81") == 0) {  // U+2581 "▁"
        out += ' ';
        i += 2;
      } else {
        out += p[i];
      }
    }
    return out;
  }

 private:
  std::vector<std::string> pieces_;
};

}  // namespace

int RunGenerate(const std::vector<std::string>& args) {
  std::string model_path, input_ids_json;
  bool has_prompt = false, as_json = false;
  model::GenerationOptions options;
  Dtype dtype = Dtype::kF32;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "--help" || a == "-h") {
      std::fputs(kHelp, stdout);
      return 0;
    }
    if (a == "--json") {
      as_json = true;
      continue;
    }
    if (i + 1 >= args.size()) return Fail("generate", absl::StrCat(a, " needs a value\n", kHelp), 2);
    const std::string& v = args[++i];
    bool ok = true;
    if (a == "--model") {
      model_path = v;
    } else if (a == "--prompt") {
      has_prompt = true;
    } else if (a == "--input-ids") {
      input_ids_json = v;
    } else if (a == "--max-new-tokens") {
      ok = absl::SimpleAtoi(v, &options.max_new_tokens);
    } else if (a == "--temperature") {
      ok = absl::SimpleAtod(v, &options.temperature);
    } else if (a == "--top-k") {
      ok = absl::SimpleAtoi(v, &options.top_k);
    } else if (a == "--top-p") {
      ok = absl::SimpleAtod(v, &options.top_p);
    } else if (a == "--repetition-penalty") {
      ok = absl::SimpleAtod(v, &options.repetition_penalty);
    } else if (a == "--seed") {
      ok = absl::SimpleAtoi(v, &options.seed);
    } else if (a == "--dtype") {
      auto parsed = DtypeFromUserName(v);
      if (!parsed.ok()) return Fail("generate", std::string(parsed.status().message()), 2);
      dtype = *parsed;
    } else {
      return Fail("generate", absl::StrCat("unknown option ", a, "\n", kHelp), 2);
    }
    if (!ok) return Fail("generate", absl::StrCat(a, ": not a number: \"", v, "\""), 2);
  }
  if (model_path.empty()) return Fail("generate", absl::StrCat("--model is required\n", kHelp), 2);
  if (has_prompt) {
    return Fail("generate", "--prompt needs llmtrain's tokenizer, which is not built yet (issue #5); "
                            "pass --input-ids", 2);
  }
  if (input_ids_json.empty()) return Fail("generate", absl::StrCat("--input-ids is required\n", kHelp), 2);
  const nlohmann::json parsed = nlohmann::json::parse(input_ids_json, nullptr, false);
  std::vector<int64_t> prompt;
  if (!parsed.is_array()) return Fail("generate", "--input-ids: expected a JSON array of token ids", 2);
  for (const auto& id : parsed) {
    if (!id.is_number_integer()) return Fail("generate", "--input-ids: every element must be an integer", 2);
    prompt.push_back(id.get<int64_t>());
  }
  if (absl::Status valid = model::Validate(options); !valid.ok()) {
    return Fail("generate", std::string(valid.message()), 2);
  }
  model::DecoderOptions model_options;
  model_options.dtype = dtype;
  auto model = model::Decoder::Load(model_path, model_options);
  if (!model.ok()) return Fail("generate", std::string(model.status().message()));
  const PieceDecoder decoder(model_path);
  if (!as_json) {
    options.on_token = [&](int64_t id) {
      if (decoder.available()) {
        std::fputs(decoder.Decode(id).c_str(), stdout);
      } else {
        std::printf("%lld ", static_cast<long long>(id));
      }
      std::fflush(stdout);
    };
  }
  auto ids = model::Generate(**model, prompt, options);
  if (!ids.ok()) return Fail("generate", std::string(ids.status().message()));
  if (as_json) {
    std::string text;
    for (int64_t id : *ids) text += decoder.Decode(id);
    const nlohmann::json out = {{"ids", *ids}, {"text", text}};
    std::printf("%s\n", out.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
  } else {
    std::printf("\n");
  }
  return 0;
}

}  // namespace llmtrain::cli
