#include "llmtrain/core/atomic_file.h"

#include <filesystem>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "llmtrain/core/status.h"

namespace llmtrain {
namespace {

absl::Status ErrnoStatus(int err, absl::string_view what, absl::string_view path) {
  const std::string message = absl::StrCat(path, ": ", what, ": ", std::strerror(err));
  switch (err) {
    case ENOENT:
    case ENOTDIR:
      return absl::NotFoundError(message);
    case EACCES:
    case EPERM:
    case EROFS:
      return absl::PermissionDeniedError(message);
    case ENOSPC:
    case EDQUOT:
      return absl::ResourceExhaustedError(message);
    default:
      return absl::InternalError(message);
  }
}

std::string DirectoryOf(const std::string& path) {
  const size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

}  // namespace

AtomicFile::~AtomicFile() {
  if (fd_ >= 0) {
    ::close(fd_);
    ::unlink(temp_path_.c_str());
  }
}

absl::Status AtomicFile::Open(absl::string_view path) {
  if (fd_ >= 0) return absl::FailedPreconditionError(absl::StrCat(path_, ": already open"));
  static std::atomic<uint64_t> counter{0};
  path_ = std::string(path);
  // Same directory as the target, so rename() never crosses a file system.
  temp_path_ = absl::StrCat(path_, ".tmp.", ::getpid(), ".", counter.fetch_add(1));
  fd_ = ::open(temp_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd_ < 0) return ErrnoStatus(errno, "cannot create temporary file", temp_path_);
  bytes_written_ = 0;
  return absl::OkStatus();
}

absl::Status AtomicFile::Write(absl::Span<const uint8_t> bytes) {
  if (fd_ < 0) return absl::FailedPreconditionError(absl::StrCat(path_, ": write before Open"));
  const uint8_t* p = bytes.data();
  size_t left = bytes.size();
  while (left > 0) {
    const ssize_t n = ::write(fd_, p, left > (1u << 30) ? (1u << 30) : left);
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus(errno, "write failed", path_);
    }
    p += n;
    left -= static_cast<size_t>(n);
    bytes_written_ += static_cast<uint64_t>(n);
  }
  return absl::OkStatus();
}

absl::Status AtomicFile::Write(absl::string_view bytes) {
  return Write(absl::Span<const uint8_t>(reinterpret_cast<const uint8_t*>(bytes.data()),
                                         bytes.size()));
}

absl::Status AtomicFile::Commit() {
  if (fd_ < 0) return absl::FailedPreconditionError(absl::StrCat(path_, ": commit before Open"));
  if (::fsync(fd_) != 0) return ErrnoStatus(errno, "fsync failed", path_);
  const int fd = fd_;
  fd_ = -1;
  if (::close(fd) != 0) {
    const int err = errno;
    ::unlink(temp_path_.c_str());
    return ErrnoStatus(err, "close failed", path_);
  }
  if (::rename(temp_path_.c_str(), path_.c_str()) != 0) {
    const int err = errno;
    ::unlink(temp_path_.c_str());
    return ErrnoStatus(err, "rename of the temporary file failed", path_);
  }
  // Make the rename durable: fsync the directory entry.
  const std::string dir = DirectoryOf(path_);
  const int dir_fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir_fd >= 0) {
    ::fsync(dir_fd);
    ::close(dir_fd);
  }
  return absl::OkStatus();
}

absl::Status WriteFileAtomically(absl::string_view path, absl::string_view contents) {
  AtomicFile file;
  LLMTRAIN_RETURN_IF_ERROR(file.Open(path));
  LLMTRAIN_RETURN_IF_ERROR(file.Write(contents));
  return file.Commit();
}

absl::Status MakeDirectories(absl::string_view path) {
  std::error_code error;
  std::filesystem::create_directories(std::filesystem::path(std::string(path)), error);
  if (error) return absl::InternalError(absl::StrCat(path, ": cannot create the folder: ", error.message()));
  return absl::OkStatus();
}

bool IsDirectory(absl::string_view path) {
  struct stat st;
  return ::stat(std::string(path).c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

bool IsRegularFile(absl::string_view path) {
  struct stat st;
  return ::stat(std::string(path).c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

absl::StatusOr<std::string> ReadFileToString(absl::string_view path) {
  const std::string p(path);
  const int fd = ::open(p.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoStatus(errno, "cannot open", p);
  std::string out;
  char buf[1 << 16];
  while (true) {
    const ssize_t n = ::read(fd, buf, sizeof(buf));
    if (n < 0) {
      if (errno == EINTR) continue;
      const int err = errno;
      ::close(fd);
      return ErrnoStatus(err, "read failed", p);
    }
    if (n == 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  return out;
}

}  // namespace llmtrain
