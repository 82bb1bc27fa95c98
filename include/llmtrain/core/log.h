// The library's log: one line per message, to stderr by default, or to a sink the application
// installs (a GUI, a file, a test that checks what was said). Progress bars (core/progress.h)
// draw on the terminal themselves; everything else the library reports goes through here.
//
//   llmtrain::LogInfo(absl::StrCat("model: ", type, ", ", n, " trainable parameters"));
//   auto previous = llmtrain::SetLogSink([&](llmtrain::LogLevel, absl::string_view line) { lines.emplace_back(line); });
#pragma once

#include <functional>

#include "absl/strings/string_view.h"

namespace llmtrain {

enum class LogLevel { kInfo, kWarning, kError };

/// Receives each message (no trailing newline). Called from whichever thread logs; calls are
/// serialized.
using LogSink = std::function<void(LogLevel level, absl::string_view message)>;

/// Installs `sink` for the whole process and returns the previous one; an empty sink restores
/// the default (stderr: the message and a newline; warnings and errors prefixed by their level).
LogSink SetLogSink(LogSink sink);

/// Sends `message` to the current sink.
void Log(LogLevel level, absl::string_view message);
void LogInfo(absl::string_view message);
void LogWarning(absl::string_view message);

}  // namespace llmtrain
