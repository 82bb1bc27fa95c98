// Text-proto parse errors with line and column, for the spec parsers (internal).
#pragma once

#include <string>

#include <google/protobuf/io/tokenizer.h>

#include "absl/strings/str_cat.h"

namespace llmtrain::spec::detail {

/// Keeps the first error the text-format parser reports, as "line L, column C: message" (1-based).
class TextProtoErrors : public google::protobuf::io::ErrorCollector {
 public:
  void AddError(int line, google::protobuf::io::ColumnNumber column, const std::string& message) override {
    if (first.empty()) first = absl::StrCat("line ", line + 1, ", column ", column + 1, ": ", message);
  }
  std::string first;
};

}  // namespace llmtrain::spec::detail
