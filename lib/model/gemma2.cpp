// Gemma 2 (transformers Gemma2ForCausalLM): only what differs from the shared decoder.
#include <cmath>

#include "llmtrain/core/status.h"
#include "model/family_common.h"

namespace llmtrain::model {
namespace {

// Gemma's four norms per layer; HF post_attention_layernorm is a post-attention norm here.
void AddGemmaNorms(std::vector<WeightName>* w) {
  w->push_back({Role::kPostAttnNorm, "model.layers.{i}.post_attention_layernorm.weight",
                "blk.{i}.post_attention_norm.weight"});
  w->push_back({Role::kPreFfwNorm, "model.layers.{i}.pre_feedforward_layernorm.weight",
                "blk.{i}.ffn_norm.weight"});
  w->push_back({Role::kPostFfwNorm, "model.layers.{i}.post_feedforward_layernorm.weight",
                "blk.{i}.post_ffw_norm.weight"});
}

}  // namespace

absl::StatusOr<FamilySpec> detail::GemmaSpec(const io::TextConfig& config) {
  FamilySpec spec;
  spec.model_type = config.model_type;
  spec.norm = NormStyle::kGemma;          // y = x̂ · (1 + w), in fp32 (Gemma2RMSNorm)
  spec.sandwich_norms = true;
  spec.scale_embeddings = true;           // h0 = E[ids] · sqrt(H) in the activation dtype
  spec.refuses_fp16 = true;
  spec.activation = Activation::kGeluTanh;
  spec.attn_scale = 1.0 / std::sqrt(config.query_pre_attn_scalar.value_or(config.head_dim));
  spec.attn_softcap = config.attn_logit_softcapping;    // 50: cap·tanh(s/cap) before the mask
  spec.final_softcap = config.final_logit_softcapping;  // 30
  spec.gguf_norm_offset = 1.0;            // llama.cpp stores 1 + w
  spec.end_of_turn_tokens = {"<end_of_turn>"};
  spec.weights = detail::LlamaStyleWeights();
  AddGemmaNorms(&spec.weights);
  LLMTRAIN_RETURN_IF_ERROR(detail::FillLayerPattern(config, &spec));
  return spec;
}

LLMTRAIN_REGISTER_FAMILY("gemma2", detail::GemmaSpec);

}  // namespace llmtrain::model
