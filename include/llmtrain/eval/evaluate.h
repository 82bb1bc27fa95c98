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

}  // namespace llmtrain::eval
