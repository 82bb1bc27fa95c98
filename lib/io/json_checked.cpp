#include "io/json_checked.h"

#include <string>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"

namespace llmtrain::io::detail {

bool IsValidUtf8(absl::string_view text) {
  const auto* s = reinterpret_cast<const unsigned char*>(text.data());
  const size_t n = text.size();
  size_t i = 0;
  while (i < n) {
    const unsigned char c = s[i];
    if (c < 0x80) {
      ++i;
      continue;
    }
    int len;
    uint32_t cp;
    if ((c & 0xe0) == 0xc0) {
      len = 2;
      cp = c & 0x1f;
    } else if ((c & 0xf0) == 0xe0) {
      len = 3;
      cp = c & 0x0f;
    } else if ((c & 0xf8) == 0xf0) {
      len = 4;
      cp = c & 0x07;
    } else {
      return false;
    }
    if (i + len > n) return false;
    for (int k = 1; k < len; ++k) {
      if ((s[i + k] & 0xc0) != 0x80) return false;
      cp = (cp << 6) | (s[i + k] & 0x3f);
    }
    if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000)) {
      return false;  // overlong
    }
    if (cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return false;
    i += len;
  }
  return true;
}

absl::StatusOr<nlohmann::json> ParseJson(absl::string_view where, absl::string_view text,
                                         const JsonLimits& limits) {
  if (!IsValidUtf8(text)) {
    return absl::DataLossError(absl::StrCat(where, ": not valid UTF-8"));
  }
  // Depth and duplicate keys are checked in the parser callback, which sees every key as it
  // is read; one set of keys per open object.
  std::vector<absl::flat_hash_set<std::string>> open_objects;
  std::string problem;
  nlohmann::json::parser_callback_t callback = [&](int depth, nlohmann::json::parse_event_t event,
                                                   nlohmann::json& parsed) -> bool {
    if (!problem.empty()) return false;
    using Event = nlohmann::json::parse_event_t;
    if (depth > limits.max_depth) {
      problem = absl::StrCat("nesting deeper than ", limits.max_depth, " levels");
      return false;
    }
    if (event == Event::object_start) {
      open_objects.emplace_back();
    } else if (event == Event::object_end) {
      if (!open_objects.empty()) open_objects.pop_back();
    } else if (event == Event::key && !open_objects.empty()) {
      const std::string& key = parsed.get_ref<const std::string&>();
      if (!open_objects.back().insert(key).second) {
        problem = absl::StrCat("duplicate key \"", key, "\"");
        return false;
      }
    }
    return true;
  };
  nlohmann::json result;
  try {
    result = nlohmann::json::parse(text.begin(), text.end(), callback, /*allow_exceptions=*/true);
  } catch (const nlohmann::json::exception& e) {
    if (!problem.empty()) return absl::DataLossError(absl::StrCat(where, ": ", problem));
    // nlohmann's messages look like "[json.exception.parse_error.101] parse error at line 1,
    // column 4: syntax error ..."; keep the part after the bracketed id.
    std::string what = e.what();
    if (auto close = what.find("] "); close != std::string::npos) what = what.substr(close + 2);
    return absl::DataLossError(absl::StrCat(where, ": invalid JSON: ", what));
  }
  if (!problem.empty()) return absl::DataLossError(absl::StrCat(where, ": ", problem));
  return result;
}

std::string Describe(const nlohmann::json& value) {
  switch (value.type()) {
    case nlohmann::json::value_t::null:
      return "null";
    case nlohmann::json::value_t::object:
      return "an object";
    case nlohmann::json::value_t::array:
      return "an array";
    case nlohmann::json::value_t::string:
      return absl::StrCat("the string ", value.dump());
    case nlohmann::json::value_t::boolean:
      return absl::StrCat("the boolean ", value.dump());
    default:
      return absl::StrCat("the number ", value.dump());
  }
}

absl::StatusOr<uint64_t> GetUint64(absl::string_view where, const nlohmann::json& value) {
  if (value.is_number_unsigned()) return value.get<uint64_t>();
  if (value.is_number_integer() && value.get<int64_t>() >= 0) {
    return static_cast<uint64_t>(value.get<int64_t>());
  }
  return absl::DataLossError(
      absl::StrCat(where, ": expected a non-negative integer, found ", Describe(value)));
}

}  // namespace llmtrain::io::detail
