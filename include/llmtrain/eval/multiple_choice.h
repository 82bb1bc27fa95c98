// Multiple-choice evaluation by log-likelihood (issue 16), computed as lm-evaluation-harness's
// `hf` backend computes it for an `output_type: multiple_choice` task: each choice is scored by
// the summed log-probability of " " + choice after the context, the prediction is the choice with
// the highest score (accuracy) or the highest score per character of the choice (accuracy_norm).
// Tasks (task files and the built-in ones) are eval/tasks.h.
//
//   LLMTRAIN_ASSIGN_OR_RETURN(eval::ChoiceTask task, eval::ResolveTask("iso-countries", {}));
//   LLMTRAIN_ASSIGN_OR_RETURN(eval::ChoiceResult r,
//                             eval::EvaluateMultipleChoice(*model, *tokenizer, task, {}));
//   std::printf("accuracy %.3f (normalized %.3f) over %lld docs\n", r.accuracy, r.accuracy_norm, r.n_docs);
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "llmtrain/eval/tasks.h"
#include "llmtrain/model/decoder.h"
#include "llmtrain/tokenizer/tokenizer.h"

namespace llmtrain::eval {

struct ChoiceOptions {
  int64_t batch_size = 8;  ///< (context, choice) sequences per forward, right-padded
  /// Longest input: context + continuation is cut from the left to max_length + 1 ids and the
  /// last is not fed (lm-eval's truncation). 0: the model's max_position_embeddings (2048 when
  /// the config has none), as lm-eval picks it.
  int64_t max_length = 0;
  int64_t max_docs = 0;  ///< the first N docs; 0 = all
  /// Called after each batch with the docs done and the docs to do.
  std::function<void(int64_t done, int64_t total)> on_progress;
};

/// One doc's scores: per choice, the summed float32 log-softmax of its continuation ids and
/// whether greedy decoding would have produced them all (lm-eval's is_greedy).
struct ChoiceScores {
  std::string where;     ///< the doc's file:line or task:index
  uint64_t digest = 0;   ///< ChoiceDocDigest of the doc: what a comparison pairs questions by
  std::vector<double> loglikelihood;
  std::vector<bool> is_greedy;
  int64_t pred = 0;       ///< argmax of loglikelihood (the first on ties)
  int64_t pred_norm = 0;  ///< argmax of loglikelihood ÷ the choice's length in code points
  int64_t gold = 0;
};

struct ChoiceResult {
  double accuracy = 0;       ///< share of docs with pred == gold (lm-eval's acc)
  double accuracy_norm = 0;  ///< share with pred_norm == gold (acc_norm)
  int64_t n_docs = 0;
  std::vector<ChoiceScores> docs;  ///< in task order
};

/// Scores every choice of the first max_docs docs of `task` with `model` (no gradients; dropout
/// off is the caller's: lora::SetTraining(model, false)). The log-softmax is float32 whatever the
/// model's dtype (lm-eval computes it in the model's dtype: equal for a float32 model, which the
/// test uses). InvalidArgument for options out of range, a doc LoadChoiceTask would refuse (fewer
/// than 2 choices, an empty one, gold out of range), or a continuation longer than max_length,
/// naming the doc.
absl::StatusOr<ChoiceResult> EvaluateMultipleChoice(const model::Decoder& model, const tokenizer::Tokenizer& tokenizer,
                                                    const ChoiceTask& task, const ChoiceOptions& options = {});

}  // namespace llmtrain::eval
