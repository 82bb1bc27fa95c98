// kernels/: chunked cross-entropy against the full computation (ATen's cross_entropy on the full
// float32 logits), in value, gradients and peak memory.
#include <ATen/ATen.h>
#include <c10/core/CPUAllocator.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <cstdio>
#include <cstring>

#include "llmtrain/kernels/cross_entropy.h"
#include "testing/memory.h"

namespace llmtrain {
namespace {

double RelativeError(const at::Tensor& a, const at::Tensor& b) {
  const double scale = b.abs().max().item<double>();
  return (a.to(at::kDouble) - b.to(at::kDouble)).abs().max().item<double>() / (scale > 0 ? scale : 1.0);
}

// The full computation: float32 logits (N, V), optional soft-cap, summed cross-entropy.
at::Tensor FullLoss(const at::Tensor& hidden, const at::Tensor& weight, const at::Tensor& labels,
                    std::optional<double> softcap) {
  at::Tensor logits = at::linear(hidden, weight).to(at::kFloat);
  if (softcap) logits = at::tanh(logits / *softcap) * *softcap;
  return at::cross_entropy_loss(logits, labels, {}, at::Reduction::Sum, -100);
}

TEST_CASE("chunked cross-entropy equals the full one, value and gradients", "[kernels]") {
  const bool softcap = GENERATE(false, true);
  const int64_t chunk = GENERATE(1, 7, 64, 1000);
  // g = 1 (a loss used as is) and g ≠ 1 (normalized by tokens) take different backward paths.
  const double scale = GENERATE(1.0, 0.37);
  INFO("softcap " << softcap << " chunk " << chunk << " scale " << scale);
  at::manual_seed(3);
  const at::Tensor hidden0 = at::randn({37, 16}, at::kDouble).to(at::kFloat);
  const at::Tensor weight0 = at::randn({50, 16}).mul(2.0);
  at::Tensor labels = at::randint(0, 50, {37}, at::kLong);
  labels.index_put_({at::arange(0, 37, 5)}, -100);  // every 5th token ignored
  const std::optional<double> cap = softcap ? std::optional<double>(3.0) : std::nullopt;

  const at::Tensor h_full = hidden0.clone().set_requires_grad(true);
  const at::Tensor w_full = weight0.clone().set_requires_grad(true);
  const at::Tensor full = FullLoss(h_full, w_full, labels, cap);
  (full * scale).backward();

  const at::Tensor h = hidden0.clone().set_requires_grad(true);
  const at::Tensor w = weight0.clone().set_requires_grad(true);
  kernels::CrossEntropyOptions options;
  options.chunk_tokens = chunk;
  options.final_softcap = cap;
  const auto result = kernels::ChunkedCrossEntropy(h, w, labels, options);
  (result.loss_sum * scale).backward();
  CHECK(result.n_tokens == 37 - 8);
  CHECK(RelativeError(result.loss_sum, full) <= 1e-6);  // float32 sums over ≤ 37 rows
  CHECK(RelativeError(h.grad(), h_full.grad()) <= 1e-6);
  CHECK(RelativeError(w.grad(), w_full.grad()) <= 1e-6);
}

TEST_CASE("chunked cross-entropy in bf16 equals the full bf16 computation", "[kernels]") {
  // bf16 hidden and head: logits are produced in bf16 and reduced in float32 on both sides; the
  // gradient is rounded to bf16 before the two backward GEMMs on both sides. With and without a
  // soft-cap, with ignored labels.
  const bool softcap = GENERATE(false, true);
  // Chunks of 8 rows reduced whole, or a byte budget: chunks of 16 bf16 rows reduced 4 float32
  // rows at a time.
  const bool budget = GENERATE(false, true);
  INFO("softcap " << softcap << " budget " << budget);
  const std::optional<double> cap = softcap ? std::optional<double>(3.0) : std::nullopt;
  at::manual_seed(4);
  const at::Tensor hidden0 = at::randn({29, 32}).to(at::kBFloat16);
  const at::Tensor weight0 = at::randn({70, 32}).to(at::kBFloat16);
  at::Tensor labels = at::randint(0, 70, {29}, at::kLong);
  labels.index_put_({at::arange(0, 29, 4)}, -100);
  const at::Tensor h_full = hidden0.clone().set_requires_grad(true);
  const at::Tensor w_full = weight0.clone().set_requires_grad(true);
  const at::Tensor full = FullLoss(h_full, w_full, labels, cap);
  (full * 0.5).backward();
  const at::Tensor h = hidden0.clone().set_requires_grad(true);
  const at::Tensor w = weight0.clone().set_requires_grad(true);
  kernels::CrossEntropyOptions options;
  options.chunk_tokens = budget ? 0 : 8;
  options.chunk_bytes = budget ? 16 * 70 * 2 : options.chunk_bytes;
  options.final_softcap = cap;
  const auto result = kernels::ChunkedCrossEntropy(h, w, labels, options);
  (result.loss_sum * 0.5).backward();
  CHECK(h.grad().scalar_type() == at::kBFloat16);
  CHECK(w.grad().scalar_type() == at::kBFloat16);
  CHECK(RelativeError(result.loss_sum, full) <= 1e-6);
  // The head gradient is summed over chunks in float32 here and in one bf16 GEMM there: a few bf16
  // ulps (2^-8 relative) apart.
  CHECK(RelativeError(h.grad(), h_full.grad()) <= 1e-2);
  CHECK(RelativeError(w.grad(), w_full.grad()) <= 1e-2);
}

TEST_CASE("chunked cross-entropy: a second backward of the same graph is refused", "[kernels]") {
  // The saved gradients are scaled in place by the first backward.
  const at::Tensor h = at::randn({5, 8}).set_requires_grad(true);
  const at::Tensor w = at::randn({11, 8}).set_requires_grad(true);
  const auto result = kernels::ChunkedCrossEntropy(h, w, at::randint(0, 11, {5}, at::kLong));
  const at::Tensor loss = result.loss_sum * 0.5;
  loss.backward({}, /*retain_graph=*/true);
  CHECK_THROWS_WITH(loss.backward(), Catch::Contains("backward can run only once"));
}

TEST_CASE("chunked cross-entropy refuses bad labels and shapes", "[kernels]") {
  const at::Tensor h = at::randn({4, 8});
  const at::Tensor w = at::randn({10, 8});
  CHECK_THROWS_WITH(kernels::ChunkedCrossEntropy(h, w, at::full({4}, 10, at::kLong)),
                    Catch::Contains("outside [0, 10)"));
  CHECK_THROWS_WITH(kernels::ChunkedCrossEntropy(h, at::randn({10, 9}), at::zeros({4}, at::kLong)),
                    Catch::Contains("must be (N, C) and (V, C)"));
}

TEST_CASE("chunked cross-entropy peak memory at Gemma 3 270M size, T = 2048", "[kernels][memory]") {
  // Hidden 640, vocabulary 262144 (the real model's), 2048 tokens; the LM head is frozen as in
  // LoRA training, so only the hidden states get a gradient.
  at::manual_seed(5);
  const at::Tensor weight = at::randn({262144, 640}) * 0.02;
  const at::Tensor hidden0 = at::randn({2048, 640});
  const at::Tensor labels = at::randint(0, 262144, {2048}, at::kLong);

  c10::Allocator* base = c10::GetCPUAllocator();
  testing::TrackingAllocator tracker(base);
  c10::SetCPUAllocator(&tracker, /*priority=*/255);
  auto measure = [&](bool chunked) {
    const at::Tensor h = hidden0.clone().set_requires_grad(true);
    tracker.ResetPeak();
    const int64_t before = tracker.current();
    at::Tensor loss = chunked ? kernels::ChunkedCrossEntropy(h, weight, labels).loss_sum
                              : FullLoss(h, weight, labels, std::nullopt);
    loss.backward();
    const int64_t peak = tracker.peak() - before;
    return std::make_pair(peak, loss.item<double>());
  };
  const auto [full_peak, full_loss] = measure(false);
  const auto [chunked_peak, chunked_loss] = measure(true);
  c10::SetCPUAllocator(base, /*priority=*/255);
  std::printf("cross-entropy T=2048 V=262144: peak %.1f MiB full, %.1f MiB chunked (default chunks), ratio %.3f\n",
              full_peak / 1048576.0, chunked_peak / 1048576.0,
              static_cast<double>(chunked_peak) / static_cast<double>(full_peak));
  CHECK(chunked_peak * 4 <= full_peak);
  CHECK(std::abs(chunked_loss - full_loss) <= 1e-5 * std::abs(full_loss));
}

}  // namespace
}  // namespace llmtrain
