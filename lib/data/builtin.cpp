#include "llmtrain/data/builtin.h"

#include <algorithm>
#include <map>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "llmtrain/core/atomic_file.h"
#include "llmtrain/core/status.h"
#include "nlohmann/json.hpp"

namespace llmtrain::data {
namespace {

struct Package {
  std::string name, section, synopsis;
  std::vector<std::string> long_lines;  // continuation lines of Description, leading space removed
};

// A deterministic choice of phrasing per package, so the questions are not all the same.
const char* Question(absl::string_view name) {
  static const char* kTemplates[] = {"What is the Debian package %s for?", "What does the %s package do?",
                                     "Describe the Debian package %s.", "What is %s, as packaged in Debian?"};
  size_t h = 1469598103934665603ull;
  for (char c : name) h = (h ^ static_cast<unsigned char>(c)) * 1099511628211ull;
  return kTemplates[h % 4];
}

std::string Response(const Package& p) {
  std::string synopsis = p.synopsis;
  if (!synopsis.empty()) synopsis[0] = absl::ascii_toupper(static_cast<unsigned char>(synopsis[0]));
  if (!synopsis.empty() && synopsis.back() != '.') synopsis += '.';
  std::string out = absl::StrCat(p.name, ": ", synopsis);
  std::string paragraph;
  auto flush = [&] {
    if (!paragraph.empty()) absl::StrAppend(&out, "\n\n", paragraph);
    paragraph.clear();
  };
  for (const std::string& line : p.long_lines) {
    if (line == ".") {
      flush();
    } else if (absl::StartsWith(line, " ")) {  // preformatted (lists, code): keep the line as is
      absl::StrAppend(&paragraph, paragraph.empty() ? "" : "\n", line);
    } else {
      absl::StrAppend(&paragraph, paragraph.empty() ? "" : " ", line);
    }
  }
  flush();
  return out;
}

}  // namespace

absl::StatusOr<int64_t> BuildDebianPackageDataset(absl::string_view status_path, absl::string_view output) {
  LLMTRAIN_ASSIGN_OR_RETURN(const std::string text, ReadFileToString(status_path));
  std::map<std::string, Package> packages;
  Package current;
  bool in_description = false;
  auto finish = [&] {
    if (!current.name.empty() && !current.synopsis.empty()) packages[current.name] = current;
    current = Package();
    in_description = false;
  };
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (absl::EndsWith(line, "\r")) line.remove_suffix(1);
    if (line.empty()) {
      finish();
      continue;
    }
    if (line[0] == ' ' || line[0] == '\t') {
      if (in_description) current.long_lines.emplace_back(line.substr(1));
      continue;
    }
    in_description = false;
    const size_t colon = line.find(':');
    if (colon == absl::string_view::npos) continue;
    const absl::string_view key = line.substr(0, colon);
    const absl::string_view value = absl::StripAsciiWhitespace(line.substr(colon + 1));
    if (key == "Package") current.name = std::string(value);
    if (key == "Section") current.section = std::string(value);
    if (key == "Description") {
      current.synopsis = std::string(value);
      in_description = true;
    }
  }
  finish();
  if (packages.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(status_path, ": no package with a description found"));
  }
  std::string jsonl;
  for (const auto& [name, p] : packages) {
    char question[512];
    std::snprintf(question, sizeof(question), Question(name), name.c_str());
    const nlohmann::json record = {{"instruction", question},
                                   {"context", ""},
                                   {"response", Response(p)},
                                   {"category", "open_qa"}};
    absl::StrAppend(&jsonl, record.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace), "\n");
  }
  LLMTRAIN_RETURN_IF_ERROR(WriteFileAtomically(output, jsonl));
  return static_cast<int64_t>(packages.size());
}

}  // namespace llmtrain::data
