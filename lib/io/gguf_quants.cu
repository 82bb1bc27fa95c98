// CUDA dequantization of GGUF blocks: one thread per output value, decoded by DeviceBlock<T>
// (gguf_quants_device.cuh), bit-identical to the CPU oracle (gguf_quants.cpp) and to gguf-py.
#include <cuda_runtime.h>

#include <algorithm>

#include "io/gguf_quants_cuda.h"
#include "io/gguf_quants_device.cuh"

namespace llmtrain::io::detail {
namespace {

template <GgmlType kType>
__global__ void __launch_bounds__(256) DequantBlocks(const uint8_t* __restrict__ src, float* __restrict__ dst,
                                                     int64_t n) {
  using Block = DeviceBlock<kType>;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    dst[i] = Block::Value(src + (i / Block::kElems) * Block::kBytes, static_cast<int>(i % Block::kElems));
  }
}

}  // namespace

bool CanDequantizeCuda(GgmlType type) {
  return VisitDeviceType(type, [](auto) {});
}

std::string DequantizeCuda(GgmlType type, const uint8_t* src, float* dst, int64_t n_blocks, void* stream_ptr) {
  if (n_blocks <= 0) return "";
  const auto stream = static_cast<cudaStream_t>(stream_ptr);
  const bool known = VisitDeviceType(type, [&](auto t) {
    constexpr GgmlType kType = decltype(t)::value;
    const int64_t n = n_blocks * DeviceBlock<kType>::kElems;
    // A grid-stride loop: at most 2^20 blocks of 256 threads, each thread covering n / 2^28 values.
    const int64_t grid = std::min<int64_t>((n + 255) / 256, int64_t{1} << 20);
    DequantBlocks<kType><<<static_cast<unsigned>(grid), 256, 0, stream>>>(src, dst, n);
  });
  if (!known) return "type not supported by the CUDA path";
  const cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? "" : cudaGetErrorString(err);
}

}  // namespace llmtrain::io::detail
