// 4-bit (NF4/FP4) dequantization in bitsandbytes' layout: element e of the flattened weight is
// byte e / 2 of `packed` (the high nibble when e is even), and its value is
//   code[nibble] × scales[e / blocksize]
// as one float32 product, rounded to the output dtype (round to nearest even), optionally through
// a narrower dtype first (what bitsandbytes' dequantize_4bit does when the weight's dtype is
// narrower than the result's). quant/ builds the block scales (double quantization included) and
// the code tables; this is the hot loop its QuantizedLinear and Dequantize4bit run.
//
//   at::Tensor out = at::empty({rows, in}, at::kBFloat16);
//   kernels::Dequantize4bit(packed, scales, code, /*blocksize=*/64, /*begin=*/r0 * in, out);
#pragma once

#include <cstdint>

#include <ATen/core/Tensor.h>

namespace llmtrain::kernels {

/// Fills `out` (count = out.numel() elements, contiguous, float32/bfloat16/float16) with elements
/// [begin, begin + count) of the 4-bit tensor. packed: uint8 with at least (begin + count + 1) / 2
/// bytes; scales: float32, one per block, indexed by the absolute block e / blocksize; code:
/// float32 (16). `round_through` (float32 by default, i.e. no extra rounding) is bfloat16 or
/// float16 to round each value there before out's dtype. All on the CPU (AVX-512/AVX2 paths,
/// multithreaded over rows of `in`… elements) or all on one CUDA device (the CUDA kernel; equal to
/// the CPU path: same single float32 product and rounding). Throws c10::Error on bad sizes, dtypes
/// or devices.
void Dequantize4bit(const at::Tensor& packed, const at::Tensor& scales, const at::Tensor& code, int64_t blocksize,
                    int64_t begin, at::Tensor& out, c10::ScalarType round_through = c10::kFloat);

namespace detail {
/// The CPU loop on raw memory, single-threaded (QuantizedLinear calls it per tile inside its own
/// parallel loops): elements [begin, begin + count) into `out`, rounded to `state_dtype` first
/// when that is narrower than float32, then stored as `out_dtype`. `scales` is indexed by the
/// absolute block. LLMTRAIN_NO_AVX512=1 forces the AVX2 path (tests run both).
void Dequantize4bitCpu(const uint8_t* packed, const float* scales, const float* code, int64_t blocksize,
                       int64_t begin, int64_t count, c10::ScalarType state_dtype, c10::ScalarType out_dtype,
                       void* out);
}  // namespace detail

}  // namespace llmtrain::kernels
