// The training loop a run spec describes (spec/run_spec.h): QLoRA (or LoRA) fine-tuning with
// token-normalized gradient accumulation, AdamW, warmup schedules, clipping, a non-finite guard,
// evaluation with samples, metrics, and atomic checkpoints that a resumed run continues from
// exactly.
//
// Run folder (output.dir):
//   metrics.jsonl                 one JSON line per logged step and per evaluation
//   checkpoints/step-000120/      adapter/ (PEFT format), optimizer.safetensors, trainer_state.json,
//                                 spec.textproto — a folder appears only once complete
//   adapter/                      the final adapter (PEFT format)
//
//   LLMTRAIN_ASSIGN_OR_RETURN(spec::RunSpec run, spec::LoadRunSpec("run.textproto"));
//   LLMTRAIN_ASSIGN_OR_RETURN(auto trainer, train::Trainer::Create(run));
//   LLMTRAIN_RETURN_IF_ERROR(trainer->Run({.resume = true}));
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "absl/status/statusor.h"
#include "llmtrain/spec/run_spec.h"

namespace llmtrain::train {

/// Where gradients are synchronized and parameters live. The trainer calls it and nothing else
/// for distribution, so the sharded data-parallel engine can replace the single-process one.
class Engine {
 public:
  virtual ~Engine() = default;
  /// After the last micro-batch's backward of a step: make every process's gradients the global
  /// ones (all-reduce / reduce-scatter). The single-process engine has nothing to do.
  virtual void SynchronizeGradients(const std::vector<at::Tensor>& params) = 0;
  /// Sum of a per-process count over all processes (target tokens of a step).
  virtual int64_t SumOverProcesses(int64_t value) = 0;
  virtual int rank() const = 0;
  virtual int world_size() const = 0;
};

/// One process, one device: gradients are already global.
class SingleProcessEngine final : public Engine {
 public:
  void SynchronizeGradients(const std::vector<at::Tensor>&) override {}
  int64_t SumOverProcesses(int64_t value) override { return value; }
  int rank() const override { return 0; }
  int world_size() const override { return 1; }
};

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

struct RunOptions {
  bool resume = false;  ///< continue from the newest complete checkpoint in output.dir
  /// Set from another thread or a signal handler to stop after the current step with a checkpoint
  /// (the CLI sets it on SIGINT / SIGTERM).
  std::atomic<bool>* stop = nullptr;
  /// Called after every optimizer step (tests, progress).
  std::function<void(const StepMetrics&)> on_step;
  /// Called with each micro-batch before it is trained on: its (B, T) input_ids, attention mask
  /// (segment ids when packing), position ids and labels, row-major (tests replay them elsewhere).
  std::function<void(int64_t step, const std::vector<int64_t>& input_ids, const std::vector<int64_t>& mask,
                     const std::vector<int64_t>& position_ids, const std::vector<int64_t>& labels, int64_t batch,
                     int64_t seq_len)>
      on_batch;
  bool progress = true;  ///< a progress line with loss, tokens/s and ETA on stderr
};

class Trainer {
 public:
  /// Validates the spec (every error at once, before anything loads), then loads the tokenizer,
  /// the data (bad records reported; refused over data.max_bad_fraction), the model (4-bit if
  /// asked) and injects the adapter.
  static absl::StatusOr<std::unique_ptr<Trainer>> Create(const spec::RunSpec& spec,
                                                         std::shared_ptr<Engine> engine = nullptr);
  ~Trainer();

  /// Trains to the spec's step count (or until options.stop), evaluating and checkpointing as
  /// the spec says; writes output.dir/adapter at the end.
  absl::Status Run(const RunOptions& options = {});

  /// Mean token loss over the eval data (eval.max_batches of it), no gradients.
  absl::StatusOr<double> Evaluate();

  int64_t total_steps() const;
  /// One optimizer step's update without the loop: for tests of accumulation.
  absl::StatusOr<StepMetrics> TrainStep();
  /// The LoRA tensors being trained, by their saved key.
  std::vector<std::pair<std::string, at::Tensor>> TrainableParameters() const;

 private:
  struct State;
  explicit Trainer(std::unique_ptr<State> state);
  std::unique_ptr<State> s_;
};

}  // namespace llmtrain::train
