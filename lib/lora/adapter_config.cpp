// adapter_config.json (lora/adapter_config.h): PEFT 0.21.2's LoraConfig fields as
// PeftModel.save_pretrained writes them, and their parser.
#include "llmtrain/lora/adapter_config.h"

#include <algorithm>
#include <cmath>
#include <optional>
#include <regex>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "llmtrain/io/families.h"
#include "nlohmann/json.hpp"

namespace llmtrain::lora {
namespace {

bool EndsWithOnDot(absl::string_view name, absl::string_view suffix) {
  return name == suffix || absl::EndsWith(name, absl::StrCat(".", suffix));
}

bool RegexFullMatch(const std::string& pattern, const std::string& text) {
  return std::regex_match(text, std::regex(pattern, std::regex::ECMAScript));
}

// The layer index PEFT reads from a module name (tuners_utils.check_target_module_exists).
std::optional<int64_t> LayerIndex(const LoraConfig& config, const std::string& name) {
  std::smatch m;
  if (config.layers_pattern.empty()) {
    static const std::regex any(R"(^.*?\.[^.]*\.(\d+)\.)");
    if (std::regex_search(name, m, any)) return std::stoll(m[1].str());
    return std::nullopt;
  }
  for (const std::string& pattern : config.layers_pattern) {
    if (std::regex_search(name, m, std::regex("^(?:.*?\\.)?" + pattern + "\\.(\\d+)\\."))) {
      return std::stoll(m[1].str());
    }
  }
  return std::nullopt;
}

bool InModulesToSave(const LoraConfig& config, const std::string& name) {
  for (const std::string& m : config.modules_to_save) {
    if (std::regex_match(name, std::regex("(^|.*\\.)" + m + "($|\\..*)"))) return true;
  }
  return false;
}

}  // namespace

absl::StatusOr<LoraConfig> WithDefaultTargets(LoraConfig config, absl::string_view model_type) {
  if (!config.target_modules.empty() || config.target_regex.has_value()) return config;
  const io::FamilyInfo* family = io::FindFamily(model_type);
  if (family != nullptr && family->has_vision && family->peft_default_targets.empty()) {
    // PEFT has no default for image+text models. Ours adapts the decoder as for its text family
    // (q_proj and v_proj), not the vision tower, which a user targets by name or pattern.
    config.target_regex = R"(model\.language_model\.layers\.\d+\.self_attn\.(q_proj|v_proj))";
    return config;
  }
  if (family == nullptr || family->peft_default_targets.empty()) {
    return absl::UnimplementedError(absl::StrCat(
        "target_modules: none given, and PEFT has no default for model_type \"", model_type, "\"; name them"));
  }
  config.target_modules = family->peft_default_targets;
  return config;
}

bool IsLoraTarget(const LoraConfig& config, const std::string& name) {
  for (const std::string& e : config.exclude_modules) {
    if (EndsWithOnDot(name, e)) return false;
  }
  if (InModulesToSave(config, name)) return false;
  if (config.target_regex.has_value()) return RegexFullMatch(*config.target_regex, name);
  const std::vector<std::string>& targets = config.target_modules;
  for (const std::string& t : targets) {
    if (absl::AsciiStrToLower(t) == "all-linear" || t == name) return true;  // exact names skip the layer filter
  }
  const bool suffix = std::any_of(targets.begin(), targets.end(),
                                  [&](const std::string& t) { return absl::EndsWith(name, "." + t); });
  if (!suffix) return false;
  if (config.layers_to_transform.empty()) return true;
  const std::optional<int64_t> index = LayerIndex(config, name);
  return index.has_value() && std::count(config.layers_to_transform.begin(), config.layers_to_transform.end(), *index) > 0;
}

bool InModuleToSave(absl::string_view param, absl::string_view entry) {
  absl::string_view module = param;
  for (size_t dot = module.rfind('.'); dot != absl::string_view::npos; dot = module.rfind('.')) {
    module = module.substr(0, dot);  // the parameter's module, then each module above it
    if (absl::EndsWith(module, entry)) return true;
  }
  return false;
}

std::pair<int64_t, double> RankAndAlpha(const LoraConfig& config, absl::string_view name_view) {
  const std::string name(name_view);
  int64_t r = config.r;
  double alpha = config.alpha;
  for (const auto& [pattern, value] : config.rank_pattern) {
    if (std::regex_match(name, std::regex("(.*\\.)?(" + pattern + ")"))) {
      r = value;
      break;
    }
  }
  for (const auto& [pattern, value] : config.alpha_pattern) {
    if (std::regex_match(name, std::regex("(.*\\.)?(" + pattern + ")"))) {
      alpha = value;
      break;
    }
  }
  return {r, alpha};
}

std::string AdapterConfigJson(const LoraConfig& c) {
  nlohmann::json rank = nlohmann::json::object(), alpha = nlohmann::json::object();
  for (const auto& [k, v] : c.rank_pattern) rank[k] = v;
  for (const auto& [k, v] : c.alpha_pattern) alpha[k] = v;
  const auto list_or_null = [](const auto& v) { return v.empty() ? nlohmann::json(nullptr) : nlohmann::json(v); };
  nlohmann::json target;
  if (c.target_regex) {
    target = *c.target_regex;
  } else if (c.target_modules.size() == 1 && absl::AsciiStrToLower(c.target_modules[0]) == "all-linear") {
    target = "all-linear";
  } else {
    target = list_or_null(c.target_modules);  // null: PEFT resolves the family's default on load
  }
  const nlohmann::json init = c.init == InitMode::kDefault ? nlohmann::json(true)
                              : c.init == InitMode::kGaussian ? nlohmann::json("gaussian") : nlohmann::json(false);
  // An integral alpha is written as an integer, as Python writes lora_alpha=16.
  const nlohmann::json alpha_value = c.alpha == std::floor(c.alpha) && std::abs(c.alpha) < 1e15
                                         ? nlohmann::json(static_cast<int64_t>(c.alpha)) : nlohmann::json(c.alpha);
  nlohmann::json j = {
      {"alora_invocation_tokens", nullptr}, {"alpha_pattern", alpha}, {"arrow_config", nullptr},
      {"auto_mapping", nullptr},
      {"base_model_name_or_path", c.base_model_name_or_path.empty() ? nlohmann::json(nullptr)
                                                                    : nlohmann::json(c.base_model_name_or_path)},
      {"bias", "none"}, {"corda_config", nullptr}, {"ensure_weight_tying", false}, {"eva_config", nullptr},
      {"exclude_modules", list_or_null(c.exclude_modules)}, {"fan_in_fan_out", false}, {"inference_mode", true},
      {"init_lora_weights", init}, {"kasa_config", nullptr}, {"layer_replication", nullptr},
      {"layers_pattern", list_or_null(c.layers_pattern)}, {"layers_to_transform", list_or_null(c.layers_to_transform)},
      {"loftq_config", nlohmann::json::object()}, {"lora_alpha", alpha_value}, {"lora_bias", false},
      {"lora_dropout", c.dropout}, {"lora_ga_config", nullptr}, {"megatron_config", nullptr},
      {"megatron_core", "megatron.core"}, {"modules_to_save", list_or_null(c.modules_to_save)},
      {"monteclora_config", nullptr}, {"peft_type", "LORA"}, {"peft_version", "0.21.2"},
      {"qalora_group_size", 16}, {"r", c.r}, {"rank_pattern", rank}, {"revision", nullptr},
      {"target_modules", target}, {"target_parameters", nullptr}, {"task_type", "CAUSAL_LM"},
      {"trainable_token_indices", nullptr}, {"use_bdlora", nullptr}, {"use_dora", c.use_dora},
      {"use_qalora", false}, {"use_rslora", c.use_rslora}, {"velora_config", nullptr}};
  return j.dump(2);
}

absl::StatusOr<LoraConfig> ParseAdapterConfig(absl::string_view where, absl::string_view text) {
  const nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  const auto bad = [&](const std::string& field, const std::string& why) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": ", field, ": ", why));
  };
  if (!j.is_object()) return absl::InvalidArgumentError(absl::StrCat(where, ": not a JSON object"));
  const auto get = [&](const char* key) -> const nlohmann::json* {
    const auto it = j.find(key);
    return it == j.end() || it->is_null() ? nullptr : &*it;
  };
  LoraConfig c;
  if (const auto* t = get("peft_type"); t == nullptr || *t != "LORA") {
    return bad("peft_type", "only LORA adapters are supported");
  }
  try {
    if (const auto* v = get("r")) {
      if (!v->is_number_integer() || v->get<int64_t>() <= 0) return bad("r", "expected a positive integer");
      c.r = v->get<int64_t>();
    }
    if (const auto* v = get("lora_alpha")) {
      if (!v->is_number()) return bad("lora_alpha", "expected a number");
      c.alpha = v->get<double>();
    }
    if (const auto* v = get("lora_dropout")) {
      if (!v->is_number()) return bad("lora_dropout", "expected a number");
      c.dropout = v->get<double>();
    }
    if (const auto* v = get("use_rslora")) c.use_rslora = v->get<bool>();
    if (const auto* v = get("use_dora")) c.use_dora = v->get<bool>();
    if (const auto* v = get("init_lora_weights")) {
      if (v->is_boolean()) {
        c.init = v->get<bool>() ? InitMode::kDefault : InitMode::kNone;
      } else if (*v == "gaussian") {
        c.init = InitMode::kGaussian;
      } else {
        // Other schemes (PiSSA, OLoRA, LoftQ …) rewrite the base weights; their adapters still
        // load (the init is not used when loading), so only record the default.
        c.init = InitMode::kDefault;
      }
    }
    if (const auto* v = get("target_modules")) {
      if (v->is_string()) {
        if (absl::AsciiStrToLower(v->get<std::string>()) == "all-linear") {
          c.target_modules = {"all-linear"};
        } else {
          c.target_regex = v->get<std::string>();
        }
      } else {
        c.target_modules = v->get<std::vector<std::string>>();
      }
    }
    if (const auto* v = get("exclude_modules")) {
      if (v->is_string()) return bad("exclude_modules", "a regular expression is not supported; give a list");
      c.exclude_modules = v->get<std::vector<std::string>>();
    }
    if (const auto* v = get("layers_to_transform")) {
      c.layers_to_transform = v->is_number_integer() ? std::vector<int64_t>{v->get<int64_t>()}
                                                      : v->get<std::vector<int64_t>>();
    }
    if (const auto* v = get("layers_pattern")) {
      c.layers_pattern = v->is_string() ? std::vector<std::string>{v->get<std::string>()}
                                        : v->get<std::vector<std::string>>();
    }
    if (const auto* v = get("rank_pattern")) {
      for (const auto& [k, r] : v->items()) c.rank_pattern.emplace_back(k, r.get<int64_t>());
    }
    if (const auto* v = get("alpha_pattern")) {
      for (const auto& [k, a] : v->items()) c.alpha_pattern.emplace_back(k, a.get<double>());
    }
    if (const auto* v = get("modules_to_save")) c.modules_to_save = v->get<std::vector<std::string>>();
    if (const auto* v = get("base_model_name_or_path")) c.base_model_name_or_path = v->get<std::string>();
    if (const auto* v = get("fan_in_fan_out"); v != nullptr && v->get<bool>()) {
      return bad("fan_in_fan_out", "true applies to GPT-2 Conv1D layers only; these models use Linear");
    }
    if (const auto* v = get("bias"); v != nullptr && *v != "none") {
      return bad("bias", absl::StrCat(v->dump(), " is not supported (only \"none\")"));
    }
    if (const auto* v = get("lora_bias"); v != nullptr && v->get<bool>()) {
      return bad("lora_bias", "true is not supported");
    }
    if (get("layer_replication") != nullptr) return bad("layer_replication", "is not supported");
    if (const auto* v = get("use_qalora"); v != nullptr && v->get<bool>()) {
      return bad("use_qalora", "true is not supported");
    }
  } catch (const nlohmann::json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": ", e.what()));
  }
  if (c.r > (int64_t{1} << 20)) return bad("r", absl::StrCat(c.r, " is not a usable rank"));
  if (!(c.dropout >= 0.0 && c.dropout < 1.0)) return bad("lora_dropout", "must be in [0, 1)");
  if (!std::isfinite(c.alpha)) return bad("lora_alpha", "must be finite");
  // Every pattern must be a regular expression we can run (PEFT's are Python `re`; the ECMAScript
  // dialect agrees on the ones module names need).
  const auto check_regex = [&](const std::string& field, const std::string& pattern) -> absl::Status {
    // std::regex is recursive: a bound keeps hostile patterns off the stack.
    if (pattern.size() > 256) return bad(field, "a pattern longer than 256 characters is not supported");
    try {
      std::regex compiled(pattern, std::regex::ECMAScript);
    } catch (const std::regex_error& e) {
      return bad(field, absl::StrCat("\"", pattern, "\" is not a valid regular expression (", e.what(), ")"));
    }
    return absl::OkStatus();
  };
  if (c.target_regex) {
    if (absl::Status s = check_regex("target_modules", *c.target_regex); !s.ok()) return s;
  }
  for (const auto& [pattern, r] : c.rank_pattern) {
    if (absl::Status s = check_regex("rank_pattern", pattern); !s.ok()) return s;
    if (r <= 0 || r > (int64_t{1} << 20)) return bad("rank_pattern", absl::StrCat("rank ", r, " for \"", pattern, "\""));
  }
  for (const auto& [pattern, alpha] : c.alpha_pattern) {
    if (absl::Status s = check_regex("alpha_pattern", pattern); !s.ok()) return s;
    if (!std::isfinite(alpha)) return bad("alpha_pattern", absl::StrCat("alpha for \"", pattern, "\" must be finite"));
  }
  for (const std::string& pattern : c.layers_pattern) {
    if (absl::Status s = check_regex("layers_pattern", pattern); !s.ok()) return s;
  }
  for (const std::string& m : c.modules_to_save) {
    if (absl::Status s = check_regex("modules_to_save", m); !s.ok()) return s;
  }
  return c;
}

absl::Status Validate(const LoraConfig& config) {
  std::vector<std::string> errors;
  if (config.r <= 0) errors.push_back(absl::StrCat("LoraConfig.r: expected > 0, found ", config.r));
  if (!(config.alpha > 0)) errors.push_back(absl::StrCat("LoraConfig.alpha: expected > 0, found ", config.alpha));
  if (!(config.dropout >= 0.0 && config.dropout < 1.0)) {
    errors.push_back(absl::StrCat("LoraConfig.dropout: expected a value in [0, 1), found ", config.dropout));
  }
  if (config.dtype != Dtype::kF32 && config.dtype != Dtype::kBf16) {
    errors.push_back(absl::StrCat("LoraConfig.dtype: expected f32 or bf16, found ", SafetensorsName(config.dtype)));
  }
  for (const auto& [pattern, r] : config.rank_pattern) {
    if (r <= 0) errors.push_back(absl::StrCat("LoraConfig.rank_pattern[\"", pattern, "\"]: expected > 0, found ", r));
  }
  for (const auto& [pattern, a] : config.alpha_pattern) {
    if (!(a > 0)) errors.push_back(absl::StrCat("LoraConfig.alpha_pattern[\"", pattern, "\"]: expected > 0, found ", a));
  }
  if (errors.empty()) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrJoin(errors, "\n"));
}

}  // namespace llmtrain::lora
