// The training loop, built from components: a model with a LoRA adapter injected, the data
// loaders, AdamW and its schedule, an engine (where gradients are synchronized), metric writers,
// and TrainerOptions for the loop's own settings. spec/build.h assembles all of it from a run
// spec; a program can assemble it by hand (examples/gemma_finetune.cpp), or skip the Trainer and
// write its own loop from the same parts (examples/custom_loop.cpp).
//
// The loop: token-normalized gradient accumulation, clipping, AdamW under the schedule, a
// non-finite guard, evaluation with samples, metrics, and atomic checkpoints that a resumed run
// continues from exactly.
//
// Run folder (TrainerOptions::output_dir):
//   metrics.jsonl, tensorboard/, report.html   what the MetricsWriters write
//   checkpoints/step-000120/                   adapter/ (PEFT format), optimizer.safetensors,
//                                              trainer_state.json and the run files — a folder
//                                              appears only once complete
//   adapter/                                   the final adapter (PEFT format)
//
//   train::TrainerComponents parts = …;   // see spec::BuildTrainerComponents
//   train::TrainerOptions options;
//   options.max_steps = 200;
//   options.output_dir = "runs/qlora";
//   LLMTRAIN_ASSIGN_OR_RETURN(auto trainer, train::Trainer::Create(std::move(parts), options));
//   LLMTRAIN_RETURN_IF_ERROR(trainer->Run({.resume = true}));
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>

#include "absl/status/statusor.h"
#include "llmtrain/data/dataset.h"
#include "llmtrain/dist/engine.h"
#include "llmtrain/eval/tasks.h"
#include "llmtrain/lora/adapter_config.h"
#include "llmtrain/train/metrics.h"

namespace llmtrain::model {
class Decoder;
}  // namespace llmtrain::model
namespace llmtrain::tokenizer {
class Tokenizer;
class ChatTemplate;
}  // namespace llmtrain::tokenizer
namespace llmtrain::eval {
struct EvalUnits;
}  // namespace llmtrain::eval
namespace llmtrain::data {
class Dataset;
class Collator;
class DataLoader;
struct Batch;
}  // namespace llmtrain::data

namespace llmtrain::train {

class AdamW;
class LrSchedule;

/// Where gradients are synchronized and what the processes agree on (dist/engine.h): the
/// trainer calls it and nothing else for distribution.
using Engine = dist::Engine;
using SingleProcessEngine = dist::SingleProcessEngine;

/// Mixed precision of forwards and losses (train/autocast.h).
enum class Autocast {
  kOff,
  kBf16,  ///< torch.autocast(dtype=bfloat16) over a float32 model
};

/// The loop's own settings. Defaults equal the run spec's (spec_test checks it).
struct TrainerOptions {
  int64_t max_steps = 0;                    ///< optimizer steps; 0 = from epochs
  double epochs = 1.0;                      ///< passes over the train data when max_steps is 0
  int64_t gradient_accumulation_steps = 1;  ///< micro-batches per optimizer step
  double max_grad_norm = 1.0;               ///< clip the global gradient norm to this; 0 = no clipping
  int64_t max_nonfinite_steps = 10;         ///< stop (with a checkpoint) after this many skipped steps in a row
  int64_t log_every_steps = 10;             ///< a metrics record every N steps (and steps 1, last, skipped)
  Autocast autocast = Autocast::kOff;       ///< needs a float32 model
  /// The adapter's optimizer state (AdamW's moments and float32 values) in host memory, stepped
  /// on the CPU: gradients go to the host, updated values come back (pinned buffers when the
  /// model is on a GPU). Implies the sharded-state step (Engine::shards_optimizer_state), whatever
  /// the engine: one slice per process.
  bool cpu_offload = false;
  int64_t eval_every_steps = 0;             ///< evaluate every N steps; 0 = at the start and the end only
  int64_t eval_max_batches = 0;             ///< batches per evaluation; 0 = the whole eval data
  std::vector<std::string> sample_prompts;  ///< generated from at each evaluation (needs a tokenizer)
  int64_t sample_max_new_tokens = 32;
  double sample_temperature = 0.0;          ///< 0 = greedy
  /// Image files generated from at each evaluation, each as a user turn of the image and
  /// sample_image_prompt (image+text models: needs the collator's ImageOptions, a tokenizer and a
  /// chat template). Decoded once, in Create, where a bad file is refused.
  std::vector<std::string> sample_images;
  std::string sample_image_prompt = data::kCaptionPrompt;  ///< the captions format's prompt
  /// Metrics of each evaluation besides the eval loss, by llmtrain eval's names: loss and
  /// perplexity (per record, for the comparison), exact_match, rouge, bleu, chrf (greedy replies of
  /// sample_max_new_tokens to the eval data's prompts; needs a tokenizer and a chat template),
  /// accuracy, accuracy_norm (TrainerComponents::eval_tasks). When any is set, the step-0
  /// evaluation's per-unit results are kept (output_dir/eval_base.json, so a resumed run has
  /// them) and the last evaluation is compared with them (EvalMetrics::compare_base).
  std::vector<std::string> eval_metrics;
  int64_t eval_generation_records = 32;     ///< prompts generated from per evaluation; 0 = all
  std::string output_dir;                   ///< the run folder (required)
  int64_t checkpoint_every_steps = 0;       ///< 0 = only at the end, on stop, and on the non-finite limit
  int64_t keep_last = 2;                    ///< complete checkpoints kept
  /// Files written into output_dir and into every checkpoint, by name (spec/build.h puts the
  /// run spec here as spec.textproto), and the data summary shown by the report.
  std::vector<std::pair<std::string, std::string>> run_files;
};

/// InvalidArgument listing every bad field ("TrainerOptions.keep_last: expected ≥ 1, found 0").
absl::Status Validate(const TrainerOptions& options);

/// What a Trainer runs on. Everything is owned by the Trainer once created; the pointers between
/// the parts (the collator's tokenizer, the loader's dataset) stay valid because each part lives
/// behind its own pointer.
struct TrainerComponents {
  std::unique_ptr<model::Decoder> model;            ///< with the adapter injected (lora::InjectLora)
  lora::LoraConfig adapter;                         ///< the adapter's config, for saving it
  std::unique_ptr<tokenizer::Tokenizer> tokenizer;  ///< for samples; may be null without sample prompts
  std::unique_ptr<tokenizer::ChatTemplate> chat;    ///< samples are wrapped as a user turn; may be null
  std::unique_ptr<data::Dataset> train_data;
  std::unique_ptr<data::Dataset> eval_data;         ///< may be null: no evaluation
  std::vector<eval::ChoiceTask> eval_tasks;         ///< scored when eval_metrics has accuracy
  std::unique_ptr<data::Collator> collator;
  std::unique_ptr<data::DataLoader> train_loader;   ///< over train_data, through collator
  /// Over lora::TrainableParameters(*model, adapter), in that order (checkpoints rely on it).
  std::unique_ptr<AdamW> optimizer;
  std::unique_ptr<LrSchedule> schedule;             ///< over TotalSteps(options, …)
  std::shared_ptr<Engine> engine;                   ///< null: SingleProcessEngine
  std::vector<std::unique_ptr<MetricsWriter>> metrics;
};

/// The optimizer steps of a run: options.max_steps, or ceil(epochs · ceil(records per process /
/// micro_batch) / gradient_accumulation_steps), at least 1; each of world_size processes sees
/// floor(records / world_size) records of an epoch.
int64_t TotalSteps(const TrainerOptions& options, int64_t train_records, int64_t micro_batch_size,
                   int world_size = 1);

struct RunOptions {
  bool resume = false;  ///< continue from the newest complete checkpoint in output_dir
  /// Set from another thread or a signal handler to stop after the current step with a checkpoint
  /// (the CLI sets it on SIGINT / SIGTERM).
  std::atomic<bool>* stop = nullptr;
  /// Stop once the run has reached this step (0 = never): evaluate there (unless an evaluation of
  /// eval_every_steps just did), write a checkpoint and return, as a rung of a sweep does
  /// (spec/sweep.h); the schedule stays the whole run's, so a --resume continues it exactly. A run
  /// already at or past the step returns at once. At or beyond the last step it changes nothing.
  int64_t stop_at_step = 0;
  /// Called after every optimizer step (tests, progress).
  std::function<void(const StepMetrics&)> on_step;
  /// Called with each micro-batch before it is trained on: its (B, T) input_ids, attention mask
  /// (segment ids when packing), position ids and labels, row-major (tests replay them elsewhere).
  std::function<void(int64_t step, const std::vector<int64_t>& input_ids, const std::vector<int64_t>& mask,
                     const std::vector<int64_t>& position_ids, const std::vector<int64_t>& labels, int64_t batch,
                     int64_t seq_len)>
      on_batch;
  /// Called with each micro-batch as it is, images included, before its forward (replays).
  std::function<void(int64_t step, const data::Batch& batch)> on_micro_batch;
  bool progress = true;  ///< a progress line with loss, tokens/s and ETA on stderr
};

class Trainer {
 public:
  /// Checks the options and that the parts fit together (the optimizer holds exactly the
  /// adapter's trainable tensors, the schedule and loader are there, autocast has a float32
  /// model); InvalidArgument names what does not.
  static absl::StatusOr<std::unique_ptr<Trainer>> Create(TrainerComponents components, const TrainerOptions& options);
  ~Trainer();

  /// Trains to the step count (or until options.stop), evaluating and checkpointing as the
  /// options say; writes output_dir/adapter at the end. LibTorch errors come back as a Status.
  absl::Status Run(const RunOptions& options = {});

  /// Mean token loss over the eval data (eval_max_batches of it), no gradients.
  absl::StatusOr<double> Evaluate();
  /// One optimizer step's update without the loop (tests of accumulation).
  absl::StatusOr<StepMetrics> TrainStep();

  int64_t total_steps() const;
  /// The LoRA tensors being trained, by their saved key.
  const std::vector<std::pair<std::string, at::Tensor>>& TrainableParameters() const;
  const model::Decoder& model() const;
  /// The optimizer (sharded when the engine shards its state or cpu_offload is on).
  const AdamW& optimizer() const;

 private:
  struct State;
  explicit Trainer(std::unique_ptr<State> state);
  absl::Status RunLoop(const RunOptions& options);
  absl::StatusOr<bool> Resume();  // false: no checkpoint to resume from
  absl::Status SaveCheckpoint();   // every process: the main one writes, all learn the outcome
  absl::Status WriteCheckpoint();  // the main process's part
  absl::Status EvaluateAndWrite(bool last = false);
  // options.eval_metrics of the model as it is now: scores into *e, per-unit results into *units.
  absl::Status ScoreEvalMetrics(EvalMetrics* e, eval::EvalUnits* units);
  std::unique_ptr<State> s_;
};

}  // namespace llmtrain::train
