// Fused RMSNorm forward on CUDA (kernels/rms_norm.h): one thread block per row; the sum of
// squares in float32 (tree order, so it agrees with the ATen path to float32 rounding), then one
// pass that scales and writes. The roundings of each style follow rms_norm_cpu.cpp.
#include <cuda_runtime.h>

#include "kernels/cuda_common.cuh"
#include "kernels/kernels_cuda.h"

namespace llmtrain::kernels::detail {
namespace {

using cuda::FromFloat;
using cuda::ToFloat;

constexpr int kThreads = 256;

template <typename T, typename W>
__global__ void __launch_bounds__(kThreads) RmsNormKernel(const T* __restrict__ x, const W* __restrict__ w,
                                                          T* __restrict__ y, int64_t C, float eps, bool one_plus) {
  const int64_t row = blockIdx.x;
  const T* xr = x + row * C;
  T* yr = y + row * C;
  float sum = 0.0f;
  for (int64_t c = threadIdx.x; c < C; c += kThreads) {
    const float v = ToFloat<T>(xr[c]);
    sum = __fmaf_rn(v, v, sum);
  }
  // Block reduction: warps with shuffles, then the warp sums through shared memory.
  for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
  __shared__ float warp_sums[kThreads / 32];
  __shared__ float inv_rms;
  if (threadIdx.x % 32 == 0) warp_sums[threadIdx.x / 32] = sum;
  __syncthreads();
  if (threadIdx.x == 0) {
    float total = 0.0f;
    for (int i = 0; i < kThreads / 32; ++i) total += warp_sums[i];
    inv_rms = rsqrtf(total / static_cast<float>(C) + eps);
  }
  __syncthreads();
  const float r = inv_rms;
  for (int64_t c = threadIdx.x; c < C; c += kThreads) {
    const float normed = __fmul_rn(ToFloat<T>(xr[c]), r);
    const float wv = ToFloat<W>(w[c]);
    if (one_plus) {
      yr[c] = FromFloat<T>(__fmul_rn(normed, __fadd_rn(1.0f, wv)));  // Gemma: (1 + w) in float32
    } else {
      yr[c] = FromFloat<T>(__fmul_rn(wv, ToFloat<T>(FromFloat<T>(normed))));  // Qwen: cast, then times w
    }
  }
}

template <typename T, typename W>
void Launch(const void* x, const void* w, void* y, int64_t rows, int64_t C, double eps, bool one_plus,
            cudaStream_t stream) {
  RmsNormKernel<T, W><<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(
      static_cast<const T*>(x), static_cast<const W*>(w), static_cast<T*>(y), C, static_cast<float>(eps), one_plus);
}

template <typename T>
bool LaunchFor(int w_dtype, const void* x, const void* w, void* y, int64_t rows, int64_t C, double eps,
               bool one_plus, cudaStream_t stream) {
  switch (w_dtype) {
    case kCudaF32: Launch<T, float>(x, w, y, rows, C, eps, one_plus, stream); return true;
    case kCudaBf16: Launch<T, __nv_bfloat16>(x, w, y, rows, C, eps, one_plus, stream); return true;
    case kCudaF16: Launch<T, __half>(x, w, y, rows, C, eps, one_plus, stream); return true;
    default: return false;
  }
}

}  // namespace

std::string RmsNormCuda(const void* x, const void* w, void* y, int64_t rows, int64_t C, double eps, bool one_plus,
                        int dtype, int w_dtype, void* stream) {
  if (rows <= 0 || C <= 0 || rows >= (int64_t{1} << 31)) return "RmsNormCuda: bad rows or C";
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  bool ok = false;
  switch (dtype) {
    case kCudaF32: ok = LaunchFor<float>(w_dtype, x, w, y, rows, C, eps, one_plus, s); break;
    case kCudaBf16: ok = LaunchFor<__nv_bfloat16>(w_dtype, x, w, y, rows, C, eps, one_plus, s); break;
    case kCudaF16: ok = LaunchFor<__half>(w_dtype, x, w, y, rows, C, eps, one_plus, s); break;
    default: break;
  }
  if (!ok) return "RmsNormCuda: dtypes must be 0 (float32), 1 (bfloat16) or 2 (float16)";
  return cuda::LastError();
}

}  // namespace llmtrain::kernels::detail
