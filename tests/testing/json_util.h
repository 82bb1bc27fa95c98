// Small helpers for tests that read the JSON the reference scripts print.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/types/span.h"
#include "nlohmann/json.hpp"

namespace llmtrain::testing {

/// FNV-1a 64 of bytes, as tests/reference/common.py computes it.
inline uint64_t Fnv1a64(absl::Span<const uint8_t> bytes) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (uint8_t b : bytes) {
    h ^= b;
    h *= 0x100000001b3ull;
  }
  return h;
}

/// Parses the last line of a reference script's stdout as JSON (earlier lines may be logs).
inline nlohmann::json LastJsonLine(const std::string& out) {
  size_t end = out.find_last_not_of("\n");
  if (end == std::string::npos) return nullptr;
  size_t start = out.rfind('\n', end);
  start = start == std::string::npos ? 0 : start + 1;
  return nlohmann::json::parse(out.substr(start, end - start + 1), nullptr, false);
}

/// Every non-empty line of a JSONL text, parsed (a line that does not parse is a null).
inline std::vector<nlohmann::json> JsonLines(const std::string& text) {
  std::vector<nlohmann::json> out;
  size_t start = 0;
  while (start < text.size()) {
    size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    if (end > start) out.push_back(nlohmann::json::parse(text.substr(start, end - start), nullptr, false));
    start = end + 1;
  }
  return out;
}

}  // namespace llmtrain::testing
