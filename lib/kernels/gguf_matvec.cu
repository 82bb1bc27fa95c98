// Products straight from GGUF blocks on CUDA for a few input rows (decoding): one warp per output
// row, each lane decoding one value of every 32 columns (DeviceBlock<T>, bit-identical to gguf's
// dequantization) and multiplying it into up to kMaxRows running sums; a warp reduction ends it.
#include <cuda_runtime.h>

#include <algorithm>

#include "io/gguf_quants_device.cuh"
#include "kernels/kernels_cuda.h"

namespace llmtrain::kernels::detail {
namespace {

constexpr int kWarpsPerBlock = 4;

template <io::GgmlType kType, int kMaxRows>
__global__ void __launch_bounds__(32 * kWarpsPerBlock)
    GgufMatvec(const uint8_t* __restrict__ w, int64_t out, int64_t in, const float* __restrict__ x, int rows,
               float* __restrict__ y) {
  using Block = io::detail::DeviceBlock<kType>;
  const int lane = threadIdx.x % 32;
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  if (r >= out) return;  // the whole warp
  const uint8_t* row = w + r * (in / Block::kElems) * Block::kBytes;
  float acc[kMaxRows];
#pragma unroll
  for (int m = 0; m < kMaxRows; ++m) acc[m] = 0.0f;
  for (int64_t c = lane; c < in; c += 32) {
    const float v = Block::Value(row + (c / Block::kElems) * Block::kBytes, static_cast<int>(c % Block::kElems));
#pragma unroll
    for (int m = 0; m < kMaxRows; ++m) {
      if (m < rows) acc[m] = fmaf(v, x[m * in + c], acc[m]);
    }
  }
#pragma unroll
  for (int m = 0; m < kMaxRows; ++m) {
    if (m < rows) {  // uniform over the warp
      float s = acc[m];
#pragma unroll
      for (int offset = 16; offset > 0; offset /= 2) s += __shfl_xor_sync(0xffffffffu, s, offset);
      if (lane == 0) y[m * out + r] = s;
    }
  }
}

template <io::GgmlType kType, int kMaxRows>
void Launch(const uint8_t* w, int64_t out, int64_t in, const float* x, int rows, float* y, cudaStream_t stream) {
  const int64_t grid = (out + kWarpsPerBlock - 1) / kWarpsPerBlock;
  GgufMatvec<kType, kMaxRows><<<static_cast<unsigned>(grid), 32 * kWarpsPerBlock, 0, stream>>>(w, out, in, x, rows, y);
}

}  // namespace

std::string GgufMatvecCuda(io::GgmlType type, const uint8_t* blocks, int64_t out, int64_t in, const float* x,
                           int64_t M, float* y, void* stream_ptr) {
  if (M <= 0 || out <= 0) return "";
  if (out > (int64_t{1} << 32)) return "too many output rows for one launch";
  const auto stream = static_cast<cudaStream_t>(stream_ptr);
  std::string error;
  for (int64_t m0 = 0; m0 < M && error.empty(); m0 += kGgufMatvecMaxRows) {
    const int rows = static_cast<int>(std::min<int64_t>(kGgufMatvecMaxRows, M - m0));
    const float* xm = x + m0 * in;
    float* ym = y + m0 * out;
    const bool known = io::detail::VisitDeviceType(type, [&](auto t) {
      constexpr io::GgmlType kType = decltype(t)::value;
      if (in % io::detail::DeviceBlock<kType>::kElems != 0) {
        error = "the columns are not whole blocks";
        return;
      }
      // One running sum per row in registers: 1 (a single sequence), 4, or 16.
      if (rows == 1) {
        Launch<kType, 1>(blocks, out, in, xm, rows, ym, stream);
      } else if (rows <= 4) {
        Launch<kType, 4>(blocks, out, in, xm, rows, ym, stream);
      } else {
        Launch<kType, kGgufMatvecMaxRows>(blocks, out, in, xm, rows, ym, stream);
      }
    });
    if (!known) return "type not supported by the CUDA path";
    if (error.empty()) {
      const cudaError_t err = cudaGetLastError();
      if (err != cudaSuccess) error = cudaGetErrorString(err);
    }
  }
  return error;
}

}  // namespace llmtrain::kernels::detail
