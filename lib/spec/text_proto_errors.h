// Text-proto helpers shared by the spec parsers (internal): parse errors with line and column,
// and quoted enum values.
#pragma once

#include <string>

#include <google/protobuf/descriptor.h>
#include <google/protobuf/io/tokenizer.h>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace llmtrain::spec::detail {

/// Keeps the first error the text-format parser reports, as "line L, column C: message" (1-based).
class TextProtoErrors : public google::protobuf::io::ErrorCollector {
 public:
  void AddError(int line, google::protobuf::io::ColumnNumber column, const std::string& message) override {
    if (first.empty()) first = absl::StrCat("line ", line + 1, ", column ", column + 1, ": ", message);
  }
  std::string first;
};

/// Enum values in text-proto `text` whose root message is `root`. Text protos write them as
/// identifiers (dtype: bf16); specs written before these fields were enums quote them
/// (dtype: "bf16"), which TextFormat refuses, and a bad name gets TextFormat's message without the
/// field's path. This pass walks the text as tokens (strings and comments kept whole), rewrites each
/// quoted enum value as an identifier, and reports an unknown name with the field's full path and
/// line ("<where>: line 3: training.autocast: \"fp8\" is not one of …"). "" means a value "off".
absl::StatusOr<std::string> NormalizeEnumsInText(absl::string_view where, const google::protobuf::Descriptor* root,
                                                 absl::string_view text);

}  // namespace llmtrain::spec::detail
