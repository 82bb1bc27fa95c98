// The training loop (train/trainer.h).
#include "llmtrain/train/trainer.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/grad_mode.h>
#include <torch/headeronly/version.h>
#include <sys/resource.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "llmtrain/core/atomic_file.h"
#include "llmtrain/core/progress.h"
#include "llmtrain/core/status.h"
#include "llmtrain/data/collator.h"
#include "llmtrain/data/dataset.h"
#include "llmtrain/io/safetensors.h"
#include "llmtrain/io/tensors.h"
#include "llmtrain/kernels/cross_entropy.h"
#include "llmtrain/lora/lora.h"
#include "llmtrain/model/decoder.h"
#include "llmtrain/model/generate.h"
#include "llmtrain/tokenizer/chat_template.h"
#include "llmtrain/tokenizer/tokenizer.h"
#include "llmtrain/train/autocast.h"
#include "llmtrain/train/optimizer.h"
#include "llmtrain/train/tensorboard.h"
#include "llmtrain/train/report.h"
#include "nlohmann/json.hpp"

namespace llmtrain::train {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

int64_t PeakRssMib() {
  struct rusage usage {};
  getrusage(RUSAGE_SELF, &usage);
  return usage.ru_maxrss / 1024;
}

at::Tensor ToTensor(const std::vector<int64_t>& v, int64_t b, int64_t t) {
  return at::tensor(at::ArrayRef<int64_t>(v), at::kLong).view({b, t});
}

lora::LoraConfig ToLoraConfig(const spec::RunSpec& s) {
  const spec::LoraSpec& l = s.lora();
  lora::LoraConfig c;
  c.r = l.r();
  c.alpha = l.alpha();
  c.dropout = l.dropout();
  c.use_rslora = l.use_rslora();
  c.use_dora = l.use_dora();
  c.init = l.init() == "gaussian" ? lora::InitMode::kGaussian : lora::InitMode::kDefault;
  if (!l.target_regex().empty()) {
    c.target_regex = l.target_regex();
  } else {
    c.target_modules.assign(l.target_modules().begin(), l.target_modules().end());
  }
  c.layers_to_transform.assign(l.layers_to_transform().begin(), l.layers_to_transform().end());
  for (const auto& [k, v] : l.rank_pattern()) c.rank_pattern.emplace_back(k, v);
  for (const auto& [k, v] : l.alpha_pattern()) c.alpha_pattern.emplace_back(k, v);
  std::sort(c.rank_pattern.begin(), c.rank_pattern.end());
  std::sort(c.alpha_pattern.begin(), c.alpha_pattern.end());
  c.modules_to_save.assign(l.modules_to_save().begin(), l.modules_to_save().end());
  c.dtype = l.dtype() == "bf16" ? Dtype::kBf16 : Dtype::kF32;
  c.seed = s.training().seed();
  c.base_model_name_or_path = s.model().path();
  return c;
}

}  // namespace

struct Trainer::State {
  spec::RunSpec spec;
  std::shared_ptr<Engine> engine;
  std::unique_ptr<tokenizer::Tokenizer> tok;
  std::unique_ptr<tokenizer::ChatTemplate> chat;
  std::unique_ptr<data::Dataset> train, eval;
  std::unique_ptr<data::Collator> collator;
  std::unique_ptr<data::DataLoader> loader;
  std::unique_ptr<model::Decoder> model;
  lora::LoraConfig lora_config;
  std::vector<std::pair<std::string, at::Tensor>> trainable;
  std::vector<at::Tensor> params;
  std::unique_ptr<AdamW> adam;
  std::unique_ptr<LrSchedule> schedule;
  int64_t total_steps = 0, step = 0, nonfinite_in_row = 0, skipped_total = 0;
  std::string dir;
  decltype(RunOptions::on_batch) on_batch;
};

Trainer::Trainer(std::unique_ptr<State> state) : s_(std::move(state)) {}
Trainer::~Trainer() = default;

int64_t Trainer::total_steps() const { return s_->total_steps; }
std::vector<std::pair<std::string, at::Tensor>> Trainer::TrainableParameters() const { return s_->trainable; }

absl::StatusOr<std::unique_ptr<Trainer>> Trainer::Create(const spec::RunSpec& spec_in, std::shared_ptr<Engine> engine) {
  auto s = std::make_unique<State>();
  s->spec = spec_in;
  spec::FillDefaults(&s->spec);
  LLMTRAIN_RETURN_IF_ERROR(spec::ValidateRunSpec(s->spec));
  const spec::RunSpec& sp = s->spec;
  s->engine = engine ? std::move(engine) : std::make_shared<SingleProcessEngine>();
  s->dir = sp.output().dir();
  try {
    // Data first: a bad data set is refused before the model takes memory and time.
    LLMTRAIN_ASSIGN_OR_RETURN(data::Format format, data::ParseFormat(sp.data().format()));
    const std::vector<std::string> train_files(sp.data().train_files().begin(), sp.data().train_files().end());
    LLMTRAIN_ASSIGN_OR_RETURN(s->train, data::Dataset::Open(train_files, {format}));
    std::fprintf(stderr, "train data: %s\n", s->train->Summary().c_str());
    LLMTRAIN_RETURN_IF_ERROR(s->train->CheckBadFraction(sp.data().max_bad_fraction()));
    if (s->train->size() == 0) return absl::InvalidArgumentError("data.train_files: no valid records");
    if (!sp.data().eval_files().empty()) {
      const std::vector<std::string> eval_files(sp.data().eval_files().begin(), sp.data().eval_files().end());
      LLMTRAIN_ASSIGN_OR_RETURN(s->eval, data::Dataset::Open(eval_files, {format}));
      LLMTRAIN_RETURN_IF_ERROR(s->eval->CheckBadFraction(sp.data().max_bad_fraction()));
    }
    const std::string tok_path = sp.model().tokenizer().empty() ? sp.model().path() : sp.model().tokenizer();
    LLMTRAIN_ASSIGN_OR_RETURN(s->tok, tokenizer::Tokenizer::Load(tok_path));
    if (sp.data().template_() == "model") {
      LLMTRAIN_ASSIGN_OR_RETURN(s->chat, tokenizer::ChatTemplate::ForTokenizer(*s->tok));
    }
    data::CollatorOptions co;
    co.max_length = sp.data().max_length();
    co.truncation = sp.data().truncation() == "drop" ? data::CollatorOptions::Truncation::kDrop
                                                     : data::CollatorOptions::Truncation::kRight;
    co.train_on_prompt = !sp.data().mask_prompt();
    co.packing = sp.data().packing();
    co.batch_size = sp.training().micro_batch_size();
    s->collator = std::make_unique<data::Collator>(*s->tok, s->chat.get(), co);
    data::LoaderOptions lo;
    lo.seed = sp.data().seed();
    lo.rank = s->engine->rank();
    lo.world_size = s->engine->world_size();
    s->loader = std::make_unique<data::DataLoader>(*s->train, *s->collator, lo);

    model::DecoderOptions mo;
    mo.dtype = sp.model().dtype() == "bf16" ? Dtype::kBf16 : Dtype::kF32;
    mo.activation_checkpointing = sp.training().activation_checkpointing();
    if (sp.model().load_in_4bit()) {
      mo.quantize_4bit = quant::Quant4Options{sp.model().quant_type() == "fp4" ? quant::QuantType::kFp4 : quant::QuantType::kNf4,
                                              sp.model().quant_blocksize(), sp.model().double_quant()};
    }
    LLMTRAIN_ASSIGN_OR_RETURN(s->model, model::Decoder::Load(sp.model().path(), mo));
    s->lora_config = ToLoraConfig(sp);
    LLMTRAIN_ASSIGN_OR_RETURN(auto targeted, lora::InjectLora(s->model.get(), s->lora_config));
    s->trainable = lora::TrainableParameters(*s->model, s->lora_config);
    for (const auto& [key, t] : s->trainable) s->params.push_back(t);
    int64_t n_params = 0;
    for (const at::Tensor& p : s->params) n_params += p.numel();
    std::fprintf(stderr, "model: %s, %zu projections adapted, %lld trainable parameters\n",
                 s->model->spec().model_type.c_str(), targeted.size(), static_cast<long long>(n_params));

    const spec::TrainingSpec& t = sp.training();
    s->adam = std::make_unique<AdamW>(s->params, AdamWOptions{t.learning_rate(), t.adam_beta1(), t.adam_beta2(),
                                                              t.adam_epsilon(), t.weight_decay()});
    if (t.max_steps() > 0) {
      s->total_steps = t.max_steps();
    } else {
      const int64_t per_epoch = (s->train->size() + t.micro_batch_size() - 1) / t.micro_batch_size();
      s->total_steps = std::max<int64_t>(
          1, static_cast<int64_t>(std::ceil(t.epochs() * static_cast<double>(per_epoch) /
                                            static_cast<double>(t.gradient_accumulation_steps()))));
    }
    // transformers: warmup_steps, else ceil(total × warmup_ratio).
    const int64_t warmup = t.warmup_steps() > 0 ? t.warmup_steps()
                                                : static_cast<int64_t>(std::ceil(s->total_steps * t.warmup_ratio()));
    LLMTRAIN_ASSIGN_OR_RETURN(ScheduleKind kind, ParseScheduleKind(t.lr_scheduler()));
    s->schedule = std::make_unique<LrSchedule>(kind, warmup, s->total_steps);
    at::manual_seed(t.seed());  // dropout's generator
  } catch (...) {
    return StatusFromCurrentException("setting up the run");
  }
  return std::unique_ptr<Trainer>(new Trainer(std::move(s)));
}

namespace {

// training.autocast: forwards and losses run inside the guard this turns on; backward runs
// outside it, as with torch.autocast.
void EnterAutocast(std::optional<AutocastGuard>* guard, const std::string& autocast, const model::Decoder& model) {
  if (autocast == "bf16") guard->emplace(model.lm_head().device().type(), at::kBFloat16);
}

// Σ token loss and count of a batch (labels shifted: position t predicts t + 1).
kernels::CrossEntropyResult BatchLoss(const model::Decoder& model, const data::Batch& b, const std::string& autocast) {
  std::optional<AutocastGuard> guard;
  EnterAutocast(&guard, autocast, model);
  const at::Tensor ids = ToTensor(b.input_ids, b.batch_size, b.seq_len);
  const at::Tensor mask = ToTensor(b.segment_ids.empty() ? b.attention_mask : b.segment_ids, b.batch_size, b.seq_len);
  const at::Tensor positions = ToTensor(b.position_ids, b.batch_size, b.seq_len);
  const at::Tensor labels = ToTensor(b.labels, b.batch_size, b.seq_len);
  const at::Tensor hidden = model.Hidden(ids, mask, positions);
  const int64_t c = hidden.size(-1);
  kernels::CrossEntropyOptions options;
  options.final_softcap = model.spec().final_softcap;
  return kernels::ChunkedCrossEntropy(hidden.narrow(1, 0, b.seq_len - 1).reshape({-1, c}), model.lm_head(),
                                      labels.narrow(1, 1, b.seq_len - 1).reshape({-1}), options);
}

}  // namespace

absl::StatusOr<StepMetrics> Trainer::TrainStep() {
  State& s = *s_;
  const spec::TrainingSpec& t = s.spec.training();
  const auto start = Clock::now();
  std::vector<data::Batch> batches;
  int64_t targets = 0;
  for (int64_t i = 0; i < t.gradient_accumulation_steps(); ++i) {
    LLMTRAIN_ASSIGN_OR_RETURN(data::Batch b, s.loader->Next());
    targets += b.target_tokens;
    batches.push_back(std::move(b));
  }
  // The loss of the step is Σ token losses ÷ the target tokens of all its micro-batches (on all
  // processes): the same as one batch of all of them, whatever the split.
  const int64_t total_targets = std::max<int64_t>(1, s.engine->SumOverProcesses(targets));
  lora::SetTraining(s.model.get(), true);
  double loss_sum = 0;
  for (const data::Batch& b : batches) {
    if (s.on_batch) {
      s.on_batch(s.step, b.input_ids, b.segment_ids.empty() ? b.attention_mask : b.segment_ids, b.position_ids,
                 b.labels, b.batch_size, b.seq_len);
    }
    if (b.target_tokens == 0) continue;
    kernels::CrossEntropyResult ce = BatchLoss(*s.model, b, t.autocast());
    (ce.loss_sum / static_cast<double>(total_targets)).backward();
    loss_sum += ce.loss_sum.item<double>();
  }
  s.engine->SynchronizeGradients(s.params);
  StepMetrics m;
  m.loss = loss_sum / static_cast<double>(total_targets);
  m.target_tokens = total_targets;
  m.grad_norm = ClipGradNorm(s.params, t.max_grad_norm());
  m.lr = t.learning_rate() * s.schedule->Factor(s.step);
  if (!std::isfinite(m.loss) || !std::isfinite(m.grad_norm)) {
    // Skip the update and say where the non-finite value appeared: the first module whose
    // activations hold one (a forward without dropout, so the RNG stream is untouched), else the
    // trainable tensor nearest the loss (the first one backward reaches) whose gradient holds one.
    m.nonfinite_where = "the loss";
    if (!std::isfinite(m.loss)) {
      lora::SetTraining(s.model.get(), false);
      std::optional<AutocastGuard> guard;
      EnterAutocast(&guard, t.autocast(), *s.model);
      for (const data::Batch& b : batches) {
        if (b.target_tokens == 0) continue;
        const std::optional<std::string> module = s.model->FirstNonFiniteModule(
            ToTensor(b.input_ids, b.batch_size, b.seq_len),
            ToTensor(b.segment_ids.empty() ? b.attention_mask : b.segment_ids, b.batch_size, b.seq_len),
            ToTensor(b.position_ids, b.batch_size, b.seq_len));
        if (module) {
          m.nonfinite_where = "activations of " + *module;
          break;
        }
      }
      lora::SetTraining(s.model.get(), true);
    }
    if (m.nonfinite_where == "the loss") {
      for (auto it = s.trainable.rbegin(); it != s.trainable.rend(); ++it) {
        const at::Tensor& p = it->second;
        if (p.grad().defined() && !at::isfinite(p.grad()).all().item<bool>()) {
          m.nonfinite_where = "the gradient of " + it->first;
          break;
        }
      }
    }
    m.skipped = true;
    ++s.nonfinite_in_row;
    ++s.skipped_total;
    std::fprintf(stderr, "step %lld: non-finite %s, first in %s; step skipped (%lld in a row)\n",
                 static_cast<long long>(s.step + 1), std::isfinite(m.loss) ? "gradient" : "loss",
                 m.nonfinite_where.c_str(), static_cast<long long>(s.nonfinite_in_row));
  } else {
    s.adam->Step(m.lr);
    s.nonfinite_in_row = 0;
  }
  for (at::Tensor& p : s.params) p.mutable_grad() = at::Tensor();
  ++s.step;
  m.step = s.step;
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  int64_t tokens = 0;
  for (const data::Batch& b : batches) {
    for (int64_t v : b.attention_mask) tokens += v != 0;
  }
  m.tokens_per_second = seconds > 0 ? static_cast<double>(tokens) / seconds : 0;
  m.peak_rss_mib = PeakRssMib();
  return m;
}

absl::StatusOr<double> Trainer::Evaluate() {
  State& s = *s_;
  const data::Dataset* data = s.eval ? s.eval.get() : nullptr;
  if (data == nullptr) return absl::FailedPreconditionError("no eval data (data.eval_files)");
  data::LoaderOptions lo;
  lo.shuffle = false;
  data::DataLoader loader(*data, *s.collator, lo);
  const int64_t per_epoch = (data->size() + s.spec.training().micro_batch_size() - 1) / s.spec.training().micro_batch_size();
  const int64_t n = s.spec.eval().max_batches() > 0 ? std::min(per_epoch, s.spec.eval().max_batches()) : per_epoch;
  lora::SetTraining(s.model.get(), false);
  at::NoGradGuard no_grad;
  double sum = 0;
  int64_t count = 0;
  for (int64_t i = 0; i < n; ++i) {
    LLMTRAIN_ASSIGN_OR_RETURN(data::Batch b, loader.Next());
    if (b.target_tokens == 0) continue;
    const kernels::CrossEntropyResult ce = BatchLoss(*s.model, b, s.spec.training().autocast());
    sum += ce.loss_sum.item<double>();
    count += ce.n_tokens;
  }
  lora::SetTraining(s.model.get(), true);
  return count > 0 ? sum / static_cast<double>(count) : 0.0;
}

namespace {

void AppendLine(const std::string& path, const nlohmann::json& line) {
  std::ofstream out(path, std::ios::app);
  out << line.dump() << "\n";
}

std::string StepDir(const std::string& dir, int64_t step) {
  return absl::StrFormat("%s/checkpoints/step-%06d", dir, step);
}

// Complete checkpoints (their folder was renamed into place), oldest first.
std::vector<std::pair<int64_t, std::string>> Checkpoints(const std::string& dir) {
  std::vector<std::pair<int64_t, std::string>> out;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir + "/checkpoints", ec)) {
    const std::string name = entry.path().filename().string();
    int64_t step = 0;
    if (name.size() == 11 && absl::StartsWith(name, "step-") && absl::SimpleAtoi(name.substr(5), &step)) {
      out.emplace_back(step, entry.path().string());
    }
  }
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace

absl::Status Trainer::Run(const RunOptions& options) {
  State& s = *s_;
  const spec::RunSpec& sp = s.spec;
  s.on_batch = options.on_batch;
  LLMTRAIN_RETURN_IF_ERROR(MakeDirectories(s.dir + "/checkpoints"));
  // What the report shows beside the metrics.
  LLMTRAIN_RETURN_IF_ERROR(WriteFileAtomically(s.dir + "/spec.textproto", spec::SpecToText(sp)));
  {
    std::string summary = absl::StrCat("train: ", s.train->Summary(), "\n");
    for (const auto& bad : s.train->bad_records()) absl::StrAppend(&summary, "  bad: ", bad.ToString(), "\n");
    if (s.eval) absl::StrAppend(&summary, "eval: ", s.eval->Summary(), "\n");
    LLMTRAIN_RETURN_IF_ERROR(WriteFileAtomically(s.dir + "/data_summary.txt", summary));
  }
  const std::string metrics_path = s.dir + "/metrics.jsonl";

  const auto save_checkpoint = [&]() -> absl::Status {
    const std::string final_dir = StepDir(s.dir, s.step);
    if (IsDirectory(final_dir)) return absl::OkStatus();
    const std::string tmp = absl::StrCat(final_dir, ".tmp-", getpid());
    std::error_code ec;
    fs::remove_all(tmp, ec);
    LLMTRAIN_RETURN_IF_ERROR(lora::SaveAdapter(*s.model, s.lora_config, tmp + "/adapter"));
    std::vector<std::pair<std::string, at::Tensor>> state;
    const std::vector<at::Tensor> adam_state = s.adam->StateTensors();
    for (size_t i = 0; i < adam_state.size(); ++i) state.emplace_back(absl::StrCat("adam.", i), adam_state[i]);
    state.emplace_back("rng.cpu", at::detail::getDefaultCPUGenerator().get_state());
    LLMTRAIN_RETURN_IF_ERROR(io::SaveSafetensors(tmp + "/optimizer.safetensors", state));
    const data::Sampler::Position pos = s.loader->position();
    const nlohmann::json trainer_state = {
        {"step", s.step}, {"adam_step", s.adam->step()}, {"data_epoch", pos.epoch}, {"data_cursor", pos.cursor},
        {"nonfinite_in_row", s.nonfinite_in_row}, {"skipped_total", s.skipped_total},
        {"total_steps", s.total_steps}, {"versions", {{"llmtrain", "0.1.0"}, {"torch", absl::StrCat(TORCH_VERSION_MAJOR, ".", TORCH_VERSION_MINOR, ".", TORCH_VERSION_PATCH)}}}};
    LLMTRAIN_RETURN_IF_ERROR(WriteFileAtomically(tmp + "/trainer_state.json", trainer_state.dump(2) + "\n"));
    LLMTRAIN_RETURN_IF_ERROR(WriteFileAtomically(tmp + "/spec.textproto", spec::SpecToText(sp)));
    // The folder appears under its final name only when everything in it is written.
    fs::rename(tmp, final_dir, ec);
    if (ec) return absl::InternalError(absl::StrCat(final_dir, ": ", ec.message()));
    const auto all = Checkpoints(s.dir);
    for (size_t i = 0; i + static_cast<size_t>(sp.checkpoint().keep_last()) < all.size(); ++i) {
      // Out of sight first (one rename), then deleted: a kill mid-delete leaves only a .tmp- folder.
      const std::string doomed = absl::StrCat(all[i].second, ".tmp-", getpid(), "-old");
      fs::rename(all[i].second, doomed, ec);
      if (!ec) fs::remove_all(doomed, ec);
    }
    return absl::OkStatus();
  };

  {
    // Checkpoint writes a kill interrupted: never under a final name, never read; remove them.
    std::error_code ec;
    for (const auto& entry : fs::directory_iterator(s.dir + "/checkpoints", ec)) {
      if (absl::StrContains(entry.path().filename().string(), ".tmp-")) fs::remove_all(entry.path(), ec);
    }
  }
  if (options.resume) {
    const auto all = Checkpoints(s.dir);
    if (!all.empty()) {
      const std::string ck = all.back().second;
      LLMTRAIN_ASSIGN_OR_RETURN(std::string text, ReadFileToString(ck + "/trainer_state.json"));
      const nlohmann::json st = nlohmann::json::parse(text, nullptr, false);
      if (!st.is_object()) return absl::DataLossError(absl::StrCat(ck, "/trainer_state.json: not JSON"));
      LLMTRAIN_ASSIGN_OR_RETURN(auto adapter, io::SafetensorsFile::Open(ck + "/adapter/adapter_model.safetensors"));
      at::NoGradGuard no_grad;
      for (auto& [key, p] : s.trainable) {
        const io::TensorInfo* info = adapter->Find(key);
        if (info == nullptr) return absl::DataLossError(absl::StrCat(ck, ": adapter lacks ", key));
        p.copy_(io::TensorView(*adapter, *info));
      }
      LLMTRAIN_ASSIGN_OR_RETURN(auto opt, io::SafetensorsFile::Open(ck + "/optimizer.safetensors"));
      std::vector<at::Tensor> adam_state;
      for (size_t i = 0; i < 3 * s.params.size(); ++i) {
        const io::TensorInfo* info = opt->Find(absl::StrCat("adam.", i));
        if (info == nullptr) return absl::DataLossError(absl::StrCat(ck, ": optimizer state lacks adam.", i));
        adam_state.push_back(io::TensorView(*opt, *info).clone());
      }
      LLMTRAIN_RETURN_IF_ERROR(s.adam->LoadState(adam_state, st["adam_step"].get<int64_t>()));
      if (const io::TensorInfo* rng = opt->Find("rng.cpu")) {
        at::Generator generator = at::detail::getDefaultCPUGenerator();
        generator.set_state(io::TensorView(*opt, *rng).clone());
      }
      s.step = st["step"].get<int64_t>();
      s.nonfinite_in_row = st["nonfinite_in_row"].get<int64_t>();
      s.skipped_total = st["skipped_total"].get<int64_t>();
      s.loader->Seek({st["data_epoch"].get<int64_t>(), st["data_cursor"].get<int64_t>()});
      // metrics.jsonl: keep what the checkpoint had seen, so the file ends as an uninterrupted run's.
      if (auto old = ReadFileToString(metrics_path); old.ok()) {
        std::string kept;
        std::istringstream lines(*old);
        for (std::string line; std::getline(lines, line);) {
          const nlohmann::json j = nlohmann::json::parse(line, nullptr, false);
          if (j.is_object() && j.value("step", int64_t{0}) <= s.step) kept += line + "\n";
        }
        LLMTRAIN_RETURN_IF_ERROR(WriteFileAtomically(metrics_path, kept));
      }
      std::fprintf(stderr, "resumed from %s (step %lld of %lld)\n", ck.c_str(), static_cast<long long>(s.step),
                   static_cast<long long>(s.total_steps));
    }
  } else if (!Checkpoints(s.dir).empty()) {
    return absl::FailedPreconditionError(absl::StrCat(s.dir, " holds checkpoints of an earlier run: pass --resume, "
                                                             "or choose another output.dir"));
  } else {
    std::error_code ec;
    fs::remove(metrics_path, ec);
  }

  std::unique_ptr<TensorBoardWriter> tensorboard;
  if (std::find(sp.output().report_to().begin(), sp.output().report_to().end(), "tensorboard") !=
      sp.output().report_to().end()) {
    LLMTRAIN_ASSIGN_OR_RETURN(tensorboard, TensorBoardWriter::Open(s.dir + "/tensorboard"));
  }
  const auto scalars = [&](const std::vector<std::pair<const char*, double>>& values, int64_t step) -> absl::Status {
    if (!tensorboard) return absl::OkStatus();
    for (const auto& [tag, v] : values) LLMTRAIN_RETURN_IF_ERROR(tensorboard->AddScalar(tag, v, step));
    return absl::OkStatus();
  };
  ProgressOptions po;
  po.label = "train";
  po.total = s.total_steps;
  po.unit = "step";
  if (!options.progress) po.plain_interval_seconds = 1e9;  // first and last lines only
  ProgressReporter progress(po);
  progress.Set(s.step);
  const auto run_start = Clock::now();
  const auto evaluate = [&]() -> absl::Status {
    if (!s.eval) return absl::OkStatus();
    LLMTRAIN_ASSIGN_OR_RETURN(double eval_loss, Evaluate());
    nlohmann::json line = {{"type", "eval"}, {"step", s.step}, {"eval_loss", eval_loss},
                           {"eval_perplexity", std::exp(eval_loss)}};
    nlohmann::json samples = nlohmann::json::array();
    for (const std::string& prompt : sp.eval().sample_prompts()) {
      std::vector<int64_t> ids;
      if (s.chat) {
        tokenizer::Message user;
        user.role = "user";
        user.content = prompt;
        LLMTRAIN_ASSIGN_OR_RETURN(auto encoded, tokenizer::EncodeChat(*s.tok, *s.chat, {user}, true));
        ids.assign(encoded.ids.begin(), encoded.ids.end());
      } else {
        const std::vector<int32_t> e = s.tok->Encode(prompt);
        ids.assign(e.begin(), e.end());
      }
      model::GenerationOptions go;
      go.max_new_tokens = sp.eval().max_new_tokens();
      go.temperature = sp.eval().temperature();
      lora::SetTraining(s.model.get(), false);
      LLMTRAIN_ASSIGN_OR_RETURN(std::vector<int64_t> out, model::Generate(*s.model, ids, go));
      lora::SetTraining(s.model.get(), true);
      const std::vector<int32_t> out32(out.begin(), out.end());
      const std::string text = s.tok->Decode(out32, /*skip_special_tokens=*/true);
      samples.push_back({{"prompt", prompt}, {"output", text}});
      std::fprintf(stderr, "sample at step %lld: %s → %s\n", static_cast<long long>(s.step), prompt.c_str(), text.c_str());
    }
    line["samples"] = samples;
    AppendLine(metrics_path, line);
    LLMTRAIN_RETURN_IF_ERROR(scalars({{"eval/loss", eval_loss}, {"eval/perplexity", std::exp(eval_loss)}}, s.step));
    std::fprintf(stderr, "eval at step %lld: loss %.4f, perplexity %.2f\n", static_cast<long long>(s.step), eval_loss,
                 std::exp(eval_loss));
    return absl::OkStatus();
  };

  if (s.step == 0) LLMTRAIN_RETURN_IF_ERROR(evaluate());
  while (s.step < s.total_steps) {
    auto m = TrainStep();
    if (!m.ok()) return m.status();
    m->elapsed_seconds = std::chrono::duration<double>(Clock::now() - run_start).count();
    // Skipped steps are always logged, with where the non-finite value appeared.
    if (m->step % sp.training().log_every_steps() == 0 || m->step == 1 || m->step == s.total_steps || m->skipped) {
      nlohmann::json line = {{"type", "train"}, {"step", m->step}, {"loss", m->loss}, {"lr", m->lr},
                             {"grad_norm", m->grad_norm}, {"target_tokens", m->target_tokens},
                             {"tokens_per_second", m->tokens_per_second}, {"peak_rss_mib", m->peak_rss_mib},
                             {"skipped", m->skipped}};
      if (m->skipped) line["nonfinite_where"] = m->nonfinite_where;
      AppendLine(metrics_path, line);
      LLMTRAIN_RETURN_IF_ERROR(scalars({{"train/loss", m->loss}, {"train/lr", m->lr}, {"train/grad_norm", m->grad_norm},
                                        {"train/tokens_per_second", m->tokens_per_second}}, m->step));
    }
    progress.Set(m->step, absl::StrFormat("loss %.4f, %.0f tok/s", m->loss, m->tokens_per_second));
    if (options.on_step) options.on_step(*m);
    if (s.nonfinite_in_row >= sp.training().max_nonfinite_steps()) {
      LLMTRAIN_RETURN_IF_ERROR(save_checkpoint());
      return absl::AbortedError(absl::StrCat(s.nonfinite_in_row, " non-finite steps in a row (training.max_nonfinite_steps); "
                                             "checkpoint at step ", s.step));
    }
    const bool stop = options.stop != nullptr && options.stop->load();
    if ((sp.checkpoint().every_steps() > 0 && s.step % sp.checkpoint().every_steps() == 0) || stop) {
      LLMTRAIN_RETURN_IF_ERROR(save_checkpoint());
    }
    if (stop) {
      progress.Finish();
      std::fprintf(stderr, "stopped at step %lld with a checkpoint; continue with --resume\n", static_cast<long long>(s.step));
      return absl::OkStatus();
    }
    if (sp.eval().every_steps() > 0 && s.step % sp.eval().every_steps() == 0 && s.step < s.total_steps) {
      LLMTRAIN_RETURN_IF_ERROR(evaluate());
    }
  }
  progress.Finish();
  LLMTRAIN_RETURN_IF_ERROR(evaluate());
  LLMTRAIN_RETURN_IF_ERROR(save_checkpoint());
  LLMTRAIN_RETURN_IF_ERROR(lora::SaveAdapter(*s.model, s.lora_config, s.dir + "/adapter"));
  LLMTRAIN_ASSIGN_OR_RETURN(std::string report, WriteRunReport(s.dir));
  std::fprintf(stderr, "adapter: %s/adapter (%lld steps, %lld skipped); report: %s\n", s.dir.c_str(),
               static_cast<long long>(s.step), static_cast<long long>(s.skipped_total), report.c_str());
  return absl::OkStatus();
}

}  // namespace llmtrain::train
