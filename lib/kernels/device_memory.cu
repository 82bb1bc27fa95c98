// The memory of a CUDA device (kernels_cuda.h).
#include <cuda_runtime.h>

#include "kernels/kernels_cuda.h"

namespace llmtrain::kernels::detail {

std::string DeviceMemoryCuda(int device, int64_t* free_bytes, int64_t* total_bytes) {
  int current = 0;
  cudaError_t error = cudaGetDevice(&current);
  if (error == cudaSuccess && current != device) error = cudaSetDevice(device);
  size_t free = 0, total = 0;
  if (error == cudaSuccess) error = cudaMemGetInfo(&free, &total);
  if (current != device) cudaSetDevice(current);
  if (error != cudaSuccess) return cudaGetErrorString(error);
  *free_bytes = static_cast<int64_t>(free);
  *total_bytes = static_cast<int64_t>(total);
  return "";
}

}  // namespace llmtrain::kernels::detail
