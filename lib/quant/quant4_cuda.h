// CUDA kernels of the 4-bit (NF4/FP4) weights (internal). Compiled only when nvcc is found; the
// CPU code in quant4.cpp is the oracle: dequantization and the double-quantized block scales
// agree with it bit for bit (same float32 roundings, no FMA contraction), except for NaN payloads,
// which the GPU's conversions make canonical. All pointers are device pointers on the current
// device, `stream` is a cudaStream_t, and every function returns an empty string on success, else
// the CUDA or cuBLASLt error text (or why the arguments were refused). Nothing is synchronized:
// an error of a kernel that already started shows up later, as with any CUDA launch.
#pragma once

#include <cstdint>
#include <string>

namespace llmtrain::quant::detail {

/// Element types of the CUDA entry points' `dtype` / `out_dtype` arguments.
enum CudaDtype : int { kCudaF32 = 0, kCudaBf16 = 1, kCudaF16 = 2 };

/// True when the CUDA runtime sees at least one device (false without a driver or GPU).
bool CudaDeviceAvailable();

/// The float32 block scales of double quantization, as BlockScales computes them:
///   scales_out[b] = (nested_code[absmax_codes[b]] × nested_absmax[b / nested_blocksize]) + offset
/// with both operations rounded separately in float32. absmax_codes: uint8 (n_blocks);
/// nested_code: float32 (256); nested_absmax: float32 (ceil(n_blocks / nested_blocksize)).
std::string DequantizeScalesCuda(const uint8_t* absmax_codes, const float* nested_code,
                                 const float* nested_absmax, float offset, int64_t n_blocks,
                                 int64_t nested_blocksize, float* scales_out, void* stream);

/// Row-major GEMM on cuBLASLt with float32 accumulation; x, w and y all hold `dtype` (a
/// CudaDtype), alpha is 1:
///   w_transposed = true:  y(m, n) = x(m, k) · w(n, k)ᵀ + beta · y   (forward:  Y = X · Wᵀ)
///   w_transposed = false: y(m, n) = x(m, k) · w(k, n)   + beta · y  (backward: dX = dY · W, with
///                          m = batch rows, n = in features, k = out features)
/// y is only read when beta != 0. The cuBLASLt handle is created once per device, the workspace
/// once per (device, stream) (GEMMs on different streams may overlap, so they cannot share one),
/// and the heuristic's algorithm once per shape, dtype and pointer alignment; all of them live
/// until the process exits. The first call on a device or stream allocates with cudaMalloc, so it
/// must not be inside a CUDA graph capture. k == 0 gives y = beta · y.
std::string GemmBf16Cuda(const void* x, const void* w, void* y, int64_t m, int64_t n, int64_t k,
                         bool w_transposed, int dtype, float beta, void* stream);

/// y(M, N) bfloat16 = x(M, K) bfloat16 · W(N, K)ᵀ, with W the 4-bit weight (out = N, in = K) of
/// `packed` / `scales` / `code16` (as in kernels::detail::Dequantize4bitCuda, lib/kernels/kernels_cuda.h), dequantized tile by tile in shared
/// memory and rounded to bfloat16 before the tensor-core products (so W matches
/// kernels::detail::Dequantize4bitCuda(…, kCudaBf16, …)); float32 accumulation. Meant for small M (decode and short
/// prompts, M up to a few dozen rows), where streaming the 4-bit W once beats dequantizing it to
/// memory; any M is correct. Needs compute capability 8.0+, K % blocksize == 0 and
/// blocksize % 16 == 0 (so K is even and a multiple of 16; every bitsandbytes blocksize
/// qualifies), M, N, K < 2^31, x 16-byte and packed 8-byte aligned; otherwise it returns an error
/// without launching and the caller falls back to the dequantization kernel + GemmBf16Cuda. The sum
/// order differs from cuBLAS, so results agree to rounding, not bit for bit.
std::string FusedNf4GemmCuda(const void* x, int64_t M, int64_t K, const uint8_t* packed,
                             const float* scales, const float* code16, int64_t N, int64_t blocksize,
                             void* y, void* stream);

}  // namespace llmtrain::quant::detail
