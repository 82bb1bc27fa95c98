// LibTorch views of stored tensors: safetensors and GGUF tensors as at::Tensor, and saving
// at::Tensor maps as safetensors.
//
//   LLMTRAIN_ASSIGN_OR_RETURN(auto ckpt, io::Checkpoint::Open(model_dir));
//   LLMTRAIN_ASSIGN_OR_RETURN(at::Tensor w, io::LoadTensor(*ckpt, "model.norm.weight"));
#pragma once

#include <map>
#include <string>
#include "absl/strings/string_view.h"
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include "absl/status/statusor.h"
#include "llmtrain/core/dtype.h"
#include "llmtrain/io/gguf.h"
#include "llmtrain/io/safetensors.h"

namespace llmtrain::io {

/// The ATen scalar type of a Dtype (F8_E4M3 → Float8_e4m3fn, F8_E5M2 → Float8_e5m2).
c10::ScalarType ToScalarType(Dtype dtype);
/// The Dtype of an ATen scalar type; InvalidArgument for types safetensors cannot store.
absl::StatusOr<Dtype> FromScalarType(c10::ScalarType type);

/// A CPU tensor viewing `tensor`'s bytes in the mapping (zero-copy when the bytes are aligned
/// for the dtype, a copy otherwise). The view keeps the mapping alive and must not be written.
at::Tensor TensorView(const SafetensorsFile& file, const TensorInfo& tensor);

/// Looks up `name` in a checkpoint and returns TensorView of it; NotFound names the tensor.
absl::StatusOr<at::Tensor> LoadTensor(const Checkpoint& checkpoint, absl::string_view name);

/// Dequantizes a GGUF tensor to a new float32 CPU tensor of row-major shape (bit-identical to
/// gguf.quants.dequantize). Integer GGUF types (I8..I64) keep their type instead.
absl::StatusOr<at::Tensor> LoadGgufTensor(const GgufFile& file, const GgufTensorInfo& tensor);

/// Dequantizes a GGUF tensor straight into `dtype` (floating types), a few MiB of rows at a time,
/// so a bf16 load never holds the float32 copy of a whole tensor. Values equal
/// LoadGgufTensor(...).to(dtype).
absl::StatusOr<at::Tensor> LoadGgufTensor(const GgufFile& file, const GgufTensorInfo& tensor,
                                          c10::ScalarType dtype);

/// Rows [row_begin, row_end) of a GGUF tensor (a row is ne[0] elements) as a new (rows, ne[0])
/// CPU tensor in `dtype`, dequantizing only those rows' bytes where the type allows (every type
/// CanDequantize takes). Values equal the same rows of LoadGgufTensor(...).to(dtype).
/// InvalidArgument for rows outside the tensor.
absl::StatusOr<at::Tensor> LoadGgufRows(const GgufFile& file, const GgufTensorInfo& tensor, int64_t row_begin,
                                        int64_t row_end, c10::ScalarType dtype);

/// Dequantizes a GGUF tensor to float32 on `device`. On a CUDA device, Q8_0, Q4_0, Q4_K, Q5_K
/// and Q6_K are dequantized by our kernels from the raw bytes (bit-identical to the CPU path);
/// other types are dequantized on the CPU and copied. FailedPrecondition if CUDA is asked for
/// in a build without it.
absl::StatusOr<at::Tensor> LoadGgufTensorTo(const GgufFile& file, const GgufTensorInfo& tensor,
                                            c10::Device device);

/// Writes `tensors` (name → tensor, any device, contiguous or not) as one safetensors file,
/// atomically. InvalidArgument names a tensor whose dtype safetensors cannot store.
absl::Status SaveSafetensors(absl::string_view path,
                             const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                             const std::map<std::string, std::string>& metadata = {});

}  // namespace llmtrain::io
