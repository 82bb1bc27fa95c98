// llmtrain generate --model PATH (--prompt TEXT | --input-ids JSON) [--chat] [--max-new-tokens N]
//                   [--temperature T] [--top-k K] [--top-p P] [--repetition-penalty R]
//                   [--seed S] [--json] [--tokenizer PATH] [--image FILE] [--packed] [--kv-cache DTYPE]
//                   [--device cpu|cuda[:N]]
// Streams the new tokens as they are produced; --json prints {"ids": [...], "text": "..."}.
#include <ATen/ATen.h>

#include <cstdio>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "llmtrain/commands.h"
#include "llmtrain/core/status.h"
#include "llmtrain/model/decoder.h"
#include "llmtrain/model/generate.h"
#include "llmtrain/tokenizer/chat_template.h"
#include "llmtrain/tokenizer/tokenizer.h"
#include "llmtrain/core/atomic_file.h"
#include "llmtrain/data/collator.h"
#include "llmtrain/data/image.h"
#include "nlohmann/json.hpp"

namespace llmtrain::cli {
namespace {

constexpr char kHelp[] =
    "usage: llmtrain generate --model PATH (--prompt TEXT | --input-ids JSON) [--chat]\n"
    "                         [--max-new-tokens 32] [--temperature 0] [--top-k 0] [--top-p 1]\n"
    "                         [--repetition-penalty 1] [--seed 0] [--dtype f32] [--json]\n"
    "                         [--load-in-4bit] [--packed] [--kv-cache f32|bf16|f16] [--adapter DIR]\n"
    "                         [--tokenizer PATH] [--image FILE] [--device cpu|cuda[:N]]\n"
    "  --prompt: text, tokenized by the model's tokenizer (BOS added where the model wants it);\n"
    "  --chat wraps it as one user turn of the family's chat template, with the generation prompt.\n"
    "  --input-ids: a JSON array of prompt token ids, e.g. [2, 818, 5279].\n"
    "  --temperature 0 is greedy. Stops at the model's end tokens or after --max-new-tokens.\n"
    "  --json prints {\"ids\": [new ids], \"text\": \"...\"} instead of streaming.\n"
    "  --kv-cache: the dtype keys and values are kept in (default: the model's); bf16 halves the\n"
    "  cache and rounds them (docs/decoding.md gives the effect on the 270M's logits).\n"
    "  --tokenizer PATH: a GGUF or a folder with tokenizer.json, when the model's own has none (as\n"
    "  a run spec's model.tokenizer; e.g. a `llmtrain make-vlm` folder with the 270M GGUF's).\n"
    "  --image FILE (repeatable, with --chat): an image+text model sees the images before the text\n"
    "  of the user turn (Gemma 3's processor: each becomes its tokens, pixels from the model folder's\n"
    "  preprocessor_config.json or Gemma 3's defaults at the tower's size).\n"
    "  --device: where the model computes (default cpu); the model is loaded, then moved there.\n";

}  // namespace

int RunGenerate(const std::vector<std::string>& args) {
  std::string model_path, tokenizer_path, input_ids_json, prompt_text;
  bool has_prompt = false, as_json = false, chat = false;
  model::GenerationOptions options;
  Dtype dtype = Dtype::kF32;
  ModelFlags flags;
  std::vector<std::string> images;
  std::optional<c10::Device> device;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "--help" || a == "-h") {
      std::fputs(kHelp, stdout);
      std::fputs(kModelFlagsHelp, stdout);
      return 0;
    }
    std::string flag_error;
    if (flags.Parse(a, args, &i, &flag_error)) {
      if (!flag_error.empty()) return Fail("generate", flag_error, 2);
      continue;
    }
    if (a == "--json") {
      as_json = true;
      continue;
    }
    if (a == "--chat") {
      chat = true;
      continue;
    }
    if (i + 1 >= args.size()) return Fail("generate", absl::StrCat(a, " needs a value\n", kHelp), 2);
    const std::string& v = args[++i];
    bool ok = true;
    if (a == "--model") {
      model_path = v;
    } else if (a == "--tokenizer") {
      tokenizer_path = v;
    } else if (a == "--image") {
      images.push_back(v);
    } else if (a == "--prompt") {
      has_prompt = true;
      prompt_text = v;
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
    } else if (a == "--kv-cache") {
      auto parsed = ParseKvCacheDtype(v);
      if (!parsed.ok()) return Fail("generate", std::string(parsed.status().message()), 2);
      options.kv_cache_dtype = *parsed;
    } else if (a == "--device") {
      try {
        device.emplace(v);
      } catch (const c10::Error&) {
        return Fail("generate", absl::StrCat("--device: \"", v, "\" is not cpu, cuda or cuda:N"), 2);
      }
      if (!device->is_cpu() && !device->is_cuda()) {
        return Fail("generate", absl::StrCat("--device: \"", v, "\" is not cpu, cuda or cuda:N"), 2);
      }
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
  if (has_prompt == !input_ids_json.empty()) {
    return Fail("generate", absl::StrCat("give one of --prompt and --input-ids\n", kHelp), 2);
  }
  if (chat && !has_prompt) return Fail("generate", "--chat needs --prompt", 2);
  if (!images.empty() && !chat) return Fail("generate", "--image needs --chat (the template places the image)", 2);
  // An image+text prompt needs the model's tokens per image first.
  const auto load = [&]() -> absl::StatusOr<std::unique_ptr<model::Decoder>> {
    auto loaded = flags.Load(model_path, dtype);
    if (loaded.ok() && device.has_value()) {
      if (absl::Status moved = (*loaded)->MoveTo(*device); !moved.ok()) return moved;
    }
    return loaded;
  };
  absl::StatusOr<std::unique_ptr<model::Decoder>> model = absl::UnknownError("not loaded");
  if (!images.empty()) {
    model = load();
    if (!model.ok()) return Fail("generate", std::string(model.status().message()));
    if (!(*model)->has_vision()) return Fail("generate", absl::StrCat(model_path, ": --image: the model has no vision tower"));
  }
  // The model's tokenizer: the GGUF's vocabulary, or tokenizer.json in the model folder (or in
  // --tokenizer).
  auto tok = tokenizer::Tokenizer::Load(tokenizer_path.empty() ? model_path : tokenizer_path);
  if (has_prompt && !tok.ok()) return Fail("generate", std::string(tok.status().message()));
  std::vector<int64_t> prompt;
  if (has_prompt) {
    std::vector<int32_t> ids;
    if (chat) {
      auto chat_template = tokenizer::ChatTemplate::ForTokenizer(**tok);
      if (!chat_template.ok()) return Fail("generate", std::string(chat_template.status().message()));
      tokenizer::Message user;
      user.role = "user";
      user.content = prompt_text;
      if (!images.empty()) {
        user.content_is_list = true;
        for (size_t k = 0; k < images.size(); ++k) user.parts.push_back({"image", ""});
        user.parts.push_back({"text", prompt_text});
        auto image_options = ModelImageOptions(model_path, tok->get(), **model);
        if (!image_options.ok()) return Fail("generate", std::string(image_options.status().message()));
        auto rendered = (*chat_template)->Render({user}, /*add_generation_prompt=*/true);
        if (!rendered.ok()) return Fail("generate", std::string(rendered.status().message()));
        data::ExpandImagePlaceholders(*image_options, &*rendered);
        ids = tokenizer::EncodeRendered(**tok, *rendered).ids;
        std::vector<float> pixels;
        for (const std::string& path : images) {
          auto image = data::LoadImage(path, image_options->limits);
          if (!image.ok()) return Fail("generate", std::string(image.status().message()));
          const std::vector<float> one = data::PreprocessImage(*image, image_options->processor);
          pixels.insert(pixels.end(), one.begin(), one.end());
        }
        options.pixel_values = at::tensor(at::ArrayRef<float>(pixels), at::kFloat)
                                   .view({static_cast<int64_t>(images.size()), 3, image_options->processor.height,
                                          image_options->processor.width});
      } else {
        auto encoded = tokenizer::EncodeChat(**tok, **chat_template, {user}, /*add_generation_prompt=*/true);
        if (!encoded.ok()) return Fail("generate", std::string(encoded.status().message()));
        ids = encoded->ids;
      }
    } else {
      ids = (*tok)->Encode(prompt_text);
    }
    prompt.assign(ids.begin(), ids.end());
  } else {
    const nlohmann::json parsed = nlohmann::json::parse(input_ids_json, nullptr, false);
    if (!parsed.is_array()) return Fail("generate", "--input-ids: expected a JSON array of token ids", 2);
    for (const auto& id : parsed) {
      if (!id.is_number_integer()) return Fail("generate", "--input-ids: every element must be an integer", 2);
      prompt.push_back(id.get<int64_t>());
    }
  }
  if (absl::Status valid = model::Validate(options); !valid.ok()) {
    return Fail("generate", std::string(valid.message()), 2);
  }
  if (!model.ok()) model = load();
  if (!model.ok()) return Fail("generate", std::string(model.status().message()));
  // Text streams as it becomes final (a character split over byte tokens waits for its last
  // byte); without a tokenizer, ids are printed.
  std::unique_ptr<tokenizer::StreamDecoder> stream;
  if (tok.ok()) stream = std::make_unique<tokenizer::StreamDecoder>(**tok, /*skip_special_tokens=*/true);
  if (!as_json) {
    options.on_token = [&](int64_t id) {
      if (stream) {
        std::fputs(stream->Push(static_cast<int32_t>(id)).c_str(), stdout);
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
    if (tok.ok()) text = (*tok)->Decode(std::vector<int32_t>(ids->begin(), ids->end()), /*skip_special_tokens=*/true);
    const nlohmann::json out = {{"ids", *ids}, {"text", text}};
    std::printf("%s\n", out.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
  } else {
    if (stream) std::fputs(stream->Finish().c_str(), stdout);
    std::printf("\n");
  }
  return 0;
}

}  // namespace llmtrain::cli
