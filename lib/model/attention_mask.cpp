// Attention masks (attention_mask.h).
#include "model/attention_mask.h"

#include <ATen/ATen.h>

#include <limits>

namespace llmtrain::model::detail {

AttentionMasks BuildAttentionMasks(const at::Tensor& key_mask, int64_t past, int64_t window, int64_t sliding_kept,
                                   c10::ScalarType dtype, const at::Tensor& blocks) {
  const int64_t B = key_mask.size(0), S = key_mask.size(1), T = S - past;
  // Query i is token past + i; keys are tokens 0 … S − 1 (cache indices, not positions).
  const at::TensorOptions on = key_mask.options().dtype(at::kLong);  // the mask's device
  const at::Tensor q_idx = at::arange(past, S, on);
  const at::Tensor k_idx = at::arange(S, on);
  const at::Tensor causal = q_idx.unsqueeze(1) >= k_idx.unsqueeze(0);  // (T, S) [q, k]
  const at::Tensor keys = key_mask.to(at::kBool).view({B, 1, 1, S});
  at::Tensor visible = causal.view({1, 1, T, S});
  if (blocks.defined()) {  // (causal OR same image block) AND not padding (masking_utils' or_mask)
    TORCH_CHECK(past == 0 && blocks.sizes() == key_mask.sizes(), "attention masks: image blocks need past = 0");
    const at::Tensor same = (blocks.view({B, 1, T, 1}) == blocks.view({B, 1, 1, S})) & blocks.ge(0).view({B, 1, T, 1});
    visible = visible | same;
  }
  at::Tensor allowed = visible & keys;  // (B, 1, T, S)
  // Packed rows: mask values 1, 2, … name segments, and a token sees only its own segment. A 0/1
  // mask is one segment, so this changes nothing there.
  if (past == 0 && key_mask.numel() > 0 && key_mask.max().item<int64_t>() > 1) {
    allowed = allowed & (key_mask.view({B, 1, T, 1}) == key_mask.view({B, 1, 1, S}));
  }
  // Additive: 0 or the dtype's lowest value (transformers masking_utils).
  const double lowest = dtype == at::kFloat ? std::numeric_limits<float>::lowest()
                                            : (dtype == at::kBFloat16 ? -3.3895313892515355e38 : -65504.0);
  const auto additive = [&](const at::Tensor& ok) {
    return at::where(ok, at::scalar_tensor(0.0, on.dtype(dtype)), at::scalar_tensor(lowest, on.dtype(dtype)));
  };
  AttentionMasks masks;
  masks.full = additive(allowed);
  if (window > 0) {
    const at::Tensor in_window = (q_idx.unsqueeze(1) - k_idx.unsqueeze(0)) < window;
    masks.sliding = additive((allowed & in_window.view({1, 1, T, S})).slice(3, past - sliding_kept));
  }
  return masks;
}

}  // namespace llmtrain::model::detail
