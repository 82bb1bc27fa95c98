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
  std::vector<LayerWeights> layers;
  // HF module name → (layer, projection slot), in LinearNames() order.
  std::vector<std::pair<std::string, std::pair<int64_t, int>>> linear_names;
  std::vector<at::Tensor> inv_freq;  // per distinct layer RoPE, (D/2) float32
  std::vector<int64_t> layer_rope;   // per layer: index into inv_freq
  std::vector<int64_t> eos_token_ids;
  std::shared_ptr<LayerResidency> residency;  // null: every layer's weights are always present

  /// The final-normed hidden states (B, T, C); extends `cache` when given.
  at::Tensor Hidden(const at::Tensor& input_ids, const at::Tensor& attention_mask, const at::Tensor& position_ids,
                    KvCache* cache, const Probe* probe) const;
  /// One decoder layer: x (B, T, C) → (B, T, C). cos/sin (B, 1, T, D); mask (B, 1, T, S) additive.
  at::Tensor Layer(int64_t index, const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin,
                   const at::Tensor& mask, KvCache* cache, const Probe* probe) const;
  /// The parameters of layer `index` that require grad, in a fixed order (what activation
  /// checkpointing differentiates the recomputed layer against).
  std::vector<at::Tensor> LayerParameters(int64_t index) const;
  /// The frozen tensors of layer `index` (Decoder::LayerFrozenTensors).
  std::vector<at::Tensor> LayerFrozen(int64_t index) const;
  at::Tensor Norm(const at::Tensor& x, const at::Tensor& w) const;
  absl::Status CheckInputs(const at::Tensor& input_ids, const at::Tensor& attention_mask) const;

 private:
  at::Tensor Attention(const LayerWeights& layer, int64_t index, const at::Tensor& x, const at::Tensor& cos,
                       const at::Tensor& sin, const at::Tensor& mask, KvCache* cache) const;
  /// Layer `index` through activation checkpointing (decoder.cpp).
  at::Tensor CheckpointedLayer(int64_t index, const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin,
                               const at::Tensor& mask) const;
};

/// Loads a checkpoint into a new state (load.cpp).
absl::StatusOr<std::shared_ptr<DecoderState>> LoadDecoderState(absl::string_view path, const DecoderOptions& options);

}  // namespace llmtrain::model::detail
