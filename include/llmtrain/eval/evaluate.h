// Evaluation of a model (with its adapter, if injected) on a data set (issue 16): the token loss
// and perplexity with the trainer's masking, per record as well as in total, so that two models
// can be compared record by record.
//
//   eval::LossOptions options;
//   options.batch_size = 8;
//   LLMTRAIN_ASSIGN_OR_RETURN(eval::LossResult r, eval::EvaluateLoss(*model, *dataset, collator, options));
//   std::printf("loss %.4f, perplexity %.2f over %lld tokens\n", r.loss, r.perplexity, r.n_tokens);
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "absl/status/statusor.h"
#include "llmtrain/data/collator.h"
#include "llmtrain/data/dataset.h"
#include "llmtrain/model/decoder.h"
#include "llmtrain/model/generate.h"
#include "llmtrain/tokenizer/chat_template.h"
#include "llmtrain/tokenizer/tokenizer.h"

namespace llmtrain::eval {

/// A collated batch as the model's inputs on `device`: int64 (B, T) tensors, the mask being the
/// segment ids of a packed batch (so that no token attends across examples), and the images.
struct BatchInputs {
  at::Tensor input_ids, attention_mask, position_ids, labels;
  model::ImageInputs images;
};
BatchInputs ToInputs(const data::Batch& batch, c10::Device device);

/// The final-normed hidden states (B, T, C) of a batch (with its images, if any).
at::Tensor BatchHidden(const model::Decoder& model, const BatchInputs& inputs);

struct LossOptions {
  int64_t batch_size = 8;   ///< sequences per forward (right-padded to the longest)
  int64_t max_records = 0;  ///< the first N records of the data; 0 = all
  /// Called after each batch with the records done and the records to do.
  std::function<void(int64_t done, int64_t total)> on_progress;
};

/// One record's share of the loss.
struct RecordLoss {
  std::string where;    ///< file:line
  double nll_sum = 0;   ///< Σ −log p(label) over its counted tokens
  int64_t n_tokens = 0; ///< the labels that count (after the shift)
};

struct LossResult {
  double loss = 0;        ///< Σ NLL ÷ Σ counted tokens over all records (0 without tokens)
  double perplexity = 0;  ///< exp(loss)
  int64_t n_tokens = 0;
  std::vector<RecordLoss> records;                        ///< in data order, the skipped left out
  std::vector<std::pair<std::string, std::string>> skipped;  ///< (file:line, reason) the collator refused
};

/// Loss and perplexity of `model` over `data`, each record tokenized and labelled by `collator` as
/// the trainer does (prompts masked unless train_on_prompt; plain text: every token after the
/// first, with the EOS the collator adds when add_eos_to_text), one record per row (no packing:
/// packed rows would change nothing but the batching). Position t predicts label t + 1; the NLL is
/// the float32 log-softmax of the logits (with the model's final soft-cap). No gradients; dropout
/// off is the caller's (lora::SetTraining(model, false)). Records the collator refuses are listed
/// in `skipped`, not errors.
absl::StatusOr<LossResult> EvaluateLoss(const model::Decoder& model, const data::Dataset& data,
                                        const data::Collator& collator, const LossOptions& options = {});

/// One prompt to generate from and the texts its output is compared with. Records that share a
/// prompt (the conversation before the last assistant turn, and its images) make one item whose
/// references are all their replies: Flickr8K's five captions of an image are one item.
struct GenerationItem {
  std::vector<std::string> where;   ///< file:line of each record
  std::vector<int64_t> prompt_ids;  ///< the rendered prompt with the generation prompt, images expanded
  std::vector<float> pixel_values;  ///< (N, 3, H, W) of the prompt's images, in token order
  int64_t num_images = 0, image_height = 0, image_width = 0;
  std::vector<std::string> references;  ///< the last assistant turn of each record
  std::string prediction;               ///< the generated text (special tokens skipped)
};

/// The generation items of the first `max_records` records (0 = all), in data order of each
/// item's first record, with the collator's image options (tokens per image, processor). Records
/// without an assistant turn (plain text) or whose prompt cannot be rendered are listed in
/// `skipped` with the reason.
absl::StatusOr<std::vector<GenerationItem>> MakeGenerationItems(
    const data::Dataset& data, const data::Collator& collator, const tokenizer::Tokenizer& tokenizer,
    const tokenizer::ChatTemplate& chat, int64_t max_records,
    std::vector<std::pair<std::string, std::string>>* skipped);

/// Fills each item's prediction: generation from its prompt (and images) with `options`, decoded
/// with special tokens skipped. Prompts go `batch_size` at a time through model::GenerateBatch
/// (longest first, left-padded; each item's ids as if alone); `on_progress(done, total)` after
/// each batch.
absl::Status GeneratePredictions(const model::Decoder& model, const tokenizer::Tokenizer& tokenizer,
                                 const model::GenerationOptions& options, std::vector<GenerationItem>* items,
                                 const std::function<void(int64_t done, int64_t total)>& on_progress = {},
                                 int64_t batch_size = 8);

/// The generation metrics of predictions against their references (eval/text_metrics.h), on the
/// libraries' scales: exact_match (share of items, 0–1), rouge1/2/L (per-item F of the best
/// reference, averaged over items, 0–1), bleu and chrf (corpus scores over the items, 0–100).
struct GenerationScores {
  int64_t items = 0;
  double exact_match = 0, rouge1 = 0, rouge2 = 0, rougeL = 0, bleu = 0, chrf = 0;
};
GenerationScores ScoreGenerations(const std::vector<GenerationItem>& items);

}  // namespace llmtrain::eval
