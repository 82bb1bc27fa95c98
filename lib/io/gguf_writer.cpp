// GGUF v3 writer: the layout GGUFWriter (gguf-py) produces, so its reader loads our files as
// they are: header, key/values in insertion order, tensor infos with dims innermost first,
// padding to the alignment, then each tensor's bytes padded to the alignment.
#include <cstring>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "core/half.h"
#include "llmtrain/core/atomic_file.h"
#include "llmtrain/core/status.h"
#include "llmtrain/io/gguf.h"

namespace llmtrain::io {
namespace {

template <typename T>
void Put(std::string* out, T v) {
  char buf[sizeof(T)];
  std::memcpy(buf, &v, sizeof(T));
  out->append(buf, sizeof(T));
}

void PutString(std::string* out, const std::string& s) {
  Put<uint64_t>(out, s.size());
  out->append(s);
}

void PutScalar(std::string* out, GgufValueType type, const GgufValue& v, size_t i, bool array) {
  auto u = [&] { return array ? v.uints[i] : std::get<uint64_t>(v.scalar); };
  auto n = [&] { return array ? v.ints[i] : std::get<int64_t>(v.scalar); };
  auto f = [&] { return array ? v.floats[i] : std::get<double>(v.scalar); };
  switch (type) {
    case GgufValueType::kUint8: Put<uint8_t>(out, static_cast<uint8_t>(u())); break;
    case GgufValueType::kUint16: Put<uint16_t>(out, static_cast<uint16_t>(u())); break;
    case GgufValueType::kUint32: Put<uint32_t>(out, static_cast<uint32_t>(u())); break;
    case GgufValueType::kUint64: Put<uint64_t>(out, u()); break;
    case GgufValueType::kInt8: Put<int8_t>(out, static_cast<int8_t>(n())); break;
    case GgufValueType::kInt16: Put<int16_t>(out, static_cast<int16_t>(n())); break;
    case GgufValueType::kInt32: Put<int32_t>(out, static_cast<int32_t>(n())); break;
    case GgufValueType::kInt64: Put<int64_t>(out, n()); break;
    case GgufValueType::kFloat32: Put<float>(out, static_cast<float>(f())); break;
    case GgufValueType::kFloat64: Put<double>(out, f()); break;
    case GgufValueType::kBool:
      Put<uint8_t>(out, (array ? v.bools[i] : std::get<bool>(v.scalar)) ? 1 : 0);
      break;
    case GgufValueType::kString:
      PutString(out, array ? v.strings[i] : std::get<std::string>(v.scalar));
      break;
    case GgufValueType::kArray:
      break;  // nested arrays are rejected before we get here
  }
}

}  // namespace

GgufWriter::GgufWriter(uint64_t alignment) : alignment_(alignment) {
  if (alignment_ != 32) {
    GgufValue v;
    v.type = GgufValueType::kUint32;
    v.scalar = alignment_;
    metadata_.emplace_back("general.alignment", std::move(v));
  }
}

void GgufWriter::Add(std::string key, GgufValue value) {
  metadata_.emplace_back(std::move(key), std::move(value));
}

void GgufWriter::AddString(std::string key, std::string value) {
  GgufValue v;
  v.type = GgufValueType::kString;
  v.scalar = std::move(value);
  Add(std::move(key), std::move(v));
}

void GgufWriter::AddUint32(std::string key, uint32_t value) {
  GgufValue v;
  v.type = GgufValueType::kUint32;
  v.scalar = uint64_t{value};
  Add(std::move(key), std::move(v));
}

void GgufWriter::AddFloat32(std::string key, float value) {
  GgufValue v;
  v.type = GgufValueType::kFloat32;
  v.scalar = double{value};
  Add(std::move(key), std::move(v));
}

void GgufWriter::AddBool(std::string key, bool value) {
  GgufValue v;
  v.type = GgufValueType::kBool;
  v.scalar = value;
  Add(std::move(key), std::move(v));
}

absl::StatusOr<std::vector<uint8_t>> EncodeGgufTensor(GgmlType type, const std::vector<int64_t>& shape,
                                                      absl::Span<const float> values) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  if (n != static_cast<int64_t>(values.size())) {
    return absl::InvalidArgumentError(absl::StrCat(values.size(), " values for a shape of ", n, " elements"));
  }
  std::vector<uint8_t> bytes;
  switch (type) {
    case GgmlType::kF32:
      bytes.resize(values.size() * 4);
      std::memcpy(bytes.data(), values.data(), bytes.size());
      break;
    case GgmlType::kF16:
    case GgmlType::kBF16: {
      bytes.resize(values.size() * 2);
      for (size_t i = 0; i < values.size(); ++i) {
        const uint16_t h = type == GgmlType::kF16 ? detail::FloatToF16(values[i])
                                                  : detail::FloatToBf16(values[i]);
        std::memcpy(bytes.data() + 2 * i, &h, 2);
      }
      break;
    }
    case GgmlType::kQ8_0:
    case GgmlType::kQ4_0:
    case GgmlType::kQ5_0:
    case GgmlType::kQ4_K:
    case GgmlType::kQ6_K: {
      const int64_t block = type == GgmlType::kQ4_K || type == GgmlType::kQ6_K ? 256 : 32;
      if (!shape.empty() && shape.back() % block != 0) {
        return absl::InvalidArgumentError(absl::StrCat(GgmlTypeName(type), " needs a row length that is a multiple of ",
                                                       block, ", found ", shape.back()));
      }
      auto q = type == GgmlType::kQ8_0   ? QuantizeQ8_0(values)
               : type == GgmlType::kQ4_0 ? QuantizeQ4_0(values)
               : type == GgmlType::kQ5_0 ? QuantizeQ5_0(values)
               : type == GgmlType::kQ4_K ? QuantizeQ4_K(values)
                                         : QuantizeQ6_K(values);
      if (!q.ok()) return q.status();
      bytes = *std::move(q);
      break;
    }
    default:
      return absl::UnimplementedError(absl::StrCat("writing ", GgmlTypeName(type),
                                                   " from floats (F32, F16, BF16, Q8_0, Q4_0, Q5_0, Q4_K and Q6_K "
                                                   "are supported; use AddRawTensor for others)"));
  }
  return bytes;
}

absl::Status GgufWriter::AddTensor(std::string name, GgmlType type, std::vector<int64_t> shape,
                                   absl::Span<const float> values) {
  auto bytes = EncodeGgufTensor(type, shape, values);
  if (!bytes.ok()) return Annotate(bytes.status(), absl::StrCat("tensor \"", name, "\""));
  return AddRawTensor(std::move(name), type, std::move(shape), *std::move(bytes));
}

absl::Status GgufWriter::AddTensorFrom(std::string name, GgmlType type, std::vector<int64_t> shape,
                                       std::function<absl::StatusOr<std::vector<uint8_t>>()> produce) {
  LLMTRAIN_RETURN_IF_ERROR(CheckTensor(name, type, shape, std::nullopt));
  tensors_.push_back({std::move(name), type, std::move(shape), {}, std::move(produce)});
  return absl::OkStatus();
}

absl::Status GgufWriter::AddRawTensor(std::string name, GgmlType type, std::vector<int64_t> shape,
                                      std::vector<uint8_t> bytes) {
  LLMTRAIN_RETURN_IF_ERROR(CheckTensor(name, type, shape, bytes.size()));
  tensors_.push_back({std::move(name), type, std::move(shape), std::move(bytes), nullptr});
  return absl::OkStatus();
}

uint64_t GgufWriter::TensorBytes(GgmlType type, const std::vector<int64_t>& shape) {
  const auto traits = GetGgmlTypeTraits(static_cast<uint32_t>(type));
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return traits ? static_cast<uint64_t>(n / traits->block_elems * traits->block_bytes) : 0;
}

absl::Status GgufWriter::CheckTensor(const std::string& name, GgmlType type, const std::vector<int64_t>& shape,
                                     std::optional<size_t> n_bytes) const {
  const auto traits = GetGgmlTypeTraits(static_cast<uint32_t>(type));
  if (!traits) return absl::InvalidArgumentError(absl::StrCat("tensor \"", name, "\": unknown type"));
  if (shape.size() > 4) {
    return absl::InvalidArgumentError(absl::StrCat("tensor \"", name, "\": more than 4 dimensions"));
  }
  if (name.empty() || name.size() > 63) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor \"", name, "\": a GGUF tensor name must have 1 to 63 bytes"));
  }
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  const int64_t inner = shape.empty() ? 1 : shape.back();
  if (inner % traits->block_elems != 0) {
    return absl::InvalidArgumentError(absl::StrCat("tensor \"", name, "\": a row of ", inner, " elements is not whole ",
                                                   traits->name, " blocks of ", traits->block_elems));
  }
  if (n_bytes && static_cast<int64_t>(*n_bytes) != n / traits->block_elems * traits->block_bytes) {
    return absl::InvalidArgumentError(absl::StrCat("tensor \"", name, "\": ", *n_bytes,
                                                   " bytes do not form whole ", traits->name,
                                                   " blocks of this shape"));
  }
  for (const PendingTensor& t : tensors_) {
    if (t.name == name) return absl::InvalidArgumentError(absl::StrCat("tensor \"", name, "\" added twice"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> GgufWriter::SerializeHeader() const {
  absl::flat_hash_set<std::string> keys;
  std::string out;
  Put<uint32_t>(&out, 0x46554747);
  Put<uint32_t>(&out, 3);
  Put<uint64_t>(&out, tensors_.size());
  Put<uint64_t>(&out, metadata_.size());
  for (const auto& [key, value] : metadata_) {
    if (!keys.insert(key).second) {
      return absl::InvalidArgumentError(absl::StrCat("metadata key \"", key, "\" added twice"));
    }
    PutString(&out, key);
    Put<uint32_t>(&out, static_cast<uint32_t>(value.type));
    if (value.type == GgufValueType::kArray) {
      if (value.array_type == GgufValueType::kArray) {
        return absl::InvalidArgumentError(absl::StrCat("metadata \"", key, "\": nested array"));
      }
      Put<uint32_t>(&out, static_cast<uint32_t>(value.array_type));
      Put<uint64_t>(&out, value.array_size());
      for (size_t i = 0; i < value.array_size(); ++i) PutScalar(&out, value.array_type, value, i, true);
    } else {
      PutScalar(&out, value.type, value, 0, false);
    }
  }
  uint64_t offset = 0;
  for (const PendingTensor& t : tensors_) {
    PutString(&out, t.name);
    Put<uint32_t>(&out, static_cast<uint32_t>(t.shape.size()));
    for (auto d = t.shape.rbegin(); d != t.shape.rend(); ++d) Put<uint64_t>(&out, *d);
    Put<uint32_t>(&out, static_cast<uint32_t>(t.type));
    Put<uint64_t>(&out, offset);
    const uint64_t n = TensorBytes(t.type, t.shape);
    offset += n + Pad(n);
  }
  out.append(Pad(out.size()), '\0');
  return out;
}

// Each tensor's bytes in turn (a producer's made now), checked against its info, then padding.
absl::Status GgufWriter::ForEachTensorData(const std::function<absl::Status(absl::string_view)>& sink) const {
  for (const PendingTensor& t : tensors_) {
    std::vector<uint8_t> made;
    const std::vector<uint8_t>* bytes = &t.bytes;
    if (t.produce) {
      auto produced = t.produce();
      if (!produced.ok()) return Annotate(produced.status(), absl::StrCat("tensor \"", t.name, "\""));
      made = *std::move(produced);
      bytes = &made;
    }
    const uint64_t n = TensorBytes(t.type, t.shape);
    if (bytes->size() != n) {
      return absl::InternalError(absl::StrCat("tensor \"", t.name, "\": ", bytes->size(), " bytes made, ", n, " expected"));
    }
    LLMTRAIN_RETURN_IF_ERROR(sink(absl::string_view(reinterpret_cast<const char*>(bytes->data()), bytes->size())));
    LLMTRAIN_RETURN_IF_ERROR(sink(std::string(Pad(n), '\0')));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> GgufWriter::Serialize() const {
  LLMTRAIN_ASSIGN_OR_RETURN(std::string out, SerializeHeader());
  LLMTRAIN_RETURN_IF_ERROR(ForEachTensorData([&](absl::string_view bytes) {
    out.append(bytes.data(), bytes.size());
    return absl::OkStatus();
  }));
  return out;
}

absl::Status GgufWriter::Write(absl::string_view path) const {
  auto header = SerializeHeader();
  if (!header.ok()) return Annotate(header.status(), path);
  AtomicFile file;
  LLMTRAIN_RETURN_IF_ERROR(file.Open(path));
  LLMTRAIN_RETURN_IF_ERROR(file.Write(*header));
  if (absl::Status s = ForEachTensorData([&](absl::string_view bytes) { return file.Write(bytes); }); !s.ok()) {
    return Annotate(s, path);
  }
  return file.Commit();
}

}  // namespace llmtrain::io
