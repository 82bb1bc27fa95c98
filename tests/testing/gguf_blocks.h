// Random GGUF blocks for kernel and layer tests (tests only).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <vector>

#include "llmtrain/io/gguf.h"

namespace llmtrain::testing {

// Random blocks of `type` whose float16 scale fields hold small finite values (random bytes there
// would be inf or NaN): (rows, cols) values.
inline std::vector<uint8_t> RandomGgufBlocks(io::GgmlType type, int64_t rows, int64_t cols, uint64_t seed) {
  const auto traits = *io::GetGgmlTypeTraits(static_cast<uint32_t>(type));
  const int64_t n_blocks = rows * cols / traits.block_elems;
  at::Generator gen = at::detail::createCPUGenerator(seed);
  const at::Tensor bytes = at::randint(0, 256, {n_blocks * traits.block_bytes}, gen, at::kByte);
  std::vector<uint8_t> out(bytes.data_ptr<uint8_t>(), bytes.data_ptr<uint8_t>() + bytes.numel());
  // Two scales per block in [0.001, 0.021) (F16/BF16 values: [-0.009, 0.011)), as 16-bit floats.
  at::Tensor scales = at::rand({n_blocks, 2}, gen) * 0.02 + 0.001;
  if (type == io::GgmlType::kF16 || type == io::GgmlType::kBF16) scales = scales - 0.01;
  const at::Tensor halves = scales.to(type == io::GgmlType::kBF16 ? at::kBFloat16 : at::kHalf).contiguous();
  const auto* h = static_cast<const uint8_t*>(halves.data_ptr());
  int first = 0, second = -1;  // byte offsets of the scale fields in a block
  switch (type) {
    case io::GgmlType::kQ8_0: case io::GgmlType::kQ4_0: case io::GgmlType::kQ5_0: case io::GgmlType::kF16:
    case io::GgmlType::kBF16: break;
    case io::GgmlType::kQ4_1: case io::GgmlType::kQ5_1: case io::GgmlType::kQ4_K: case io::GgmlType::kQ5_K:
      second = 2;
      break;
    case io::GgmlType::kQ6_K: first = 208; break;
    default: throw std::invalid_argument("RandomGgufBlocks: no scale layout for this type");
  }
  for (int64_t b = 0; b < n_blocks; ++b) {
    uint8_t* block = out.data() + b * traits.block_bytes;
    std::memcpy(block + first, h + 4 * b, 2);
    if (second >= 0) std::memcpy(block + second, h + 4 * b + 2, 2);
  }
  return out;
}

}  // namespace llmtrain::testing
