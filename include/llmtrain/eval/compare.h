// Base model against adapter (issue 16's --compare-base): every metric of two evaluations of the
// same records, their difference (adapter − base) and a paired bootstrap 95% interval of it. The
// units are resampled with replacement, the same draw for both sides (records for loss and
// perplexity, generation items for the generation metrics, questions for accuracy), and each
// metric is recomputed on the draw as a whole: loss as Σ NLL ÷ Σ tokens, BLEU and chrF from the
// summed corpus statistics, the others as means. The interval is the 2.5th and 97.5th percentile
// of the resampled differences (linear interpolation between order statistics, numpy's default):
// when it excludes 0, the adapter's effect on that metric is unlikely to be chance of the sample.
//
//   eval::EvalUnits base = ..., adapter = ...;  // from EvaluateLoss, GeneratePredictions, EvaluateMultipleChoice
//   LLMTRAIN_ASSIGN_OR_RETURN(std::vector<eval::MetricComparison> rows,
//                             eval::CompareEvaluations(base, adapter, {"loss", "rouge"}, {}));
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "llmtrain/eval/evaluate.h"
#include "llmtrain/eval/multiple_choice.h"

namespace llmtrain::eval {

/// The per-unit results of one evaluation: what each metric is recomputed from on a resample.
struct EvalUnits {
  std::vector<RecordLoss> records;    ///< loss, perplexity
  std::vector<GenerationItem> items;  ///< exact_match, rouge1/2/L, bleu, chrf (prediction + references)
  std::vector<ChoiceScores> choices;  ///< accuracy, accuracy_norm (the questions of every task, pooled)
};

struct BootstrapOptions {
  int64_t resamples = 1000;  ///< ≥ 1
  uint64_t seed = 0;
  double confidence = 0.95;  ///< in (0, 1)
};

struct MetricComparison {
  std::string metric;
  double base = 0, adapter = 0;
  double difference = 0;   ///< adapter − base
  double low = 0, high = 0;  ///< the bootstrap interval of the difference
  int64_t units = 0;       ///< records, items or questions resampled
};

/// The metric names a comparison can name: loss, perplexity, exact_match, rouge1, rouge2, rougeL,
/// bleu, chrf, accuracy, accuracy_norm; "rouge" stands for the three ROUGE scores.
/// A metric with no units (every record skipped, no questions) has no row. InvalidArgument for an
/// unknown metric, options out of range, or units that differ between the two sides (counts, a
/// record's or item's file:line, a question's place or content), naming the first difference.
absl::StatusOr<std::vector<MetricComparison>> CompareEvaluations(const EvalUnits& base, const EvalUnits& adapter,
                                                                 const std::vector<std::string>& metrics,
                                                                 const BootstrapOptions& options = {});

}  // namespace llmtrain::eval
