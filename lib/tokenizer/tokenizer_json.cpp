// tokenizer.json (HF `tokenizers` serialization) and tokenizer_config.json → Pipeline.
// Every field is type-checked and an unsupported component is refused by name, so a tokenizer we
// cannot reproduce exactly never loads silently.
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "io/json_checked.h"
#include "llmtrain/core/atomic_file.h"
#include "llmtrain/core/status.h"
#include "llmtrain/io/gguf.h"
#include "llmtrain/tokenizer/tokenizer.h"
#include "tokenizer/pipeline.h"

namespace llmtrain::tokenizer {
namespace {

using nlohmann::json;
using detail::Pipeline;

absl::Status Bad(absl::string_view where, absl::string_view field, absl::string_view problem) {
  return absl::InvalidArgumentError(absl::StrCat(where, ": ", field, ": ", problem));
}

absl::StatusOr<std::string> GetString(absl::string_view where, const std::string& field, const json& obj,
                                      const char* key, std::optional<std::string> fallback = std::nullopt) {
  const auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) {
    if (fallback) return *fallback;
    return Bad(where, absl::StrCat(field, ".", key), "missing");
  }
  if (!it->is_string()) {
    return Bad(where, absl::StrCat(field, ".", key), absl::StrCat("expected a string, found ", io::detail::Describe(*it)));
  }
  return it->get<std::string>();
}

absl::StatusOr<bool> GetBool(absl::string_view where, const std::string& field, const json& obj, const char* key,
                             bool fallback) {
  const auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return fallback;
  if (!it->is_boolean()) {
    return Bad(where, absl::StrCat(field, ".", key), absl::StrCat("expected true or false, found ", io::detail::Describe(*it)));
  }
  return it->get<bool>();
}

absl::StatusOr<int64_t> GetInt(absl::string_view where, const std::string& field, const json& obj, const char* key,
                               int64_t fallback) {
  const auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return fallback;
  if (!it->is_number_integer()) {
    return Bad(where, absl::StrCat(field, ".", key), absl::StrCat("expected an integer, found ", io::detail::Describe(*it)));
  }
  return it->get<int64_t>();
}

absl::StatusOr<std::string> GetType(absl::string_view where, const std::string& field, const json& obj) {
  if (!obj.is_object()) return Bad(where, field, absl::StrCat("expected an object, found ", io::detail::Describe(obj)));
  return GetString(where, field, obj, "type");
}

// {"String": "x"} or {"Regex": "x"}: (is_regex, text).
absl::StatusOr<std::pair<bool, std::string>> GetPattern(absl::string_view where, const std::string& field,
                                                        const json& obj) {
  const auto it = obj.find("pattern");
  if (it == obj.end() || !it->is_object() || it->size() != 1) {
    return Bad(where, field + ".pattern", "expected {\"String\": …} or {\"Regex\": …}");
  }
  if (it->contains("String") && (*it)["String"].is_string()) return std::make_pair(false, (*it)["String"].get<std::string>());
  if (it->contains("Regex") && (*it)["Regex"].is_string()) return std::make_pair(true, (*it)["Regex"].get<std::string>());
  return Bad(where, field + ".pattern", "expected {\"String\": …} or {\"Regex\": …}");
}

absl::Status ParseNormalizer(absl::string_view where, const std::string& field, const json& n, Pipeline* p) {
  if (n.is_null()) return absl::OkStatus();
  LLMTRAIN_ASSIGN_OR_RETURN(const std::string type, GetType(where, field, n));
  using K = detail::NormalizerStep::Kind;
  detail::NormalizerStep step;
  if (type == "Sequence") {
    const auto it = n.find("normalizers");
    if (it == n.end() || !it->is_array()) return Bad(where, field + ".normalizers", "expected an array");
    for (size_t i = 0; i < it->size(); ++i) {
      LLMTRAIN_RETURN_IF_ERROR(ParseNormalizer(where, absl::StrCat(field, ".normalizers[", i, "]"), (*it)[i], p));
    }
    return absl::OkStatus();
  } else if (type == "NFC") {
    step.kind = K::kNfc;
  } else if (type == "NFD") {
    step.kind = K::kNfd;
  } else if (type == "NFKC") {
    step.kind = K::kNfkc;
  } else if (type == "NFKD") {
    step.kind = K::kNfkd;
  } else if (type == "Lowercase") {
    step.kind = K::kLowercase;
  } else if (type == "Replace") {
    LLMTRAIN_ASSIGN_OR_RETURN(const auto pattern, GetPattern(where, field, n));
    if (pattern.first) return Bad(where, field + ".pattern", "a Regex pattern in a Replace normalizer is not supported");
    if (pattern.second.empty()) return Bad(where, field + ".pattern", "an empty pattern replaces nothing");
    step.kind = K::kReplace;
    step.pattern = pattern.second;
    LLMTRAIN_ASSIGN_OR_RETURN(step.content, GetString(where, field, n, "content"));
  } else if (type == "Prepend") {
    step.kind = K::kPrepend;
    LLMTRAIN_ASSIGN_OR_RETURN(step.content, GetString(where, field, n, "prepend"));
  } else if (type == "Strip") {
    step.kind = K::kStrip;
    LLMTRAIN_ASSIGN_OR_RETURN(step.left, GetBool(where, field, n, "strip_left", true));
    LLMTRAIN_ASSIGN_OR_RETURN(step.right, GetBool(where, field, n, "strip_right", true));
  } else {
    return Bad(where, field + ".type",
               absl::StrCat("the normalizer \"", type,
                            "\" is not supported (supported: NFC, NFD, NFKC, NFKD, Lowercase, Replace, Prepend, "
                            "Strip, Sequence)"));
  }
  p->normalizer.push_back(std::move(step));
  return absl::OkStatus();
}

absl::StatusOr<detail::SplitBehavior> ParseBehavior(absl::string_view where, const std::string& field,
                                                    const json& obj) {
  LLMTRAIN_ASSIGN_OR_RETURN(const std::string b, GetString(where, field, obj, "behavior"));
  using B = detail::SplitBehavior;
  if (b == "Removed") return B::kRemoved;
  if (b == "Isolated") return B::kIsolated;
  if (b == "MergedWithPrevious") return B::kMergedWithPrevious;
  if (b == "MergedWithNext") return B::kMergedWithNext;
  if (b == "Contiguous") return B::kContiguous;
  return Bad(where, field + ".behavior", absl::StrCat("unknown split behavior \"", b, "\""));
}

absl::Status ParsePreTokenizer(absl::string_view where, const std::string& field, const json& n, Pipeline* p) {
  if (n.is_null()) return absl::OkStatus();
  LLMTRAIN_ASSIGN_OR_RETURN(const std::string type, GetType(where, field, n));
  using K = detail::PreTokenizerStep::Kind;
  detail::PreTokenizerStep step;
  if (type == "Sequence") {
    const auto it = n.find("pretokenizers");
    if (it == n.end() || !it->is_array()) return Bad(where, field + ".pretokenizers", "expected an array");
    for (size_t i = 0; i < it->size(); ++i) {
      LLMTRAIN_RETURN_IF_ERROR(ParsePreTokenizer(where, absl::StrCat(field, ".pretokenizers[", i, "]"), (*it)[i], p));
    }
    return absl::OkStatus();
  } else if (type == "Split") {
    step.kind = K::kSplit;
    LLMTRAIN_ASSIGN_OR_RETURN(const auto pattern, GetPattern(where, field, n));
    if (pattern.first) {
      LLMTRAIN_ASSIGN_OR_RETURN(auto regex, detail::Regex::Compile(absl::StrCat(where, ": ", field, ".pattern"),
                                                                   pattern.second));
      step.regex = std::move(regex);
    } else {
      step.literal = pattern.second;
    }
    LLMTRAIN_ASSIGN_OR_RETURN(step.behavior, ParseBehavior(where, field, n));
    LLMTRAIN_ASSIGN_OR_RETURN(step.invert, GetBool(where, field, n, "invert", false));
  } else if (type == "ByteLevel") {
    step.kind = K::kByteLevel;
    LLMTRAIN_ASSIGN_OR_RETURN(step.add_prefix_space, GetBool(where, field, n, "add_prefix_space", true));
    LLMTRAIN_ASSIGN_OR_RETURN(step.use_regex, GetBool(where, field, n, "use_regex", true));
  } else if (type == "Metaspace") {
    step.kind = K::kMetaspace;
    LLMTRAIN_ASSIGN_OR_RETURN(step.replacement, GetString(where, field, n, "replacement", std::string("\xE2\x96\x81")));
    LLMTRAIN_ASSIGN_OR_RETURN(step.prepend_scheme, GetString(where, field, n, "prepend_scheme", std::string("always")));
    LLMTRAIN_ASSIGN_OR_RETURN(step.split, GetBool(where, field, n, "split", true));
    if (step.prepend_scheme != "always" && step.prepend_scheme != "first" && step.prepend_scheme != "never") {
      return Bad(where, field + ".prepend_scheme", absl::StrCat("unknown value \"", step.prepend_scheme, "\""));
    }
  } else {
    return Bad(where, field + ".type",
               absl::StrCat("the pre-tokenizer \"", type,
                            "\" is not supported (supported: Split, ByteLevel, Metaspace, Sequence)"));
  }
  p->pre_tokenizer.push_back(std::move(step));
  return absl::OkStatus();
}

absl::Status ParseDecoder(absl::string_view where, const std::string& field, const json& n, Pipeline* p) {
  if (n.is_null()) return absl::OkStatus();
  LLMTRAIN_ASSIGN_OR_RETURN(const std::string type, GetType(where, field, n));
  using K = detail::DecoderStep::Kind;
  detail::DecoderStep step;
  if (type == "Sequence") {
    const auto it = n.find("decoders");
    if (it == n.end() || !it->is_array()) return Bad(where, field + ".decoders", "expected an array");
    for (size_t i = 0; i < it->size(); ++i) {
      LLMTRAIN_RETURN_IF_ERROR(ParseDecoder(where, absl::StrCat(field, ".decoders[", i, "]"), (*it)[i], p));
    }
    return absl::OkStatus();
  } else if (type == "ByteLevel") {
    step.kind = K::kByteLevel;
  } else if (type == "ByteFallback") {
    step.kind = K::kByteFallback;
  } else if (type == "Fuse") {
    step.kind = K::kFuse;
  } else if (type == "Replace") {
    LLMTRAIN_ASSIGN_OR_RETURN(const auto pattern, GetPattern(where, field, n));
    if (pattern.first || pattern.second.empty()) {
      return Bad(where, field + ".pattern", "only a non-empty String pattern is supported in a Replace decoder");
    }
    step.kind = K::kReplace;
    step.pattern = pattern.second;
    LLMTRAIN_ASSIGN_OR_RETURN(step.content, GetString(where, field, n, "content"));
  } else if (type == "Strip") {
    step.kind = K::kStrip;
    LLMTRAIN_ASSIGN_OR_RETURN(step.content, GetString(where, field, n, "content"));
    LLMTRAIN_ASSIGN_OR_RETURN(const int64_t start, GetInt(where, field, n, "start", 0));
    LLMTRAIN_ASSIGN_OR_RETURN(const int64_t stop, GetInt(where, field, n, "stop", 0));
    if (start < 0 || stop < 0 || start > 1000000 || stop > 1000000) return Bad(where, field, "start/stop out of range");
    step.start = static_cast<int>(start);
    step.stop = static_cast<int>(stop);
  } else if (type == "Metaspace") {
    step.kind = K::kMetaspace;
    LLMTRAIN_ASSIGN_OR_RETURN(step.replacement, GetString(where, field, n, "replacement", std::string("\xE2\x96\x81")));
    LLMTRAIN_ASSIGN_OR_RETURN(step.prepend_scheme, GetString(where, field, n, "prepend_scheme", std::string("always")));
  } else {
    return Bad(where, field + ".type",
               absl::StrCat("the decoder \"", type,
                            "\" is not supported (supported: ByteLevel, ByteFallback, Fuse, Replace, Strip, "
                            "Metaspace, Sequence)"));
  }
  p->decoder.push_back(std::move(step));
  return absl::OkStatus();
}

absl::Status ParsePostProcessor(absl::string_view where, const std::string& field, const json& n, Pipeline* p) {
  if (n.is_null()) return absl::OkStatus();
  LLMTRAIN_ASSIGN_OR_RETURN(const std::string type, GetType(where, field, n));
  if (type == "Sequence") {
    const auto it = n.find("processors");
    if (it == n.end() || !it->is_array()) return Bad(where, field + ".processors", "expected an array");
    for (size_t i = 0; i < it->size(); ++i) {
      LLMTRAIN_RETURN_IF_ERROR(ParsePostProcessor(where, absl::StrCat(field, ".processors[", i, "]"), (*it)[i], p));
    }
    return absl::OkStatus();
  }
  if (type == "ByteLevel") return absl::OkStatus();  // offsets only; ids unchanged
  if (type != "TemplateProcessing") {
    return Bad(where, field + ".type",
               absl::StrCat("the post-processor \"", type,
                            "\" is not supported (supported: TemplateProcessing, ByteLevel, Sequence)"));
  }
  const auto specials = n.find("special_tokens");
  const auto single = n.find("single");
  if (single == n.end() || !single->is_array()) return Bad(where, field + ".single", "expected an array");
  p->post_single.clear();
  for (size_t i = 0; i < single->size(); ++i) {
    const json& item = (*single)[i];
    const std::string item_field = absl::StrCat(field, ".single[", i, "]");
    detail::TemplateItem out;
    if (item.is_object() && item.contains("Sequence")) {
      out.is_sequence = true;
    } else if (item.is_object() && item.contains("SpecialToken") && item["SpecialToken"].is_object()) {
      LLMTRAIN_ASSIGN_OR_RETURN(const std::string name,
                                GetString(where, item_field + ".SpecialToken", item["SpecialToken"], "id"));
      if (specials == n.end() || !specials->is_object() || !specials->contains(name)) {
        return Bad(where, field + ".special_tokens", absl::StrCat("\"", name, "\" is used in single but not defined"));
      }
      const json& special = (*specials)[name];
      const auto ids = special.is_object() ? special.find("ids") : special.end();
      if (!special.is_object() || ids == special.end() || !ids->is_array()) {
        return Bad(where, absl::StrCat(field, ".special_tokens.", name, ".ids"), "expected an array");
      }
      for (const json& id : *ids) {
        if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() > INT32_MAX) {
          return Bad(where, absl::StrCat(field, ".special_tokens.", name, ".ids"), "expected token ids");
        }
        out.ids.push_back(id.get<int32_t>());
      }
    } else {
      return Bad(where, item_field, "expected {\"Sequence\": …} or {\"SpecialToken\": …}");
    }
    p->post_single.push_back(std::move(out));
  }
  return absl::OkStatus();
}

absl::Status ParseModel(absl::string_view where, const json& m, Pipeline* p) {
  LLMTRAIN_ASSIGN_OR_RETURN(const std::string type, GetType(where, "model", m));
  if (type != "BPE") {
    return Bad(where, "model.type", absl::StrCat("the model \"", type, "\" is not supported (supported: BPE)"));
  }
  if (m.contains("dropout") && !m["dropout"].is_null()) {
    return Bad(where, "model.dropout", "BPE dropout is not supported (deterministic tokenization only)");
  }
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    if (m.contains(key) && !m[key].is_null() && !(m[key].is_string() && m[key].get<std::string>().empty())) {
      return Bad(where, absl::StrCat("model.", key), "is not supported");
    }
  }
  detail::BpeModel& model = p->model;
  const auto vocab = m.find("vocab");
  if (vocab == m.end() || !vocab->is_object()) return Bad(where, "model.vocab", "expected an object of token → id");
  int64_t max_id = -1;
  for (const auto& [token, id] : vocab->items()) {
    if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() > 16777216) {
      return Bad(where, absl::StrCat("model.vocab[\"", token, "\"]"), "expected an id in [0, 2^24]");
    }
    max_id = std::max(max_id, id.get<int64_t>());
    model.vocab[token] = id.get<int32_t>();
  }
  model.id_to_token.assign(static_cast<size_t>(max_id + 1), std::string());
  for (const auto& [token, id] : model.vocab) model.id_to_token[id] = token;
  LLMTRAIN_ASSIGN_OR_RETURN(model.fuse_unk, GetBool(where, "model", m, "fuse_unk", false));
  LLMTRAIN_ASSIGN_OR_RETURN(model.byte_fallback, GetBool(where, "model", m, "byte_fallback", false));
  LLMTRAIN_ASSIGN_OR_RETURN(model.ignore_merges, GetBool(where, "model", m, "ignore_merges", false));
  if (m.contains("unk_token") && !m["unk_token"].is_null()) {
    LLMTRAIN_ASSIGN_OR_RETURN(const std::string unk, GetString(where, "model", m, "unk_token"));
    const auto it = model.vocab.find(unk);
    if (it == model.vocab.end()) return Bad(where, "model.unk_token", absl::StrCat("\"", unk, "\" is not in the vocabulary"));
    model.unk_id = it->second;
  }
  const auto merges = m.find("merges");
  if (merges == m.end() || !merges->is_array()) return Bad(where, "model.merges", "expected an array");
  model.merges.reserve(merges->size());
  for (size_t rank = 0; rank < merges->size(); ++rank) {
    const json& merge = (*merges)[rank];
    std::string left, right;
    if (merge.is_string()) {
      const std::vector<std::string> parts = absl::StrSplit(merge.get<std::string>(), ' ');
      if (parts.size() != 2) return Bad(where, absl::StrCat("model.merges[", rank, "]"), "expected \"left right\"");
      left = parts[0];
      right = parts[1];
    } else if (merge.is_array() && merge.size() == 2 && merge[0].is_string() && merge[1].is_string()) {
      left = merge[0].get<std::string>();
      right = merge[1].get<std::string>();
    } else {
      return Bad(where, absl::StrCat("model.merges[", rank, "]"), "expected \"left right\" or [left, right]");
    }
    const auto a = model.vocab.find(left), b = model.vocab.find(right), ab = model.vocab.find(left + right);
    if (a == model.vocab.end() || b == model.vocab.end() || ab == model.vocab.end()) {
      return Bad(where, absl::StrCat("model.merges[", rank, "]"),
                 absl::StrCat("\"", left, "\" + \"", right, "\": a part or the merged token is not in the vocabulary"));
    }
    const uint64_t key = (static_cast<uint64_t>(static_cast<uint32_t>(a->second)) << 32) | static_cast<uint32_t>(b->second);
    model.merges.emplace(key, std::make_pair(static_cast<int32_t>(rank), ab->second));
  }
  return absl::OkStatus();
}

// A token named in tokenizer_config.json: "…" or {"content": "…"}.
std::optional<std::string> ConfigToken(const json& config, const char* key) {
  const auto it = config.find(key);
  if (it == config.end()) return std::nullopt;
  if (it->is_string()) return it->get<std::string>();
  if (it->is_object() && it->contains("content") && (*it)["content"].is_string()) return (*it)["content"].get<std::string>();
  return std::nullopt;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromJson(absl::string_view where,
                                                               absl::string_view tokenizer_json,
                                                               absl::string_view config_json) {
  io::detail::JsonLimits limits;
  limits.max_depth = 32;
  LLMTRAIN_ASSIGN_OR_RETURN(const json root, io::detail::ParseJson(where, tokenizer_json, limits));
  if (!root.is_object()) return Bad(where, "(top level)", "expected an object");
  Pipeline p;
  if (root.contains("added_tokens")) {
    const json& added = root["added_tokens"];
    if (!added.is_array()) return Bad(where, "added_tokens", "expected an array");
    for (size_t i = 0; i < added.size(); ++i) {
      const std::string field = absl::StrCat("added_tokens[", i, "]");
      const json& t = added[i];
      if (!t.is_object()) return Bad(where, field, "expected an object");
      AddedToken token;
      LLMTRAIN_ASSIGN_OR_RETURN(token.content, GetString(where, field, t, "content"));
      LLMTRAIN_ASSIGN_OR_RETURN(const int64_t id, GetInt(where, field, t, "id", -1));
      if (id < 0 || id > 16777216) return Bad(where, field + ".id", "expected an id in [0, 2^24]");
      token.id = static_cast<int32_t>(id);
      LLMTRAIN_ASSIGN_OR_RETURN(token.special, GetBool(where, field, t, "special", false));
      LLMTRAIN_ASSIGN_OR_RETURN(token.lstrip, GetBool(where, field, t, "lstrip", false));
      LLMTRAIN_ASSIGN_OR_RETURN(token.rstrip, GetBool(where, field, t, "rstrip", false));
      LLMTRAIN_ASSIGN_OR_RETURN(token.single_word, GetBool(where, field, t, "single_word", false));
      LLMTRAIN_ASSIGN_OR_RETURN(token.normalized, GetBool(where, field, t, "normalized", !token.special));
      p.added.push_back(std::move(token));
    }
  }
  if (!root.contains("model")) return Bad(where, "model", "missing");
  LLMTRAIN_RETURN_IF_ERROR(ParseModel(where, root["model"], &p));
  LLMTRAIN_RETURN_IF_ERROR(ParseNormalizer(where, "normalizer", root.value("normalizer", json()), &p));
  LLMTRAIN_RETURN_IF_ERROR(ParsePreTokenizer(where, "pre_tokenizer", root.value("pre_tokenizer", json()), &p));
  LLMTRAIN_RETURN_IF_ERROR(ParseDecoder(where, "decoder", root.value("decoder", json()), &p));
  LLMTRAIN_RETURN_IF_ERROR(ParsePostProcessor(where, "post_processor", root.value("post_processor", json()), &p));

  auto find_id = [&](const std::string& token) -> std::optional<int32_t> {
    for (const AddedToken& t : p.added) {
      if (t.content == token) return t.id;
    }
    const auto it = p.model.vocab.find(token);
    if (it != p.model.vocab.end()) return it->second;
    return std::nullopt;
  };
  if (!config_json.empty()) {
    const std::string config_where = absl::StrCat(where, " (tokenizer_config.json)");
    LLMTRAIN_ASSIGN_OR_RETURN(const json config, io::detail::ParseJson(config_where, config_json));
    if (!config.is_object()) return Bad(config_where, "(top level)", "expected an object");
    if (auto t = ConfigToken(config, "bos_token")) p.bos_id = find_id(*t);
    if (auto t = ConfigToken(config, "eos_token")) p.eos_id = find_id(*t);
    if (auto t = ConfigToken(config, "pad_token")) p.pad_id = find_id(*t);
    if (config.contains("chat_template")) {
      const json& ct = config["chat_template"];
      if (ct.is_string()) {
        p.chat_template = ct.get<std::string>();
      } else if (ct.is_array()) {  // [{"name": "default", "template": "…"}, …]
        for (const json& entry : ct) {
          if (entry.is_object() && entry.value("name", "") == "default" && entry.contains("template") &&
              entry["template"].is_string()) {
            p.chat_template = entry["template"].get<std::string>();
          }
        }
      } else if (!ct.is_null()) {
        return Bad(config_where, "chat_template", "expected a string or a list of named templates");
      }
    }
  }
  return detail::Build(where, std::move(p));
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::Load(absl::string_view path) {
  std::string json_path(path), config_path;
  if (absl::EndsWith(path, ".gguf")) {
    LLMTRAIN_ASSIGN_OR_RETURN(auto file, io::GgufFile::Open(path));
    return FromGguf(*file);
  }
  if (IsDirectory(path)) {
    json_path = absl::StrCat(path, "/tokenizer.json");
    config_path = absl::StrCat(path, "/tokenizer_config.json");
    if (!IsRegularFile(json_path)) {
      return absl::NotFoundError(absl::StrCat(path, ": no tokenizer.json in this folder (a GGUF file works too)"));
    }
  } else {
    const size_t slash = json_path.rfind('/');
    config_path = (slash == std::string::npos ? std::string() : json_path.substr(0, slash + 1)) + "tokenizer_config.json";
  }
  LLMTRAIN_ASSIGN_OR_RETURN(const std::string text, ReadFileToString(json_path));
  std::string config;
  if (IsRegularFile(config_path)) {
    LLMTRAIN_ASSIGN_OR_RETURN(config, ReadFileToString(config_path));
  }
  LLMTRAIN_ASSIGN_OR_RETURN(auto tok, FromJson(json_path, text, config));
  // transformers v5 saves the chat template next to the tokenizer as chat_template.jinja.
  const std::string jinja_path = config_path.substr(0, config_path.size() - std::string("tokenizer_config.json").size()) +
                                 "chat_template.jinja";
  if (tok->chat_template_source().empty() && IsRegularFile(jinja_path)) {
    LLMTRAIN_ASSIGN_OR_RETURN(std::string jinja, ReadFileToString(jinja_path));
    tok->set_chat_template_source(std::move(jinja));
  }
  return tok;
}

}  // namespace llmtrain::tokenizer
