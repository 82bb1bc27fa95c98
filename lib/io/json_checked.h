// Strict JSON parsing for headers of outside formats (internal).
// nlohmann::json alone accepts duplicate keys (the last wins) and any nesting depth; the
// safetensors spec forbids duplicates, and a fuzzer can nest arrays a million deep. ParseJson
// checks UTF-8, depth and duplicate keys, and returns a Status naming the file.
#pragma once

#include <cstdint>
#include "absl/strings/string_view.h"

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace llmtrain::io::detail {

struct JsonLimits {
  int max_depth = 64;
};

/// Parses `text` as one JSON value. `where` prefixes every error ("model.safetensors: header").
absl::StatusOr<nlohmann::json> ParseJson(absl::string_view where, absl::string_view text,
                                         const JsonLimits& limits = {});

/// True when `text` is valid UTF-8 (no overlongs, no surrogates, ≤ U+10FFFF).
bool IsValidUtf8(absl::string_view text);

/// Reads a non-negative JSON integer that fits in uint64 (no floats, no exponents).
absl::StatusOr<uint64_t> GetUint64(absl::string_view where, const nlohmann::json& value);

/// A short rendering of a JSON type for messages: "a string", "an array", "the number 1.5".
std::string Describe(const nlohmann::json& value);

}  // namespace llmtrain::io::detail
