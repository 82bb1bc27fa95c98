// train/: AdamW, the LR schedules and gradient clipping against torch.optim.AdamW,
// transformers' get_*_schedule_with_warmup and torch.nn.utils.clip_grad_norm_ (train_ref.py).
#include <ATen/ATen.h>

#include <catch2/catch.hpp>
#include <atomic>
#include <cstdio>

#include "absl/strings/str_cat.h"
#include "llmtrain/train/optimizer.h"
#include "llmtrain/train/trainer.h"
#include "llmtrain/lora/lora.h"
#include "llmtrain/quant/quantized_linear.h"
#include "llmtrain/model/decoder.h"
#include "llmtrain/core/atomic_file.h"
#include "llmtrain/spec/build.h"
#include "llmtrain/spec/run_spec.h"
#include "llmtrain/spec/memory_plan.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "absl/strings/str_join.h"
#include "absl/strings/match.h"
#include "llmtrain/train/checkpoint.h"
#include "llmtrain/io/safetensors.h"
#include "llmtrain/io/tensors.h"
#include <fstream>
#include <map>
#include <set>
#include <limits>
#include <ATen/core/grad_mode.h>
#include <chrono>
#include <filesystem>
#include <random>
#include <thread>
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>
#include "absl/strings/str_format.h"
#include "testing/json_util.h"
#include "testing/reference.h"
#include "testing/safetensors_util.h"

namespace llmtrain {
namespace {

TEST_CASE("train: AdamW, cosine warmup and clipping equal PyTorch + transformers bit for bit", "[train][reference]") {
  if (!testing::ReferenceStackAvailable()) return;
  const std::string dir = testing::TempDir("train_ref");
  const auto run = testing::RunReference("train_ref.py", {dir + "/ref.safetensors"});
  REQUIRE(run.exit_code == 0);
  const nlohmann::json info = testing::LastJsonLine(run.out);
  const int64_t steps = info["steps"], n = info["params"], warmup = info["warmup"];
  auto ref = testing::LoadAll(dir + "/ref.safetensors");

  // Schedules: every step's factor equals LambdaLR's lr with base 1.
  for (const char* kind : {"linear", "cosine", "constant"}) {
    INFO("schedule " << kind);
    const train::LrSchedule schedule(*train::ParseScheduleKind(kind), warmup, steps);
    const at::Tensor lrs = ref[absl::StrCat("lr.", kind)];
    for (int64_t s = 0; s < lrs.numel(); ++s) CHECK(schedule.Factor(s) == lrs[s].item<double>());
  }

  std::vector<at::Tensor> params;
  for (int64_t i = 0; i < n; ++i) params.push_back(ref[absl::StrCat("p", i)].clone().requires_grad_(true));
  train::AdamW adam(params, {.lr = 1e-2, .beta1 = 0.9, .beta2 = 0.95, .eps = 1e-6, .weight_decay = 0.1});
  const train::LrSchedule schedule(train::ScheduleKind::kCosine, warmup, steps);
  size_t equal_params = 0, equal_norms = 0;
  for (int64_t s = 0; s < steps; ++s) {
    for (int64_t i = 0; i < n; ++i) params[i].mutable_grad() = ref[absl::StrCat("g", i, ".", s)].clone();
    const double norm = train::ClipGradNorm(params, 1.0);
    equal_norms += norm == ref[absl::StrCat("norm.", s)].item<double>();
    adam.Step(1e-2 * schedule.Factor(s));
    for (int64_t i = 0; i < n; ++i) {
      INFO("step " << s << " param " << i);
      const bool equal = at::equal(params[i].detach(), ref[absl::StrCat("p", i, ".", s)]);
      CHECK(equal);
      equal_params += equal;
    }
  }
  CHECK(equal_norms == static_cast<size_t>(steps));
  std::printf("train: %lld AdamW steps (cosine warmup, clipping at step 4): %zu of %lld parameter tensors and "
              "%zu of %lld gradient norms identical to torch\n", static_cast<long long>(steps), equal_params,
              static_cast<long long>(steps * n), equal_norms, static_cast<long long>(steps));

  // State round trip: a restored optimizer continues identically.
  std::vector<at::Tensor> copy;
  for (const at::Tensor& p : params) copy.push_back(p.detach().clone().requires_grad_(true));
  train::AdamW restored(copy, {.lr = 1e-2, .beta1 = 0.9, .beta2 = 0.95, .eps = 1e-6, .weight_decay = 0.1});
  std::vector<at::Tensor> state;
  for (const at::Tensor& t : adam.StateTensors()) state.push_back(t.clone());
  REQUIRE(restored.LoadState(state, adam.step()).ok());
  for (size_t i = 0; i < params.size(); ++i) {
    params[i].mutable_grad() = at::ones_like(params[i]);
    copy[i].mutable_grad() = at::ones_like(copy[i]);
  }
  adam.Step(1e-3);
  restored.Step(1e-3);
  for (size_t i = 0; i < params.size(); ++i) CHECK(at::equal(params[i].detach(), copy[i].detach()));
}

TEST_CASE("train: bf16 parameters keep float32 moments and a float32 master copy", "[train]") {
  at::Tensor p = at::randn({64}).to(at::kBFloat16).requires_grad_(true);
  at::Tensor ref = p.detach().to(at::kFloat).requires_grad_(true);
  train::AdamW a({p}, {.lr = 1e-3, .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8, .weight_decay = 0.0});
  train::AdamW b({ref}, {.lr = 1e-3, .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8, .weight_decay = 0.0});
  for (int s = 0; s < 20; ++s) {
    const at::Tensor g = at::randn({64});
    p.mutable_grad() = g.to(at::kBFloat16);
    ref.mutable_grad() = g.to(at::kBFloat16).to(at::kFloat);
    a.Step(1e-3);
    b.Step(1e-3);
  }
  // 20 updates of 1e-3 each are below one bf16 ulp of most values: only a master copy keeps them.
  CHECK(at::equal(p.detach(), ref.detach().to(at::kBFloat16)));
  CHECK(a.StateTensors()[0].scalar_type() == at::kFloat);
  CHECK(a.StateTensors()[2].scalar_type() == at::kFloat);
}

TEST_CASE("train: AdamW with its state sharded in 3 slices updates every element as the whole optimizer does, within a few ulps",
          "[train]") {
  // float32 and bf16 parameters of odd sizes; slices that cut through parameters, one empty.
  const auto make = [](uint64_t seed) {
    at::manual_seed(seed);
    return std::vector<at::Tensor>{at::randn({7, 5}).requires_grad_(true),
                                   at::randn({13}).to(at::kBFloat16).requires_grad_(true),
                                   at::randn({3, 11}).requires_grad_(true)};
  };
  const train::AdamWOptions options{.lr = 1e-2, .beta1 = 0.9, .beta2 = 0.95, .eps = 1e-6, .weight_decay = 0.1};
  std::vector<at::Tensor> whole_params = make(3);
  train::AdamW whole(whole_params, options);
  const int64_t total = whole.numel();
  REQUIRE(total == 35 + 13 + 33);
  const std::vector<std::pair<int64_t, int64_t>> slices = {{0, 40}, {40, 40}, {40, total}};
  std::vector<std::vector<at::Tensor>> shard_params;
  std::vector<std::unique_ptr<train::AdamW>> shards;
  for (const auto& [begin, end] : slices) {
    shard_params.push_back(make(3));
    shards.push_back(std::make_unique<train::AdamW>(shard_params.back(), options));
    REQUIRE(shards.back()->ShardState(begin, end).ok());
  }
  CHECK_FALSE(shards[0]->ShardState(0, total + 1).ok());
  for (int step = 0; step < 6; ++step) {
    std::vector<at::Tensor> grads;
    for (const at::Tensor& p : whole_params) grads.push_back(at::randn(p.sizes()).to(p.scalar_type()));
    for (size_t i = 0; i < grads.size(); ++i) whole_params[i].mutable_grad() = grads[i].clone();
    whole.Step(1e-2);
    // The flattened float32 gradients, each shard stepping its slice; the values written back.
    std::vector<at::Tensor> flat_parts;
    for (const at::Tensor& g : grads) flat_parts.push_back(g.to(at::kFloat).reshape({-1}));
    const at::Tensor flat = at::cat(flat_parts);
    std::vector<at::Tensor> values;
    for (size_t k = 0; k < shards.size(); ++k) {
      values.push_back(shards[k]->StepShard(1e-2, flat.slice(0, slices[k].first, slices[k].second).contiguous()).clone());
    }
    const at::Tensor all = at::cat(values);
    at::NoGradGuard no_grad;
    for (auto& params : shard_params) {
      int64_t offset = 0;
      for (at::Tensor& p : params) {
        p.copy_(all.narrow(0, offset, p.numel()).view(p.sizes()));
        offset += p.numel();
      }
    }
  }
  // Each element takes the same operations in the same order; ATen's vectorized loops and their
  // scalar tails may round a fused multiply-add differently, and an element falls in the body
  // or the tail by its place in the tensor, so the bound is a few float32 ulps.
  const std::vector<at::Tensor> state_now = whole.StateTensors();
  const auto flat_of = [&](int k) {
    std::vector<at::Tensor> parts;
    for (size_t i = 0; i < whole_params.size(); ++i) {
      const at::Tensor& t = k == 2 && whole_params[i].scalar_type() == at::kFloat ? whole_params[i] : state_now[3 * i + k];
      parts.push_back(t.detach().to(at::kFloat).reshape({-1}));
    }
    return at::cat(parts);
  };
  for (int k = 0; k < 3; ++k) {
    std::vector<at::Tensor> slices_k;
    for (const auto& shard : shards) slices_k.push_back(shard->ShardStateTensors()[k]);
    const at::Tensor got = at::cat(slices_k), want = flat_of(k);
    const double rel = ((got - want).abs().max() / want.abs().max()).item<double>();
    INFO("state tensor " << k << " (exp_avg, exp_avg_sq, values): rel diff " << rel);
    CHECK(rel <= 1e-6);
  }
  for (auto& params : shard_params) {
    const double rel = ((params[0] - whole_params[0]).abs().max() / whole_params[0].abs().max()).item<double>();
    CHECK(rel <= 1e-6);
  }
  // The whole state, loaded into a sharded optimizer, gives the slice of the whole one's state.
  std::vector<at::Tensor> state = whole.StateTensors();
  std::vector<at::Tensor> fresh = make(4);
  {
    at::NoGradGuard no_grad;
    for (size_t i = 0; i < fresh.size(); ++i) fresh[i].copy_(whole_params[i]);
  }
  train::AdamW loaded(fresh, options);
  REQUIRE(loaded.ShardState(30, 60).ok());
  REQUIRE(loaded.LoadState(state, whole.step()).ok());
  const std::vector<at::Tensor> slice = loaded.ShardStateTensors();
  const at::Tensor exp_avg = at::cat({state[0].reshape({-1}), state[3].reshape({-1}), state[6].reshape({-1})});
  CHECK(at::equal(slice[0], exp_avg.slice(0, 30, 60)));
  // Values: float32 parameters as they are, the bf16 one's float32 master copy.
  const at::Tensor values = at::cat({fresh[0].detach().reshape({-1}), state[5].reshape({-1}),
                                     fresh[2].detach().reshape({-1})});
  CHECK(at::equal(slice[2], values.slice(0, 30, 60)));
  CHECK(loaded.step() == 6);
}

}  // namespace
}  // namespace llmtrain

namespace llmtrain {
namespace {

std::string RealModel() { return std::string(LLMTRAIN_SOURCE_DIR) + "/.venv/models/gemma-3-270m-q4_k_m.gguf"; }

// A short QLoRA run on the real 270M: tiny sequences so each step takes a fraction of a second.
spec::RunSpec SmallRun(const std::string& dir, int64_t micro, int64_t accum, int64_t steps) {
  REQUIRE(MakeDirectories(dir).ok());
  const std::string data = dir + "/train.jsonl";
  if (!IsRegularFile(data)) {
    std::string text;
    for (int i = 0; i < 24; ++i) {
      text += absl::StrCat("{\"instruction\": \"What is ", i, " plus ", i + 1, "?\", \"context\": \"\", \"response\": \"",
                           2 * i + 1, ".\", \"category\": \"open_qa\"}\n");
    }
    REQUIRE(WriteFileAtomically(data, text).ok());
  }
  auto run = spec::ParseRunSpec("test", absl::StrCat(
      "model { path: \"", RealModel(), "\" load_in_4bit: true }\n",
      "lora { r: 4 alpha: 8 dropout: 0.1 target_modules: \"q_proj\" target_modules: \"v_proj\" }\n",
      "data { train_files: \"", data, "\" max_length: 40 }\n",
      "training { max_steps: ", steps, " micro_batch_size: ", micro, " gradient_accumulation_steps: ", accum,
      " learning_rate: 0.001 log_every_steps: 1 warmup_steps: 2 }\n",
      "checkpoint { every_steps: 2 keep_last: 2 }\n",
      "output { dir: \"", dir, "/run\" report_to: \"jsonl\" report_to: \"tensorboard\" }\n"));
  REQUIRE(run.ok());
  spec::FillDefaults(&*run);
  return *run;
}

// Starts `cli train --spec spec` as a child process with its output discarded; returns its pid.
pid_t SpawnTrain(const std::string& cli, const std::string& spec) {
  const pid_t pid = fork();
  if (pid == 0) {
    const int null = open("/dev/null", O_WRONLY);
    dup2(null, 1);
    dup2(null, 2);
    execl(cli.c_str(), cli.c_str(), "train", "--spec", spec.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  return pid;
}

std::string Bytes(const std::string& path) {
  auto text = ReadFileToString(path);
  REQUIRE(text.ok());
  return *text;
}

// Σ bytes of the distinct storages among `tensors` (views and repeats counted once).
int64_t DistinctBytes(const std::vector<at::Tensor>& tensors) {
  std::set<const void*> seen;
  int64_t bytes = 0;
  for (const at::Tensor& t : tensors) {
    if (t.defined() && seen.insert(t.storage().data()).second) bytes += static_cast<int64_t>(t.storage().nbytes());
  }
  return bytes;
}

int64_t PlanItem(const spec::MemoryPlan& plan, const std::string& prefix) {
  for (const spec::MemoryItem& item : plan.resident) {
    if (absl::StartsWith(item.name, prefix)) return item.bytes;
  }
  FAIL("no plan item " << prefix);
  return -1;
}

TEST_CASE("train: the memory plan counts the tensors the trainer builds, byte for byte", "[train][real]") {
  const std::string dir = testing::TempDir("train_plan");
  // The README job's shape of adapter, rank patterns, DoRA, a bf16 model and adapter, FP4 without
  // double quantization, and a dense base.
  const std::vector<std::vector<std::string>> variants = {
      {"lora.target_modules=all-linear", "lora.r=16"},
      {"lora.target_modules=all-linear", "lora.rank_pattern.down_proj=2", "lora.layers_to_transform=0,3"},
      {"lora.use_dora=true", "model.dtype=bf16", "lora.dtype=bf16"},
      {"model.quant_type=fp4", "model.double_quant=false", "model.quant_blocksize=128"},
      {"model.load_in_4bit=false", "lora.target_modules=o_proj", "lora.modules_to_save=model.norm"},
  };
  for (size_t v = 0; v < variants.size(); ++v) {
    INFO("variant " << absl::StrJoin(variants[v], " "));
    spec::RunSpec run = SmallRun(absl::StrCat(dir, "/", v), 1, 1, 1);
    run.mutable_lora()->clear_target_modules();
    for (const std::string& set : variants[v]) REQUIRE(spec::ApplyOverride(&run, set).ok());
    spec::FillDefaults(&run);
    auto plan = spec::PlanMemory(run);
    INFO(plan.status().ToString());
    REQUIRE(plan.ok());
    auto parts = spec::BuildTrainerComponents(run);
    INFO(parts.status().ToString());
    REQUIRE(parts.ok());
    const model::Decoder& model = *parts->model;
    // Frozen layer tensors: the packed weights, quant state and norms of every layer.
    int64_t frozen = 0, trainable = 0;
    for (int64_t i = 0; i < model.num_layers(); ++i) frozen += DistinctBytes(model.LayerFrozenTensors(i));
    for (const auto& [key, t] : lora::TrainableParameters(model, parts->adapter)) trainable += t.numel();
    const bool four_bit = run.model().load_in_4bit();
    const int64_t planned_frozen = (four_bit ? PlanItem(*plan, "base projections, 4-bit") + PlanItem(*plan, "quant state")
                                             : PlanItem(*plan, "base projections")) +
                                   PlanItem(*plan, "norms and biases");
    const at::Tensor& final_norm = [&]() -> const at::Tensor& {
      for (const auto& [name, t] : model.named_parameters()) {
        if (name == "model.norm.weight") return t;
      }
      FAIL("no final norm");
      return model.lm_head();
    }();
    CHECK(planned_frozen == frozen + static_cast<int64_t>(final_norm.nbytes()));
    CHECK(PlanItem(*plan, "embedding") == static_cast<int64_t>(model.lm_head().nbytes()));
    CHECK(plan->trainable_parameters == trainable);
    // Weights, gradients and AdamW state of the adapter.
    const int64_t lp = run.lora().dtype() == spec::LoraSpec::bf16 ? 2 : 4;
    if (run.lora().modules_to_save().empty()) {
      CHECK(PlanItem(*plan, "adapter") == trainable * (2 * lp + 8 + (lp == 4 ? 0 : 4)));
    }
  }
}

TEST_CASE("train: a run over distributed.memory_limit is refused before the model loads, with its plan", "[train][real]") {
  const std::string dir = testing::TempDir("train_memory_limit");
  spec::RunSpec run = SmallRun(dir, 1, 1, 1);
  REQUIRE(spec::ApplyOverride(&run, "distributed.memory_limit=900MiB").ok());
  auto parts = spec::BuildTrainerComponents(run);
  REQUIRE_FALSE(parts.ok());
  INFO(parts.status().ToString());
  CHECK(parts.status().code() == absl::StatusCode::kResourceExhausted);
  const std::string message(parts.status().message());
  CHECK_THAT(message, Catch::Contains("distributed.memory_limit allows 900.0 MiB"));
  CHECK_THAT(message, Catch::Contains("embedding = tied LM head (f32)"));
  CHECK_THAT(message, Catch::Contains("peak per process"));
  // "off" skips the check; a limit above the plan lets it through.
  REQUIRE(spec::ApplyOverride(&run, "distributed.memory_limit=off").ok());
  CHECK(spec::BuildTrainerComponents(run).ok());
  REQUIRE(spec::ApplyOverride(&run, "distributed.memory_limit=64GiB").ok());
  CHECK(spec::BuildTrainerComponents(run).ok());
}

TEST_CASE("train: cpu_offload steps the optimizer state from the host: the same run as without it",
          "[train][real]") {
  const std::string dir = testing::TempDir("train_offload");
  // One run after the other: dropout draws from the process's generator, which each build seeds.
  const auto train = [&](const std::string& name, bool offload, double max_norm, int steps,
                         std::vector<train::StepMetrics>* metrics) {
    spec::RunSpec run = SmallRun(dir + "/" + name, 2, 2, 4);
    REQUIRE(spec::ApplyOverride(&run, absl::StrCat("training.max_grad_norm=", max_norm)).ok());
    REQUIRE(spec::ApplyOverride(&run, absl::StrCat("distributed.cpu_offload=", offload ? "true" : "false")).ok());
    auto trainer = spec::BuildTrainer(run);
    REQUIRE(trainer.ok());
    for (int step = 0; step < steps; ++step) {
      auto m = (*trainer)->TrainStep();
      REQUIRE(m.ok());
      metrics->push_back(*m);
    }
    return std::move(*trainer);
  };
  const auto lora_diff = [](const train::Trainer& a, const train::Trainer& b) {
    double worst = 0;
    const auto& pa = a.TrainableParameters();
    const auto& pb = b.TrainableParameters();
    REQUIRE(pa.size() == pb.size());
    for (size_t i = 0; i < pa.size(); ++i) {
      const double scale = std::max(1e-12, pa[i].second.abs().max().item<double>());
      worst = std::max(worst, (pa[i].second - pb[i].second).abs().max().item<double>() / scale);
    }
    return worst;
  };
  // Without clipping the arithmetic is the same, element by element: the same adapter, bit for bit.
  std::vector<train::StepMetrics> ma, mb;
  auto a = train("plain", false, 0, 4, &ma);
  auto b = train("offload", true, 0, 4, &mb);
  for (size_t step = 0; step < ma.size(); ++step) {
    CHECK(ma[step].loss == mb[step].loss);
    // The reported norm: torch's float32 norm of per-tensor norms against float64 over the slices.
    CHECK(std::abs(ma[step].grad_norm - mb[step].grad_norm) <= 1e-6 * ma[step].grad_norm);
  }
  const double unclipped = lora_diff(*a, *b);
  CHECK(unclipped == 0);
  // Clipping multiplies by max_norm / (norm + 1e-6): the two norms round differently in the last
  // float32 place, so one clipped step's adapter differs by float32 rounding. (Later steps would
  // let Adam amplify it where a moment nearly cancels, as dist_test's parity comment explains.)
  std::vector<train::StepMetrics> mc, md;
  auto c = train("plain_clipped", false, 0.05, 2, &mc);
  auto d = train("offload_clipped", true, 0.05, 2, &md);
  CHECK(mc[1].grad_norm > 0.05);
  const double clipped = lora_diff(*c, *d);
  std::printf("train: cpu_offload vs none, 4 unclipped steps: LoRA rel diff %.2e; 2 steps clipped (the second the "
              "first with a learning rate above 0): %.2e\n", unclipped, clipped);
  CHECK(clipped <= 1e-6);
}

TEST_CASE("train: a checkpoint written with cpu_offload resumes without it, and the other way round", "[train][real]") {
  const std::string dir = testing::TempDir("train_offload_resume");
  const auto spec_of = [&](const std::string& name, bool offload) {
    spec::RunSpec run = SmallRun(dir + "/" + name, 2, 2, 6);
    REQUIRE(spec::ApplyOverride(&run, absl::StrCat("distributed.cpu_offload=", offload ? "true" : "false")).ok());
    // Unclipped: each step's arithmetic is then the same with and without offload (test above).
    REQUIRE(spec::ApplyOverride(&run, "training.max_grad_norm=0").ok());
    return run;
  };
  const auto run = [&](const spec::RunSpec& spec, bool resume, int stop_at) {
    auto trainer = spec::BuildTrainer(spec);
    REQUIRE(trainer.ok());
    std::atomic<bool> stop{false};
    train::RunOptions options;
    options.progress = false;
    options.resume = resume;
    options.stop = &stop;
    options.on_step = [&](const train::StepMetrics& m) {
      if (m.step == stop_at) stop.store(true);
    };
    REQUIRE((*trainer)->Run(options).ok());
  };
  const auto adapter = [&](const std::string& name) {
    auto file = io::SafetensorsFile::Open(dir + "/" + name + "/run/adapter/adapter_model.safetensors");
    REQUIRE(file.ok());
    std::vector<at::Tensor> out;
    for (const io::TensorInfo& info : (*file)->tensors()) out.push_back(io::TensorView(**file, info).clone());
    return out;
  };
  run(spec_of("whole", false), false, 0);
  for (const bool first_offload : {true, false}) {
    const std::string name = first_offload ? "offload_then_plain" : "plain_then_offload";
    run(spec_of(name, first_offload), false, 3);
    REQUIRE(IsDirectory(dir + "/" + name + "/run/checkpoints/step-000003"));
    run(spec_of(name, !first_offload), true, 0);
    const std::vector<at::Tensor> a = adapter("whole"), b = adapter(name);
    REQUIRE(a.size() == b.size());
    double worst = 0;
    for (size_t i = 0; i < a.size(); ++i) {
      const double scale = std::max(1e-12, a[i].abs().max().item<double>());
      worst = std::max(worst, (a[i] - b[i]).abs().max().item<double>() / scale);
    }
    std::printf("train: %s, resumed at step 3: LoRA rel diff %.2e from the uninterrupted run\n", name.c_str(), worst);
    CHECK(worst == 0);
  }
}

TEST_CASE("train: gradient accumulation 4 × 1 equals one batch of 4", "[train][real]") {
  const std::string dir = testing::TempDir("train_accum");
  auto one = spec::BuildTrainer(SmallRun(dir + "/a", 4, 1, 2));
  auto four = spec::BuildTrainer(SmallRun(dir + "/b", 1, 4, 2));
  REQUIRE(one.ok());
  REQUIRE(four.ok());
  for (int step = 0; step < 2; ++step) {
    auto a = (*one)->TrainStep();
    auto b = (*four)->TrainStep();
    REQUIRE(a.ok());
    REQUIRE(b.ok());
    CHECK(a->target_tokens == b->target_tokens);
    const double rel = std::abs(a->loss - b->loss) / std::abs(a->loss);
    std::printf("train: step %d: loss %.7f (1 × 4) vs %.7f (4 × 1 accumulated), rel diff %.2e; %lld target tokens\n",
                step + 1, a->loss, b->loss, rel, static_cast<long long>(a->target_tokens));
    CHECK(rel <= 1e-5);
  }
}

TEST_CASE("train: activation checkpointing replays the forward's dropout masks: the same adapter, byte for byte",
          "[train][real]") {
  // LoRA dropout 0.1: the recompute in backward must draw the masks the forward drew, or the
  // gradients would belong to another loss (torch.utils.checkpoint's preserve_rng_state).
  const std::string dir = testing::TempDir("train_ckpt_dropout");
  std::vector<std::string> adapters;
  for (const bool checkpointing : {false, true}) {
    spec::RunSpec run = SmallRun(dir + (checkpointing ? "/on" : "/off"), 2, 2, 2);
    run.mutable_training()->set_activation_checkpointing(checkpointing);
    auto trainer = spec::BuildTrainer(run);
    REQUIRE(trainer.ok());
    train::RunOptions options;
    options.progress = false;
    REQUIRE((*trainer)->Run(options).ok());
    adapters.push_back(Bytes(dir + (checkpointing ? "/on" : "/off") + "/run/adapter/adapter_model.safetensors"));
  }
  CHECK(adapters[0] == adapters[1]);
}

TEST_CASE("train: a run stopped and resumed ends with the uninterrupted run's adapter, byte for byte", "[train][real]") {
  const std::string dir = testing::TempDir("train_resume");
  {
    auto whole = spec::BuildTrainer(SmallRun(dir + "/whole", 2, 2, 6));
    REQUIRE(whole.ok());
    train::RunOptions options;
    options.progress = false;
    REQUIRE((*whole)->Run(options).ok());
  }
  std::atomic<bool> stop{false};
  {
    auto first = spec::BuildTrainer(SmallRun(dir + "/split", 2, 2, 6));
    REQUIRE(first.ok());
    train::RunOptions options;
    options.progress = false;
    options.stop = &stop;
    options.on_step = [&](const train::StepMetrics& m) {
      if (m.step == 3) stop.store(true);
    };
    REQUIRE((*first)->Run(options).ok());
  }
  CHECK(IsDirectory(dir + "/split/run/checkpoints/step-000003"));
  CHECK_FALSE(IsDirectory(dir + "/split/run/adapter"));
  {
    auto again = spec::BuildTrainer(SmallRun(dir + "/split", 2, 2, 6));
    REQUIRE(again.ok());
    train::RunOptions options;
    options.progress = false;
    options.resume = true;
    REQUIRE((*again)->Run(options).ok());
  }
  const std::string a = Bytes(dir + "/whole/run/adapter/adapter_model.safetensors");
  const std::string b = Bytes(dir + "/split/run/adapter/adapter_model.safetensors");
  CHECK(a == b);
  // The losses logged are the same too (timings and memory differ).
  const auto losses = [&](const std::string& path) {
    std::vector<std::string> out;
    for (const auto& line : absl::StrSplit(Bytes(path), '\n')) {
      const nlohmann::json j = nlohmann::json::parse(line, nullptr, false);
      if (j.is_object() && j.contains("loss")) out.push_back(absl::StrCat(j["step"].get<int64_t>(), ":", j["loss"].dump()));
    }
    return out;
  };
  const auto la = losses(dir + "/whole/run/metrics.jsonl");
  const auto lb = losses(dir + "/split/run/metrics.jsonl");
  CHECK(la.size() == 6);
  CHECK(la == lb);
  std::printf("train: stopped at step 3 and resumed: adapter %zu bytes, identical: %s; 6 logged losses identical: %s\n",
              a.size(), a == b ? "yes" : "no", la == lb ? "yes" : "no");
  // TensorBoard reads the event files: the uninterrupted run's 6 losses, as logged.
  if (testing::ReferenceStackAvailable()) {
    const auto tb = testing::RunReference("train_ref.py", {"tb", dir + "/whole/run/tensorboard"});
    REQUIRE(tb.exit_code == 0);
    const nlohmann::json scalars = testing::LastJsonLine(tb.out);
    REQUIRE(scalars.contains("train/loss"));
    REQUIRE(scalars["train/loss"].size() == 6);
    size_t same = 0;
    for (const auto& point : scalars["train/loss"]) {
      const std::string want = la[point[0].get<int64_t>() - 1];
      const double logged = std::stod(want.substr(want.find(':') + 1));
      same += static_cast<float>(logged) == point[1].get<float>();
    }
    CHECK(same == 6);
    CHECK(scalars.contains("train/lr"));
    std::printf("train: TensorBoard's EventAccumulator reads %zu train/loss points equal to metrics.jsonl\n", same);
  }
  // The report: one page with the plots, the spec and the data summary; text is escaped.
  const std::string html = Bytes(dir + "/whole/run/report.html");
  CHECK(html.find("<svg") != std::string::npos);
  CHECK(html.find("train loss") != std::string::npos);
  CHECK(html.find("micro_batch_size: 2") != std::string::npos);
  CHECK(html.find("24 records: 24 used, 0 bad") != std::string::npos);
  CHECK(html.find("<script") == std::string::npos);
  // keep_last 2: only the two newest checkpoints remain.
  CHECK_FALSE(IsDirectory(dir + "/whole/run/checkpoints/step-000002"));
  CHECK(IsDirectory(dir + "/whole/run/checkpoints/step-000006"));
}


// The README job's spec (examples/specs/gemma3_270m_cpu.textproto: QLoRA r=16 on all-linear of
// the real 270M) for 2 steps on small data: its adapter loads in PEFT and `llmtrain merge` gives a
// folder transformers loads, each with our logits.
TEST_CASE("train: the README job's adapter loads in PEFT and its merge in transformers", "[train][real][reference]") {
  if (!testing::ReferenceStackAvailable()) return;
  const std::string dir = testing::TempDir("train_readme");
  const spec::RunSpec small = SmallRun(dir, 2, 2, 2);  // writes the Dolly records
  auto run = spec::LoadRunSpec(std::string(LLMTRAIN_SOURCE_DIR) + "/examples/specs/gemma3_270m_cpu.textproto",
                               {"model.path=" + RealModel(), "data.train_files=" + small.data().train_files(0),
                                "data.eval_files=" + small.data().train_files(0), "training.max_steps=2",
                                "training.warmup_steps=1", "eval.max_batches=1", "eval.max_new_tokens=4",
                                "output.dir=" + dir + "/run"});
  REQUIRE(run.ok());
  {
    auto trainer = spec::BuildTrainer(*run);
    REQUIRE(trainer.ok());
    train::RunOptions options;
    options.progress = false;
    REQUIRE((*trainer)->Run(options).ok());
  }
  const std::string adapter = dir + "/run/adapter";
  const std::string cli = testing::CliPath();
  const auto q = testing::ShellQuote;
  const auto merge = testing::RunCommand(absl::StrCat(cli, " merge --model ", q(RealModel()), " --load-in-4bit --adapter ",
                                                      q(adapter), " --output ", q(dir + "/merged"), " --dtype f32 2>&1"));
  INFO(merge.out);
  REQUIRE(merge.exit_code == 0);
  const auto ref = testing::RunReference("train_ref.py", {"peft", RealModel(), adapter, dir + "/merged",
                                                          dir + "/ref.safetensors"});
  REQUIRE(ref.exit_code == 0);
  const nlohmann::json info = testing::LastJsonLine(ref.out);
  auto logits = testing::LoadAll(dir + "/ref.safetensors");
  const auto rel = [](const at::Tensor& a, const at::Tensor& b) {
    return (a.to(at::kDouble) - b.to(at::kDouble)).abs().max().item<double>() / b.abs().max().item<double>();
  };
  // Ours with the adapter on the dense GGUF weights (what PEFT sees), and on the NF4 base (what
  // the merge folded in).
  double peft_err = 0, merged_err = 0;
  for (const bool four_bit : {false, true}) {
    model::DecoderOptions options;
    if (four_bit) {
      quant::Quant4Options q4;  // NF4, blocks of 64, double quantization: the README job's base
      q4.blocksize = 64;
      q4.double_quant = true;
      options.linear_factory = quant::QuantizedLinearFactory(q4);
    }
    auto model = model::Decoder::Load(RealModel(), options);
    REQUIRE(model.ok());
    REQUIRE(lora::LoadAdapter(model->get(), adapter).ok());
    at::NoGradGuard no_grad;
    const at::Tensor ours = (*model)->Forward(logits["input_ids"]);
    (four_bit ? merged_err : peft_err) = rel(ours, logits[four_bit ? "merged_logits" : "peft_logits"]);
  }
  // float32 on both sides over the same weights: only the summation order differs.
  CHECK(info["lora_params"].get<int64_t>() == 3796992);
  CHECK(peft_err <= 1e-4);
  CHECK(merged_err <= 1e-4);
  std::printf("train: the README job's adapter in PeftModel.from_pretrained: %lld LoRA parameters, logits rel err "
              "%.2e; `llmtrain merge --load-in-4bit` folder in %s: rel err %.2e\n",
              static_cast<long long>(info["lora_params"].get<int64_t>()), peft_err,
              info["merged_class"].get<std::string>().c_str(), merged_err);
}

TEST_CASE("train: 20 steps equal transformers + PEFT + torch AdamW on the same batches", "[train][reference]") {
  if (!testing::ReferenceStackAvailable()) return;
  // Every family in float32; two of them under training.autocast bf16 against torch.autocast.
  const auto [family, autocast] = GENERATE(table<std::string, bool>({{"qwen2", false}, {"qwen3", false},
                                                                      {"gemma2", false}, {"gemma3_text", false},
                                                                      {"qwen2", true}, {"gemma3_text", true}}));
  INFO("family " << family << (autocast ? " under autocast bf16" : ""));
  const std::string dir = testing::TempDir("train_equiv_" + family + (autocast ? "_autocast" : ""));
  REQUIRE(testing::RunReference("train_ref.py", {"tiny", dir, family}).exit_code == 0);
  const int64_t steps = 20;
  auto run = spec::ParseRunSpec("test", absl::StrCat(
      "model { path: \"", dir, "/model\" load_in_4bit: false }\n",
      "lora { r: 4 alpha: 8 dropout: 0 target_modules: \"all-linear\" }\n",
      "data { train_files: \"", dir, "/train.jsonl\" format: \"text\" template: \"none\" max_length: 24 }\n",
      "training { max_steps: ", steps, " micro_batch_size: 2 gradient_accumulation_steps: 2 learning_rate: 0.003",
      " warmup_steps: 3 weight_decay: 0.01 max_grad_norm: 1.0 seed: 7 log_every_steps: 1",
      autocast ? " autocast: \"bf16\"" : "", " }\n",
      "output { dir: \"", dir, "/run\" report_to: \"jsonl\" }\n"));
  REQUIRE(run.ok());
  auto trainer = spec::BuildTrainer(*run);
  INFO(trainer.status().ToString());
  REQUIRE(trainer.ok());
  std::vector<std::pair<std::string, at::Tensor>> batches;
  std::map<int64_t, int> micro;
  std::vector<double> ours;
  train::RunOptions options;
  options.progress = false;
  options.on_batch = [&](int64_t step, const std::vector<int64_t>& ids, const std::vector<int64_t>& mask,
                         const std::vector<int64_t>& pos, const std::vector<int64_t>& labels, int64_t b, int64_t t) {
    const std::string key = absl::StrCat(step, ".", micro[step]++);
    const auto tensor = [&](const std::vector<int64_t>& v) { return at::tensor(at::ArrayRef<int64_t>(v), at::kLong).view({b, t}).clone(); };
    batches.emplace_back("ids." + key, tensor(ids));
    batches.emplace_back("mask." + key, tensor(mask));
    batches.emplace_back("pos." + key, tensor(pos));
    batches.emplace_back("labels." + key, tensor(labels));
  };
  options.on_step = [&](const train::StepMetrics& m) { ours.push_back(m.loss); };
  REQUIRE((*trainer)->Run(options).ok());
  REQUIRE(io::SaveSafetensors(dir + "/batches.safetensors", batches).ok());
  const nlohmann::json cfg = {{"seed", 7}, {"r", 4},          {"alpha", 8},     {"lr", 0.003},
                              {"wd", 0.01}, {"warmup", 3}, {"steps", steps}, {"autocast", autocast}};
  const auto replay = testing::RunReference("train_ref.py", {"replay", dir, cfg.dump()});
  REQUIRE(replay.exit_code == 0);
  const std::vector<double> theirs = testing::LastJsonLine(replay.out)["losses"].get<std::vector<double>>();
  REQUIRE(theirs.size() == ours.size());
  double worst_loss = 0;
  for (size_t i = 0; i < ours.size(); ++i) worst_loss = std::max(worst_loss, std::abs(ours[i] - theirs[i]) / std::abs(theirs[i]));
  auto weights = testing::LoadAll(dir + "/replay_weights.safetensors");
  double worst_weight = 0;
  size_t n = 0;
  for (const auto& [key, t] : (*trainer)->TrainableParameters()) {
    INFO("weight " << key);
    REQUIRE(weights.count(key) == 1);
    const double scale = weights[key].abs().max().item<double>();
    worst_weight = std::max(worst_weight, (t.detach() - weights[key]).abs().max().item<double>() / (scale > 0 ? scale : 1));
    ++n;
  }
  std::printf("train: %-11s %lld steps against transformers + PEFT + torch.optim.AdamW%s: loss %.4f → %.4f (ours) vs "
              "%.4f → %.4f; worst step loss rel diff %.2e; %zu LoRA tensors, worst rel diff %.2e\n",
              family.c_str(), static_cast<long long>(steps), autocast ? " (autocast bf16 both)" : "", ours.front(),
              ours.back(), theirs.front(), theirs.back(), worst_loss, n, worst_weight);
  // Same data, init and arithmetic order up to BLAS blocking: float32 rounding only, grown over 20
  // Adam steps (whose first steps move each weight by ±lr whatever the gradient's size). Under
  // autocast the same casts happen at the same places, but a GEMM blocked differently can round a
  // bf16 output one ulp (2^-8) apart; the losses stay within 4e-4 and Adam's normalized steps turn
  // the rounding of near-zero gradients into weight differences of a few percent (measured 2.6e-2
  // and 4.1e-2).
  CHECK(worst_loss <= (autocast ? 2e-3 : 1e-5));
  CHECK(worst_weight <= (autocast ? 1e-1 : 1e-4));
}


TEST_CASE("train: runs SIGKILLed at random moments resume to the uninterrupted run's adapter", "[train][reference][kill]") {
  if (!testing::ReferenceStackAvailable()) return;
  const std::string dir = testing::TempDir("train_kill");
  REQUIRE(testing::RunReference("train_ref.py", {"tiny", dir}).exit_code == 0);
  const auto spec_file = [&](const std::string& out) {
    const std::string path = out + ".textproto";
    REQUIRE(WriteFileAtomically(path, absl::StrCat(
        "model { path: \"", dir, "/model\" load_in_4bit: true }\n",
        "lora { r: 4 alpha: 8 dropout: 0.1 }\n",
        "data { train_files: \"", dir, "/train.jsonl\" format: \"text\" template: \"none\" max_length: 24 }\n",
        "training { max_steps: 80 micro_batch_size: 2 gradient_accumulation_steps: 2 learning_rate: 0.003",
        " log_every_steps: 1 }\n",
        "checkpoint { every_steps: 1 keep_last: 2 }\n",
        "output { dir: \"", out, "\" report_to: \"jsonl\" }\n")).ok());
    return path;
  };
  const std::string cli = testing::CliPath();
  const auto q = [](const std::string& s) { return testing::ShellQuote(s); };
  const auto whole = testing::RunCommand(absl::StrCat(cli, " train --spec ", q(spec_file(dir + "/whole")), " 2>&1"));
  INFO(whole.out);
  REQUIRE(whole.exit_code == 0);
  const std::string want = Bytes(dir + "/whole/adapter/adapter_model.safetensors");
  std::mt19937 rng(11);
  // Each run is killed at a moment chosen by its progress, not by the clock (the machine's speed
  // varies): after a random number of logged steps (a line per step in metrics.jsonl), plus a
  // random 0–30 ms, so it dies mid-step or mid-checkpoint; every fifth run dies while loading.
  std::uniform_int_distribution<int> at_step(0, 70);
  std::uniform_int_distribution<int> jitter_ms(0, 30);
  int identical = 0, killed = 0, complete_checkpoints = 0, partial_visible = 0, mid_training = 0;
  for (int k = 0; k < 20; ++k) {
    const std::string out = absl::StrCat(dir, "/run", k);
    const std::string spec = spec_file(out);
    const pid_t pid = SpawnTrain(cli, spec);
    REQUIRE(pid >= 0);
    const int wait_steps = k % 5 == 0 ? -1 : at_step(rng);
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    int status = 0;
    bool exited = false;
    while (std::chrono::steady_clock::now() < deadline) {
      if (waitpid(pid, &status, WNOHANG) == pid) {
        exited = true;
        break;
      }
      if (wait_steps < 0) {
        std::this_thread::sleep_for(std::chrono::milliseconds(200 + jitter_ms(rng) * 10));
        break;
      }
      const auto text = ReadFileToString(out + "/metrics.jsonl");
      if (text.ok() && std::count(text->begin(), text->end(), '\n') > wait_steps) {
        std::this_thread::sleep_for(std::chrono::milliseconds(jitter_ms(rng)));
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    if (!exited) {
      ::kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      killed += WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL;
    }
    // Every checkpoint folder that exists under its final name is complete.
    std::error_code ec;  // no folder yet when the kill came before the first step
    bool any = false;
    for (const auto& entry : std::filesystem::directory_iterator(out + "/checkpoints", ec)) {
      const std::string name = entry.path().filename().string();
      if (name.find(".tmp-") != std::string::npos) continue;  // a write the kill interrupted: never used
      const bool complete = IsRegularFile(entry.path().string() + "/trainer_state.json") &&
                            IsRegularFile(entry.path().string() + "/optimizer.safetensors") &&
                            IsRegularFile(entry.path().string() + "/adapter/adapter_model.safetensors") &&
                            IsRegularFile(entry.path().string() + "/spec.textproto");
      complete ? ++complete_checkpoints : ++partial_visible;
      any = true;
    }
    mid_training += any;
    const auto resumed = testing::RunCommand(absl::StrCat(cli, " train --resume --spec ", q(spec), " 2>&1"));
    INFO(resumed.out);
    REQUIRE(resumed.exit_code == 0);
    identical += Bytes(out + "/adapter/adapter_model.safetensors") == want;
  }
  // SIGTERM (and Ctrl-C's SIGINT) stop after the current step with a checkpoint and exit 0; the
  // run resumes to the same adapter.
  for (const int sig : {SIGTERM, SIGINT}) {
    const std::string out = absl::StrCat(dir, "/signal", sig);
    const std::string spec = spec_file(out);
    const pid_t pid = SpawnTrain(cli, spec);
    REQUIRE(pid >= 0);
    for (int i = 0; i < 30000; ++i) {
      const auto text = ReadFileToString(out + "/metrics.jsonl");
      if (text.ok() && std::count(text->begin(), text->end(), '\n') >= 10) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    ::kill(pid, sig);
    int status = 0;
    waitpid(pid, &status, 0);
    CHECK(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 0);
    CHECK_FALSE(IsDirectory(out + "/adapter"));  // stopped early, with a checkpoint
    const auto resumed = testing::RunCommand(absl::StrCat(cli, " train --resume --spec ", q(spec), " 2>&1"));
    INFO(resumed.out);
    REQUIRE(resumed.exit_code == 0);
    CHECK_THAT(resumed.out, Catch::Contains("resumed from"));
    CHECK(Bytes(out + "/adapter/adapter_model.safetensors") == want);
  }
  std::printf("train: 20 runs SIGKILLed at random moments (%d killed before finishing, %d of them after training "
              "began) then resumed: %d adapters byte-identical to the uninterrupted run's; %d complete checkpoints "
              "seen, %d partial ones visible\n",
              killed, mid_training, identical, complete_checkpoints, partial_visible);
  CHECK(identical == 20);
  CHECK(partial_visible == 0);
  CHECK(killed == 20);
  CHECK(mid_training >= 12);
}


TEST_CASE("train: non-finite steps are skipped, named, and stop the run with a checkpoint", "[train][reference]") {
  if (!testing::ReferenceStackAvailable()) return;
  const std::string dir = testing::TempDir("train_nan");
  REQUIRE(testing::RunReference("train_ref.py", {"tiny", dir, "qwen2"}).exit_code == 0);
  auto run = spec::ParseRunSpec("test", absl::StrCat(
      "model { path: \"", dir, "/model\" load_in_4bit: false }\n",
      "lora { r: 4 alpha: 8 dropout: 0 target_modules: \"q_proj\" }\n",
      "data { train_files: \"", dir, "/train.jsonl\" format: \"text\" template: \"none\" max_length: 24 }\n",
      "training { max_steps: 20 micro_batch_size: 2 max_nonfinite_steps: 3 }\n",
      "output { dir: \"", dir, "/run\" report_to: \"jsonl\" }\n"));
  REQUIRE(run.ok());
  auto trainer = spec::BuildTrainer(*run);
  REQUIRE(trainer.ok());
  // One adapter weight poisoned: every step's loss is NaN.
  const auto params = (*trainer)->TrainableParameters();
  {
    at::NoGradGuard no_grad;
    const_cast<at::Tensor&>(params[1].second).fill_(std::numeric_limits<float>::quiet_NaN());
  }
  const at::Tensor before = params[0].second.detach().clone();
  int skipped = 0;
  std::set<std::string> where;
  train::RunOptions options;
  options.progress = false;
  options.on_step = [&](const train::StepMetrics& m) {
    skipped += m.skipped;
    where.insert(m.nonfinite_where);
  };
  const absl::Status status = (*trainer)->Run(options);
  REQUIRE(!status.ok());
  CHECK_THAT(std::string(status.message()), Catch::Contains("3 non-finite steps in a row") &&
                                                Catch::Contains("checkpoint at step 3"));
  CHECK(skipped == 3);
  // params[1] is layer 0's q_proj lora_B: the first non-finite activations are its attention's.
  INFO("trainable tensor poisoned: " << params[1].first);
  CHECK(params[1].first == "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight");
  CHECK(where == std::set<std::string>{"activations of model.layers.0.self_attn"});
  std::printf("train: 3 non-finite steps skipped, each located at \"%s\"\n", where.begin()->c_str());
  {  // and each is in metrics.jsonl with that place
    std::ifstream metrics(dir + "/run/metrics.jsonl");
    int logged = 0;
    for (std::string line; std::getline(metrics, line);) {
      logged += line.find("\"nonfinite_where\":\"activations of model.layers.0.self_attn\"") != std::string::npos;
    }
    CHECK(logged == 3);
  }
  CHECK(at::equal(params[0].second.detach(), before));  // no update was applied
  CHECK(IsDirectory(dir + "/run/checkpoints/step-000003"));
}

}  // namespace
}  // namespace llmtrain

namespace llmtrain {
namespace {

TEST_CASE("train: trainer_state.json is parsed strictly, naming the key at fault", "[train]") {
  train::TrainerState state;
  state.step = 12;
  state.adam_step = 11;
  state.data_cursor = 24;
  state.total_steps = 30;
  auto back = train::ParseTrainerState("state.json", train::TrainerStateJson(state));
  REQUIRE(back.ok());
  CHECK(back->step == 12);
  CHECK(back->adam_step == 11);
  CHECK(back->data_cursor == 24);
  CHECK(back->total_steps == 30);
  CHECK_THAT(std::string(train::ParseTrainerState("s.json", "[1, 2]").status().message()),
             Catch::Contains("s.json: expected a JSON object"));
  CHECK_THAT(std::string(train::ParseTrainerState("s.json", "{\"step\": 1}").status().message()),
             Catch::Contains("s.json: \"adam_step\" is missing"));
  const std::string negative = absl::StrReplaceAll(train::TrainerStateJson(state), {{"\"data_cursor\": 24", "\"data_cursor\": -3"}});
  CHECK_THAT(std::string(train::ParseTrainerState("s.json", negative).status().message()),
             Catch::Contains("\"data_cursor\": expected a non-negative integer, found -3"));
  // Each process's data position: world_size pairs, round trip and refusals.
  state.world_size = 2;
  state.data_positions = {{1, 7}, {1, 9}};
  back = train::ParseTrainerState("state.json", train::TrainerStateJson(state));
  REQUIRE(back.ok());
  CHECK((back->data_positions == state.data_positions));
  const std::string text = train::TrainerStateJson(state);
  REQUIRE(text.find("[\n    [\n      1,\n      7\n    ]") != std::string::npos);
  const std::string one = absl::StrReplaceAll(text, {{"\"world_size\": 2", "\"world_size\": 3"}});
  CHECK_THAT(std::string(train::ParseTrainerState("s.json", one).status().message()),
             Catch::Contains("s.json: \"data_positions\": expected 3 [epoch, cursor] pairs (one per process)"));
  const std::string bad = absl::StrReplaceAll(text, {{"      7\n", "      -7\n"}});
  CHECK_THAT(std::string(train::ParseTrainerState("s.json", bad).status().message()),
             Catch::Contains("\"data_positions\": expected [epoch, cursor] of non-negative integers, found [1,-7]"));
}

TEST_CASE("train: resuming from a damaged checkpoint is an error naming the file and key", "[train][reference]") {
  if (!testing::ReferenceStackAvailable()) return;
  const std::string dir = testing::TempDir("train_damaged_resume");
  REQUIRE(testing::RunReference("train_ref.py", {"tiny", dir, "qwen2"}).exit_code == 0);
  auto run = spec::ParseRunSpec("test", absl::StrCat(
      "model { path: \"", dir, "/model\" load_in_4bit: false }\n",
      "lora { r: 2 alpha: 4 target_modules: \"q_proj\" }\n",
      "data { train_files: \"", dir, "/train.jsonl\" format: text template: none max_length: 16 }\n",
      "training { max_steps: 4 micro_batch_size: 2 }\n", "checkpoint { every_steps: 2 }\n",
      "output { dir: \"", dir, "/run\" report_to: jsonl }\n"));
  REQUIRE(run.ok());
  {
    auto trainer = spec::BuildTrainer(*run);
    REQUIRE(trainer.ok());
    std::atomic<bool> stop{false};
    train::RunOptions options;
    options.progress = false;
    options.stop = &stop;
    options.on_step = [&](const train::StepMetrics& m) { stop.store(m.step == 2); };
    REQUIRE((*trainer)->Run(options).ok());
  }
  const std::string state_path = train::CheckpointDir(dir + "/run", 2) + "/trainer_state.json";
  auto text = ReadFileToString(state_path);
  REQUIRE(text.ok());
  REQUIRE(WriteFileAtomically(state_path, absl::StrReplaceAll(*text, {{"\"data_cursor\"", "\"data_curs0r\""}})).ok());
  auto trainer = spec::BuildTrainer(*run);
  REQUIRE(trainer.ok());
  train::RunOptions options;
  options.resume = true;
  options.progress = false;
  const absl::Status status = (*trainer)->Run(options);
  CHECK(status.code() == absl::StatusCode::kDataLoss);
  CHECK_THAT(std::string(status.message()), Catch::Contains("step-000002/trainer_state.json: \"data_cursor\" is missing"));
}

}  // namespace
}  // namespace llmtrain

namespace llmtrain {
namespace {

// A tiny model folder and text data for the CUDA checks: $LLMTRAIN_TEST_TINY/<family> when set
// (scripts/device-bundle makes them, since the GPU machine has no .venv), else train_ref.py tiny.
std::string TinyModel(const std::string& family, const std::string& scratch) {
  if (const char* root = std::getenv("LLMTRAIN_TEST_TINY"); root != nullptr && *root != '\0') {
    return std::string(root) + "/" + family;
  }
  if (!testing::ReferenceStackAvailable()) return "";
  REQUIRE(testing::RunReference("train_ref.py", {"tiny", scratch, family}).exit_code == 0);
  return scratch;
}

TEST_CASE("train: a QLoRA run on CUDA equals the CPU run (losses, grad norms, adapter)", "[train][cuda]") {
  if (!at::hasCUDA()) {
    testing::Skip("no CUDA device: the CUDA training step was not run (it is compiled and linked)");
    return;
  }
  // DoRA reads its 4-bit base's dense weight every forward: on the GPU, our dequantization kernel.
  // cpu_offload: the GPU run's gradients go to the host (pinned) and the updated values come back.
  const auto [family, autocast, dora, offload] = GENERATE(table<std::string, bool, bool, bool>(
      {{"qwen2", false, false, false}, {"gemma3_text", false, false, false}, {"qwen2", true, false, false},
       {"qwen2", false, true, false}, {"qwen2", false, false, true}}));
  INFO("family " << family << (autocast ? " under autocast bf16" : "") << (dora ? " with DoRA" : "")
                 << (offload ? " with cpu_offload" : ""));
  const std::string dir = testing::TempDir("train_cuda_" + family + (autocast ? "_autocast" : "") +
                                           (dora ? "_dora" : "") + (offload ? "_offload" : ""));
  const std::string tiny = TinyModel(family, dir + "/tiny");
  if (tiny.empty()) return;
  struct Result {
    std::vector<double> loss, grad_norm;
    std::vector<std::pair<std::string, at::Tensor>> weights;
    double eval = 0;
  };
  const auto run = [&](const std::string& device) {
    auto spec = spec::ParseRunSpec("test", absl::StrCat(
        "model { path: \"", tiny, "/model\" load_in_4bit: true device: \"", device, "\" }\n",
        "lora { r: 4 alpha: 8 dropout: 0 target_modules: \"all-linear\"", dora ? " use_dora: true" : "", " }\n",
        "data { train_files: \"", tiny, "/train.jsonl\" eval_files: \"", tiny, "/train.jsonl\" format: \"text\"",
        " template: \"none\" max_length: 24 }\n",
        "training { max_steps: 4 micro_batch_size: 2 gradient_accumulation_steps: 2 learning_rate: 0.003",
        " warmup_steps: 1 max_grad_norm: 1.0 seed: 7 log_every_steps: 1 activation_checkpointing: true",
        autocast ? " autocast: \"bf16\"" : "", " }\n",
        "eval { max_batches: 2 sample_prompts: \"the\" max_new_tokens: 4 }\n",
        "checkpoint { every_steps: 2 }\n",
        "output { dir: \"", dir, "/", device, "\" report_to: \"jsonl\" }\n",
        offload ? "distributed { cpu_offload: true }\n" : ""));
    REQUIRE(spec.ok());
    auto trainer = spec::BuildTrainer(*spec);
    INFO(trainer.status().ToString());
    REQUIRE(trainer.ok());
    CHECK((*trainer)->model().device().type() == (device == "cpu" ? c10::kCPU : c10::kCUDA));
    Result r;
    train::RunOptions options;
    options.progress = false;
    options.on_step = [&](const train::StepMetrics& m) {
      r.loss.push_back(m.loss);
      r.grad_norm.push_back(m.grad_norm);
    };
    const absl::Status status = (*trainer)->Run(options);
    INFO(status.ToString());
    REQUIRE(status.ok());
    auto eval = (*trainer)->Evaluate();
    REQUIRE(eval.ok());
    r.eval = *eval;
    for (const auto& [key, t] : (*trainer)->TrainableParameters()) r.weights.emplace_back(key, t.detach().cpu());
    // The adapter was written from the device's tensors.
    CHECK(IsRegularFile(dir + "/" + device + "/adapter/adapter_model.safetensors"));
    return r;
  };
  const Result cpu = run("cpu"), gpu = run("cuda");
  REQUIRE(cpu.loss.size() == 4);
  REQUIRE(gpu.loss.size() == 4);
  double worst_loss = 0, worst_norm = 0, worst_weight = 0;
  for (size_t i = 0; i < cpu.loss.size(); ++i) {
    worst_loss = std::max(worst_loss, std::abs(cpu.loss[i] - gpu.loss[i]) / std::abs(cpu.loss[i]));
    worst_norm = std::max(worst_norm, std::abs(cpu.grad_norm[i] - gpu.grad_norm[i]) / std::abs(cpu.grad_norm[i]));
  }
  REQUIRE(cpu.weights.size() == gpu.weights.size());
  for (size_t i = 0; i < cpu.weights.size(); ++i) {
    const at::Tensor& a = cpu.weights[i].second;
    const at::Tensor& b = gpu.weights[i].second;
    const double scale = a.abs().max().item<double>();
    worst_weight = std::max(worst_weight, (a - b).abs().max().item<double>() / (scale > 0 ? scale : 1));
  }
  const double eval_rel = std::abs(cpu.eval - gpu.eval) / std::abs(cpu.eval);
  std::printf("train: %-11s%s%s QLoRA, 4 steps of 2 × 2, activation checkpointing: CUDA vs CPU: loss %.6f → %.6f "
              "(cuda) vs %.6f → %.6f; worst loss rel diff %.2e, grad norm %.2e, %zu LoRA tensors %.2e, eval %.2e\n",
              family.c_str(), autocast ? " (autocast bf16)" : "", dora ? " (DoRA)" : "", gpu.loss.front(), gpu.loss.back(),
              cpu.loss.front(), cpu.loss.back(), worst_loss, worst_norm, cpu.weights.size(), worst_weight, eval_rel);
  // The same 4-bit codes and scales, the same data and init: the two differ by float32 rounding
  // alone (cuBLASLt/cuBLAS and the CPU's GEMMs block their sums differently: a few ulps, about
  // 1e-7 relative per product), grown through 4 Adam steps whose first updates are ±lr whatever the
  // gradient's size. Under bf16 autocast both round the same products to bf16 but from sums
  // blocked differently, so an output can land one bf16 ulp (2^-8) apart: the bounds of the
  // 20-step transformers comparison (train: 20 steps equal transformers ...).
  CHECK(worst_loss <= (autocast ? 2e-3 : 1e-5));
  CHECK(worst_norm <= (autocast ? 2e-2 : 1e-4));
  CHECK(eval_rel <= (autocast ? 2e-3 : 1e-5));
  CHECK(worst_weight <= (autocast ? 1e-1 : 1e-4));
}

}  // namespace
}  // namespace llmtrain

namespace llmtrain {
namespace {

TEST_CASE("train: on CUDA, activation checkpointing replays the forward's dropout masks", "[train][cuda]") {
  if (!at::hasCUDA()) {
    testing::Skip("no CUDA device: the CUDA dropout replay was not run (it is compiled and linked)");
    return;
  }
  const std::string dir = testing::TempDir("train_cuda_dropout");
  const std::string tiny = TinyModel("qwen2", dir + "/tiny");
  if (tiny.empty()) return;
  std::vector<std::vector<std::pair<std::string, at::Tensor>>> weights;
  for (const bool checkpointing : {false, true}) {
    auto spec = spec::ParseRunSpec("test", absl::StrCat(
        "model { path: \"", tiny, "/model\" load_in_4bit: true device: \"cuda\" }\n",
        "lora { r: 4 alpha: 8 dropout: 0.3 target_modules: \"all-linear\" }\n",
        "data { train_files: \"", tiny, "/train.jsonl\" format: \"text\" template: \"none\" max_length: 24 }\n",
        "training { max_steps: 3 micro_batch_size: 2 learning_rate: 0.003 seed: 7 activation_checkpointing: ",
        checkpointing ? "true" : "false", " }\n",
        "output { dir: \"", dir, checkpointing ? "/on" : "/off", "\" report_to: \"jsonl\" }\n"));
    REQUIRE(spec.ok());
    auto trainer = spec::BuildTrainer(*spec);
    INFO(trainer.status().ToString());
    REQUIRE(trainer.ok());
    train::RunOptions options;
    options.progress = false;
    REQUIRE((*trainer)->Run(options).ok());
    weights.emplace_back();
    for (const auto& [key, t] : (*trainer)->TrainableParameters()) weights.back().emplace_back(key, t.detach().cpu());
  }
  double worst = 0;
  for (size_t i = 0; i < weights[0].size(); ++i) {
    const at::Tensor& a = weights[0][i].second;
    const double scale = a.abs().max().item<double>();
    worst = std::max(worst, (a - weights[1][i].second).abs().max().item<double>() / (scale > 0 ? scale : 1));
  }
  std::printf("train: CUDA, LoRA dropout 0.3, 3 steps: checkpointing on vs off, LoRA weights worst rel diff %.2e\n",
              worst);
  // The same masks give the same gradients up to the order of the GPU's atomic sums (a few ulps),
  // which Adam's normalized first steps amplify for near-zero gradients: 9.3e-5 measured on an
  // H200. Other masks flip the signs of many of those lr-sized steps, and B starts at zero, so
  // its entries (about 3 × lr after 3 steps) would then differ by a large fraction of their size.
  CHECK(worst <= 1e-3);
}


// eval.metrics: every evaluation scores the generation metrics and task accuracy, the last one is
// compared with step 0 (the base model) with intervals, and a run stopped and resumed gives the
// same comparison (step 0's results come back from the run folder).
TEST_CASE("train: eval.metrics score each evaluation and compare the last with the base, across a resume",
          "[train][real]") {
  const std::string dir = testing::TempDir("train_eval_metrics");
  std::string eval_data, task;
  for (int i = 0; i < 6; ++i) {
    eval_data += absl::StrCat("{\"instruction\": \"What is ", 30 + i, " plus ", 31 + i,
                              "?\", \"context\": \"\", \"response\": \"", 61 + 2 * i, ".\", \"category\": \"open_qa\"}\n");
    task += absl::StrCat("{\"context\": \"", i, " plus ", i + 1, " is\", \"choices\": [\"", 2 * i + 1, "\", \"", 2 * i + 5,
                         "\", \"", 3 * i + 7, "\"], \"gold\": 0}\n");
  }
  REQUIRE(MakeDirectories(dir).ok());
  REQUIRE(WriteFileAtomically(dir + "/eval.jsonl", eval_data).ok());
  REQUIRE(WriteFileAtomically(dir + "/task.jsonl", task).ok());
  const auto run_spec = [&](const std::string& sub) {
    spec::RunSpec run = SmallRun(dir + "/" + sub, 2, 1, 4);
    run.mutable_data()->add_eval_files(dir + "/eval.jsonl");
    spec::EvalSpec* e = run.mutable_eval();
    e->set_every_steps(2);
    e->set_max_new_tokens(6);
    e->set_max_generation_records(4);
    for (const char* m : {"loss", "exact_match", "rouge", "bleu", "accuracy", "accuracy_norm"}) e->add_metrics(m);
    e->add_tasks(dir + "/task.jsonl");
    return run;
  };
  {
    auto whole = spec::BuildTrainer(run_spec("whole"));
    REQUIRE(whole.ok());
    train::RunOptions options;
    options.progress = false;
    REQUIRE((*whole)->Run(options).ok());
  }
  std::atomic<bool> stop{false};
  {
    auto first = spec::BuildTrainer(run_spec("split"));
    REQUIRE(first.ok());
    train::RunOptions options;
    options.progress = false;
    options.stop = &stop;
    options.on_step = [&](const train::StepMetrics& m) {
      if (m.step == 3) stop.store(true);
    };
    REQUIRE((*first)->Run(options).ok());
  }
  CHECK(IsRegularFile(dir + "/split/run/eval_base.json"));
  {
    auto again = spec::BuildTrainer(run_spec("split"));
    REQUIRE(again.ok());
    train::RunOptions options;
    options.progress = false;
    options.resume = true;
    REQUIRE((*again)->Run(options).ok());
  }
  const auto evals = [&](const std::string& sub) {
    std::vector<nlohmann::json> out;
    for (const auto& line : absl::StrSplit(Bytes(dir + "/" + sub + "/run/metrics.jsonl"), '\n')) {
      const nlohmann::json j = nlohmann::json::parse(line, nullptr, false);
      if (j.is_object() && j.value("type", "") == "eval") out.push_back(j);
    }
    return out;
  };
  const std::vector<nlohmann::json> whole = evals("whole"), split = evals("split");
  REQUIRE(whole.size() == 3);  // steps 0, 2 and 4
  for (const nlohmann::json& e : whole) {
    INFO(e.dump());
    REQUIRE(e.contains("metrics"));
    for (const char* key : {"exact_match", "rouge1", "rouge2", "rougeL", "bleu", "accuracy", "accuracy_norm"}) {
      CHECK(e["metrics"].contains(key));
    }
  }
  CHECK_FALSE(whole[0].contains("compare_base"));
  REQUIRE(whole[2].contains("compare_base"));
  const nlohmann::json& rows = whole[2]["compare_base"];
  std::map<std::string, nlohmann::json> by_metric;
  for (const nlohmann::json& row : rows) by_metric[row["metric"].get<std::string>()] = row;
  for (const char* key : {"loss", "exact_match", "rouge1", "rouge2", "rougeL", "bleu", "accuracy", "accuracy_norm"}) {
    INFO(key);
    REQUIRE(by_metric.count(key) == 1);
    const nlohmann::json& row = by_metric[key];
    CHECK(row["ci95_low"].get<double>() <= row["difference"].get<double>() + 1e-12);
    CHECK(row["ci95_high"].get<double>() >= row["difference"].get<double>() - 1e-12);
    if (std::string(key) != "loss") {
      // The base is step 0's evaluation, the adapter the last one's.
      CHECK(row["base"].get<double>() == whole[0]["metrics"][key].get<double>());
      CHECK(row["adapter"].get<double>() == whole[2]["metrics"][key].get<double>());
    }
  }
  CHECK(by_metric["accuracy"]["units"].get<int64_t>() == 6);
  CHECK(by_metric["rouge1"]["units"].get<int64_t>() == 4);
  CHECK(by_metric["loss"]["units"].get<int64_t>() == 6);
  // Four steps at 1e-3 move the per-record loss on held-out sums.
  CHECK(by_metric["loss"]["difference"].get<double>() != 0);
  // The resumed run read step 0's results back: the same comparison.
  REQUIRE(split.size() == 3);
  REQUIRE(split[2].contains("compare_base"));
  CHECK(split[2]["compare_base"] == whole[2]["compare_base"]);
  const std::string report = Bytes(dir + "/whole/run/report.html");
  CHECK(absl::StrContains(report, "Base model vs adapter"));
  CHECK(absl::StrContains(report, "eval rouge1"));

  // A bad spec is refused before anything loads, naming the field.
  spec::RunSpec bad = run_spec("bad");
  bad.mutable_eval()->add_metrics("bleurt");
  CHECK_THAT(std::string(spec::ValidateRunSpec(bad).message()), Catch::Contains("eval.metrics[6]: unknown metric \"bleurt\""));
  REQUIRE(WriteFileAtomically(dir + "/gold.jsonl", "{\"context\": \"Q\", \"choices\": [\"a\", \"b\"], \"gold\": 2}\n").ok());
  bad = run_spec("bad");
  bad.mutable_eval()->set_tasks(0, dir + "/gold.jsonl");
  CHECK_THAT(std::string(spec::ValidateRunSpec(bad).message()),
             Catch::Contains("eval.tasks[0]") && Catch::Contains("gold.jsonl:1: field \"gold\": 2 is outside"));
  bad = run_spec("bad");
  bad.mutable_eval()->clear_tasks();
  CHECK_THAT(std::string(spec::ValidateRunSpec(bad).message()), Catch::Contains("accuracy and accuracy_norm need eval.tasks"));
  bad = run_spec("bad");
  bad.mutable_eval()->clear_metrics();
  bad.mutable_eval()->add_metrics("rouge");
  CHECK_THAT(std::string(spec::ValidateRunSpec(bad).message()), Catch::Contains("eval.tasks: needs accuracy"));
  bad.mutable_eval()->clear_tasks();
  bad.mutable_data()->clear_eval_files();
  CHECK_THAT(std::string(spec::ValidateRunSpec(bad).message()), Catch::Contains("eval.metrics: needs eval data"));
  bad = run_spec("bad");
  bad.mutable_eval()->clear_tasks();
  bad.mutable_eval()->clear_metrics();
  bad.mutable_eval()->add_metrics("bleu");
  bad.mutable_data()->set_template_(spec::DataSpec::none);
  CHECK_THAT(std::string(spec::ValidateRunSpec(bad).message()), Catch::Contains("need data.template: model"));
  bad.mutable_data()->set_format(spec::DataSpec::text);
  CHECK_THAT(std::string(spec::ValidateRunSpec(bad).message()), Catch::Contains("data.format text has none"));
}

}  // namespace
}  // namespace llmtrain
