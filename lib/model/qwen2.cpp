// Qwen2 / Qwen2.5 (transformers Qwen2ForCausalLM): only what differs from the shared decoder.
#include <cmath>

#include "llmtrain/core/status.h"
#include "model/family_common.h"

namespace llmtrain::model {

absl::StatusOr<FamilySpec> detail::QwenSpec(const io::TextConfig& config) {
  FamilySpec spec;
  spec.model_type = config.model_type;
  spec.norm = NormStyle::kQwen;           // y = w · cast(x̂) (Qwen2RMSNorm)
  spec.activation = Activation::kSilu;
  spec.attn_scale = 1.0 / std::sqrt(static_cast<double>(config.head_dim));
  spec.end_of_turn_tokens = {"<|im_end|>", "<|endoftext|>"};  // ChatML's turn end, and the base models' EOS
  spec.weights = detail::LlamaStyleWeights();
  // Qwen's HF post_attention_layernorm is the pre-MLP norm (GGUF ffn_norm).
  spec.weights.push_back({Role::kPostAttnNorm, "model.layers.{i}.post_attention_layernorm.weight",
                          "blk.{i}.ffn_norm.weight"});
  LLMTRAIN_RETURN_IF_ERROR(detail::FillLayerPattern(config, &spec));
  return spec;
}

void detail::AddQkvBiases(FamilySpec* spec) {
  spec->qkv_bias = true;
  spec->weights.push_back({Role::kQBias, "model.layers.{i}.self_attn.q_proj.bias", "blk.{i}.attn_q.bias"});
  spec->weights.push_back({Role::kKBias, "model.layers.{i}.self_attn.k_proj.bias", "blk.{i}.attn_k.bias"});
  spec->weights.push_back({Role::kVBias, "model.layers.{i}.self_attn.v_proj.bias", "blk.{i}.attn_v.bias"});
}

namespace {

absl::StatusOr<FamilySpec> Qwen2(const io::TextConfig& config) {
  LLMTRAIN_ASSIGN_OR_RETURN(FamilySpec spec, detail::QwenSpec(config));
  detail::AddQkvBiases(&spec);  // hard-wired in Qwen2Attention, whatever attention_bias says
  return spec;
}

}  // namespace

LLMTRAIN_REGISTER_FAMILY("qwen2", Qwen2);

}  // namespace llmtrain::model
