// config.json → HfConfig, with the defaults and post-init rules of transformers' configuration
// classes. Each class is a schema (io/config_schema.h, one per family in families.cpp): a table
// of fields (name, type, default) and the rules that differ between families as options, which
// ResolveText() applies. No family is named here.
#include "llmtrain/io/hf_config.h"

#include <algorithm>
#include <set>

#include "absl/strings/str_cat.h"
#include "io/config_schema.h"
#include "io/json_checked.h"
#include "llmtrain/core/atomic_file.h"
#include "llmtrain/core/status.h"
#include "llmtrain/io/families.h"
#include "llmtrain/io/gguf.h"

namespace llmtrain::io {
namespace {

using nlohmann::json;

constexpr int64_t kMaxLayers = 65536;

using detail::ConfigSchema;
using detail::Field;
using detail::Kind;
using detail::SlidingLayers;
using detail::TextRules;

// Keys every config class consumes itself (never kept as unknown keys).
const std::set<std::string> kConsumedKeys = {"model_type", "transformers_version", "torch_dtype",
                                             "rope_theta", "rope_scaling", "rope_local_base_freq",
                                             "sliding_window_pattern"};

bool KindAccepts(Kind kind, const json& v) {
  const bool is_int = v.is_number_integer();
  switch (kind) {
    case Kind::kInt: return is_int;
    case Kind::kIntOrNull: return is_int || v.is_null();
    case Kind::kFloat: return v.is_number();
    case Kind::kFloatOrNull: return v.is_number() || v.is_null();
    case Kind::kBool: return v.is_boolean();
    case Kind::kBoolOrNull: return v.is_boolean() || v.is_null();
    case Kind::kString: return v.is_string();
    case Kind::kStringListOrNull:
      if (v.is_null()) return true;
      if (!v.is_array()) return false;
      for (const json& e : v) if (!e.is_string()) return false;
      return true;
    case Kind::kTokenIds:
      if (is_int || v.is_null()) return true;
      if (!v.is_array()) return false;
      for (const json& e : v) if (!e.is_number_integer()) return false;
      return true;
    case Kind::kIntOrPair:
      if (is_int) return true;
      return v.is_array() && v.size() == 2 && v[0].is_number_integer() && v[1].is_number_integer();
    case Kind::kObjectOrNull: return v.is_object() || v.is_null();
  }
  return false;
}

const char* KindName(Kind kind) {
  switch (kind) {
    case Kind::kInt: return "an integer";
    case Kind::kIntOrNull: return "an integer or null";
    case Kind::kFloat: return "a number";
    case Kind::kFloatOrNull: return "a number or null";
    case Kind::kBool: return "a boolean";
    case Kind::kBoolOrNull: return "a boolean or null";
    case Kind::kString: return "a string";
    case Kind::kStringListOrNull: return "a list of strings or null";
    case Kind::kTokenIds: return "an integer, a list of integers, or null";
    case Kind::kIntOrPair: return "an integer or [height, width]";
    case Kind::kObjectOrNull: return "an object or null";
  }
  return "?";
}

// Fills `out` with every field of `fields`: the input's value (type-checked) or the default.
// Input keys that are not fields are copied as they are (unknown keys are kept).
absl::Status ApplyFields(const std::string& where, const json& input,
                         const std::vector<Field>& fields, json* out) {
  std::set<std::string> known;
  for (const Field& f : fields) {
    known.insert(f.name);
    const auto it = input.find(f.name);
    if (it == input.end()) {
      (*out)[f.name] = json::parse(f.default_json);
      continue;
    }
    if (!KindAccepts(f.kind, *it)) {
      return absl::InvalidArgumentError(absl::StrCat(where, f.name, ": expected ",
                                                     KindName(f.kind), ", found ",
                                                     detail::Describe(*it)));
    }
    (*out)[f.name] = *it;
  }
  for (auto it = input.begin(); it != input.end(); ++it) {
    if (known.count(it.key()) == 0 && kConsumedKeys.count(it.key()) == 0 &&
        it.key() != "text_config" && it.key() != "vision_config" && it.key() != "dtype") {
      (*out)[it.key()] = *it;
    }
  }
  return absl::OkStatus();
}

// transformers `standardize_rope_params` for one flat dict: rope_type from the legacy "type"
// key (which stays), and the keys each type requires.
absl::Status StandardizeRope(const std::string& where, json* rope, int64_t max_positions) {
  if (!rope->contains("rope_type")) {
    (*rope)["rope_type"] = rope->contains("type") ? (*rope)["type"] : json("default");
  }
  if (!(*rope)["rope_type"].is_string()) {
    return absl::InvalidArgumentError(absl::StrCat(where, "rope_type: expected a string, found ",
                                                   detail::Describe((*rope)["rope_type"])));
  }
  const std::string type = (*rope)["rope_type"].get<std::string>();
  if ((type == "yarn" || type == "llama3" || type == "longrope") &&
      !rope->contains("original_max_position_embeddings")) {
    (*rope)["original_max_position_embeddings"] = max_positions;
  }
  if ((type == "linear" || type == "dynamic" || type == "yarn" || type == "llama3") &&
      !rope->contains("factor")) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, "rope_type \"", type, "\" needs a \"factor\""));
  }
  for (const char* key : {"rope_theta", "factor"}) {
    if (rope->contains(key) && !(*rope)[key].is_number()) {
      return absl::InvalidArgumentError(absl::StrCat(where, key, ": expected a number, found ",
                                                     detail::Describe((*rope)[key])));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<RopeParameters> ToRope(const json& rope) {
  RopeParameters r;
  r.rope_type = rope.value("rope_type", "default");
  r.rope_theta = rope.value("rope_theta", 10000.0);
  if (rope.contains("factor")) r.factor = rope["factor"].get<double>();
  return r;
}

// The per-class rules a table cannot state; `input` is the raw JSON, `out` the filled fields.
absl::Status ResolveText(const std::string& where, const TextRules& rules, const json& input, json* out) {
  json& o = *out;
  const int64_t n_layers = o["num_hidden_layers"].get<int64_t>();
  const int64_t heads = o["num_attention_heads"].get<int64_t>();
  if (n_layers < 1 || heads < 1 || o["hidden_size"].get<int64_t>() < 1 ||
      o["vocab_size"].get<int64_t>() < 1 || o["intermediate_size"].get<int64_t>() < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        where, "vocab_size, hidden_size, intermediate_size, num_hidden_layers and "
               "num_attention_heads must be positive"));
  }
  // layer_types gets one entry per layer: refuse layer counts no model has before allocating
  // them (a fuzzed GGUF asked for 2^31 layers).
  if (n_layers > kMaxLayers) {
    return absl::InvalidArgumentError(absl::StrCat(where, "num_hidden_layers: ", n_layers,
                                                   " is over the limit of ", kMaxLayers));
  }
  if (rules.hidden_divisible_by_heads && o["hidden_size"].get<int64_t>() % heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat(where, "hidden_size: ", o["hidden_size"].dump(),
                                                   " is not a multiple of num_attention_heads ", heads));
  }
  // An explicit null means "as many as attention heads"; an absent key keeps the default.
  if (rules.null_kv_heads_means_heads && o["num_key_value_heads"].is_null()) o["num_key_value_heads"] = heads;
  if (rules.sliding_window_needs_flag && !o["use_sliding_window"].get<bool>()) o["sliding_window"] = nullptr;
  const int64_t kv_heads = o["num_key_value_heads"].get<int64_t>();
  if (kv_heads < 1 || heads % kv_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat(where, "num_key_value_heads: ", kv_heads,
                                                   " must be positive and divide num_attention_heads ",
                                                   heads));
  }
  if (o["layer_types"].is_null()) {
    json types = json::array();
    int64_t pattern = rules.full_attention_every;
    if (rules.sliding_window_pattern_key) {
      if (auto it = input.find("sliding_window_pattern"); it != input.end()) {
        if (!it->is_number_integer() || it->get<int64_t>() < 1) {
          return absl::InvalidArgumentError(absl::StrCat(
              where, "sliding_window_pattern: expected a positive integer, found ", detail::Describe(*it)));
        }
        pattern = it->get<int64_t>();
      }
    }
    for (int64_t i = 0; i < n_layers; ++i) {
      bool sliding;
      if (rules.sliding_layers == SlidingLayers::kAllButEveryNth) {
        sliding = (i + 1) % pattern != 0;
      } else {
        sliding = !o["sliding_window"].is_null() && i >= o["max_window_layers"].get<int64_t>();
      }
      types.push_back(sliding ? "sliding_attention" : "full_attention");
    }
    o["layer_types"] = types;
  } else {
    for (json& t : o["layer_types"]) {
      if (t == "attention") t = "full_attention";  // legacy name, remapped by transformers
      if (t != "full_attention" && t != "sliding_attention") {
        return absl::InvalidArgumentError(absl::StrCat(
            where, "layer_types: ", t.dump(), " is not \"full_attention\" or \"sliding_attention\""));
      }
    }
    if (static_cast<int64_t>(o["layer_types"].size()) != n_layers) {
      return absl::InvalidArgumentError(absl::StrCat(where, "layer_types: has ", o["layer_types"].size(),
                                                     " entries for num_hidden_layers ", n_layers));
    }
  }
  if (rules.sliding_window_pattern_key) {
    // The class keeps the pattern it used; a stored _sliding_window_pattern overwrites it without
    // changing layer_types.
    o["_sliding_window_pattern"] = input.value(
        "_sliding_window_pattern", input.value("sliding_window_pattern", json(rules.full_attention_every)));
  }

  // RoPE (transformers `convert_rope_params_to_dict`): legacy keys are consumed.
  const auto legacy = [&](const char* key) -> const json* {
    auto it = input.find(key);
    return it == input.end() || it->is_null() ? nullptr : &*it;
  };
  for (const char* key : {"rope_theta", "rope_local_base_freq"}) {
    if (const json* v = legacy(key); v && !v->is_number()) {
      return absl::InvalidArgumentError(absl::StrCat(where, key, ": expected a number, found ",
                                                     detail::Describe(*v)));
    }
  }
  if (const json* v = legacy("rope_scaling"); v && !v->is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(where, "rope_scaling: expected an object, found ",
                                                   detail::Describe(*v)));
  }
  const int64_t max_positions = o["max_position_embeddings"].get<int64_t>();
  if (rules.rope_per_layer_type) {
    json rope = o["rope_parameters"].is_null()
                    ? json{{"sliding_attention", {{"rope_type", "default"}}},
                           {"full_attention", {{"rope_type", "default"}}}}
                    : o["rope_parameters"];
    for (const char* layer : {"full_attention", "sliding_attention"}) {
      if (!rope.contains(layer)) rope[layer] = {{"rope_type", "default"}};
      if (!rope[layer].is_object()) {
        return absl::InvalidArgumentError(absl::StrCat(where, "rope_parameters.", layer,
                                                       ": expected an object"));
      }
    }
    if (const json* s = legacy("rope_scaling")) rope["full_attention"].update(*s);
    if (!rope["full_attention"].contains("rope_theta")) {
      const json* t = legacy("rope_theta");
      rope["full_attention"]["rope_theta"] = t ? *t : json(rules.full_rope_theta);
    }
    if (!rope["sliding_attention"].contains("rope_theta")) {
      const json* t = legacy("rope_local_base_freq");
      rope["sliding_attention"]["rope_theta"] = t ? *t : json(rules.sliding_rope_theta);
    }
    for (const char* layer : {"full_attention", "sliding_attention"}) {
      LLMTRAIN_RETURN_IF_ERROR(StandardizeRope(absl::StrCat(where, "rope_parameters.", layer, "."),
                                               &rope[layer], max_positions));
    }
    o["rope_parameters"] = rope;
  } else {
    json rope = json::object();
    if (const json* s = legacy("rope_scaling")) {
      rope = *s;
    } else if (o["rope_parameters"].is_object()) {
      rope = o["rope_parameters"];
    }
    if (!rope.contains("rope_theta")) {
      const json* t = legacy("rope_theta");
      rope["rope_theta"] = t ? *t : json(rules.full_rope_theta);
    }
    LLMTRAIN_RETURN_IF_ERROR(
        StandardizeRope(absl::StrCat(where, "rope_parameters."), &rope, max_positions));
    o["rope_parameters"] = rope;
  }
  const int64_t head_dim = o.contains("head_dim") && o["head_dim"].is_number_integer()
                               ? o["head_dim"].get<int64_t>()
                               : o["hidden_size"].get<int64_t>() / heads;
  if (head_dim < 2 || head_dim % 2 != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, "head_dim: RoPE needs an even head dimension, found ", head_dim));
  }
  return absl::OkStatus();
}

absl::StatusOr<TextConfig> ToTextConfig(const std::string& model_type, const json& o) {
  TextConfig t;
  t.model_type = model_type;
  t.vocab_size = o["vocab_size"].get<int64_t>();
  t.hidden_size = o["hidden_size"].get<int64_t>();
  t.intermediate_size = o["intermediate_size"].get<int64_t>();
  t.num_hidden_layers = o["num_hidden_layers"].get<int64_t>();
  t.num_attention_heads = o["num_attention_heads"].get<int64_t>();
  t.num_key_value_heads = o["num_key_value_heads"].get<int64_t>();
  t.head_dim = o.contains("head_dim") && o["head_dim"].is_number_integer()
                   ? o["head_dim"].get<int64_t>()
                   : t.hidden_size / t.num_attention_heads;
  t.max_position_embeddings = o["max_position_embeddings"].get<int64_t>();
  t.rms_norm_eps = o["rms_norm_eps"].get<double>();
  t.hidden_activation = o.contains("hidden_activation") ? o["hidden_activation"].get<std::string>()
                                                        : o["hidden_act"].get<std::string>();
  t.attention_bias = o.value("attention_bias", false);
  t.attention_dropout = o["attention_dropout"].is_null() ? 0.0 : o["attention_dropout"].get<double>();
  if (o.contains("query_pre_attn_scalar")) t.query_pre_attn_scalar = o["query_pre_attn_scalar"].get<double>();
  if (!o["sliding_window"].is_null()) t.sliding_window = o["sliding_window"].get<int64_t>();
  t.layer_types = o["layer_types"].get<std::vector<std::string>>();
  for (auto [key, target] : {std::pair{"final_logit_softcapping", &t.final_logit_softcapping},
                             std::pair{"attn_logit_softcapping", &t.attn_logit_softcapping}}) {
    if (o.contains(key) && !o[key].is_null()) *target = o[key].get<double>();
  }
  t.tie_word_embeddings = o["tie_word_embeddings"].get<bool>();
  const json& rope = o["rope_parameters"];
  if (rope.contains("full_attention")) {
    LLMTRAIN_ASSIGN_OR_RETURN(t.rope_full, ToRope(rope["full_attention"]));
    LLMTRAIN_ASSIGN_OR_RETURN(t.rope_sliding, ToRope(rope["sliding_attention"]));
  } else {
    LLMTRAIN_ASSIGN_OR_RETURN(t.rope_full, ToRope(rope));
    t.rope_sliding = t.rope_full;
  }
  if (!o["bos_token_id"].is_null()) t.bos_token_id = o["bos_token_id"].get<int64_t>();
  if (!o["pad_token_id"].is_null()) t.pad_token_id = o["pad_token_id"].get<int64_t>();
  const json& eos = o["eos_token_id"];
  if (eos.is_number_integer()) t.eos_token_ids.push_back(eos.get<int64_t>());
  if (eos.is_array()) t.eos_token_ids = eos.get<std::vector<int64_t>>();
  return t;
}

// A decoder's config class: its fields, then its rules.
absl::StatusOr<json> ResolveTextJson(const std::string& where, const ConfigSchema& schema, const json& input) {
  json out = json::object();
  LLMTRAIN_RETURN_IF_ERROR(ApplyFields(where, input, schema.fields, &out));
  LLMTRAIN_RETURN_IF_ERROR(ResolveText(where, schema.text, input, &out));
  out["model_type"] = schema.model_type;
  return out;
}

absl::StatusOr<std::optional<std::string>> ReadDtype(const std::string& where, const json& input) {
  for (const char* key : {"dtype", "torch_dtype"}) {  // dtype wins over the legacy torch_dtype
    auto it = input.find(key);
    if (it == input.end() || it->is_null()) continue;
    if (!it->is_string()) {
      return absl::InvalidArgumentError(absl::StrCat(where, key, ": expected a dtype name, found ",
                                                     detail::Describe(*it)));
    }
    return std::optional<std::string>(it->get<std::string>());
  }
  return std::optional<std::string>();
}

}  // namespace

absl::StatusOr<HfConfig> ParseHfConfig(absl::string_view where_view, absl::string_view json_text) {
  const std::string where(where_view);
  LLMTRAIN_ASSIGN_OR_RETURN(json input, detail::ParseJson(where, json_text));
  if (!input.is_object()) return absl::InvalidArgumentError(absl::StrCat(where, ": not a JSON object"));
  const std::string prefix = where + ": ";
  const auto type_it = input.find("model_type");
  if (type_it == input.end()) {
    return absl::InvalidArgumentError(absl::StrCat(prefix, "model_type: missing (required)"));
  }
  if (!type_it->is_string()) {
    return absl::InvalidArgumentError(
        absl::StrCat(prefix, "model_type: expected a string, found ", detail::Describe(*type_it)));
  }
  HfConfig config;
  config.model_type = type_it->get<std::string>();
  LLMTRAIN_ASSIGN_OR_RETURN(config.dtype, ReadDtype(prefix, input));
  const ConfigSchema* schema = detail::FindConfigSchema(config.model_type);
  if (FindFamily(config.model_type) == nullptr || schema == nullptr) {
    return absl::UnimplementedError(absl::StrCat(prefix, UnsupportedModelType(config.model_type)));
  }
  json resolved;
  if (!schema->text_model_type.empty()) {
    // An image+text class: its own fields, text_config and vision_config.
    const ConfigSchema* text_schema = detail::FindConfigSchema(schema->text_model_type);
    resolved = json::object();
    LLMTRAIN_RETURN_IF_ERROR(ApplyFields(prefix, input, schema->fields, &resolved));
    json text_input = json::object();
    if (auto it = input.find("text_config"); it != input.end() && !it->is_null()) {
      if (!it->is_object()) {
        return absl::InvalidArgumentError(absl::StrCat(prefix, "text_config: expected an object, found ",
                                                       detail::Describe(*it)));
      }
      text_input = *it;
    }
    // text_config is always the class's text class, whatever model_type it names.
    LLMTRAIN_ASSIGN_OR_RETURN(json text, ResolveTextJson(prefix + "text_config.", *text_schema, text_input));
    json vision_input = json::object();
    if (auto it = input.find("vision_config"); it != input.end() && !it->is_null()) {
      if (!it->is_object()) {
        return absl::InvalidArgumentError(absl::StrCat(prefix, "vision_config: expected an object, found ",
                                                       detail::Describe(*it)));
      }
      vision_input = *it;
    }
    const std::string vision_type = vision_input.value("model_type", "siglip_vision_model");
    if (vision_type != "siglip_vision_model") {
      return absl::UnimplementedError(absl::StrCat(prefix, "vision_config.model_type: \"", vision_type,
                                                   "\" (only siglip_vision_model is supported)"));
    }
    json vision = json::object();
    LLMTRAIN_RETURN_IF_ERROR(
        ApplyFields(prefix + "vision_config.", vision_input, schema->vision_fields, &vision));
    vision["model_type"] = "siglip_vision_model";
    LLMTRAIN_ASSIGN_OR_RETURN(config.text, ToTextConfig(text_schema->model_type, text));
    VisionConfig v;
    v.hidden_size = vision["hidden_size"].get<int64_t>();
    v.intermediate_size = vision["intermediate_size"].get<int64_t>();
    v.num_hidden_layers = vision["num_hidden_layers"].get<int64_t>();
    v.num_attention_heads = vision["num_attention_heads"].get<int64_t>();
    v.num_channels = vision["num_channels"].get<int64_t>();
    const auto side = [](const json& j) { return j.is_array() ? j[0].get<int64_t>() : j.get<int64_t>(); };
    v.image_size = side(vision["image_size"]);
    v.patch_size = side(vision["patch_size"]);
    v.hidden_act = vision["hidden_act"].get<std::string>();
    v.layer_norm_eps = vision["layer_norm_eps"].get<double>();
    v.vision_use_head = vision["vision_use_head"].get<bool>();
    if (v.patch_size < 1 || v.image_size < v.patch_size) {
      return absl::InvalidArgumentError(absl::StrCat(prefix, "vision_config.patch_size: ", v.patch_size,
                                                     " does not fit image_size ", v.image_size));
    }
    config.vision = v;
    const auto int_or = [&](const char* key, int64_t fallback) {
      return resolved[key].is_null() ? fallback : resolved[key].get<int64_t>();
    };
    config.mm_tokens_per_image = int_or("mm_tokens_per_image", 256);
    config.boi_token_index = int_or("boi_token_index", 255999);
    config.eoi_token_index = int_or("eoi_token_index", 256000);
    config.image_token_index = int_or("image_token_index", 262144);
    // Gemma3ForConditionalGeneration ties by the top-level flag.
    config.text.tie_word_embeddings =
        resolved["tie_word_embeddings"].is_null() ? false : resolved["tie_word_embeddings"].get<bool>();
    resolved["text_config"] = text;
    resolved["vision_config"] = vision;
  } else {
    LLMTRAIN_ASSIGN_OR_RETURN(resolved, ResolveTextJson(prefix, *schema, input));
    LLMTRAIN_ASSIGN_OR_RETURN(config.text, ToTextConfig(config.model_type, resolved));
  }
  resolved["model_type"] = config.model_type;
  resolved["dtype"] = config.dtype ? json(*config.dtype) : json(nullptr);
  config.resolved_json = resolved.dump(2, ' ', false, json::error_handler_t::replace);
  return config;
}

absl::StatusOr<HfConfig> LoadHfConfig(absl::string_view path_view) {
  std::string path(path_view);
  if (IsDirectory(path)) path += "/config.json";
  LLMTRAIN_ASSIGN_OR_RETURN(std::string text, ReadFileToString(path));
  return ParseHfConfig(path, text);
}

absl::StatusOr<std::string> GgufToConfigJson(const GgufFile& gguf) {
  const GgufValue* arch_value = gguf.FindMetadata("general.architecture");
  const std::string* arch = arch_value ? arch_value->AsString() : nullptr;
  if (arch == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(gguf.path(), ": general.architecture: missing or not a string"));
  }
  const FamilyInfo* family = FindFamilyForGguf(*arch);
  const ConfigSchema* schema = family ? detail::FindConfigSchema(family->model_type) : nullptr;
  if (schema == nullptr) {
    return absl::UnimplementedError(absl::StrCat(gguf.path(), ": ", UnsupportedGgufArchitecture(*arch)));
  }
  json config = json::object();
  // A GGUF holds the text backbone only (gemma3 becomes gemma3_text, as transformers does it).
  config["model_type"] = family->model_type;
  // GGUF key suffix → config key (transformers integrations/ggml.py GGUF_CONFIG_MAPPING, plus
  // head_dim for qwen3 and the Gemma 2 soft-caps, which transformers leaves at their defaults).
  const std::vector<std::pair<std::string, std::string>> mapping = {
      {"context_length", "max_position_embeddings"}, {"block_count", "num_hidden_layers"},
      {"feed_forward_length", "intermediate_size"},   {"embedding_length", "hidden_size"},
      {"rope.freq_base", "rope_theta"},               {"attention.head_count", "num_attention_heads"},
      {"attention.head_count_kv", "num_key_value_heads"},
      {"attention.layer_norm_rms_epsilon", "rms_norm_eps"}, {"vocab_size", "vocab_size"},
      {"attention.key_length", "head_dim"},           {"attention.sliding_window", "sliding_window"},
      {"attn_logit_softcapping", "attn_logit_softcapping"},
      {"final_logit_softcapping", "final_logit_softcapping"},
  };
  const std::vector<std::string>& unmapped = schema->text.gguf_unmapped_keys;
  for (const auto& [suffix, key] : mapping) {
    if (std::find(unmapped.begin(), unmapped.end(), key) != unmapped.end()) continue;
    const GgufValue* v = gguf.FindMetadata(absl::StrCat(*arch, ".", suffix));
    if (v == nullptr) continue;
    const GgufValue* scalar = v;
    GgufValue unwrapped;
    if (v->type == GgufValueType::kArray && v->array_size() == 1) {  // transformers unwraps these
      unwrapped.type = v->array_type;
      if (!v->uints.empty()) unwrapped.scalar = v->uints[0];
      if (!v->ints.empty()) unwrapped.scalar = v->ints[0];
      if (!v->floats.empty()) unwrapped.scalar = v->floats[0];
      scalar = &unwrapped;
    }
    const bool is_float = scalar->type == GgufValueType::kFloat32 || scalar->type == GgufValueType::kFloat64;
    if (is_float) {
      config[key] = *scalar->AsDouble();  // f32 widened: 1e-6 reads 9.999999974752427e-07
    } else if (auto i = scalar->AsInt()) {
      config[key] = *i;
    } else {
      return absl::InvalidArgumentError(absl::StrCat(gguf.path(), ": ", *arch, ".", suffix,
                                                     ": expected a number, found ",
                                                     GgufValueTypeName(scalar->type)));
    }
  }
  if (!config.contains("vocab_size")) {
    if (const GgufValue* tokens = gguf.FindMetadata("tokenizer.ggml.tokens")) {
      config["vocab_size"] = tokens->array_size();
    }
  }
  for (const auto& [gguf_key, key] :
       std::vector<std::pair<std::string, std::string>>{{"bos_token_id", "bos_token_id"},
                                                        {"eos_token_id", "eos_token_id"},
                                                        {"padding_token_id", "pad_token_id"},
                                                        {"unknown_token_id", "unk_token_id"}}) {
    if (const GgufValue* v = gguf.FindMetadata("tokenizer.ggml." + gguf_key)) {
      if (auto i = v->AsInt()) config[key] = *i;
    }
  }
  if (const GgufValue* name = gguf.FindMetadata("general.name"); name && name->AsString()) {
    config["_model_name_or_path"] = *name->AsString();
  }
  config["tie_word_embeddings"] = gguf.FindTensor("output.weight") == nullptr;
  return config.dump(2, ' ', false, json::error_handler_t::replace);
}

absl::StatusOr<HfConfig> HfConfigFromGguf(const GgufFile& gguf) {
  LLMTRAIN_ASSIGN_OR_RETURN(std::string text, GgufToConfigJson(gguf));
  return ParseHfConfig(absl::StrCat(gguf.path(), " (metadata)"), text);
}

}  // namespace llmtrain::io
