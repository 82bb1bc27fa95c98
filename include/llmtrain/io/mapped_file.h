// A read-only memory map of a whole file, shared by the readers and the tensors viewing it.
//
//   LLMTRAIN_ASSIGN_OR_RETURN(auto file, MappedFile::Open("model.safetensors"));
//   absl::Span<const uint8_t> bytes = file->bytes();
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include "absl/strings/string_view.h"

#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace llmtrain::io {

/// A file mapped read-only (MAP_PRIVATE) for its lifetime. Pages load lazily on first touch, so
/// opening a 10 GB checkpoint costs nothing until tensors are read.
class MappedFile {
 public:
  /// Maps `path`. NotFound / PermissionDenied name the path; an empty file maps to no bytes.
  static absl::StatusOr<std::shared_ptr<const MappedFile>> Open(absl::string_view path);
  /// Wraps bytes already in memory (tests, fuzzers); `bytes` is copied.
  static std::shared_ptr<const MappedFile> FromBytes(absl::string_view name,
                                                     absl::Span<const uint8_t> bytes);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const std::string& path() const { return path_; }
  absl::Span<const uint8_t> bytes() const { return {data_, size_bytes_}; }
  uint64_t size_bytes() const { return size_bytes_; }

 private:
  MappedFile() = default;
  std::string path_;
  const uint8_t* data_ = nullptr;
  size_t size_bytes_ = 0;
  bool mapped_ = false;
  std::string owned_;  // FromBytes storage
};

}  // namespace llmtrain::io
