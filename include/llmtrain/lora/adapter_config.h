// PEFT's LoraConfig and its adapter_config.json, both ways (no LibTorch: the fuzz build parses
// it too). The layers that use it are in lora/lora.h.
//
//   LLMTRAIN_ASSIGN_OR_RETURN(lora::LoraConfig config, lora::ParseAdapterConfig(path, text));
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "llmtrain/core/dtype.h"

namespace llmtrain::lora {

/// How A and B start (PEFT init_lora_weights).
enum class InitMode {
  kDefault,   ///< true: A ~ kaiming_uniform(a = √5) = U(±1/√in), B = 0 (the adapter starts as a no-op)
  kGaussian,  ///< "gaussian": A ~ N(0, (1/r)²), B = 0
  kNone,      ///< false: A and B both keep nn.Linear's kaiming init (not a no-op; for tests)
};

/// PEFT's LoraConfig, the fields that apply to LoRA on linear layers.
struct LoraConfig {
  int64_t r = 8;
  double alpha = 8;
  double dropout = 0.0;
  bool use_rslora = false;  ///< s = alpha / √r
  bool use_dora = false;
  InitMode init = InitMode::kDefault;
  /// Modules to adapt: full names ("model.layers.0.self_attn.q_proj") or suffixes on a dot
  /// boundary ("q_proj", "self_attn.q_proj"), or the one entry "all-linear" (every projection; the
  /// head is never adapted). Empty with no target_regex: PEFT's default for the model's family
  /// (WithDefaultTargets; q_proj and v_proj for every supported family; for Gemma 3 image+text,
  /// those of the decoder only).
  std::vector<std::string> target_modules;
  /// A single string target_modules: a regular expression the whole name must match.
  std::optional<std::string> target_regex;
  /// Names or suffixes never adapted (PEFT exclude_modules as a list).
  std::vector<std::string> exclude_modules;
  /// Only these layer indices (with suffix-matched targets; PEFT skips the filter for exact names).
  std::vector<int64_t> layers_to_transform;
  /// The name part before the layer index ("layers"); empty = the first "<part>.<digits>." found.
  std::vector<std::string> layers_pattern;
  /// Per-module rank and alpha: the first key (in order) matching the end of a module name on a
  /// dot boundary, as a regex, wins.
  std::vector<std::pair<std::string, int64_t>> rank_pattern;
  std::vector<std::pair<std::string, double>> alpha_pattern;
  /// Other modules trained in full and saved with the adapter ("lm_head", "embed_tokens",
  /// norms, "multi_modal_projector"), matched as PEFT does: every parameter under a module whose
  /// name ends with the entry (InModuleToSave).
  std::vector<std::string> modules_to_save;
  /// dtype of A, B and the DoRA magnitude: f32 (PEFT's default) or bf16.
  Dtype dtype = Dtype::kF32;
  /// Seeds the init draws. PEFT draws from torch's global generator, per adapted module in
  /// order: A (kaiming), B (kaiming), then A again; the same seed gives the same A and B.
  uint64_t seed = 0;
  std::string base_model_name_or_path;
};

/// InvalidArgument naming the field: r ≤ 0, alpha ≤ 0, dropout outside [0, 1), a dtype other
/// than f32/bf16, a non-positive rank or alpha in rank_pattern / alpha_pattern.
absl::Status Validate(const LoraConfig& config);

/// PEFT's resolution of a config that names no targets (no target_modules, no target_regex): the
/// default of `model_type`'s family (io::FamilyInfo::peft_default_targets). A config that names its
/// targets comes back unchanged. Unimplemented for a family with no default, as PEFT asks for
/// target_modules then. Image+text models (gemma3), for which PEFT has no default, get the
/// decoder's q_proj and v_proj as the regex model\.language_model\.layers\.\d+\.self_attn\.(q_proj|v_proj):
/// the vision tower trains only when named. InjectLora, SaveAdapter and LoadAdapter resolve with
/// the model's type.
absl::StatusOr<LoraConfig> WithDefaultTargets(LoraConfig config, absl::string_view model_type);

/// True if `config` adapts module `name` (e.g. "model.layers.0.self_attn.q_proj"), by PEFT's rules:
/// exclude_modules first, never a module to save, then the regex (full match), an exact name, or a
/// dot-boundary suffix filtered by layers_to_transform. A config that names no targets adapts
/// nothing: resolve it first with WithDefaultTargets.
bool IsLoraTarget(const LoraConfig& config, const std::string& name);

/// Whether parameter `param` ("model.multi_modal_projector.mm_soft_emb_norm.weight") lies under a
/// module that modules_to_save entry `entry` names: PEFT wraps each module whose name ends with
/// the entry, and every parameter under it trains ("multi_modal_projector" takes the projector's
/// weight and its norm's).
bool InModuleToSave(absl::string_view param, absl::string_view entry);

/// r and alpha of module `name` after rank_pattern / alpha_pattern.
std::pair<int64_t, double> RankAndAlpha(const LoraConfig& config, absl::string_view name);

/// adapter_config.json as PEFT writes it (sorted keys, indent 2, every field PEFT writes).
std::string AdapterConfigJson(const LoraConfig& config);
/// Parses adapter_config.json. Refuses (naming the field) what this library cannot reproduce:
/// peft_type other than LORA, fan_in_fan_out, bias other than "none", lora_bias, other init
/// schemes, layer_replication …
absl::StatusOr<LoraConfig> ParseAdapterConfig(absl::string_view where, absl::string_view json_text);

}  // namespace llmtrain::lora
