// RunSpec → components (spec/build.h).
#include "llmtrain/spec/build.h"

#include <ATen/ATen.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#if LLMTRAIN_WITH_CUDA
#include "kernels/kernels_cuda.h"
#endif
#include "llmtrain/core/atomic_file.h"
#include "llmtrain/core/log.h"
#include "llmtrain/core/status.h"
#include "llmtrain/dist/env.h"
#include "llmtrain/eval/tasks.h"
#include "llmtrain/dist/process_group.h"
#include "llmtrain/dist/sharded_engine.h"
#include "llmtrain/io/hf_config.h"
#include "llmtrain/lora/lora.h"
#include "llmtrain/quant/quantized_linear.h"
#include "llmtrain/spec/memory_plan.h"
#include "llmtrain/tokenizer/chat_template.h"
#include "llmtrain/tokenizer/tokenizer.h"

namespace llmtrain::spec {

std::optional<quant::Quant4Options> ToQuant4Options(const RunSpec& spec) {
  const ModelSpec& m = spec.model();
  if (!m.load_in_4bit()) return std::nullopt;
  quant::Quant4Options q;
  q.type = m.quant_type() == ModelSpec::fp4 ? quant::QuantType::kFp4 : quant::QuantType::kNf4;
  q.blocksize = m.quant_blocksize();
  q.double_quant = m.double_quant();
  return q;
}

model::DecoderOptions ToDecoderOptions(const RunSpec& spec) {
  model::DecoderOptions o;
  o.dtype = spec.model().dtype() == ModelSpec::bf16 ? Dtype::kBf16 : Dtype::kF32;
  o.activation_checkpointing = spec.training().activation_checkpointing();
  o.linear_factory = quant::QuantizedLinearFactory(ToQuant4Options(spec));
  return o;
}

absl::StatusOr<data::DatasetOptions> ToEvalDatasetOptions(const RunSpec& spec) {
  LLMTRAIN_ASSIGN_OR_RETURN(data::DatasetOptions o, ToDatasetOptions(spec));
  if (!spec.data().eval_image_list().empty()) o.image_list = spec.data().eval_image_list();
  return o;
}

absl::StatusOr<data::DatasetOptions> ToDatasetOptions(const RunSpec& spec) {
  data::DatasetOptions o;
  LLMTRAIN_ASSIGN_OR_RETURN(o.format, data::ParseFormat(DataSpec::Format_Name(spec.data().format())));
  o.image_dir = spec.data().image_dir();
  o.image_list = spec.data().image_list();
  return o;
}

absl::Status ConfigureImages(const RunSpec& spec, tokenizer::Tokenizer* tokenizer, data::CollatorOptions* options) {
  const std::string& path = spec.model().path();
  if (!IsDirectory(path)) return absl::OkStatus();  // a GGUF holds a text model
  LLMTRAIN_ASSIGN_OR_RETURN(const io::HfConfig config, io::LoadHfConfig(path + "/config.json"));
  if (!config.vision.has_value()) return absl::OkStatus();
  LLMTRAIN_ASSIGN_OR_RETURN(options->images,
                            data::MakeImageOptions(tokenizer, config.mm_tokens_per_image, config.vision->image_size));
  if (options->images.image_id != config.image_token_index) {
    return absl::FailedPreconditionError(absl::StrCat(
        "the tokenizer's ", options->images.image_token, " is id ", options->images.image_id, ", but ", path,
        "/config.json has image_token_index ", config.image_token_index));
  }
  if (IsRegularFile(path + "/preprocessor_config.json")) {
    LLMTRAIN_ASSIGN_OR_RETURN(options->images.processor, data::LoadImageProcessorConfig(path));
  }
  if (options->images.processor.height != config.vision->image_size ||
      options->images.processor.width != config.vision->image_size) {
    return absl::FailedPreconditionError(absl::StrCat(path, "/preprocessor_config.json: size ",
                                                      options->images.processor.height, "×",
                                                      options->images.processor.width, ", but the vision tower takes ",
                                                      config.vision->image_size, "×", config.vision->image_size));
  }
  if (!options->images.processor.do_resize) {
    return absl::FailedPreconditionError(absl::StrCat(path, "/preprocessor_config.json: do_resize false: the tower "
                                                      "takes ", config.vision->image_size, "×",
                                                      config.vision->image_size, " images"));
  }
  options->images.trl_labels = spec.data().image_labels() == DataSpec::trl;
  if (options->images.trl_labels && config.image_token_index >= config.text.vocab_size) {
    // TRL's labels are the ids, soft tokens included: outside the vocabulary they have no logit
    // (transformers' loss fails on them too).
    return absl::FailedPreconditionError(absl::StrCat(
        "data.image_labels: trl trains on the image soft token, but its id ", config.image_token_index,
        " is outside the model's vocabulary of ", config.text.vocab_size, "; use assistant"));
  }
  return absl::OkStatus();
}

data::CollatorOptions ToCollatorOptions(const RunSpec& spec) {
  const DataSpec& d = spec.data();
  data::CollatorOptions o;
  o.max_length = d.max_length();
  o.truncation = d.truncation() == DataSpec::drop ? data::CollatorOptions::Truncation::kDrop
                                          : data::CollatorOptions::Truncation::kRight;
  o.train_on_prompt = !d.mask_prompt();
  o.packing = d.packing();
  o.batch_size = spec.training().micro_batch_size();
  return o;
}

data::LoaderOptions ToLoaderOptions(const RunSpec& spec, int rank, int world_size) {
  data::LoaderOptions o;
  o.seed = spec.data().seed();
  o.rank = rank;
  o.world_size = world_size;
  return o;
}

train::AdamWOptions ToAdamWOptions(const RunSpec& spec) {
  const TrainingSpec& t = spec.training();
  train::AdamWOptions o;
  o.lr = t.learning_rate();
  o.beta1 = t.adam_beta1();
  o.beta2 = t.adam_beta2();
  o.eps = t.adam_epsilon();
  o.weight_decay = t.weight_decay();
  return o;
}

absl::StatusOr<train::LrSchedule> ToLrSchedule(const RunSpec& spec, int64_t total_steps) {
  const TrainingSpec& t = spec.training();
  LLMTRAIN_ASSIGN_OR_RETURN(train::ScheduleKind kind, train::ParseScheduleKind(TrainingSpec::LrScheduler_Name(t.lr_scheduler())));
  // transformers: warmup_steps, else ceil(total × warmup_ratio).
  const int64_t warmup = t.warmup_steps() > 0 ? t.warmup_steps()
                                              : static_cast<int64_t>(std::ceil(total_steps * t.warmup_ratio()));
  return train::LrSchedule(kind, warmup, total_steps);
}

train::TrainerOptions ToTrainerOptions(const RunSpec& spec) {
  const TrainingSpec& t = spec.training();
  train::TrainerOptions o;
  o.max_steps = t.max_steps();
  o.epochs = t.epochs();
  o.gradient_accumulation_steps = t.gradient_accumulation_steps();
  o.max_grad_norm = t.max_grad_norm();
  o.max_nonfinite_steps = t.max_nonfinite_steps();
  o.log_every_steps = t.log_every_steps();
  o.autocast = t.autocast() == TrainingSpec::bf16 ? train::Autocast::kBf16 : train::Autocast::kOff;
  o.cpu_offload = spec.distributed().cpu_offload();
  o.eval_every_steps = spec.eval().every_steps();
  o.eval_max_batches = spec.eval().max_batches();
  o.sample_prompts.assign(spec.eval().sample_prompts().begin(), spec.eval().sample_prompts().end());
  o.sample_max_new_tokens = spec.eval().max_new_tokens();
  o.sample_temperature = spec.eval().temperature();
  for (int i = 0; i < spec.eval().sample_images_size(); ++i) o.sample_images.push_back(SampleImagePath(spec, i));
  o.sample_image_prompt = spec.eval().sample_image_prompt();
  o.eval_metrics.assign(spec.eval().metrics().begin(), spec.eval().metrics().end());
  o.eval_generation_records = spec.eval().max_generation_records();
  o.output_dir = spec.output().dir();
  o.checkpoint_every_steps = spec.checkpoint().every_steps();
  o.keep_last = spec.checkpoint().keep_last();
  o.run_files.emplace_back("spec.textproto", SpecToText(spec));
  return o;
}

absl::StatusOr<std::shared_ptr<train::Engine>> MakeEngine(const RunSpec& spec_in) {
  RunSpec spec = spec_in;
  FillDefaults(&spec);
  const DistributedSpec& d = spec.distributed();
  LLMTRAIN_ASSIGN_OR_RETURN(const dist::DistEnv env, dist::DistEnvFromEnvironment());
  if (d.world_size() != 0 && d.world_size() != env.world_size) {
    return absl::InvalidArgumentError(absl::StrCat("distributed.world_size: ", d.world_size(), ", but the launcher started ",
                                                   env.world_size, " process(es) (", dist::Describe(env), ")"));
  }
  if (d.engine() == DistributedSpec::single) {
    if (env.world_size > 1) {
      return absl::InvalidArgumentError(absl::StrCat(
          "distributed.engine: single, but the launcher started ", env.world_size,
          " processes (", dist::Describe(env), "); use engine ddp to train on all of them"));
    }
    return std::shared_ptr<train::Engine>(std::make_shared<train::SingleProcessEngine>());
  }
  dist::ProcessGroupOptions options;
  options.timeout_s = d.timeout_s();
  options.init_method = d.init_method();
  // On GPUs every rank takes cuda:LOCAL_RANK and the group is NCCL.
  if (spec.model().device() != "cpu") options.device = "cuda";
  LLMTRAIN_ASSIGN_OR_RETURN(std::unique_ptr<dist::ProcessGroup> group, dist::ProcessGroup::Create(env, options));
  // The rank's GPU is its current device from here on: loading's collectives, our kernels and
  // cuBLASLt handles follow it.
  if (group->device().is_cuda()) c10::impl::getDeviceGuardImpl(c10::DeviceType::CUDA)->setDevice(group->device());
  const bool zero3 = d.engine() == DistributedSpec::zero3;
  if (env.rank == 0) {
    LogInfo(absl::StrCat("distributed: engine ", zero3 ? "zero3" : "ddp", ", ", env.world_size, " process(es), ",
                         dist::Name(group->backend()), ", ", dist::Describe(env)));
  }
  if (zero3) return std::shared_ptr<train::Engine>(std::make_shared<dist::ShardedEngine>(std::move(group)));
  return std::shared_ptr<train::Engine>(std::make_shared<dist::ReplicatedEngine>(std::move(group)));
}

namespace {

// distributed.memory_limit: the run's memory plan per process against the limit, before the
// model loads. On the CPU the runtime is what this process holds now (code, data, tokenizer)
// plus what training adds to it (kTrainingRuntimeGrowthBytes).
absl::Status CheckMemoryBeforeLoading(const RunSpec& spec, const train::Engine& engine) {
  const std::string& setting = spec.distributed().memory_limit();
  if (setting == "off") return absl::OkStatus();
  MemoryPlanOptions po;
  po.world_size = engine.world_size();
  const bool cuda = spec.model().device() != "cpu";
  const int64_t rss = CurrentRssBytes();
  if (!cuda && rss > 0) {
    po.runtime_bytes = rss + kTrainingRuntimeGrowthBytes;
    po.runtime_note = absl::StrCat("this process before loading (", FormatBytes(rss), ") + training's own");
  }
  LLMTRAIN_ASSIGN_OR_RETURN(const MemoryPlan plan, PlanMemory(spec, po));
  int64_t limit = 0;
  std::string source;
  if (setting != "auto") {
    LLMTRAIN_ASSIGN_OR_RETURN(limit, ParseByteSize(setting));
    source = "distributed.memory_limit";
  } else if (cuda) {
#if LLMTRAIN_WITH_CUDA
    const c10::Device device(spec.model().device());
    // Under an engine each rank has cuda:LOCAL_RANK.
    const auto* replicated = dynamic_cast<const dist::ReplicatedEngine*>(&engine);
    const int index = device.has_index() ? device.index()
                      : replicated != nullptr && replicated->group().device().is_cuda()
                          ? replicated->group().device().index()
                          : 0;
    int64_t free = 0, total = 0;
    const std::string error = kernels::detail::DeviceMemoryCuda(index, &free, &total);
    if (!error.empty()) return absl::FailedPreconditionError(absl::StrCat("model.device ", device.str(), ": ", error));
    // The context now exists and is out of `free`; the plan counts it.
    limit = free + kCudaRuntimeBytes;
    source = absl::StrCat("the free memory of ", spec.model().device(), " (", FormatBytes(free), " of ",
                          FormatBytes(total), ") + this process's CUDA context");
#endif
  } else if (const int64_t available = HostMemoryAvailable(); available > 0) {
    limit = available / plan.local_world_size + rss;
    source = absl::StrCat("this machine's available memory (", FormatBytes(available), plan.local_world_size > 1
                              ? absl::StrCat(" / ", plan.local_world_size, " processes") : "",
                          ") + what this process holds");
  }
  if (limit == 0) return absl::OkStatus();
  if (engine.is_main()) {
    LogInfo(absl::StrCat("memory plan: about ", FormatBytes(plan.peak_bytes()), " per process at its peak (",
                         plan.peak_phase().name, "), ", FormatBytes(limit), " allowed (", source,
                         "); `llmtrain plan` shows the details"));
  }
  return CheckPlanFits(plan, limit, source);
}

}  // namespace

absl::StatusOr<train::TrainerComponents> BuildTrainerComponents(const RunSpec& spec_in,
                                                                std::shared_ptr<train::Engine> engine) {
  RunSpec spec = spec_in;
  FillDefaults(&spec);
  LLMTRAIN_RETURN_IF_ERROR(ValidateRunSpec(spec));
  train::TrainerComponents parts;
  if (!engine) {
    LLMTRAIN_ASSIGN_OR_RETURN(engine, MakeEngine(spec));
  }
  parts.engine = std::move(engine);
  try {
    // Data first: a bad data set is refused before the model takes memory and time.
    LLMTRAIN_ASSIGN_OR_RETURN(const data::DatasetOptions dataset_options, ToDatasetOptions(spec));
    const std::vector<std::string> train_files(spec.data().train_files().begin(), spec.data().train_files().end());
    LLMTRAIN_ASSIGN_OR_RETURN(parts.train_data, data::Dataset::Open(train_files, dataset_options));
    LogInfo(absl::StrCat("train data: ", parts.train_data->Summary()));
    LLMTRAIN_RETURN_IF_ERROR(parts.train_data->CheckBadFraction(spec.data().max_bad_fraction()));
    if (parts.train_data->size() == 0) return absl::InvalidArgumentError("data.train_files: no valid records");
    if (!spec.data().eval_files().empty()) {
      const std::vector<std::string> eval_files(spec.data().eval_files().begin(), spec.data().eval_files().end());
      LLMTRAIN_ASSIGN_OR_RETURN(const data::DatasetOptions eval_options, ToEvalDatasetOptions(spec));
      LLMTRAIN_ASSIGN_OR_RETURN(parts.eval_data, data::Dataset::Open(eval_files, eval_options));
      LLMTRAIN_RETURN_IF_ERROR(parts.eval_data->CheckBadFraction(spec.data().max_bad_fraction()));
    }
    eval::BuiltinTaskOptions task_options;
    task_options.docs = spec.eval().task_docs();
    for (int i = 0; i < spec.eval().tasks_size(); ++i) {
      auto task = eval::ResolveTask(spec.eval().tasks(i), task_options);
      if (!task.ok()) return Annotate(task.status(), absl::StrCat("eval.tasks[", i, "]"));
      parts.eval_tasks.push_back(*std::move(task));
    }
    if (!parts.eval_tasks.empty() && parts.engine->world_size() > 1) {
      // Every process scores the tasks (with sharded layers, the same forwards everywhere): a
      // built-in task read from another machine's data would differ and hang the run.
      uint64_t digest = 0xCBF29CE484222325ull;
      for (const eval::ChoiceTask& t : parts.eval_tasks) digest = digest * 31 + eval::ChoiceTaskDigest(t);
      LLMTRAIN_ASSIGN_OR_RETURN(const std::vector<int64_t> all,
                                parts.engine->GatherCounts({static_cast<int64_t>(digest)}));
      if (std::adjacent_find(all.begin(), all.end(), std::not_equal_to<>()) != all.end()) {
        return absl::InvalidArgumentError(
            "eval.tasks: the processes built different tasks (a built-in task reads each machine's own data); "
            "give a task file every machine has (llmtrain make-task writes one)");
      }
    }
    const std::string tokenizer_path = spec.model().tokenizer().empty() ? spec.model().path() : spec.model().tokenizer();
    LLMTRAIN_ASSIGN_OR_RETURN(parts.tokenizer, tokenizer::Tokenizer::Load(tokenizer_path));
    if (spec.data().template_() == DataSpec::model) {
      LLMTRAIN_ASSIGN_OR_RETURN(parts.chat, tokenizer::ChatTemplate::ForTokenizer(*parts.tokenizer));
    }
    data::CollatorOptions collator_options = ToCollatorOptions(spec);
    LLMTRAIN_RETURN_IF_ERROR(ConfigureImages(spec, parts.tokenizer.get(), &collator_options));
    parts.collator = std::make_unique<data::Collator>(*parts.tokenizer, parts.chat.get(), collator_options);
    parts.train_loader = std::make_unique<data::DataLoader>(
        *parts.train_data, *parts.collator,
        ToLoaderOptions(spec, parts.engine->rank(), parts.engine->world_size()));
    // Images decode on a worker thread while the step computes.
    if (collator_options.images.tokens_per_image > 0) parts.train_loader->set_prefetch(true);

    // Before the model takes memory and time: refused here when it will not fit.
    LLMTRAIN_RETURN_IF_ERROR(CheckMemoryBeforeLoading(spec, *parts.engine));
    model::DecoderOptions decoder_options = ToDecoderOptions(spec);
    // zero3 shards each layer as it loads, each process reading and quantizing only its part, so
    // no process holds or computes the whole base; DoRA computes its
    // magnitudes from the whole weights at injection, so then the engine shards after it.
    if (auto* sharded = dynamic_cast<dist::ShardedEngine*>(parts.engine.get()); sharded && !spec.lora().use_dora()) {
      sharded->ConfigureLoading(&decoder_options);
    }
    LLMTRAIN_ASSIGN_OR_RETURN(parts.model, model::Decoder::Load(spec.model().path(), decoder_options));
    parts.adapter = ToLoraConfig(spec);
    LLMTRAIN_ASSIGN_OR_RETURN(const std::vector<std::string> targeted, lora::InjectLora(parts.model.get(), parts.adapter));
    std::vector<at::Tensor> params;
    int64_t n_params = 0;
    for (const auto& [key, t] : lora::TrainableParameters(*parts.model, parts.adapter)) {
      params.push_back(t);
      n_params += t.numel();
    }
    LogInfo(absl::StrFormat("model: %s, %d projections adapted, %d trainable parameters",
                            parts.model->spec().model_type, targeted.size(), n_params));
    LLMTRAIN_RETURN_IF_ERROR(parts.engine->PrepareModel(*parts.model));
    // Before the optimizer, whose state is made where the parameters are.
    if (spec.model().device() != "cpu") {
      // Under ddp and zero3 each rank computes on its group's device (cuda:LOCAL_RANK); zero3's
      // layer shards move first, so the model's move finds them there.
      c10::Device device(spec.model().device());
      if (auto* replicated = dynamic_cast<dist::ReplicatedEngine*>(parts.engine.get())) {
        device = replicated->group().device();
      }
      if (auto* sharded = dynamic_cast<dist::ShardedEngine*>(parts.engine.get())) {
        LLMTRAIN_RETURN_IF_ERROR(Annotate(sharded->MoveTo(device), "model.device"));
      }
      LLMTRAIN_RETURN_IF_ERROR(Annotate(parts.model->MoveTo(device), "model.device"));
      // The process's current GPU becomes the model's: our kernels and cuBLASLt handles follow it.
      if (parts.model->device().is_cuda()) {
        c10::impl::getDeviceGuardImpl(c10::DeviceType::CUDA)->setDevice(parts.model->device());
      }
      LogInfo(absl::StrCat("model: on ", parts.model->device().str()));
    }
    parts.optimizer = std::make_unique<train::AdamW>(params, ToAdamWOptions(spec));
    const train::TrainerOptions options = ToTrainerOptions(spec);
    const int64_t total = train::TotalSteps(options, parts.train_data->size(), spec.training().micro_batch_size(),
                                            parts.engine->world_size());
    LLMTRAIN_ASSIGN_OR_RETURN(train::LrSchedule schedule, ToLrSchedule(spec, total));
    parts.schedule = std::make_unique<train::LrSchedule>(schedule);

    // Metrics: metrics.jsonl and TensorBoard as output.report_to says, and the report at the end,
    // written by the main process alone.
    const std::string& dir = spec.output().dir();
    if (!parts.engine->is_main()) {
      at::manual_seed(spec.training().seed());
      return parts;
    }
    const auto& report_to = spec.output().report_to();
    if (std::find(report_to.begin(), report_to.end(), OutputSpec::jsonl) != report_to.end()) {
      parts.metrics.push_back(train::MakeJsonlMetricsWriter(dir + "/metrics.jsonl"));
    }
    if (std::find(report_to.begin(), report_to.end(), OutputSpec::tensorboard) != report_to.end()) {
      LLMTRAIN_ASSIGN_OR_RETURN(auto tensorboard, train::MakeTensorBoardMetricsWriter(dir + "/tensorboard"));
      parts.metrics.push_back(std::move(tensorboard));
    }
    parts.metrics.push_back(train::MakeReportWriter(dir));
    at::manual_seed(spec.training().seed());  // dropout's generator
  } catch (...) {
    return StatusFromCurrentException("setting up the run");
  }
  return parts;
}

absl::StatusOr<std::unique_ptr<train::Trainer>> BuildTrainer(const RunSpec& spec_in,
                                                             std::shared_ptr<train::Engine> engine) {
  RunSpec spec = spec_in;
  FillDefaults(&spec);
  LLMTRAIN_ASSIGN_OR_RETURN(train::TrainerComponents parts, BuildTrainerComponents(spec, std::move(engine)));
  train::TrainerOptions options = ToTrainerOptions(spec);
  // What the report shows beside the metrics: the data summary with every bad record.
  std::string summary = absl::StrCat("train: ", parts.train_data->Summary(), "\n");
  for (const auto& bad : parts.train_data->bad_records()) absl::StrAppend(&summary, "  bad: ", bad.ToString(), "\n");
  if (parts.eval_data) absl::StrAppend(&summary, "eval: ", parts.eval_data->Summary(), "\n");
  options.run_files.emplace_back("data_summary.txt", summary);
  return train::Trainer::Create(std::move(parts), options);
}

}  // namespace llmtrain::spec
