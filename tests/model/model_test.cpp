// model/: the shared decoder against transformers (eager, float32) at test time: tiny random
// models of every family, and the real Gemma 3 270M GGUF.
#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <c10/core/CPUAllocator.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <cstdio>

#include "llmtrain/core/atomic_file.h"
#include "llmtrain/io/families.h"
#include "llmtrain/io/safetensors.h"
#include "llmtrain/io/tensors.h"
#include "llmtrain/model/decoder.h"
#include "llmtrain/model/family.h"
#include "llmtrain/model/generate.h"
#include "llmtrain/model/linear.h"
#include "llmtrain/train/autocast.h"
#include "testing/json_util.h"
#include "testing/safetensors_util.h"
#include "testing/memory.h"
#include "testing/reference.h"
#include "testing/tensor_compare.h"

namespace llmtrain {
namespace {

using nlohmann::json;

using testing::LoadAll;

using testing::RelativeError;

// The two registrations of the family files agree: every decoder type of io's registry has a spec
// builder, and every builder belongs to a registered config class of its own type.
TEST_CASE("family: io's registry and the spec builders name the same decoder types", "[model]") {
  std::vector<std::string> decoder_types;
  for (const io::FamilyInfo* family : io::Families()) decoder_types.push_back(family->text_model_type);
  std::sort(decoder_types.begin(), decoder_types.end());
  decoder_types.erase(std::unique(decoder_types.begin(), decoder_types.end()), decoder_types.end());
  CHECK(model::SupportedFamilies() == decoder_types);
  for (const std::string& type : model::SupportedFamilies()) {
    INFO("model_type " << type);
    const io::FamilyInfo* family = io::FindFamily(type);
    REQUIRE(family != nullptr);
    CHECK(family->text_model_type == type);
  }
}

TEST_CASE("decoder: logits and gradients equal transformers' for every family", "[model][parity][reference]") {
  if (!testing::ReferenceStackAvailable()) return;
  const std::string family = GENERATE(as<std::string>{}, "gemma2", "gemma3_text", "qwen2", "qwen3");
  INFO("family " << family);
  const std::string dir = testing::TempDir("tiny_" + family);
  const auto ref_run = testing::RunReference("model_ref.py", {"tiny", family, dir, "3"});
  REQUIRE(ref_run.exit_code == 0);
  const json info = testing::LastJsonLine(ref_run.out);

  model::DecoderOptions options;
  options.requires_grad = true;
  auto model = model::Decoder::Load(dir + "/model", options);
  INFO((model.ok() ? std::string("loaded") : std::string(model.status().message())));
  REQUIRE(model.ok());
  CHECK(static_cast<int>((*model)->named_parameters().size()) == info["params"].get<int>());

  auto inputs = LoadAll(dir + "/inputs.safetensors");
  auto ref = LoadAll(dir + "/ref.safetensors");
  const at::Tensor mask = inputs["attention_mask"];
  // Our positions come from the mask; the reference was given the same cumsum(mask) − 1.
  const at::Tensor logits = (*model)->Forward(inputs["input_ids"], mask);
  const at::Tensor real = mask.to(at::kBool);
  // Logits of real tokens: padded query rows are fully masked and differ by convention only.
  const double logits_error = RelativeError(logits.index({real}), ref["logits"].index({real}));
  INFO("logits relative error " << logits_error);
  CHECK(logits_error <= 1e-5);  // float32, same kernels: only summation-order noise

  const at::Tensor loss = (logits * inputs["loss_weights"] * mask.unsqueeze(-1)).sum();
  loss.backward();
  int compared = 0;
  double worst_grad = 0.0;
  for (const auto& [name, param] : (*model)->named_parameters()) {
    INFO("gradient of " << name);
    REQUIRE(ref.count("grad." + name) == 1);
    REQUIRE(param.grad().defined());
    CHECK(param.grad().layout() == at::kStrided);  // a tied embedding's sparse lookup grad is folded in
    const double error = RelativeError(param.grad(), ref["grad." + name]);
    INFO("relative error " << error);
    CHECK(error <= 1e-4);  // float32 backward; reductions ordered differently than in Python
    worst_grad = std::max(worst_grad, error);
    ++compared;
  }
  std::printf("parity %-12s logits rel err %.2e, worst gradient rel err %.2e over %d parameters\n",
              family.c_str(), logits_error, worst_grad, compared);

  // 32 greedy tokens with the KV cache equal transformers' generate(), with its end tokens.
  model::GenerationOptions generation;
  generation.max_new_tokens = 32;
  generation.eos_token_ids = info["eos"].get<std::vector<int64_t>>();
  const at::Tensor prompt_row = inputs["input_ids"][0];
  const std::vector<int64_t> prompt(prompt_row.data_ptr<int64_t>(),
                                    prompt_row.data_ptr<int64_t>() + prompt_row.numel());
  auto greedy = model::Generate(**model, prompt, generation);
  REQUIRE(greedy.ok());
  const at::Tensor want = ref["greedy"];
  CHECK(*greedy == std::vector<int64_t>(want.data_ptr<int64_t>(), want.data_ptr<int64_t>() + want.numel()));
  CHECK(compared == info["params"].get<int>());
}

TEST_CASE("decoder: bf16 logits against transformers' bf16", "[model][parity][reference]") {
  if (!testing::ReferenceStackAvailable()) return;
  const std::string family = GENERATE(as<std::string>{}, "gemma2", "gemma3_text", "qwen2", "qwen3");
  INFO("family " << family);
  const std::string dir = testing::TempDir("bf16_" + family);
  REQUIRE(testing::RunReference("model_ref.py", {"tiny", family, dir, "13"}).exit_code == 0);
  REQUIRE(testing::RunReference("model_ref.py", {"bf16", dir + "/model", dir + "/inputs.safetensors",
                                                 dir + "/bf16.safetensors"}).exit_code == 0);
  model::DecoderOptions options;
  options.dtype = Dtype::kBf16;
  auto model = model::Decoder::Load(dir + "/model", options);
  REQUIRE(model.ok());
  auto inputs = LoadAll(dir + "/inputs.safetensors");
  auto ref = LoadAll(dir + "/bf16.safetensors");
  at::NoGradGuard no_grad;
  const at::Tensor logits = (*model)->Forward(inputs["input_ids"], inputs["attention_mask"]);
  CHECK(logits.scalar_type() == at::kBFloat16);
  const at::Tensor real = inputs["attention_mask"].to(at::kBool);
  const double error = RelativeError(logits.index({real}), ref["logits"].index({real}));
  std::printf("bf16 %-12s logits rel err %.2e\n", family.c_str(), error);
  // Same casts in the same places (norms in fp32, cos/sin and the embedding scale rounded to
  // bf16, softmax in fp32) and the same ATen kernels: measured 0 here. A BLAS that blocks its
  // bf16 GEMM sums differently (other CPU, other thread count) rounds differently; one bf16 ulp
  // is 2^-8 = 3.9e-3 relative, so the bound allows two ulps of the largest logit.
  CHECK(error <= 7.8e-3);
}

TEST_CASE("decoder: loading the GGUF peaks near the size of the final weights", "[model][reference][memory]") {
  if (!testing::ReferenceStackAvailable()) return;
  const std::string gguf = std::string(LLMTRAIN_SOURCE_DIR) + "/.venv/models/gemma-3-270m-q4_k_m.gguf";
  for (const Dtype dtype : {Dtype::kF32, Dtype::kBf16}) {
    c10::Allocator* base = c10::GetCPUAllocator();
    testing::TrackingAllocator tracker(base);
    c10::SetCPUAllocator(&tracker, /*priority=*/255);
    tracker.ResetPeak();
    model::DecoderOptions options;
    options.dtype = dtype;
    auto model = model::Decoder::Load(gguf, options);
    const int64_t peak = tracker.peak();
    int64_t weights = 0;
    if (model.ok()) {
      for (const auto& [name, p] : (*model)->named_parameters()) {
        weights += p.nbytes();
      }
    }
    model = absl::InternalError("released");  // free the weights before restoring the allocator
    c10::SetCPUAllocator(base, /*priority=*/255);
    std::printf("load %s: peak %.1f MiB of tensors for %.1f MiB of weights (%.2fx)\n",
                std::string(SafetensorsName(dtype)).c_str(), peak / 1048576.0, weights / 1048576.0,
                static_cast<double>(peak) / static_cast<double>(weights));
    REQUIRE(weights > 0);
    // Tensors are dequantized one at a time, straight into the model dtype a few MiB of rows at a
    // time: the weights plus at most a 4 MiB float32 scratch (and Gemma's float32 norms).
    CHECK(peak <= weights + (int64_t{8} << 20));
  }
}

TEST_CASE("generate: sampling is reproducible for a seed and stays in the vocabulary", "[model][reference]") {
  if (!testing::ReferenceStackAvailable()) return;
  const std::string dir = testing::TempDir("sampling");
  REQUIRE(testing::RunReference("model_ref.py", {"tiny", "qwen3", dir, "17"}).exit_code == 0);
  auto model = model::Decoder::Load(dir + "/model", {});
  REQUIRE(model.ok());
  model::GenerationOptions options;
  options.max_new_tokens = 24;
  options.temperature = 0.9;
  options.top_k = 20;
  options.top_p = 0.9;
  options.repetition_penalty = 1.2;
  options.eos_token_ids = {-1};
  options.seed = 7;
  const std::vector<int64_t> prompt = {5, 17, 42, 9};
  auto a = model::Generate(**model, prompt, options);
  auto b = model::Generate(**model, prompt, options);
  options.seed = 8;
  auto c = model::Generate(**model, prompt, options);
  REQUIRE(a.ok());
  REQUIRE(b.ok());
  REQUIRE(c.ok());
  CHECK(a->size() == 24);
  CHECK(*a == *b);
  CHECK(*a != *c);
  for (int64_t id : *a) CHECK((id >= 0 && id < 128));
  // top_k = 1 is greedy whatever the temperature.
  options.top_k = 1;
  model::GenerationOptions greedy;
  greedy.max_new_tokens = 24;
  greedy.eos_token_ids = {-1};
  greedy.repetition_penalty = 1.2;
  CHECK(*model::Generate(**model, prompt, options) == *model::Generate(**model, prompt, greedy));
  // Bad options are refused naming the field.
  options.top_p = 0.0;
  CHECK(model::Generate(**model, prompt, options).status().message().find("top_p") != absl::string_view::npos);
}

TEST_CASE("generate: cache rows appended, kept and trimmed between steps give each row's logits alone (sliding window)",
          "[model][reference]") {
  if (!testing::ReferenceStackAvailable()) return;
  // A tiny Gemma 3 with a window of 3: its sliding layers keep 2 keys, so caches longer than the
  // window are appended and trimmed (what serve::Engine does as requests join and leave).
  const std::string dir = testing::TempDir("cache_rows");
  REQUIRE(testing::RunReference("model_ref.py", {"tiny", "gemma3_text", dir, "5"}).exit_code == 0);
  auto model = model::Decoder::Load(dir + "/model", {});
  REQUIRE(model.ok());
  const model::Decoder& m = **model;
  at::NoGradGuard no_grad;
  const std::vector<std::vector<int64_t>> prompts = {{5, 17, 42}, {9, 8, 7, 6, 5, 4, 3, 2}, {11, 12, 13, 14, 15}};
  const std::vector<int64_t> joins = {0, 2, 3};  // the iteration at which each row joins
  constexpr int64_t kSteps = 6;
  auto row_ids = [](const std::vector<int64_t>& ids) { return at::tensor(ids, at::kLong).view({1, -1}); };
  // Alone: each prompt's logits at each step, fed its own greedy tokens.
  std::vector<std::vector<at::Tensor>> alone(prompts.size());
  std::vector<std::vector<int64_t>> tokens(prompts.size());
  for (size_t r = 0; r < prompts.size(); ++r) {
    model::KvCache cache;
    at::Tensor ids = row_ids(prompts[r]);
    at::Tensor logits = m.LastLogits(ids, at::ones_like(ids), &cache);
    for (int64_t s = 0; s < kSteps; ++s) {
      alone[r].push_back(logits[0]);
      tokens[r].push_back(logits[0].argmax().item<int64_t>());
      ids = row_ids({tokens[r].back()});
      logits = m.LastLogits(ids, at::ones_like(ids), &cache);
    }
  }
  // Together: rows join (prefilled alone, appended), step, and leave after kSteps.
  model::KvCache cache;
  at::Tensor logits;
  std::vector<std::pair<size_t, int64_t>> live;  // (row, its step)
  double worst = 0.0;
  int64_t compared = 0, trimmed = 0;
  bool window_held = false;  // a sliding layer held fewer keys than the cache's length
  for (int64_t it = 0; it < 16 && (it <= joins.back() || !live.empty()); ++it) {
    for (size_t r = 0; r < prompts.size(); ++r) {
      if (joins[r] != it) continue;
      model::KvCache fresh;
      const at::Tensor ids = row_ids(prompts[r]);
      const at::Tensor l = m.LastLogits(ids, at::ones_like(ids), &fresh);
      REQUIRE(model::AppendRows(&cache, std::move(fresh)).ok());
      logits = logits.defined() ? at::cat({logits, l}, 0) : l;
      live.emplace_back(r, 0);
    }
    std::vector<int64_t> keep, next;
    std::vector<std::pair<size_t, int64_t>> still;
    for (size_t i = 0; i < live.size(); ++i) {
      auto [r, s] = live[i];
      worst = std::max(worst, (logits[static_cast<int64_t>(i)] - alone[r][static_cast<size_t>(s)]).abs().max().item<double>());
      ++compared;
      if (s + 1 == kSteps) continue;
      keep.push_back(static_cast<int64_t>(i));
      next.push_back(tokens[r][static_cast<size_t>(s)]);
      still.emplace_back(r, s + 1);
    }
    live = still;
    if (live.empty()) {
      cache = model::KvCache();
      logits = at::Tensor();
      continue;
    }
    const int64_t before = cache.length();
    model::KeepRows(&cache, at::tensor(keep, at::kLong));
    model::DropLeadingPadding(&cache);
    trimmed += before - cache.length();
    for (const at::Tensor& k : cache.k) window_held |= k.defined() && k.size(2) < cache.length();
    const at::Tensor step = at::tensor(next, at::kLong).view({-1, 1});
    logits = m.LastLogits(step, at::ones_like(step), &cache);
  }
  std::printf("generate: %lld row-steps with rows appended and dropped: worst logit difference to each alone %.3e\n",
              static_cast<long long>(compared), worst);
  CHECK(compared == static_cast<int64_t>(prompts.size()) * kSteps);
  CHECK(worst <= 1e-5);  // float32; the batched products round differently from one row's
  CHECK(trimmed > 0);
  CHECK(window_held);
}

TEST_CASE("decoder: activation checkpointing gives identical gradients with less memory", "[model][reference][memory]") {
  if (!testing::ReferenceStackAvailable()) return;
  const std::string dir = testing::TempDir("tiny_ckpt");
  REQUIRE(testing::RunReference("model_ref.py", {"tiny", "gemma3_text", dir, "11"}).exit_code == 0);
  model::DecoderOptions options;
  options.requires_grad = true;
  auto model = model::Decoder::Load(dir + "/model", options);
  REQUIRE(model.ok());
  at::manual_seed(1);
  const at::Tensor ids = at::randint(0, 128, {4, 48}, at::kLong);
  const at::Tensor weights = at::randn({4, 48, 128});

  c10::Allocator* base = c10::GetCPUAllocator();
  testing::TrackingAllocator tracker(base);
  c10::SetCPUAllocator(&tracker, /*priority=*/255);
  auto run = [&](bool checkpointing) {
    (*model)->set_activation_checkpointing(checkpointing);
    for (const auto& [name, p] : (*model)->named_parameters()) p.mutable_grad() = at::Tensor();
    tracker.ResetPeak();
    const int64_t before = tracker.current();
    const at::Tensor loss = ((*model)->Forward(ids) * weights).sum();
    loss.backward();
    std::vector<at::Tensor> grads;
    for (const auto& [name, p] : (*model)->named_parameters()) grads.push_back(p.grad().clone());
    return std::make_pair(tracker.peak() - before, grads);
  };
  const auto [plain_peak, plain_grads] = run(false);
  const auto [ckpt_peak, ckpt_grads] = run(true);
  c10::SetCPUAllocator(base, /*priority=*/255);
  std::printf("activation checkpointing (gemma3_text tiny, 4 layers, B=4 T=48): peak %.2f MiB off, %.2f MiB on\n",
              plain_peak / 1048576.0, ckpt_peak / 1048576.0);
  REQUIRE(plain_grads.size() == ckpt_grads.size());
  for (size_t i = 0; i < plain_grads.size(); ++i) {
    INFO("parameter " << (*model)->named_parameters()[i].first);
    CHECK(at::equal(plain_grads[i], ckpt_grads[i]));  // the same ops recomputed: bit-identical
  }
  CHECK(ckpt_peak < plain_peak);
}

TEST_CASE("decoder: under autocast, the checkpointed recompute computes in bf16 as the forward did",
          "[model][reference]") {
  if (!testing::ReferenceStackAvailable()) return;
  const std::string dir = testing::TempDir("tiny_ckpt_autocast");
  REQUIRE(testing::RunReference("model_ref.py", {"tiny", "gemma3_text", dir, "11"}).exit_code == 0);
  model::DecoderOptions options;
  options.requires_grad = true;
  auto model = model::Decoder::Load(dir + "/model", options);
  REQUIRE(model.ok());
  at::manual_seed(1);
  const at::Tensor ids = at::randint(0, 128, {2, 24}, at::kLong);
  const at::Tensor weights = at::randn({2, 24, 128});
  // The trainer's way: the forward inside the autocast region, backward after it.
  auto run = [&](bool checkpointing) {
    (*model)->set_activation_checkpointing(checkpointing);
    for (const auto& [name, p] : (*model)->named_parameters()) p.mutable_grad() = at::Tensor();
    at::Tensor loss;
    {
      const train::AutocastGuard autocast(c10::DeviceType::CPU, at::kBFloat16);
      loss = ((*model)->Forward(ids).to(at::kFloat) * weights).sum();
    }
    loss.backward();
    std::vector<at::Tensor> grads;
    for (const auto& [name, p] : (*model)->named_parameters()) grads.push_back(p.grad().clone());
    return grads;
  };
  const std::vector<at::Tensor> plain = run(false), checkpointed = run(true);
  REQUIRE(plain.size() == checkpointed.size());
  for (size_t i = 0; i < plain.size(); ++i) {
    INFO("parameter " << (*model)->named_parameters()[i].first);
    CHECK(at::equal(plain[i], checkpointed[i]));
  }
}

namespace {

// Counts a sharded decoder's Acquire/Release calls per layer.
class CountingResidency : public model::LayerResidency {
 public:
  explicit CountingResidency(int64_t layers) : holds(static_cast<size_t>(layers), 0) {}
  void Acquire(int64_t layer) override {
    ++holds[static_cast<size_t>(layer)];
    ++acquires;
  }
  void Release(int64_t layer) override { --holds[static_cast<size_t>(layer)]; }
  bool none_held() const { return std::all_of(holds.begin(), holds.end(), [](int h) { return h == 0; }); }
  std::vector<int> holds;
  int acquires = 0;
};

// A dense projection that throws while `armed` is set, if it is the failing one.
class FailingLinear : public model::Linear {
 public:
  FailingLinear(at::Tensor weight, at::Tensor bias, bool fails)
      : dense_(std::move(weight), std::move(bias)), fails_(fails) {}
  at::Tensor Forward(const at::Tensor& x) const override {
    TORCH_CHECK(!(fails_ && armed), "injected failure");
    return dense_.Forward(x);
  }
  int64_t in_features() const override { return dense_.in_features(); }
  int64_t out_features() const override { return dense_.out_features(); }
  at::Tensor DenseWeight(c10::ScalarType dtype) const override { return dense_.DenseWeight(dtype); }
  const at::Tensor& bias() const override { return dense_.bias(); }
  at::Tensor stored_weight() const override { return dense_.stored_weight(); }
  void AppendTrainable(std::vector<at::Tensor>* out) const override { dense_.AppendTrainable(out); }
  void AppendFrozen(std::vector<at::Tensor>* out) const override { dense_.AppendFrozen(out); }
  absl::string_view kind() const override { return "failing"; }
  static inline bool armed = false;

 private:
  model::DenseLinear dense_;
  bool fails_;
};

}  // namespace

TEST_CASE("decoder: a layer that throws is released, in forward and in backward's recompute", "[model][reference]") {
  if (!testing::ReferenceStackAvailable()) return;
  const std::string dir = testing::TempDir("tiny_hold");
  REQUIRE(testing::RunReference("model_ref.py", {"tiny", "gemma3_text", dir, "11"}).exit_code == 0);
  model::DecoderOptions options;
  options.requires_grad = true;
  options.activation_checkpointing = true;
  options.linear_factory = [](const model::ProjectionSource& p) -> absl::StatusOr<std::shared_ptr<model::Linear>> {
    auto weight = p.dense_weight();
    if (!weight.ok()) return weight.status();
    return std::make_shared<FailingLinear>(*weight, p.bias, p.module == "model.layers.1.mlp.down_proj");
  };
  auto model = model::Decoder::Load(dir + "/model", options);
  REQUIRE(model.ok());
  auto residency = std::make_shared<CountingResidency>((*model)->num_layers());
  (*model)->set_layer_residency(residency);
  at::manual_seed(1);
  const at::Tensor ids = at::randint(0, 128, {2, 16}, at::kLong);
  // Forward: layer 1 throws after it was acquired.
  FailingLinear::armed = true;
  CHECK_THROWS_WITH((*model)->Forward(ids), Catch::Contains("injected failure"));
  CHECK(residency->acquires == 2);
  CHECK(residency->none_held());
  // Backward: the forward succeeds, layer 1's recompute throws.
  FailingLinear::armed = false;
  const at::Tensor loss = (*model)->Forward(ids).sum();
  CHECK(residency->none_held());
  FailingLinear::armed = true;
  CHECK_THROWS_WITH(loss.backward(), Catch::Contains("injected failure"));
  FailingLinear::armed = false;
  CHECK(residency->none_held());
  // And the model still trains afterwards.
  const at::Tensor again = (*model)->Forward(ids).sum();
  again.backward();
  CHECK(residency->none_held());
}

TEST_CASE("decoder: the KV cache trims sliding layers to W - 1 keys and gives the logits of a full forward",
          "[model][reference]") {
  if (!testing::ReferenceStackAvailable()) return;
  const std::string dir = testing::TempDir("tiny_trim");
  REQUIRE(testing::RunReference("model_ref.py", {"tiny", "gemma2", dir, "9"}).exit_code == 0);  // window 4
  auto model = model::Decoder::Load(dir + "/model", {});
  REQUIRE(model.ok());
  at::manual_seed(4);
  const at::Tensor ids = at::randint(0, 100, {2, 20}, at::kLong);
  at::Tensor mask = at::ones({2, 20}, at::kLong);
  mask.slice(1, 0, 3)[1].fill_(0);  // left padding in row 1
  const at::Tensor full = (*model)->Forward(ids, mask);
  model::KvCache cache;
  std::vector<at::Tensor> steps;
  steps.push_back((*model)->Forward(ids.slice(1, 0, 6), mask.slice(1, 0, 6), &cache));  // a prompt longer than W
  for (int64_t t = 6; t < 20; ++t) steps.push_back((*model)->Forward(ids.slice(1, t, t + 1), mask.slice(1, t, t + 1), &cache));
  const at::Tensor cached = at::cat(steps, 1);
  const at::Tensor real = mask.to(at::kBool);
  const double error = ((cached - full).index({real}).abs().max() / full.index({real}).abs().max()).item<double>();
  std::printf("sliding-window cache (gemma2 tiny, W=4): 20 tokens step by step vs one forward, rel err %.2e\n", error);
  CHECK(error <= 1e-5);
  const auto& spec_layers = cache.k;
  int64_t shortest = 1 << 30, longest = 0;
  for (const at::Tensor& k : spec_layers) {
    shortest = std::min(shortest, k.size(2));
    longest = std::max(longest, k.size(2));
  }
  CHECK(shortest == 3);   // sliding layers: W - 1
  CHECK(longest == 20);   // full layers: everything
}

TEST_CASE("decoder: a packed row (segment ids) equals its examples run one by one", "[model][reference]") {
  if (!testing::ReferenceStackAvailable()) return;
  for (const std::string family : {"gemma3_text", "qwen2"}) {
    INFO(family);
    const std::string dir = testing::TempDir("tiny_packed_" + family);
    REQUIRE(testing::RunReference("model_ref.py", {"tiny", family, dir, "5"}).exit_code == 0);
    auto model = model::Decoder::Load(dir + "/model", {});
    REQUIRE(model.ok());
    at::manual_seed(2);
    // Three examples of 7, 12 and 5 tokens packed into one row of 28 (4 padding).
    const std::vector<int64_t> lengths = {7, 12, 5};
    const at::Tensor ids = at::randint(0, 100, {1, 28}, at::kLong);
    at::Tensor segments = at::zeros({1, 28}, at::kLong), positions = at::zeros({1, 28}, at::kLong);
    int64_t t = 0;
    for (size_t k = 0; k < lengths.size(); ++k) {
      for (int64_t i = 0; i < lengths[k]; ++i, ++t) {
        segments[0][t] = static_cast<int64_t>(k) + 1;
        positions[0][t] = i;
      }
    }
    const at::Tensor packed = (*model)->Forward(ids, segments, positions);
    double worst = 0;
    t = 0;
    for (int64_t length : lengths) {
      const at::Tensor alone = (*model)->Forward(ids.slice(1, t, t + length));
      const at::Tensor part = packed.slice(1, t, t + length);
      worst = std::max(worst, (part - alone).abs().max().item<double>() / alone.abs().max().item<double>());
      t += length;
    }
    std::printf("packed %s: 3 examples in one row vs one by one, logits rel err %.2e\n", family.c_str(), worst);
    CHECK(worst <= 1e-5);  // float32; only the GEMM shapes differ
    // A 0/1 mask is unchanged by the segment rule.
    const at::Tensor ones = at::ones({1, 28}, at::kLong);
    CHECK(at::equal((*model)->Forward(ids, ones), (*model)->Forward(ids)));
  }
}

TEST_CASE("cli: llmtrain forward writes the logits transformers computes", "[model][cli][reference]") {
  if (!testing::ReferenceStackAvailable()) return;
  const std::string dir = testing::TempDir("cli_forward");
  REQUIRE(testing::RunReference("model_ref.py", {"tiny", "gemma2", dir, "7"}).exit_code == 0);
  auto inputs = LoadAll(dir + "/inputs.safetensors");
  REQUIRE(io::SaveSafetensors(dir + "/in.safetensors", {{"input_ids", inputs["input_ids"]},
                                                         {"attention_mask", inputs["attention_mask"]}}).ok());
  const auto run = testing::RunCommand(
      testing::ShellQuote(testing::CliPath()) + " forward --model " + testing::ShellQuote(dir + "/model") +
      " --input " + testing::ShellQuote(dir + "/in.safetensors") + " --output " +
      testing::ShellQuote(dir + "/out.safetensors") + " 2>&1");
  INFO(run.out);
  REQUIRE(run.exit_code == 0);
  auto out = LoadAll(dir + "/out.safetensors");
  auto ref = LoadAll(dir + "/ref.safetensors");
  const at::Tensor real = inputs["attention_mask"].to(at::kBool);
  CHECK(out["logits"].scalar_type() == at::kFloat);
  CHECK(RelativeError(out["logits"].index({real}), ref["logits"].index({real})) <= 1e-5);
  // A bad id is refused with the file named.
  REQUIRE(io::SaveSafetensors(dir + "/bad.safetensors", {{"input_ids", at::full({1, 2}, 999, at::kLong)}}).ok());
  const auto bad = testing::RunCommand(
      testing::ShellQuote(testing::CliPath()) + " forward --model " + testing::ShellQuote(dir + "/model") +
      " --input " + testing::ShellQuote(dir + "/bad.safetensors") + " --output " +
      testing::ShellQuote(dir + "/x.safetensors") + " 2>&1");
  CHECK(bad.exit_code == 1);
  CHECK(bad.out.find("bad.safetensors: input_ids: token id 999 is outside the vocabulary") != std::string::npos);
}

TEST_CASE("decoder: bad checkpoints and inputs are refused with the tensor named", "[model][reference]") {
  if (!testing::ReferenceStackAvailable()) return;
  const std::string dir = testing::TempDir("tiny_bad");
  REQUIRE(testing::RunReference("model_ref.py", {"tiny", "qwen3", dir, "5"}).exit_code == 0);
  auto weights = LoadAll(dir + "/model/model.safetensors");
  const auto write_variant = [&](const std::string& name, std::map<std::string, at::Tensor> tensors) {
    const std::string variant = dir + "/" + name;
    testing::RunCommand("mkdir -p " + testing::ShellQuote(variant) + " && cp " +
                        testing::ShellQuote(dir + "/model/config.json") + " " + testing::ShellQuote(variant));
    std::vector<std::pair<std::string, at::Tensor>> list(tensors.begin(), tensors.end());
    REQUIRE(io::SaveSafetensors(variant + "/model.safetensors", list).ok());
    return variant;
  };
  SECTION("missing tensor") {
    auto tensors = weights;
    tensors.erase("model.layers.1.mlp.up_proj.weight");
    auto model = model::Decoder::Load(write_variant("missing", tensors), {});
    REQUIRE(!model.ok());
    CHECK(model.status().code() == absl::StatusCode::kNotFound);
    CHECK(model.status().message().find("\"model.layers.1.mlp.up_proj.weight\"") != absl::string_view::npos);
  }
  SECTION("wrong shape") {
    auto tensors = weights;
    tensors["model.layers.0.self_attn.k_proj.weight"] = at::zeros({8, 48});
    auto model = model::Decoder::Load(write_variant("shape", tensors), {});
    REQUIRE(!model.ok());
    CHECK(model.status().message().find("\"model.layers.0.self_attn.k_proj.weight\" has shape [8, 48], but the config needs [32, 48]") != absl::string_view::npos);
  }
  SECTION("unexpected tensor") {
    auto tensors = weights;
    tensors["model.layers.0.self_attn.extra.weight"] = at::zeros({2});
    auto model = model::Decoder::Load(write_variant("extra", tensors), {});
    REQUIRE(!model.ok());
    CHECK(model.status().message().find("\"model.layers.0.self_attn.extra.weight\" is not a weight of qwen3") != absl::string_view::npos);
  }
  SECTION("unsupported architecture") {
    const std::string variant = write_variant("llama", weights);
    REQUIRE(WriteFileAtomically(variant + "/config.json", R"({"model_type": "llama"})").ok());
    auto model = model::Decoder::Load(variant, {});
    REQUIRE(!model.ok());
    CHECK(model.status().message().find("\"llama\" is not supported") != absl::string_view::npos);
    CHECK(model.status().message().find("qwen3") != absl::string_view::npos);
  }
  SECTION("ids outside the vocabulary and f16 for Gemma") {
    auto model = model::Decoder::Load(dir + "/model", {});
    REQUIRE(model.ok());
    const absl::Status status = (*model)->CheckInputs(at::full({1, 3}, 128, at::kLong), {});
    CHECK(status.code() == absl::StatusCode::kInvalidArgument);
    CHECK(status.message().find("token id 128 is outside the vocabulary [0, 128)") != absl::string_view::npos);
    CHECK_THROWS((*model)->Forward(at::full({1, 3}, 128, at::kLong)));
  }
}

TEST_CASE("decoder: the real Gemma 3 270M GGUF equals transformers loading the same file", "[model][reference][real]") {
  if (!testing::ReferenceStackAvailable()) return;
  const std::string gguf = std::string(LLMTRAIN_SOURCE_DIR) + "/.venv/models/gemma-3-270m-q4_k_m.gguf";
  const std::string out = testing::TempDir("gemma3_gguf") + "/ref.safetensors";
  const auto ref_run = testing::RunReference(
      "model_ref.py", {"gguf", gguf, out, "The capital of France is a city that"});
  REQUIRE(ref_run.exit_code == 0);
  auto ref = LoadAll(out);
  auto model = model::Decoder::Load(gguf, {});
  INFO((model.ok() ? std::string("loaded") : std::string(model.status().message())));
  REQUIRE(model.ok());
  at::Tensor logits;
  {
    at::NoGradGuard no_grad;
    logits = (*model)->Forward(ref["input_ids"]);
  }
  const double error = RelativeError(logits, ref["logits"]);
  INFO("relative error " << error);
  std::printf("gemma3 270M gguf: %lld tokens, logits rel err %.2e\n",
              static_cast<long long>(logits.size(1)), error);
  // float32 on both sides from the same dequantized weights; 1e-4 leaves room for 18 layers of
  // summation-order differences over a 262k vocabulary.
  CHECK(error <= 1e-4);
  CHECK(at::equal(logits.argmax(-1), ref["logits"].argmax(-1)));

  // 32 greedy tokens equal transformers' generate() on the same file; stream them as produced.
  const json info = testing::LastJsonLine(ref_run.out);
  model::GenerationOptions generation;
  generation.max_new_tokens = 32;
  generation.eos_token_ids = info["eos"].get<std::vector<int64_t>>();
  std::vector<int64_t> streamed;
  generation.on_token = [&](int64_t id) { streamed.push_back(id); };
  const at::Tensor ids = ref["input_ids"][0];
  auto greedy = model::Generate(**model, std::vector<int64_t>(ids.data_ptr<int64_t>(), ids.data_ptr<int64_t>() + ids.numel()),
                                generation);
  REQUIRE(greedy.ok());
  const at::Tensor want = ref["greedy"];
  CHECK(*greedy == std::vector<int64_t>(want.data_ptr<int64_t>(), want.data_ptr<int64_t>() + want.numel()));
  CHECK(streamed == *greedy);
  std::printf("gemma3 270M gguf: %zu greedy tokens identical to transformers\n", greedy->size());

  // The CLI gives the same ids, and text decoded from the GGUF vocabulary.
  std::string ids_json = "[";
  for (int64_t i = 0; i < ids.numel(); ++i) ids_json += (i ? "," : "") + std::to_string(ids[i].item<int64_t>());
  ids_json += "]";
  const auto cli = testing::RunCommand(testing::ShellQuote(testing::CliPath()) + " generate --model " +
                                       testing::ShellQuote(gguf) + " --input-ids " + testing::ShellQuote(ids_json) +
                                       " --max-new-tokens 32 --json 2>&1");
  INFO(cli.out);
  REQUIRE(cli.exit_code == 0);
  const json printed = testing::LastJsonLine(cli.out);
  CHECK(printed["ids"].get<std::vector<int64_t>>() == *greedy);
  CHECK(!printed["text"].get<std::string>().empty());
  // The model's own end tokens include Gemma's <end_of_turn> (found in the GGUF vocabulary).
  CHECK(std::find((*model)->eos_token_ids().begin(), (*model)->eos_token_ids().end(), 106) !=
        (*model)->eos_token_ids().end());
}

}  // namespace
}  // namespace llmtrain
