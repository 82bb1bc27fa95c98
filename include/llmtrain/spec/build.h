// From a validated RunSpec to the components it describes: the one place that reads a spec's
// values into the options of the library's parts. Each To…Options function converts one section
// for programs that assemble the parts themselves (examples/gemma_finetune.cpp);
// BuildTrainerComponents builds all of them, in the order that refuses bad input before the
// model takes memory and time (data, tokenizer, then the model), and BuildTrainer adds the loop.
//
//   LLMTRAIN_ASSIGN_OR_RETURN(spec::RunSpec run, spec::LoadRunSpec("run.textproto"));
//   LLMTRAIN_ASSIGN_OR_RETURN(auto trainer, spec::BuildTrainer(run));
//   LLMTRAIN_RETURN_IF_ERROR(trainer->Run());
#pragma once

#include <memory>
#include <optional>

#include "absl/status/statusor.h"
#include "llmtrain/data/collator.h"
#include "llmtrain/data/dataset.h"
#include "llmtrain/lora/adapter_config.h"
#include "llmtrain/model/decoder.h"
#include "llmtrain/quant/quant4.h"
#include "llmtrain/spec/run_spec.h"
#include "llmtrain/train/optimizer.h"
#include "llmtrain/train/trainer.h"

namespace llmtrain::tokenizer {
class Tokenizer;
}  // namespace llmtrain::tokenizer

namespace llmtrain::spec {

/// model.load_in_4bit's quantization (nf4/fp4, blocksize, double quantization), or nullopt.
std::optional<quant::Quant4Options> ToQuant4Options(const RunSpec& spec);
/// model.dtype and training.activation_checkpointing; the projection factory is
/// quant::QuantizedLinearFactory(ToQuant4Options(spec)).
model::DecoderOptions ToDecoderOptions(const RunSpec& spec);
/// data.format, image_dir, image_list.
absl::StatusOr<data::DatasetOptions> ToDatasetOptions(const RunSpec& spec);
/// The same for data.eval_files: data.eval_image_list, when given, picks their images.
absl::StatusOr<data::DatasetOptions> ToEvalDatasetOptions(const RunSpec& spec);
/// data.max_length, truncation, mask_prompt, packing and training.micro_batch_size.
data::CollatorOptions ToCollatorOptions(const RunSpec& spec);
/// For a model with a vision tower (its config.json has a vision_config), the collator's images:
/// the model's tokens per image and image size, the tokenizer's image tokens (the soft token
/// added when the vocabulary lacks it), the processor from the model folder's
/// preprocessor_config.json when there is one, data.image_labels. Nothing for text models.
/// FailedPrecondition when the tokenizer's soft token id is not the model's image_token_index.
absl::Status ConfigureImages(const RunSpec& spec, tokenizer::Tokenizer* tokenizer, data::CollatorOptions* options);
/// data.seed, and the process's place in a data-parallel job.
data::LoaderOptions ToLoaderOptions(const RunSpec& spec, int rank, int world_size);
/// training.learning_rate, adam_beta1/2, adam_epsilon, weight_decay.
train::AdamWOptions ToAdamWOptions(const RunSpec& spec);
/// training.lr_scheduler over `total_steps`, with warmup_steps, else ceil(total × warmup_ratio)
/// (transformers' get_warmup_steps).
absl::StatusOr<train::LrSchedule> ToLrSchedule(const RunSpec& spec, int64_t total_steps);
/// The loop's settings: training, eval, checkpoint and output sections; run_files carries the
/// spec itself (spec.textproto).
train::TrainerOptions ToTrainerOptions(const RunSpec& spec);

/// The engine distributed.* asks for, in the process group of the launcher's environment
/// (dist/env.h): SingleProcessEngine for "single" (refused when the launcher started several
/// processes), ReplicatedEngine over Gloo for "ddp". distributed.world_size, when not 0, must
/// equal the launcher's WORLD_SIZE.
absl::StatusOr<std::shared_ptr<train::Engine>> MakeEngine(const RunSpec& spec);

/// Validates `spec` (every error at once, before anything loads), then builds: the data (bad
/// records reported; refused over data.max_bad_fraction), the tokenizer and chat template, the
/// collator and loader, the model (4-bit when asked) with the adapter injected, AdamW over the
/// adapter, the schedule, the engine (MakeEngine when null) and the metric writers (output.report_to,
/// plus the HTML report; on the main process only). Says what it built through the log (core/log.h).
absl::StatusOr<train::TrainerComponents> BuildTrainerComponents(const RunSpec& spec,
                                                                std::shared_ptr<train::Engine> engine = nullptr);

/// BuildTrainerComponents, then train::Trainer::Create with ToTrainerOptions.
absl::StatusOr<std::unique_ptr<train::Trainer>> BuildTrainer(const RunSpec& spec,
                                                             std::shared_ptr<train::Engine> engine = nullptr);

}  // namespace llmtrain::spec
