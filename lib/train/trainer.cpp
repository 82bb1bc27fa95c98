// The training loop (train/trainer.h).
#include "llmtrain/train/trainer.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/grad_mode.h>
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <optional>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "nlohmann/json.hpp"
#include "llmtrain/core/atomic_file.h"
#include "llmtrain/core/log.h"
#include "llmtrain/core/progress.h"
#include "llmtrain/core/status.h"
#include "llmtrain/data/collator.h"
#include "llmtrain/data/dataset.h"
#include "llmtrain/eval/compare.h"
#include "llmtrain/eval/evaluate.h"
#include "llmtrain/eval/multiple_choice.h"
#include "llmtrain/io/safetensors.h"
#include "llmtrain/io/tensors.h"
#include "llmtrain/kernels/cross_entropy.h"
#include "llmtrain/lora/lora.h"
#include "llmtrain/model/decoder.h"
#include "llmtrain/model/generate.h"
#include "llmtrain/tokenizer/chat_template.h"
#include "llmtrain/tokenizer/tokenizer.h"
#include "llmtrain/train/autocast.h"
#include "llmtrain/train/checkpoint.h"
#include "llmtrain/train/optimizer.h"

namespace llmtrain::train {
namespace {

using Clock = std::chrono::steady_clock;

int64_t PeakRssMib() {
  struct rusage usage {};
  getrusage(RUSAGE_SELF, &usage);
  return usage.ru_maxrss / 1024;
}

// Forwards and losses run inside the guard this turns on; backward runs outside it, as with
// torch.autocast.
void EnterAutocast(std::optional<AutocastGuard>* guard, Autocast autocast, const model::Decoder& model) {
  if (autocast == Autocast::kBf16) guard->emplace(model.lm_head().device().type(), at::kBFloat16);
}

// Σ token loss and count of a batch (labels shifted: position t predicts t + 1).
kernels::CrossEntropyResult BatchLoss(const model::Decoder& model, const data::Batch& b, Autocast autocast) {
  std::optional<AutocastGuard> guard;
  EnterAutocast(&guard, autocast, model);
  const eval::BatchInputs in = eval::ToInputs(b, model.device());
  const at::Tensor hidden = eval::BatchHidden(model, in);  // (B, T, C)
  const int64_t c = hidden.size(-1);
  kernels::CrossEntropyOptions options;
  options.final_softcap = model.spec().final_softcap;
  return kernels::ChunkedCrossEntropy(hidden.narrow(1, 0, b.seq_len - 1).reshape({-1, c}), model.lm_head(),
                                      in.labels.narrow(1, 1, b.seq_len - 1).reshape({-1}), options);
}

}  // namespace

absl::Status Validate(const TrainerOptions& o) {
  std::vector<std::string> errors;
  const auto check = [&](bool ok, const char* field, const std::string& expected, const std::string& found) {
    if (!ok) errors.push_back(absl::StrCat("TrainerOptions.", field, ": expected ", expected, ", found ", found));
  };
  check(o.max_steps >= 0, "max_steps", "≥ 0", absl::StrCat(o.max_steps));
  check(o.max_steps > 0 || (std::isfinite(o.epochs) && o.epochs > 0), "epochs", "> 0 when max_steps is 0",
        absl::StrCat(o.epochs));
  check(o.gradient_accumulation_steps >= 1, "gradient_accumulation_steps", "≥ 1",
        absl::StrCat(o.gradient_accumulation_steps));
  check(std::isfinite(o.max_grad_norm) && o.max_grad_norm >= 0, "max_grad_norm", "≥ 0", absl::StrCat(o.max_grad_norm));
  check(o.max_nonfinite_steps >= 1, "max_nonfinite_steps", "≥ 1", absl::StrCat(o.max_nonfinite_steps));
  check(o.log_every_steps >= 1, "log_every_steps", "≥ 1", absl::StrCat(o.log_every_steps));
  check(o.eval_every_steps >= 0, "eval_every_steps", "≥ 0", absl::StrCat(o.eval_every_steps));
  check(o.eval_max_batches >= 0, "eval_max_batches", "≥ 0", absl::StrCat(o.eval_max_batches));
  check(o.sample_max_new_tokens >= 0, "sample_max_new_tokens", "≥ 0", absl::StrCat(o.sample_max_new_tokens));
  check(std::isfinite(o.sample_temperature) && o.sample_temperature >= 0, "sample_temperature", "≥ 0",
        absl::StrCat(o.sample_temperature));
  for (size_t i = 0; i < o.eval_metrics.size(); ++i) {
    static const char* const kKnown[] = {"loss", "perplexity", "exact_match", "rouge", "bleu", "chrf", "accuracy",
                                         "accuracy_norm"};
    check(std::any_of(std::begin(kKnown), std::end(kKnown), [&](const char* k) { return o.eval_metrics[i] == k; }),
          absl::StrCat("eval_metrics[", i, "]").c_str(),
          "loss, perplexity, exact_match, rouge, bleu, chrf, accuracy or accuracy_norm",
          absl::StrCat("\"", o.eval_metrics[i], "\""));
  }
  check(o.eval_generation_records >= 0, "eval_generation_records", "≥ 0", absl::StrCat(o.eval_generation_records));
  check(!o.output_dir.empty(), "output_dir", "a folder", "\"\"");
  check(o.checkpoint_every_steps >= 0, "checkpoint_every_steps", "≥ 0", absl::StrCat(o.checkpoint_every_steps));
  check(o.keep_last >= 1, "keep_last", "≥ 1", absl::StrCat(o.keep_last));
  for (const auto& [name, content] : o.run_files) {
    check(!name.empty() && name.find('/') == std::string::npos, "run_files", "plain file names",
          absl::StrCat("\"", name, "\""));
  }
  if (errors.empty()) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrJoin(errors, "\n"));
}

int64_t TotalSteps(const TrainerOptions& options, int64_t train_records, int64_t micro_batch_size,
                   int world_size) {
  if (options.max_steps > 0) return options.max_steps;
  // Each rank sees records / world_size of every epoch (data::Sampler leaves out the tail that
  // does not divide evenly).
  if (world_size > 1) train_records /= world_size;
  const int64_t per_epoch = (train_records + micro_batch_size - 1) / std::max<int64_t>(1, micro_batch_size);
  return std::max<int64_t>(1, static_cast<int64_t>(std::ceil(options.epochs * static_cast<double>(per_epoch) /
                                                             static_cast<double>(options.gradient_accumulation_steps))));
}

struct Trainer::State {
  TrainerComponents parts;
  TrainerOptions options;
  std::vector<std::pair<std::string, at::Tensor>> trainable;  // the adapter's tensors by saved key
  std::vector<at::Tensor> params;                             // the same, in order
  int64_t total_steps = 0, step = 0, nonfinite_in_row = 0, skipped_total = 0;
  decltype(RunOptions::on_batch) on_batch;
  decltype(RunOptions::on_micro_batch) on_micro_batch;
  // Gathered from every process for the checkpoint being written: [epoch, cursor] per rank, and
  // the CPU generator states of ranks 1 … N − 1 (bytes, one state after the other).
  std::vector<int64_t> positions, rng_states;
  // Sharded optimizer state (Engine::shards_optimizer_state): elements per process's slice of
  // the flattened adapter, and the whole state gathered for the checkpoint being written.
  int64_t shard_size = 0;
  std::vector<at::Tensor> gathered_state;
  // options.sample_images, decoded and preprocessed: (1, 3, S, S) float32 each.
  std::vector<at::Tensor> sample_pixels;
  // The step-0 evaluation's per-unit results (options.eval_metrics): the base model's.
  std::optional<eval::EvalUnits> base_units;
};

namespace {

at::Tensor CpuRngState() { return at::detail::getDefaultCPUGenerator().get_state(); }

at::TensorOptions Float32On(const std::vector<at::Tensor>& params) {
  return at::TensorOptions().dtype(at::kFloat).device(params.front().device());
}

// Sharded optimizer state: the gradients laid out flat (float32, world · shard elements, zeros
// past the adapter's end) and reduce-scattered; returns this process's slice of their sum.
absl::StatusOr<at::Tensor> ReduceScatterGradients(Engine& engine, const std::vector<at::Tensor>& params,
                                                  int64_t shard, int64_t slice) {
  at::Tensor flat = at::zeros({shard * engine.world_size()}, Float32On(params));
  int64_t offset = 0;
  for (const at::Tensor& p : params) {
    if (p.grad().defined()) flat.narrow(0, offset, p.numel()).copy_(p.grad().reshape({-1}));
    offset += p.numel();
  }
  at::Tensor out = at::empty({shard}, flat.options());
  LLMTRAIN_RETURN_IF_ERROR(engine.ReduceScatterSum(out, flat));
  return out.narrow(0, 0, slice);
}

// Every process's slice (padded to `shard`) all-gathered into the whole flat buffer, on the
// parameters' device (an offloaded slice comes back from the host).
absl::StatusOr<at::Tensor> GatherSlices(Engine& engine, const std::vector<at::Tensor>& params, const at::Tensor& slice,
                                        int64_t shard) {
  if (engine.world_size() == 1) return slice;  // the whole adapter already, where it is
  at::Tensor padded = at::zeros({shard}, Float32On(params));
  padded.narrow(0, 0, slice.numel()).copy_(slice);
  at::Tensor flat = at::empty({shard * engine.world_size()}, padded.options());
  LLMTRAIN_RETURN_IF_ERROR(engine.AllGather(flat, padded));
  return flat;
}

// The global gradient norm from every process's slice of the summed gradients, and those
// slices clipped as torch.nn.utils.clip_grad_norm_ clips: × min(1, max_norm / (norm + 1e-6)) in
// float32. The norm is √(Σ over processes of the slices' Σ g², in float64).
absl::StatusOr<double> ClipGradShards(Engine& engine, at::Tensor& grad, double max_norm) {
  const double local = grad.numel() > 0 ? grad.to(at::kDouble).square().sum().item<double>() : 0.0;
  LLMTRAIN_ASSIGN_OR_RETURN(const double squares, engine.SumValues(local));
  const double norm = std::sqrt(squares);
  if (max_norm > 0 && std::isfinite(norm)) {
    const at::Tensor total = at::scalar_tensor(norm, grad.options());
    grad.mul_(at::clamp((total + 1e-6).reciprocal() * max_norm, c10::nullopt, 1.0));
  }
  return norm;
}

}  // namespace

Trainer::Trainer(std::unique_ptr<State> state) : s_(std::move(state)) {}
Trainer::~Trainer() = default;

int64_t Trainer::total_steps() const { return s_->total_steps; }
const std::vector<std::pair<std::string, at::Tensor>>& Trainer::TrainableParameters() const { return s_->trainable; }
const model::Decoder& Trainer::model() const { return *s_->parts.model; }
const AdamW& Trainer::optimizer() const { return *s_->parts.optimizer; }

absl::StatusOr<std::unique_ptr<Trainer>> Trainer::Create(TrainerComponents parts, const TrainerOptions& options) {
  LLMTRAIN_RETURN_IF_ERROR(Validate(options));
  const auto missing = [](const char* part) {
    return absl::InvalidArgumentError(absl::StrCat("TrainerComponents.", part, ": missing"));
  };
  if (!parts.model) return missing("model");
  if (!parts.train_data) return missing("train_data");
  if (!parts.collator) return missing("collator");
  if (!parts.train_loader) return missing("train_loader");
  if (!parts.optimizer) return missing("optimizer");
  if (!parts.schedule) return missing("schedule");
  LLMTRAIN_RETURN_IF_ERROR(data::Validate(parts.collator->options()));
  LLMTRAIN_RETURN_IF_ERROR(Validate(parts.optimizer->options()));
  if (!options.sample_prompts.empty() && !parts.tokenizer) {
    return absl::InvalidArgumentError("TrainerComponents.tokenizer: needed to generate the sample prompts");
  }
  if (options.autocast != Autocast::kOff && parts.model->dtype() != Dtype::kF32) {
    return absl::InvalidArgumentError(absl::StrCat("TrainerOptions.autocast: needs a float32 model, this one is ",
                                                   SafetensorsName(parts.model->dtype())));
  }
  {
    const auto wants = [&](const char* m) {
      return std::find(options.eval_metrics.begin(), options.eval_metrics.end(), m) != options.eval_metrics.end();
    };
    const bool generation = wants("exact_match") || wants("rouge") || wants("bleu") || wants("chrf");
    const bool choice = wants("accuracy") || wants("accuracy_norm");
    if (!options.eval_metrics.empty() && !parts.eval_data) {
      return absl::InvalidArgumentError("TrainerOptions.eval_metrics: needs TrainerComponents.eval_data");
    }
    if (generation && (!parts.tokenizer || !parts.chat)) {
      return absl::InvalidArgumentError(
          "TrainerOptions.eval_metrics: generation metrics need TrainerComponents.tokenizer and .chat");
    }
    if (choice && (parts.eval_tasks.empty() || !parts.tokenizer)) {
      return absl::InvalidArgumentError(
          "TrainerOptions.eval_metrics: accuracy needs TrainerComponents.eval_tasks and .tokenizer");
    }
  }
  if (!parts.engine) parts.engine = std::make_shared<SingleProcessEngine>();
  auto s = std::make_unique<State>();
  if (!options.sample_images.empty()) {
    const data::ImageOptions& im = parts.collator->options().images;
    if (!parts.model->has_vision() || im.tokens_per_image <= 0) {
      return absl::InvalidArgumentError(
          "TrainerOptions.sample_images: needs an image+text model and the collator's ImageOptions");
    }
    if (!parts.tokenizer || !parts.chat) {
      return absl::InvalidArgumentError(
          "TrainerOptions.sample_images: needs TrainerComponents.tokenizer and .chat (the template places the image)");
    }
    for (size_t i = 0; i < options.sample_images.size(); ++i) {
      const std::string field = absl::StrCat("TrainerOptions.sample_images[", i, "]");
      auto image = data::LoadImage(options.sample_images[i], im.limits);
      if (!image.ok()) return Annotate(image.status(), field);
      const std::vector<float> pixels = data::PreprocessImage(*image, im.processor);
      s->sample_pixels.push_back(at::tensor(at::ArrayRef<float>(pixels), at::kFloat)
                                     .view({1, 3, im.processor.height, im.processor.width}));
    }
  }
  s->trainable = lora::TrainableParameters(*parts.model, parts.adapter);
  for (const auto& [key, t] : s->trainable) s->params.push_back(t);
  if (s->params.empty()) return absl::InvalidArgumentError("TrainerComponents.model: no adapter to train (inject one)");
  // The optimizer's tensors must be the adapter's, in order: checkpoints store its state by index.
  const std::vector<at::Tensor>& opt = parts.optimizer->params();
  bool same = opt.size() == s->params.size();
  for (size_t i = 0; same && i < opt.size(); ++i) same = opt[i].is_same(s->params[i]);
  if (!same) {
    return absl::InvalidArgumentError(absl::StrCat(
        "TrainerComponents.optimizer: expected AdamW over the ", s->params.size(),
        " tensors of lora::TrainableParameters(model, adapter), in that order; it holds ", opt.size()));
  }
  if (parts.optimizer->sharded() && !parts.engine->shards_optimizer_state() && !options.cpu_offload) {
    return absl::InvalidArgumentError(
        "TrainerComponents.optimizer: sharded, but neither the engine nor cpu_offload shards it");
  }
  if ((parts.engine->shards_optimizer_state() || options.cpu_offload) && !parts.optimizer->sharded()) {
    // This process keeps the state of its 1/N of the flattened adapter (the last slices may be
    // shorter, or empty when the adapter has fewer elements than processes); offloaded, in host
    // memory.
    const int64_t total = parts.optimizer->numel();
    const int64_t world = parts.engine->world_size();
    s->shard_size = (total + world - 1) / world;
    const int64_t begin = std::min(total, parts.engine->rank() * s->shard_size);
    LLMTRAIN_RETURN_IF_ERROR(parts.optimizer->ShardState(
        begin, std::min(total, begin + s->shard_size),
        options.cpu_offload ? std::optional<c10::Device>(c10::kCPU) : std::nullopt));
  } else if (parts.optimizer->sharded()) {
    // Sharded by the caller: it must be this process's slice, where cpu_offload wants it.
    const int64_t total = parts.optimizer->numel(), world = parts.engine->world_size();
    s->shard_size = (total + world - 1) / world;
    const int64_t begin = std::min(total, parts.engine->rank() * s->shard_size);
    const int64_t end = std::min(total, begin + s->shard_size);
    const AdamW& opt = *parts.optimizer;
    if (opt.shard_begin() != begin || opt.shard_end() != end) {
      return absl::InvalidArgumentError(absl::StrCat("TrainerComponents.optimizer: holds elements [", opt.shard_begin(),
                                                     ", ", opt.shard_end(), ") of the adapter; process ",
                                                     parts.engine->rank(), " of ", world, " steps [", begin, ", ", end, ")"));
    }
    if (options.cpu_offload && !opt.ShardStateTensors()[0].is_cpu()) {
      return absl::InvalidArgumentError("TrainerComponents.optimizer: cpu_offload, but its state is not on the CPU");
    }
  }
  s->total_steps = TotalSteps(options, parts.train_data->size(), parts.collator->options().batch_size,
                              parts.engine->world_size());
  s->parts = std::move(parts);
  s->options = options;
  return std::unique_ptr<Trainer>(new Trainer(std::move(s)));
}

absl::StatusOr<StepMetrics> Trainer::TrainStep() {
  State& s = *s_;
  const TrainerOptions& o = s.options;
  try {
    const auto start = Clock::now();
    std::vector<data::Batch> batches;
    int64_t targets = 0;
    for (int64_t i = 0; i < o.gradient_accumulation_steps; ++i) {
      LLMTRAIN_ASSIGN_OR_RETURN(data::Batch b, s.parts.train_loader->Next());
      targets += b.target_tokens;
      batches.push_back(std::move(b));
    }
    // The loss of the step is Σ token losses ÷ the target tokens of all its micro-batches (on all
    // processes): the same as one batch of all of them, whatever the split.
    LLMTRAIN_ASSIGN_OR_RETURN(const int64_t global_targets, s.parts.engine->SumCounts(targets));
    const int64_t total_targets = std::max<int64_t>(1, global_targets);
    model::Decoder& model = *s.parts.model;
    lora::SetTraining(&model, true);
    double loss_sum = 0;
    for (const data::Batch& b : batches) {
      if (s.on_micro_batch) s.on_micro_batch(s.step, b);
      if (s.on_batch) {
        s.on_batch(s.step, b.input_ids, b.segment_ids.empty() ? b.attention_mask : b.segment_ids, b.position_ids,
                   b.labels, b.batch_size, b.seq_len);
      }
      // A batch without targets adds nothing, but with sharded layers every process must run
      // the same forwards.
      if (b.target_tokens == 0 && !s.parts.engine->collective_forwards()) continue;
      kernels::CrossEntropyResult ce = BatchLoss(model, b, o.autocast);
      (ce.loss_sum / static_cast<double>(total_targets)).backward();
      loss_sum += ce.loss_sum.item<double>();
    }
    // The global gradients: everywhere (all-reduce), or this process's slice of them when the
    // optimizer state is sharded (reduce-scatter).
    const bool sharded = s.parts.optimizer->sharded();
    AdamW& optimizer = *s.parts.optimizer;
    at::Tensor grad_slice;
    if (sharded) {
      LLMTRAIN_ASSIGN_OR_RETURN(grad_slice, ReduceScatterGradients(*s.parts.engine, s.params, s.shard_size,
                                                                   optimizer.shard_end() - optimizer.shard_begin()));
      if (o.cpu_offload && !grad_slice.is_cpu()) {
        // To the host through pinned (page-locked) memory, the fastest copy, and stepped there.
        at::Tensor host = at::empty(grad_slice.sizes(), grad_slice.options().device(c10::kCPU).pinned_memory(true));
        host.copy_(grad_slice);
        grad_slice = host;
      }
    } else {
      LLMTRAIN_RETURN_IF_ERROR(s.parts.engine->SynchronizeGradients(s.params));
    }
    // Every process computes the same loss, norm and decision from here on: the gradients are
    // the global ones everywhere, and the loss is the sum over processes.
    LLMTRAIN_ASSIGN_OR_RETURN(const double global_loss_sum, s.parts.engine->SumValues(loss_sum));
    StepMetrics m;
    m.loss = global_loss_sum / static_cast<double>(total_targets);
    m.target_tokens = total_targets;
    if (sharded) {
      LLMTRAIN_ASSIGN_OR_RETURN(m.grad_norm, ClipGradShards(*s.parts.engine, grad_slice, o.max_grad_norm));
    } else {
      m.grad_norm = ClipGradNorm(s.params, o.max_grad_norm);
    }
    m.lr = s.parts.optimizer->options().lr * s.parts.schedule->Factor(s.step);
    if (!std::isfinite(m.loss) || !std::isfinite(m.grad_norm)) {
      // Skip the update and say where the non-finite value appeared: the first module whose
      // activations hold one (a forward without dropout, so the RNG stream is untouched), else the
      // trainable tensor nearest the loss (the first one backward reaches) whose gradient holds one.
      m.nonfinite_where = "the loss";
      if (!std::isfinite(m.loss)) {
        lora::SetTraining(&model, false);
        std::optional<AutocastGuard> guard;
        EnterAutocast(&guard, o.autocast, model);
        // With sharded layers every process runs the same forwards: all of its micro-batches.
        const bool in_step = s.parts.engine->collective_forwards();
        for (const data::Batch& b : batches) {
          if (b.target_tokens == 0 && !in_step) continue;
          const eval::BatchInputs in = eval::ToInputs(b, model.device());
          const std::optional<std::string> module =
              model.FirstNonFiniteModule(in.input_ids, in.attention_mask, in.position_ids);
          if (module && m.nonfinite_where == "the loss") m.nonfinite_where = "activations of " + *module;
          if (module && !in_step) break;
        }
        lora::SetTraining(&model, true);
      }
      if (m.nonfinite_where == "the loss" && !sharded) {
        for (auto it = s.trainable.rbegin(); it != s.trainable.rend(); ++it) {
          const at::Tensor& p = it->second;
          if (p.grad().defined() && !at::isfinite(p.grad()).all().item<bool>()) {
            m.nonfinite_where = "the gradient of " + it->first;
            break;
          }
        }
      }
      if (m.nonfinite_where == "the loss" && sharded && grad_slice.numel() > 0) {
        // This process's slice of the summed gradients: the tensor of its last non-finite element
        // (the nearest the loss that it can see).
        const at::Tensor bad = at::isfinite(grad_slice).logical_not().nonzero();
        if (bad.numel() > 0) {
          const int64_t element = optimizer.shard_begin() + bad.max().item<int64_t>();
          int64_t offset = 0;
          for (const auto& [key, p] : s.trainable) {
            if (element < offset + p.numel()) {
              m.nonfinite_where = "the gradient of " + key;
              break;
            }
            offset += p.numel();
          }
        }
      }
      m.skipped = true;
      ++s.nonfinite_in_row;
      ++s.skipped_total;
      if (s.parts.engine->is_main()) LogWarning(absl::StrFormat("step %d: non-finite %s, first in %s; step skipped (%d in a row)", s.step + 1,
                                 std::isfinite(m.loss) ? "gradient" : "loss", m.nonfinite_where, s.nonfinite_in_row));
    } else {
      if (sharded) {
        // Every process's updated slice into every process's adapter.
        LLMTRAIN_ASSIGN_OR_RETURN(const at::Tensor values,
                                  GatherSlices(*s.parts.engine, s.params, optimizer.StepShard(m.lr, grad_slice), s.shard_size));
        at::NoGradGuard no_grad;
        int64_t offset = 0;
        for (at::Tensor& p : s.params) {
          p.copy_(values.narrow(0, offset, p.numel()).view(p.sizes()));
          offset += p.numel();
        }
      } else {
        optimizer.Step(m.lr);
      }
      s.nonfinite_in_row = 0;
    }
    for (at::Tensor& p : s.params) p.mutable_grad() = at::Tensor();
    ++s.step;
    m.step = s.step;
    const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
    int64_t local_tokens = 0;
    for (const data::Batch& b : batches) {
      for (int64_t v : b.attention_mask) local_tokens += v != 0;
    }
    LLMTRAIN_ASSIGN_OR_RETURN(const int64_t tokens, s.parts.engine->SumCounts(local_tokens));
    m.tokens_per_second = seconds > 0 ? static_cast<double>(tokens) / seconds : 0;
    m.peak_rss_mib = PeakRssMib();
    return m;
  } catch (...) {
    return StatusFromCurrentException(absl::StrCat("training step ", s.step + 1));
  }
}

absl::StatusOr<double> Trainer::Evaluate() {
  State& s = *s_;
  if (!s.parts.eval_data) return absl::FailedPreconditionError("no eval data (TrainerComponents.eval_data)");
  try {
    data::LoaderOptions lo;
    lo.shuffle = false;
    data::DataLoader loader(*s.parts.eval_data, *s.parts.collator, lo);
    const int64_t batch = s.parts.collator->options().batch_size;
    const int64_t per_epoch = (s.parts.eval_data->size() + batch - 1) / std::max<int64_t>(1, batch);
    const int64_t n = s.options.eval_max_batches > 0 ? std::min(per_epoch, s.options.eval_max_batches) : per_epoch;
    lora::SetTraining(s.parts.model.get(), false);
    at::NoGradGuard no_grad;
    // Every process walks the same batches and evaluates every world_size-th: the batches of a
    // single-process evaluation, whatever the world size.
    // With sharded layers every process runs the same number of forwards: one that has no batch
    // left in the last round evaluates the first batch again and discards it.
    const int world = s.parts.engine->world_size(), rank = s.parts.engine->rank();
    const bool in_step = s.parts.engine->collective_forwards();
    double sum = 0;
    int64_t count = 0;
    std::optional<data::Batch> first;
    for (int64_t i = 0; i < n; ++i) {
      LLMTRAIN_ASSIGN_OR_RETURN(data::Batch b, loader.Next());
      if (i == 0) first = b;
      if (i % world != rank) continue;
      if (b.target_tokens == 0 && !in_step) continue;
      const kernels::CrossEntropyResult ce = BatchLoss(*s.parts.model, b, s.options.autocast);
      sum += ce.loss_sum.item<double>();
      count += ce.n_tokens;
    }
    if (in_step && first && n % world != 0 && rank >= n % world) {
      (void)BatchLoss(*s.parts.model, *first, s.options.autocast);
    }
    lora::SetTraining(s.parts.model.get(), true);
    LLMTRAIN_ASSIGN_OR_RETURN(sum, s.parts.engine->SumValues(sum));
    LLMTRAIN_ASSIGN_OR_RETURN(count, s.parts.engine->SumCounts(count));
    return count > 0 ? sum / static_cast<double>(count) : 0.0;
  } catch (...) {
    return StatusFromCurrentException("evaluating");
  }
}

namespace {

constexpr char kBaseUnitsFile[] = "eval_base.json";

nlohmann::json UnitsToJson(const eval::EvalUnits& u) {
  nlohmann::json records = nlohmann::json::array(), items = nlohmann::json::array(), choices = nlohmann::json::array();
  for (const eval::RecordLoss& r : u.records) records.push_back({r.where, r.nll_sum, r.n_tokens});
  for (const eval::GenerationItem& i : u.items) items.push_back({i.where, i.prediction, i.references});
  for (const eval::ChoiceScores& c : u.choices) choices.push_back({c.pred, c.pred_norm, c.gold, c.where, c.digest});
  return {{"records", records}, {"items", items}, {"choices", choices}};
}

std::optional<eval::EvalUnits> UnitsFromJson(const nlohmann::json& j) {
  try {
    eval::EvalUnits u;
    for (const nlohmann::json& r : j.at("records")) {
      u.records.push_back({r.at(0).get<std::string>(), r.at(1).get<double>(), r.at(2).get<int64_t>()});
    }
    for (const nlohmann::json& i : j.at("items")) {
      eval::GenerationItem item;
      item.where = i.at(0).get<std::vector<std::string>>();
      item.prediction = i.at(1).get<std::string>();
      item.references = i.at(2).get<std::vector<std::string>>();
      u.items.push_back(std::move(item));
    }
    for (const nlohmann::json& c : j.at("choices")) {
      eval::ChoiceScores scores;
      scores.pred = c.at(0).get<int64_t>();
      scores.pred_norm = c.at(1).get<int64_t>();
      scores.gold = c.at(2).get<int64_t>();
      scores.where = c.at(3).get<std::string>();
      scores.digest = c.at(4).get<uint64_t>();
      u.choices.push_back(scores);
    }
    return u;
  } catch (const nlohmann::json::exception&) {
    return std::nullopt;
  }
}

}  // namespace

absl::Status Trainer::EvaluateAndWrite(bool last) {
  State& s = *s_;
  if (!s.parts.eval_data) return absl::OkStatus();
  LLMTRAIN_ASSIGN_OR_RETURN(double eval_loss, Evaluate());
  EvalMetrics e;
  e.step = s.step;
  e.loss = eval_loss;
  e.perplexity = std::exp(eval_loss);
  // One process writes metrics and generates the samples; with sharded layers every process
  // generates (greedy or from the same generator state, so they run the same forwards).
  const bool main = s.parts.engine->is_main();
  if (!main && !s.parts.engine->collective_forwards()) return absl::OkStatus();
  model::Decoder& model = *s.parts.model;
  if (!s.options.eval_metrics.empty()) {
    eval::EvalUnits units;
    LLMTRAIN_RETURN_IF_ERROR(ScoreEvalMetrics(&e, &units));
    const std::string base_path = absl::StrCat(s.options.output_dir, "/", kBaseUnitsFile);
    if (s.step == 0) {
      s.base_units = units;
      if (main) {
        LLMTRAIN_RETURN_IF_ERROR(WriteFileAtomically(
            base_path, UnitsToJson(units).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace)));
      }
    } else if (!s.base_units) {  // a resumed run: step 0's results from the run folder
      auto text = ReadFileToString(base_path);
      if (text.ok()) s.base_units = UnitsFromJson(nlohmann::json::parse(*text, nullptr, false));
      if (!s.base_units && main) {
        LogWarning(absl::StrCat(base_path, ": ", text.ok() ? "not the step-0 results this version writes" : "missing",
                                "; the run will end without the comparison with the base model"));
      }
      if (!s.base_units) s.base_units = eval::EvalUnits{};  // warned once; compared with nothing
    }
    if (last && s.base_units && !(s.base_units->records.empty() && s.base_units->items.empty() &&
                                  s.base_units->choices.empty())) {
      auto rows = eval::CompareEvaluations(*s.base_units, units, s.options.eval_metrics);
      if (rows.ok()) {
        for (const eval::MetricComparison& r : *rows) {
          e.compare_base.push_back({r.metric, r.base, r.adapter, r.difference, r.low, r.high, r.units});
        }
      } else if (main) {  // e.g. a resumed run whose metrics changed: no table, not a failed run
        LogWarning(absl::StrCat("no comparison with the base model: ", rows.status().message()));
      }
    }
  }
  // Generates from a prompt's ids (and its image, if any) with the adapter, dropout off.
  const auto sample = [&](std::vector<int64_t> ids, const at::Tensor& pixels, const std::string& prompt,
                          const std::string& image) -> absl::Status {
    EvalSample one;
    one.prompt = prompt;
    one.image = image;
    model::GenerationOptions go;
    go.max_new_tokens = s.options.sample_max_new_tokens;
    go.temperature = s.options.sample_temperature;
    if (pixels.defined()) go.pixel_values = pixels.to(model.device());
    lora::SetTraining(&model, false);
    auto out = model::Generate(model, ids, go);
    lora::SetTraining(&model, true);
    const std::string what = one.image.empty() ? absl::StrCat("sample prompt \"", one.prompt, "\"")
                                               : absl::StrCat("sample image ", one.image);
    if (!out.ok()) return Annotate(out.status(), what);
    const std::vector<int32_t> out32(out->begin(), out->end());
    one.output = s.parts.tokenizer->Decode(out32, /*skip_special_tokens=*/true);
    if (main) LogInfo(absl::StrFormat("sample at step %d: %s → %s", s.step, what, one.output));
    e.samples.push_back(std::move(one));
    return absl::OkStatus();
  };
  for (const std::string& prompt : s.options.sample_prompts) {
    std::vector<int64_t> ids;
    if (s.parts.chat) {
      tokenizer::Message user;
      user.role = "user";
      user.content = prompt;
      LLMTRAIN_ASSIGN_OR_RETURN(auto encoded, tokenizer::EncodeChat(*s.parts.tokenizer, *s.parts.chat, {user}, true));
      ids.assign(encoded.ids.begin(), encoded.ids.end());
    } else {
      const std::vector<int32_t> encoded = s.parts.tokenizer->Encode(prompt);
      ids.assign(encoded.begin(), encoded.end());
    }
    LLMTRAIN_RETURN_IF_ERROR(sample(std::move(ids), at::Tensor(), prompt, ""));
  }
  // Image samples: a user turn of the image and the prompt, as the captions format writes it,
  // with the placeholder grown into the image's tokens (Gemma3Processor).
  for (size_t i = 0; i < s.options.sample_images.size(); ++i) {
    tokenizer::Message user;
    user.role = "user";
    user.content_is_list = true;
    user.parts = {{"image", ""}, {"text", s.options.sample_image_prompt}};
    LLMTRAIN_ASSIGN_OR_RETURN(tokenizer::RenderedChat rendered, s.parts.chat->Render({user}, true));
    data::ExpandImagePlaceholders(s.parts.collator->options().images, &rendered);
    const std::vector<int32_t> encoded = tokenizer::EncodeRendered(*s.parts.tokenizer, rendered).ids;
    LLMTRAIN_RETURN_IF_ERROR(sample(std::vector<int64_t>(encoded.begin(), encoded.end()), s.sample_pixels[i],
                                    s.options.sample_image_prompt, s.options.sample_images[i]));
  }
  if (!main) return absl::OkStatus();
  for (const auto& writer : s.parts.metrics) LLMTRAIN_RETURN_IF_ERROR(writer->WriteEval(e));
  std::string scores;
  for (const auto& [name, value] : e.scores) absl::StrAppendFormat(&scores, ", %s %.4f", name, value);
  LogInfo(absl::StrFormat("eval at step %d: loss %.4f, perplexity %.2f%s", s.step, e.loss, e.perplexity, scores));
  for (const BaseComparison& c : e.compare_base) {
    LogInfo(absl::StrFormat("  %s: base %.4f, adapter %.4f, difference %+.4f (95%% interval %+.4f to %+.4f)", c.metric,
                            c.base, c.adapter, c.difference, c.low, c.high));
  }
  return absl::OkStatus();
}

absl::Status Trainer::ScoreEvalMetrics(EvalMetrics* e, eval::EvalUnits* units) {
  State& s = *s_;
  const auto wants = [&](const char* m) {
    return std::find(s.options.eval_metrics.begin(), s.options.eval_metrics.end(), m) != s.options.eval_metrics.end();
  };
  model::Decoder& model = *s.parts.model;
  const int64_t batch = std::max<int64_t>(1, s.parts.collator->options().batch_size);
  lora::SetTraining(&model, false);
  struct Restore {
    model::Decoder* m;
    ~Restore() { lora::SetTraining(m, true); }
  } restore{&model};
  if (wants("loss") || wants("perplexity")) {
    // Per record, unpacked, over the records the eval loss reads: the units of the comparison.
    eval::LossOptions lo;
    lo.batch_size = batch;
    lo.max_records = s.options.eval_max_batches > 0 ? s.options.eval_max_batches * batch : 0;
    LLMTRAIN_ASSIGN_OR_RETURN(eval::LossResult r, eval::EvaluateLoss(model, *s.parts.eval_data, *s.parts.collator, lo));
    units->records = std::move(r.records);
  }
  if (wants("exact_match") || wants("rouge") || wants("bleu") || wants("chrf")) {
    LLMTRAIN_ASSIGN_OR_RETURN(
        std::vector<eval::GenerationItem> items,
        eval::MakeGenerationItems(*s.parts.eval_data, *s.parts.collator, *s.parts.tokenizer, *s.parts.chat,
                                  s.options.eval_generation_records, nullptr));
    model::GenerationOptions go;
    go.max_new_tokens = std::max<int64_t>(1, s.options.sample_max_new_tokens);
    LLMTRAIN_RETURN_IF_ERROR(eval::GeneratePredictions(model, *s.parts.tokenizer, go, &items, {}, batch));
    const eval::GenerationScores g = eval::ScoreGenerations(items);
    if (wants("exact_match")) e->scores.emplace_back("exact_match", g.exact_match);
    if (wants("rouge")) {
      e->scores.emplace_back("rouge1", g.rouge1);
      e->scores.emplace_back("rouge2", g.rouge2);
      e->scores.emplace_back("rougeL", g.rougeL);
    }
    if (wants("bleu")) e->scores.emplace_back("bleu", g.bleu);
    if (wants("chrf")) e->scores.emplace_back("chrf", g.chrf);
    for (eval::GenerationItem& item : items) item.pixel_values.clear();
    units->items = std::move(items);
  }
  if (wants("accuracy") || wants("accuracy_norm")) {
    for (const eval::ChoiceTask& task : s.parts.eval_tasks) {
      eval::ChoiceOptions co;
      co.batch_size = batch;
      LLMTRAIN_ASSIGN_OR_RETURN(eval::ChoiceResult r, eval::EvaluateMultipleChoice(model, *s.parts.tokenizer, task, co));
      units->choices.insert(units->choices.end(), r.docs.begin(), r.docs.end());
    }
    // Over every question of every task, counted (what the comparison's mean recomputes).
    int64_t right = 0, right_norm = 0;
    for (const eval::ChoiceScores& c : units->choices) {
      right += c.pred == c.gold;
      right_norm += c.pred_norm == c.gold;
    }
    const double n = std::max<double>(1.0, static_cast<double>(units->choices.size()));
    if (wants("accuracy")) e->scores.emplace_back("accuracy", static_cast<double>(right) / n);
    if (wants("accuracy_norm")) e->scores.emplace_back("accuracy_norm", static_cast<double>(right_norm) / n);
  }
  return absl::OkStatus();
}

absl::Status Trainer::SaveCheckpoint() {
  State& s = *s_;
  // Each process's data position and dropout generator are its own (packing, a token budget or
  // skipped examples make processes consume different numbers of records): the main process
  // writes them all.
  const data::Sampler::Position pos = s.parts.train_loader->position();
  LLMTRAIN_ASSIGN_OR_RETURN(s.positions, s.parts.engine->GatherCounts({pos.epoch, pos.cursor}));
  s.rng_states.clear();
  if (s.parts.engine->world_size() > 1) {
    const at::Tensor rng = CpuRngState();
    const uint8_t* bytes = rng.data_ptr<uint8_t>();
    LLMTRAIN_ASSIGN_OR_RETURN(s.rng_states,
                              s.parts.engine->GatherCounts(std::vector<int64_t>(bytes, bytes + rng.numel())));
  }
  // A sharded optimizer state is gathered whole, in the single-process layout (per parameter:
  // exp_avg, exp_avg_sq, the master copy of a bf16 one), so the run resumes at any world size.
  s.gathered_state.clear();
  if (s.parts.optimizer->sharded()) {
    std::vector<at::Tensor> whole;
    for (const at::Tensor& slice : s.parts.optimizer->ShardStateTensors()) {
      LLMTRAIN_ASSIGN_OR_RETURN(at::Tensor flat, GatherSlices(*s.parts.engine, s.params, slice, s.shard_size));
      whole.push_back(flat.cpu());  // off the GPU at once: the state was sharded (or offloaded) to spare it
    }
    if (!s.parts.engine->is_main()) whole.clear();
    int64_t offset = 0;
    for (const at::Tensor& p : whole.empty() ? std::vector<at::Tensor>() : s.params) {
      const auto part = [&](int k) { return whole[k].narrow(0, offset, p.numel()).view(p.sizes()).clone(); };
      s.gathered_state.push_back(part(0));
      s.gathered_state.push_back(part(1));
      s.gathered_state.push_back(p.scalar_type() == at::kFloat ? at::empty({0}, at::kFloat) : part(2));
      offset += p.numel();
    }
  }
  // The main process writes it (the adapter and optimizer state are the same on every process);
  // the others wait for it and learn whether it worked.
  absl::Status written = s.parts.engine->is_main() ? WriteCheckpoint() : absl::OkStatus();
  s.gathered_state.clear();
  LLMTRAIN_ASSIGN_OR_RETURN(const bool failed, s.parts.engine->AnyProcess(!written.ok()));
  if (failed && written.ok()) {
    return absl::InternalError(absl::StrCat("the main process failed to write the checkpoint of step ", s.step));
  }
  return written;
}

absl::Status Trainer::WriteCheckpoint() {
  State& s = *s_;
  return CommitCheckpoint(s.options.output_dir, s.step, s.options.keep_last, [&](const std::string& dir) -> absl::Status {
    LLMTRAIN_RETURN_IF_ERROR(lora::SaveAdapter(*s.parts.model, s.parts.adapter, dir + "/adapter"));
    std::vector<std::pair<std::string, at::Tensor>> state;
    const std::vector<at::Tensor> adam_state =
        s.parts.optimizer->sharded() ? s.gathered_state : s.parts.optimizer->StateTensors();
    for (size_t i = 0; i < adam_state.size(); ++i) state.emplace_back(absl::StrCat("adam.", i), adam_state[i]);
    state.emplace_back("rng.cpu", CpuRngState());
    // The other processes' generators: rng.cpu.<rank>.
    const int world = s.parts.engine->world_size();
    if (world > 1 && !s.rng_states.empty()) {
      const at::Tensor states = at::tensor(at::ArrayRef<int64_t>(s.rng_states), at::kLong).to(at::kByte).view({world, -1});
      for (int r = 1; r < world; ++r) state.emplace_back(absl::StrCat("rng.cpu.", r), states[r].contiguous());
    }
    // On a GPU, dropout draws from the device's generator.
    if (s.parts.model->device().is_cuda()) {
      state.emplace_back("rng.cuda", at::globalContext().defaultGenerator(s.parts.model->device()).get_state());
    }
    LLMTRAIN_RETURN_IF_ERROR(io::SaveSafetensors(dir + "/optimizer.safetensors", state));
    TrainerState ts;
    ts.step = s.step;
    ts.adam_step = s.parts.optimizer->step();
    // The data position in records of the epoch's global order, so a run resumes at any world
    // size that keeps the global batch.
    const data::Sampler::Position pos = s.parts.train_loader->position();
    ts.data_epoch = pos.epoch;
    ts.data_cursor = pos.cursor * s.parts.engine->world_size();
    ts.world_size = s.parts.engine->world_size();
    ts.global_micro_batches = s.options.gradient_accumulation_steps * s.parts.engine->world_size();
    for (size_t r = 0; r + 1 < s.positions.size(); r += 2) ts.data_positions.push_back({s.positions[r], s.positions[r + 1]});
    ts.nonfinite_in_row = s.nonfinite_in_row;
    ts.skipped_total = s.skipped_total;
    ts.total_steps = s.total_steps;
    LLMTRAIN_RETURN_IF_ERROR(WriteFileAtomically(dir + "/trainer_state.json", TrainerStateJson(ts)));
    for (const auto& [name, content] : s.options.run_files) {
      LLMTRAIN_RETURN_IF_ERROR(WriteFileAtomically(absl::StrCat(dir, "/", name), content));
    }
    return absl::OkStatus();
  });
}

absl::StatusOr<bool> Trainer::Resume() {
  State& s = *s_;
  const std::vector<CheckpointEntry> all = CompleteCheckpoints(s.options.output_dir);
  if (all.empty()) return false;  // nothing to resume: a fresh start
  const std::string ck = all.back().dir;
  const std::string state_path = ck + "/trainer_state.json";
  LLMTRAIN_ASSIGN_OR_RETURN(std::string text, ReadFileToString(state_path));
  LLMTRAIN_ASSIGN_OR_RETURN(TrainerState st, ParseTrainerState(state_path, text));
  const int world = s.parts.engine->world_size();
  const int64_t micro_batches = s.options.gradient_accumulation_steps * world;
  if (st.global_micro_batches != 0 && st.global_micro_batches != micro_batches) {
    return absl::FailedPreconditionError(absl::StrCat(
        state_path, ": the run was written with ", st.global_micro_batches, " micro-batches per step (world size ",
        st.world_size, " × gradient accumulation ", st.global_micro_batches / std::max<int64_t>(1, st.world_size),
        "); at world size ", world, " this run has ", micro_batches,
        ". Set the gradient accumulation so that world size × accumulation = ", st.global_micro_batches,
        " to continue the same run"));
  }
  // Where this process's data continues: its own position at the same world size; at another
  // one the global position, which exists only when every process stood at the same place.
  data::Sampler::Position position;
  const bool same_place = std::all_of(st.data_positions.begin(), st.data_positions.end(),
                                      [&](const TrainerState::DataPosition& p) { return p == st.data_positions[0]; });
  if (!st.data_positions.empty() && st.world_size == world) {
    position = {st.data_positions[static_cast<size_t>(s.parts.engine->rank())].epoch,
                st.data_positions[static_cast<size_t>(s.parts.engine->rank())].cursor};
  } else if (!same_place) {
    std::vector<std::string> where;
    for (const TrainerState::DataPosition& p : st.data_positions) where.push_back(absl::StrCat("[", p.epoch, ", ", p.cursor, "]"));
    return absl::FailedPreconditionError(absl::StrCat(
        state_path, ": the ", st.world_size, " processes that wrote it stand at different places in the data ([epoch, ",
        "cursor] per rank: ", absl::StrJoin(where, " "), "; packing, a token budget or skipped examples do that), so ",
        "it resumes exactly only at world size ", st.world_size));
  } else if (st.data_cursor % world != 0) {
    return absl::FailedPreconditionError(absl::StrCat(state_path, ": data position ", st.data_cursor,
                                                      " does not divide among ", world, " processes"));
  } else {
    position = {st.data_epoch, st.data_cursor / world};
  }
  LLMTRAIN_ASSIGN_OR_RETURN(auto adapter, io::SafetensorsFile::Open(ck + "/adapter/adapter_model.safetensors"));
  at::NoGradGuard no_grad;
  for (auto& [key, p] : s.trainable) {
    const io::TensorInfo* info = adapter->Find(key);
    if (info == nullptr) return absl::DataLossError(absl::StrCat(ck, "/adapter: lacks ", key));
    const at::Tensor value = io::TensorView(*adapter, *info);
    if (value.sizes() != p.sizes()) {
      return absl::DataLossError(absl::StrCat(ck, "/adapter: ", key, " has shape [", absl::StrJoin(value.sizes(), ", "),
                                              "], the run's is [", absl::StrJoin(p.sizes(), ", "), "]"));
    }
    p.copy_(value);
  }
  LLMTRAIN_ASSIGN_OR_RETURN(auto opt, io::SafetensorsFile::Open(ck + "/optimizer.safetensors"));
  std::vector<at::Tensor> adam_state;
  const size_t n_state = 3 * s.params.size();  // per parameter: exp_avg, exp_avg_sq, master
  for (size_t i = 0; i < n_state; ++i) {
    const io::TensorInfo* info = opt->Find(absl::StrCat("adam.", i));
    if (info == nullptr) return absl::DataLossError(absl::StrCat(ck, "/optimizer.safetensors: lacks adam.", i));
    adam_state.push_back(io::TensorView(*opt, *info).clone());
  }
  LLMTRAIN_RETURN_IF_ERROR(Annotate(s.parts.optimizer->LoadState(adam_state, st.adam_step), ck));
  // This process's generator where the checkpoint has it (the same world size), else process 0's.
  const io::TensorInfo* rng = st.world_size == world && s.parts.engine->rank() > 0
                                  ? opt->Find(absl::StrCat("rng.cpu.", s.parts.engine->rank()))
                                  : nullptr;
  if (rng == nullptr) rng = opt->Find("rng.cpu");
  if (rng != nullptr) {
    at::Generator generator = at::detail::getDefaultCPUGenerator();
    generator.set_state(io::TensorView(*opt, *rng).clone());
  }
  if (const io::TensorInfo* cuda = opt->Find("rng.cuda"); cuda != nullptr && s.parts.model->device().is_cuda()) {
    at::Generator generator = at::globalContext().defaultGenerator(s.parts.model->device());
    generator.set_state(io::TensorView(*opt, *cuda).clone());
  }
  s.step = st.step;
  s.nonfinite_in_row = st.nonfinite_in_row;
  s.skipped_total = st.skipped_total;
  s.parts.train_loader->Seek(position);
  if (s.parts.engine->is_main()) LogInfo(absl::StrFormat("resumed from %s (step %d of %d)", ck, s.step, s.total_steps));
  return true;
}

absl::Status Trainer::Run(const RunOptions& options) {
  try {
    return RunLoop(options);
  } catch (...) {
    return StatusFromCurrentException(absl::StrCat("training at step ", s_->step));
  }
}

absl::Status Trainer::RunLoop(const RunOptions& options) {
  State& s = *s_;
  const TrainerOptions& o = s.options;
  s.on_batch = options.on_batch;
  s.on_micro_batch = options.on_micro_batch;

  // 1. The run folder: the run's files, no half-written checkpoint, and where to start from.
  // The main process writes; every process reads (a folder they all see).
  Engine& engine = *s.parts.engine;
  const bool main = engine.is_main();
  if (main) {
    LLMTRAIN_RETURN_IF_ERROR(MakeDirectories(o.output_dir + "/checkpoints"));
    for (const auto& [name, content] : o.run_files) {
      LLMTRAIN_RETURN_IF_ERROR(WriteFileAtomically(absl::StrCat(o.output_dir, "/", name), content));
    }
    RemovePartialCheckpoints(o.output_dir);
  }
  LLMTRAIN_RETURN_IF_ERROR(engine.Barrier());
  std::optional<int64_t> resumed_at;
  if (options.resume) {
    LLMTRAIN_ASSIGN_OR_RETURN(const bool resumed, Resume());
    if (resumed) resumed_at = s.step;
  } else if (!CompleteCheckpoints(o.output_dir).empty()) {
    return absl::FailedPreconditionError(absl::StrCat(
        o.output_dir, " holds checkpoints of an earlier run: resume it, or choose another output folder"));
  }
  // Writers write on the main process only.
  std::vector<MetricsWriter*> writers;
  if (main) {
    for (const auto& writer : s.parts.metrics) writers.push_back(writer.get());
  }
  for (MetricsWriter* writer : writers) LLMTRAIN_RETURN_IF_ERROR(writer->Begin(resumed_at));

  // 2. The loop: step, log, checkpoint or stop, evaluate.
  ProgressOptions po;
  po.label = "train";
  po.total = s.total_steps;
  po.unit = "step";
  if (!options.progress || !main) po.plain_interval_seconds = 1e9;  // first and last lines only
  std::optional<ProgressReporter> progress;  // on the main process
  if (main) progress.emplace(po);
  if (progress) progress->Set(s.step);
  const auto run_start = Clock::now();
  // A stop step the run is already at (a rung reached before the sweep learnt of it): nothing to do.
  const bool stops_early = options.stop_at_step > 0 && options.stop_at_step < s.total_steps;
  if (stops_early && s.step >= options.stop_at_step) {
    if (progress) progress->Finish();
    if (main) LogInfo(absl::StrFormat("already at step %d (--stop-at-step %d): nothing to do", s.step, options.stop_at_step));
    for (MetricsWriter* writer : writers) LLMTRAIN_RETURN_IF_ERROR(writer->End());
    return absl::OkStatus();
  }
  if (s.step == 0) LLMTRAIN_RETURN_IF_ERROR(EvaluateAndWrite());
  while (s.step < s.total_steps) {
    LLMTRAIN_ASSIGN_OR_RETURN(StepMetrics m, TrainStep());
    m.elapsed_seconds = std::chrono::duration<double>(Clock::now() - run_start).count();
    // Skipped steps are always logged, with where the non-finite value appeared.
    if (m.step % o.log_every_steps == 0 || m.step == 1 || m.step == s.total_steps || m.skipped) {
      for (MetricsWriter* writer : writers) LLMTRAIN_RETURN_IF_ERROR(writer->WriteStep(m));
    }
    if (progress) progress->Set(m.step, absl::StrFormat("loss %.4f, %.0f tok/s", m.loss, m.tokens_per_second));
    if (options.on_step) options.on_step(m);
    if (s.nonfinite_in_row >= o.max_nonfinite_steps) {
      LLMTRAIN_RETURN_IF_ERROR(SaveCheckpoint());
      for (MetricsWriter* writer : writers) LLMTRAIN_RETURN_IF_ERROR(writer->End());
      return absl::AbortedError(absl::StrCat(s.nonfinite_in_row, " non-finite steps in a row (max_nonfinite_steps); "
                                             "checkpoint at step ", s.step));
    }
    // A signal may reach the processes at different steps: they stop together.
    LLMTRAIN_ASSIGN_OR_RETURN(const bool stop,
                              engine.AnyProcess(options.stop != nullptr && options.stop->load()));
    // The stop step: its evaluation (even when a signal came too: the step is done only with it)
    // before its checkpoint, so that a run killed between the two evaluates again on resuming.
    const bool at_stop_step = stops_early && s.step >= options.stop_at_step;
    const bool eval_now = o.eval_every_steps > 0 && s.step % o.eval_every_steps == 0 && s.step < s.total_steps;
    if (at_stop_step) LLMTRAIN_RETURN_IF_ERROR(EvaluateAndWrite());
    if ((o.checkpoint_every_steps > 0 && s.step % o.checkpoint_every_steps == 0) || stop || at_stop_step) {
      LLMTRAIN_RETURN_IF_ERROR(SaveCheckpoint());
    }
    if (stop || at_stop_step) {
      if (progress) progress->Finish();
      if (main) {
        LogInfo(absl::StrFormat("stopped at step %d%s with a checkpoint; continue with --resume", s.step,
                                at_stop_step && !stop ? " (--stop-at-step)" : ""));
      }
      for (MetricsWriter* writer : writers) LLMTRAIN_RETURN_IF_ERROR(writer->End());
      return absl::OkStatus();
    }
    if (eval_now) LLMTRAIN_RETURN_IF_ERROR(EvaluateAndWrite());
  }
  if (progress) progress->Finish();

  // 3. The end: a last evaluation, the final checkpoint and adapter, the writers' artifacts.
  LLMTRAIN_RETURN_IF_ERROR(EvaluateAndWrite(/*last=*/true));
  LLMTRAIN_RETURN_IF_ERROR(SaveCheckpoint());
  absl::Status saved = main ? lora::SaveAdapter(*s.parts.model, s.parts.adapter, o.output_dir + "/adapter")
                            : absl::OkStatus();
  LLMTRAIN_ASSIGN_OR_RETURN(const bool save_failed, engine.AnyProcess(!saved.ok()));
  LLMTRAIN_RETURN_IF_ERROR(saved);
  if (save_failed) return absl::InternalError("the main process failed to write the final adapter");
  if (main) LogInfo(absl::StrFormat("adapter: %s/adapter (%d steps, %d skipped)", o.output_dir, s.step, s.skipped_total));
  for (MetricsWriter* writer : writers) LLMTRAIN_RETURN_IF_ERROR(writer->End());
  return absl::OkStatus();
}

}  // namespace llmtrain::train
