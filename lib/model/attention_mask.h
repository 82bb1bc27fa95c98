// Additive attention masks of the shared decoder (internal to lib/model/): causal, padding,
// packed segments and sliding windows, in transformers' masking_utils semantics.
#pragma once

#include <cstdint>

#include <ATen/core/Tensor.h>

namespace llmtrain::model::detail {

struct AttentionMasks {
  at::Tensor full;     ///< (B, 1, T, S): 0 where key k is visible from query q, the dtype's lowest value elsewhere
  at::Tensor sliding;  ///< (B, 1, T, S − dropped): the same with q − window < k; undefined when window = 0
};

/// Masks for T new queries after `past` cached tokens. key_mask (B, S = past + T) int64: 0 on
/// padding, 1 on tokens, or segment ids 1, 2, … of packed rows (then a token sees only its own
/// segment; only without a cache). `blocks` (B, T), only with past = 0, or undefined: the image
/// block of each token (−1 for text); a token also sees the later tokens of its own block
/// (Gemma 3's bidirectional image attention), still within the window on sliding layers. Key k is visible from query past + i when k ≤ past + i and it is
/// not padding, and on sliding layers past + i − window < k. `sliding_kept`: the earlier keys a
/// sliding layer's cache still holds (its mask drops the columns before them).
AttentionMasks BuildAttentionMasks(const at::Tensor& key_mask, int64_t past, int64_t window, int64_t sliding_kept,
                                   c10::ScalarType dtype, const at::Tensor& blocks = {});

}  // namespace llmtrain::model::detail
