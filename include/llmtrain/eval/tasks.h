// Multiple-choice tasks (issue 16): task files in the shape lm-evaluation-harness's JSON datasets
// use ({"context", "choices", "gold"}), the built-in tasks made from data every machine of this
// kind has, and the token ids lm-eval's hf backend scores for a (context, choice) pair. No
// LibTorch: a run spec's tasks are checked with these before any model loads. The scoring is
// eval/multiple_choice.h.
//
//   LLMTRAIN_ASSIGN_OR_RETURN(eval::ChoiceTask task, eval::ResolveTask("iso-countries", {}));
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
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

/// FNV-1a 64 of a doc's context, choices and gold: the identity of a question across runs (a
/// built-in task rebuilt from changed data gets other digests), and of a whole task
/// (ChoiceTaskDigest) that the processes of a distributed run compare.
uint64_t ChoiceDocDigest(const ChoiceDoc& doc);
uint64_t ChoiceTaskDigest(const ChoiceTask& task);

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

}  // namespace llmtrain::eval
