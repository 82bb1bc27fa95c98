// The shared decoder's state and forward math (internal to lib/model/). Decoder (decoder.h) is a
// handle to one DecoderState: decoder.cpp holds the forward, load.cpp builds the state from a
// checkpoint, attention_mask.cpp the masks.
//
// Shapes: B batch, T new tokens, S keys (cached + new), C hidden, H query heads, K kv heads,
// D head_dim, L layers.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>

#include "llmtrain/model/decoder.h"

namespace llmtrain::model::detail {

/// One decoder layer's weights. The projections are in kLinearRoles order.
struct LayerWeights {
  at::Tensor input_norm, post_attn_norm, pre_ffw_norm, post_ffw_norm;  // (C)
  at::Tensor q_norm, k_norm;                                            // (D)
  // q, k, v, o (H·D, C) … (C, H·D), gate, up (I, C), down (C, I): dense, 4-bit, or wrapped by
  // an adapter. q/k/v biases live inside their projection (PEFT's LoRA wraps the biased Linear).
  std::array<std::shared_ptr<Linear>, 7> proj;
};

/// The roles of the seven projections, in LayerWeights::proj order.
inline constexpr Role kLinearRoles[7] = {Role::kQ, Role::kK, Role::kV, Role::kO, Role::kGate, Role::kUp, Role::kDown};

/// One SigLIP encoder layer (pre-LN, biases everywhere): h += out(attn(LN1 h)); h += fc2(gelu(fc1(LN2 h))).
struct VisionLayerWeights {
  at::Tensor ln1_weight, ln1_bias, ln2_weight, ln2_bias;  // (Cv)
  // k, v, q, out (Cv, Cv), fc1 (Iv, Cv), fc2 (Cv, Iv), each with its bias: SiglipAttention's
  // order of registration, which PEFT injects (and draws LoRA inits) in
  std::array<std::shared_ptr<Linear>, 6> proj;
};

/// The module names of a vision layer's projections, in VisionLayerWeights::proj order.
inline constexpr const char* kVisionLinearNames[6] = {"self_attn.k_proj", "self_attn.v_proj", "self_attn.q_proj",
                                                      "self_attn.out_proj", "mlp.fc1", "mlp.fc2"};

/// Gemma 3's image path: the SigLIP tower and the multi-modal projector.
struct VisionState {
  io::VisionConfig config;
  int64_t tokens_per_image = 0;  // mm_tokens_per_image
  int64_t image_token_id = 0;
  at::Tensor patch_weight, patch_bias;      // (Cv, 3, p, p), (Cv)
  at::Tensor position;                      // (P, Cv), P = (S / p)^2
  std::vector<VisionLayerWeights> layers;
  at::Tensor post_weight, post_bias;        // post_layernorm (Cv)
  at::Tensor mm_norm;                       // (Cv), Gemma RMSNorm (1 + w)
  at::Tensor mm_projection;                 // (Cv, C), used as x @ W
};

/// Where a projection lives: decoder layer `layer`'s slot, or the vision tower's.
struct LinearRef {
  bool vision = false;
  int64_t layer = 0;
  int slot = 0;
  bool operator<(const LinearRef& o) const {
    if (vision != o.vision) return vision;  // the tower's first, as transformers registers them
    return std::tie(layer, slot) < std::tie(o.layer, o.slot);
  }
};

/// Called with a module's name and output at each point FirstNonFiniteModule checks.
using Probe = std::function<void(const std::string& module, const at::Tensor& output)>;

struct DecoderState : std::enable_shared_from_this<DecoderState> {
  io::HfConfig config;
  FamilySpec spec;
  DecoderOptions options;
  std::vector<std::pair<std::string, at::Tensor>> params;  // dense tensors by HF name, load order
  at::Tensor embed;       // (V, C)
  at::Tensor final_norm;  // (C)
  at::Tensor lm_head;     // (V, C); the embedding when tied
  std::shared_ptr<Linear> head;  // DecoderOptions::head_through_factory's head, or null (lm_head)
  std::vector<LayerWeights> layers;
  std::unique_ptr<VisionState> vision;  // image+text models only
  // HF module name → where the projection lives, in LinearNames() order.
  std::vector<std::pair<std::string, LinearRef>> linear_names;
  std::vector<at::Tensor> inv_freq;  // per distinct layer RoPE, (D/2) float32
  std::vector<int64_t> layer_rope;   // per layer: index into inv_freq
  std::vector<int64_t> eos_token_ids;
  std::shared_ptr<LayerResidency> residency;  // null: every layer's weights are always present

  /// The final-normed hidden states (B, T, C); extends `cache` when given. `images` may be null.
  at::Tensor Hidden(const at::Tensor& input_ids, const at::Tensor& attention_mask, const at::Tensor& position_ids,
                    KvCache* cache, const Probe* probe, const ImageInputs* images = nullptr) const;
  /// Logits (…, V) of final-normed hidden states (…, C): through `head` when there is one.
  at::Tensor Logits(const at::Tensor& hidden) const;
  /// The projected image features (N, tokens_per_image, C) (vision.cpp).
  at::Tensor ImageFeatures(const at::Tensor& pixel_values) const;
  /// Vision layer `index`: (N, P, Cv) → (N, P, Cv) (vision.cpp).
  at::Tensor VisionLayer(int64_t index, const at::Tensor& x) const;
  /// The parameters of vision layer `index` that require grad, in a fixed order.
  std::vector<at::Tensor> VisionLayerParameters(int64_t index) const;
  /// Every tensor of the vision path (MoveTo).
  std::vector<at::Tensor> VisionTensors() const;
  /// The projection `ref` names.
  std::shared_ptr<Linear>& LinearAt(const LinearRef& ref);
  const std::shared_ptr<Linear>& LinearAt(const LinearRef& ref) const;
  /// One decoder layer: x (B, T, C) → (B, T, C). cos/sin (B, 1, T, D); mask (B, 1, T, S) additive.
  at::Tensor Layer(int64_t index, const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin,
                   const at::Tensor& mask, KvCache* cache, const Probe* probe) const;
  /// The parameters of layer `index` that require grad, in a fixed order (what activation
  /// checkpointing differentiates the recomputed layer against).
  std::vector<at::Tensor> LayerParameters(int64_t index) const;
  /// The frozen tensors of layer `index` (Decoder::LayerFrozenTensors).
  std::vector<at::Tensor> LayerFrozen(int64_t index) const;
  at::Tensor Norm(const at::Tensor& x, const at::Tensor& w) const;
  absl::Status CheckInputs(const at::Tensor& input_ids, const at::Tensor& attention_mask,
                           const ImageInputs* images = nullptr) const;

 private:
  at::Tensor Attention(const LayerWeights& layer, int64_t index, const at::Tensor& x, const at::Tensor& cos,
                       const at::Tensor& sin, const at::Tensor& mask, KvCache* cache) const;
  /// Layer `index` through activation checkpointing (decoder.cpp); vision layer i is index −1 − i
  /// (cos, sin and mask undefined).
  at::Tensor CheckpointedLayer(int64_t index, const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin,
                               const at::Tensor& mask) const;
};

/// Loads a checkpoint into a new state (load.cpp).
absl::StatusOr<std::shared_ptr<DecoderState>> LoadDecoderState(absl::string_view path, const DecoderOptions& options);

}  // namespace llmtrain::model::detail
