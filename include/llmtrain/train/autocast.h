// Mixed precision as torch.autocast does it, for C++ callers: while an AutocastGuard lives on a
// thread, ATen's autocast runs linear/matmul/mm/bmm in `dtype` on `device` (casting their float32
// inputs, leaf parameters cast once and cached) and keeps norms, softmaxes and losses in float32.
// llmtrain's own kernels follow the same switch: quant::QuantizedLinear dequantizes straight to
// `dtype` and multiplies there, and kernels::ChunkedCrossEntropy runs the LM head's GEMMs in
// `dtype` (the reduction stays float32). Gradients flow back through the casts to float32.
//
//   {
//     train::AutocastGuard autocast(c10::DeviceType::CPU, c10::ScalarType::BFloat16);
//     loss = ...forward and loss...;
//   }
//   loss.backward();  // outside, as with torch.autocast
#pragma once

#include <c10/core/DeviceType.h>
#include <c10/core/ScalarType.h>

namespace llmtrain::train {

class AutocastGuard {
 public:
  /// Turns autocast on for `device` with `dtype` (bfloat16, or float16 on CUDA) until destroyed;
  /// nests, and restores the previous state.
  AutocastGuard(c10::DeviceType device, c10::ScalarType dtype);
  ~AutocastGuard();
  AutocastGuard(const AutocastGuard&) = delete;
  AutocastGuard& operator=(const AutocastGuard&) = delete;

 private:
  c10::DeviceType device_;
  bool previous_enabled_;
  c10::ScalarType previous_dtype_;
};

}  // namespace llmtrain::train
