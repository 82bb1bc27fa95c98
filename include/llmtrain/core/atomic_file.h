// Atomic file writes: a kill at any moment leaves either the old file or the complete new one.
//
// The bytes go to a temporary file in the same directory, which is fsync'ed and then renamed
// over the target; the directory is fsync'ed last so the rename itself is durable.
//
//   AtomicFile out;
//   LLMTRAIN_RETURN_IF_ERROR(out.Open("run/adapter_model.safetensors"));
//   LLMTRAIN_RETURN_IF_ERROR(out.Write(header));
//   LLMTRAIN_RETURN_IF_ERROR(out.Write(data));
//   LLMTRAIN_RETURN_IF_ERROR(out.Commit());  // until here, the old file is untouched
#pragma once

#include <cstdint>
#include <string>
#include "absl/strings/string_view.h"

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace llmtrain {

/// A file being written atomically. Destroying it without Commit() removes the temporary file.
class AtomicFile {
 public:
  AtomicFile() = default;
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;
  ~AtomicFile();

  /// Creates the temporary file next to `path`. Fails with the OS error naming the path.
  absl::Status Open(absl::string_view path);
  /// Appends bytes. Fails (naming the path) on a write error such as a full disk.
  absl::Status Write(absl::Span<const uint8_t> bytes);
  absl::Status Write(absl::string_view bytes);
  /// fsyncs, renames the temporary file over the target, and fsyncs the directory.
  absl::Status Commit();
  /// Bytes written so far.
  uint64_t bytes_written() const { return bytes_written_; }

 private:
  std::string path_;
  std::string temp_path_;
  int fd_ = -1;
  uint64_t bytes_written_ = 0;
};

/// Writes `contents` to `path` atomically (see AtomicFile).
absl::Status WriteFileAtomically(absl::string_view path, absl::string_view contents);

/// True when `path` names a directory (following symlinks).
bool IsDirectory(absl::string_view path);
/// Creates folder `path` and its missing parents; OK if it exists. Errors name the path.
absl::Status MakeDirectories(absl::string_view path);
/// True when `path` names a regular file (following symlinks).
bool IsRegularFile(absl::string_view path);

/// Reads a whole file. NotFound / PermissionDenied / DataLoss name the path.
absl::StatusOr<std::string> ReadFileToString(absl::string_view path);

}  // namespace llmtrain
