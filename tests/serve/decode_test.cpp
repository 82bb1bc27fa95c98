// Decoding from packed weights (quant::PackedLinearFactory, bfloat16 KV cache) on the real Gemma 3
// 270M GGUF against the same file dequantized to float32 (the default load): logits at every step
// and greedy ids of 20 chat prompts.
#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <catch2/catch.hpp>
#include <cstdio>
#include <optional>
#include <set>
#include <utility>

#include "llmtrain/lora/lora.h"
#include "llmtrain/model/decoder.h"
#include "llmtrain/model/generate.h"
#include "llmtrain/quant/gguf_linear.h"
#include "llmtrain/tokenizer/chat_template.h"
#include "llmtrain/tokenizer/tokenizer.h"

namespace llmtrain {
namespace {

const char* const kQuestions[] = {
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain in two sentences why the sky is blue.",
    "2 + 2 =",
    "List three prime numbers.",
    "Translate 'good morning' into German.",
    "What does the bash package do?",
    "Summarize: The fox runs into the forest, where it meets a rabbit, and they talk until night falls.",
    "Hi",
    "Name a colour.",
    "Why do cats purr?",
    "Give me a word that rhymes with 'light'.",
    "What is a compiler?",
    "Write one sentence about autumn.",
    "How many legs does a spider have?",
    "Suggest a name for a small bakery.",
    "What is the boiling point of water at sea level?",
    "Describe a bicycle to a child.",
    "Which planet is closest to the sun?",
    "Tell me a fun fact about octopuses.",
};

TEST_CASE("decode: packed weights follow the dequantized float32 model at every step (real 270M)", "[serve][real]") {
  const std::string gguf = std::string(LLMTRAIN_SOURCE_DIR) + "/.venv/models/gemma-3-270m-q4_k_m.gguf";
  auto dense = model::Decoder::Load(gguf, {});
  REQUIRE(dense.ok());
  model::DecoderOptions packed_options;
  packed_options.linear_factory = quant::PackedLinearFactory(std::nullopt);
  packed_options.head_through_factory = true;
  auto packed = model::Decoder::Load(gguf, packed_options);
  REQUIRE(packed.ok());
  // Every projection and the head keep the file's blocks.
  std::set<std::string> kinds;
  for (const std::string& name : (*packed)->LinearNames()) kinds.insert(std::string((*packed)->linear(name)->kind()));
  CHECK(kinds == std::set<std::string>{"q4_k", "q5_0", "q6_k", "q8_0"});
  REQUIRE((*packed)->head_layer() != nullptr);
  CHECK((*packed)->head_layer()->kind() == "q8_0");
  CHECK((*dense)->head_layer() == nullptr);

  auto tok = tokenizer::Tokenizer::Load(gguf);
  REQUIRE(tok.ok());
  auto chat = tokenizer::ChatTemplate::ForTokenizer(**tok);
  REQUIRE(chat.ok());
  std::vector<std::vector<int64_t>> prompts;
  for (const char* q : kQuestions) {
    tokenizer::Message message;
    message.role = "user";
    message.content = q;
    auto rendered = (*chat)->Render({message}, /*add_generation_prompt=*/true);
    REQUIRE(rendered.ok());
    const std::vector<int32_t> ids = tokenizer::EncodeRendered(**tok, *rendered).ids;
    prompts.emplace_back(ids.begin(), ids.end());
  }

  // Lockstep: both models get the float32 model's greedy token at every step, 32 steps, batches of
  // 10 left-padded prompts (a step's 10 rows take the decode-a-piece path, the prompts the tiles).
  // Returns the worst logit difference relative to the row's largest logit (the measure the export
  // tests use) and the number of steps whose argmax differs.
  at::NoGradGuard no_grad;
  const auto lockstep = [&](std::optional<c10::ScalarType> cache_dtype) {
    double worst = 0;
    int64_t argmax_differ = 0;
    for (size_t begin = 0; begin < prompts.size(); begin += 10) {
      const int64_t B = 10;
      int64_t T = 0;
      for (int64_t r = 0; r < B; ++r) T = std::max<int64_t>(T, static_cast<int64_t>(prompts[begin + r].size()));
      at::Tensor ids = at::zeros({B, T}, at::kLong), mask = at::zeros({B, T}, at::kLong);
      for (int64_t r = 0; r < B; ++r) {
        const std::vector<int64_t>& p = prompts[begin + r];
        const int64_t n = static_cast<int64_t>(p.size());
        ids[r].narrow(0, T - n, n).copy_(at::tensor(p, at::kLong));
        mask[r].narrow(0, T - n, n).fill_(1);
      }
      model::KvCache dense_cache, packed_cache;
      packed_cache.dtype = cache_dtype;
      at::Tensor ld = (*dense)->LastLogits(ids, mask, &dense_cache);
      at::Tensor lp = (*packed)->LastLogits(ids, mask, &packed_cache);
      for (int step = 0; step < 32; ++step) {
        const at::Tensor rel = (lp - ld).abs().amax(-1) / ld.abs().amax(-1);
        worst = std::max(worst, rel.max().item<double>());
        const at::Tensor next = ld.argmax(-1);
        argmax_differ += lp.argmax(-1).ne(next).sum().item<int64_t>();
        const at::Tensor step_ids = next.view({B, 1});
        ld = (*dense)->LastLogits(step_ids, at::ones_like(step_ids), &dense_cache);
        lp = (*packed)->LastLogits(step_ids, at::ones_like(step_ids), &packed_cache);
      }
      CHECK(packed_cache.k[0].scalar_type() == cache_dtype.value_or(at::kFloat));
    }
    return std::make_pair(worst, argmax_differ);
  };
  // The API: greedy 32-token continuations (stopping at the end token), batched; the count that
  // differ from the float32 model's.
  model::GenerationOptions greedy;
  greedy.max_new_tokens = 32;
  auto want = model::GenerateBatch(**dense, prompts, greedy);
  REQUIRE(want.ok());
  int64_t tokens = 0;
  for (const auto& row : *want) tokens += static_cast<int64_t>(row.size());
  const auto continuations_differ = [&](std::optional<c10::ScalarType> cache_dtype) {
    model::GenerationOptions options = greedy;
    options.kv_cache_dtype = cache_dtype;
    auto got = model::GenerateBatch(**packed, prompts, options);
    REQUIRE(got.ok());
    int64_t differ = 0;
    for (size_t r = 0; r < prompts.size(); ++r) differ += (*got)[r] != (*want)[r] ? 1 : 0;
    return differ;
  };

  // Packed weights, float32 cache: within 1e-3 at every step, the same greedy ids.
  const auto [worst, argmax_differ] = lockstep(std::nullopt);
  const int64_t differ = continuations_differ(std::nullopt);
  auto alone = model::Generate(**packed, prompts[0], greedy);
  REQUIRE(alone.ok());
  CHECK(*alone == (*want)[0]);
  std::printf("decode: real 270M, packed blocks vs dequantized float32, 20 prompts x 32 steps: worst logit difference "
              "%.3e of the row's largest, %lld of 640 argmaxes differ; greedy continuations (%lld tokens): %lld of 20 "
              "differ\n", worst, static_cast<long long>(argmax_differ), static_cast<long long>(tokens),
              static_cast<long long>(differ));
  CHECK(worst <= 1e-3);
  CHECK(argmax_differ == 0);
  CHECK(differ == 0);

  // A bfloat16 cache rounds every key and value to 8 significant bits: larger differences
  // (measured 1.8e-2 on this file), which the bound states; the argmax at each step stays.
  const auto [worst_bf16, argmax_differ_bf16] = lockstep(at::kBFloat16);
  const int64_t differ_bf16 = continuations_differ(at::kBFloat16);
  std::printf("decode: the same with a bfloat16 KV cache: worst logit difference %.3e, %lld of 640 argmaxes differ; "
              "greedy continuations: %lld of 20 differ\n", worst_bf16, static_cast<long long>(argmax_differ_bf16),
              static_cast<long long>(differ_bf16));
  CHECK(worst_bf16 <= 5e-2);
  CHECK(argmax_differ_bf16 <= 2);

  // LoRA beside the packed base, unmerged: the same random adapter (every projection, r = 8, B
  // drawn non-zero) on both models gives the same logits.
  lora::LoraConfig config;
  config.r = 8;
  config.alpha = 16;
  config.target_modules = {"all-linear"};
  for (auto* m : {dense->get(), packed->get()}) {
    at::manual_seed(11);
    REQUIRE(lora::InjectLora(m, config).ok());
    for (auto& [name, layer] : lora::Adapters(*m)) layer->lora_B().copy_(at::randn(layer->lora_B().sizes()) * 0.01);
  }
  CHECK(std::string((*packed)->linear("model.layers.0.mlp.down_proj")->kind()) == "lora");
  const auto [worst_lora, argmax_differ_lora] = lockstep(std::nullopt);
  std::printf("decode: with a LoRA adapter (r 8, every projection) on both: worst logit difference %.3e, %lld of 640 "
              "argmaxes differ\n", worst_lora, static_cast<long long>(argmax_differ_lora));
  CHECK(worst_lora <= 1e-3);
  CHECK(argmax_differ_lora == 0);
}

}  // namespace
}  // namespace llmtrain
