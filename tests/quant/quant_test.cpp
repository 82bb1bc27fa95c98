// quant/: NF4/FP4 quantization against bitsandbytes' own quantize_4bit / dequantize_4bit, run at
// test time on its CPU path (tests/reference/quant_ref.py), on every shape class.
#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <ATen/Context.h>

#include <catch2/catch.hpp>
#include <algorithm>
#include <barrier>
#include <cstdio>
#include <cstring>
#include <map>
#include <mutex>
#include <random>
#include <thread>

#include "absl/strings/ascii.h"
#include "llmtrain/io/safetensors.h"
#include "llmtrain/io/tensors.h"
#include "llmtrain/kernels/block_matmul.h"
#include "llmtrain/lora/lora.h"
#include "llmtrain/model/decoder.h"
#include "llmtrain/quant/gguf_linear.h"
#include "llmtrain/quant/int8.h"
#include "llmtrain/quant/quant4.h"
#include "llmtrain/quant/quantized_linear.h"
#include "llmtrain/train/autocast.h"
#include "testing/gguf_blocks.h"
#include "testing/json_util.h"
#include "testing/safetensors_util.h"
#include "testing/reference.h"

namespace llmtrain {
namespace {

using testing::LoadAll;

// Same bytes: dtype, shape and every bit (so NaN and the sign of zero count too).
bool SameBytes(const at::Tensor& a, const at::Tensor& b) {
  if (a.scalar_type() != b.scalar_type() || a.sizes() != b.sizes()) return false;
  const at::Tensor x = a.contiguous(), y = b.contiguous();
  return std::memcmp(x.data_ptr(), y.data_ptr(), x.nbytes()) == 0;
}

// max |got − want| / max |want| in float64, got moved to the CPU.
double RelativeError(const at::Tensor& got, const at::Tensor& want) {
  const at::Tensor w = want.detach().cpu().to(at::kDouble);
  return (got.detach().cpu().to(at::kDouble) - w).abs().max().item<double>() / w.abs().max().item<double>();
}

// Values equal with +0 == −0 (bitsandbytes' own kernels disagree on the sign of FP4's zero).
bool SameValues(const at::Tensor& a, const at::Tensor& b) {
  return a.sizes() == b.sizes() && a.scalar_type() == b.scalar_type() &&
         at::equal(a.to(at::kFloat) + 0.0, b.to(at::kFloat) + 0.0);
}

TEST_CASE("quant: NF4/FP4 packed bytes, block scales and dequantization equal bitsandbytes", "[quant][reference]") {
  if (!testing::ReferenceStackAvailable()) return;
  const std::string dir = testing::TempDir("quant_ref");
  const auto run = testing::RunReference("quant_ref.py", {"make", dir});
  REQUIRE(run.exit_code == 0);
  const nlohmann::json cases = testing::LastJsonLine(run.out)["cases"];
  auto ref = LoadAll(dir + "/cases.safetensors");
  size_t n = 0, packed_ok = 0, scales_ok = 0, nested_ok = 0, nested_cases = 0, dequant_ok = 0, row_indexing = 0;
  for (const auto& c : cases) {
    const std::string name = c["name"];
    INFO(c.dump());
    quant::Quant4Options options;
    options.type = c["quant_type"] == "nf4" ? quant::QuantType::kNf4 : quant::QuantType::kFp4;
    options.blocksize = c["blocksize"];
    options.double_quant = c["double_quant"];
    auto q = quant::Quantize4bit(ref[name + ".input"], options);
    REQUIRE(q.ok());
    ++n;
    const bool packed = SameBytes(q->packed, ref[name + ".packed"]);
    const bool scales = SameBytes(q->state.absmax, ref[name + ".absmax"]) && SameBytes(q->state.code, ref[name + ".code"]);
    CHECK(packed);
    CHECK(scales);
    packed_ok += packed;
    scales_ok += scales;
    if (options.double_quant) {
      ++nested_cases;
      const bool nested = SameBytes(q->state.nested_absmax, ref[name + ".nested_absmax"]) &&
                          SameBytes(q->state.nested_code, ref[name + ".nested_code"]) &&
                          q->state.offset == c["offset"].get<float>();
      CHECK(nested);
      nested_ok += nested;
    }
    const at::Tensor dq = quant::Dequantize4bit(*q);
    const bool dequant = SameValues(dq, ref[name + ".dequant"]);
    CHECK(dequant);
    dequant_ok += dequant;
    row_indexing += c["bnb_avx512_row_indexing"].get<bool>();
  }
  std::printf("quant: %zu cases (11 shapes × f32/f16/bf16 × nf4/fp4 × double quant on/off × blocksize 64/128): "
              "packed bytes %zu, block scales %zu, double-quant state %zu of %zu, dequantization %zu identical\n",
              n, packed_ok, scales_ok, nested_ok, nested_cases, dequant_ok);
  std::printf("quant: %zu cases have a last dimension that is a multiple of 16 but not of the blocksize, where "
              "bitsandbytes 0.50.2's AVX512 dequantize_4bit reads block scales per row (wrong values); there the "
              "reference is its torch path\n",
              row_indexing);
  CHECK(n >= 200);

  size_t int8_n = 0, int8_ok = 0;
  const nlohmann::json int8_cases = testing::LastJsonLine(run.out)["int8_cases"];
  for (const auto& c : int8_cases) {
    const std::string name = c["name"];
    INFO(c.dump());
    auto q = quant::QuantizeInt8(ref[name + ".input"], c["threshold"].get<double>());
    REQUIRE(q.ok());
    ++int8_n;
    bool ok = SameBytes(q->q, ref[name + ".q"]) && SameBytes(q->row_stats, ref[name + ".row_stats"]) &&
              SameBytes(quant::DequantizeInt8(*q), ref[name + ".dequant"]);
    if (c["has_outlier_cols"].get<bool>()) {
      ok = ok && q->outlier_cols.defined() && SameBytes(q->outlier_cols, ref[name + ".outlier_cols"]);
    } else {
      ok = ok && !q->outlier_cols.defined();
    }
    CHECK(ok);
    int8_ok += ok;
  }
  std::printf("quant: int8 row-wise: %zu of %zu cases identical (q, row stats, outlier columns, dequantization)\n",
              int8_ok, int8_n);
  CHECK(int8_n >= 30);
}

TEST_CASE("quant: the real Gemma 3 270M's linear weights in NF4 take at most 0.30 of their bf16 bytes",
          "[quant][reference][real][memory]") {
  if (!testing::ReferenceStackAvailable()) return;  // the GGUF comes with .venv
  model::DecoderOptions options;
  options.dtype = Dtype::kBf16;
  auto model = model::Decoder::Load(std::string(LLMTRAIN_SOURCE_DIR) + "/.venv/models/gemma-3-270m-q4_k_m.gguf", options);
  REQUIRE(model.ok());
  int64_t bf16_bytes = 0, quantized_bytes = 0, n_linear = 0;
  for (const auto& [name, p] : (*model)->named_parameters()) {
    // The linear layers bitsandbytes quantizes: 2-D projection weights (the embedding, which is
    // also the tied LM head, stays in 16 bits, as transformers skips lm_head by default).
    if (p.dim() != 2 || p.size(0) == (*model)->config().text.vocab_size) continue;
    auto q = quant::Quantize4bit(p, {.type = quant::QuantType::kNf4, .blocksize = 64, .double_quant = true});
    REQUIRE(q.ok());
    ++n_linear;
    bf16_bytes += p.numel() * 2;
    quantized_bytes += static_cast<int64_t>(q->packed.nbytes() + q->state.absmax.nbytes() +
                                            q->state.nested_absmax.nbytes() + sizeof(float));  // + offset
  }
  const double ratio = static_cast<double>(quantized_bytes) / static_cast<double>(bf16_bytes);
  std::printf("gemma3 270M: %lld linear weights, %.1f MiB in bf16, %.1f MiB in NF4 with double quantization: "
              "ratio %.3f\n",
              static_cast<long long>(n_linear), bf16_bytes / 1048576.0, quantized_bytes / 1048576.0, ratio);
  CHECK(n_linear == 18 * 7);
  CHECK(ratio <= 0.30);
}

// The tile kernel against the reference dequantization on odd shapes: a row that starts inside a
// byte (odd in), blocks that cross rows (in not a multiple of the blocksize), one tile and many.
TEST_CASE("quant: QuantizedLinear forward and input gradient equal a dense linear over Dequantize4bit", "[quant]") {
  struct Shape { int64_t out, in; };
  const Shape shapes[] = {{8, 64}, {5, 33}, {96, 64}, {64, 96}, {300, 130}, {1100, 257}, {40, 4096}};
  const c10::ScalarType dtypes[] = {at::kFloat, at::kBFloat16};
  size_t n = 0;
  double worst_fwd = 0, worst_bwd = 0;
  for (const Shape& shape : shapes) {
    for (const c10::ScalarType dtype : dtypes) {
      for (const bool nested : {false, true}) {
        INFO("shape " << shape.out << "x" << shape.in << " dtype " << c10::toString(dtype) << " nested " << nested);
        const at::Tensor w = (at::randn({shape.out, shape.in}) * 0.05).to(dtype);
        auto q = quant::Quantize4bit(w, {quant::QuantType::kNf4, 64, nested});
        REQUIRE(q.ok());
        const quant::QuantizedLinear layer(*q, at::randn({shape.out}).to(dtype));
        // Bit-exact rows: the tile kernel equals code × scale rounded once to the output dtype.
        at::Tensor rows = at::empty({shape.out, shape.in}, dtype);
        layer.DequantizeRows(0, shape.out, rows);
        const at::Tensor exact = (quant::Dequantize4bit(quant::Quantized4{q->packed, [&] {
                                    quant::Quant4State s = q->state;
                                    s.dtype = at::kFloat;
                                    return s;
                                  }()})).to(dtype);
        CHECK(at::equal(rows, exact));
        // Forward and backward against at::linear on those weights: 21 rows (per-thread tiles)
        // and 64 rows (large tiles: one, or many with a 64 KiB budget).
        // 1 row and 21 rows (decoded a piece at a time next to the dot products in float32, per-thread
        // tiles in bfloat16) and 64 rows (large tiles: one, or many with a 64 KiB budget).
        for (const int64_t budget : {int64_t{-1}, int64_t{0}, int64_t{16} << 20, int64_t{64} << 10}) {
          const int64_t r0 = budget == -1 ? 1 : budget == 0 ? 3 : 8, r1 = budget == -1 ? 1 : budget == 0 ? 7 : 8;
          INFO("rows " << r0 * r1 << ", large-tile budget " << budget);
          quant::QuantizedLinear::SetLargeTileBytes(budget <= 0 ? int64_t{16} << 20 : budget);
          const at::Tensor x = at::randn({r0, r1, shape.in}).to(dtype).requires_grad_(true);
          const at::Tensor y = layer.Forward(x);
          const at::Tensor x_ref = x.detach().clone().requires_grad_(true);
          const at::Tensor y_ref = at::linear(x_ref, exact, layer.bias());
          const at::Tensor g = at::randn(y.sizes()).to(dtype);
          y.backward(g);
          y_ref.backward(g);
          const double tol = dtype == at::kFloat ? 1e-5 : 2e-2;
          const double fwd = RelativeError(y, y_ref);
          const double bwd = RelativeError(x.grad(), x_ref.grad());
          CHECK(fwd <= tol);
          CHECK(bwd <= tol);
          if (dtype == at::kFloat) {
            worst_fwd = std::max(worst_fwd, fwd);
            worst_bwd = std::max(worst_bwd, bwd);
          }
          ++n;
        }
        quant::QuantizedLinear::SetLargeTileBytes(int64_t{16} << 20);
      }
    }
  }
  std::printf("quant: QuantizedLinear on %zu cases: dequantized tiles bit-identical; float32 forward rel err %.2e, "
              "input gradient rel err %.2e (summation order only)\n", n, worst_fwd, worst_bwd);
}

// GGUF blocks as a 1-D uint8 tensor, and gguf's dequantization of them as (rows, cols) float32.
at::Tensor BytesTensor(const std::vector<uint8_t>& raw) {
  at::Tensor blocks = at::empty({static_cast<int64_t>(raw.size())}, at::kByte);
  std::memcpy(blocks.data_ptr(), raw.data(), raw.size());
  return blocks;
}
at::Tensor Dequantized(io::GgmlType type, const std::vector<uint8_t>& raw, int64_t rows, int64_t cols) {
  at::Tensor dense = at::empty({rows, cols}, at::kFloat);
  REQUIRE(io::Dequantize(type, raw, absl::MakeSpan(dense.data_ptr<float>(), dense.numel())).ok());
  return dense;
}

TEST_CASE("quant: GgufLinear over GGUF blocks equals a dense linear over gguf's dequantization", "[quant]") {
  struct Case { io::GgmlType type; int64_t out, in; };
  // The 270M's types; 1,100 × 4,096 takes two 16 MiB GEMM tiles at 32 rows.
  const Case cases[] = {{io::GgmlType::kQ4_K, 96, 512}, {io::GgmlType::kQ5_0, 70, 640}, {io::GgmlType::kQ6_K, 33, 768},
                        {io::GgmlType::kQ8_0, 1100, 4096}, {io::GgmlType::kF16, 40, 96}};
  double worst_fwd = 0, worst_bwd = 0, worst_batch = 0;
  for (const Case& c : cases) {
    const std::vector<uint8_t> raw = testing::RandomGgufBlocks(c.type, c.out, c.in, 3);
    const at::Tensor bias = at::randn({c.out});
    const quant::GgufLinear layer(c.type, BytesTensor(raw), c.out, c.in, bias);
    const at::Tensor dense = Dequantized(c.type, raw, c.out, c.in);
    CHECK(at::equal(layer.DenseWeight(at::kFloat), dense));
    CHECK(layer.StorageBytes() == static_cast<int64_t>(raw.size()));
    CHECK(model::StoredBytes(layer) == static_cast<int64_t>(raw.size()) + c.out * 4);
    CHECK(layer.kind() == absl::AsciiStrToLower(io::GgmlTypeName(c.type)));
    for (const std::vector<int64_t>& shape : {std::vector<int64_t>{1, c.in}, std::vector<int64_t>{3, 5, c.in},
                                             std::vector<int64_t>{4, 8, c.in}}) {
      for (const c10::ScalarType dtype : {at::kFloat, at::kBFloat16}) {
        INFO(io::GgmlTypeName(c.type) << " rows " << at::IntArrayRef(shape) << " dtype " << c10::toString(dtype));
        const at::Tensor x = at::randn(shape).to(dtype).requires_grad_(true);
        const at::Tensor y = layer.Forward(x);
        CHECK(y.scalar_type() == dtype);
        const at::Tensor x_ref = x.detach().to(at::kDouble).requires_grad_(true);
        const at::Tensor y_ref = at::linear(x_ref, dense.to(at::kDouble), bias.to(at::kDouble));
        const at::Tensor g = at::randn(y.sizes());
        y.backward(g.to(dtype));
        y_ref.backward(g.to(dtype).to(at::kDouble));
        // float32 products against float64; bfloat16 adds its rounding of the output and gradient.
        const double tol = dtype == at::kFloat ? 1e-5 : 1e-2;
        const double y_scale = y_ref.abs().max().item<double>();
        at::Tensor fwd_err = (y.detach().to(at::kDouble) - y_ref.detach()).abs();
        const int64_t rows = x.numel() / c.in;
        if (dtype == at::kFloat && kernels::RoundsInputI16(kernels::GgufRowDecoder(c.type, raw.data(), c.out, c.in))) {
          // Both paths round x to int16 per 32 columns (kernels::I16Rows): each output may move by
          // Σ_c |W[r][c]| · (max |x| of c's 32) / 65534 more; measured here beyond that bound.
          const at::Tensor chunk_max = x.detach().to(at::kDouble).reshape({rows, c.in / 32, 32}).abs().amax(2);
          const at::Tensor bound = at::matmul(chunk_max.repeat_interleave(32, 1) / 65534.0, dense.to(at::kDouble).abs().t());
          fwd_err = (fwd_err.reshape({rows, c.out}) - bound).clamp_min(0.0);
        }
        const double fwd = fwd_err.max().item<double>() / y_scale;
        const double bwd = (x.grad().to(at::kDouble) - x_ref.grad()).abs().max().item<double>() /
                           x_ref.grad().abs().max().item<double>();
        CHECK(fwd <= tol);
        CHECK(bwd <= tol);
        if (dtype == at::kFloat) {
          worst_fwd = std::max(worst_fwd, fwd);
          worst_bwd = std::max(worst_bwd, bwd);
        }
      }
    }
    // A row's output does not depend on the rows beside it: 32 rows (the tiles) against each row
    // alone (the block products), to float32 summation order. Where the products round x to int16,
    // this holds only because the tiles multiply the same rounding (rounding alone moves outputs
    // by about 1e-5 of the largest here).
    {
      at::NoGradGuard no_grad;
      const at::Tensor x = at::randn({quant::GgufLinear::kLargeRows * 2, c.in});
      const at::Tensor together = layer.Forward(x);
      double worst_alone = 0;
      for (int64_t i = 0; i < x.size(0); ++i) {
        const at::Tensor alone = layer.Forward(x.narrow(0, i, 1));
        worst_alone = std::max(worst_alone, (alone[0] - together[i]).abs().max().item<double>());
      }
      INFO(io::GgmlTypeName(c.type) << ": a row alone vs among 32, worst difference " << worst_alone);
      CHECK(worst_alone <= 1e-6 * together.abs().max().item<double>());
      worst_batch = std::max(worst_batch, worst_alone / together.abs().max().item<double>());
    }
  }
  // The layer reads the blocks' current storage: a moved model (Decoder::MoveTo replaces the
  // storage under the same tensor) computes from the new memory.
  {
    const std::vector<uint8_t> raw = testing::RandomGgufBlocks(io::GgmlType::kQ4_K, 8, 256, 5);
    const quant::GgufLinear layer(io::GgmlType::kQ4_K, BytesTensor(raw), 8, 256);
    const at::Tensor x = at::randn({2, 256});
    const at::Tensor before = layer.Forward(x);
    std::vector<at::Tensor> frozen;
    layer.AppendFrozen(&frozen);
    REQUIRE(frozen.size() == 1);
    frozen[0].set_data(frozen[0].clone());  // new storage; the old one is freed
    CHECK(at::equal(layer.Forward(x), before));
    // A DoRA adapter can wrap it (its norms come from the decoded weight).
    lora::LoraConfig dora;
    dora.use_dora = true;
    at::Generator gen = at::detail::createCPUGenerator(1);
    const lora::LoraLinear wrapped(std::make_shared<quant::GgufLinear>(layer), 4, 8, dora, at::kFloat, &gen);
    CHECK(wrapped.Forward(x).sizes() == before.sizes());
  }
  std::printf("quant: GgufLinear (Q4_K, Q5_0, Q6_K, Q8_0, F16; 1, 15 and 32 rows): float32 forward rel err %.2e, "
              "input gradient %.2e against float64 over gguf's dequantization (the forward beyond the int16 "
              "rounding's bound where the products round x: Q5_0, Q6_K); a row alone vs among 32: %.2e\n",
              worst_fwd, worst_bwd, worst_batch);
  // Refusals: blocks that do not hold the shape, columns that are not whole blocks.
  CHECK_THROWS_WITH(quant::GgufLinear(io::GgmlType::kQ8_0, at::zeros({33}, at::kByte), 1, 64),
                    Catch::Contains("33 bytes do not hold (1, 64) Q8_0 values"));
  CHECK_THROWS_WITH(quant::GgufLinear(io::GgmlType::kQ4_K, at::zeros({144}, at::kByte), 1, 250),
                    Catch::Contains("250 columns are not whole Q4_K blocks of 256"));
}

// Under autocast (train/autocast.h) a float32 input is multiplied in bfloat16, as if given in
// bfloat16, and the gradient flows back to float32.
TEST_CASE("quant: QuantizedLinear under autocast computes in bf16", "[quant]") {
  auto q = quant::Quantize4bit(at::randn({96, 128}) * 0.05, {quant::QuantType::kNf4, 64, true});
  REQUIRE(q.ok());
  const quant::QuantizedLinear layer(*q, at::Tensor());
  for (const int64_t rows : {int64_t{5}, int64_t{64}}) {
    INFO("rows " << rows);
    const at::Tensor x = at::randn({rows, 128}).requires_grad_(true);
    at::Tensor y;
    {
      train::AutocastGuard autocast(c10::DeviceType::CPU, at::kBFloat16);
      y = layer.Forward(x);
    }
    CHECK(y.scalar_type() == at::kBFloat16);
    const at::Tensor xb = x.detach().to(at::kBFloat16).requires_grad_(true);
    const at::Tensor yb = layer.Forward(xb);
    CHECK(at::equal(y.detach(), yb.detach()));
    const at::Tensor g = at::randn({rows, 96}).to(at::kBFloat16);
    y.backward(g);
    yb.backward(g);
    CHECK(x.grad().scalar_type() == at::kFloat);
    CHECK(at::equal(x.grad(), xb.grad().to(at::kFloat)));
  }
  CHECK_FALSE(at::autocast::is_autocast_enabled(c10::DeviceType::CPU));  // the guard restored it
}

// Where a GPU exists: the CUDA path (our dequantization kernel + cuBLASLt, or the fused kernel for
// small bf16 batches) against the CPU path on the same quantized weights: NF4 and FP4, with and
// without double quantization (the GPU dequantizes the nested scales itself), float32, bfloat16
// and float16. 2100 × 4096 needs several of the CUDA path's 16 MiB weight tiles (1,024 rows in
// float32, 2,048 in 16 bits) and 1000 × 4096 many of the fused kernel's tiles.
// Bounds, relative to the largest output: float32 1e-5 (sums of 4,096 products in another order);
// bfloat16 2e-2 and float16 2.5e-3, about 2.5 units in the last place of the largest value. The
// forward rounds each output to 16 bits once on both sides. The input gradient adds up tiles of
// output features, rounding to 16 bits after each (2 tiles of 2,100 rows on the GPU, up to 17
// on the CPU at small M), which by estimate stays under 1e-3 (float16) and 8e-3 (bfloat16).
TEST_CASE("quant: QuantizedLinear on CUDA equals the CPU path", "[quant][cuda]") {
  if (!at::hasCUDA()) {
    testing::Skip("no CUDA device: the CUDA QuantizedLinear was not run (it is compiled and linked)");
    return;
  }
  struct Shape { int64_t out, in; };
  const std::vector<c10::ScalarType> dtypes = {at::kFloat, at::kBFloat16, at::kHalf};
  std::map<c10::ScalarType, double> worst;  // max |gpu − cpu| / max |cpu|
  int cases = 0;
  for (const Shape shape : {Shape{64, 64}, Shape{300, 256}, Shape{1000, 4096}, Shape{2100, 4096}, Shape{5, 33}}) {
    for (const quant::QuantType type : {quant::QuantType::kNf4, quant::QuantType::kFp4}) {
      for (const bool nested : {false, true}) {
        for (const c10::ScalarType dtype : dtypes) {
          auto q = quant::Quantize4bit((at::randn({shape.out, shape.in}) * 0.05).to(dtype), {type, 64, nested});
          REQUIRE(q.ok());
          const quant::QuantizedLinear layer(*q);
          for (const int64_t m : {1, 8, 100}) {
            INFO("shape " << shape.out << "x" << shape.in << (type == quant::QuantType::kNf4 ? " NF4" : " FP4")
                          << (nested ? " double-quantized" : "") << " dtype " << c10::toString(dtype) << " M " << m);
            const at::Tensor x = at::randn({m, shape.in}).to(dtype);
            const at::Tensor cpu = quant::detail::MatmulNoGrad(layer, x).to(at::kFloat);
            const at::Tensor gpu = quant::detail::MatmulNoGrad(layer, x.cuda()).cpu().to(at::kFloat);
            const double tol = dtype == at::kFloat ? 1e-5 : dtype == at::kBFloat16 ? 2e-2 : 2.5e-3;
            const double rel = (gpu - cpu).abs().max().item<double>() / cpu.abs().max().item<double>();
            CHECK(rel <= tol);
            const at::Tensor g = at::randn({m, shape.out}).to(dtype);
            const at::Tensor cpu_g = quant::detail::MatmulTransposedNoGrad(layer, g).to(at::kFloat);
            const at::Tensor gpu_g = quant::detail::MatmulTransposedNoGrad(layer, g.cuda()).cpu().to(at::kFloat);
            const double rel_g = (gpu_g - cpu_g).abs().max().item<double>() / cpu_g.abs().max().item<double>();
            CHECK(rel_g <= tol);
            worst[dtype] = std::max({worst[dtype], rel, rel_g});
            ++cases;
          }
        }
      }
    }
  }
  std::printf("quant: QuantizedLinear CUDA vs CPU, forward and input gradient, %d cases (5 shapes, NF4/FP4, "
              "double quantization or not, M 1/8/100): worst max-abs error relative to the largest value "
              "%.2e (float32), %.2e (bfloat16), %.2e (float16)\n",
              cases, worst[at::kFloat], worst[at::kBFloat16], worst[at::kHalf]);
}

// GgufLinear with its blocks on the GPU (as Decoder::MoveTo leaves them): the fused products for
// fewer than kLargeRows rows, decoded tiles and cuBLAS above, and the input gradient, against
// float64 over the CPU's dequantization of the same blocks; DenseWeight bit for bit.
TEST_CASE("quant: GgufLinear on CUDA equals a dense linear over gguf's dequantization", "[quant][cuda]") {
  if (!at::hasCUDA()) {
    testing::Skip("no CUDA device: the CUDA GgufLinear was not run (it is compiled and linked)");
    return;
  }
  const at::NoTF32Guard no_tf32;  // float32 products in cuBLAS too, whatever the environment says
  struct Case { io::GgmlType type; int64_t out, in; };
  // Every type the device decodes; 1,100 × 4,096 Q8_0 takes two 16 MiB tiles at 16+ rows.
  const Case cases[] = {{io::GgmlType::kF16, 40, 96},    {io::GgmlType::kBF16, 33, 64},
                        {io::GgmlType::kQ8_0, 1100, 4096}, {io::GgmlType::kQ4_0, 70, 640},
                        {io::GgmlType::kQ4_1, 65, 320},    {io::GgmlType::kQ5_0, 70, 640},
                        {io::GgmlType::kQ5_1, 31, 160},    {io::GgmlType::kQ4_K, 96, 512},
                        {io::GgmlType::kQ5_K, 50, 768},    {io::GgmlType::kQ6_K, 33, 768}};
  double worst_fwd = 0, worst_bwd = 0;
  int checked = 0;
  for (const Case& c : cases) {
    const std::vector<uint8_t> raw = testing::RandomGgufBlocks(c.type, c.out, c.in, 11);
    const at::Tensor bias = at::randn({c.out});
    // A copy: moving the layer moves its own bias tensor, and the reference keeps this one.
    const quant::GgufLinear layer(c.type, BytesTensor(raw), c.out, c.in, bias.clone());
    const at::Tensor dense = Dequantized(c.type, raw, c.out, c.in);
    // Move the layer's tensors the way Decoder::MoveTo does: new storage under the same tensors.
    std::vector<at::Tensor> frozen;
    layer.AppendFrozen(&frozen);
    for (at::Tensor& t : frozen) t.set_data(t.cuda());
    REQUIRE(frozen[0].is_cuda());
    INFO(io::GgmlTypeName(c.type));
    const at::Tensor on_gpu = layer.DenseWeight(at::kFloat);
    CHECK(on_gpu.is_cuda());
    CHECK(at::equal(on_gpu.cpu().view(at::kInt), dense.view(at::kInt)));
    for (const int64_t m : {1, 3, 4, 5, 15, 16, 17, 40}) {
      for (const c10::ScalarType dtype : {at::kFloat, at::kBFloat16}) {
        INFO("rows " << m << " dtype " << c10::toString(dtype));
        const at::Tensor x = at::randn({m, c.in}).to(dtype);
        const at::Tensor x_gpu = x.cuda().requires_grad_(true);
        const at::Tensor y = layer.Forward(x_gpu);
        CHECK(y.is_cuda());
        CHECK(y.scalar_type() == dtype);
        const at::Tensor x_ref = x.to(at::kDouble).requires_grad_(true);
        const at::Tensor y_ref = at::linear(x_ref, dense.to(at::kDouble), bias.to(at::kDouble));
        const at::Tensor g = at::randn(y.sizes()).to(dtype);
        y.backward(g.cuda());
        y_ref.backward(g.to(at::kDouble));
        // float32 products (FMAs, warp sums or cuBLAS without TF32) against float64; bfloat16 adds
        // its rounding of the output and gradient.
        const double tol = dtype == at::kFloat ? 1e-5 : 1e-2;
        const double fwd = RelativeError(y, y_ref);
        const double bwd = RelativeError(x_gpu.grad(), x_ref.grad());
        CHECK(fwd <= tol);
        CHECK(bwd <= tol);
        if (dtype == at::kFloat) {
          worst_fwd = std::max(worst_fwd, fwd);
          worst_bwd = std::max(worst_bwd, bwd);
        }
        ++checked;
      }
    }
    // An input on another device than the blocks is refused by name.
    CHECK_THROWS_WITH(layer.Forward(at::randn({1, c.in})), Catch::Contains("the blocks on cuda"));
  }
  std::printf("quant: GgufLinear on CUDA (F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K; 1 to 40 rows), "
              "%d cases: float32 forward rel err %.2e, input gradient %.2e against float64 over gguf's "
              "dequantization; DenseWeight on the GPU bit for bit\n",
              checked, worst_fwd, worst_bwd);
}

// Quantize4bitShare on `world` threads standing in for processes (the sum is a barrier over
// them), each keeping the packed bytes between consecutive `edges`; `whole` makes every thread
// keep everything, thread 0 owning it (a tensor under the persistence threshold).
std::vector<quant::Quantized4> QuantizeShared(const at::Tensor& w, const quant::Quant4Options& options,
                                              const std::vector<int64_t>& edges, bool whole) {
  const int world = static_cast<int>(edges.size()) - 1;
  std::vector<quant::Quantized4> out(world);
  std::vector<at::Tensor> slots(world);
  std::barrier sync(world);
  std::mutex failures_mutex;
  std::vector<std::string> failures;
  std::vector<std::thread> threads;
  for (int r = 0; r < world; ++r) {
    threads.emplace_back([&, r] {
      quant::Quant4Share share;
      share.kept_begin = whole ? 0 : edges[r];
      share.kept_end = whole ? edges.back() : edges[r + 1];
      share.owned_begin = whole ? 0 : edges[r];
      share.owned_end = whole ? (r == 0 ? edges.back() : 0) : edges[r + 1];
      const at::Tensor flat = w.reshape({-1});
      const auto read = [&](int64_t begin, int64_t end) -> absl::StatusOr<at::Tensor> {
        return flat.narrow(0, begin, end - begin).clone();
      };
      const auto sum = [&](at::Tensor& values) -> absl::Status {
        slots[r] = values.clone();
        sync.arrive_and_wait();
        at::Tensor total = slots[0].clone();
        for (int k = 1; k < world; ++k) total += slots[k];
        sync.arrive_and_wait();
        values.copy_(total);
        return absl::OkStatus();
      };
      auto q = quant::Quantize4bitShare(w.sizes().vec(), w.scalar_type(), options, share, read, sum);
      if (!q.ok()) {
        std::lock_guard<std::mutex> lock(failures_mutex);
        failures.push_back(std::string(q.status().message()));
        return;
      }
      out[r] = *std::move(q);
    });
  }
  for (auto& t : threads) t.join();
  INFO((failures.empty() ? std::string() : failures.front()));
  REQUIRE(failures.empty());
  return out;
}

TEST_CASE("quant: Quantize4bitShare's kept bytes and state equal Quantize4bit's, at world 1-4", "[quant]") {
  std::mt19937 rng(7);
  int cases = 0;
  int64_t bytes_checked = 0;
  for (const auto& shape : std::vector<std::vector<int64_t>>{{7, 13}, {48, 100}, {64, 256}, {3, 4096 + 96}}) {
    for (const int64_t blocksize : {64, 256, 4096}) {
      for (const bool nested : {false, true}) {
        for (const auto type : {quant::QuantType::kNf4, quant::QuantType::kFp4}) {
          for (const auto dtype : {at::kFloat, at::kBFloat16}) {
            at::Tensor w = at::randn(shape).mul_(0.05).to(dtype);
            w.reshape({-1})[std::min<int64_t>(5, w.numel() - 1)] = 0.0;  // a zero and a NaN block
            if (w.numel() > 700) w.reshape({-1})[700] = std::numeric_limits<float>::quiet_NaN();
            const quant::Quant4Options options{type, blocksize, nested};
            auto full = quant::Quantize4bit(w, options);
            REQUIRE(full.ok());
            const int64_t bytes = full->packed.numel();
            for (int world = 1; world <= 4; ++world) {
              for (const int mode : {0, 1, 2}) {  // 64-byte edges, arbitrary edges, kept whole
                std::vector<int64_t> edges{0};
                for (int r = 1; r < world; ++r) {
                  int64_t edge = bytes * r / world;
                  if (mode == 0) edge = edge / 64 * 64;
                  if (mode == 1) edge = std::uniform_int_distribution<int64_t>(edges.back(), bytes)(rng);
                  edges.push_back(std::max(edges.back(), edge));
                }
                edges.push_back(bytes);
                const auto parts = QuantizeShared(w, options, edges, mode == 2);
                for (int r = 0; r < world; ++r) {
                  const quant::Quantized4& q = parts[r];
                  const int64_t begin = mode == 2 ? 0 : edges[r], end = mode == 2 ? bytes : edges[r + 1];
                  INFO("shape " << shape[0] << "x" << shape[1] << " blocksize " << blocksize << " nested " << nested
                                << " world " << world << " mode " << mode << " rank " << r);
                  REQUIRE(q.packed.sizes() == full->packed.sizes());
                  CHECK(std::memcmp(q.packed.data_ptr<uint8_t>() + begin, full->packed.data_ptr<uint8_t>() + begin,
                                    static_cast<size_t>(end - begin)) == 0);
                  CHECK(SameBytes(q.state.absmax, full->state.absmax));
                  CHECK(q.state.shape == full->state.shape);
                  CHECK(q.state.dtype == full->state.dtype);
                  CHECK(std::memcmp(&q.state.offset, &full->state.offset, sizeof(float)) == 0);
                  if (nested) CHECK(SameBytes(q.state.nested_absmax, full->state.nested_absmax));
                  bytes_checked += end - begin;
                }
                ++cases;
              }
            }
          }
        }
      }
    }
  }
  std::printf("quant: Quantize4bitShare vs Quantize4bit: %d cases (4 shapes, blocksizes 64/256/4096, double "
              "quantization on/off, NF4/FP4, f32/bf16, world 1-4, 64-byte/arbitrary/whole shares), %lld kept "
              "bytes and every state equal\n", cases, static_cast<long long>(bytes_checked));
}

TEST_CASE("quant: bad options are refused by name", "[quant]") {
  const at::Tensor w = at::randn({4, 64});
  quant::Quant4Options options;
  options.blocksize = 48;
  auto bad = quant::Quantize4bit(w, options);
  REQUIRE(!bad.ok());
  CHECK_THAT(std::string(bad.status().message()), Catch::Contains("blocksize: 48 is not one of"));
  auto ints = quant::Quantize4bit(at::ones({4, 64}, at::kLong));
  REQUIRE(!ints.ok());
  CHECK_THAT(std::string(ints.status().message()), Catch::Contains("float32, float16 or bfloat16"));
  // The dynamic map: 256 sorted codes from −0.99296874 to 1, with 0 in the middle.
  const at::Tensor map = quant::DynamicMap();
  REQUIRE(map.numel() == 256);
  CHECK(map[255].item<float>() == 1.0f);
  CHECK(map[127].item<float>() == 0.0f);
  CHECK(at::equal(map, std::get<0>(map.sort())));
}

}  // namespace
}  // namespace llmtrain
