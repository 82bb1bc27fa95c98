#include "llmtrain/core/status.h"

#include <exception>
#include <string>

#include "absl/strings/str_cat.h"

namespace llmtrain {

absl::Status Annotate(const absl::Status& status, absl::string_view context) {
  if (status.ok() || context.empty()) return status;
  return absl::Status(status.code(), absl::StrCat(context, ": ", status.message()));
}

absl::Status StatusFromCurrentException(absl::string_view context) {
  // c10::Error derives from std::exception, so this file needs no LibTorch header.
  try {
    throw;
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError(absl::StrCat(context, ": out of memory"));
  } catch (const std::exception& e) {
    std::string what = e.what();
    // c10::Error appends a C++ backtrace after the first line; the first line is the message.
    if (auto eol = what.find('\n'); eol != std::string::npos) what.resize(eol);
    return absl::InternalError(absl::StrCat(context, ": ", what));
  } catch (...) {
    return absl::InternalError(absl::StrCat(context, ": unknown exception"));
  }
}

}  // namespace llmtrain
