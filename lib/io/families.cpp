// The family registry: filled at load time by the family files in lib/model/
// (LLMTRAIN_REGISTER_FAMILY_FORMAT), read by the parsers, the GGUF tokenizer and LoRA.
#include "llmtrain/io/families.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <map>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "io/config_schema.h"

namespace llmtrain::io {
namespace {

struct Entry {
  FamilyInfo info;
  detail::ConfigSchema schema;
};

// std::map: entries never move, so the pointers handed out stay valid.
std::map<std::string, Entry, std::less<>>& Registry() {
  static auto* registry = new std::map<std::string, Entry, std::less<>>();
  return *registry;
}

std::string SupportedList(bool gguf) {
  std::vector<std::string> names;
  for (const auto& [type, entry] : Registry()) {
    const std::string& name = gguf ? entry.info.gguf_architecture : entry.info.model_type;
    if (!name.empty()) names.push_back(name);
  }
  std::sort(names.begin(), names.end());
  return absl::StrJoin(names, ", ");
}

}  // namespace

bool detail::RegisterFamilyFormat(FamilyInfo info, ConfigSchema schema) {
  // A broken family file is a build mistake, found before main() on every start.
  if (info.model_type.empty() || info.model_type != schema.model_type || Registry().count(info.model_type) ||
      (info.has_vision != !schema.text_model_type.empty())) {
    std::fprintf(stderr, "llmtrain: the family file of \"%s\" registers an inconsistent format\n",
                 info.model_type.c_str());
    std::abort();
  }
  std::string type = info.model_type;
  Registry().emplace(std::move(type), Entry{std::move(info), std::move(schema)});
  return true;
}

std::vector<const FamilyInfo*> Families() {
  std::vector<const FamilyInfo*> out;
  for (const auto& [type, entry] : Registry()) out.push_back(&entry.info);
  return out;
}

const FamilyInfo* FindFamily(absl::string_view model_type) {
  const auto it = Registry().find(model_type);
  return it == Registry().end() ? nullptr : &it->second.info;
}

const FamilyInfo* FindFamilyForGguf(absl::string_view architecture) {
  if (architecture.empty()) return nullptr;
  for (const auto& [type, entry] : Registry()) {
    if (entry.info.gguf_architecture == architecture) return &entry.info;
  }
  return nullptr;
}

std::string UnsupportedModelType(absl::string_view model_type) {
  return absl::StrCat("model_type \"", model_type, "\" is not supported (supported: ", SupportedList(false),
                      ")");
}

std::string UnsupportedGgufArchitecture(absl::string_view architecture) {
  return absl::StrCat("general.architecture \"", architecture, "\" is not supported (supported: ",
                      SupportedList(true), ")");
}

const detail::ConfigSchema* detail::FindConfigSchema(absl::string_view model_type) {
  const auto it = Registry().find(model_type);
  return it == Registry().end() ? nullptr : &it->second.schema;
}

}  // namespace llmtrain::io
