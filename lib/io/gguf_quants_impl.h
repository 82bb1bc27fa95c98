// Shared between the CPU and CUDA dequantization (internal).
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "llmtrain/io/gguf.h"

namespace llmtrain::io::detail {

/// K-quant 6-bit scales and mins of 8 sub-blocks, packed in 12 bytes (docs/formats.md §2.5).
void UnpackKScales(const uint8_t* packed, uint8_t* scales, uint8_t* mins);

/// Dequantize(), optionally without the hand-written x86 intrinsics paths (Q4_K, Q6_K), so tests
/// can check those against the plain C++ path bit for bit.
absl::Status DequantizeWith(GgmlType type, absl::Span<const uint8_t> src, absl::Span<float> dst,
                            bool allow_intrinsics);

}  // namespace llmtrain::io::detail
