// Progress reporting for long work: loading, converting, training.
//
// On a terminal it redraws one line: a bar, the count, the rate and the ETA. Elsewhere (a log
// file, CI) it prints a plain line at most every `plain_interval_seconds`, so logs stay short.
//
//   ProgressReporter progress({.label = "convert", .total = n_tensors, .unit = "tensors"});
//   for (...) { ...; progress.Advance(1); }
//   progress.Finish();
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>

#include "absl/status/status.h"

namespace llmtrain {

struct ProgressOptions {
  std::string label;              ///< shown first on every line, e.g. "convert"
  int64_t total = 0;              ///< units of work in all; 0 = unknown (no bar, no ETA)
  std::string unit = "it";        ///< name of a unit in the rate: "tensors", "tok", "B"
  double plain_interval_seconds = 10.0;  ///< non-TTY: seconds between plain lines
  double tty_interval_seconds = 0.1;     ///< TTY: seconds between redraws
  std::FILE* stream = stderr;     ///< where lines go
  int force_tty = -1;             ///< -1 = detect with isatty(), 0 = plain, 1 = bar
};

/// InvalidArgument naming the field: a negative total, non-positive intervals, a null stream.
absl::Status Validate(const ProgressOptions& options);

/// Reports progress of one piece of work. Not thread-safe; call from one thread.
class ProgressReporter {
 public:
  explicit ProgressReporter(ProgressOptions options);
  ~ProgressReporter();

  /// Adds `n` units done, with an optional note shown after the rate (such as "loss 2.31").
  void Advance(int64_t n, const std::string& note = "");
  /// Sets the absolute count of units done.
  void Set(int64_t done, const std::string& note = "");
  /// Prints the final line (100% on a TTY, a summary elsewhere). Idempotent.
  void Finish();

  /// The line that would be drawn now (without control characters); for tests.
  std::string Render() const;
  int64_t done() const { return done_; }
  /// Units per second since the start.
  double Rate() const;
  /// Seconds left at the current rate; negative when unknown.
  double EtaSeconds() const;

 private:
  void MaybeDraw(bool force);
  double Elapsed() const;

  ProgressOptions options_;
  bool tty_ = false;
  bool finished_ = false;
  int64_t done_ = 0;
  std::string note_;
  std::chrono::steady_clock::time_point start_;
  std::chrono::steady_clock::time_point last_draw_;
};

/// Formats seconds as "1h02m", "3m05s" or "42s".
std::string FormatDuration(double seconds);
/// Formats a rate with an SI prefix: "1.23k", "45.6M".
std::string FormatCount(double value);

}  // namespace llmtrain
