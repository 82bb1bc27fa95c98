// Device helpers shared by the CUDA files of kernels/ and quant/ (internal).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>
#include <string>

namespace llmtrain::kernels::cuda {

inline std::string LastError() {
  const cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? "" : cudaGetErrorString(err);
}

// Enough blocks to fill any GPU many times over; grid-stride loops take the rest.
inline unsigned GridFor(int64_t work_items, int threads) {
  const int64_t blocks = (work_items + threads - 1) / threads;
  return static_cast<unsigned>(blocks < (int64_t{1} << 20) ? blocks : (int64_t{1} << 20));
}

// log2(v) when v is a power of two, else -1: block indices then take a shift instead of a 64-bit
// division, which is a called subroutine on the GPU (every bitsandbytes blocksize is a power of
// two; the others get their own kernel instances, so the common ones carry no division code).
inline int Log2Exact(int64_t v) {
  if (v <= 0 || (v & (v - 1)) != 0) return -1;
  int s = 0;
  while ((int64_t{1} << s) != v) ++s;
  return s;
}

template <bool kPow2>
__device__ __forceinline__ int64_t BlockOf(int64_t e, int64_t blocksize, int shift) {
  if constexpr (kPow2) {
    return e >> shift;
  } else {
    return e / blocksize;
  }
}

// float32 → T, rounding to nearest even (what ATen's casts do).
template <typename T>
__device__ __forceinline__ T FromFloat(float v);
template <>
__device__ __forceinline__ float FromFloat<float>(float v) { return v; }
template <>
__device__ __forceinline__ __nv_bfloat16 FromFloat<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <>
__device__ __forceinline__ __half FromFloat<__half>(float v) { return __float2half_rn(v); }

template <typename T>
__device__ __forceinline__ float ToFloat(T v);
template <>
__device__ __forceinline__ float ToFloat<float>(float v) { return v; }
template <>
__device__ __forceinline__ float ToFloat<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }
template <>
__device__ __forceinline__ float ToFloat<__half>(__half v) { return __half2float(v); }

// Two values rounded to T and packed into one 32-bit word (the first at the lower address).
template <typename T>
__device__ __forceinline__ uint32_t Pack2(float lo, float hi);
template <>
__device__ __forceinline__ uint32_t Pack2<__nv_bfloat16>(float lo, float hi) {
  const __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
  uint32_t w;
  memcpy(&w, &h, 4);
  return w;
}
template <>
__device__ __forceinline__ uint32_t Pack2<__half>(float lo, float hi) {
  const __half2 h = __floats2half2_rn(lo, hi);
  uint32_t w;
  memcpy(&w, &h, 4);
  return w;
}

// The 16 values of 8 packed 4-bit bytes (byte j's high nibble is element 2j) times one block
// scale, each product rounded on its own. `code` is the 16-entry table in shared memory: 16 floats
// in 16 distinct banks, so a warp's lookups never conflict.
__device__ __forceinline__ void Dequant16(uint2 bytes, float scale, const float* code, float v[16]) {
#pragma unroll
  for (int b = 0; b < 8; ++b) {
    const uint32_t byte = ((b < 4 ? bytes.x : bytes.y) >> (8 * (b % 4))) & 0xFFu;
    v[2 * b] = __fmul_rn(code[byte >> 4], scale);
    v[2 * b + 1] = __fmul_rn(code[byte & 0x0Fu], scale);
  }
}

}  // namespace llmtrain::kernels::cuda
