// train_bench: QLoRA training steps on the real Gemma 3 270M (GGUF → NF4 with double quantization,
// LoRA on all 126 projections, AdamW, float32 compute) against transformers + PEFT + bitsandbytes
// on the CPU with the same batch, sequence length, rank and threads, in one run. The reference is
// a resident child process (bench/train_bench_ref.py); the sides alternate step by step and the
// medians are compared. Prints tokens/s and peak RSS of both and their ratios (goals: ≥ 2x
// tokens/s, ≤ 0.6x peak RSS).
//
// --profile=N then profiles N more steps of each side and prints where the time goes, per
// operator (ours: bench/op_profile.h; the reference: torch.profiler), self time.
//
// --dtype=bf16 runs both sides with bfloat16 compute (our model dtype; the reference's torch_dtype
// and bnb_4bit_compute_dtype), LoRA weights float32 on both. --dtype=autocast keeps a float32 model
// and runs forward and loss under autocast bf16 (train::AutocastGuard; torch.autocast with
// bnb_4bit_compute_dtype bf16).
//
//   build/bin/train_bench [--batch=2] [--seq=128] [--rank=16] [--rounds=5] [--profile=0] [--chunk=N] [--smaps]
//                         [--dtype=f32|bf16|autocast]
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cctype>
#include <cstring>
#include <optional>
#include <fstream>
#include <string>
#include <vector>

#include "llmtrain/core/threads.h"
#include "llmtrain/kernels/cross_entropy.h"
#include "llmtrain/lora/lora.h"
#include "llmtrain/quant/quantized_linear.h"
#include "llmtrain/model/decoder.h"
#include "llmtrain/train/autocast.h"
#include "llmtrain/train/optimizer.h"
#include "op_profile.h"
#include "reference_process.h"

namespace {

using namespace llmtrain;
using bench::Median;

int64_t PeakRssMib() {
  struct rusage usage {};
  getrusage(RUSAGE_SELF, &usage);
  return usage.ru_maxrss / 1024;
}

// Resident memory now (VmRSS), for where the peak comes from.
int64_t CurrentRssMib() {
  std::FILE* f = std::fopen("/proc/self/status", "r");
  if (f == nullptr) return 0;
  char line[256];
  long long kib = 0;
  while (std::fgets(line, sizeof(line), f) != nullptr) {
    if (std::sscanf(line, "VmRSS: %lld kB", &kib) == 1) break;
  }
  std::fclose(f);
  return kib / 1024;
}

// The largest resident mappings (/proc/self/smaps), printed with --smaps to see what the RSS is.
void PrintLargestMappings(const char* when) {
  std::ifstream smaps("/proc/self/smaps");
  std::vector<std::pair<long long, std::string>> maps;
  std::string line, header;
  while (std::getline(smaps, line)) {
    long long kib = 0;
    const size_t dash = line.find('-'), space = line.find(' ');
    if (dash != std::string::npos && space != std::string::npos && dash < space &&
        std::isxdigit(static_cast<unsigned char>(line[0]))) {
      header = line;
    } else if (line.find(' ') != std::string::npos && std::sscanf(line.c_str(), "Rss: %lld kB", &kib) == 1) {
      maps.emplace_back(kib, header);
    }
  }
  std::sort(maps.rbegin(), maps.rend());
  std::printf("ours: largest resident mappings %s\n", when);
  for (size_t i = 0; i < maps.size() && i < 8; ++i) std::printf("  %7.1f MiB  %s\n", maps[i].first / 1024.0, maps[i].second.c_str());
}

}  // namespace

int main(int argc, char** argv) {
  int64_t batch = 2, seq = 128, rank = 16, rounds = 5, profile = 0, chunk = kernels::CrossEntropyOptions().chunk_tokens;
  int64_t smaps = 0;
  // Compute of both sides: f32; bf16 (model dtype; the reference's dtype and bnb_4bit_compute_dtype);
  // or autocast (a float32 model under autocast bf16: train::AutocastGuard; torch.autocast).
  std::string dtype = "f32";
  for (int i = 1; i < argc; ++i) {
    const auto arg = [&](const char* name, int64_t* v) {
      if (std::strncmp(argv[i], name, std::strlen(name)) == 0) *v = std::atoll(argv[i] + std::strlen(name));
    };
    arg("--batch=", &batch);
    arg("--seq=", &seq);
    arg("--rank=", &rank);
    arg("--rounds=", &rounds);
    arg("--profile=", &profile);
    arg("--chunk=", &chunk);
    if (std::strcmp(argv[i], "--smaps") == 0) smaps = 1;
    if (std::strncmp(argv[i], "--dtype=", 8) == 0) dtype = argv[i] + 8;
  }
  const int threads = NumThreads();
  at::set_num_threads(threads);
  const std::string gguf = std::string(LLMTRAIN_SOURCE_DIR) + "/.venv/models/gemma-3-270m-q4_k_m.gguf";
  bench::ReferenceProcess reference;
  const nlohmann::json ready =
      reference.Start({LLMTRAIN_PYTHON, std::string(LLMTRAIN_SOURCE_DIR) + "/bench/train_bench_ref.py", gguf,
                       std::to_string(batch), std::to_string(seq), std::to_string(rank), std::to_string(threads),
                       dtype})
          ? reference.Ask("")
          : nlohmann::json();
  const bool have_reference = ready.is_object() && ready.value("ready", false);

  model::DecoderOptions options;
  quant::Quant4Options q4;  // QLoRA's base: NF4, blocks of 64, double quantization
  q4.blocksize = 64;
  q4.double_quant = true;
  options.linear_factory = quant::QuantizedLinearFactory(q4);
  if (dtype == "bf16") {
    options.dtype = Dtype::kBf16;
  } else if (dtype != "f32" && dtype != "autocast") {
    std::fprintf(stderr, "--dtype: f32, bf16 or autocast\n");
    return 2;
  }
  auto model = model::Decoder::Load(gguf, options);
  if (!model.ok()) {
    std::fprintf(stderr, "%s\n", std::string(model.status().message()).c_str());
    return 1;
  }
  const int64_t loaded_rss = CurrentRssMib(), loaded_peak = PeakRssMib();
  if (smaps != 0) PrintLargestMappings("after loading");
  lora::LoraConfig config;
  config.r = rank;
  config.alpha = 2.0 * static_cast<double>(rank);
  config.dropout = 0.05;
  config.target_modules = {"all-linear"};
  if (!lora::InjectLora(model->get(), config).ok()) return 1;
  lora::SetTraining(model->get(), true);
  std::vector<at::Tensor> params;
  for (const auto& [key, t] : lora::TrainableParameters(**model, config)) params.push_back(t);
  train::AdamW adam(params, {.lr = 1e-4, .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8, .weight_decay = 0.0});
  at::manual_seed(0);
  const at::Tensor ids = at::randint(0, (*model)->config().text.vocab_size, {batch, seq}, at::kLong);
  const auto step = [&] {
    RECORD_FUNCTION("step", std::vector<c10::IValue>());
    kernels::CrossEntropyResult ce;
    {
      std::optional<train::AutocastGuard> autocast;
      if (dtype == "autocast") autocast.emplace(c10::DeviceType::CPU, at::kBFloat16);
      const at::Tensor hidden = (*model)->Hidden(ids);
      const int64_t c = hidden.size(-1);
      kernels::CrossEntropyOptions ce_options;
      ce_options.chunk_tokens = chunk;
      ce = kernels::ChunkedCrossEntropy(hidden.narrow(1, 0, seq - 1).reshape({-1, c}), (*model)->lm_head(),
                                        ids.narrow(1, 1, seq - 1).reshape({-1}), ce_options);
    }
    (ce.loss_sum / static_cast<double>(ce.n_tokens)).backward();
    adam.Step(1e-4);
    for (at::Tensor& p : params) p.mutable_grad() = at::Tensor();
  };
  const auto [ours, theirs] = bench::TimeAgainstReference(rounds, step, have_reference ? &reference : nullptr, "step");
  std::printf("ours: RSS %lld MiB after loading (peak %lld MiB while loading), %lld MiB after the steps\n",
              static_cast<long long>(loaded_rss), static_cast<long long>(loaded_peak),
              static_cast<long long>(CurrentRssMib()));
  const double tokens = static_cast<double>(batch * seq);
  const double ours_tps = tokens / Median(ours);
  const int64_t ours_rss = PeakRssMib();
  std::printf("train_bench: Gemma 3 270M QLoRA (NF4 + double quant, LoRA r=%lld on all-linear, AdamW), %s compute, "
              "batch %lld × %lld tokens, %lld rounds\n", static_cast<long long>(rank), dtype.c_str(),
              static_cast<long long>(batch), static_cast<long long>(seq), static_cast<long long>(rounds));
  if (!have_reference) {
    std::printf("threads: ours %d (at::get_num_threads()), reference not run\n", at::get_num_threads());
    std::printf("ours: %.1f tok/s, peak RSS %lld MiB; reference not run\n", ours_tps, static_cast<long long>(ours_rss));
    return 0;
  }
  std::printf("threads: ours %d (at::get_num_threads()), reference %d (torch.get_num_threads())\n",
              at::get_num_threads(), ready.value("torch_threads", 0));
  const double theirs_tps = tokens / Median(theirs);
  const nlohmann::json rss = reference.Ask("rss");
  const double theirs_rss = rss.is_object() ? rss.value("peak_rss_mib", 0.0) : 0.0;
  std::printf("tokens/s: ours %.1f, transformers + PEFT + bitsandbytes %.1f: %.2fx (goal ≥ 2x)\n", ours_tps, theirs_tps,
              ours_tps / theirs_tps);
  std::printf("peak RSS: ours %lld MiB, reference %.0f MiB: %.2fx (goal ≤ 0.6x)\n", static_cast<long long>(ours_rss),
              theirs_rss, static_cast<double>(ours_rss) / theirs_rss);
  if (profile > 0) {
    bench::OpProfile ops;
    ops.Start();
    for (int64_t i = 0; i < profile; ++i) step();
    ops.Stop();
    ops.Print("ours", 25, static_cast<double>(profile));
    const nlohmann::json reply = reference.Ask("profile " + std::to_string(profile));
    if (reply.is_object() && reply.contains("rows")) {
      std::printf("reference: self time per step, %.3f s profiled per step\n", reply.value("total_s", 0.0));
      for (const auto& row : reply["rows"]) {
        std::printf("  %8.1f ms %5.1f%% %6.0f calls  %s\n", 1e3 * row.value("self_s", 0.0), row.value("share", 0.0),
                    row.value("calls", 0.0), row.value("name", std::string()).c_str());
      }
    }
  }
  return 0;
}
