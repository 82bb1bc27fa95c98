#include "llmtrain/model/family.h"

#include "absl/strings/match.h"

#include "absl/strings/str_replace.h"

#include <algorithm>
#include <map>
#include <mutex>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "llmtrain/core/status.h"

namespace llmtrain::model {
namespace {

std::map<std::string, FamilyBuilder>& Registry() {
  static auto* registry = new std::map<std::string, FamilyBuilder>();
  return *registry;
}

}  // namespace

bool RegisterFamily(const std::string& model_type, FamilyBuilder builder) {
  Registry()[model_type] = std::move(builder);
  return true;
}

std::vector<std::string> SupportedFamilies() {
  std::vector<std::string> names;
  for (const auto& [name, unused] : Registry()) names.push_back(name);
  return names;
}

absl::StatusOr<FamilySpec> BuildFamilySpec(const io::TextConfig& config) {
  const auto it = Registry().find(config.model_type);
  if (it == Registry().end()) {
    return absl::UnimplementedError(absl::StrCat("model_type \"", config.model_type,
                                                 "\" is not supported (supported: ",
                                                 absl::StrJoin(SupportedFamilies(), ", "), ")"));
  }
  return it->second(config);
}

bool IsNormRole(Role role) {
  return role == Role::kInputNorm || role == Role::kPostAttnNorm || role == Role::kPreFfwNorm ||
         role == Role::kPostFfwNorm || role == Role::kFinalNorm || role == Role::kQNorm || role == Role::kKNorm;
}

namespace detail {

std::vector<WeightName> LlamaStyleWeights() {
  return {
      {Role::kEmbed, "model.embed_tokens.weight", "token_embd.weight"},
      {Role::kFinalNorm, "model.norm.weight", "output_norm.weight"},
      {Role::kLmHead, "lm_head.weight", "output.weight"},
      {Role::kInputNorm, "model.layers.{i}.input_layernorm.weight", "blk.{i}.attn_norm.weight"},
      {Role::kQ, "model.layers.{i}.self_attn.q_proj.weight", "blk.{i}.attn_q.weight"},
      {Role::kK, "model.layers.{i}.self_attn.k_proj.weight", "blk.{i}.attn_k.weight"},
      {Role::kV, "model.layers.{i}.self_attn.v_proj.weight", "blk.{i}.attn_v.weight"},
      {Role::kO, "model.layers.{i}.self_attn.o_proj.weight", "blk.{i}.attn_output.weight"},
      {Role::kGate, "model.layers.{i}.mlp.gate_proj.weight", "blk.{i}.ffn_gate.weight"},
      {Role::kUp, "model.layers.{i}.mlp.up_proj.weight", "blk.{i}.ffn_up.weight"},
      {Role::kDown, "model.layers.{i}.mlp.down_proj.weight", "blk.{i}.ffn_down.weight"},
  };
}

void AddQkNorm(FamilySpec* spec) {
  spec->qk_norm = true;
  spec->weights.push_back({Role::kQNorm, "model.layers.{i}.self_attn.q_norm.weight",
                           "blk.{i}.attn_q_norm.weight"});
  spec->weights.push_back({Role::kKNorm, "model.layers.{i}.self_attn.k_norm.weight",
                           "blk.{i}.attn_k_norm.weight"});
}

absl::Status FillLayerPattern(const io::TextConfig& config, FamilySpec* spec) {
  for (const io::RopeParameters* rope : {&config.rope_full, &config.rope_sliding}) {
    if (rope->rope_type != "default" && rope->rope_type != "linear") {
      return absl::UnimplementedError(absl::StrCat("rope_type \"", rope->rope_type,
                                                   "\" is not supported yet (default and linear are)"));
    }
  }
  spec->sliding.clear();
  spec->rope.clear();
  for (const std::string& type : config.layer_types) {
    const bool sliding = type == "sliding_attention";
    spec->sliding.push_back(sliding);
    const io::RopeParameters& rope = sliding ? config.rope_sliding : config.rope_full;
    LayerRope layer;
    layer.theta = rope.rope_theta;
    if (rope.rope_type == "linear" && rope.factor) layer.linear_factor = *rope.factor;
    spec->rope.push_back(layer);
  }
  spec->window = config.sliding_window.value_or(0);
  spec->tied_embeddings = config.tie_word_embeddings;
  return absl::OkStatus();
}

}  // namespace detail
std::vector<int64_t> WeightShape(Role role, const io::TextConfig& c) {
  const int64_t q_dim = c.num_attention_heads * c.head_dim;
  const int64_t kv_dim = c.num_key_value_heads * c.head_dim;
  switch (role) {
    case Role::kEmbed: case Role::kLmHead: return {c.vocab_size, c.hidden_size};
    case Role::kFinalNorm: case Role::kInputNorm: case Role::kPostAttnNorm:
    case Role::kPreFfwNorm: case Role::kPostFfwNorm: return {c.hidden_size};
    case Role::kQ: return {q_dim, c.hidden_size};
    case Role::kK: case Role::kV: return {kv_dim, c.hidden_size};
    case Role::kO: return {c.hidden_size, q_dim};
    case Role::kQBias: return {q_dim};
    case Role::kKBias: case Role::kVBias: return {kv_dim};
    case Role::kQNorm: case Role::kKNorm: return {c.head_dim};
    case Role::kGate: case Role::kUp: return {c.intermediate_size, c.hidden_size};
    case Role::kDown: return {c.hidden_size, c.intermediate_size};
  }
  return {};
}

std::vector<std::string> ProjectionNames(const FamilySpec& spec, int64_t num_layers) {
  std::vector<std::string> names;
  for (int64_t i = 0; i < num_layers; ++i) {
    for (const WeightName& row : spec.weights) {
      if (row.role != Role::kQ && row.role != Role::kK && row.role != Role::kV && row.role != Role::kO &&
          row.role != Role::kGate && row.role != Role::kUp && row.role != Role::kDown) {
        continue;
      }
      std::string name = absl::StrReplaceAll(row.hf, {{"{i}", absl::StrCat(i)}});
      if (absl::EndsWith(name, ".weight")) name.resize(name.size() - 7);
      names.push_back(std::move(name));
    }
  }
  return names;
}

absl::StatusOr<FamilySpec> BuildModelSpec(const io::HfConfig& config) {
  LLMTRAIN_ASSIGN_OR_RETURN(FamilySpec spec, BuildFamilySpec(config.text));
  if (!config.vision.has_value()) return spec;
  // Gemma3ForConditionalGeneration: the decoder is model.language_model (lm_head stays on top),
  // and its forward applies no final soft-cap.
  for (WeightName& row : spec.weights) {
    if (absl::StartsWith(row.hf, "model.")) row.hf = "model.language_model." + row.hf.substr(6);
  }
  spec.final_softcap.reset();
  return spec;
}

std::vector<std::string> VisionProjectionNames(const io::HfConfig& config) {
  std::vector<std::string> names;
  if (!config.vision.has_value()) return names;
  for (int64_t i = 0; i < config.vision->num_hidden_layers; ++i) {
    for (const char* p : {"self_attn.k_proj", "self_attn.v_proj", "self_attn.q_proj", "self_attn.out_proj", "mlp.fc1",
                          "mlp.fc2"}) {
      names.push_back(absl::StrCat("model.vision_tower.encoder.layers.", i, ".", p));
    }
  }
  return names;
}

}  // namespace llmtrain::model
