// Cross-entropy over a large vocabulary without the full logits: hidden states times the LM head,
// chunk by chunk. Each chunk's gradients are computed while its logits exist (the loss is the last
// op, so backward only scales them), so it costs the same three GEMMs as the full version. For
// Gemma's 262k vocabulary the full fp32 logits take 1 GiB per 1k tokens; a chunk takes 128 MiB by
// default (128 tokens in float32, 256 in bf16, whose float32 reduction adds 64 MiB).
//
//   auto [loss_sum, n_tokens] = kernels::ChunkedCrossEntropy(hidden, lm_head, labels, {});
//   (loss_sum / total_tokens_over_micro_batches).backward();  // token-normalized accumulation
#pragma once

#include <cstdint>
#include <optional>

#include <ATen/core/Tensor.h>

#include "absl/status/status.h"

namespace llmtrain::kernels {

struct CrossEntropyOptions {
  /// Rows of logits materialized at once; 0: as many as chunk_bytes of model-dtype logits hold.
  int64_t chunk_tokens = 0;
  /// Budget of one chunk's model-dtype logits; bf16/fp16 models reduce them in float32 through a
  /// buffer of half this size.
  int64_t chunk_bytes = int64_t{128} << 20;
  int64_t ignore_index = -100;          ///< labels equal to this contribute nothing
  std::optional<double> final_softcap;  ///< Gemma 2: logits = cap · tanh(logits / cap) first
};

/// InvalidArgument naming the field: negative chunk_tokens, chunk_bytes ≤ 0, ignore_index ≥ 0,
/// a soft-cap ≤ 0.
absl::Status Validate(const CrossEntropyOptions& options);

struct CrossEntropyResult {
  at::Tensor loss_sum;   ///< scalar float32: Σ over counted tokens of −log p(label)
  int64_t n_tokens = 0;  ///< tokens whose label is not ignore_index
};

/// hidden: (N, C) in the model dtype; weight: (V, C) the LM head; labels: int64 (N).
/// Logits are computed in the model dtype and reduced in float32, as transformers' loss does, and
/// only for rows whose label is not ignore_index (masked prompt tokens cost no head GEMM). Under
/// autocast (train/autocast.h) float32 inputs are cast and the GEMMs run in the autocast dtype.
/// Differentiable in hidden and weight (when they require grad; gradients for both are held from
/// forward to backward: (N, C) and, for a trainable head, (V, C)). Not twice differentiable.
/// CPU and CUDA (ATen ops).
/// Throws c10::Error on shape mismatches or labels outside [0, V) other than ignore_index.
CrossEntropyResult ChunkedCrossEntropy(const at::Tensor& hidden, const at::Tensor& weight,
                                       const at::Tensor& labels, const CrossEntropyOptions& options = {});

}  // namespace llmtrain::kernels
