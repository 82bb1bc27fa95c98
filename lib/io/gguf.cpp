// GGUF reader: docs/formats.md §2. A Cursor reads every field with a bounds check, so a truncated
// or lying file ends in a Status naming what was being read, never in a read past the mapping.
#include "llmtrain/io/gguf.h"

#include <cstring>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "llmtrain/core/status.h"

namespace llmtrain::io {
namespace {

constexpr uint32_t kGgufMagic = 0x46554747;  // "GGUF" read as u32 LE
constexpr uint64_t kMaxKeyBytes = 65535;
constexpr uint64_t kMaxStringBytes = uint64_t{1} << 30;
constexpr uint64_t kMaxNameBytes = 63;  // GGML_MAX_NAME 64 including the NUL
constexpr uint32_t kMaxDims = 4;

struct TypeRow {
  uint32_t id;
  GgmlTypeTraits traits;
};
// Block sizes as gguf-py's GGML_QUANT_SIZES lists them.
constexpr TypeRow kTypes[] = {
    {0, {"F32", 1, 4}},        {1, {"F16", 1, 2}},        {2, {"Q4_0", 32, 18}},
    {3, {"Q4_1", 32, 20}},     {6, {"Q5_0", 32, 22}},     {7, {"Q5_1", 32, 24}},
    {8, {"Q8_0", 32, 34}},     {9, {"Q8_1", 32, 40}},     {10, {"Q2_K", 256, 84}},
    {11, {"Q3_K", 256, 110}},  {12, {"Q4_K", 256, 144}},  {13, {"Q5_K", 256, 176}},
    {14, {"Q6_K", 256, 210}},  {15, {"Q8_K", 256, 292}},  {16, {"IQ2_XXS", 256, 66}},
    {17, {"IQ2_XS", 256, 74}}, {18, {"IQ3_XXS", 256, 98}}, {19, {"IQ1_S", 256, 50}},
    {20, {"IQ4_NL", 32, 18}},  {21, {"IQ3_S", 256, 110}}, {22, {"IQ2_S", 256, 82}},
    {23, {"IQ4_XS", 256, 136}}, {24, {"I8", 1, 1}},       {25, {"I16", 1, 2}},
    {26, {"I32", 1, 4}},       {27, {"I64", 1, 8}},       {28, {"F64", 1, 8}},
    {29, {"IQ1_M", 256, 56}},  {30, {"BF16", 1, 2}},      {34, {"TQ1_0", 256, 54}},
    {35, {"TQ2_0", 256, 66}},  {39, {"MXFP4", 32, 17}},   {40, {"NVFP4", 64, 36}},
    {41, {"Q1_0", 128, 18}},
};

constexpr absl::string_view kValueTypeNames[] = {"UINT8", "INT8",   "UINT16", "INT16", "UINT32",
                                                "INT32", "FLOAT32", "BOOL",  "STRING", "ARRAY",
                                                "UINT64", "INT64", "FLOAT64"};

int ScalarBytes(GgufValueType t) {
  switch (t) {
    case GgufValueType::kUint8: case GgufValueType::kInt8: case GgufValueType::kBool: return 1;
    case GgufValueType::kUint16: case GgufValueType::kInt16: return 2;
    case GgufValueType::kUint32: case GgufValueType::kInt32: case GgufValueType::kFloat32: return 4;
    case GgufValueType::kUint64: case GgufValueType::kInt64: case GgufValueType::kFloat64: return 8;
    default: return 0;  // string, array: variable
  }
}

class Cursor {
 public:
  Cursor(const std::string& path, absl::Span<const uint8_t> bytes) : path_(path), bytes_(bytes) {}
  uint64_t position() const { return pos_; }
  uint64_t remaining() const { return bytes_.size() - pos_; }

  absl::Status Need(uint64_t n, absl::string_view what) const {
    if (n > remaining()) {
      return absl::DataLossError(absl::StrCat(path_, ": ", what, ": needs ", n,
                                              " bytes at offset ", pos_, ", but the file has ",
                                              remaining(), " left (file truncated?)"));
    }
    return absl::OkStatus();
  }
  template <typename T>
  absl::StatusOr<T> Read(absl::string_view what) {
    LLMTRAIN_RETURN_IF_ERROR(Need(sizeof(T), what));
    T v;
    std::memcpy(&v, bytes_.data() + pos_, sizeof(T));  // GGUF is little-endian, as is x86/ARM
    pos_ += sizeof(T);
    return v;
  }
  absl::StatusOr<std::string> ReadString(absl::string_view what, uint64_t max_bytes) {
    LLMTRAIN_ASSIGN_OR_RETURN(uint64_t n, Read<uint64_t>(what));
    if (n > max_bytes) {
      return absl::DataLossError(absl::StrCat(path_, ": ", what, ": string length ", n,
                                              " exceeds the limit of ", max_bytes, " bytes"));
    }
    LLMTRAIN_RETURN_IF_ERROR(Need(n, what));
    std::string s(reinterpret_cast<const char*>(bytes_.data() + pos_), n);
    pos_ += n;
    return s;
  }

 private:
  const std::string& path_;
  absl::Span<const uint8_t> bytes_;
  uint64_t pos_ = 0;
};

absl::Status ReadScalar(Cursor& c, GgufValueType type, const std::string& what, GgufValue* out) {
  switch (type) {
    case GgufValueType::kUint8: { LLMTRAIN_ASSIGN_OR_RETURN(auto v, c.Read<uint8_t>(what)); out->scalar = uint64_t{v}; break; }
    case GgufValueType::kUint16: { LLMTRAIN_ASSIGN_OR_RETURN(auto v, c.Read<uint16_t>(what)); out->scalar = uint64_t{v}; break; }
    case GgufValueType::kUint32: { LLMTRAIN_ASSIGN_OR_RETURN(auto v, c.Read<uint32_t>(what)); out->scalar = uint64_t{v}; break; }
    case GgufValueType::kUint64: { LLMTRAIN_ASSIGN_OR_RETURN(auto v, c.Read<uint64_t>(what)); out->scalar = v; break; }
    case GgufValueType::kInt8: { LLMTRAIN_ASSIGN_OR_RETURN(auto v, c.Read<int8_t>(what)); out->scalar = int64_t{v}; break; }
    case GgufValueType::kInt16: { LLMTRAIN_ASSIGN_OR_RETURN(auto v, c.Read<int16_t>(what)); out->scalar = int64_t{v}; break; }
    case GgufValueType::kInt32: { LLMTRAIN_ASSIGN_OR_RETURN(auto v, c.Read<int32_t>(what)); out->scalar = int64_t{v}; break; }
    case GgufValueType::kInt64: { LLMTRAIN_ASSIGN_OR_RETURN(auto v, c.Read<int64_t>(what)); out->scalar = v; break; }
    case GgufValueType::kFloat32: { LLMTRAIN_ASSIGN_OR_RETURN(auto v, c.Read<float>(what)); out->scalar = double{v}; break; }
    case GgufValueType::kFloat64: { LLMTRAIN_ASSIGN_OR_RETURN(auto v, c.Read<double>(what)); out->scalar = v; break; }
    case GgufValueType::kBool: {
      LLMTRAIN_ASSIGN_OR_RETURN(auto v, c.Read<uint8_t>(what));
      if (v > 1) {
        return absl::DataLossError(absl::StrCat(what, ": a BOOL must be 0 or 1, found ", int{v}));
      }
      out->scalar = v == 1;
      break;
    }
    case GgufValueType::kString: {
      LLMTRAIN_ASSIGN_OR_RETURN(auto v, c.ReadString(what, kMaxStringBytes));
      out->scalar = std::move(v);
      break;
    }
    default:
      return absl::DataLossError(absl::StrCat(what, ": unexpected value type"));
  }
  return absl::OkStatus();
}

absl::Status ReadArray(Cursor& c, const std::string& where, const std::string& what,
                       GgufValue* out) {
  LLMTRAIN_ASSIGN_OR_RETURN(uint32_t elem_type, c.Read<uint32_t>(what));
  if (elem_type > 12) {
    return absl::DataLossError(absl::StrCat(where, ": ", what, ": unknown array element type ",
                                            elem_type));
  }
  out->array_type = static_cast<GgufValueType>(elem_type);
  if (out->array_type == GgufValueType::kArray) {
    return absl::DataLossError(absl::StrCat(where, ": ", what, ": arrays of arrays are not allowed"));
  }
  LLMTRAIN_ASSIGN_OR_RETURN(uint64_t count, c.Read<uint64_t>(what));
  // Every element takes at least its scalar size (8 bytes for a string's length), so a count the
  // rest of the file cannot hold is refused before anything is allocated.
  const uint64_t min_bytes = out->array_type == GgufValueType::kString ? 8 : ScalarBytes(out->array_type);
  if (count > c.remaining() / min_bytes) {
    return absl::DataLossError(absl::StrCat(where, ": ", what, ": array of ", count, " ",
                                            GgufValueTypeName(out->array_type), " needs at least ",
                                            count > UINT64_MAX / min_bytes ? UINT64_MAX : count * min_bytes,
                                            " bytes, but the file has ", c.remaining(), " left"));
  }
  const std::string element_what = absl::StrCat(where, ": ", what, " element");
  GgufValue element;
  for (uint64_t i = 0; i < count; ++i) {
    LLMTRAIN_RETURN_IF_ERROR(ReadScalar(c, out->array_type, element_what, &element));
    if (auto* s = std::get_if<std::string>(&element.scalar)) {
      out->strings.push_back(std::move(*s));
    } else if (auto* u = std::get_if<uint64_t>(&element.scalar)) {
      out->uints.push_back(*u);
    } else if (auto* n = std::get_if<int64_t>(&element.scalar)) {
      out->ints.push_back(*n);
    } else if (auto* f = std::get_if<double>(&element.scalar)) {
      out->floats.push_back(*f);
    } else {
      out->bools.push_back(std::get<bool>(element.scalar));
    }
  }
  return absl::OkStatus();
}

}  // namespace

std::optional<GgmlTypeTraits> GetGgmlTypeTraits(uint32_t type_id) {
  for (const TypeRow& row : kTypes) {
    if (row.id == type_id) return row.traits;
  }
  return std::nullopt;
}

absl::string_view GgmlTypeName(GgmlType type) {
  const auto traits = GetGgmlTypeTraits(static_cast<uint32_t>(type));
  return traits ? traits->name : absl::string_view("?");
}

absl::string_view GgufValueTypeName(GgufValueType type) {
  const auto i = static_cast<uint32_t>(type);
  return i < 13 ? kValueTypeNames[i] : absl::string_view("?");
}

size_t GgufValue::array_size() const {
  if (type != GgufValueType::kArray) return 0;
  return strings.size() + uints.size() + ints.size() + floats.size() + bools.size();
}

std::optional<int64_t> GgufValue::AsInt() const {
  if (type == GgufValueType::kArray) return std::nullopt;
  if (auto* u = std::get_if<uint64_t>(&scalar)) {
    if (*u <= static_cast<uint64_t>(INT64_MAX)) return static_cast<int64_t>(*u);
    return std::nullopt;
  }
  if (auto* n = std::get_if<int64_t>(&scalar)) return *n;
  return std::nullopt;
}

std::optional<double> GgufValue::AsDouble() const {
  if (auto* f = std::get_if<double>(&scalar); f && type != GgufValueType::kArray) return *f;
  if (auto i = AsInt()) return static_cast<double>(*i);
  return std::nullopt;
}

std::optional<bool> GgufValue::AsBool() const {
  if (auto* b = std::get_if<bool>(&scalar); b && type == GgufValueType::kBool) return *b;
  return std::nullopt;
}

const std::string* GgufValue::AsString() const {
  return type == GgufValueType::kString ? std::get_if<std::string>(&scalar) : nullptr;
}

int64_t GgufTensorInfo::n_elems() const {
  int64_t n = 1;
  for (int64_t d : ne) n *= d;
  return n;
}

absl::StatusOr<std::unique_ptr<GgufFile>> GgufFile::Open(absl::string_view path) {
  LLMTRAIN_ASSIGN_OR_RETURN(std::shared_ptr<const MappedFile> file, MappedFile::Open(path));
  return Parse(std::move(file));
}

absl::StatusOr<std::unique_ptr<GgufFile>> GgufFile::Parse(std::shared_ptr<const MappedFile> file) {
  const std::string& where = file->path();
  Cursor c(where, file->bytes());
  std::unique_ptr<GgufFile> result(new GgufFile());

  LLMTRAIN_ASSIGN_OR_RETURN(uint32_t magic, c.Read<uint32_t>("magic"));
  if (magic != kGgufMagic) {
    return absl::DataLossError(absl::StrCat(where, ": not a GGUF file (magic 0x",
                                            absl::Hex(magic, absl::kZeroPad8),
                                            ", expected 0x46554747 \"GGUF\")"));
  }
  LLMTRAIN_ASSIGN_OR_RETURN(result->version_, c.Read<uint32_t>("version"));
  if (result->version_ != 2 && result->version_ != 3) {
    if ((result->version_ & 0xffff) == 0) {
      return absl::DataLossError(absl::StrCat(where, ": version field 0x",
                                              absl::Hex(result->version_),
                                              " looks byte-swapped (a big-endian file?)"));
    }
    return absl::UnimplementedError(absl::StrCat(where, ": GGUF version ", result->version_,
                                                 " (this reader handles versions 2 and 3)"));
  }
  LLMTRAIN_ASSIGN_OR_RETURN(int64_t tensor_count, c.Read<int64_t>("tensor count"));
  LLMTRAIN_ASSIGN_OR_RETURN(int64_t kv_count, c.Read<int64_t>("metadata count"));
  // A key/value takes at least 8 (key length) + 1 (key) + 4 (type) + 1 bytes; a tensor info at
  // least 8 + 1 + 4 + 4 + 8. Counts the rest of the file cannot hold are lies.
  if (kv_count < 0 || static_cast<uint64_t>(kv_count) > c.remaining() / 14) {
    return absl::DataLossError(absl::StrCat(where, ": metadata count ", kv_count,
                                            " is impossible for the ", c.remaining(),
                                            " bytes that follow"));
  }
  if (tensor_count < 0 || static_cast<uint64_t>(tensor_count) > c.remaining() / 25) {
    return absl::DataLossError(absl::StrCat(where, ": tensor count ", tensor_count,
                                            " is impossible for the ", c.remaining(),
                                            " bytes that follow"));
  }

  for (int64_t i = 0; i < kv_count; ++i) {
    const std::string what = absl::StrCat("metadata key #", i);
    LLMTRAIN_ASSIGN_OR_RETURN(std::string key, c.ReadString(what, kMaxKeyBytes));
    if (key.empty()) return absl::DataLossError(absl::StrCat(where, ": ", what, " is empty"));
    if (result->metadata_index_.contains(key)) {
      return absl::DataLossError(absl::StrCat(where, ": duplicate metadata key \"", key, "\""));
    }
    const std::string key_what = absl::StrCat(where, ": metadata \"", key, "\"");
    LLMTRAIN_ASSIGN_OR_RETURN(uint32_t type_id, c.Read<uint32_t>(key_what));
    if (type_id > 12) {
      return absl::DataLossError(absl::StrCat(key_what, ": unknown value type ", type_id));
    }
    GgufValue value;
    value.type = static_cast<GgufValueType>(type_id);
    if (value.type == GgufValueType::kArray) {
      LLMTRAIN_RETURN_IF_ERROR(ReadArray(c, where, absl::StrCat("metadata \"", key, "\""), &value));
    } else {
      LLMTRAIN_RETURN_IF_ERROR(ReadScalar(c, value.type, key_what, &value));
    }
    result->metadata_index_[key] = result->metadata_.size();
    result->metadata_.emplace_back(std::move(key), std::move(value));
  }

  if (const GgufValue* a = result->FindMetadata("general.alignment")) {
    const auto* v = std::get_if<uint64_t>(&a->scalar);
    if (a->type != GgufValueType::kUint32 || v == nullptr || *v == 0 || (*v & (*v - 1)) != 0) {
      return absl::DataLossError(absl::StrCat(
          where, ": general.alignment must be a UINT32 power of two, found ",
          GgufValueTypeName(a->type), v ? absl::StrCat(" ", *v) : std::string()));
    }
    result->alignment_ = *v;
  }
  const uint64_t align = result->alignment_;

  uint64_t expected_offset = 0;
  for (int64_t i = 0; i < tensor_count; ++i) {
    GgufTensorInfo t;
    LLMTRAIN_ASSIGN_OR_RETURN(t.name, c.ReadString(absl::StrCat("tensor info #", i, " name"),
                                                   kMaxStringBytes));
    const std::string at = absl::StrCat(where, ": tensor \"", t.name, "\"");
    if (t.name.empty()) return absl::DataLossError(absl::StrCat(where, ": tensor #", i, " has an empty name"));
    if (t.name.size() > kMaxNameBytes) {
      return absl::DataLossError(absl::StrCat(at, ": name is ", t.name.size(),
                                              " bytes (ggml allows at most ", kMaxNameBytes, ")"));
    }
    if (result->tensor_index_.contains(t.name)) {
      return absl::DataLossError(absl::StrCat(at, ": duplicate tensor name"));
    }
    LLMTRAIN_ASSIGN_OR_RETURN(uint32_t n_dims, c.Read<uint32_t>(at));
    if (n_dims > kMaxDims) {
      return absl::DataLossError(absl::StrCat(at, ": ", n_dims, " dimensions (at most ", kMaxDims, ")"));
    }
    for (uint32_t d = 0; d < n_dims; ++d) {
      LLMTRAIN_ASSIGN_OR_RETURN(int64_t dim, c.Read<int64_t>(at));
      if (dim < 0) return absl::DataLossError(absl::StrCat(at, ": negative dimension ", dim));
      t.ne.push_back(dim);
    }
    t.shape.assign(t.ne.rbegin(), t.ne.rend());
    LLMTRAIN_ASSIGN_OR_RETURN(uint32_t type_id, c.Read<uint32_t>(at));
    const auto traits = GetGgmlTypeTraits(type_id);
    if (!traits) {
      return absl::UnimplementedError(absl::StrCat(at, ": unknown ggml type id ", type_id));
    }
    t.type = static_cast<GgmlType>(type_id);
    LLMTRAIN_ASSIGN_OR_RETURN(t.offset, c.Read<uint64_t>(at));

    const int64_t ne0 = t.ne.empty() ? 1 : t.ne[0];
    if (ne0 % traits->block_elems != 0) {
      return absl::DataLossError(absl::StrCat(at, ": row length ", ne0, " is not a multiple of the ",
                                              traits->name, " block size ", traits->block_elems));
    }
    int64_t n_elems = 1;
    for (int64_t d : t.ne) {
      if (d != 0 && n_elems > INT64_MAX / d) {
        return absl::DataLossError(absl::StrCat(at, ": element count overflows"));
      }
      n_elems *= d;
    }
    const uint64_t n_blocks = static_cast<uint64_t>(n_elems / traits->block_elems);
    if (n_blocks > UINT64_MAX / static_cast<uint64_t>(traits->block_bytes)) {
      return absl::DataLossError(absl::StrCat(at, ": byte size overflows"));
    }
    t.n_bytes = n_blocks * static_cast<uint64_t>(traits->block_bytes);
    if (t.offset % align != 0) {
      return absl::DataLossError(absl::StrCat(at, ": offset ", t.offset,
                                              " is not a multiple of the alignment ", align));
    }
    if (t.offset != expected_offset) {
      return absl::DataLossError(absl::StrCat(
          at, ": offset ", t.offset, " breaks the sequential layout (expected ", expected_offset,
          t.offset < expected_offset ? "; it overlaps the previous tensor)" : ")"));
    }
    const uint64_t padded = t.n_bytes + (align - t.n_bytes % align) % align;
    if (padded < t.n_bytes || expected_offset > UINT64_MAX - padded) {
      return absl::DataLossError(absl::StrCat(at, ": offsets overflow"));
    }
    expected_offset += padded;
    result->tensor_index_[t.name] = result->tensors_.size();
    result->tensors_.push_back(std::move(t));
  }

  const uint64_t info_end = c.position();
  result->data_start_ = info_end + (align - info_end % align) % align;
  const uint64_t file_bytes = file->size_bytes();
  for (const GgufTensorInfo& t : result->tensors_) {
    if (result->data_start_ > file_bytes || t.offset > file_bytes - result->data_start_ ||
        t.n_bytes > file_bytes - result->data_start_ - t.offset) {
      return absl::DataLossError(absl::StrCat(
          where, ": tensor \"", t.name, "\": data [", t.offset, ", ", t.offset + t.n_bytes,
          ") runs past the end of the file (data section has ",
          file_bytes > result->data_start_ ? file_bytes - result->data_start_ : 0,
          " bytes; file truncated?)"));
    }
  }
  result->file_ = std::move(file);
  return result;
}

const GgufValue* GgufFile::FindMetadata(absl::string_view key) const {
  const auto it = metadata_index_.find(key);
  return it == metadata_index_.end() ? nullptr : &metadata_[it->second].second;
}

const GgufTensorInfo* GgufFile::FindTensor(absl::string_view name) const {
  const auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

absl::Span<const uint8_t> GgufFile::Data(const GgufTensorInfo& tensor) const {
  return file_->bytes().subspan(data_start_ + tensor.offset, tensor.n_bytes);
}

}  // namespace llmtrain::io
