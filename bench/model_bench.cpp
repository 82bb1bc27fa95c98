// model_bench: the real Gemma 3 270M (GGUF, float32) against transformers on the same machine,
// threads and dtype, in one run: forward+backward tokens/s, greedy decode tokens/s, peak RSS, and
// the CPU MFU of our forward+backward (model FLOPs ÷ time ÷ the peak GEMM FLOP/s measured here).
//
//   build/bin/model_bench [--tokens=256] [--decode=32]
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/grad_mode.h>
#include <sys/resource.h>

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

namespace {

using namespace llmtrain;
using Clock = std::chrono::steady_clock;

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

double MedianOf3(const std::function<void()>& fn) {
  std::vector<double> t;
  for (int i = 0; i < 3; ++i) {
    const auto start = Clock::now();
    fn();
    t.push_back(Seconds(start));
  }
  std::sort(t.begin(), t.end());
  return t[1];
}

}  // namespace

int main(int argc, char** argv) {
  int64_t tokens = 256, decode = 32;
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], "--tokens=", 9) == 0) tokens = std::atoll(argv[i] + 9);
    if (std::strncmp(argv[i], "--decode=", 9) == 0) decode = std::atoll(argv[i] + 9);
  }
  const int threads = NumThreads();
  at::set_num_threads(threads);
  const std::string gguf = std::string(LLMTRAIN_SOURCE_DIR) + "/.venv/models/gemma-3-270m-q4_k_m.gguf";
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
  const double fwd_bwd_s = MedianOf3(fwd_bwd);
  for (const auto& [name, p] : (*model)->named_parameters()) p.mutable_grad() = at::Tensor();

  model::GenerationOptions generation;
  generation.max_new_tokens = decode;
  generation.eos_token_ids = {-1};  // never stop early: time exactly `decode` tokens
  const std::vector<int64_t> prompt(ids.data_ptr<int64_t>(), ids.data_ptr<int64_t>() + 16);
  (void)model::Generate(**model, prompt, {.max_new_tokens = 4, .eos_token_ids = {-1}});
  const auto decode_start = Clock::now();
  auto generated = model::Generate(**model, prompt, generation);
  const double decode_s = Seconds(decode_start);

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

  const std::string command = absl::StrCat("'", LLMTRAIN_PYTHON, "' '", LLMTRAIN_SOURCE_DIR,
                                           "/bench/model_bench_ref.py' '", gguf, "' ", tokens, " ",
                                           decode, " ", threads, " 2>/dev/null");
  std::string out;
  if (FILE* pipe = ::popen(command.c_str(), "r")) {
    char buf[4096];
    while (std::fgets(buf, sizeof(buf), pipe) != nullptr) out = buf;
    ::pclose(pipe);
  }
  const nlohmann::json ref = nlohmann::json::parse(out, nullptr, false);
  const double ours_fb = tokens / fwd_bwd_s;
  const double ours_decode = generated.ok() ? generated->size() / decode_s : 0.0;
  std::printf("gemma3 270M f32, %d threads, T=%lld, %lld decoded tokens\n", threads,
              static_cast<long long>(tokens), static_cast<long long>(decode));
  if (!ref.is_object()) {
    std::printf("reference run failed: %s\n", out.c_str());
    return 1;
  }
  const double ref_fb = ref["fwd_bwd_tokens_per_s"].get<double>();
  const double ref_decode = ref["decode_tokens_per_s"].get<double>();
  const double ref_rss = ref["peak_rss_mib"].get<double>();
  std::printf("fwd+bwd  reference %.1f tok/s  llmtrain %.1f tok/s  ratio %.2fx\n", ref_fb, ours_fb, ours_fb / ref_fb);
  std::printf("decode   reference %.1f tok/s  llmtrain %.1f tok/s  ratio %.2fx\n", ref_decode, ours_decode,
              ours_decode / ref_decode);
  std::printf("peak RSS reference %.0f MiB  llmtrain %.0f MiB  ratio %.2f\n", ref_rss, ours_rss_mib,
              ours_rss_mib / ref_rss);
  std::printf("MFU      llmtrain %.1f%% (%.1f GFLOP/s of model FLOPs; peak f32 GEMM %.1f GFLOP/s)\n",
              100.0 * flops / fwd_bwd_s / peak, flops / fwd_bwd_s / 1e9, peak / 1e9);
  return 0;
}
