// TensorBoard event files for scalar metrics (the format TensorBoard's EventAccumulator reads):
// records of [u64 length][u32 masked CRC-32C of the length][Event protobuf][u32 masked CRC-32C of
// the data], starting with a file_version event. No TensorFlow needed.
//
//   LLMTRAIN_ASSIGN_OR_RETURN(auto writer, train::TensorBoardWriter::Open("run/tensorboard"));
//   writer->AddScalar("train/loss", 2.31, /*step=*/10);
#pragma once

#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace llmtrain::train {

/// CRC-32C (Castagnoli) of `data`, as TFRecord framing uses it before masking.
uint32_t Crc32c(absl::string_view data);

class TensorBoardWriter {
 public:
  /// Creates `dir` and a new events.out.tfevents.<time>.<host>.<pid> file in it.
  static absl::StatusOr<std::unique_ptr<TensorBoardWriter>> Open(absl::string_view dir);
  ~TensorBoardWriter();
  /// Appends one scalar and flushes, so a crash loses nothing already logged.
  absl::Status AddScalar(absl::string_view tag, double value, int64_t step);
  const std::string& path() const { return path_; }

 private:
  TensorBoardWriter(std::FILE* file, std::string path) : file_(file), path_(std::move(path)) {}
  absl::Status WriteRecord(const std::string& data);
  std::FILE* file_;
  std::string path_;
};

}  // namespace llmtrain::train
