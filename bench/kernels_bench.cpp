// kernels_bench: each kernel of kernels/ beside its reference in one run, alternating round by
// round, medians compared:
//   rms_norm   kernels::RmsNorm          vs the ATen-op composite (transformers' order of ops)
//   rope       kernels::ApplyRope        vs the ATen-op composite (apply_rotary_pos_emb)
//   dequant4   kernels::Dequantize4bit   vs ATen ops: code.index_select(nibbles) × scales
//   q4_k …     kernels::BlockMatmul of one row by a (rows, hidden) GGUF weight in its blocks vs
//              at::mm by the same weight dequantized to float32 (what the float32 path reads)
// On the CPU, RmsNorm and RoPE run the composite themselves (it is the oracle, and what
// transformers computes bit for bit), so their ratio shows the front end's cost only; the fused
// kernels pay on CUDA, where this bench runs them too when a device exists. Prints both sides'
// threads.
//
//   build/bin/kernels_bench [--rows=4096] [--hidden=2048] [--rounds=15]
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/grad_mode.h>

#include <cstdio>
#include <cstring>
#include <string>

#include "absl/strings/ascii.h"
#include "llmtrain/kernels/block_matmul.h"
#include "llmtrain/kernels/dequant4.h"
#include "llmtrain/kernels/rms_norm.h"
#include "llmtrain/kernels/rope.h"
#include "llmtrain/quant/quant4.h"
#include "reference_process.h"
#include "testing/gguf_blocks.h"  // tests/testing: random GGUF blocks

namespace {

using namespace llmtrain;  // NOLINT: a program

void Line(const char* name, const std::string& device, std::pair<double, double> ref_ours, double bytes) {
  const auto [ref, ours] = ref_ours;
  std::printf("%-9s %-5s reference %8.3f ms  llmtrain %8.3f ms  ratio %.2fx  (llmtrain %.1f GB/s)\n", name,
              device.c_str(), ref * 1e3, ours * 1e3, ref / ours, bytes / ours / 1e9);
}

// Syncs a CUDA device so a timing covers the kernels it launched.
void Sync(const at::Tensor& t) {
  if (t.is_cuda()) t.cpu();
}

}  // namespace

int main(int argc, char** argv) {
  int64_t rows = 4096, hidden = 2048, rounds = 15;
  for (int i = 1; i < argc; ++i) {
    if (std::sscanf(argv[i], "--rows=%ld", &rows) == 1 || std::sscanf(argv[i], "--hidden=%ld", &hidden) == 1 ||
        std::sscanf(argv[i], "--rounds=%ld", &rounds) == 1) {
      continue;
    }
    std::fprintf(stderr, "usage: %s [--rows=4096] [--hidden=2048] [--rounds=15]\n", argv[0]);
    return 2;
  }
  at::NoGradGuard no_grad;
  std::printf("kernels_bench: %ld rows × %ld, bf16 activations; medians of %ld alternated rounds\n", rows, hidden, rounds);
  std::printf("threads: ours %d, reference %d (both ATen's pool, at::get_num_threads())\n", at::get_num_threads(),
              at::get_num_threads());
  std::vector<c10::Device> devices = {c10::Device(c10::kCPU)};
  if (at::hasCUDA()) devices.emplace_back(c10::kCUDA, 0);
  for (const c10::Device device : devices) {
    const std::string where = device.is_cuda() ? "cuda" : "cpu";
    const auto opts = at::TensorOptions().dtype(at::kBFloat16).device(device);
    at::manual_seed(0);
    // RMSNorm, Gemma style, (rows, hidden).
    const at::Tensor x = at::randn({rows, hidden}, opts);
    const at::Tensor w = at::randn({hidden}, opts) * 0.1;
    kernels::RmsNormOptions norm;
    norm.scale = kernels::NormScale::kOnePlusWeight;
    Line("rms_norm", where,
         bench::TimePair(rounds, [&] { Sync(kernels::detail::RmsNormComposite(x, w, norm)); },
                         [&] { Sync(kernels::RmsNorm(x, w, norm)); }),
         2.0 * x.nbytes());
    // RoPE over (B=1, H, T=rows/8·…, D=128): the same element count as x.
    const int64_t D = 128, H = hidden / D, T = rows;
    const at::Tensor q = at::randn({1, H, T, D}, opts);
    const at::Tensor positions = at::arange(T, at::TensorOptions().dtype(at::kLong).device(device)).view({1, T});
    const kernels::RopeTables tables =
        kernels::MakeRopeTables(positions, kernels::RopeInverseFrequencies(D, 10000.0), at::kBFloat16);
    Line("rope", where,
         bench::TimePair(rounds, [&] { Sync(kernels::detail::ApplyRopeComposite(q, tables.cos, tables.sin)); },
                         [&] { Sync(kernels::ApplyRope(q, tables.cos, tables.sin)); }),
         2.0 * q.nbytes());
    // NF4 dequantization of a (hidden, hidden) weight to bf16.
    quant::Quant4Options q4;
    q4.double_quant = true;
    auto weight = quant::Quantize4bit(at::randn({hidden, hidden}), q4);
    if (!weight.ok()) {
      std::fprintf(stderr, "%s\n", std::string(weight.status().message()).c_str());
      return 1;
    }
    const at::Tensor packed = weight->packed.to(device).view({-1});
    const at::Tensor scales = quant::BlockScales(weight->state).to(device);
    const at::Tensor code = weight->state.code.to(at::kFloat).to(device);
    at::Tensor out = at::empty({hidden * hidden}, opts);
    const auto reference = [&] {
      // nibbles in element order (high nibble first), then code × block scale in float32.
      const at::Tensor nibbles = at::stack({packed.bitwise_right_shift(4), packed.bitwise_and(15)}, 1).view({-1});
      const at::Tensor values = code.index_select(0, nibbles.to(at::kLong)).view({-1, q4.blocksize}) *
                                scales.view({-1, 1});
      Sync(values.to(at::kBFloat16));
    };
    Line("dequant4", where,
         bench::TimePair(rounds, reference, [&] {
           kernels::Dequantize4bit(packed, scales, code, q4.blocksize, 0, out);
           Sync(out);
         }),
         static_cast<double>(out.nbytes()));
  }
  // Decoding's product: one input row by a GGUF weight, from its blocks vs from float32.
  for (const io::GgmlType type : {io::GgmlType::kQ4_K, io::GgmlType::kQ5_0, io::GgmlType::kQ6_K, io::GgmlType::kQ8_0}) {
    const auto traits = *io::GetGgmlTypeTraits(static_cast<uint32_t>(type));
    // Random blocks with small finite scales (random scale bytes would give subnormals, whose
    // products take the CPU's slow path, and infinities).
    const std::vector<uint8_t> raw = testing::RandomGgufBlocks(type, rows, hidden, 1);
    at::Tensor blocks = at::empty({static_cast<int64_t>(raw.size())}, at::kByte);
    std::memcpy(blocks.data_ptr(), raw.data(), raw.size());
    const kernels::GgufRowDecoder w(type, blocks.data_ptr<uint8_t>(), rows, hidden);
    at::Tensor dense = at::empty({rows, hidden});
    kernels::DecodeRows(w, 0, rows, dense.data_ptr<float>());
    const at::Tensor x = at::randn({1, hidden});
    at::Tensor y = at::empty({1, rows});
    const std::string name(absl::AsciiStrToLower(traits.name));
    Line(name.c_str(), "cpu",
         bench::TimePair(rounds, [&] { at::mm_out(y, x, dense.t()); },
                         [&] { kernels::BlockMatmul(w, x.data_ptr<float>(), 1, y.data_ptr<float>()); }),
         static_cast<double>(blocks.nbytes()));
  }
  if (!at::hasCUDA()) std::printf("no CUDA device: the fused CUDA kernels were not timed\n");
  return 0;
}
