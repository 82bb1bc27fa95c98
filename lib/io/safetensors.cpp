// safetensors reader: docs/formats.md §1. Every check of §1.4 happens here, before any tensor
// byte is touched, so a reader of Data() can trust the offsets.
#include "llmtrain/io/safetensors.h"

#include <algorithm>
#include <cstring>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "io/json_checked.h"
#include "llmtrain/core/atomic_file.h"
#include "llmtrain/core/status.h"

namespace llmtrain::io {
namespace {

using nlohmann::json;

uint64_t LoadLittleEndian64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

// prod(shape) with overflow checking; false on overflow past int64.
bool CheckedElementCount(absl::Span<const int64_t> shape, int64_t* n) {
  int64_t count = 1;
  for (int64_t d : shape) {
    if (d < 0) return false;
    if (d != 0 && count > INT64_MAX / d) return false;
    count *= d;
  }
  *n = count;
  return true;
}

std::string ShapeString(absl::Span<const int64_t> shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

absl::StatusOr<TensorInfo> ParseTensorEntry(const std::string& where, const std::string& name,
                                            const json& entry) {
  const std::string at = absl::StrCat(where, ": tensor \"", name, "\"");
  if (name.empty()) return absl::DataLossError(absl::StrCat(where, ": empty tensor name"));
  if (!entry.is_object()) {
    return absl::DataLossError(absl::StrCat(at, ": expected an object with dtype, shape and "
                                                "data_offsets, found ",
                                            detail::Describe(entry)));
  }
  TensorInfo info;
  info.name = name;
  const auto dtype_it = entry.find("dtype");
  if (dtype_it == entry.end()) return absl::DataLossError(absl::StrCat(at, ": missing \"dtype\""));
  if (!dtype_it->is_string()) {
    return absl::DataLossError(
        absl::StrCat(at, ": \"dtype\" must be a string, found ", detail::Describe(*dtype_it)));
  }
  auto dtype = DtypeFromSafetensorsName(dtype_it->get_ref<const std::string&>());
  if (!dtype.ok()) return absl::DataLossError(absl::StrCat(at, ": ", dtype.status().message()));
  info.dtype = *dtype;

  const auto shape_it = entry.find("shape");
  if (shape_it == entry.end()) return absl::DataLossError(absl::StrCat(at, ": missing \"shape\""));
  if (!shape_it->is_array()) {
    return absl::DataLossError(
        absl::StrCat(at, ": \"shape\" must be an array, found ", detail::Describe(*shape_it)));
  }
  for (const json& d : *shape_it) {
    LLMTRAIN_ASSIGN_OR_RETURN(uint64_t dim, detail::GetUint64(absl::StrCat(at, ": shape"), d));
    if (dim > static_cast<uint64_t>(INT64_MAX)) {
      return absl::DataLossError(absl::StrCat(at, ": shape dimension ", dim, " is too large"));
    }
    info.shape.push_back(static_cast<int64_t>(dim));
  }

  const auto offsets_it = entry.find("data_offsets");
  if (offsets_it == entry.end()) {
    return absl::DataLossError(absl::StrCat(at, ": missing \"data_offsets\""));
  }
  if (!offsets_it->is_array() || offsets_it->size() != 2) {
    return absl::DataLossError(absl::StrCat(at, ": \"data_offsets\" must be [begin, end], found ",
                                            offsets_it->dump()));
  }
  LLMTRAIN_ASSIGN_OR_RETURN(info.begin,
                            detail::GetUint64(absl::StrCat(at, ": data_offsets[0]"), (*offsets_it)[0]));
  LLMTRAIN_ASSIGN_OR_RETURN(info.end,
                            detail::GetUint64(absl::StrCat(at, ": data_offsets[1]"), (*offsets_it)[1]));
  if (info.end < info.begin) {
    return absl::DataLossError(absl::StrCat(at, ": data_offsets [", info.begin, ", ", info.end,
                                            ") end before they begin"));
  }
  int64_t n_elems = 0;
  if (!CheckedElementCount(info.shape, &n_elems) ||
      static_cast<uint64_t>(n_elems) > UINT64_MAX / static_cast<uint64_t>(ElementBits(info.dtype))) {
    return absl::DataLossError(
        absl::StrCat(at, ": element count of shape ", ShapeString(info.shape), " overflows"));
  }
  const uint64_t n_bits = static_cast<uint64_t>(n_elems) * ElementBits(info.dtype);
  if (n_bits % 8 != 0) {
    return absl::DataLossError(absl::StrCat(at, ": ", n_elems, " elements of ",
                                            SafetensorsName(info.dtype),
                                            " do not fill whole bytes"));
  }
  if (info.end - info.begin != n_bits / 8) {
    return absl::DataLossError(absl::StrCat(
        at, ": data_offsets [", info.begin, ", ", info.end, ") hold ", info.end - info.begin,
        " bytes, but ", SafetensorsName(info.dtype), " ", ShapeString(info.shape), " needs ",
        n_bits / 8));
  }
  return info;
}

}  // namespace

int64_t TensorInfo::n_elems() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(absl::string_view path) {
  LLMTRAIN_ASSIGN_OR_RETURN(std::shared_ptr<const MappedFile> file, MappedFile::Open(path));
  return Parse(std::move(file));
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Parse(
    std::shared_ptr<const MappedFile> file) {
  const std::string& where = file->path();
  const absl::Span<const uint8_t> bytes = file->bytes();
  // Rule 1: the 8-byte header length.
  if (bytes.size() < 8) {
    return absl::DataLossError(absl::StrCat(where, ": header too small: expected an 8-byte header "
                                                   "length, found a ",
                                            bytes.size(), "-byte file"));
  }
  // Rule 2: the header fits, and is not absurdly large.
  const uint64_t header_bytes = LoadLittleEndian64(bytes.data());
  if (header_bytes > kSafetensorsMaxHeaderBytes) {
    return absl::DataLossError(absl::StrCat(where, ": header too large: ", header_bytes,
                                            " bytes (the limit is ", kSafetensorsMaxHeaderBytes,
                                            ")"));
  }
  if (header_bytes > bytes.size() - 8) {
    return absl::DataLossError(absl::StrCat(where, ": header length ", header_bytes,
                                            " runs past the ", bytes.size() - 8,
                                            " bytes that follow it (file truncated?)"));
  }
  const absl::string_view header_text(reinterpret_cast<const char*>(bytes.data() + 8),
                                     header_bytes);
  // Rule 3: UTF-8 JSON object, no duplicate keys, first byte '{'.
  if (header_text.empty() || header_text[0] != '{') {
    return absl::DataLossError(absl::StrCat(where, ": header must start with '{'"));
  }
  LLMTRAIN_ASSIGN_OR_RETURN(json header,
                            detail::ParseJson(absl::StrCat(where, ": header"), header_text));
  if (!header.is_object()) {
    return absl::DataLossError(absl::StrCat(where, ": header is not a JSON object"));
  }

  std::unique_ptr<SafetensorsFile> result(new SafetensorsFile());
  result->data_start_ = 8 + header_bytes;
  for (auto it = header.begin(); it != header.end(); ++it) {
    if (it.key() == "__metadata__") {
      if (!it->is_object()) {
        return absl::DataLossError(absl::StrCat(where, ": __metadata__ must be an object, found ",
                                                detail::Describe(*it)));
      }
      for (auto m = it->begin(); m != it->end(); ++m) {
        if (!m->is_string()) {
          return absl::DataLossError(absl::StrCat(where, ": __metadata__ \"", m.key(),
                                                  "\" must be a string, found ",
                                                  detail::Describe(*m)));
        }
        result->metadata_[m.key()] = m->get<std::string>();
      }
      continue;
    }
    LLMTRAIN_ASSIGN_OR_RETURN(TensorInfo info, ParseTensorEntry(where, it.key(), *it));
    result->tensors_.push_back(std::move(info));
  }
  // Rule 4: sorted by offsets, each tensor starts where the previous one ended.
  std::sort(result->tensors_.begin(), result->tensors_.end(),
            [](const TensorInfo& a, const TensorInfo& b) {
              return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
            });
  uint64_t expected_begin = 0;
  const TensorInfo* previous = nullptr;
  for (const TensorInfo& t : result->tensors_) {
    if (t.begin != expected_begin) {
      if (t.begin < expected_begin) {
        return absl::DataLossError(absl::StrCat(
            where, ": tensor \"", t.name, "\": data_offsets [", t.begin, ", ", t.end,
            ") overlap tensor \"", previous->name, "\" [", previous->begin, ", ", previous->end,
            ")"));
      }
      return absl::DataLossError(absl::StrCat(where, ": tensor \"", t.name, "\": data_offsets [",
                                              t.begin, ", ", t.end, ") leave a gap: expected ",
                                              "it to begin at ", expected_begin));
    }
    expected_begin = t.end;
    previous = &t;
  }
  // Rule 6: the buffer ends exactly at the end of the file.
  const uint64_t buffer_bytes = bytes.size() - result->data_start_;
  if (expected_begin != buffer_bytes) {
    if (expected_begin > buffer_bytes) {
      return absl::DataLossError(absl::StrCat(
          where, ": tensor \"", previous->name, "\": data ends at byte ", expected_begin,
          " of the data buffer, but the file holds only ", buffer_bytes, " (file truncated?)"));
    }
    return absl::DataLossError(absl::StrCat(where, ": ", buffer_bytes - expected_begin,
                                            " bytes after the last tensor (the data buffer must "
                                            "end at the end of the file)"));
  }
  for (size_t i = 0; i < result->tensors_.size(); ++i) {
    result->by_name_[result->tensors_[i].name] = i;
  }
  result->file_ = std::move(file);
  return result;
}

const TensorInfo* SafetensorsFile::Find(absl::string_view name) const {
  const auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : &tensors_[it->second];
}

absl::Span<const uint8_t> SafetensorsFile::Data(const TensorInfo& tensor) const {
  return file_->bytes().subspan(data_start_ + tensor.begin, tensor.n_bytes());
}

// --- sharded checkpoints ---------------------------------------------------------------------

namespace {

std::string Dirname(const std::string& path) {
  const size_t slash = path.rfind('/');
  return slash == std::string::npos ? "." : path.substr(0, slash);
}

}  // namespace

absl::StatusOr<std::unique_ptr<Checkpoint>> Checkpoint::Open(absl::string_view path_view) {
  std::string path(path_view);
  auto checkpoint = std::make_unique<Checkpoint>();
  if (IsDirectory(path)) {
    const std::string index = absl::StrCat(path, "/model.safetensors.index.json");
    const std::string single = absl::StrCat(path, "/model.safetensors");
    if (IsRegularFile(index)) {
      path = index;
    } else if (IsRegularFile(single)) {
      path = single;
    } else {
      return absl::NotFoundError(absl::StrCat(
          path_view, ": no model.safetensors or model.safetensors.index.json in this folder"));
    }
  }
  if (!absl::EndsWith(path, ".json")) {
    LLMTRAIN_ASSIGN_OR_RETURN(auto file, SafetensorsFile::Open(path));
    for (const TensorInfo& t : file->tensors()) checkpoint->by_name_[t.name] = {0, &t};
    checkpoint->shards_.push_back(std::move(file));
    return checkpoint;
  }

  checkpoint->index_path_ = path;
  LLMTRAIN_ASSIGN_OR_RETURN(std::string text, ReadFileToString(path));
  LLMTRAIN_ASSIGN_OR_RETURN(json index, detail::ParseJson(path, text));
  if (!index.is_object()) return absl::DataLossError(absl::StrCat(path, ": not a JSON object"));
  if (auto meta = index.find("metadata"); meta != index.end() && meta->is_object()) {
    for (auto it = meta->begin(); it != meta->end(); ++it) {
      checkpoint->index_metadata_[it.key()] = it->dump();
    }
  }
  const auto weight_map = index.find("weight_map");
  if (weight_map == index.end() || !weight_map->is_object()) {
    return absl::DataLossError(
        absl::StrCat(path, ": expected \"weight_map\": {tensor name: shard file}"));
  }
  // Shard names are plain file names in the index's folder: refuse paths, so an index cannot
  // make us read /etc/passwd or ../../secret.
  std::map<std::string, size_t> shard_ids;
  std::vector<std::pair<std::string, std::string>> listed;  // tensor, shard
  for (auto it = weight_map->begin(); it != weight_map->end(); ++it) {
    if (!it->is_string()) {
      return absl::DataLossError(absl::StrCat(path, ": weight_map \"", it.key(),
                                              "\": expected a shard file name, found ",
                                              detail::Describe(*it)));
    }
    const std::string shard = it->get<std::string>();
    if (shard.empty() || absl::StrContains(shard, "/") || shard == "." || shard == "..") {
      return absl::DataLossError(absl::StrCat(path, ": weight_map \"", it.key(),
                                              "\": shard \"", shard,
                                              "\" must be a file name in the same folder"));
    }
    shard_ids.emplace(shard, 0);
    listed.emplace_back(it.key(), shard);
  }
  const std::string dir = Dirname(path);
  for (auto& [shard, id] : shard_ids) {
    id = checkpoint->shards_.size();
    auto file = SafetensorsFile::Open(absl::StrCat(dir, "/", shard));
    if (!file.ok()) return Annotate(file.status(), absl::StrCat(path, ": shard ", shard));
    checkpoint->shards_.push_back(*std::move(file));
  }
  for (const auto& [tensor, shard] : listed) {
    const size_t id = shard_ids[shard];
    const TensorInfo* info = checkpoint->shards_[id]->Find(tensor);
    if (info == nullptr) {
      return absl::DataLossError(absl::StrCat(path, ": weight_map puts tensor \"", tensor,
                                              "\" in ", shard, ", which does not hold it"));
    }
    checkpoint->by_name_[tensor] = {id, info};
  }
  // Every tensor in a shard must be listed: nothing is loaded that the index does not name,
  // and nothing is dropped silently.
  for (const auto& shard : checkpoint->shards_) {
    for (const TensorInfo& t : shard->tensors()) {
      const auto it = checkpoint->by_name_.find(t.name);
      if (it == checkpoint->by_name_.end()) {
        return absl::DataLossError(absl::StrCat(path, ": ", shard->path(), " holds tensor \"",
                                                t.name, "\", which weight_map does not list"));
      }
      if (it->second.second != &t) {
        return absl::DataLossError(absl::StrCat(path, ": tensor \"", t.name,
                                                "\" is stored in more than one shard"));
      }
    }
  }
  return checkpoint;
}

std::vector<std::string> Checkpoint::Names() const {
  std::vector<std::string> names;
  names.reserve(by_name_.size());
  for (const auto& [name, unused] : by_name_) names.push_back(name);
  std::sort(names.begin(), names.end());
  return names;
}

absl::StatusOr<std::pair<const SafetensorsFile*, const TensorInfo*>> Checkpoint::Find(
    absl::string_view name) const {
  const auto it = by_name_.find(name);
  if (it == by_name_.end()) {
    return absl::NotFoundError(absl::StrCat(
        index_path_.empty() ? shards_.front()->path() : index_path_, ": no tensor \"", name, "\""));
  }
  return std::make_pair(shards_[it->second.first].get(), it->second.second);
}

}  // namespace llmtrain::io
