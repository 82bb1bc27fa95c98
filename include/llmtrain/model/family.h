// Model families as data: what makes Gemma 2, Gemma 3 (text), Qwen2/2.5 and Qwen3 differ from the
// shared decoder (model/decoder.h), and the names of their weights in HF and GGUF files.
//
// A family is a function from the parsed config to a FamilySpec, registered under the config's
// model_type. Adding a family is one file in lib/model/ (see gemma2.cpp) for how it computes, and
// one entry in lib/io/families.cpp for what its files say (io/families.h).
//
//   LLMTRAIN_ASSIGN_OR_RETURN(model::FamilySpec spec, model::BuildFamilySpec(config.text));
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "llmtrain/io/hf_config.h"

namespace llmtrain::model {

enum class NormStyle {
  kGemma,  ///< y = cast(n(x_f32) · (1 + w_f32)): weight applied in fp32, one cast at the end
  kQwen,   ///< y = w · cast(n(x_f32)): cast to the input dtype first, then times w
};

enum class Activation { kGeluTanh, kSilu };

/// Where a weight sits in a decoder layer (or the model), independent of file naming.
enum class Role {
  kEmbed, kFinalNorm, kLmHead,                                 // model level
  kInputNorm, kPostAttnNorm, kPreFfwNorm, kPostFfwNorm,        // layer norms
  kQ, kK, kV, kO, kQBias, kKBias, kVBias, kQNorm, kKNorm,      // attention
  kGate, kUp, kDown,                                           // MLP
};

/// The norm weights (Gemma's GGUF stores each as 1 + w).
bool IsNormRole(Role role);

/// One row of a family's weight-name table. Layer rows hold `{i}` where the layer index goes.
struct WeightName {
  Role role;
  std::string hf;    ///< e.g. "model.layers.{i}.self_attn.q_proj.weight"
  std::string gguf;  ///< e.g. "blk.{i}.attn_q.weight"
};

/// RoPE of one layer: inv_freq = 1 / theta^(2i/d), divided by `linear_factor`.
struct LayerRope {
  double theta = 10000.0;
  double linear_factor = 1.0;
};

/// How one family differs from the shared decoder, resolved for one config.
struct FamilySpec {
  std::string model_type;
  NormStyle norm = NormStyle::kQwen;
  bool sandwich_norms = false;  ///< Gemma: norms after attention and around the MLP (4 per layer)
  bool qk_norm = false;         ///< per-head norm of q and k before RoPE (Gemma 3, Qwen3)
  bool qkv_bias = false;        ///< q/k/v projection biases (Qwen2: always; Qwen3: attention_bias)
  bool scale_embeddings = false;  ///< Gemma: h0 = E[ids] · sqrt(H), rounded to the weight dtype
  bool refuses_fp16 = false;    ///< Gemma: the residual stream overflows fp16
  Activation activation = Activation::kSilu;
  double attn_scale = 1.0;      ///< s = q·kᵀ · attn_scale
  std::optional<double> attn_softcap;   ///< Gemma 2: cap·tanh(s/cap), before the mask
  std::optional<double> final_softcap;  ///< Gemma 2: on the logits
  std::vector<bool> sliding;     ///< per layer: sliding-window attention
  int64_t window = 0;            ///< keys q − window < k ≤ q on sliding layers
  std::vector<LayerRope> rope;   ///< per layer
  bool tied_embeddings = false;
  double gguf_norm_offset = 0.0;  ///< llama.cpp stores Gemma norms as 1 + w: subtract this
  /// Tokens that end a chat turn (Gemma "<end_of_turn>", Qwen "<|im_end|>"): generation stops on
  /// them too when a GGUF vocabulary has them (HF folders list theirs in generation_config.json).
  std::vector<std::string> end_of_turn_tokens;
  std::vector<WeightName> weights;  ///< the name table (model-level and per-layer rows)
};

/// A family's builder: from the text config to its spec. Fails on configs the family cannot run.
using FamilyBuilder = std::function<absl::StatusOr<FamilySpec>(const io::TextConfig&)>;

/// Registers `builder` for `model_type` (done once per family file by LLMTRAIN_REGISTER_FAMILY).
bool RegisterFamily(const std::string& model_type, FamilyBuilder builder);

/// The spec for `config.model_type`. Unimplemented names the type and lists the supported ones.
absl::StatusOr<FamilySpec> BuildFamilySpec(const io::TextConfig& config);

/// The spec of the whole model a config describes: BuildFamilySpec(config.text), and for an
/// image+text config (Gemma3ForConditionalGeneration) the decoder's names nested under
/// "model.language_model." (the module names transformers gives it) and no final soft-cap.
absl::StatusOr<FamilySpec> BuildModelSpec(const io::HfConfig& config);

/// The module names of an image+text model's vision-tower projections, layer by layer
/// ("model.vision_tower.encoder.layers.{i}.self_attn.k_proj", v_proj, q_proj, out_proj,
/// "….mlp.fc1", fc2: the order transformers registers them in); empty for text models.
std::vector<std::string> VisionProjectionNames(const io::HfConfig& config);

/// The HF module names of the seven projections of every layer, layer by layer, in the order of
/// the name table (q, k, v, o, gate, up, down): what LoRA targets match against.
std::vector<std::string> ProjectionNames(const FamilySpec& spec, int64_t num_layers);

/// The shape a weight of `role` has under `config` (row-major, PyTorch order): what loading
/// checks every tensor against, and what memory planning counts without reading weights.
std::vector<int64_t> WeightShape(Role role, const io::TextConfig& config);

/// The registered model types, sorted.
std::vector<std::string> SupportedFamilies();

namespace detail {
/// The HF/GGUF name table every supported family shares (llama layout); families add or drop rows.
std::vector<WeightName> LlamaStyleWeights();
/// Turns on QK-norm and adds the q_norm / k_norm rows to the name table.
void AddQkNorm(FamilySpec* spec);
/// Per-layer RoPE and sliding flags from the config's layer_types and rope parameters.
/// Unimplemented for RoPE types other than default and linear.
absl::Status FillLayerPattern(const io::TextConfig& config, FamilySpec* spec);
}  // namespace detail

}  // namespace llmtrain::model

#define LLMTRAIN_FAMILY_CONCAT_(a, b) a##b
#define LLMTRAIN_FAMILY_CONCAT(a, b) LLMTRAIN_FAMILY_CONCAT_(a, b)
/// Registers a family builder at load time of libllmtrain.so.
#define LLMTRAIN_REGISTER_FAMILY(model_type, builder)                                  \
  static const bool LLMTRAIN_FAMILY_CONCAT(llmtrain_family_registered_, __LINE__) = \
      ::llmtrain::model::RegisterFamily(model_type, builder)
