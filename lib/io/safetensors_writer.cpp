// safetensors writer: the layout of the reference writer (docs/formats.md §1.3), written
// atomically.
#include <algorithm>
#include <numeric>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "llmtrain/core/atomic_file.h"
#include "llmtrain/core/status.h"
#include "llmtrain/io/safetensors.h"
#include "nlohmann/json.hpp"

namespace llmtrain::io {
namespace {

// Position of a dtype in the reference implementation's Dtype enum (safetensors tensor.rs:
// BOOL, F4, F6_E2M3, F6_E3M2, U8, I8, F8_E5M2, F8_E4M3, F8_E8M0, I16, U16, F16, BF16, I32, U32,
// F32, C64, F64, I64, U64), on which its writer sorts.
int ReferenceDtypeRank(Dtype dtype) {
  switch (dtype) {
    case Dtype::kBool: return 0;
    case Dtype::kU8: return 4;
    case Dtype::kI8: return 5;
    case Dtype::kF8E5M2: return 6;
    case Dtype::kF8E4M3: return 7;
    case Dtype::kI16: return 9;
    case Dtype::kU16: return 10;
    case Dtype::kF16: return 11;
    case Dtype::kBf16: return 12;
    case Dtype::kI32: return 13;
    case Dtype::kU32: return 14;
    case Dtype::kF32: return 15;
    case Dtype::kF64: return 17;
    case Dtype::kI64: return 18;
    case Dtype::kU64: return 19;
  }
  return 0;
}

std::string JsonString(const std::string& s) { return nlohmann::json(s).dump(); }

absl::Status CheckTensor(const TensorToWrite& t) {
  if (t.name.empty()) return absl::InvalidArgumentError("tensor with an empty name");
  if (t.name == "__metadata__") {
    return absl::InvalidArgumentError("\"__metadata__\" is reserved and cannot name a tensor");
  }
  uint64_t n_elems = 1;
  for (int64_t d : t.shape) {
    if (d < 0) {
      return absl::InvalidArgumentError(absl::StrCat("tensor \"", t.name, "\": negative dimension"));
    }
    n_elems *= static_cast<uint64_t>(d);
  }
  const uint64_t expected = n_elems * ElementBits(t.dtype) / 8;
  if (t.data.size() != expected) {
    return absl::InvalidArgumentError(absl::StrCat("tensor \"", t.name, "\": ", t.data.size(),
                                                   " bytes given, ", SafetensorsName(t.dtype),
                                                   " of this shape needs ", expected));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::string> BuildSafetensorsHeader(absl::Span<const TensorToWrite> tensors,
                                                   const std::map<std::string, std::string>& metadata,
                                                   std::vector<size_t>* order) {
  absl::flat_hash_set<std::string> seen;
  for (const TensorToWrite& t : tensors) {
    LLMTRAIN_RETURN_IF_ERROR(CheckTensor(t));
    if (!seen.insert(t.name).second) {
      return absl::InvalidArgumentError(absl::StrCat("tensor \"", t.name, "\" given twice"));
    }
  }
  order->resize(tensors.size());
  std::iota(order->begin(), order->end(), 0);
  // The reference writer's order: dtype descending in its enum order (which sorts by alignment
  // first), then name. Every tensor lands naturally aligned, and our offsets equal its offsets.
  std::sort(order->begin(), order->end(), [&](size_t a, size_t b) {
    const int ra = ReferenceDtypeRank(tensors[a].dtype), rb = ReferenceDtypeRank(tensors[b].dtype);
    return ra != rb ? ra > rb : tensors[a].name < tensors[b].name;
  });
  std::string json = "{";
  bool first = true;
  if (!metadata.empty()) {
    json += "\"__metadata__\":{";
    for (auto it = metadata.begin(); it != metadata.end(); ++it) {
      if (it != metadata.begin()) json += ",";
      absl::StrAppend(&json, JsonString(it->first), ":", JsonString(it->second));
    }
    json += "}";
    first = false;
  }
  uint64_t offset = 0;
  for (size_t i : *order) {
    const TensorToWrite& t = tensors[i];
    if (!first) json += ",";
    first = false;
    absl::StrAppend(&json, JsonString(t.name), ":{\"dtype\":\"", SafetensorsName(t.dtype),
                    "\",\"shape\":[", absl::StrJoin(t.shape, ","), "],\"data_offsets\":[", offset,
                    ",", offset + t.data.size(), "]}");
    offset += t.data.size();
  }
  json += "}";
  // Pad with spaces so the data buffer starts 8-aligned.
  json.append((8 - json.size() % 8) % 8, ' ');
  std::string header(8, '\0');
  uint64_t n = json.size();
  for (int i = 0; i < 8; ++i) header[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return header + json;
}

absl::Status WriteSafetensors(absl::string_view path, absl::Span<const TensorToWrite> tensors,
                              const std::map<std::string, std::string>& metadata) {
  std::vector<size_t> order;
  auto header = BuildSafetensorsHeader(tensors, metadata, &order);
  if (!header.ok()) return Annotate(header.status(), path);
  AtomicFile out;
  LLMTRAIN_RETURN_IF_ERROR(out.Open(path));
  LLMTRAIN_RETURN_IF_ERROR(out.Write(*header));
  for (size_t i : order) LLMTRAIN_RETURN_IF_ERROR(out.Write(tensors[i].data));
  return out.Commit();
}

absl::Status WriteShardedSafetensors(absl::string_view dir, absl::Span<const TensorToWrite> tensors,
                                     uint64_t max_shard_bytes,
                                     const std::map<std::string, std::string>& metadata) {
  // Greedy in the given order (transformers shards in state-dict order).
  std::vector<std::vector<TensorToWrite>> shards(1);
  uint64_t shard_bytes = 0, total_bytes = 0;
  for (const TensorToWrite& t : tensors) {
    if (!shards.back().empty() && shard_bytes + t.data.size() > max_shard_bytes) {
      shards.emplace_back();
      shard_bytes = 0;
    }
    shards.back().push_back(t);
    shard_bytes += t.data.size();
    total_bytes += t.data.size();
  }
  if (shards.size() == 1) {
    return WriteSafetensors(absl::StrCat(dir, "/model.safetensors"), tensors, metadata);
  }
  nlohmann::json index;
  index["metadata"]["total_size"] = total_bytes;
  index["weight_map"] = nlohmann::json::object();
  for (size_t s = 0; s < shards.size(); ++s) {
    const std::string name =
        absl::StrFormat("model-%05d-of-%05d.safetensors", s + 1, shards.size());
    LLMTRAIN_RETURN_IF_ERROR(WriteSafetensors(absl::StrCat(dir, "/", name), shards[s], metadata));
    for (const TensorToWrite& t : shards[s]) index["weight_map"][t.name] = name;
  }
  // The index goes last: a reader never sees an index whose shards are not all there.
  return WriteFileAtomically(absl::StrCat(dir, "/model.safetensors.index.json"),
                             index.dump(2) + "\n");
}

}  // namespace llmtrain::io
