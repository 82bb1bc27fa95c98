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

io::FamilyInfo Qwen3Info() {
  io::FamilyInfo info;
  info.model_type = info.text_model_type = "qwen3";
  info.display_name = "Qwen3";
  info.gguf_architecture = "qwen3";
  info.gguf_pre_tokenizer = "qwen2";  // llama.cpp names Qwen2.5's and Qwen3's pre-tokenizer "qwen2"
  info.peft_default_targets = {"q_proj", "v_proj"};
  return info;
}

// Qwen3Config: Qwen2Config's fields plus head_dim and attention_bias.
io::detail::ConfigSchema Qwen3Schema() {
  std::vector<io::detail::Field> fields = detail::Qwen2ConfigFields();
  fields.insert(fields.begin() + 6, {"head_dim", io::detail::Kind::kInt, "128"});
  fields.insert(fields.begin() + 14, {"attention_bias", io::detail::Kind::kBool, "false"});
  io::detail::ConfigSchema schema;
  schema.model_type = "qwen3";
  schema.fields = std::move(fields);
  schema.text = detail::QwenConfigRules();
  return schema;
}

}  // namespace

LLMTRAIN_REGISTER_FAMILY("qwen3", Qwen3);
LLMTRAIN_REGISTER_FAMILY_FORMAT(Qwen3Info(), Qwen3Schema());

}  // namespace llmtrain::model
