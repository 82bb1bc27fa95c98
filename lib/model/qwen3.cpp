// Qwen3 (transformers Qwen3ForCausalLM): Qwen2 with QK-norm, and q/k/v biases only when the
// config's attention_bias says so.
#include "llmtrain/core/status.h"
#include "model/family_common.h"

namespace llmtrain::model {
namespace {

absl::StatusOr<FamilySpec> Qwen3(const io::TextConfig& config) {
  LLMTRAIN_ASSIGN_OR_RETURN(FamilySpec spec, detail::QwenSpec(config));
  if (config.attention_bias) detail::AddQkvBiases(&spec);
  detail::AddQkNorm(&spec);  // Qwen-style norms over head_dim, before RoPE
  return spec;
}

}  // namespace

LLMTRAIN_REGISTER_FAMILY("qwen3", Qwen3);

}  // namespace llmtrain::model
