// Gemma 3 text (transformers Gemma3ForCausalLM): Gemma 2 without soft-caps by default, plus
// QK-norm and two RoPE tables (sliding layers rope_local_base_freq, global layers rope_theta with
// optional linear scaling; both come per layer from the config).
#include "llmtrain/core/status.h"
#include "model/family_common.h"

namespace llmtrain::model {
namespace {

absl::StatusOr<FamilySpec> Gemma3Text(const io::TextConfig& config) {
  LLMTRAIN_ASSIGN_OR_RETURN(FamilySpec spec, detail::GemmaSpec(config));
  spec.qk_norm = true;  // Gemma norms over head_dim, before RoPE
  spec.weights.push_back({Role::kQNorm, "model.layers.{i}.self_attn.q_norm.weight",
                          "blk.{i}.attn_q_norm.weight"});
  spec.weights.push_back({Role::kKNorm, "model.layers.{i}.self_attn.k_norm.weight",
                          "blk.{i}.attn_k_norm.weight"});
  return spec;
}

}  // namespace

LLMTRAIN_REGISTER_FAMILY("gemma3_text", Gemma3Text);

}  // namespace llmtrain::model
