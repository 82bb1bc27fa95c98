// CUDA dequantization of GGUF blocks: one thread block per quant block, one thread per output.
// Products and sums use the _rn intrinsics so nvcc cannot fuse them into FMAs; the results are
// then bit-identical to the CPU oracle (gguf_quants.cpp) and to gguf-py.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "io/gguf_quants_cuda.h"

namespace llmtrain::io::detail {
namespace {

__device__ __forceinline__ float Half(const uint8_t* p) {
  const unsigned short bits = static_cast<unsigned short>(p[0] | (p[1] << 8));
  return __half2float(__ushort_as_half(bits));
}

__device__ __forceinline__ void KScale(const uint8_t* s, int j, int* sc, int* mn) {
  if (j < 4) {
    *sc = s[j] & 63;
    *mn = s[j + 4] & 63;
  } else {
    *sc = (s[j + 4] & 0x0f) | ((s[j - 4] >> 6) << 4);
    *mn = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
  }
}

// Q8_0: 32 threads per block.
__global__ void DequantQ8_0(const uint8_t* __restrict__ src, float* __restrict__ dst) {
  const uint8_t* b = src + blockIdx.x * 34ull;
  const int j = threadIdx.x;
  dst[blockIdx.x * 32ull + j] = __fmul_rn(static_cast<float>(static_cast<int8_t>(b[2 + j])), Half(b));
}

// Q4_0: 32 threads per block.
__global__ void DequantQ4_0(const uint8_t* __restrict__ src, float* __restrict__ dst) {
  const uint8_t* b = src + blockIdx.x * 18ull;
  const int j = threadIdx.x;
  const int q = j < 16 ? (b[2 + j] & 0x0f) : (b[2 + j - 16] >> 4);
  dst[blockIdx.x * 32ull + j] = __fmul_rn(Half(b), static_cast<float>(q - 8));
}

// Q4_K and Q5_K: 256 threads per block; element e is sub-block e / 32.
template <bool kFiveBit>
__global__ void DequantQK(const uint8_t* __restrict__ src, float* __restrict__ dst) {
  constexpr int kBlockBytes = kFiveBit ? 176 : 144;
  const uint8_t* b = src + blockIdx.x * static_cast<unsigned long long>(kBlockBytes);
  const int e = threadIdx.x;
  const int c = e / 64, l = e % 32, high = (e / 32) % 2, sub = 2 * c + high;
  int sc, mn;
  KScale(b + 4, sub, &sc, &mn);
  const uint8_t* qs = b + (kFiveBit ? 48 : 16);
  int q = high ? (qs[32 * c + l] >> 4) : (qs[32 * c + l] & 0x0f);
  if (kFiveBit) q |= ((b[16 + l] >> sub) & 1) << 4;
  const float d = __fmul_rn(Half(b), static_cast<float>(sc));
  const float m = __fmul_rn(Half(b + 2), static_cast<float>(mn));
  dst[blockIdx.x * 256ull + e] = __fsub_rn(__fmul_rn(d, static_cast<float>(q)), m);
}

// Q6_K: 256 threads per block.
__global__ void DequantQ6_K(const uint8_t* __restrict__ src, float* __restrict__ dst) {
  const uint8_t* b = src + blockIdx.x * 210ull;
  const int e = threadIdx.x;
  const int h = e / 128, r = e % 128, quarter = r / 32, l = r % 32;
  const uint8_t* L = b + 64 * h;
  const uint8_t* H = b + 128 + 32 * h;
  const int8_t* S = reinterpret_cast<const int8_t*>(b + 192) + 8 * h;
  const int lo = (quarter % 2 == 0) ? L[l] : L[l + 32];
  const int nib = quarter < 2 ? (lo & 0x0f) : (lo >> 4);
  const int q = (nib | (((H[l] >> (2 * quarter)) & 3) << 4)) - 32;
  const float d = __fmul_rn(Half(b + 208), static_cast<float>(S[l / 16 + 2 * quarter]));
  dst[blockIdx.x * 256ull + e] = __fmul_rn(d, static_cast<float>(q));
}

}  // namespace

bool CanDequantizeCuda(GgmlType type) {
  return type == GgmlType::kQ8_0 || type == GgmlType::kQ4_0 || type == GgmlType::kQ4_K ||
         type == GgmlType::kQ5_K || type == GgmlType::kQ6_K;
}

std::string DequantizeCuda(GgmlType type, const uint8_t* src, float* dst, int64_t n_blocks,
                           void* stream_ptr) {
  if (n_blocks <= 0) return "";
  if (n_blocks > 0x7fffffff) return "too many blocks for one launch";
  const auto stream = static_cast<cudaStream_t>(stream_ptr);
  const dim3 grid(static_cast<unsigned>(n_blocks));
  switch (type) {
    case GgmlType::kQ8_0: DequantQ8_0<<<grid, 32, 0, stream>>>(src, dst); break;
    case GgmlType::kQ4_0: DequantQ4_0<<<grid, 32, 0, stream>>>(src, dst); break;
    case GgmlType::kQ4_K: DequantQK<false><<<grid, 256, 0, stream>>>(src, dst); break;
    case GgmlType::kQ5_K: DequantQK<true><<<grid, 256, 0, stream>>>(src, dst); break;
    case GgmlType::kQ6_K: DequantQ6_K<<<grid, 256, 0, stream>>>(src, dst); break;
    default: return "type not supported by the CUDA path";
  }
  const cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? "" : cudaGetErrorString(err);
}

}  // namespace llmtrain::io::detail
