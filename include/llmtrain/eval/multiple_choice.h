// Multiple-choice evaluation by log-likelihood (issue 16), computed as lm-evaluation-harness's
// `hf` backend computes it for an `output_type: multiple_choice` task: each choice is scored by
// the summed log-probability of " " + choice after the context, the prediction is the choice with
// the highest score (accuracy) or the highest score per character of the choice (accuracy_norm).
// Tasks come from a JSONL file in the shape lm-eval's JSON datasets use ({"context", "choices",
// "gold"}) or are built from data every machine of this kind has (BuildBuiltinTask).
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
#include "absl/strings/string_view.h"
#include "llmtrain/model/decoder.h"
#include "llmtrain/tokenizer/tokenizer.h"

namespace llmtrain::eval {

/// One question: the context, its choices (≥ 2, none empty) and the index of the right one.
struct ChoiceDoc {
  std::string where;  ///< file:line, or task:index for a built-in task
  std::string context;
  std::vector<std::string> choices;
  int64_t gold = 0;
};

struct ChoiceTask {
  std::string name;  ///< the file's name without .jsonl, or the built-in task's name
  std::vector<ChoiceDoc> docs;
};

/// Reads a task file: one JSON object per line with "context" (a string, may be empty),
/// "choices" (an array of ≥ 2 non-empty strings) and "gold" (an integer index into choices);
/// other keys are ignored and blank lines skipped. A task is scored as a whole, so a bad line is
/// an error, not a skipped record: the error names file:line and the field of every bad line
/// (the first 10 of them), and the file is refused before any model loads.
absl::StatusOr<ChoiceTask> LoadChoiceTask(absl::string_view path);

/// Writes `task` as a task file (atomically), one line per doc in LoadChoiceTask's shape.
absl::Status WriteChoiceTask(const ChoiceTask& task, absl::string_view path);

/// The built-in tasks, built at run time from text every machine of this kind has:
///  - "debian-packages": "Question: What does the Debian package NAME do?\nAnswer:", the choices
///    being the synopsis of that package and of other packages (/var/lib/dpkg/status);
///  - "iso-countries": "Question: Which country has the ISO 3166-1 alpha-2 code XX?\nAnswer:", the
///    choices being country names (/usr/share/iso-codes/json/iso_3166-1.json, Debian's iso-codes).
/// The docs are a seeded sample of the entries; the distractors are other entries' texts (all
/// choices of a doc distinct) and the gold's place is drawn too. Same files and options, same task.
inline constexpr const char* kBuiltinTasks[] = {"debian-packages", "iso-countries"};

struct BuiltinTaskOptions {
  int64_t docs = 200;   ///< questions (at most the entries there are); ≥ 1
  int64_t choices = 4;  ///< per question; ≥ 2
  uint64_t seed = 0;
  std::string dpkg_status = "/var/lib/dpkg/status";
  std::string iso_3166 = "/usr/share/iso-codes/json/iso_3166-1.json";
};
absl::StatusOr<ChoiceTask> BuildBuiltinTask(absl::string_view name, const BuiltinTaskOptions& options);

/// What `llmtrain eval --task` takes: a built-in task's name, or else the path of a task file.
/// InvalidArgument naming the built-in tasks when it is neither.
absl::StatusOr<ChoiceTask> ResolveTask(absl::string_view name_or_path, const BuiltinTaskOptions& options);

/// The token ids lm-eval's hf backend scores for one (context, continuation) pair: trailing
/// whitespace of the context moves to the front of the continuation; the continuation's ids are
/// those of tokenizer(context + continuation) after the first len(tokenizer(context)) ids (BOS
/// added as the tokenizer does by default, not when the text already starts with it). An empty
/// context becomes BOS (EOS when the tokenizer has no BOS) before the continuation's ids without
/// special tokens (lm-eval's prefix token); so does a blank context whose ids would be none (no
/// BOS), where lm-eval stops on an assertion.
struct EncodedRequest {
  std::vector<int32_t> context, continuation;
};
EncodedRequest EncodeChoiceRequest(const tokenizer::Tokenizer& tokenizer, absl::string_view context,
                                   absl::string_view continuation);

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
/// off is the caller's: lora::SetTraining(model, false)). InvalidArgument for options out of
/// range or a continuation longer than max_length.
absl::StatusOr<ChoiceResult> EvaluateMultipleChoice(const model::Decoder& model, const tokenizer::Tokenizer& tokenizer,
                                                    const ChoiceTask& task, const ChoiceOptions& options = {});

}  // namespace llmtrain::eval
