// llmtrain tokenize --tokenizer PATH [--no-special] [--chat] [--add-generation-prompt] [--decode]
//                   [--skip-special-tokens]
// JSONL on stdin, one result per line on stdout:
//   default: each line a JSON string → the JSON array of its ids (HF `tokenizer(text).input_ids`);
//   --chat:  each line a JSON array of {"role", "content"} messages → the ids of the rendered chat
//            (HF `apply_chat_template(messages, tokenize=True)`);
//   --decode: each line a JSON array of ids → the JSON string of their text (HF `decode`).
// A bad line is reported on stderr with its line number and answered with `null`, so the output
// keeps one line per input line; the exit status is 1 if any line was bad.
#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "llmtrain/commands.h"
#include "llmtrain/data/collator.h"
#include "llmtrain/tokenizer/chat_template.h"
#include "llmtrain/tokenizer/tokenizer.h"
#include "nlohmann/json.hpp"

namespace llmtrain::cli {
namespace {

constexpr char kHelp[] =
    "usage: llmtrain tokenize --tokenizer PATH [--no-special] [--chat] [--add-generation-prompt]\n"
    "                         [--decode [--skip-special-tokens]]\n"
    "  PATH: an HF folder with tokenizer.json, a tokenizer.json, or a .gguf file.\n"
    "  stdin: JSONL; each line a JSON string (or, with --chat, a JSON array of messages; with\n"
    "  --decode, a JSON array of ids). stdout: one JSON array of ids (or string) per line.\n"
    "  --no-special: no BOS/EOS from the post-processor (add_special_tokens=False).\n"
    "  --image-tokens N (with --chat): messages may hold {\"type\": \"image\"} parts; each becomes\n"
    "  Gemma3Processor's expansion with N <image_soft_token>s (the token is added when the vocabulary\n"
    "  lacks it), as processor(text=apply_chat_template(...), add_special_tokens=False) gives.\n";

}  // namespace

int RunTokenize(const std::vector<std::string>& args) {
  std::string path;
  bool add_special = true, chat = false, generation_prompt = false, decode = false, skip_special = false;
  int64_t image_tokens = 0;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "--help" || a == "-h") {
      std::fputs(kHelp, stdout);
      return 0;
    } else if (a == "--tokenizer" && i + 1 < args.size()) {
      path = args[++i];
    } else if (a == "--no-special") {
      add_special = false;
    } else if (a == "--chat") {
      chat = true;
    } else if (a == "--add-generation-prompt") {
      generation_prompt = true;
    } else if (a == "--image-tokens" && i + 1 < args.size()) {
      if (!absl::SimpleAtoi(args[++i], &image_tokens) || image_tokens < 1) {
        return Fail("tokenize", "--image-tokens: expected N ≥ 1", 2);
      }
    } else if (a == "--decode") {
      decode = true;
    } else if (a == "--skip-special-tokens") {
      skip_special = true;
    } else {
      return Fail("tokenize", absl::StrCat("unknown argument \"", a, "\"\n", kHelp), 2);
    }
  }
  if (path.empty()) return Fail("tokenize", absl::StrCat("--tokenizer is required\n", kHelp), 2);
  auto tok = tokenizer::Tokenizer::Load(path);
  if (!tok.ok()) return Fail("tokenize", std::string(tok.status().message()));
  data::ImageOptions images;  // Gemma3Processor's expansion of each image placeholder
  images.tokens_per_image = image_tokens;
  if (image_tokens > 0) {
    if (!chat) return Fail("tokenize", "--image-tokens needs --chat", 2);
    (*tok)->AddSpecialToken(images.image_token);
  }
  std::unique_ptr<tokenizer::ChatTemplate> chat_template;
  if (chat) {
    auto t = tokenizer::ChatTemplate::ForTokenizer(**tok);
    if (!t.ok()) return Fail("tokenize", std::string(t.status().message()));
    chat_template = std::move(*t);
  }
  std::string line;
  int64_t line_number = 0;
  bool any_bad = false;
  while (std::getline(std::cin, line)) {
    ++line_number;
    const nlohmann::json value = nlohmann::json::parse(line, nullptr, false);
    std::string problem;
    nlohmann::json out;
    if (value.is_discarded()) {
      problem = "not valid JSON";
    } else if (decode) {
      std::vector<int32_t> ids;
      for (const auto& id : value) {
        if (!id.is_number_integer()) {
          problem = "expected an array of integer ids";
          break;
        }
        ids.push_back(id.get<int32_t>());
      }
      if (!value.is_array()) problem = "expected an array of integer ids";
      if (problem.empty()) out = (*tok)->Decode(ids, skip_special);
    } else if (chat) {
      auto messages = tokenizer::ParseMessages(line);
      if (!messages.ok()) {
        problem = std::string(messages.status().message());
      } else {
        auto rendered = chat_template->Render(*messages, generation_prompt);
        if (!rendered.ok()) {
          problem = std::string(rendered.status().message());
        } else {
          if (images.tokens_per_image > 0) data::ExpandImagePlaceholders(images, &*rendered);
          out = tokenizer::EncodeRendered(**tok, *rendered).ids;
        }
      }
    } else if (!value.is_string()) {
      problem = "expected a JSON string";
    } else {
      out = (*tok)->Encode(value.get<std::string>(), add_special);
    }
    if (!problem.empty()) {
      std::fprintf(stderr, "llmtrain tokenize: stdin line %lld: %s\n", static_cast<long long>(line_number),
                   problem.c_str());
      any_bad = true;
      std::fputs("null\n", stdout);
      continue;
    }
    const std::string text = out.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    std::fwrite(text.data(), 1, text.size(), stdout);
    std::fputc('\n', stdout);
  }
  return any_bad ? 1 : 0;
}

}  // namespace llmtrain::cli
