// serve/engine.h and `llmtrain serve` on the real Gemma 3 270M GGUF (packed) with two random LoRA
// adapters: requests that join and leave a running batch, each on its own adapter, get the greedy
// ids model::Generate gives them alone on a model with that adapter loaded; cancellation, refusals;
// then the HTTP server checked with the OpenAI Python client (tests/reference/serve_ref.py).
#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <catch2/catch.hpp>
#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "llmtrain/lora/lora.h"
#include "llmtrain/model/decoder.h"
#include "llmtrain/model/generate.h"
#include "llmtrain/quant/gguf_linear.h"
#include "llmtrain/serve/engine.h"
#include "llmtrain/tokenizer/tokenizer.h"
#include "testing/json_util.h"
#include "testing/random_adapters.h"
#include "testing/reference.h"

namespace llmtrain {
namespace {

const char* const kPrompts[] = {
    "The capital of France is",
    "Once upon a time, a small robot",
    "The three primary colours are",
    "def fibonacci(n):",
    "A good breakfast includes",
    "The tallest mountain in the world",
    "In 1969, the first people to walk on the Moon",
    "Water boils at",
};

std::string Gguf() { return std::string(LLMTRAIN_SOURCE_DIR) + "/.venv/models/gemma-3-270m-q4_k_m.gguf"; }

std::unique_ptr<model::Decoder> LoadPacked(const std::string& adapter = "") {
  model::DecoderOptions options;
  options.linear_factory = quant::PackedLinearFactory(std::nullopt);
  options.head_through_factory = true;
  auto m = model::Decoder::Load(Gguf(), options);
  REQUIRE(m.ok());
  if (!adapter.empty()) REQUIRE(lora::LoadAdapter(m->get(), adapter).ok());
  return std::move(*m);
}

// Two random adapters in PEFT's layout: "a" r 8 on every projection, "b" rsLoRA r 4 on attention
// only; B drawn non-zero so that each changes the model's answers. Made once per run.
const std::string& AdapterDir() {
  static const std::string dir = [] {
    const std::string d = testing::TempDir("serve_adapters");
    std::unique_ptr<model::Decoder> m = LoadPacked();
    const absl::Status saved = testing::SaveRandomAdapters(m.get(), d, /*rslora_b=*/true);
    INFO(saved.ToString());
    REQUIRE(saved.ok());
    return d;
  }();
  return dir;
}

// What one request saw: its tokens and how it ended.
struct Outcome {
  std::vector<int64_t> ids;
  std::optional<serve::FinishReason> reason;
};

// Waits (≤ 10 min) until every outcome has a reason.
void WaitAll(std::mutex& mu, std::condition_variable& cv, const std::vector<Outcome>& outcomes) {
  std::unique_lock<std::mutex> lock(mu);
  const bool done = cv.wait_for(lock, std::chrono::minutes(10), [&] {
    for (const Outcome& o : outcomes) {
      if (!o.reason) return false;
    }
    return true;
  });
  REQUIRE(done);
}

TEST_CASE("engine: requests joining and leaving a running batch, each on its adapter, equal each alone (real 270M)",
          "[serve][real]") {
  const std::string dir = AdapterDir();
  auto tok = tokenizer::Tokenizer::Load(Gguf());
  REQUIRE(tok.ok());
  const std::vector<std::string> names = {"default", "a", "b"};
  // 24 requests: every prompt on every model name, with max_new_tokens from 5 to 20, so that rows
  // leave at different steps.
  struct Job {
    std::string model;
    std::vector<int64_t> prompt;
    int64_t max_new_tokens;
  };
  std::vector<Job> jobs;
  for (size_t p = 0; p < 8; ++p) {
    const std::vector<int32_t> ids = (*tok)->Encode(kPrompts[p]);
    for (size_t n = 0; n < names.size(); ++n) {
      jobs.push_back({names[n], std::vector<int64_t>(ids.begin(), ids.end()),
                      static_cast<int64_t>(5 + (p * 3 + n * 5) % 16)});
    }
  }
  // Each alone: model::Generate on a model with the adapter loaded (lora::LoraLinear).
  std::map<std::string, std::vector<std::vector<int64_t>>> alone;
  for (const std::string& name : names) {
    std::unique_ptr<model::Decoder> m = LoadPacked(name == "default" ? "" : dir + "/" + name);
    for (const Job& job : jobs) {
      if (job.model != name) continue;
      model::GenerationOptions options;
      options.max_new_tokens = job.max_new_tokens;
      auto ids = model::Generate(*m, job.prompt, options);
      REQUIRE(ids.ok());
      alone[name].push_back(*ids);
    }
  }
  int64_t a_differs = 0, b_differs = 0;
  for (size_t p = 0; p < 8; ++p) {
    auto prefix_differs = [&](const std::string& name) {
      const auto& x = alone[name][p];
      const auto& base = alone["default"][p];
      const size_t n = std::min(x.size(), base.size());
      return !std::equal(x.begin(), x.begin() + static_cast<std::ptrdiff_t>(n), base.begin());
    };
    a_differs += prefix_differs("a");
    b_differs += prefix_differs("b");
  }
  std::printf("engine: the adapters change the greedy ids of %lld (a) and %lld (b) of 8 prompts\n",
              static_cast<long long>(a_differs), static_cast<long long>(b_differs));
  CHECK(a_differs >= 6);
  CHECK(b_differs >= 6);

  serve::EngineOptions options;
  options.max_batch = 10;  // fewer rows than requests: the rest wait and join as rows leave
  auto engine = serve::Engine::Create(LoadPacked(), {{"a", dir + "/a"}, {"b", dir + "/b"}}, options);
  REQUIRE(engine.ok());
  CHECK((*engine)->model_names() == names);
  std::mutex mu;
  std::condition_variable cv;
  std::vector<Outcome> outcomes(jobs.size());
  auto submit = [&](size_t i) {
    serve::Request r;
    r.model = jobs[i].model;
    r.prompt = jobs[i].prompt;
    r.max_new_tokens = jobs[i].max_new_tokens;
    r.on_token = [&, i](const serve::TokenEvent& t) {
      std::lock_guard<std::mutex> lock(mu);
      outcomes[i].ids.push_back(t.id);
      return true;
    };
    r.on_finish = [&, i](serve::FinishReason why, const absl::Status&) {
      {
        std::lock_guard<std::mutex> lock(mu);
        outcomes[i].reason = why;
      }
      cv.notify_all();
    };
    REQUIRE((*engine)->Submit(std::move(r)).ok());
  };
  // A first wave; the rest arrive while it decodes, so they are prefilled apart and appended to
  // a batch whose cache is longer or shorter than theirs.
  for (size_t i = 0; i < 7; ++i) submit(i);
  for (int spin = 0; spin < 6000 && (*engine)->stats().steps < 3; ++spin) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  for (size_t i = 7; i < jobs.size(); ++i) submit(i);
  WaitAll(mu, cv, outcomes);
  std::map<std::string, size_t> next;
  int64_t equal = 0;
  for (size_t i = 0; i < jobs.size(); ++i) {
    const std::vector<int64_t>& want = alone[jobs[i].model][next[jobs[i].model]++];
    INFO("request " << i << " on " << jobs[i].model);
    CHECK(outcomes[i].ids == want);
    equal += outcomes[i].ids == want;
    const std::vector<int64_t>& eos = (*engine)->model().eos_token_ids();
    const bool ended_on_eos = !want.empty() && std::find(eos.begin(), eos.end(), want.back()) != eos.end();
    CHECK(*outcomes[i].reason == (ended_on_eos ? serve::FinishReason::kStop : serve::FinishReason::kLength));
  }
  const serve::EngineStats stats = (*engine)->stats();
  std::printf("engine: %lld of %zu batched requests equal their ids alone; %lld decode steps, largest batch %lld\n",
              static_cast<long long>(equal), jobs.size(), static_cast<long long>(stats.steps),
              static_cast<long long>(stats.largest_batch));
  CHECK(stats.largest_batch == 10);
  CHECK(stats.finished == static_cast<int64_t>(jobs.size()));
  CHECK(stats.running == 0);
  CHECK(stats.waiting == 0);

  // Cancel: a long request ended after its third token frees its row.
  std::vector<Outcome> cancelled(1);
  uint64_t id = 0;
  serve::Request r;
  r.model = "b";
  r.prompt = jobs[0].prompt;
  r.max_new_tokens = 500;
  r.on_token = [&](const serve::TokenEvent& t) {
    std::lock_guard<std::mutex> lock(mu);
    cancelled[0].ids.push_back(t.id);
    if (cancelled[0].ids.size() == 3) (*engine)->Cancel(id);
    return true;
  };
  r.on_finish = [&](serve::FinishReason why, const absl::Status&) {
    {
      std::lock_guard<std::mutex> lock(mu);
      cancelled[0].reason = why;
    }
    cv.notify_all();
  };
  {
    // Hold the lock so that `id` is set before the first token's callback reads it.
    std::lock_guard<std::mutex> lock(mu);
    auto submitted = (*engine)->Submit(std::move(r));
    REQUIRE(submitted.ok());
    id = *submitted;
  }
  WaitAll(mu, cv, cancelled);
  CHECK(*cancelled[0].reason == serve::FinishReason::kCancelled);
  CHECK(cancelled[0].ids.size() <= 4);
  CHECK((*engine)->stats().cancelled == 1);
  CHECK((*engine)->stats().running == 0);

  // Refusals before queuing.
  serve::Request bad;
  bad.prompt = {2, 100};
  bad.model = "c";
  CHECK((*engine)->Submit(bad).status().code() == absl::StatusCode::kNotFound);
  bad.model = "a";
  bad.max_new_tokens = 0;
  CHECK((*engine)->Submit(bad).status().code() == absl::StatusCode::kInvalidArgument);
  bad.max_new_tokens = 4;
  bad.prompt = {2, 1 << 30};
  CHECK((*engine)->Submit(bad).status().code() == absl::StatusCode::kInvalidArgument);
  bad.prompt.assign(static_cast<size_t>((*engine)->max_context()), 2);
  const absl::Status too_long = (*engine)->Submit(bad).status();
  CHECK(too_long.code() == absl::StatusCode::kInvalidArgument);
  CHECK(std::string(too_long.message()).find("the context is 32768 tokens") != std::string::npos);
  bad.prompt.clear();
  CHECK((*engine)->Submit(bad).status().code() == absl::StatusCode::kInvalidArgument);

  // Shutdown cancels what waits and refuses what comes after.
  (*engine)->Shutdown();
  bad.prompt = {2, 100};
  CHECK((*engine)->Submit(bad).status().code() == absl::StatusCode::kUnavailable);
}

TEST_CASE("engine: adapters that change the shared base are refused, as are reserved and repeated names",
          "[serve][real]") {
  const std::string dir = testing::TempDir("serve_refused");
  {
    std::unique_ptr<model::Decoder> m = LoadPacked();
    lora::LoraConfig dora;
    dora.r = 4;
    dora.target_modules = {"q_proj"};
    dora.use_dora = true;
    REQUIRE(lora::InjectLora(m.get(), dora).ok());
    REQUIRE(lora::SaveAdapter(*m, dora, dir + "/dora").ok());
  }
  auto dora = serve::Engine::Create(LoadPacked(), {{"d", dir + "/dora"}}, {});
  REQUIRE_FALSE(dora.ok());
  CHECK(std::string(dora.status().message()).find("use_dora") != std::string::npos);
  CHECK(std::string(dora.status().message()).find(dir + "/dora/adapter_config.json") != std::string::npos);
  auto reserved = serve::Engine::Create(LoadPacked(), {{"default", AdapterDir() + "/a"}}, {});
  CHECK(reserved.status().code() == absl::StatusCode::kInvalidArgument);
  auto twice = serve::Engine::Create(LoadPacked(), {{"x", AdapterDir() + "/a"}, {"x", AdapterDir() + "/b"}}, {});
  CHECK(twice.status().code() == absl::StatusCode::kInvalidArgument);
  auto missing = serve::Engine::Create(LoadPacked(), {{"x", dir + "/none"}}, {});
  REQUIRE_FALSE(missing.ok());
  CHECK(std::string(missing.status().message()).find(dir + "/none") != std::string::npos);
  serve::EngineOptions too_long;
  too_long.max_context = 1 << 20;
  CHECK(serve::Engine::Create(LoadPacked(), {}, too_long).status().code() == absl::StatusCode::kInvalidArgument);
}

TEST_CASE("serve: the OpenAI client gets generate's text, concurrent clients their adapter's, errors their codes",
          "[serve][real][reference]") {
  if (!testing::ReferenceStackAvailable()) return testing::Skip("no .venv: the reference stack is missing");
  const auto r = testing::RunReference(
      "serve_ref.py", {testing::CliPath(), Gguf(), AdapterDir() + "/a", AdapterDir() + "/b"});
  INFO(r.out);
  REQUIRE(r.exit_code == 0);
  const nlohmann::json s = testing::LastJsonLine(r.out);
  std::printf("serve: %d answers equal to `llmtrain generate`; 16 concurrent clients equal alone (largest batch "
              "%d); the adapters differ on %d of 8 prompts; a disconnected stream cancelled after %d steps\n",
              s["equal_to_generate"].get<int>(), s["largest_batch"].get<int>(), s["adapters_differ_on"].get<int>(),
              s["cancelled_after_steps"].get<int>());
  CHECK(s["equal_to_generate"].get<int>() == 18);  // 3 names × (2 prompts × 2 + chat × 2)
  CHECK(s["concurrent_equal"].get<int>() == 16);
  CHECK(s["largest_batch"].get<int>() >= 8);
  CHECK(s["cancelled_after_steps"].get<int>() < 900);
  CHECK(s["sigterm_exit"].get<int>() == 0);
}

}  // namespace
}  // namespace llmtrain
