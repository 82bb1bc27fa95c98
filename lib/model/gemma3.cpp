// Gemma 3 text (transformers Gemma3ForCausalLM): Gemma 2 without soft-caps by default, plus
// QK-norm and two RoPE tables (sliding layers rope_local_base_freq, global layers rope_theta with
// optional linear scaling; both come per layer from the config). Its config classes:
// Gemma3TextConfig, and Gemma3Config (image+text: text_config, a SigLIP vision_config).
#include "llmtrain/core/status.h"
#include "model/family_common.h"

namespace llmtrain::model {
namespace {

absl::StatusOr<FamilySpec> Gemma3Text(const io::TextConfig& config) {
  LLMTRAIN_ASSIGN_OR_RETURN(FamilySpec spec, detail::GemmaSpec(config));
  detail::AddQkNorm(&spec);  // Gemma norms over head_dim, before RoPE
  return spec;
}

io::FamilyInfo Gemma3TextInfo() {
  io::FamilyInfo info;
  info.model_type = info.text_model_type = "gemma3_text";
  info.display_name = "Gemma 3 (text)";
  info.gguf_architecture = "gemma3";  // a GGUF holds the text backbone: it reads as gemma3_text
  info.gguf_vocabulary = true;
  info.peft_default_targets = {"q_proj", "v_proj"};
  return info;
}

// Gemma3TextConfig: Gemma2Config's fields with other defaults, and its own rules.
io::detail::ConfigSchema Gemma3TextSchema() {
  std::vector<io::detail::Field> fields = detail::Gemma2ConfigFields();
  for (io::detail::Field& field : fields) {
    const std::string name = field.name;
    if (name == "vocab_size") field.default_json = "262208";
    if (name == "max_position_embeddings") field.default_json = "131072";
    if (name == "final_logit_softcapping" || name == "attn_logit_softcapping") field.default_json = "null";
    if (name == "use_bidirectional_attention") field.default_json = "false";
  }
  io::detail::TextRules rules = detail::GemmaConfigRules();
  rules.full_attention_every = 6;  // five sliding layers, then a full one
  rules.sliding_window_pattern_key = true;
  rules.rope_per_layer_type = true;
  rules.full_rope_theta = 1000000.0;
  rules.sliding_rope_theta = 10000.0;  // rope_local_base_freq
  io::detail::ConfigSchema schema;
  schema.model_type = "gemma3_text";
  schema.fields = std::move(fields);
  schema.text = rules;
  return schema;
}

// Gemma3Config (Gemma3ForConditionalGeneration): no GGUF holds it (llama.cpp keeps the text
// backbone only), and PEFT has no default targets for it.
io::FamilyInfo Gemma3Info() {
  io::FamilyInfo info;
  info.model_type = "gemma3";
  info.display_name = "Gemma 3 (image+text)";
  info.text_model_type = "gemma3_text";
  info.has_vision = true;
  return info;
}

io::detail::ConfigSchema Gemma3Schema() {
  using io::detail::Kind;
  io::detail::ConfigSchema schema;
  schema.model_type = "gemma3";
  schema.fields = {{"mm_tokens_per_image", Kind::kIntOrNull, "256"}, {"boi_token_index", Kind::kIntOrNull, "255999"},
                 {"eoi_token_index", Kind::kIntOrNull, "256000"}, {"image_token_index", Kind::kIntOrNull, "262144"},
                 {"initializer_range", Kind::kFloatOrNull, "0.02"},
                 {"tie_word_embeddings", Kind::kBoolOrNull, "true"}};
  schema.text_model_type = "gemma3_text";
  // SiglipVisionConfig (configuration_siglip.py).
  schema.vision_fields = {{"hidden_size", Kind::kInt, "768"}, {"intermediate_size", Kind::kInt, "3072"},
                        {"num_hidden_layers", Kind::kInt, "12"}, {"num_attention_heads", Kind::kInt, "12"},
                        {"num_channels", Kind::kInt, "3"}, {"image_size", Kind::kIntOrPair, "224"},
                        {"patch_size", Kind::kIntOrPair, "16"},
                        {"hidden_act", Kind::kString, "\"gelu_pytorch_tanh\""},
                        {"layer_norm_eps", Kind::kFloat, "1e-06"}, {"attention_dropout", Kind::kFloat, "0.0"},
                        {"vision_use_head", Kind::kBool, "true"}};
  return schema;
}

}  // namespace

LLMTRAIN_REGISTER_FAMILY("gemma3_text", Gemma3Text);
LLMTRAIN_REGISTER_FAMILY_FORMAT(Gemma3TextInfo(), Gemma3TextSchema());
LLMTRAIN_REGISTER_FAMILY_FORMAT(Gemma3Info(), Gemma3Schema());

}  // namespace llmtrain::model
