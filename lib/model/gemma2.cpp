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

std::vector<io::detail::Field> detail::Gemma2ConfigFields() {
  using io::detail::Kind;
  return {
      {"vocab_size", Kind::kInt, "256000"}, {"hidden_size", Kind::kInt, "2304"},
      {"intermediate_size", Kind::kInt, "9216"}, {"num_hidden_layers", Kind::kInt, "26"},
      {"num_attention_heads", Kind::kInt, "8"}, {"num_key_value_heads", Kind::kInt, "4"},
      {"head_dim", Kind::kInt, "256"}, {"hidden_activation", Kind::kString, "\"gelu_pytorch_tanh\""},
      {"max_position_embeddings", Kind::kInt, "8192"}, {"initializer_range", Kind::kFloat, "0.02"},
      {"rms_norm_eps", Kind::kFloat, "1e-06"}, {"use_cache", Kind::kBool, "true"},
      {"pad_token_id", Kind::kIntOrNull, "0"}, {"eos_token_id", Kind::kTokenIds, "1"},
      {"bos_token_id", Kind::kIntOrNull, "2"}, {"tie_word_embeddings", Kind::kBool, "true"},
      {"rope_parameters", Kind::kObjectOrNull, "null"}, {"attention_bias", Kind::kBool, "false"},
      {"attention_dropout", Kind::kFloatOrNull, "0.0"}, {"query_pre_attn_scalar", Kind::kInt, "256"},
      {"sliding_window", Kind::kIntOrNull, "4096"}, {"layer_types", Kind::kStringListOrNull, "null"},
      {"final_logit_softcapping", Kind::kFloatOrNull, "30.0"},
      {"attn_logit_softcapping", Kind::kFloatOrNull, "50.0"},
      {"use_bidirectional_attention", Kind::kBoolOrNull, "null"},
  };
}

io::detail::TextRules detail::GemmaConfigRules() {
  io::detail::TextRules r;
  r.sliding_layers = io::detail::SlidingLayers::kAllButEveryNth;
  r.full_attention_every = 2;  // alternating sliding and full layers
  r.hidden_divisible_by_heads = true;
  return r;
}

namespace {

io::FamilyInfo Gemma2Info() {
  io::FamilyInfo info;
  info.model_type = info.text_model_type = "gemma2";
  info.display_name = "Gemma 2";
  info.gguf_architecture = "gemma2";
  info.gguf_vocabulary = true;  // llama.cpp's "llama" SentencePiece vocabulary
  info.peft_default_targets = {"q_proj", "v_proj"};
  return info;
}

io::detail::ConfigSchema Gemma2Schema() {
  io::detail::ConfigSchema schema;
  schema.model_type = "gemma2";
  schema.fields = detail::Gemma2ConfigFields();
  schema.text = detail::GemmaConfigRules();
  return schema;
}

}  // namespace

LLMTRAIN_REGISTER_FAMILY("gemma2", detail::GemmaSpec);
LLMTRAIN_REGISTER_FAMILY_FORMAT(Gemma2Info(), Gemma2Schema());

}  // namespace llmtrain::model
