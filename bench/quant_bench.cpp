// quant_bench: the 4-bit path on this machine, each measurement beside its baseline in one run:
//   1. NF4 dequantization (our tile kernel, all threads) in bytes written per second, against a
//      copy of the same bytes (at::Tensor::copy_, all threads). Goal ≥ 50%.
//   2. QuantizedLinear forward + backward (input gradient) against a dense at::linear of the same
//      shape and dtype. Goal ≤ 1.5x the time.
//   3. A LoRA layer on an NF4 base (ours) against PEFT's LoRA on a bitsandbytes Linear4bit, both
//      training on the CPU in float32 (bench/quant_bench_ref.py, a resident child process; the
//      sides alternate round by round). Goal ≥ 2x.
// Medians over rounds. The GPU goals (dequant ≥ 70% of device copy bandwidth, fused NF4 GEMM ≤ 1.3x
// a bf16 cuBLASLt GEMM) need a CUDA device; without one this prints that they were not run.
//
//   build/bin/quant_bench [--tokens=512] [--in=2048] [--out=2048] [--rank=16] [--rounds=7]
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "llmtrain/core/threads.h"
#include "llmtrain/lora/lora.h"
#include "llmtrain/quant/quantized_linear.h"
#include "reference_process.h"

namespace {

using namespace llmtrain;
using Clock = std::chrono::steady_clock;
using bench::Median;
using bench::TimePair;

}  // namespace

int main(int argc, char** argv) {
  int64_t tokens = 512, in = 2048, out = 2048, rank = 16, rounds = 7;
  for (int i = 1; i < argc; ++i) {
    const auto arg = [&](const char* name, int64_t* v) {
      const size_t n = std::strlen(name);
      if (std::strncmp(argv[i], name, n) == 0) *v = std::atoll(argv[i] + n);
    };
    arg("--tokens=", &tokens);
    arg("--in=", &in);
    arg("--out=", &out);
    arg("--rank=", &rank);
    arg("--rounds=", &rounds);
  }
  const int threads = NumThreads();
  at::set_num_threads(threads);
  at::manual_seed(0);
  std::printf("quant_bench: weight %lld x %lld, %lld tokens, LoRA rank %lld\n", static_cast<long long>(out),
              static_cast<long long>(in), static_cast<long long>(tokens), static_cast<long long>(rank));
  bench::ReferenceProcess reference;
  const std::string script = std::string(LLMTRAIN_SOURCE_DIR) + "/bench/quant_bench_ref.py";
  const nlohmann::json ready =
      reference.Start({LLMTRAIN_PYTHON, script, std::to_string(tokens), std::to_string(in), std::to_string(out),
                       std::to_string(rank), std::to_string(threads)})
          ? reference.Ask("")
          : nlohmann::json();
  const bool have_reference = ready.is_object() && ready.value("ready", false);
  // Sections 1 and 2 time both of their sides here, on ATen's pool (our kernels use at::parallel_for),
  // so the first number covers both sides of them; the reference's is section 3's.
  if (have_reference) {
    std::printf("threads: ours %d (at::get_num_threads()), reference %d (PEFT + bitsandbytes: torch.get_num_threads())\n",
                at::get_num_threads(), ready.value("torch_threads", 0));
  } else {
    std::printf("threads: ours %d (at::get_num_threads()), reference not run\n", at::get_num_threads());
  }

  const at::Tensor w = at::randn({out, in}) * 0.02;
  auto q = quant::Quantize4bit(w, {quant::QuantType::kNf4, 64, /*double_quant=*/true});
  if (!q.ok()) return 1;
  auto layer = std::make_shared<quant::QuantizedLinear>(*q);

  // 1. Dequantization bandwidth, output bytes per second, f32 and bf16.
  for (const c10::ScalarType dtype : {at::kFloat, at::kBFloat16}) {
    at::Tensor dst = at::empty({out, in}, dtype), src = at::empty({out, in}, dtype).fill_(1);
    const double bytes = static_cast<double>(dst.nbytes());
    const auto [t_deq, t_copy] = TimePair(rounds, [&] { layer->DequantizeRows(0, out, dst); }, [&] { dst.copy_(src); });
    std::printf("dequant NF4 → %-8s %7.2f GB/s written; copy of the same bytes %7.2f GB/s: %.0f%% of copy (goal ≥ 50%%)\n",
                c10::toString(dtype), bytes / t_deq / 1e9, bytes / t_copy / 1e9, 100.0 * t_copy / t_deq);
  }

  // 2. QuantizedLinear forward + backward against a dense linear (both: input gradient only).
  {
    const at::Tensor x = at::randn({tokens, in}).requires_grad_(true);
    const at::Tensor g = at::randn({tokens, out});
    const at::Tensor dense_w = quant::Dequantize4bit(*q);
    const auto [t_q, t_d] = TimePair(
        rounds,
        [&] {
          x.mutable_grad() = at::Tensor();
          layer->Forward(x).backward(g);
        },
        [&] {
          x.mutable_grad() = at::Tensor();
          at::linear(x, dense_w).backward(g);
        });
    std::printf("QuantizedLinear fwd+bwd %7.2f ms; dense linear %7.2f ms: %.2fx the time (goal ≤ 1.5x)\n",
                t_q * 1e3, t_d * 1e3, t_q / t_d);
  }

  // 3. LoRA on the NF4 base against PEFT + bitsandbytes, alternating.
  {
    lora::LoraConfig config;
    config.r = rank;
    config.alpha = 2.0 * static_cast<double>(rank);
    at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(0);
    auto lora_layer = std::make_shared<lora::LoraLinear>(layer, rank, config.alpha, config, at::kFloat, &gen);
    lora_layer->set_training(true);
    const at::Tensor x = at::randn({tokens, in}).requires_grad_(true);
    const at::Tensor g = at::randn({tokens, out});
    const auto step = [&] {
      x.mutable_grad() = at::Tensor();
      lora_layer->lora_A().mutable_grad() = at::Tensor();
      lora_layer->lora_B().mutable_grad() = at::Tensor();
      lora_layer->Forward(x).backward(g);
    };
    const auto [ours, theirs] = bench::TimeAgainstReference(rounds, step, have_reference ? &reference : nullptr, "lora");
    if (have_reference) {
      std::printf("LoRA on NF4 fwd+bwd: ours %7.2f ms; PEFT + bitsandbytes %7.2f ms: %.2fx faster (goal ≥ 2x)\n",
                  Median(ours) * 1e3, Median(theirs) * 1e3, Median(theirs) / Median(ours));
    } else {
      std::printf("LoRA on NF4 fwd+bwd: ours %7.2f ms; reference not run (no .venv with peft + bitsandbytes)\n",
                  Median(ours) * 1e3);
    }
  }
#if LLMTRAIN_WITH_CUDA
  std::printf("GPU: this build has the CUDA kernels; the GPU goals need a device (none was used here).\n");
#else
  std::printf("GPU: this build has no CUDA kernels.\n");
#endif
  return 0;
}
