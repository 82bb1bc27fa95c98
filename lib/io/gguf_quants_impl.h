// Shared between the CPU and CUDA dequantization (internal).
#pragma once

#include <cstdint>

namespace llmtrain::io::detail {

/// K-quant 6-bit scales and mins of 8 sub-blocks, packed in 12 bytes (formats.md §2.5).
void UnpackKScales(const uint8_t* packed, uint8_t* scales, uint8_t* mins);

}  // namespace llmtrain::io::detail
