// Where a run's metrics go: one interface, MetricsWriter, and the writers llmtrain ships:
// metrics.jsonl (one JSON object per logged step and per evaluation), TensorBoard event files, and
// the HTML report written when the run ends. The Trainer calls every writer it was given; an
// application adds its own (a dashboard, a database) by implementing the interface.
//
//   std::vector<std::unique_ptr<train::MetricsWriter>> writers;
//   writers.push_back(train::MakeJsonlMetricsWriter("run/metrics.jsonl"));
//   LLMTRAIN_ASSIGN_OR_RETURN(auto tb, train::MakeTensorBoardMetricsWriter("run/tensorboard"));
//   writers.push_back(std::move(tb));
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace llmtrain::train {

/// One optimizer step, as the trainer measured it.
struct StepMetrics {
  int64_t step = 0;            ///< optimizer steps done
  double loss = 0;             ///< mean token loss over the step's micro-batches
  double lr = 0;
  double grad_norm = 0;        ///< before clipping
  int64_t target_tokens = 0;
  double tokens_per_second = 0;
  double elapsed_seconds = 0;
  int64_t peak_rss_mib = 0;
  bool skipped = false;        ///< non-finite loss or gradient: no update
  /// For a skipped step, where the non-finite value appeared: the first module whose activations
  /// hold one ("activations of model.layers.3.mlp"), or, when the forward is finite, the trainable
  /// tensor nearest the loss whose gradient holds one (backward reaches it first).
  std::string nonfinite_where;
};

/// One generated sample of an evaluation.
struct EvalSample {
  std::string prompt;
  std::string output;  ///< the generated text, special tokens skipped
  std::string image;   ///< the image file generated from with the prompt (image+text models); empty: text only
};

/// One metric of the final evaluation against the same evaluation at step 0 (the base model: a
/// new adapter changes nothing until it trains), with a paired bootstrap interval of the
/// difference (eval/compare.h).
struct BaseComparison {
  std::string metric;
  double base = 0, adapter = 0, difference = 0;  ///< difference = adapter − base
  double low = 0, high = 0;                      ///< 95% interval of the difference
  int64_t units = 0;                             ///< records, prompts or questions resampled
};

/// One evaluation: the mean token loss over the eval data, the generated samples, the metrics
/// TrainerOptions::eval_metrics asks for, and at the end of a run the comparison with step 0.
struct EvalMetrics {
  int64_t step = 0;
  double loss = 0;
  double perplexity = 0;  ///< exp(loss)
  std::vector<EvalSample> samples;
  /// By name, in the order of eval/evaluate.h's keys: exact_match, rouge1, rouge2, rougeL, bleu,
  /// chrf, accuracy, accuracy_norm (the metrics asked for).
  std::vector<std::pair<std::string, double>> scores;
  std::vector<BaseComparison> compare_base;  ///< the last evaluation only (empty otherwise)
};

class MetricsWriter {
 public:
  virtual ~MetricsWriter() = default;
  /// Called once before anything is written: `resumed_at` is the step of the checkpoint a resumed
  /// run continues from (a writer drops what it wrote after it, so the output ends as an
  /// uninterrupted run's), or nullopt for a fresh run (a writer starts afresh).
  virtual absl::Status Begin(std::optional<int64_t> resumed_at) = 0;
  virtual absl::Status WriteStep(const StepMetrics& metrics) = 0;
  virtual absl::Status WriteEval(const EvalMetrics& metrics) = 0;
  /// The run ended, finished or stopped with a checkpoint: flush and write final artifacts.
  virtual absl::Status End() { return absl::OkStatus(); }
};

/// metrics.jsonl: {"type": "train", "step", "loss", "lr", "grad_norm", "target_tokens",
/// "tokens_per_second", "peak_rss_mib", "skipped"[, "nonfinite_where"]} per step and
/// {"type": "eval", "step", "eval_loss", "eval_perplexity", "samples": [{"prompt", "output"[, "image"]}]
/// [, "metrics": {name: value}][, "compare_base": [{"metric", "base", "adapter", "difference",
/// "ci95_low", "ci95_high", "units"}]]} per evaluation, one object per line, flushed line by line.
/// Write errors name the file.
std::unique_ptr<MetricsWriter> MakeJsonlMetricsWriter(absl::string_view path);

/// TensorBoard scalars (train/loss, train/lr, train/grad_norm, train/tokens_per_second,
/// eval/loss, eval/perplexity, eval/<metric> for each score) in a new event file under `dir` (train/tensorboard.h).
absl::StatusOr<std::unique_ptr<MetricsWriter>> MakeTensorBoardMetricsWriter(absl::string_view dir);

/// At End(), run_dir/report.html from the run folder's metrics.jsonl, spec.textproto and
/// data_summary.txt (train/report.h). Put it after the JSONL writer.
std::unique_ptr<MetricsWriter> MakeReportWriter(absl::string_view run_dir);

}  // namespace llmtrain::train
