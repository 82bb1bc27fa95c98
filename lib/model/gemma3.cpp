// Gemma 3 text (transformers Gemma3ForCausalLM): Gemma 2 without soft-caps by default, plus
// QK-norm and two RoPE tables (sliding layers rope_local_base_freq, global layers rope_theta with
// optional linear scaling; both come per layer from the config).
#include "llmtrain/core/status.h"
#include "model/family_common.h"

namespace llmtrain::model {
namespace {

absl::StatusOr<FamilySpec> Gemma3Text(const io::TextConfig& config) {
  LLMTRAIN_ASSIGN_OR_RETURN(FamilySpec spec, detail::GemmaSpec(config));
  detail::AddQkNorm(&spec);  // Gemma norms over head_dim, before RoPE
  return spec;
}

}  // namespace

LLMTRAIN_REGISTER_FAMILY("gemma3_text", Gemma3Text);

}  // namespace llmtrain::model
