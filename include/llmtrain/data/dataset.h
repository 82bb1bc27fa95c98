// Training data files: Dolly, Alpaca, chat "messages", ShareGPT, plain "text" (JSONL or one JSON
// array) and Flickr8K caption files, read with format auto-detection, every bad record reported
// with file:line and the reason, and deterministic shuffling, sharding and resuming.
//
// Open() maps each file and indexes it in one pass: every record is parsed and checked, valid ones
// are remembered by their byte range (16 bytes each, so files larger than memory work), bad ones
// are listed with their reason. Nothing valid is dropped: a record is used, or it is in
// bad_records(). Get(i) parses record i again from the mapping.
//
//   data::DatasetOptions options;                       // format auto-detected
//   LLMTRAIN_ASSIGN_OR_RETURN(auto data, data::Dataset::Open({"dolly.jsonl"}, options));
//   std::printf("%s\n", data->Summary().c_str());       // format, counts, bad records by reason
//   LLMTRAIN_RETURN_IF_ERROR(data->CheckBadFraction(0.01));
//   data::Sampler sampler(data->size(), {.seed = 42, .rank = 0, .world_size = 1});
//   while (auto i = sampler.Next()) { data::Example e = *data->Get(*i); ... }
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "llmtrain/tokenizer/chat_template.h"

namespace llmtrain::io {
class MappedFile;
}

namespace llmtrain::data {

enum class Format {
  kAuto,
  kDolly,     ///< {"instruction", "context", "response"}
  kAlpaca,    ///< {"instruction", "input", "output"}
  kMessages,  ///< {"messages": [{"role", "content"}, ...]}
  kShareGpt,  ///< {"conversations": [{"from", "value"}, ...]}
  kText,      ///< {"text": ...}
  kCaptions,  ///< Flickr8K: "<image>#<n>\t<caption>" lines
};
/// The user turn's text of a kCaptions record, after its image: the assistant replies with the caption.
inline constexpr char kCaptionPrompt[] = "Describe this image.";
/// "auto", "dolly", "alpaca", "messages", "sharegpt", "text", "captions" (also "flickr8k").
absl::StatusOr<Format> ParseFormat(absl::string_view name);
absl::string_view FormatName(Format format);

/// One record, as a conversation (every format but text) or as plain text.
struct Example {
  std::vector<tokenizer::Message> messages;  ///< user/assistant turns; empty for kText
  std::string text;                          ///< kText
  std::vector<std::string> images;           ///< image files the record refers to, in order
  std::string where;                         ///< "file:line"
};

struct BadRecord {
  std::string file;
  int64_t line = 0;  ///< 1-based line where the record starts
  std::string reason;
  std::string ToString() const;  ///< "file:line: reason"
};

struct DatasetOptions {
  Format format = Format::kAuto;
  /// Records longer than this are bad ("over-long record"), not parsed.
  int64_t max_record_bytes = 1 << 20;
  /// Records looked at to detect the format of each file.
  int detect_records = 64;
  /// The folder records' image paths are relative to (Flickr8K's image folder); empty: the folder
  /// of each data file. A path that leaves it (.., an absolute path elsewhere, a symbolic link
  /// out of it) makes its record bad; Get() gives the images as paths inside it.
  std::string image_dir;
  /// Whether Open() checks that every image file exists (a missing one makes its record bad).
  /// Decoding is checked where images are used (the collator, `llmtrain data-check --images`).
  bool check_images = true;
  /// A split list (Flickr8K's Flickr_8k.trainImages.txt: one image name per line): only caption
  /// records of listed images are used; the others are counted as excluded, not bad. Empty: all.
  std::string image_list;
};

/// InvalidArgument naming the field: max_record_bytes or detect_records < 1.
absl::Status Validate(const DatasetOptions& options);

class Dataset {
 public:
  /// Opens and indexes the files. A file that cannot be read, whose format cannot be detected or
  /// differs from the other files' is an error; bad records are not.
  static absl::StatusOr<std::unique_ptr<Dataset>> Open(absl::Span<const std::string> files,
                                                       const DatasetOptions& options = {});
  /// The same over files already in memory or mapped (io::MappedFile::FromBytes for tests and
  /// fuzzing); each file's path() names it in reports.
  static absl::StatusOr<std::unique_ptr<Dataset>> FromFiles(std::vector<std::shared_ptr<const io::MappedFile>> files,
                                                            const DatasetOptions& options = {});
  ~Dataset();

  Format format() const { return format_; }
  /// How the format was chosen: "detected from 64 records of a.jsonl" or "given".
  const std::string& format_reason() const { return format_reason_; }
  int64_t size() const { return static_cast<int64_t>(records_.size()); }  ///< valid records
  int64_t total_records() const { return size() + static_cast<int64_t>(bad_.size()) + excluded_; }
  /// Records left out because their image is not in DatasetOptions::image_list.
  int64_t excluded() const { return excluded_; }
  const std::vector<BadRecord>& bad_records() const { return bad_; }
  /// Record `index` (0 ≤ index < size()).
  absl::StatusOr<Example> Get(int64_t index) const;
  /// Counts, and the bad records grouped by reason with their first locations.
  std::string Summary() const;
  /// An error carrying Summary() when more than `max_bad_fraction` of the records are bad.
  absl::Status CheckBadFraction(double max_bad_fraction) const;

 private:
  struct Record {
    uint32_t file;
    uint32_t length;
    uint64_t offset;
    int64_t line;
  };
  Dataset() = default;
  std::vector<std::shared_ptr<const io::MappedFile>> files_;
  std::vector<std::string> names_;
  std::vector<Record> records_;
  std::vector<BadRecord> bad_;
  std::vector<std::string> image_roots_;  // per file: the folder its records' images are in
  int64_t excluded_ = 0;
  bool check_images_ = true;
  Format format_ = Format::kAuto;
  std::string format_reason_;
};

/// The path of image `name` of a record, inside the folder `root`: InvalidArgument when it leaves
/// the folder (.., an absolute path elsewhere, a symbolic link out) or, with `must_exist`, when
/// there is no such file.
absl::StatusOr<std::string> ResolveImagePath(absl::string_view root, absl::string_view name, bool must_exist);

/// Parses one record of `format` (JSON text, or a caption line) into an Example, or says why it is
/// bad. `where` is copied into Example::where.
absl::StatusOr<Example> ParseRecord(Format format, absl::string_view record, absl::string_view where);

struct SamplerOptions {
  uint64_t seed = 0;
  bool shuffle = true;
  int rank = 0;        ///< this process's shard
  int world_size = 1;  ///< shards; record i of an epoch's order goes to rank i % world_size
};

/// InvalidArgument naming the field: world_size < 1, or rank outside [0, world_size).
absl::Status Validate(const SamplerOptions& options);

/// Record indices in a deterministic order: a seeded shuffle per epoch (the same on every
/// platform), sharded by rank. The position can be saved and restored: a resumed run sees exactly
/// the records an uninterrupted one would.
class Sampler {
 public:
  struct Position {
    int64_t epoch = 0;
    int64_t cursor = 0;  ///< next slot of this rank's share of the epoch
  };
  Sampler(int64_t n_records, const SamplerOptions& options);
  /// The next record index; epochs follow each other without end (nullopt only when empty).
  std::optional<int64_t> Next();
  Position position() const { return position_; }
  void Seek(const Position& position);
  /// Records this rank sees per epoch.
  int64_t per_epoch() const;

 private:
  void Shuffle();
  int64_t n_;
  SamplerOptions options_;
  Position position_;
  int64_t shuffled_epoch_ = -1;
  std::vector<int64_t> order_;
};

}  // namespace llmtrain::data
