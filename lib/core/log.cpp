// The library's log sink (core/log.h).
#include "llmtrain/core/log.h"

#include <cstdio>
#include <mutex>
#include <string>

namespace llmtrain {
namespace {

std::mutex& SinkMutex() {
  static auto* mutex = new std::mutex();
  return *mutex;
}

LogSink& Sink() {
  static auto* sink = new LogSink();
  return *sink;
}

void WriteToStderr(LogLevel level, absl::string_view message) {
  const char* prefix = level == LogLevel::kWarning ? "warning: " : level == LogLevel::kError ? "error: " : "";
  std::fprintf(stderr, "%s%.*s\n", prefix, static_cast<int>(message.size()), message.data());
}

}  // namespace

LogSink SetLogSink(LogSink sink) {
  std::lock_guard<std::mutex> lock(SinkMutex());
  LogSink previous = std::move(Sink());
  Sink() = std::move(sink);
  return previous;
}

void Log(LogLevel level, absl::string_view message) {
  std::lock_guard<std::mutex> lock(SinkMutex());
  if (Sink()) {
    Sink()(level, message);
  } else {
    WriteToStderr(level, message);
  }
}

void LogInfo(absl::string_view message) { Log(LogLevel::kInfo, message); }
void LogWarning(absl::string_view message) { Log(LogLevel::kWarning, message); }

}  // namespace llmtrain
