// Dequantize4bit front end (kernels/dequant4.h): checks and routing; the loops are in
// dequant4_cpu.cpp and dequant4.cu.
#include "llmtrain/kernels/dequant4.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/record_function.h>

#if LLMTRAIN_WITH_CUDA
#include <c10/cuda/CUDAStream.h>

#include "kernels/kernels_cuda.h"
#endif

#ifndef _OPENMP
#error "at::parallel_for needs -fopenmp here, or it runs on one thread (LLMTRAIN_PARALLEL_SOURCES in CMakeLists.txt)"
#endif

namespace llmtrain::kernels {

void Dequantize4bit(const at::Tensor& packed, const at::Tensor& scales, const at::Tensor& code, int64_t blocksize,
                    int64_t begin, at::Tensor& out, c10::ScalarType round_through) {
  RECORD_FUNCTION("llmtrain::dequantize_4bit", std::vector<c10::IValue>());
  const int64_t count = out.numel();
  TORCH_CHECK(packed.scalar_type() == at::kByte && packed.is_contiguous(), "Dequantize4bit: packed must be "
              "contiguous uint8, is ", packed.scalar_type());
  TORCH_CHECK(scales.scalar_type() == at::kFloat && scales.is_contiguous(), "Dequantize4bit: scales must be "
              "contiguous float32, are ", scales.scalar_type());
  TORCH_CHECK(code.scalar_type() == at::kFloat && code.numel() == 16 && code.is_contiguous(),
              "Dequantize4bit: code must be 16 contiguous float32 values");
  TORCH_CHECK(blocksize > 0 && begin >= 0, "Dequantize4bit: blocksize ", blocksize, ", begin ", begin);
  TORCH_CHECK((begin + count + 1) / 2 <= packed.numel(), "Dequantize4bit: elements [", begin, ", ", begin + count,
              ") need ", (begin + count + 1) / 2, " packed bytes, there are ", packed.numel());
  TORCH_CHECK(count == 0 || (begin + count - 1) / blocksize < scales.numel(), "Dequantize4bit: elements up to ",
              begin + count, " need ", (begin + count - 1) / blocksize + 1, " block scales, there are ",
              scales.numel());
  const c10::ScalarType out_dtype = out.scalar_type();
  TORCH_CHECK(out.is_contiguous() && (out_dtype == at::kFloat || out_dtype == at::kBFloat16 || out_dtype == at::kHalf),
              "Dequantize4bit: out must be contiguous float32, bfloat16 or float16");
  TORCH_CHECK(round_through == at::kFloat || round_through == at::kBFloat16 || round_through == at::kHalf,
              "Dequantize4bit: round_through must be float32, bfloat16 or float16");
  TORCH_CHECK(packed.device() == out.device() && scales.device() == out.device() && code.device() == out.device(),
              "Dequantize4bit: packed, scales, code and out must be on one device");
  if (count == 0) return;
  if (out.is_cuda()) {
#if LLMTRAIN_WITH_CUDA
    TORCH_CHECK(round_through == at::kFloat || round_through == out_dtype,
                "Dequantize4bit (CUDA): rounding through another dtype is CPU-only");
    const int dtype = out_dtype == at::kFloat ? detail::kCudaF32 : out_dtype == at::kBFloat16 ? detail::kCudaBf16
                                                                                                : detail::kCudaF16;
    const std::string error = detail::Dequantize4bitCuda(
        packed.data_ptr<uint8_t>(), scales.data_ptr<float>(), code.data_ptr<float>(), begin, count, blocksize, dtype,
        out.data_ptr(), c10::cuda::getCurrentCUDAStream(out.device().index()).stream());
    TORCH_CHECK(error.empty(), "Dequantize4bit (CUDA): ", error);
    return;
#else
    TORCH_CHECK(false, "Dequantize4bit: this llmtrain build has no CUDA support");
#endif
  }
  TORCH_CHECK(out.is_cpu(), "Dequantize4bit: unsupported device ", out.device());
  const uint8_t* p = packed.data_ptr<uint8_t>();
  const float* s = scales.data_ptr<float>();
  const float* c = code.data_ptr<float>();
  char* base = static_cast<char*>(out.data_ptr());
  const size_t elem = c10::elementSize(out_dtype);
  // Chunks that start on a block boundary keep each block's arithmetic the same on every thread.
  const int64_t grain = std::max<int64_t>(1, 16384 / blocksize);
  const int64_t first_block = begin / blocksize, end_block = (begin + count - 1) / blocksize + 1;
  at::parallel_for(first_block, end_block, grain, [&](int64_t b0, int64_t b1) {
    const int64_t e0 = std::max(begin, b0 * blocksize), e1 = std::min(begin + count, b1 * blocksize);
    if (e1 > e0) detail::Dequantize4bitCpu(p, s, c, blocksize, e0, e1 - e0, round_through, out_dtype,
                                           base + (e0 - begin) * elem);
  });
}

}  // namespace llmtrain::kernels
