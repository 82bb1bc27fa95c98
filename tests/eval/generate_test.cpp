// model::GenerateBatch and eval::GeneratePredictions' batches on the real Gemma 3 270M: prompts of
// many lengths, left-padded together, give each the ids that Generate gives it alone.
#include <ATen/ATen.h>

#include <catch2/catch.hpp>
#include <cstdio>

#include "absl/strings/str_cat.h"
#include "llmtrain/eval/evaluate.h"
#include "llmtrain/model/decoder.h"
#include "llmtrain/model/generate.h"
#include "llmtrain/tokenizer/chat_template.h"
#include "llmtrain/tokenizer/tokenizer.h"

namespace llmtrain {
namespace {

std::vector<std::vector<int64_t>> Prompts(const tokenizer::Tokenizer& tok, const tokenizer::ChatTemplate& chat) {
  const char* questions[] = {
      "What is the capital of France?",
      "Write a haiku about the sea.",
      "Explain in two sentences why the sky is blue, and mention Rayleigh scattering by name.",
      "2 + 2 =",
      "List three prime numbers.",
      "Translate 'good morning' into German.",
      "What does the bash package do?",
      "Summarize: The quick brown fox jumps over the lazy dog. The dog does not move. The fox runs away into "
      "the forest, where it meets a rabbit, and the two of them talk about the weather until night falls.",
      "Hi",
      "Name a colour.",
      "Why do cats purr?",
      "Give me a word that rhymes with 'light'.",
  };
  std::vector<std::vector<int64_t>> prompts;
  for (const char* q : questions) {
    tokenizer::Message message;
    message.role = "user";
    message.content = q;
    auto rendered = chat.Render({message}, /*add_generation_prompt=*/true);
    REQUIRE(rendered.ok());
    const std::vector<int32_t> ids = tokenizer::EncodeRendered(tok, *rendered).ids;
    prompts.emplace_back(ids.begin(), ids.end());
  }
  return prompts;
}

TEST_CASE("generate: a batch of left-padded prompts gives each prompt's ids alone (real 270M)", "[eval][real]") {
  const std::string gguf = std::string(LLMTRAIN_SOURCE_DIR) + "/.venv/models/gemma-3-270m-q4_k_m.gguf";
  auto model = model::Decoder::Load(gguf, {});
  REQUIRE(model.ok());
  auto tok = tokenizer::Tokenizer::Load(gguf);
  REQUIRE(tok.ok());
  auto chat = tokenizer::ChatTemplate::ForTokenizer(**tok);
  REQUIRE(chat.ok());
  const std::vector<std::vector<int64_t>> prompts = Prompts(**tok, **chat);

  int64_t compared = 0, differing = 0, tokens = 0;
  for (const double temperature : {0.0, 0.8}) {
    model::GenerationOptions options;
    options.max_new_tokens = 24;
    options.temperature = temperature;
    options.top_k = temperature > 0 ? 40 : 0;
    options.seed = 5;
    std::vector<std::vector<int64_t>> alone;
    for (const std::vector<int64_t>& p : prompts) {
      auto out = model::Generate(**model, p, options);
      REQUIRE(out.ok());
      alone.push_back(*out);
      tokens += static_cast<int64_t>(out->size());
    }
    // All at once, and in batches of 5 (the last one shorter).
    auto all = model::GenerateBatch(**model, prompts, options);
    REQUIRE(all.ok());
    REQUIRE(all->size() == prompts.size());
    for (size_t r = 0; r < prompts.size(); ++r) {
      ++compared;
      if ((*all)[r] != alone[r]) {
        ++differing;
        UNSCOPED_INFO("temperature " << temperature << ", prompt " << r << " differs in a batch of 12");
      }
    }
    for (size_t begin = 0; begin < prompts.size(); begin += 5) {
      const std::vector<std::vector<int64_t>> part(prompts.begin() + static_cast<std::ptrdiff_t>(begin),
                                                   prompts.begin() + static_cast<std::ptrdiff_t>(std::min(begin + 5, prompts.size())));
      auto out = model::GenerateBatch(**model, part, options);
      REQUIRE(out.ok());
      for (size_t r = 0; r < part.size(); ++r) {
        ++compared;
        if ((*out)[r] != alone[begin + r]) {
          ++differing;
          UNSCOPED_INFO("temperature " << temperature << ", prompt " << begin + r << " differs in a batch of 5");
        }
      }
    }
  }
  std::printf("generate: %lld batched outputs (12 prompts of %zu to %zu tokens, greedy and sampled, batches of 12 and "
              "5) vs one prompt at a time (%lld tokens): %lld differ\n",
              static_cast<long long>(compared), std::min_element(prompts.begin(), prompts.end(), [](auto& a, auto& b) { return a.size() < b.size(); })->size(),
              std::max_element(prompts.begin(), prompts.end(), [](auto& a, auto& b) { return a.size() < b.size(); })->size(),
              static_cast<long long>(tokens), static_cast<long long>(differing));
  CHECK(differing == 0);

  // GeneratePredictions: the same texts in batches of 4 as one by one, the items in their order.
  std::vector<eval::GenerationItem> one, four;
  for (const std::vector<int64_t>& p : prompts) {
    eval::GenerationItem item;
    item.where = {absl::StrCat("prompt ", one.size())};
    item.prompt_ids = p;
    one.push_back(item);
  }
  four = one;
  model::GenerationOptions greedy;
  greedy.max_new_tokens = 16;
  int64_t progress_calls = 0, last_done = 0;
  REQUIRE(eval::GeneratePredictions(**model, **tok, greedy, &one, {}, 1).ok());
  REQUIRE(eval::GeneratePredictions(**model, **tok, greedy, &four, [&](int64_t done, int64_t total) {
    ++progress_calls;
    CHECK(done > last_done);
    CHECK(total == 12);
    last_done = done;
  }, 4).ok());
  CHECK(progress_calls == 3);
  CHECK(last_done == 12);
  for (size_t i = 0; i < one.size(); ++i) {
    CHECK(one[i].prediction == four[i].prediction);
    CHECK_FALSE(one[i].prediction.empty());
  }
  // Bad input is refused, naming the prompt.
  CHECK_THAT(std::string(model::GenerateBatch(**model, {{2, 3}, {}}, greedy).status().message()),
             Catch::Contains("prompt 1"));
  CHECK(model::GenerateBatch(**model, {}, greedy)->empty());
  CHECK_THAT(std::string(eval::GeneratePredictions(**model, **tok, greedy, &four, {}, 0).message()),
             Catch::Contains("batch_size"));
}

}  // namespace
}  // namespace llmtrain
