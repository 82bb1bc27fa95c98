// train/: AdamW, the LR schedules and gradient clipping against torch.optim.AdamW,
// transformers' get_*_schedule_with_warmup and torch.nn.utils.clip_grad_norm_ (train_ref.py).
#include <ATen/ATen.h>

#include <catch2/catch.hpp>
#include <cstdio>

#include "absl/strings/str_cat.h"
#include "llmtrain/train/optimizer.h"
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
  train::AdamW adam(params, {1e-2, 0.9, 0.95, 1e-6, 0.1});
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
  train::AdamW restored(copy, {1e-2, 0.9, 0.95, 1e-6, 0.1});
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
  train::AdamW a({p}, {1e-3, 0.9, 0.999, 1e-8, 0.0});
  train::AdamW b({ref}, {1e-3, 0.9, 0.999, 1e-8, 0.0});
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

}  // namespace
}  // namespace llmtrain
