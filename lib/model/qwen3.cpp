// Qwen3 (transformers Qwen3ForCausalLM): Qwen2 with QK-norm, and q/k/v biases only when the
// config's attention_bias says so.
#include "llmtrain/core/status.h"
#include "model/family_common.h"

namespace llmtrain::model {
namespace {

absl::StatusOr<FamilySpec> Qwen3(const io::TextConfig& config) {
  LLMTRAIN_ASSIGN_OR_RETURN(FamilySpec spec, detail::QwenSpec(config));
  if (config.attention_bias) detail::AddQkvBiases(&spec);
  spec.qk_norm = true;  // Qwen-style norms over head_dim, before RoPE
  spec.weights.push_back({Role::kQNorm, "model.layers.{i}.self_attn.q_norm.weight",
                          "blk.{i}.attn_q_norm.weight"});
  spec.weights.push_back({Role::kKNorm, "model.layers.{i}.self_attn.k_norm.weight",
                          "blk.{i}.attn_k_norm.weight"});
  return spec;
}

}  // namespace

LLMTRAIN_REGISTER_FAMILY("qwen3", Qwen3);

}  // namespace llmtrain::model
