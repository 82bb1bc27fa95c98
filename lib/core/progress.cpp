#include "llmtrain/core/progress.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace llmtrain {

std::string FormatDuration(double seconds) {
  if (!(seconds >= 0) || std::isinf(seconds)) return "?";
  const int64_t s = static_cast<int64_t>(std::llround(seconds));
  if (s >= 3600) return absl::StrFormat("%dh%02dm", s / 3600, (s % 3600) / 60);
  if (s >= 60) return absl::StrFormat("%dm%02ds", s / 60, s % 60);
  return absl::StrFormat("%ds", s);
}

std::string FormatCount(double value) {
  const char* prefixes[] = {"", "k", "M", "G", "T"};
  int i = 0;
  while (std::fabs(value) >= 1000.0 && i < 4) {
    value /= 1000.0;
    ++i;
  }
  if (i == 0) return absl::StrFormat("%.1f", value);
  return absl::StrFormat("%.2f%s", value, prefixes[i]);
}

ProgressReporter::ProgressReporter(ProgressOptions options) : options_(std::move(options)) {
  tty_ = options_.force_tty >= 0 ? options_.force_tty == 1
                                 : ::isatty(::fileno(options_.stream)) == 1;
  start_ = std::chrono::steady_clock::now();
  last_draw_ = start_;
}

ProgressReporter::~ProgressReporter() { Finish(); }

double ProgressReporter::Elapsed() const {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
}

double ProgressReporter::Rate() const {
  const double elapsed = Elapsed();
  return elapsed > 0 ? static_cast<double>(done_) / elapsed : 0.0;
}

double ProgressReporter::EtaSeconds() const {
  const double rate = Rate();
  if (options_.total <= 0 || rate <= 0) return -1.0;
  return static_cast<double>(options_.total - done_) / rate;
}

std::string ProgressReporter::Render() const {
  std::string line = options_.label;
  if (options_.total > 0) {
    const double fraction =
        std::min(1.0, static_cast<double>(done_) / static_cast<double>(options_.total));
    if (tty_) {
      constexpr int kWidth = 24;
      const int filled = static_cast<int>(fraction * kWidth);
      absl::StrAppend(&line, " [", std::string(filled, '#'), std::string(kWidth - filled, '.'),
                      "]");
    }
    absl::StrAppend(&line, absl::StrFormat(" %3.0f%% %d/%d", 100.0 * fraction, done_,
                                           options_.total));
  } else {
    absl::StrAppend(&line, " ", done_);
  }
  absl::StrAppend(&line, " ", options_.unit, " | ", FormatCount(Rate()), " ", options_.unit,
                  "/s | elapsed ", FormatDuration(Elapsed()));
  if (options_.total > 0) absl::StrAppend(&line, " | ETA ", FormatDuration(EtaSeconds()));
  if (!note_.empty()) absl::StrAppend(&line, " | ", note_);
  return line;
}

void ProgressReporter::MaybeDraw(bool force) {
  const auto now = std::chrono::steady_clock::now();
  const double since = std::chrono::duration<double>(now - last_draw_).count();
  const double interval = tty_ ? options_.tty_interval_seconds : options_.plain_interval_seconds;
  if (!force && since < interval) return;
  last_draw_ = now;
  const std::string line = Render();
  if (tty_) {
    std::fprintf(options_.stream, "\r\033[K%s", line.c_str());
  } else {
    std::fprintf(options_.stream, "%s\n", line.c_str());
  }
  std::fflush(options_.stream);
}

void ProgressReporter::Advance(int64_t n, const std::string& note) { Set(done_ + n, note); }

void ProgressReporter::Set(int64_t done, const std::string& note) {
  if (finished_) return;
  done_ = done;
  if (!note.empty()) note_ = note;
  MaybeDraw(false);
}

void ProgressReporter::Finish() {
  if (finished_) return;
  MaybeDraw(true);
  if (tty_) std::fprintf(options_.stream, "\n");
  finished_ = true;
}

absl::Status Validate(const ProgressOptions& o) {
  if (o.total < 0) return absl::InvalidArgumentError(absl::StrCat("ProgressOptions.total: expected ≥ 0, found ", o.total));
  if (!(o.plain_interval_seconds > 0) || !(o.tty_interval_seconds > 0)) {
    return absl::InvalidArgumentError(absl::StrCat("ProgressOptions.plain_interval_seconds / tty_interval_seconds: "
                                                   "expected > 0, found ", o.plain_interval_seconds, " / ",
                                                   o.tty_interval_seconds));
  }
  if (o.stream == nullptr) return absl::InvalidArgumentError("ProgressOptions.stream: expected a stream, found null");
  return absl::OkStatus();
}

}  // namespace llmtrain
