// Fused RoPE forward on CUDA (kernels/rope.h): one thread per output element, with the roundings
// of rope_cpu.cpp's three ATen ops (x·cos, rotate_half(x)·sin, their sum), each to the tensor dtype.
#include <cuda_runtime.h>

#include "kernels/cuda_common.cuh"
#include "kernels/kernels_cuda.h"

namespace llmtrain::kernels::detail {
namespace {

using cuda::FromFloat;
using cuda::ToFloat;

template <typename T>
__global__ void __launch_bounds__(256) RopeKernel(const T* __restrict__ x, const T* __restrict__ cos,
                                                  const T* __restrict__ sin, T* __restrict__ y, int64_t n,
                                                  int64_t H, int64_t T_len, int64_t D) {
  const int64_t half = D / 2;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const int64_t d = i % D;
    const int64_t t = (i / D) % T_len;
    const int64_t b = i / (D * T_len * H);
    const int64_t table = (b * T_len + t) * D + d;  // (B, 1, T, D)
    const float rotated = d < half ? -ToFloat<T>(x[i + half]) : ToFloat<T>(x[i - half]);
    // Negation is exact, so rounding it to T changes nothing.
    const float a = ToFloat<T>(FromFloat<T>(__fmul_rn(ToFloat<T>(x[i]), ToFloat<T>(cos[table]))));
    const float r = ToFloat<T>(FromFloat<T>(__fmul_rn(rotated, ToFloat<T>(sin[table]))));
    y[i] = FromFloat<T>(__fadd_rn(a, r));
  }
}

template <typename T>
void Launch(const void* x, const void* cos, const void* sin, void* y, int64_t B, int64_t H, int64_t T_len, int64_t D,
            cudaStream_t stream) {
  const int64_t n = B * H * T_len * D;
  RopeKernel<T><<<cuda::GridFor(n, 256), 256, 0, stream>>>(static_cast<const T*>(x), static_cast<const T*>(cos),
                                                          static_cast<const T*>(sin), static_cast<T*>(y), n, H,
                                                          T_len, D);
}

}  // namespace

std::string RopeCuda(const void* x, const void* cos, const void* sin, void* y, int64_t B, int64_t H, int64_t T,
                     int64_t D, int dtype, void* stream) {
  if (B <= 0 || H <= 0 || T <= 0 || D <= 0 || D % 2 != 0) return "RopeCuda: bad shape";
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case kCudaF32: Launch<float>(x, cos, sin, y, B, H, T, D, s); break;
    case kCudaBf16: Launch<__nv_bfloat16>(x, cos, sin, y, B, H, T, D, s); break;
    case kCudaF16: Launch<__half>(x, cos, sin, y, B, H, T, D, s); break;
    default: return "RopeCuda: dtype must be 0 (float32), 1 (bfloat16) or 2 (float16)";
  }
  return cuda::LastError();
}

}  // namespace llmtrain::kernels::detail
