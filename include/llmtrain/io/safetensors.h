// safetensors: read (memory-mapped, lazy per tensor, sharded checkpoints) and write.
//
// Format (docs/formats.md §1): u64 LE header length N, an N-byte JSON header, then the data
// buffer. The reader checks every rule the reference implementation checks, plus a few more
// (§1.4), and each error names the file, the tensor and the rule:
//   model.safetensors: tensor "lm_head.weight": data_offsets [0, 96) hold 96 bytes, but F32
//   [4, 8] needs 128
//
//   LLMTRAIN_ASSIGN_OR_RETURN(auto file, io::SafetensorsFile::Open("model.safetensors"));
//   for (const io::TensorInfo& t : file->tensors()) { absl::Span<const uint8_t> b = file->Data(t); }
//
//   LLMTRAIN_ASSIGN_OR_RETURN(auto ckpt, io::Checkpoint::Open("path/to/model_dir"));  // sharded ok
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include "absl/strings/string_view.h"
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "llmtrain/core/dtype.h"
#include "llmtrain/io/mapped_file.h"

namespace llmtrain::io {

/// The largest header the reference reader accepts (safetensors MAX_HEADER_SIZE).
inline constexpr uint64_t kSafetensorsMaxHeaderBytes = 100'000'000;

/// One tensor of a safetensors file.
struct TensorInfo {
  std::string name;
  Dtype dtype = Dtype::kF32;
  std::vector<int64_t> shape;  ///< row-major (PyTorch order); empty = 0-d scalar
  uint64_t begin = 0;          ///< byte offset in the data buffer (after the header)
  uint64_t end = 0;            ///< exclusive
  int64_t n_elems() const;
  uint64_t n_bytes() const { return end - begin; }
};

/// One parsed, validated safetensors file. Tensor bytes are read lazily from the mapping.
class SafetensorsFile {
 public:
  /// Maps and validates `path`. DataLoss for a malformed file, NotFound if it does not exist.
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(absl::string_view path);
  /// Validates bytes that are already in memory (tests, fuzzers). `name` is used in messages.
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Parse(
      std::shared_ptr<const MappedFile> file);

  const std::string& path() const { return file_->path(); }
  /// Tensors in data-offset order.
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  /// The `__metadata__` map (empty if absent).
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  /// The tensor called `name`, or nullptr.
  const TensorInfo* Find(absl::string_view name) const;
  /// The raw little-endian bytes of `tensor` (a view into the mapping; no copy).
  absl::Span<const uint8_t> Data(const TensorInfo& tensor) const;
  /// Where the data buffer starts in the file (8 + header length).
  uint64_t data_start() const { return data_start_; }
  /// The mapping, for callers that keep tensor views alive beyond this object.
  const std::shared_ptr<const MappedFile>& mapping() const { return file_; }

 private:
  SafetensorsFile() = default;
  std::shared_ptr<const MappedFile> file_;
  uint64_t data_start_ = 0;
  std::vector<TensorInfo> tensors_;
  absl::flat_hash_map<std::string, size_t> by_name_;
  std::map<std::string, std::string> metadata_;
};

/// A checkpoint: one safetensors file, or shards listed by a `model.safetensors.index.json`.
/// Each tensor lives in exactly one shard; shards are opened (mapped and validated) on Open.
class Checkpoint {
 public:
  /// `path` is a .safetensors file, an `*.safetensors.index.json`, or a folder holding either
  /// `model.safetensors` or `model.safetensors.index.json`.
  static absl::StatusOr<std::unique_ptr<Checkpoint>> Open(absl::string_view path);

  /// Every tensor name, sorted.
  std::vector<std::string> Names() const;
  /// The shard and tensor info of `name`; NotFound naming the tensor and the checkpoint.
  absl::StatusOr<std::pair<const SafetensorsFile*, const TensorInfo*>> Find(
      absl::string_view name) const;
  const std::vector<std::unique_ptr<SafetensorsFile>>& shards() const { return shards_; }
  /// The index file (empty for a single file).
  const std::string& index_path() const { return index_path_; }
  /// The index's "metadata" object as key → JSON text (empty for a single file).
  const std::map<std::string, std::string>& index_metadata() const { return index_metadata_; }

 private:
  std::string index_path_;
  std::vector<std::unique_ptr<SafetensorsFile>> shards_;
  absl::flat_hash_map<std::string, std::pair<size_t, const TensorInfo*>> by_name_;
  std::map<std::string, std::string> index_metadata_;
};

/// A tensor to write: bytes must hold exactly prod(shape) elements of `dtype`, little-endian.
struct TensorToWrite {
  std::string name;
  Dtype dtype = Dtype::kF32;
  std::vector<int64_t> shape;
  absl::Span<const uint8_t> data;
};

/// Builds the header (u64 length + JSON, padded with spaces to a multiple of 8) and the data
/// order exactly as the reference writer does: tensors sorted by dtype (descending, in the
/// reference's enum order, which puts larger alignments first), then by name. Only the sizes of
/// the `data` spans are read. Returns the header bytes; `order` receives indices into `tensors` in data order.
absl::StatusOr<std::string> BuildSafetensorsHeader(absl::Span<const TensorToWrite> tensors,
                                                   const std::map<std::string, std::string>& metadata,
                                                   std::vector<size_t>* order);

/// Writes one safetensors file atomically. InvalidArgument names a tensor whose byte count does
/// not match its dtype and shape, or a duplicate name.
absl::Status WriteSafetensors(absl::string_view path, absl::Span<const TensorToWrite> tensors,
                              const std::map<std::string, std::string>& metadata = {});

/// Writes a sharded checkpoint into folder `dir`: `model-0000i-of-0000n.safetensors` shards of at
/// most `max_shard_bytes` of tensor data each (a bigger tensor gets a shard of its own), plus
/// `model.safetensors.index.json` with total_size and weight_map, as transformers writes them.
/// With one shard only, writes `model.safetensors` and no index.
absl::Status WriteShardedSafetensors(absl::string_view dir, absl::Span<const TensorToWrite> tensors,
                                     uint64_t max_shard_bytes,
                                     const std::map<std::string, std::string>& metadata = {});

}  // namespace llmtrain::io
