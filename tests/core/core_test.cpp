// core/: status helpers, dtype names, progress reporting, atomic writes, threads, f16/bf16.
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdio>
#include <stdexcept>
#include <vector>

#include "core/half.h"
#include "llmtrain/core/atomic_file.h"
#include "llmtrain/core/dtype.h"
#include "llmtrain/core/progress.h"
#include "llmtrain/core/status.h"
#include "llmtrain/core/threads.h"
#include "testing/reference.h"

namespace llmtrain {
namespace {

absl::StatusOr<int> Half(int x) {
  if (x % 2 != 0) return absl::InvalidArgumentError("odd");
  return x / 2;
}

absl::StatusOr<int> Quarter(int x) {
  LLMTRAIN_ASSIGN_OR_RETURN(int half, Half(x));
  LLMTRAIN_ASSIGN_OR_RETURN(half, Half(half));
  return half;
}

absl::Status CheckEven(int x) {
  LLMTRAIN_RETURN_IF_ERROR(Half(x).status());
  return absl::OkStatus();
}

TEST_CASE("status macros propagate the first error", "[core]") {
  CHECK(*Quarter(8) == 2);
  CHECK(Quarter(6).status().code() == absl::StatusCode::kInvalidArgument);
  CHECK(CheckEven(4).ok());
  CHECK(!CheckEven(3).ok());
}

TEST_CASE("Annotate keeps the code and adds context", "[core]") {
  const absl::Status s = Annotate(absl::NotFoundError("no tensor \"x\""), "loading a.safetensors");
  CHECK(s.code() == absl::StatusCode::kNotFound);
  CHECK(s.message() == "loading a.safetensors: no tensor \"x\"");
  CHECK(Annotate(absl::OkStatus(), "ignored").ok());
}

TEST_CASE("StatusFromCurrentException keeps the first line of the message", "[core]") {
  absl::Status s;
  try {
    throw std::runtime_error("shape mismatch\nbacktrace line");
  } catch (...) {
    s = StatusFromCurrentException("forward");
  }
  CHECK(s.code() == absl::StatusCode::kInternal);
  CHECK(s.message() == "forward: shape mismatch");
}

TEST_CASE("dtype names round-trip and unknown names are refused", "[core]") {
  for (Dtype d : kAllDtypes) {
    auto parsed = DtypeFromSafetensorsName(SafetensorsName(d));
    REQUIRE(parsed.ok());
    CHECK(*parsed == d);
  }
  CHECK(ElementBits(Dtype::kBf16) == 16);
  CHECK(ElementBits(Dtype::kF8E4M3) == 8);
  CHECK(ElementBits(Dtype::kU64) == 64);
  auto bad = DtypeFromSafetensorsName("F4");
  REQUIRE(!bad.ok());
  CHECK(bad.status().message().find("\"F4\"") != std::string::npos);
  CHECK(*DtypeFromUserName("BF16") == Dtype::kBf16);
  CHECK(!DtypeFromUserName("int4").ok());
}

TEST_CASE("progress reporter shows rate and ETA, plainly off a terminal", "[core]") {
  std::FILE* sink = std::tmpfile();
  REQUIRE(sink != nullptr);
  {
    ProgressReporter p({.label = "convert", .total = 10, .unit = "tensors",
                        .plain_interval_seconds = 0.0, .stream = sink, .force_tty = 0});
    p.Advance(5, "file a");
    const std::string line = p.Render();
    CHECK(line.find("convert") == 0);
    CHECK(line.find("5/10") != std::string::npos);
    CHECK(line.find("ETA") != std::string::npos);
    CHECK(line.find("tensors/s") != std::string::npos);
    CHECK(line.find("file a") != std::string::npos);
    CHECK(line.find('[') == std::string::npos);  // no bar off a terminal
    p.Advance(5);
    p.Finish();
  }
  std::rewind(sink);
  char buf[4096];
  const size_t n = std::fread(buf, 1, sizeof(buf), sink);
  const std::string text(buf, n);
  CHECK(text.find('\r') == std::string::npos);
  CHECK(text.find("10/10") != std::string::npos);
  std::fclose(sink);

  std::FILE* tty_sink = std::tmpfile();
  REQUIRE(tty_sink != nullptr);
  {
    ProgressReporter tty({.label = "load", .total = 4, .stream = tty_sink, .force_tty = 1});
    tty.Set(2);
    CHECK(tty.Render().find("[############............]") != std::string::npos);
  }
  std::fclose(tty_sink);
  CHECK(FormatDuration(3725) == "1h02m");
  CHECK(FormatDuration(185) == "3m05s");
  CHECK(FormatCount(1234.0) == "1.23k");
}

TEST_CASE("atomic file: the old content survives until Commit", "[core]") {
  const std::string dir = testing::TempDir("atomic");
  const std::string path = dir + "/out.txt";
  REQUIRE(WriteFileAtomically(path, "old").ok());
  {
    AtomicFile f;
    REQUIRE(f.Open(path).ok());
    REQUIRE(f.Write(absl::string_view("new content")).ok());
    CHECK(*ReadFileToString(path) == "old");  // not yet committed
    // Destroyed without Commit: the temporary file is removed and the old file stays.
  }
  CHECK(*ReadFileToString(path) == "old");
  CHECK(testing::RunCommand("ls " + testing::ShellQuote(dir) + " | wc -l").out == "1\n");
  AtomicFile g;
  REQUIRE(g.Open(path).ok());
  REQUIRE(g.Write(absl::string_view("new content")).ok());
  REQUIRE(g.Commit().ok());
  CHECK(*ReadFileToString(path) == "new content");
  CHECK(ReadFileToString(dir + "/missing").status().code() == absl::StatusCode::kNotFound);
  const absl::Status no_dir = WriteFileAtomically(dir + "/no/such/dir/x", "x");
  CHECK(no_dir.code() == absl::StatusCode::kNotFound);
  CHECK(no_dir.message().find("/no/such/dir/x") != std::string::npos);
}

TEST_CASE("ParallelFor covers every index exactly once", "[core]") {
  for (int64_t n : {0, 1, 7, 1000, 100003}) {
    std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
    ParallelFor(n, 100, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) hits[i].fetch_add(1);
    });
    for (int64_t i = 0; i < n; ++i) REQUIRE(hits[i].load() == 1);
  }
}

TEST_CASE("f16 and bf16 conversions are exact and round to nearest even", "[core]") {
  // Every finite f16 value survives f16 → f32 → f16.
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const uint16_t bits = static_cast<uint16_t>(h);
    if ((bits & 0x7c00) == 0x7c00 && (bits & 0x3ff) != 0) continue;  // NaN payloads
    INFO("f16 bits " << h);
    REQUIRE(detail::FloatToF16(detail::F16ToFloat(bits)) == bits);
  }
  CHECK(detail::F16ToFloat(0x3c00) == 1.0f);
  CHECK(detail::F16ToFloat(0x0001) == std::ldexp(1.0f, -24));
  // Ties: 1 + 2^-11 lies halfway between 1 and the next f16; even wins (1.0).
  CHECK(detail::FloatToF16(1.0f + std::ldexp(1.0f, -11)) == 0x3c00);
  CHECK(detail::FloatToF16(1.0f + 3 * std::ldexp(1.0f, -11)) == 0x3c02);
  CHECK(detail::FloatToF16(70000.0f) == 0x7c00);
  CHECK(detail::FloatToF16(std::ldexp(1.0f, -25)) == 0x0000);  // tie to even zero
  CHECK(detail::FloatToF16(std::ldexp(3.0f, -26)) == 0x0001);
  CHECK(detail::FloatToBf16(1.0f) == 0x3f80);
  CHECK(detail::FloatToBf16(detail::BitsToFloat(0x3f808000)) == 0x3f80);  // tie → even
  CHECK(detail::FloatToBf16(detail::BitsToFloat(0x3f818000)) == 0x3f82);
  CHECK(std::isnan(detail::Bf16ToFloat(detail::FloatToBf16(std::nanf("")))));
}

}  // namespace
}  // namespace llmtrain
