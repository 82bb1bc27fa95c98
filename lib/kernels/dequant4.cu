// 4-bit dequantization on CUDA (kernels/dequant4.h): equal to the CPU loop (dequant4_cpu.cpp),
// the same single float32 product per element and round-to-nearest-even conversion, except for
// NaN payloads, which the GPU's conversions make canonical.
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda_common.cuh"
#include "kernels/kernels_cuda.h"

namespace llmtrain::kernels::detail {
namespace {

using cuda::BlockOf;
using cuda::Dequant16;
using cuda::FromFloat;
using cuda::GridFor;
using cuda::Log2Exact;
using cuda::Pack2;

// ---------------------------------------------------------------------------------------------
// 4-bit dequantization.

// One element, any alignment: the generic path and the ragged tail of the vector path.
template <typename T, bool kPow2>
__device__ __forceinline__ void DequantOne(const uint8_t* __restrict__ packed, const float* __restrict__ scales,
                                           const float* code, int64_t e, int64_t blocksize, int shift,
                                           T* __restrict__ out) {
  const uint8_t byte = __ldg(packed + (e >> 1));
  const uint32_t nibble = (e & 1) ? (byte & 0x0Fu) : (byte >> 4);
  *out = FromFloat<T>(__fmul_rn(code[nibble], __ldg(scales + BlockOf<kPow2>(e, blocksize, shift))));
}

// Vector path, for elem_begin % 16 == 0 and blocksize % 16 == 0: each thread takes a chunk of 16
// elements, which then lie in one scale block, with one 8-byte load and 32 (16-bit) or 64
// (float32) bytes of 16-byte stores. The memory traffic is almost all stores (4 or 8 bytes out
// per byte in), so they are the ones made wide. A last partial chunk goes element by element.
template <typename T, bool kPow2>
__global__ void __launch_bounds__(256) Dequant4bitVecKernel(const uint8_t* __restrict__ packed,
                                                            const float* __restrict__ scales,
                                                            const float* __restrict__ code16, int64_t elem_begin,
                                                            int64_t elem_count, int64_t blocksize, int shift,
                                                            T* __restrict__ out) {
  __shared__ float code[16];
  if (threadIdx.x < 16) code[threadIdx.x] = code16[threadIdx.x];
  __syncthreads();
  const int64_t n_chunks = (elem_count + 15) / 16;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; c < n_chunks; c += stride) {
    const int64_t i0 = c * 16, e0 = elem_begin + i0;
    if (i0 + 16 > elem_count) {
      for (int64_t i = i0; i < elem_count; ++i) {
        DequantOne<T, kPow2>(packed, scales, code, elem_begin + i, blocksize, shift, out + i);
      }
      continue;
    }
    const uint2 bytes = __ldg(reinterpret_cast<const uint2*>(packed + (e0 >> 1)));
    const float scale = __ldg(scales + BlockOf<kPow2>(e0, blocksize, shift));
    float v[16];
    Dequant16(bytes, scale, code, v);
    if constexpr (sizeof(T) == 4) {
      float4* dst = reinterpret_cast<float4*>(out + i0);
#pragma unroll
      for (int q = 0; q < 4; ++q) dst[q] = make_float4(v[4 * q], v[4 * q + 1], v[4 * q + 2], v[4 * q + 3]);
    } else {
      uint4* dst = reinterpret_cast<uint4*>(out + i0);
#pragma unroll
      for (int q = 0; q < 2; ++q) {
        dst[q] = make_uint4(Pack2<T>(v[8 * q], v[8 * q + 1]), Pack2<T>(v[8 * q + 2], v[8 * q + 3]),
                            Pack2<T>(v[8 * q + 4], v[8 * q + 5]), Pack2<T>(v[8 * q + 6], v[8 * q + 7]));
      }
    }
  }
}

template <typename T, bool kPow2>
__global__ void __launch_bounds__(256) Dequant4bitAnyKernel(const uint8_t* __restrict__ packed,
                                                            const float* __restrict__ scales,
                                                            const float* __restrict__ code16, int64_t elem_begin,
                                                            int64_t elem_count, int64_t blocksize, int shift,
                                                            T* __restrict__ out) {
  __shared__ float code[16];
  if (threadIdx.x < 16) code[threadIdx.x] = code16[threadIdx.x];
  __syncthreads();
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < elem_count; i += stride) {
    DequantOne<T, kPow2>(packed, scales, code, elem_begin + i, blocksize, shift, out + i);
  }
}

template <typename T, bool kPow2>
void LaunchDequant4bit(const uint8_t* packed, const float* scales, const float* code16, int64_t elem_begin,
                       int64_t elem_count, int64_t blocksize, int shift, void* out, cudaStream_t stream) {
  const bool vec = elem_begin % 16 == 0 && blocksize % 16 == 0 &&
                   reinterpret_cast<uintptr_t>(packed) % 8 == 0 && reinterpret_cast<uintptr_t>(out) % 16 == 0;
  T* o = static_cast<T*>(out);
  if (vec) {
    Dequant4bitVecKernel<T, kPow2><<<GridFor((elem_count + 15) / 16, 256), 256, 0, stream>>>(
        packed, scales, code16, elem_begin, elem_count, blocksize, shift, o);
  } else {
    Dequant4bitAnyKernel<T, kPow2><<<GridFor(elem_count, 256), 256, 0, stream>>>(
        packed, scales, code16, elem_begin, elem_count, blocksize, shift, o);
  }
}

template <typename T>
void LaunchDequant4bit(const uint8_t* packed, const float* scales, const float* code16, int64_t elem_begin,
                       int64_t elem_count, int64_t blocksize, void* out, cudaStream_t stream) {
  const int shift = Log2Exact(blocksize);
  if (shift >= 0) {
    LaunchDequant4bit<T, true>(packed, scales, code16, elem_begin, elem_count, blocksize, shift, out, stream);
  } else {
    LaunchDequant4bit<T, false>(packed, scales, code16, elem_begin, elem_count, blocksize, shift, out, stream);
  }
}


}  // namespace

std::string Dequantize4bitCuda(const uint8_t* packed, const float* scales, const float* code16, int64_t elem_begin,
                               int64_t elem_count, int64_t blocksize, int out_dtype, void* out, void* stream) {
  if (elem_begin < 0 || elem_count < 0 || blocksize <= 0) {
    return "Dequantize4bitCuda: bad elem_begin, elem_count or blocksize";
  }
  if (elem_count == 0) return "";
  const auto s = static_cast<cudaStream_t>(stream);
  switch (out_dtype) {
    case kCudaF32: LaunchDequant4bit<float>(packed, scales, code16, elem_begin, elem_count, blocksize, out, s); break;
    case kCudaBf16:
      LaunchDequant4bit<__nv_bfloat16>(packed, scales, code16, elem_begin, elem_count, blocksize, out, s);
      break;
    case kCudaF16: LaunchDequant4bit<__half>(packed, scales, code16, elem_begin, elem_count, blocksize, out, s); break;
    default: return "Dequantize4bitCuda: out_dtype must be 0 (float32), 1 (bfloat16) or 2 (float16)";
  }
  return cuda::LastError();
}

}  // namespace llmtrain::kernels::detail
