// train_bench: QLoRA training steps on the real Gemma 3 270M (GGUF → NF4 with double quantization,
// LoRA on all 126 projections, AdamW, float32 compute) against transformers + PEFT + bitsandbytes
// on the CPU with the same batch, sequence length, rank and threads, in one run. The reference is
// a resident child process (bench/train_bench_ref.py); the sides alternate step by step and the
// medians are compared. Prints tokens/s and peak RSS of both and their ratios (goals: ≥ 2x
// tokens/s, ≤ 0.6x peak RSS).
//
//   build/bin/train_bench [--batch=2] [--seq=128] [--rank=16] [--rounds=5]
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "llmtrain/core/threads.h"
#include "llmtrain/kernels/cross_entropy.h"
#include "llmtrain/lora/lora.h"
#include "llmtrain/model/decoder.h"
#include "llmtrain/train/optimizer.h"
#include "reference_process.h"

namespace {

using namespace llmtrain;
using Clock = std::chrono::steady_clock;
using bench::Median;

int64_t PeakRssMib() {
  struct rusage usage {};
  getrusage(RUSAGE_SELF, &usage);
  return usage.ru_maxrss / 1024;
}

}  // namespace

int main(int argc, char** argv) {
  int64_t batch = 2, seq = 128, rank = 16, rounds = 5;
  for (int i = 1; i < argc; ++i) {
    const auto arg = [&](const char* name, int64_t* v) {
      if (std::strncmp(argv[i], name, std::strlen(name)) == 0) *v = std::atoll(argv[i] + std::strlen(name));
    };
    arg("--batch=", &batch);
    arg("--seq=", &seq);
    arg("--rank=", &rank);
    arg("--rounds=", &rounds);
  }
  const int threads = NumThreads();
  at::set_num_threads(threads);
  const std::string gguf = std::string(LLMTRAIN_SOURCE_DIR) + "/.venv/models/gemma-3-270m-q4_k_m.gguf";
  bench::ReferenceProcess reference;
  const bool have_reference =
      reference.Start({LLMTRAIN_PYTHON, std::string(LLMTRAIN_SOURCE_DIR) + "/bench/train_bench_ref.py", gguf,
                       std::to_string(batch), std::to_string(seq), std::to_string(rank), std::to_string(threads)}) &&
      [&] {
        const nlohmann::json ready = reference.Ask("");
        return ready.is_object() && ready.value("ready", false);
      }();

  model::DecoderOptions options;
  options.quantize_4bit = quant::Quant4Options{quant::QuantType::kNf4, 64, /*double_quant=*/true};
  auto model = model::Decoder::Load(gguf, options);
  if (!model.ok()) {
    std::fprintf(stderr, "%s\n", std::string(model.status().message()).c_str());
    return 1;
  }
  lora::LoraConfig config;
  config.r = rank;
  config.alpha = 2.0 * static_cast<double>(rank);
  config.dropout = 0.05;
  config.target_modules = {"all-linear"};
  if (!lora::InjectLora(model->get(), config).ok()) return 1;
  lora::SetTraining(model->get(), true);
  std::vector<at::Tensor> params;
  for (const auto& [key, t] : lora::TrainableParameters(**model, config)) params.push_back(t);
  train::AdamW adam(params, {1e-4, 0.9, 0.999, 1e-8, 0.0});
  at::manual_seed(0);
  const at::Tensor ids = at::randint(0, (*model)->config().text.vocab_size, {batch, seq}, at::kLong);
  const auto step = [&] {
    const at::Tensor hidden = (*model)->Hidden(ids);
    const int64_t c = hidden.size(-1);
    kernels::CrossEntropyResult ce = kernels::ChunkedCrossEntropy(
        hidden.narrow(1, 0, seq - 1).reshape({-1, c}), (*model)->lm_head(), ids.narrow(1, 1, seq - 1).reshape({-1}));
    (ce.loss_sum / static_cast<double>(ce.n_tokens)).backward();
    adam.Step(1e-4);
    for (at::Tensor& p : params) p.mutable_grad() = at::Tensor();
  };
  step();
  std::vector<double> ours, theirs;
  for (int64_t r = 0; r < rounds; ++r) {
    const auto start = Clock::now();
    step();
    ours.push_back(std::chrono::duration<double>(Clock::now() - start).count());
    if (have_reference) {
      const nlohmann::json reply = reference.Ask("step");
      theirs.push_back(reply.is_object() ? reply.value("s", 0.0) : 0.0);
    }
  }
  const double tokens = static_cast<double>(batch * seq);
  const double ours_tps = tokens / Median(ours);
  const int64_t ours_rss = PeakRssMib();
  std::printf("train_bench: Gemma 3 270M QLoRA (NF4 + double quant, LoRA r=%lld on all-linear, AdamW), batch %lld × %lld "
              "tokens, %d threads, %lld rounds\n", static_cast<long long>(rank), static_cast<long long>(batch),
              static_cast<long long>(seq), threads, static_cast<long long>(rounds));
  if (!have_reference) {
    std::printf("ours: %.1f tok/s, peak RSS %lld MiB; reference not run\n", ours_tps, static_cast<long long>(ours_rss));
    return 0;
  }
  const double theirs_tps = tokens / Median(theirs);
  const nlohmann::json rss = reference.Ask("rss");
  const double theirs_rss = rss.is_object() ? rss.value("peak_rss_mib", 0.0) : 0.0;
  std::printf("tokens/s: ours %.1f, transformers + PEFT + bitsandbytes %.1f: %.2fx (goal ≥ 2x)\n", ours_tps, theirs_tps,
              ours_tps / theirs_tps);
  std::printf("peak RSS: ours %lld MiB, reference %.0f MiB: %.2fx (goal ≤ 0.6x)\n", static_cast<long long>(ours_rss),
              theirs_rss, static_cast<double>(ours_rss) / theirs_rss);
  return 0;
}
