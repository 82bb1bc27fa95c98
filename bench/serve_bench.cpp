// serve_bench: what continuous batching buys serve::Engine on the real Gemma 3 270M GGUF (packed
// weights), and what serving several LoRA adapters in one batch costs. The same work on every
// side: 16 requests of a 16-token prompt, each decoding 32 tokens (end tokens ignored).
//   one at a time   max_batch 1: the requests run in turn (what a server without batching does)
//   batched         max_batch 16, every request on adapter "a"
//   batched, mixed  max_batch 16, the requests spread over the base, "a" and "b" in one batch
// Two random adapters (r 8 on every projection; r 4 on attention) are made at start. Each round
// times every side once, in turn; medians are compared. No other server is measured: none runs
// here (vLLM and llama.cpp's server are not installed).
//
//   build/bin/serve_bench [--rounds=3] [--decode=32]
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/grad_mode.h>

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "llmtrain/core/atomic_file.h"
#include "llmtrain/lora/lora.h"
#include "llmtrain/model/decoder.h"
#include "llmtrain/quant/gguf_linear.h"
#include "llmtrain/serve/engine.h"
#include "testing/random_adapters.h"

namespace {

using namespace llmtrain;
using Clock = std::chrono::steady_clock;

constexpr int kRequests = 16;
constexpr int kPromptTokens = 16;

std::unique_ptr<model::Decoder> LoadPacked(const std::string& gguf) {
  model::DecoderOptions options;
  options.linear_factory = quant::PackedLinearFactory(std::nullopt);
  options.head_through_factory = true;
  auto m = model::Decoder::Load(gguf, options);
  if (!m.ok()) {
    std::fprintf(stderr, "serve_bench: %s\n", std::string(m.status().message()).c_str());
    std::exit(1);
  }
  return std::move(*m);
}

// Seconds for every request to finish (all submitted at once).
double Run(serve::Engine& engine, const std::vector<std::string>& models, int64_t decode) {
  std::mutex mu;
  std::condition_variable cv;
  int done = 0;
  const auto start = Clock::now();
  for (int i = 0; i < kRequests; ++i) {
    serve::Request r;
    r.model = models[static_cast<size_t>(i) % models.size()];
    for (int t = 0; t < kPromptTokens; ++t) r.prompt.push_back(2 + (i * 7919 + t * 104729) % 200000);
    r.prompt.front() = 2;
    r.max_new_tokens = decode;
    r.eos_token_ids = {-1};  // every request decodes `decode` tokens
    r.on_finish = [&](serve::FinishReason, const absl::Status&) {
      std::lock_guard<std::mutex> lock(mu);
      ++done;
      cv.notify_all();
    };
    if (!engine.Submit(std::move(r)).ok()) std::exit(1);
  }
  std::unique_lock<std::mutex> lock(mu);
  cv.wait(lock, [&] { return done == kRequests; });
  return std::chrono::duration<double>(Clock::now() - start).count();
}

}  // namespace

int main(int argc, char** argv) {
  int rounds = 3;
  int64_t decode = 32;
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], "--rounds=", 9) == 0) rounds = std::atoi(argv[i] + 9);
    if (std::strncmp(argv[i], "--decode=", 9) == 0) decode = std::atoll(argv[i] + 9);
  }
  const std::string gguf = std::string(LLMTRAIN_SOURCE_DIR) + "/.venv/models/gemma-3-270m-q4_k_m.gguf";
  // Two random adapters in PEFT's layout.
  const std::string dir = "/tmp/llmtrain_serve_bench_" + std::to_string(::getpid());
  {
    std::unique_ptr<model::Decoder> m = LoadPacked(gguf);
    const absl::Status saved = testing::SaveRandomAdapters(m.get(), dir, /*rslora_b=*/false);
    if (!saved.ok()) {
      std::fprintf(stderr, "serve_bench: %s\n", saved.ToString().c_str());
      return 1;
    }
  }
  struct Side {
    const char* name;
    int64_t max_batch;
    std::vector<std::string> models;
    std::unique_ptr<serve::Engine> engine;
    std::vector<double> seconds;
  };
  std::vector<Side> sides;
  sides.push_back({"one at a time", 1, {"a"}, nullptr, {}});
  sides.push_back({"batched", 16, {"a"}, nullptr, {}});
  sides.push_back({"batched, mixed", 16, {"default", "a", "b"}, nullptr, {}});
  for (Side& side : sides) {
    serve::EngineOptions options;
    options.max_batch = side.max_batch;
    auto engine = serve::Engine::Create(LoadPacked(gguf), {{"a", dir + "/a"}, {"b", dir + "/b"}}, options);
    if (!engine.ok()) {
      std::fprintf(stderr, "serve_bench: %s\n", std::string(engine.status().message()).c_str());
      return 1;
    }
    side.engine = std::move(*engine);
    Run(*side.engine, side.models, 4);  // warm-up
  }
  for (int round = 0; round < rounds; ++round) {
    for (Side& side : sides) side.seconds.push_back(Run(*side.engine, side.models, decode));
  }
  std::printf("serve_bench: %d requests × %lld new tokens (prompts of %d), real Gemma 3 270M, packed weights; "
              "threads %d (at::get_num_threads()); medians of %d rounds\n",
              kRequests, static_cast<long long>(decode), kPromptTokens, at::get_num_threads(), rounds);
  double base = 0;
  for (Side& side : sides) {
    std::sort(side.seconds.begin(), side.seconds.end());
    const double s = side.seconds[side.seconds.size() / 2];
    const double tps = kRequests * static_cast<double>(decode) / s;
    if (base == 0) base = tps;
    std::printf("%-15s %7.1f tok/s  %6.2f s  %.2fx  (largest batch %lld)\n", side.name, tps, s, tps / base,
                static_cast<long long>(side.engine->stats().largest_batch));
  }
  std::error_code ignored;
  std::filesystem::remove_all(dir, ignored);
  return 0;
}
