// CUDA entry points of kernels/ (internal). Compiled only when nvcc is found. All pointers are
// device pointers on the current device, `stream` is a cudaStream_t, and every function returns
// an empty string on success, else the CUDA error text (or why the arguments were refused).
// Nothing is synchronized. The front ends (rms_norm.cpp, rope.cpp, dequant4.cpp) check shapes,
// dtypes and devices before calling these.
#pragma once

#include <cstdint>
#include <string>

namespace llmtrain::io {
enum class GgmlType : uint32_t;  // llmtrain/io/gguf.h
}  // namespace llmtrain::io

namespace llmtrain::kernels::detail {

/// Element types of the `dtype` arguments.
enum CudaDtype : int { kCudaF32 = 0, kCudaBf16 = 1, kCudaF16 = 2 };

/// y(rows, C) = RMSNorm of x(rows, C) with weight w(C) (w_dtype), both contiguous; one_plus:
/// y = cast(x̂ · (1 + w)) in float32, else y = cast(float(w) · float(cast(x̂))). x and y hold `dtype`.
std::string RmsNormCuda(const void* x, const void* w, void* y, int64_t rows, int64_t C, double eps,
                        bool one_plus, int dtype, int w_dtype, void* stream);

/// y = x · cos + rotate_half(x) · sin for x (B, H, T, D) and cos/sin (B, 1, T, D), contiguous, all
/// of `dtype`; each product and the sum rounded to `dtype`.
std::string RopeCuda(const void* x, const void* cos, const void* sin, void* y, int64_t B, int64_t H,
                     int64_t T, int64_t D, int dtype, void* stream);

/// out[0, count) = code16[nibble(e)] × scales[e / blocksize] for e in [begin, begin + count) of a
/// 4-bit tensor in bitsandbytes' layout (element 2j is byte j's high nibble), the float32 product
/// rounded to nearest even into `out_dtype`. `scales` is indexed by the absolute block.
std::string Dequantize4bitCuda(const uint8_t* packed, const float* scales, const float* code16,
                               int64_t begin, int64_t count, int64_t blocksize, int out_dtype, void* out,
                               void* stream);

/// Rows of x one launch of GgufMatvecCuda multiplies together (larger M is done in chunks).
constexpr int kGgufMatvecMaxRows = 16;

/// y(M, out) = x(M, in) · Wᵀ for W (out, in) stored as GGUF blocks of `type` (row after row, each
/// row in / block_elems blocks), x and y float32 and contiguous. Every weight is gguf's
/// dequantization bit for bit (io/gguf_quants_device.cuh); the products are float32 multiply-adds
/// summed per warp. For decoding (small M): each output row reads its blocks once per 16 rows of x.
/// Types: those io::detail::CanDequantizeCuda accepts.
std::string GgufMatvecCuda(io::GgmlType type, const uint8_t* blocks, int64_t out, int64_t in, const float* x,
                           int64_t M, float* y, void* stream);

/// Free and total bytes of CUDA device `device` (cudaMemGetInfo; creates its context).
std::string DeviceMemoryCuda(int device, int64_t* free_bytes, int64_t* total_bytes);

}  // namespace llmtrain::kernels::detail
