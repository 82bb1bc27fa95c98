// Text generation with a KV cache: greedy, temperature, top-k, top-p and repetition penalty, in
// transformers' order (repetition penalty → temperature → top-k → top-p), stopping on any of the
// model's end tokens or after max_new_tokens.
//
//   model::GenerationOptions options;
//   options.max_new_tokens = 32;                       // temperature 0: greedy
//   options.on_token = [](int64_t id) { /* stream */ };
//   LLMTRAIN_ASSIGN_OR_RETURN(std::vector<int64_t> ids, model::Generate(*model, prompt, options));
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <random>
#include <vector>

#include "absl/status/statusor.h"
#include "llmtrain/model/decoder.h"

namespace llmtrain::model {

struct GenerationOptions {
  int64_t max_new_tokens = 32;
  double temperature = 0.0;        ///< 0 = greedy (argmax); otherwise logits / temperature
  int64_t top_k = 0;               ///< keep the k most likely tokens; 0 = all
  double top_p = 1.0;              ///< keep the smallest set whose probability reaches top_p
  double repetition_penalty = 1.0; ///< CTRL penalty on tokens already in prompt or output
  uint64_t seed = 0;               ///< sampling seed (same seed, same tokens)
  /// The KV cache's storage dtype (KvCache::dtype): unset = the model's; bfloat16 halves the
  /// cache's memory and reads, rounding keys and values (docs/decoding.md gives the effect).
  std::optional<c10::ScalarType> kv_cache_dtype;
  /// End tokens; empty = the model's eos_token_ids(). Generation stops after emitting one (it is
  /// included in the output, as transformers does).
  std::vector<int64_t> eos_token_ids;
  /// Called with each new token as soon as it is chosen (streaming).
  std::function<void(int64_t)> on_token;
  /// Image+text models: the prompt's images (N, 3, S, S), in the order of their tokens; the prompt
  /// holds tokens_per_image() image tokens for each. The prompt's image tokens see each other both
  /// ways (token_type_ids from the prompt, as the processor makes them). Undefined: no images.
  at::Tensor pixel_values;
};

/// InvalidArgument naming the field for options that cannot work (negative counts, p ∉ (0, 1]).
absl::Status Validate(const GenerationOptions& options);

/// The new token ids that follow `prompt` (ids < vocab, at least one). InvalidArgument for an
/// empty prompt, ids outside the vocabulary, images that do not fit the prompt or bad options.
absl::StatusOr<std::vector<int64_t>> Generate(const Decoder& model, const std::vector<int64_t>& prompt,
                                              const GenerationOptions& options);

/// Several prompts at once: left-padded into one batch and prefilled together, then one token per
/// unfinished row per forward, each row stopping at its own end token or max_new_tokens (finished
/// rows leave the batch and its KV cache). Row r's output is what Generate gives for prompts[r]
/// alone with the same options (each row samples from its own generator seeded with
/// options.seed), up to the float rounding of batched matrix products: the test checks that greedy
/// ids are equal on the real 270M. on_token and options.pixel_values are not used; image+text
/// models take `pixel_values`, one entry per prompt ((N_r, 3, S, S) or undefined for none).
/// InvalidArgument as Generate, naming the prompt.
absl::StatusOr<std::vector<std::vector<int64_t>>> GenerateBatch(const Decoder& model,
                                                               const std::vector<std::vector<int64_t>>& prompts,
                                                               const GenerationOptions& options,
                                                               const std::vector<at::Tensor>& pixel_values = {});

/// One next-token choice from a row of float32 CPU logits (V), after `history` (prompt and output
/// so far), as Generate makes it: repetition penalty, then greedy when temperature is 0, else
/// temperature, top-k, top-p and a draw from `rng`. Changes `logits` in place. What a serving
/// loop (serve/engine.h) uses to sample each row of a batch with its own options.
int64_t ChooseNextToken(at::Tensor logits, const std::vector<int64_t>& history, const GenerationOptions& options,
                        std::mt19937_64& rng);

// Continuous batching: the rows of a KvCache are sequences that join and leave between steps.

/// Keeps only the rows `keep` (int64 indices, in the cache's device) of `cache`, in that order.
void KeepRows(KvCache* cache, const at::Tensor& keep);

/// Appends the rows of `rows` (another cache of the same model, prefilled separately) after those
/// of `into`. The shorter of the two is left-padded (keys and values zero under mask 0) to the
/// other's length, so every row's next token stays in the last column; a sliding-window layer
/// keeps the last min(length, W − 1) keys, as Forward does. An empty `into` becomes `rows`.
/// InvalidArgument when the caches do not come from the same model (layers, heads, dtype).
absl::Status AppendRows(KvCache* into, KvCache rows);

/// Drops the leading columns that are padding in every row (left by rows that have left the
/// batch), so the cache stays as long as its longest live row. Changes nothing the rows compute.
void DropLeadingPadding(KvCache* cache);

}  // namespace llmtrain::model
