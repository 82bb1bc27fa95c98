// CUDA dequantization of GGUF blocks (internal). Compiled only when nvcc is found; the CPU code
// in gguf_quants.cpp is its oracle and the tests compare the two bit for bit where a GPU exists.
#pragma once

#include <cstdint>
#include <string>

#include "llmtrain/io/gguf.h"

namespace llmtrain::io::detail {

/// True for the types the CUDA path handles: F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K,
/// Q6_K (gguf_quants_device.cuh).
bool CanDequantizeCuda(GgmlType type);

/// Dequantizes `n_blocks` blocks from device memory `src` into device memory `dst` (float32) on
/// `stream` (a cudaStream_t). Returns an empty string on success, else the CUDA error text.
std::string DequantizeCuda(GgmlType type, const uint8_t* src, float* dst, int64_t n_blocks,
                           void* stream);

}  // namespace llmtrain::io::detail
