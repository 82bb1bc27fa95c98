#include <ATen/ATen.h>

#include <cstring>
#include <memory>

#include "absl/strings/str_cat.h"
#include "llmtrain/core/status.h"
#include "llmtrain/io/tensors.h"

#if LLMTRAIN_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "io/gguf_quants_cuda.h"
#endif

namespace llmtrain::io {

c10::ScalarType ToScalarType(Dtype dtype) {
  switch (dtype) {
    case Dtype::kBool: return at::kBool;
    case Dtype::kU8: return at::kByte;
    case Dtype::kI8: return at::kChar;
    case Dtype::kI16: return at::kShort;
    case Dtype::kU16: return at::kUInt16;
    case Dtype::kF16: return at::kHalf;
    case Dtype::kBf16: return at::kBFloat16;
    case Dtype::kI32: return at::kInt;
    case Dtype::kU32: return at::kUInt32;
    case Dtype::kF32: return at::kFloat;
    case Dtype::kF64: return at::kDouble;
    case Dtype::kI64: return at::kLong;
    case Dtype::kU64: return at::kUInt64;
    case Dtype::kF8E4M3: return at::kFloat8_e4m3fn;
    case Dtype::kF8E5M2: return at::kFloat8_e5m2;
  }
  return at::kFloat;
}

absl::StatusOr<Dtype> FromScalarType(c10::ScalarType type) {
  for (Dtype d : kAllDtypes) {
    if (ToScalarType(d) == type) return d;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("dtype ", c10::toString(type), " cannot be stored in safetensors"));
}

at::Tensor TensorView(const SafetensorsFile& file, const TensorInfo& tensor) {
  const absl::Span<const uint8_t> bytes = file.Data(tensor);
  const auto options = at::TensorOptions().dtype(ToScalarType(tensor.dtype));
  const size_t item_bytes = ElementBits(tensor.dtype) / 8;
  if (bytes.empty() || reinterpret_cast<uintptr_t>(bytes.data()) % item_bytes != 0) {
    // Other writers need not align tensors; copy so the tensor's data is aligned.
    at::Tensor t = at::empty(tensor.shape, options);
    if (!bytes.empty()) std::memcpy(t.data_ptr(), bytes.data(), bytes.size());
    return t;
  }
  // Zero-copy: the deleter holds the mapping, so the bytes outlive the reader if needed.
  auto keep = new std::shared_ptr<const MappedFile>(file.mapping());
  return at::from_blob(
      const_cast<uint8_t*>(bytes.data()), tensor.shape,
      [keep](void*) { delete keep; }, options);
}

absl::StatusOr<at::Tensor> LoadTensor(const Checkpoint& checkpoint, absl::string_view name) {
  LLMTRAIN_ASSIGN_OR_RETURN(auto found, checkpoint.Find(name));
  return TensorView(*found.first, *found.second);
}

absl::StatusOr<at::Tensor> LoadGgufTensor(const GgufFile& file, const GgufTensorInfo& tensor) {
  const absl::Span<const uint8_t> bytes = file.Data(tensor);
  c10::ScalarType int_type = at::kFloat;
  switch (tensor.type) {
    case GgmlType::kI8: int_type = at::kChar; break;
    case GgmlType::kI16: int_type = at::kShort; break;
    case GgmlType::kI32: int_type = at::kInt; break;
    case GgmlType::kI64: int_type = at::kLong; break;
    default: break;
  }
  if (int_type != at::kFloat) {
    at::Tensor t = at::empty(tensor.shape, at::TensorOptions().dtype(int_type));
    if (!bytes.empty()) std::memcpy(t.data_ptr(), bytes.data(), bytes.size());
    return t;
  }
  at::Tensor out = at::empty(tensor.shape, at::TensorOptions().dtype(at::kFloat));
  auto status = DequantizeTensor(file, tensor,
                                 absl::Span<float>(out.data_ptr<float>(), out.numel()));
  if (!status.ok()) return status;
  return out;
}

absl::StatusOr<at::Tensor> LoadGgufTensor(const GgufFile& file, const GgufTensorInfo& tensor,
                                          c10::ScalarType dtype) {
  const auto traits = GetGgmlTypeTraits(static_cast<uint32_t>(tensor.type));
  if (dtype == at::kFloat || !at::isFloatingType(dtype) || !traits || tensor.ne.empty() ||
      !CanDequantize(tensor.type)) {
    LLMTRAIN_ASSIGN_OR_RETURN(at::Tensor t, LoadGgufTensor(file, tensor));
    return t.to(dtype);
  }
  const int64_t rows = tensor.n_elems() / std::max<int64_t>(tensor.ne[0], 1);
  LLMTRAIN_ASSIGN_OR_RETURN(at::Tensor out, LoadGgufRows(file, tensor, 0, rows, dtype));
  return out.view(tensor.shape);
}

absl::StatusOr<at::Tensor> LoadGgufRows(const GgufFile& file, const GgufTensorInfo& tensor, int64_t row_begin,
                                        int64_t row_end, c10::ScalarType dtype) {
  const int64_t row_elems = tensor.ne.empty() ? 1 : tensor.ne[0];
  const int64_t rows = tensor.n_elems() / std::max<int64_t>(row_elems, 1);
  if (row_begin < 0 || row_begin > row_end || row_end > rows) {
    return absl::InvalidArgumentError(absl::StrCat(file.path(), ": tensor \"", tensor.name, "\": rows [", row_begin,
                                                   ", ", row_end, ") of ", rows));
  }
  const auto traits = GetGgmlTypeTraits(static_cast<uint32_t>(tensor.type));
  if (!at::isFloatingType(dtype) || !traits || tensor.ne.empty() || !CanDequantize(tensor.type)) {
    LLMTRAIN_ASSIGN_OR_RETURN(at::Tensor t, LoadGgufTensor(file, tensor));
    return t.reshape({rows, row_elems}).narrow(0, row_begin, row_end - row_begin).to(dtype).clone();
  }
  // ggml blocks never cross a row, so rows are whole blocks: dequantize a few MiB at a time.
  const int64_t row_bytes = row_elems / traits->block_elems * traits->block_bytes;
  const int64_t rows_per_chunk = std::max<int64_t>(1, (int64_t{1} << 20) / std::max<int64_t>(row_elems, 1));
  const int64_t n_rows = row_end - row_begin;
  at::Tensor out = at::empty({n_rows, row_elems}, at::TensorOptions().dtype(dtype));
  at::Tensor scratch;
  if (dtype != at::kFloat) scratch = at::empty({std::min(n_rows, rows_per_chunk), row_elems}, at::kFloat);
  const absl::Span<const uint8_t> bytes = file.Data(tensor);
  for (int64_t r = 0; r < n_rows; r += rows_per_chunk) {
    const int64_t n = std::min(rows_per_chunk, n_rows - r);
    at::Tensor part = dtype == at::kFloat ? out.narrow(0, r, n) : scratch.narrow(0, 0, n);
    const absl::Status status = Dequantize(tensor.type, bytes.subspan((row_begin + r) * row_bytes, n * row_bytes),
                                           absl::Span<float>(part.data_ptr<float>(), part.numel()));
    if (!status.ok()) {
      return Annotate(status, absl::StrCat(file.path(), ": tensor \"", tensor.name, "\""));
    }
    if (dtype != at::kFloat) out.narrow(0, r, n).copy_(part);
  }
  return out;
}

absl::StatusOr<at::Tensor> LoadGgufTensorTo(const GgufFile& file, const GgufTensorInfo& tensor,
                                            c10::Device device) {
  if (device.is_cpu()) return LoadGgufTensor(file, tensor);
#if LLMTRAIN_WITH_CUDA
  if (device.is_cuda() && detail::CanDequantizeCuda(tensor.type)) {
    const c10::cuda::CUDAGuard device_guard(device);  // the kernel runs on the current device
    const absl::Span<const uint8_t> bytes = file.Data(tensor);
    // Copy the packed bytes (4.5-8.5 bits per weight) and expand them on the device.
    at::Tensor packed = at::empty({static_cast<int64_t>(bytes.size())}, at::kByte);
    std::memcpy(packed.data_ptr(), bytes.data(), bytes.size());
    packed = packed.to(device);
    at::Tensor out = at::empty(tensor.shape, at::TensorOptions().dtype(at::kFloat).device(device));
    const auto traits = GetGgmlTypeTraits(static_cast<uint32_t>(tensor.type));
    const std::string error = detail::DequantizeCuda(
        tensor.type, packed.data_ptr<uint8_t>(), out.data_ptr<float>(),
        tensor.n_elems() / traits->block_elems,
        c10::cuda::getCurrentCUDAStream(device.index()).stream());
    if (!error.empty()) {
      return absl::InternalError(absl::StrCat(file.path(), ": tensor \"", tensor.name,
                                              "\": CUDA dequantization failed: ", error));
    }
    return out;
  }
#else
  if (device.is_cuda()) {
    return absl::FailedPreconditionError("this llmtrain build has no CUDA support");
  }
#endif
  LLMTRAIN_ASSIGN_OR_RETURN(at::Tensor cpu, LoadGgufTensor(file, tensor));
  return cpu.to(device);
}

absl::Status SaveSafetensors(absl::string_view path,
                             const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                             const std::map<std::string, std::string>& metadata) {
  std::vector<at::Tensor> cpu;  // keeps contiguous CPU copies alive while writing
  std::vector<TensorToWrite> to_write;
  cpu.reserve(tensors.size());
  to_write.reserve(tensors.size());
  for (const auto& [name, tensor] : tensors) {
    auto dtype = FromScalarType(tensor.scalar_type());
    if (!dtype.ok()) return Annotate(dtype.status(), absl::StrCat(path, ": tensor \"", name, "\""));
    cpu.push_back(tensor.to(at::kCPU).contiguous());
    const at::Tensor& t = cpu.back();
    to_write.push_back({name, *dtype, t.sizes().vec(),
                        absl::Span<const uint8_t>(static_cast<const uint8_t*>(t.data_ptr()),
                                                  t.nbytes())});
  }
  return WriteSafetensors(path, to_write, metadata);
}

}  // namespace llmtrain::io
