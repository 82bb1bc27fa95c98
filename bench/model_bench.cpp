// model_bench: the real Gemma 3 270M (GGUF, float32) against transformers on the same machine,
// threads and dtype, in one run: forward+backward tokens/s, greedy decode tokens/s, peak RSS, and
// the CPU MFU of our forward+backward (model FLOPs ÷ time ÷ the peak GEMM FLOP/s measured here).
// The reference runs as a child process that keeps its model loaded; the two sides alternate,
// one measurement each per round, and the medians over the rounds are compared, so that the
// machine's drift between minutes hits both sides alike.
//
//   build/bin/model_bench [--tokens=256] [--decode=32] [--rounds=5] [--trace=FILE]
//
// --trace writes a Chrome trace of one forward+backward (ATen ops, autograd profiler) to see where
// the time goes.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/grad_mode.h>
#include <sys/resource.h>
#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>
#include <torch/csrc/autograd/profiler_legacy.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "llmtrain/core/threads.h"
#include "llmtrain/kernels/cross_entropy.h"
#include "llmtrain/model/decoder.h"
#include "llmtrain/model/generate.h"
#include "nlohmann/json.hpp"
#include "reference_process.h"

namespace {

using namespace llmtrain;
using Clock = std::chrono::steady_clock;
using bench::Median;

double Seconds(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// Peak float32 GEMM throughput of this machine with ATen's BLAS (the MFU denominator).
double PeakGemmFlops() {
  const at::Tensor a = at::randn({2048, 2048}), b = at::randn({2048, 2048});
  at::mm(a, b);
  double best = 0;
  for (int i = 0; i < 5; ++i) {
    const auto start = Clock::now();
    at::Tensor c = at::mm(a, b);
    best = std::max(best, 2.0 * 2048 * 2048 * 2048 / Seconds(start));
  }
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  int64_t tokens = 256, decode = 32, rounds = 5;
  std::string trace;
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], "--tokens=", 9) == 0) tokens = std::atoll(argv[i] + 9);
    if (std::strncmp(argv[i], "--decode=", 9) == 0) decode = std::atoll(argv[i] + 9);
    if (std::strncmp(argv[i], "--trace=", 8) == 0) trace = argv[i] + 8;
    if (std::strncmp(argv[i], "--rounds=", 9) == 0) rounds = std::max<int64_t>(1, std::atoll(argv[i] + 9));
  }
  const int threads = NumThreads();
  at::set_num_threads(threads);
  const std::string gguf = std::string(LLMTRAIN_SOURCE_DIR) + "/.venv/models/gemma-3-270m-q4_k_m.gguf";
  // Started first, so it loads while we do; nothing is timed before it is ready.
  bench::ReferenceProcess reference;
  const bool ref_started =
      reference.Start({LLMTRAIN_PYTHON, std::string(LLMTRAIN_SOURCE_DIR) + "/bench/model_bench_ref.py", gguf,
                       std::to_string(tokens), std::to_string(threads)});
  model::DecoderOptions options;
  options.requires_grad = true;  // full fine-tuning gradients, as the reference computes them
  auto model = model::Decoder::Load(gguf, options);
  if (!model.ok()) {
    std::fprintf(stderr, "%s\n", std::string(model.status().message()).c_str());
    return 1;
  }
  at::manual_seed(0);
  const at::Tensor ids = at::randint(0, (*model)->config().text.vocab_size, {1, tokens}, at::kLong);
  // Next-token labels as transformers shifts them: position t predicts token t + 1.
  const at::Tensor labels = at::cat({ids.slice(1, 1), at::full({1, 1}, -100, at::kLong)}, 1).view(-1);
  auto fwd_bwd = [&] {
    for (const auto& [name, p] : (*model)->named_parameters()) p.mutable_grad() = at::Tensor();
    const at::Tensor hidden = (*model)->Hidden(ids).view({tokens, -1});
    const auto ce = kernels::ChunkedCrossEntropy(hidden, (*model)->lm_head(), labels);
    (ce.loss_sum / static_cast<double>(ce.n_tokens)).backward();
  };
  fwd_bwd();  // warm-up

  model::GenerationOptions generation;
  generation.max_new_tokens = decode;
  generation.eos_token_ids = {-1};  // never stop early: time exactly `decode` tokens
  const std::vector<int64_t> prompt(ids.data_ptr<int64_t>(), ids.data_ptr<int64_t>() + 16);
  model::GenerationOptions warm_up = generation;
  warm_up.max_new_tokens = 4;
  (void)model::Generate(**model, prompt, warm_up);

  const nlohmann::json ready = ref_started ? reference.Ask("") : nlohmann::json();
  if (!ready.is_object() || !ready.value("ready", false)) {
    std::printf("reference run failed to start (%s)\n", ready.dump().c_str());
    return 1;
  }
  if (!trace.empty()) {  // after the reference has loaded: nothing else runs now
    torch::autograd::profiler::RecordProfile profile(trace);
    fwd_bwd();
  }
  for (const auto& [name, p] : (*model)->named_parameters()) p.mutable_grad() = at::Tensor();
  std::vector<double> ours_fb_s, ref_fb_s, ours_decode_tps, ref_decode_tps;
  for (int64_t round = 0; round < rounds; ++round) {
    auto start = Clock::now();
    fwd_bwd();
    ours_fb_s.push_back(Seconds(start));
    for (const auto& [name, p] : (*model)->named_parameters()) p.mutable_grad() = at::Tensor();
    ref_fb_s.push_back(reference.Ask("fwd_bwd").value("s", 0.0));
    start = Clock::now();
    auto generated = model::Generate(**model, prompt, generation);
    ours_decode_tps.push_back(generated.ok() ? generated->size() / Seconds(start) : 0.0);
    const nlohmann::json r = reference.Ask(absl::StrCat("decode ", decode));
    ref_decode_tps.push_back(r.value("n", 0) / std::max(1e-9, r.value("s", 1.0)));
  }
  const double fwd_bwd_s = Median(ours_fb_s);
  const nlohmann::json ref_rss_reply = reference.Ask("rss");

  struct rusage usage;
  ::getrusage(RUSAGE_SELF, &usage);
  const double ours_rss_mib = usage.ru_maxrss / 1024.0;

  // Model FLOPs of forward+backward: 6 per weight of every matmul (the LM head included) per
  // token, plus attention scores and values: 6 · 2 · T · H · D per layer per token.
  const auto& c = (*model)->config().text;
  double matmul_weights = static_cast<double>(c.vocab_size) * c.hidden_size;
  for (const auto& [name, p] : (*model)->named_parameters()) {
    if (p.dim() == 2 && name != "token_embd.weight" && name != "model.embed_tokens.weight") {
      matmul_weights += static_cast<double>(p.numel());
    }
  }
  const double attention = 2.0 * tokens * c.num_attention_heads * c.head_dim * c.num_hidden_layers;
  const double flops = 6.0 * tokens * matmul_weights + 6.0 * tokens * attention;
  const double peak = PeakGemmFlops();

  const double ours_fb = tokens / fwd_bwd_s;
  const double ours_decode = Median(ours_decode_tps);
  std::printf("gemma3 270M f32, T=%lld, %lld decoded tokens, median of %lld alternating rounds\n",
              static_cast<long long>(tokens), static_cast<long long>(decode), static_cast<long long>(rounds));
  std::printf("threads: ours %d (at::get_num_threads()), reference %d (torch.get_num_threads())\n",
              at::get_num_threads(), ready.value("torch_threads", 0));
  const double ref_fb = tokens / std::max(1e-9, Median(ref_fb_s));
  const double ref_decode = Median(ref_decode_tps);
  const double ref_rss = ref_rss_reply.value("peak_rss_mib", 0.0);
  std::printf("fwd+bwd  reference %.1f tok/s  llmtrain %.1f tok/s  ratio %.2fx\n", ref_fb, ours_fb, ours_fb / ref_fb);
  std::printf("decode   reference %.1f tok/s  llmtrain %.1f tok/s  ratio %.2fx\n", ref_decode, ours_decode,
              ours_decode / ref_decode);
  std::printf("peak RSS reference %.0f MiB  llmtrain %.0f MiB  ratio %.2f\n", ref_rss, ours_rss_mib,
              ours_rss_mib / ref_rss);
  std::printf("MFU      llmtrain %.1f%% (%.1f GFLOP/s of model FLOPs; peak f32 GEMM %.1f GFLOP/s)\n",
              100.0 * flops / fwd_bwd_s / peak, flops / fwd_bwd_s / 1e9, peak / 1e9);
  return 0;
}
