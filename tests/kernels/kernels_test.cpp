// kernels/: chunked cross-entropy against the full computation (ATen's cross_entropy on the full
// float32 logits), in value, gradients and peak memory; RMSNorm, RoPE and 4-bit dequantization
// against independent formulas, and their CUDA paths against the CPU ones where a GPU exists.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/grad_mode.h>
#include <c10/core/CPUAllocator.h>
#include <torch/csrc/autograd/autograd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <mutex>
#include <set>
#include <thread>

#include "absl/strings/match.h"
#include "llmtrain/io/gguf.h"
#include "llmtrain/kernels/block_matmul.h"
#include "llmtrain/kernels/cross_entropy.h"
#include "llmtrain/kernels/dequant4.h"
#include "llmtrain/kernels/rms_norm.h"
#include "llmtrain/kernels/rope.h"
#include "llmtrain/quant/quant4.h"
#include "testing/gguf_blocks.h"
#include "testing/memory.h"
#include "testing/reference.h"
#include "testing/tensor_compare.h"

namespace llmtrain {
namespace {

using testing::RelativeError;

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

// RMSNorm, RoPE and 4-bit dequantization: the CPU paths against independent double-precision
// formulas (and quant/'s scalar dequantization, which quant_test checks against bitsandbytes),
// gradients by gradcheck, and the CUDA paths against the CPU ones where a GPU exists.

namespace llmtrain {
namespace {

TEST_CASE("RmsNorm equals x · rsqrt(mean(x²) + eps) in both scale styles, values and gradients", "[kernels]") {
  const bool gemma = GENERATE(false, true);
  const at::ScalarType dtype = GENERATE(at::kFloat, at::kBFloat16);
  INFO((gemma ? "(1 + w)" : "w ·") << " in " << dtype);
  at::manual_seed(5);
  const at::Tensor x = at::randn({3, 7, 48}).to(dtype);
  const at::Tensor w = (at::randn({48}) * 0.1).to(dtype);
  kernels::RmsNormOptions options;
  options.eps = 1e-6;
  options.scale = gemma ? kernels::NormScale::kOnePlusWeight : kernels::NormScale::kWeight;
  REQUIRE(kernels::Validate(options).ok());
  const at::Tensor y = kernels::RmsNorm(x, w, options);
  CHECK(y.scalar_type() == dtype);
  // The formula in double; the kernel rounds to the dtype once (Gemma) or twice (Qwen: x̂ to the
  // dtype, then times w): within one dtype ulp per rounding of the double result.
  const at::Tensor xd = x.to(at::kDouble), wd = w.to(at::kDouble);
  const at::Tensor normed = xd * at::rsqrt(xd.pow(2).mean(-1, true) + 1e-6);
  const at::Tensor want = gemma ? normed * (1.0 + wd) : wd * normed;
  const double ulp = dtype == at::kFloat ? 1.2e-7 : 7.9e-3;
  CHECK((y.to(at::kDouble) - want).abs().max().item<double>() <= 3 * ulp * want.abs().max().item<double>());

  // Gradients of x and w against finite differences, in double (gradcheck's default tolerances).
  const at::Tensor xg = at::randn({2, 5, 8}, at::kDouble).requires_grad_(true);
  const at::Tensor wg = (at::randn({8}, at::kDouble) * 0.1).requires_grad_(true);
  const auto f = [&](const at::Tensor& a, const at::Tensor& b) { return kernels::RmsNorm(a, b, options); };
  const at::Tensor out = f(xg, wg);
  const at::Tensor g = at::randn_like(out);
  const auto grads = torch::autograd::grad({out}, {xg, wg}, {g});
  const double h = 1e-6;
  for (int which = 0; which < 2; ++which) {
    const at::Tensor& p = which == 0 ? xg : wg;
    at::Tensor numeric = at::zeros_like(p);
    for (int64_t i = 0; i < p.numel(); ++i) {
      at::Tensor plus = p.detach().clone(), minus = p.detach().clone();
      plus.view(-1)[i] += h;
      minus.view(-1)[i] -= h;
      const at::Tensor fp = which == 0 ? f(plus, wg.detach()) : f(xg.detach(), plus);
      const at::Tensor fm = which == 0 ? f(minus, wg.detach()) : f(xg.detach(), minus);
      numeric.view(-1)[i] = ((fp - fm) * g).sum() / (2 * h);
    }
    INFO((which == 0 ? "dx" : "dw"));
    CHECK((grads[which] - numeric).abs().max().item<double>() <= 1e-5 + 1e-3 * numeric.abs().max().item<double>());
  }
  kernels::RmsNormOptions bad;
  bad.eps = -1;
  CHECK(absl::StrContains(kernels::Validate(bad).message(), "RmsNormOptions.eps"));
}

TEST_CASE("RoPE rotates pairs (i, i + D/2) by position · inv_freq", "[kernels]") {
  const at::ScalarType dtype = GENERATE(at::kFloat, at::kBFloat16);
  INFO("dtype " << dtype);
  const int64_t B = 2, H = 3, T = 5, D = 16;
  const at::Tensor inv = kernels::RopeInverseFrequencies(D, 10000.0, 2.0);
  // transformers: 1 / theta^(2i / D), divided by the linear factor.
  for (int64_t i = 0; i < D / 2; ++i) {
    CHECK(inv[i].item<float>() == static_cast<float>(1.0f / std::pow(10000.0f, static_cast<float>(2 * i) / D)) / 2.0f);
  }
  const at::Tensor positions = at::arange(T, at::kLong).view({1, T}).repeat({B, 1}) + at::tensor({0, 3}).view({B, 1});
  const kernels::RopeTables tables = kernels::MakeRopeTables(positions, inv, dtype);
  REQUIRE(tables.cos.sizes() == at::IntArrayRef({B, 1, T, D}));
  at::manual_seed(9);
  const at::Tensor x = at::randn({B, H, T, D}).to(dtype);
  const at::Tensor y = kernels::ApplyRope(x, tables.cos, tables.sin);
  // A rotation of each pair by angle p · inv_freq[i], in double.
  const at::Tensor angle = positions.to(at::kDouble).view({B, 1, T, 1}) * inv.to(at::kDouble).view({1, 1, 1, D / 2});
  const at::Tensor x1 = x.narrow(-1, 0, D / 2).to(at::kDouble), x2 = x.narrow(-1, D / 2, D / 2).to(at::kDouble);
  const at::Tensor want = at::cat({x1 * angle.cos() - x2 * angle.sin(), x2 * angle.cos() + x1 * angle.sin()}, -1);
  const double tol = dtype == at::kFloat ? 1e-5 : 3e-2;  // the tables are rounded to the dtype too
  CHECK((y.to(at::kDouble) - want).abs().max().item<double>() <= tol * want.abs().max().item<double>());
}

TEST_CASE("Dequantize4bit equals quant's scalar dequantization on any range", "[kernels]") {
  const bool nested = GENERATE(false, true);
  const int64_t blocksize = GENERATE(64, 256);
  INFO("double quant " << nested << " blocksize " << blocksize);
  at::manual_seed(1);
  const at::Tensor w = at::randn({37, 130});  // 4810 elements: the last block partial, odd rows
  quant::Quant4Options q4;
  q4.blocksize = blocksize;
  q4.double_quant = nested;
  auto q = quant::Quantize4bit(w, q4);
  REQUIRE(q.ok());
  const at::Tensor oracle = quant::Dequantize4bit(*q).view({-1});  // float32
  const at::Tensor scales = quant::BlockScales(q->state);
  const at::Tensor code = q->state.code.to(at::kFloat).contiguous();
  for (const auto& [begin, count] : std::vector<std::pair<int64_t, int64_t>>{{0, 4810}, {1, 999}, {130, 3000}, {4809, 1}}) {
    for (const at::ScalarType dtype : {at::kFloat, at::kBFloat16, at::kHalf}) {
      INFO("elements [" << begin << ", " << begin + count << ") as " << dtype);
      at::Tensor out = at::empty({count}, dtype);
      kernels::Dequantize4bit(q->packed, scales, code, blocksize, begin, out);
      CHECK(at::equal(out, oracle.narrow(0, begin, count).to(dtype)));
      at::Tensor through = at::empty({count}, at::kFloat);
      kernels::Dequantize4bit(q->packed, scales, code, blocksize, begin, through, at::kBFloat16);
      CHECK(at::equal(through, oracle.narrow(0, begin, count).to(at::kBFloat16).to(at::kFloat)));
    }
  }
  at::Tensor too_long = at::empty({4811}, at::kFloat);
  CHECK_THROWS_WITH(kernels::Dequantize4bit(q->packed, scales, code, blocksize, 0, too_long),
                    Catch::Contains("packed bytes") || Catch::Contains("block scales"));
}

TEST_CASE("BlockMatmul on GGUF blocks equals x · dequantized(W)ᵀ on every ISA", "[kernels]") {
  const io::GgmlType type = GENERATE(io::GgmlType::kQ8_0, io::GgmlType::kQ4_0, io::GgmlType::kQ4_1,
                                     io::GgmlType::kQ5_0, io::GgmlType::kQ5_1, io::GgmlType::kQ4_K,
                                     io::GgmlType::kQ5_K, io::GgmlType::kQ6_K, io::GgmlType::kF16,
                                     io::GgmlType::kBF16);
  const auto traits = *io::GetGgmlTypeTraits(static_cast<uint32_t>(type));
  // 1,280 columns: one whole 1,024-value piece and a shorter last one; 1 to 15 input rows.
  const int64_t rows = 37, cols = traits.block_elems == 256 ? 1280 : 1248;
  const std::vector<uint8_t> blocks = testing::RandomGgufBlocks(type, rows, cols, 7);
  at::Tensor dense = at::empty({rows, cols}, at::kFloat);
  REQUIRE(io::Dequantize(type, blocks, absl::MakeSpan(dense.data_ptr<float>(), rows * cols)).ok());
  REQUIRE(dense.isfinite().all().item<bool>());
  const kernels::GgufRowDecoder w(type, blocks.data(), rows, cols);
  at::Tensor decoded = at::empty({rows, cols}, at::kFloat);
  kernels::DecodeRows(w, 0, rows, decoded.data_ptr<float>());
  CHECK(at::equal(decoded, dense));  // the decoder is gguf's dequantization, bit for bit
  for (const int64_t m : {1, 2, 3, 4, 5, 15}) {
    const at::Tensor x = at::randn({m, cols}, at::detail::createCPUGenerator(m));
    // The reference in float64; float32 sums of 1,280 products differ from it by ~1e-6 of the scale.
    const at::Tensor want = at::matmul(x.to(at::kDouble), dense.to(at::kDouble).t());
    const double scale = want.abs().max().item<double>();
    // kAvx512I16 rounds x to int16, 32 columns per scale: |x − x̂| ≤ max|x over the 32| / 65534,
    // so each output may move by Σ_c |W[r][c]| · that, on top of float32 rounding.
    const at::Tensor chunk_max = x.to(at::kDouble).abs().view({m, cols / 32, 32}).amax(2);
    const at::Tensor rounding = at::matmul(chunk_max.repeat_interleave(32, 1) / 65534.0, dense.to(at::kDouble).abs().t());
    for (const kernels::DotIsa isa : {kernels::DotIsa::kPlain, kernels::DotIsa::kAvx2, kernels::DotIsa::kAvx512,
                                      kernels::DotIsa::kAvx512I16}) {
      if (isa == kernels::DotIsa::kAvx512 && !__builtin_cpu_supports("avx512f")) continue;
      if (isa == kernels::DotIsa::kAvx512I16 && !(__builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("f16c"))) {
        continue;
      }
      if (isa == kernels::DotIsa::kAvx2 && !__builtin_cpu_supports("avx2")) continue;
      at::Tensor y = at::full({m, rows}, std::nan(""), at::kFloat);
      kernels::BlockMatmul(w, x.data_ptr<float>(), m, y.data_ptr<float>(), isa);
      const at::Tensor diff = (y.to(at::kDouble) - want).abs();
      const double err = diff.max().item<double>() / scale;
      INFO(io::GgmlTypeName(type) << " m " << m << " isa " << static_cast<int>(isa) << " rel " << err);
      if (isa == kernels::DotIsa::kAvx512I16) {
        // Within the rounding bound (plus float32 rounding), and the rounding is really there for
        // the types with an int16 path: the result differs from the exact product.
        const double over = (diff - rounding - 1e-5 * scale).max().item<double>();
        INFO("worst excess over the bound " << over << ", bound at most " << rounding.max().item<double>() / scale);
        CHECK(over <= 0.0);
        if (w.HasDotRowI16()) CHECK(err > 1e-8);
      } else {
        CHECK(err <= 1e-5);
      }
    }
  }
}

TEST_CASE("BlockMatmul: a NaN or an infinity in the input is not rounded away on any ISA", "[kernels]") {
  const int64_t rows = 8, cols = 256;
  for (const io::GgmlType type : {io::GgmlType::kQ5_0, io::GgmlType::kQ6_K, io::GgmlType::kQ8_0}) {
    const std::vector<uint8_t> blocks = testing::RandomGgufBlocks(type, rows, cols, 3);
    const kernels::GgufRowDecoder w(type, blocks.data(), rows, cols);
    for (const float bad : {std::nanf(""), std::numeric_limits<float>::infinity()}) {
      std::vector<float> x(2 * cols, 0.5f);
      x[cols + 37] = bad;  // the second input row only
      for (const kernels::DotIsa isa : {kernels::DotIsa::kPlain, kernels::DotIsa::kAvx512, kernels::DotIsa::kAvx512I16}) {
        if (isa == kernels::DotIsa::kAvx512 && !__builtin_cpu_supports("avx512f")) continue;
        if (isa == kernels::DotIsa::kAvx512I16 && !(__builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("f16c"))) {
          continue;
        }
        std::vector<float> y(2 * rows, 0.0f);
        kernels::BlockMatmul(w, x.data(), 2, y.data(), isa);
        INFO(io::GgmlTypeName(type) << " isa " << static_cast<int>(isa) << " input " << bad);
        for (int64_t r = 0; r < rows; ++r) {
          CHECK(std::isfinite(y[r]));             // the clean row
          CHECK_FALSE(std::isfinite(y[rows + r]));  // NaN or ±inf, never a finite number
        }
      }
    }
  }
}

// A weight of zeros that records which threads BlockMatmul ran its rows on.
class ThreadRecorder final : public kernels::RowDecoder {
 public:
  int64_t rows() const override { return 4096; }
  int64_t cols() const override { return 32; }
  int64_t granularity() const override { return 32; }
  void Decode(int64_t, int64_t, int64_t count, float* out) const override { std::fill_n(out, count, 0.0f); }
  bool HasDotRow(kernels::DotIsa) const override { return true; }
  void DotRows(int64_t row_begin, int64_t row_end, const float*, int64_t, float* y, kernels::DotIsa) const override {
    std::fill(y + row_begin, y + row_end, 0.0f);
    const std::lock_guard<std::mutex> lock(mutex_);
    threads_.insert(std::this_thread::get_id());
  }
  size_t threads() const { return threads_.size(); }

 private:
  mutable std::mutex mutex_;
  mutable std::set<std::thread::id> threads_;
};

TEST_CASE("BlockMatmul splits a weight's rows over ATen's threads", "[kernels]") {
  // at::parallel_for is inline: a source built without -fopenmp runs every range on one thread.
  const int threads = at::get_num_threads();
  if (threads < 2) {
    testing::Skip("ATen has one thread here: nothing to split over");
    return;
  }
  ThreadRecorder w;
  std::vector<float> x(32, 1.0f), y(4096, 1.0f);
  kernels::BlockMatmul(w, x.data(), 1, y.data(), kernels::DotIsa::kPlain);
  INFO(threads << " ATen threads");
  CHECK(w.threads() == 2);  // 4,096 rows of 32 columns: two tasks of 2,048 rows (64 KiB of values)
}

TEST_CASE("kernels: the CUDA RmsNorm, RoPE and Dequantize4bit agree with the CPU paths", "[kernels][cuda]") {
  if (!at::hasCUDA()) {
    testing::Skip("no CUDA device: the CUDA kernels of kernels/ were not run (they are compiled and linked)");
    return;
  }
  at::NoGradGuard no_grad;
  at::manual_seed(11);
  for (const at::ScalarType dtype : {at::kFloat, at::kBFloat16}) {
    INFO("dtype " << dtype);
    // RMSNorm: the fused kernel sums in another order, so float32 rounding apart.
    const at::Tensor x = at::randn({5, 3, 96}).to(dtype), w = (at::randn({96}) * 0.1).to(dtype);
    for (const auto scale : {kernels::NormScale::kWeight, kernels::NormScale::kOnePlusWeight}) {
      kernels::RmsNormOptions options;
      options.scale = scale;
      const at::Tensor cpu = kernels::RmsNorm(x, w, options).to(at::kDouble);
      const at::Tensor gpu = kernels::RmsNorm(x.cuda(), w.cuda(), options).cpu().to(at::kDouble);
      const double ulp = dtype == at::kFloat ? 1.2e-7 : 7.9e-3;
      CHECK((gpu - cpu).abs().max().item<double>() <= 2 * ulp * cpu.abs().max().item<double>());
    }
    // RoPE: the same three roundings as the ATen ops, so equal.
    const at::Tensor q = at::randn({2, 4, 7, 32}).to(dtype);
    const at::Tensor positions = at::arange(7, at::kLong).view({1, 7}).repeat({2, 1});
    const kernels::RopeTables t = kernels::MakeRopeTables(positions, kernels::RopeInverseFrequencies(32, 1e4), dtype);
    CHECK(at::equal(kernels::ApplyRope(q.cuda(), t.cos.cuda(), t.sin.cuda()).cpu(), kernels::ApplyRope(q, t.cos, t.sin)));
  }
  // 4-bit dequantization: the same product and rounding, so equal. NF4 and FP4, with and without
  // double quantization (the float32 block scales come from BlockScales either way), into f32,
  // bf16 and f16, on aligned and odd ranges, and on 4,224 blocks of 64 (many thread blocks).
  for (const quant::QuantType type : {quant::QuantType::kNf4, quant::QuantType::kFp4}) {
    for (const bool nested : {false, true}) {
      quant::Quant4Options q4;
      q4.type = type;
      q4.double_quant = nested;
      at::Tensor w = at::randn({33 * 64, 128});
      w.narrow(0, 3, 1).zero_();  // two all-zero blocks
      // A NaN block (without double quantization: with it, a NaN scale spoils its 256 blocks' group).
      if (!nested) w.view({-1})[70000] = std::numeric_limits<float>::quiet_NaN();
      auto q = quant::Quantize4bit(w, q4);
      REQUIRE(q.ok());
      const at::Tensor scales = quant::BlockScales(q->state), code = q->state.code.to(at::kFloat).contiguous();
      for (const auto& [begin, count] : std::vector<std::pair<int64_t, int64_t>>{
               {0, 4224}, {16, 1024}, {3, 777}, {0, w.numel()}, {65, w.numel() - 130}}) {
        for (const at::ScalarType dtype : {at::kFloat, at::kBFloat16, at::kHalf}) {
          INFO((type == quant::QuantType::kNf4 ? "NF4" : "FP4") << (nested ? " double-quantized" : "")
                                                                << ", elements [" << begin << ", " << begin + count
                                                                << ") as " << dtype);
          at::Tensor cpu = at::empty({count}, dtype);
          kernels::Dequantize4bit(q->packed, scales, code, q4.blocksize, begin, cpu);
          at::Tensor gpu = at::empty({count}, at::TensorOptions().dtype(dtype).device(at::kCUDA));
          kernels::Dequantize4bit(q->packed.cuda(), scales.cuda(), code.cuda(), q4.blocksize, begin, gpu);
          // NaN payloads may differ (the GPU's conversions make them canonical): NaN where the
          // CPU has NaN, the same bits everywhere else (compared as integers: -0 is not +0).
          const at::Tensor g = gpu.cpu();
          const at::ScalarType bits = dtype == at::kFloat ? at::kInt : at::kShort;
          CHECK(at::equal(g.isnan(), cpu.isnan()));
          CHECK(at::equal(g.masked_fill(g.isnan(), 0).view(bits), cpu.masked_fill(cpu.isnan(), 0).view(bits)));
        }
      }
    }
  }
}

}  // namespace
}  // namespace llmtrain
