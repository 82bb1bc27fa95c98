// Builders shared by related families (internal): Gemma 3 starts from Gemma 2's spec and config
// class, Qwen3 from Qwen2's.
#pragma once

#include <vector>

#include "absl/status/statusor.h"
#include "io/config_schema.h"
#include "llmtrain/model/family.h"

namespace llmtrain::model::detail {

/// Gemma 2's spec for `config` (model_type copied from the config).
absl::StatusOr<FamilySpec> GemmaSpec(const io::TextConfig& config);
/// The Qwen spec without q/k/v biases (model_type copied from the config).
absl::StatusOr<FamilySpec> QwenSpec(const io::TextConfig& config);
/// Adds q/k/v projection biases and their names.
void AddQkvBiases(FamilySpec* spec);

/// Gemma2Config's fields and post-init rules (transformers configuration_gemma2.py).
std::vector<io::detail::Field> Gemma2ConfigFields();
io::detail::TextRules GemmaConfigRules();
/// Qwen2Config's fields and post-init rules (transformers configuration_qwen2.py).
std::vector<io::detail::Field> Qwen2ConfigFields();
io::detail::TextRules QwenConfigRules();

}  // namespace llmtrain::model::detail
