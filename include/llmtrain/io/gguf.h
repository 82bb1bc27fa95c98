// GGUF (v2 and v3): read with all metadata types, tensor infos and alignment; write.
//
// Layout (docs/formats.md §2): magic "GGUF", u32 version, u64 tensor count, u64 metadata count,
// the key/values, the tensor infos, padding to the alignment, then the data. Every count, length
// and offset is checked before it is used; errors name the file, the key or tensor, and the rule.
// Dimensions: GGUF lists them innermost first (ggml `ne`); TensorInfo::shape is row-major
// (PyTorch order), reversed once here and nowhere else.
//
//   LLMTRAIN_ASSIGN_OR_RETURN(auto gguf, io::GgufFile::Open("gemma-3-270m-Q4_K_M.gguf"));
//   const io::GgufValue* arch = gguf->FindMetadata("general.architecture");
//   std::vector<float> w(gguf->tensors()[0].n_elems());
//   LLMTRAIN_RETURN_IF_ERROR(io::DequantizeTensor(*gguf, gguf->tensors()[0], absl::MakeSpan(w)));
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include "absl/strings/string_view.h"
#include <variant>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "llmtrain/io/mapped_file.h"

namespace llmtrain::io {

/// ggml tensor types (docs/formats.md §2.4). Ids not listed here are rejected by the reader.
enum class GgmlType : uint32_t {
  kF32 = 0, kF16 = 1, kQ4_0 = 2, kQ4_1 = 3, kQ5_0 = 6, kQ5_1 = 7, kQ8_0 = 8, kQ8_1 = 9,
  kQ2_K = 10, kQ3_K = 11, kQ4_K = 12, kQ5_K = 13, kQ6_K = 14, kQ8_K = 15, kIQ2_XXS = 16,
  kIQ2_XS = 17, kIQ3_XXS = 18, kIQ1_S = 19, kIQ4_NL = 20, kIQ3_S = 21, kIQ2_S = 22, kIQ4_XS = 23,
  kI8 = 24, kI16 = 25, kI32 = 26, kI64 = 27, kF64 = 28, kIQ1_M = 29, kBF16 = 30, kTQ1_0 = 34,
  kTQ2_0 = 35, kMXFP4 = 39, kNVFP4 = 40, kQ1_0 = 41,
};

/// Block geometry of a ggml type: `block_elems` elements take `block_bytes` bytes.
struct GgmlTypeTraits {
  absl::string_view name;  ///< ggml name: "Q4_K", "F16", ...
  int64_t block_elems = 0;
  int64_t block_bytes = 0;
};

/// Traits of `type`, or nullopt for an id this library does not know (a newer ggml type).
std::optional<GgmlTypeTraits> GetGgmlTypeTraits(uint32_t type_id);
/// The ggml name of a known type.
absl::string_view GgmlTypeName(GgmlType type);
/// True for types DequantizeTensor handles: F32 F16 BF16 F64 I8 I16 I32 I64 Q8_0 Q4_0 Q4_1
/// Q5_0 Q5_1 Q4_K Q5_K Q6_K.
bool CanDequantize(GgmlType type);

/// GGUF metadata value types (docs/formats.md §2.2).
enum class GgufValueType : uint32_t {
  kUint8 = 0, kInt8 = 1, kUint16 = 2, kInt16 = 3, kUint32 = 4, kInt32 = 5, kFloat32 = 6,
  kBool = 7, kString = 8, kArray = 9, kUint64 = 10, kInt64 = 11, kFloat64 = 12,
};
absl::string_view GgufValueTypeName(GgufValueType type);

/// One metadata value. Scalars of every integer width are kept in int64/uint64 with their
/// original type recorded, so a writer reproduces the file's types exactly.
struct GgufValue {
  GgufValueType type = GgufValueType::kUint32;
  GgufValueType array_type = GgufValueType::kUint32;  ///< element type, for kArray
  std::variant<uint64_t, int64_t, double, bool, std::string> scalar;  ///< non-arrays
  /// kArray: elements; strings in `strings`, everything else in the matching vector.
  std::vector<std::string> strings;
  std::vector<uint64_t> uints;
  std::vector<int64_t> ints;
  std::vector<double> floats;
  std::vector<bool> bools;

  /// Array element count (0 for scalars).
  size_t array_size() const;
  /// The value as an integer if it is one (any width, signed or unsigned, in range).
  std::optional<int64_t> AsInt() const;
  /// The value as a floating-point number if it is a float or an integer.
  std::optional<double> AsDouble() const;
  std::optional<bool> AsBool() const;
  const std::string* AsString() const;
};

struct GgufTensorInfo {
  std::string name;
  GgmlType type = GgmlType::kF32;
  std::vector<int64_t> ne;     ///< ggml order: ne[0] is the innermost (fastest) dimension
  std::vector<int64_t> shape;  ///< row-major (PyTorch) order: ne reversed
  uint64_t offset = 0;         ///< from the start of the data section
  uint64_t n_bytes = 0;
  int64_t n_elems() const;
};

class GgufFile {
 public:
  /// Maps and validates `path`.
  static absl::StatusOr<std::unique_ptr<GgufFile>> Open(absl::string_view path);
  /// Validates bytes already in memory (tests, fuzzers).
  static absl::StatusOr<std::unique_ptr<GgufFile>> Parse(std::shared_ptr<const MappedFile> file);

  const std::string& path() const { return file_->path(); }
  uint32_t version() const { return version_; }
  uint64_t alignment() const { return alignment_; }
  uint64_t data_start() const { return data_start_; }
  /// Metadata in file order.
  const std::vector<std::pair<std::string, GgufValue>>& metadata() const { return metadata_; }
  const GgufValue* FindMetadata(absl::string_view key) const;
  /// Tensor infos in file order.
  const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }
  const GgufTensorInfo* FindTensor(absl::string_view name) const;
  /// The raw bytes of `tensor` (a view into the mapping).
  absl::Span<const uint8_t> Data(const GgufTensorInfo& tensor) const;
  const std::shared_ptr<const MappedFile>& mapping() const { return file_; }

 private:
  GgufFile() = default;
  std::shared_ptr<const MappedFile> file_;
  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  uint64_t data_start_ = 0;
  std::vector<std::pair<std::string, GgufValue>> metadata_;
  absl::flat_hash_map<std::string, size_t> metadata_index_;
  std::vector<GgufTensorInfo> tensors_;
  absl::flat_hash_map<std::string, size_t> tensor_index_;
};

/// Dequantizes (or widens) `n_elems` elements of type `type` from `src` into float32 `dst`,
/// bit-identically to `gguf.quants.dequantize`. Uses all cores for large inputs.
/// InvalidArgument if the sizes do not agree; Unimplemented for a type CanDequantize rejects.
absl::Status Dequantize(GgmlType type, absl::Span<const uint8_t> src, absl::Span<float> dst);

/// Decodes `n_blocks` whole blocks of one type from `src` into `n_blocks × block_elems` floats at
/// `dst`, as Dequantize does (bit-identical to gguf.quants.dequantize), on the calling thread and
/// without size checks: for hot loops that decode a weight a few blocks at a time
/// (kernels/block_matmul.h).
using BlockDecoder = void (*)(const uint8_t* src, float* dst, int64_t n_blocks);
/// The decoder of `type`, or null for a type CanDequantize rejects.
BlockDecoder FindBlockDecoder(GgmlType type);

/// Dequantizes one tensor of `file` into `dst` (n_elems floats, row-major).
absl::Status DequantizeTensor(const GgufFile& file, const GgufTensorInfo& tensor,
                              absl::Span<float> dst);

/// Builds a GGUF v3 file. Keys and tensors are written in the order they are added.
///
///   GgufWriter w;
///   w.AddString("general.architecture", "gemma3");
///   w.AddUint32("gemma3.block_count", 18);
///   LLMTRAIN_RETURN_IF_ERROR(w.AddTensor("token_embd.weight", GgmlType::kQ8_0, {V, C}, f32));
///   LLMTRAIN_RETURN_IF_ERROR(w.Write("out.gguf"));
class GgufWriter {
 public:
  explicit GgufWriter(uint64_t alignment = 32);
  void Add(std::string key, GgufValue value);
  void AddString(std::string key, std::string value);
  void AddUint32(std::string key, uint32_t value);
  void AddFloat32(std::string key, float value);
  void AddBool(std::string key, bool value);
  /// Adds a tensor from float32 values, converted to `type`: F32, F16, BF16 (round to nearest
  /// even) or Q8_0 (as gguf.quants.quantize does it). `shape` is row-major.
  absl::Status AddTensor(std::string name, GgmlType type, std::vector<int64_t> shape,
                         absl::Span<const float> values);
  /// Adds a tensor whose bytes are already in `type`'s layout (any known type).
  absl::Status AddRawTensor(std::string name, GgmlType type, std::vector<int64_t> shape,
                            std::vector<uint8_t> bytes);
  /// Adds a tensor whose bytes `produce` makes when Write reaches it (in `type`'s layout, exactly
  /// TensorBytes(type, shape) of them), so that a large model is written holding one tensor at
  /// a time.
  absl::Status AddTensorFrom(std::string name, GgmlType type, std::vector<int64_t> shape,
                             std::function<absl::StatusOr<std::vector<uint8_t>>()> produce);
  /// The whole file as bytes.
  absl::StatusOr<std::string> Serialize() const;
  /// Writes the file atomically, one tensor's bytes at a time.
  absl::Status Write(absl::string_view path) const;

  /// Bytes of a tensor of `type` and row-major `shape` (0 for an unknown type).
  static uint64_t TensorBytes(GgmlType type, const std::vector<int64_t>& shape);

 private:
  struct PendingTensor {
    std::string name;
    GgmlType type;
    std::vector<int64_t> shape;
    std::vector<uint8_t> bytes;
    std::function<absl::StatusOr<std::vector<uint8_t>>()> produce;  ///< null: `bytes` holds them
  };
  absl::Status CheckTensor(const std::string& name, GgmlType type, const std::vector<int64_t>& shape,
                           std::optional<size_t> n_bytes) const;
  absl::StatusOr<std::string> SerializeHeader() const;
  absl::Status ForEachTensorData(const std::function<absl::Status(absl::string_view)>& sink) const;
  uint64_t Pad(uint64_t n) const { return (alignment_ - n % alignment_) % alignment_; }
  uint64_t alignment_;
  std::vector<std::pair<std::string, GgufValue>> metadata_;
  std::vector<PendingTensor> tensors_;
};

/// Quantizes float32 values to Q8_0 blocks exactly as `gguf.quants.quantize` does.
/// `values.size()` must be a multiple of 32.
absl::StatusOr<std::vector<uint8_t>> QuantizeQ8_0(absl::Span<const float> values);
/// Quantizes float32 values to Q4_0 blocks exactly as `gguf.quants.quantize` does: per block of
/// 32, d = (the value of largest magnitude, the first of ties) / -8 and q = min(15, trunc(x / d
/// + 8.5)), in float32. `values.size()` must be a multiple of 32.
absl::StatusOr<std::vector<uint8_t>> QuantizeQ4_0(absl::Span<const float> values);

/// Quantizes float32 values to Q5_0 blocks as `gguf.quants.quantize` does: per block of 32,
/// d = (the value of largest magnitude, the first of ties) / -16, q = min(31, trunc(x / d + 16.5)).
absl::StatusOr<std::vector<uint8_t>> QuantizeQ5_0(absl::Span<const float> values);
/// Quantizes float32 values to Q4_K super-blocks of 256 as llama.cpp's quantize does without an
/// importance matrix (ggml's quantize_row_q4_K_ref, operation for operation in float32): per
/// group of 32 a weighted least-squares scale and min, rounded to 6 bits of the super-block's.
absl::StatusOr<std::vector<uint8_t>> QuantizeQ4_K(absl::Span<const float> values);
/// Quantizes float32 values to Q6_K super-blocks of 256 as llama.cpp's quantize does without an
/// importance matrix (ggml's quantize_row_q6_K_ref): per group of 16 a symmetric 6-bit fit, its
/// scale as an int8 of the super-block's.
absl::StatusOr<std::vector<uint8_t>> QuantizeQ6_K(absl::Span<const float> values);

/// The bytes of float32 `values` (row-major `shape`) in `type`: F32, F16, BF16 (rounded to
/// nearest even), Q8_0, Q4_0 or Q5_0 (as gguf.quants.quantize), Q4_K or Q6_K (as llama.cpp's
/// quantize). InvalidArgument when the shape's row is not whole blocks; Unimplemented for other
/// types.
absl::StatusOr<std::vector<uint8_t>> EncodeGgufTensor(GgmlType type, const std::vector<int64_t>& shape,
                                                      absl::Span<const float> values);

}  // namespace llmtrain::io
