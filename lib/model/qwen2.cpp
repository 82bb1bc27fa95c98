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

std::vector<io::detail::Field> detail::Qwen2ConfigFields() {
  using io::detail::Kind;
  return {
      {"vocab_size", Kind::kInt, "151936"}, {"hidden_size", Kind::kInt, "4096"},
      {"intermediate_size", Kind::kInt, "22016"}, {"num_hidden_layers", Kind::kInt, "32"},
      {"num_attention_heads", Kind::kInt, "32"}, {"num_key_value_heads", Kind::kIntOrNull, "32"},
      {"hidden_act", Kind::kString, "\"silu\""}, {"max_position_embeddings", Kind::kInt, "32768"},
      {"initializer_range", Kind::kFloat, "0.02"}, {"rms_norm_eps", Kind::kFloat, "1e-06"},
      {"use_cache", Kind::kBool, "true"}, {"tie_word_embeddings", Kind::kBool, "false"},
      {"rope_parameters", Kind::kObjectOrNull, "null"}, {"use_sliding_window", Kind::kBool, "false"},
      {"sliding_window", Kind::kIntOrNull, "4096"}, {"max_window_layers", Kind::kInt, "28"},
      {"layer_types", Kind::kStringListOrNull, "null"}, {"attention_dropout", Kind::kFloat, "0.0"},
      {"pad_token_id", Kind::kIntOrNull, "null"}, {"bos_token_id", Kind::kIntOrNull, "null"},
      {"eos_token_id", Kind::kTokenIds, "null"},
  };
}

io::detail::TextRules detail::QwenConfigRules() {
  io::detail::TextRules r;
  r.sliding_layers = io::detail::SlidingLayers::kFromMaxWindowLayers;
  r.null_kv_heads_means_heads = true;
  r.sliding_window_needs_flag = true;
  // Qwen GGUFs carry no sliding layers and no soft-caps; transformers maps none of these.
  r.gguf_unmapped_keys = {"sliding_window", "attn_logit_softcapping", "final_logit_softcapping"};
  return r;
}

namespace {

io::FamilyInfo Qwen2Info() {
  // Qwen's GGUF vocabulary is byte-level BPE whose pre-tokenizer the GGUF names but does not
  // state: its tokenizer comes from tokenizer.json.
  io::FamilyInfo info;
  info.model_type = info.text_model_type = "qwen2";
  info.display_name = "Qwen2 / Qwen2.5";
  info.gguf_architecture = "qwen2";
  info.gguf_pre_tokenizer = "qwen2";  // llama.cpp names Qwen2.5's and Qwen3's pre-tokenizer "qwen2"
  info.peft_default_targets = {"q_proj", "v_proj"};
  return info;
}

io::detail::ConfigSchema Qwen2Schema() {
  io::detail::TextRules rules = detail::QwenConfigRules();
  rules.gguf_unmapped_keys.push_back("head_dim");  // Qwen2Config derives it from hidden / heads
  io::detail::ConfigSchema schema;
  schema.model_type = "qwen2";
  schema.fields = detail::Qwen2ConfigFields();
  schema.text = rules;
  return schema;
}

absl::StatusOr<FamilySpec> Qwen2(const io::TextConfig& config) {
  LLMTRAIN_ASSIGN_OR_RETURN(FamilySpec spec, detail::QwenSpec(config));
  detail::AddQkvBiases(&spec);  // hard-wired in Qwen2Attention, whatever attention_bias says
  return spec;
}

}  // namespace

LLMTRAIN_REGISTER_FAMILY("qwen2", Qwen2);
LLMTRAIN_REGISTER_FAMILY_FORMAT(Qwen2Info(), Qwen2Schema());

}  // namespace llmtrain::model
