// llmtrain inspect PATH [--json]
// Prints the format, the metadata, the parsed model config and every tensor (dtype and row-major
// shape) of a .safetensors file, a sharded index, a model folder or a .gguf file.
#include <cstdio>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "llmtrain/commands.h"
#include "llmtrain/core/atomic_file.h"
#include "llmtrain/core/status.h"
#include "llmtrain/io/gguf.h"
#include "llmtrain/io/hf_config.h"
#include "llmtrain/io/mapped_file.h"
#include "llmtrain/io/safetensors.h"
#include "nlohmann/json.hpp"

namespace llmtrain::cli {
namespace {

using nlohmann::json;

constexpr char kHelp[] =
    "usage: llmtrain inspect PATH [--json]\n"
    "  PATH: a .safetensors file, a model.safetensors.index.json, a model folder (config.json +\n"
    "  safetensors) or a .gguf file. --json prints one JSON object:\n"
    "  {\"format\", \"metadata\", \"config\", \"tensors\": [{\"name\", \"dtype\", \"shape\"}]}\n";

constexpr size_t kTextArrayPreview = 8;  // array elements shown in the text listing

struct Report {
  std::string format;
  json metadata = json::object();
  json config = nullptr;
  std::string config_note;  // why config is null, when it is
  json tensors = json::array();
};

json GgufValueToJson(const io::GgufValue& v) {
  if (v.type != io::GgufValueType::kArray) {
    if (const auto* s = std::get_if<std::string>(&v.scalar)) return *s;
    if (const auto* u = std::get_if<uint64_t>(&v.scalar)) return *u;
    if (const auto* i = std::get_if<int64_t>(&v.scalar)) return *i;
    if (const auto* d = std::get_if<double>(&v.scalar)) return *d;
    return std::get<bool>(v.scalar);
  }
  json a = json::array();
  for (const auto& s : v.strings) a.push_back(s);
  for (auto u : v.uints) a.push_back(u);
  for (auto i : v.ints) a.push_back(i);
  for (auto d : v.floats) a.push_back(d);
  for (bool b : v.bools) a.push_back(b);
  return a;
}

json Shape(const std::vector<int64_t>& shape) { return json(shape); }

bool LooksLikeGguf(const std::string& path) {
  if (absl::EndsWith(path, ".gguf")) return true;
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr) return false;
  char magic[4] = {};
  const bool ok = std::fread(magic, 1, 4, f) == 4 && std::string(magic, 4) == "GGUF";
  std::fclose(f);
  return ok;
}

absl::StatusOr<Report> InspectGguf(const std::string& path) {
  LLMTRAIN_ASSIGN_OR_RETURN(auto gguf, io::GgufFile::Open(path));
  Report r;
  r.format = "gguf";
  r.metadata["gguf.version"] = gguf->version();
  r.metadata["gguf.alignment"] = gguf->alignment();
  for (const auto& [key, value] : gguf->metadata()) r.metadata[key] = GgufValueToJson(value);
  auto config = io::HfConfigFromGguf(*gguf);
  if (config.ok()) {
    r.config = json::parse(config->resolved_json);
  } else {
    r.config_note = std::string(config.status().message());
  }
  for (const io::GgufTensorInfo& t : gguf->tensors()) {
    r.tensors.push_back({{"name", t.name}, {"dtype", io::GgmlTypeName(t.type)}, {"shape", Shape(t.shape)}});
  }
  return r;
}

absl::StatusOr<Report> InspectSafetensors(const std::string& path) {
  Report r;
  std::string config_dir;
  if (IsDirectory(path)) {
    config_dir = path;
  } else if (absl::EndsWith(path, ".json")) {
    const size_t slash = path.rfind('/');
    config_dir = slash == std::string::npos ? "." : path.substr(0, slash);
  }
  LLMTRAIN_ASSIGN_OR_RETURN(auto checkpoint, io::Checkpoint::Open(path));
  r.format = checkpoint->index_path().empty() ? "safetensors" : "safetensors-sharded";
  for (const auto& shard : checkpoint->shards()) {
    for (const auto& [k, v] : shard->metadata()) r.metadata[k] = v;
  }
  for (const auto& [k, v] : checkpoint->index_metadata()) r.metadata["index." + k] = json::parse(v);
  if (!config_dir.empty()) {
    auto config = io::LoadHfConfig(config_dir + "/config.json");
    if (config.ok()) {
      r.config = json::parse(config->resolved_json);
    } else {
      r.config_note = std::string(config.status().message());
    }
  } else {
    r.config_note = "a lone .safetensors file has no config.json";
  }
  for (const std::string& name : checkpoint->Names()) {
    LLMTRAIN_ASSIGN_OR_RETURN(auto found, checkpoint->Find(name));
    r.tensors.push_back({{"name", name},
                         {"dtype", SafetensorsName(found.second->dtype)},
                         {"shape", Shape(found.second->shape)}});
  }
  return r;
}

std::string Preview(const json& v) {
  if (!v.is_array() || v.size() <= kTextArrayPreview) {
    return v.dump(-1, ' ', false, json::error_handler_t::replace);
  }
  json head(v.begin(), v.begin() + kTextArrayPreview);
  std::string s = head.dump(-1, ' ', false, json::error_handler_t::replace);
  s.pop_back();
  return absl::StrCat(s, ", ... (", v.size(), " elements)]");
}

void PrintText(const std::string& path, const Report& r) {
  std::printf("%s\nformat: %s\n\nmetadata (%zu):\n", path.c_str(), r.format.c_str(), r.metadata.size());
  for (auto it = r.metadata.begin(); it != r.metadata.end(); ++it) {
    std::printf("  %s = %s\n", it.key().c_str(), Preview(*it).c_str());
  }
  if (r.config.is_null()) {
    std::printf("\nconfig: none (%s)\n", r.config_note.c_str());
  } else {
    std::printf("\nconfig:\n");
    for (auto it = r.config.begin(); it != r.config.end(); ++it) {
      std::printf("  %s = %s\n", it.key().c_str(), Preview(*it).c_str());
    }
  }
  std::printf("\ntensors (%zu):\n", r.tensors.size());
  size_t width = 0;
  for (const json& t : r.tensors) width = std::max(width, t["name"].get_ref<const std::string&>().size());
  for (const json& t : r.tensors) {
    std::printf("  %-*s  %-7s %s\n", static_cast<int>(width), t["name"].get_ref<const std::string&>().c_str(),
                t["dtype"].get_ref<const std::string&>().c_str(), t["shape"].dump().c_str());
  }
}

}  // namespace

int RunInspect(const std::vector<std::string>& args) {
  std::string path;
  bool as_json = false;
  for (const std::string& a : args) {
    if (a == "--help" || a == "-h") {
      std::fputs(kHelp, stdout);
      return 0;
    }
    if (a == "--json") {
      as_json = true;
    } else if (absl::StartsWith(a, "--")) {
      return Fail("inspect", absl::StrCat("unknown option ", a, "\n", kHelp), 2);
    } else if (path.empty()) {
      path = a;
    } else {
      return Fail("inspect", absl::StrCat("expected one PATH\n", kHelp), 2);
    }
  }
  if (path.empty()) return Fail("inspect", absl::StrCat("missing PATH\n", kHelp), 2);
  auto report = LooksLikeGguf(path) ? InspectGguf(path) : InspectSafetensors(path);
  if (!report.ok()) return Fail("inspect", std::string(report.status().message()));
  if (as_json) {
    json out = {{"format", report->format}, {"metadata", report->metadata},
                {"config", report->config}, {"tensors", report->tensors}};
    std::printf("%s\n", out.dump(-1, ' ', false, json::error_handler_t::replace).c_str());
  } else {
    PrintText(path, *report);
  }
  return 0;
}

}  // namespace llmtrain::cli
