// Run specs (proto/llmtrain/run_spec.proto): load a text-proto or JSON file, apply
// `--set path.to.field=value` overrides, fill the defaults, and validate everything before any
// work starts. Validation reports every problem at once, each naming its field and the rule.
//
//   LLMTRAIN_ASSIGN_OR_RETURN(spec::RunSpec run, spec::LoadRunSpec("run.textproto", {"lora.r=16"}));
//   LLMTRAIN_RETURN_IF_ERROR(spec::ValidateRunSpec(run));
#pragma once

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "llmtrain/lora/adapter_config.h"
#include "llmtrain/run_spec.pb.h"  // generated from proto/llmtrain/run_spec.proto

namespace llmtrain::spec {

/// Parses spec text: JSON when it starts with '{' (proto3 JSON mapping, field names as in the
/// .proto), else text proto. Unknown fields are errors naming them. `where` prefixes messages.
absl::StatusOr<RunSpec> ParseRunSpec(absl::string_view where, absl::string_view text);

/// Sets one field from "path.to.field=value" (repeated fields take a comma-separated list;
/// map fields "lora.rank_pattern.KEY=value"). Errors name the path.
absl::Status ApplyOverride(RunSpec* spec, absl::string_view assignment);

/// Gives every unset scalar its default (the values --print-defaults shows).
void FillDefaults(RunSpec* spec);

/// Reads `path`, applies `overrides` in order, fills the defaults. Does not validate.
absl::StatusOr<RunSpec> LoadRunSpec(absl::string_view path, const std::vector<std::string>& overrides = {});

/// One problem: the field path ("training.learning_rate", "data.train_files[1]") and the rule.
struct SpecError {
  std::string field;
  std::string message;
};

/// Every problem of a filled spec, without loading the model: ranges and names of every field,
/// that the files exist, and, from the model's config only (config.json or GGUF metadata), its
/// family, context length against data.max_length, and that the LoRA targets match modules.
std::vector<SpecError> FindSpecErrors(const RunSpec& spec);

/// OK, or InvalidArgument listing every FindSpecErrors entry, one "field: message" per line.
absl::Status ValidateRunSpec(const RunSpec& spec);

/// A complete spec with every default, each field preceded by its comment from the .proto, as
/// text proto (what `llmtrain spec --print-defaults` prints).
std::string DefaultSpecText();

/// The spec as text proto (for checkpoints and reports).
std::string SpecToText(const RunSpec& spec);

/// The lora section (PEFT's LoraConfig), seeded by training.seed, based on model.path.
lora::LoraConfig ToLoraConfig(const RunSpec& spec);

/// eval.sample_images[i] as a path to open: under data.image_dir when that is set and the entry
/// is relative; as given otherwise.
std::string SampleImagePath(const RunSpec& spec, int i);

}  // namespace llmtrain::spec
