// Builders shared by related families (internal): Gemma 3 starts from Gemma 2's spec, Qwen3
// from Qwen2's.
#pragma once

#include "absl/status/statusor.h"
#include "llmtrain/model/family.h"

namespace llmtrain::model::detail {

/// Gemma 2's spec for `config` (model_type copied from the config).
absl::StatusOr<FamilySpec> GemmaSpec(const io::TextConfig& config);
/// The Qwen spec without q/k/v biases (model_type copied from the config).
absl::StatusOr<FamilySpec> QwenSpec(const io::TextConfig& config);
/// Adds q/k/v projection biases and their names.
void AddQkvBiases(FamilySpec* spec);

}  // namespace llmtrain::model::detail
