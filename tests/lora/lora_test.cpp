// lora/: adapters against PEFT 0.21 (and QLoRA against PEFT + bitsandbytes load_in_4bit), run at
// test time on the tiny random models of every family (tests/reference/lora_ref.py).
//
// Tolerances (max |a − b| ÷ max |b|):
//   - logits 1e-5 and gradients 1e-4 (the bounds). Both sides run the same float32 math
//     in the same order except GEMM blocking, so the measured errors are ~1e-7.
//   - QLoRA: the 4-bit weights are bit-identical (the quantizer is byte-exact and the matmul
//     dequantizes to float32 exactly as bitsandbytes' gemm_4bit path), and our QuantizedLinear
//     multiplies tile by tile where bitsandbytes runs one F.linear: sums differ in order only, so
//     the same 1e-5 / 1e-4 bounds hold; the test prints the measured values.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/grad_mode.h>

#include <catch2/catch.hpp>
#include <cstdio>
#include <fstream>
#include <map>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "llmtrain/core/atomic_file.h"
#include "llmtrain/lora/lora.h"
#include "llmtrain/model/decoder.h"
#include "llmtrain/model/save.h"
#include "llmtrain/quant/quantized_linear.h"
#include "testing/json_util.h"
#include "testing/reference.h"
#include "testing/safetensors_util.h"

namespace llmtrain {
namespace {

using testing::LoadAll;

double RelativeError(const at::Tensor& a, const at::Tensor& b) {
  const double scale = b.abs().max().item<double>();
  return (a.to(at::kDouble) - b.to(at::kDouble)).abs().max().item<double>() / (scale > 0 ? scale : 1.0);
}

std::unique_ptr<model::Decoder> LoadModel(const std::string& path, const model::DecoderOptions& options = {}) {
  auto model = model::Decoder::Load(path, options);
  INFO(model.status().ToString());
  REQUIRE(model.ok());
  return *std::move(model);
}

at::Tensor Loss(const at::Tensor& logits, std::map<std::string, at::Tensor>& ref) {
  return (logits.to(at::kFloat) * ref["loss_weights"] * ref["attention_mask"].unsqueeze(-1)).sum();
}

struct Errors {
  double logits = 0, grads = 0;
  size_t n_grads = 0;
};

// Forward + backward of `model` (with its adapter) on the case's inputs, against ref.
Errors CompareWithReference(model::Decoder& model, const lora::LoraConfig& config,
                            std::map<std::string, at::Tensor>& ref) {
  Errors e;
  lora::SetTraining(&model, true);
  const at::Tensor logits = model.Forward(ref["input_ids"], ref["attention_mask"]);
  e.logits = RelativeError(logits, ref["logits"]);
  Loss(logits, ref).backward();
  const auto trainable = lora::TrainableParameters(model, config);
  for (const auto& [key, value] : ref) {
    if (!absl::StartsWith(key, "grad.")) continue;
    const std::string name = key.substr(5);
    const at::Tensor* ours = nullptr;
    for (const auto& [k, t] : trainable) {
      if (k == name) ours = &t;
    }
    INFO("gradient of " << name);
    REQUIRE(ours != nullptr);
    REQUIRE(ours->grad().defined());
    e.grads = std::max(e.grads, RelativeError(ours->grad(), value));
    ++e.n_grads;
  }
  CHECK(e.n_grads == trainable.size());
  return e;
}

TEST_CASE("lora: PEFT adapters load here with PEFT's logits and gradients; ours load in PEFT", "[lora][reference]") {
  if (!testing::ReferenceStackAvailable()) return;
  const std::string dir = testing::TempDir("lora_ref");
  const auto run = testing::RunReference("lora_ref.py", {"make", dir});
  REQUIRE(run.exit_code == 0);
  const nlohmann::json cases = testing::LastJsonLine(run.out)["cases"];
  REQUIRE(cases.size() == 8);
  std::vector<std::string> names;
  std::map<std::string, at::Tensor> our_logits;
  for (const auto& c : cases) {
    const std::string name = c["case"];
    names.push_back(name);
    INFO("case " << name);
    const std::string case_dir = dir + "/" + name;
    auto ref = LoadAll(case_dir + "/ref.safetensors");

    // 1. PEFT's saved adapter, loaded here: same modules, logits and gradients.
    auto model = LoadModel(case_dir + "/model");
    auto config = lora::LoadAdapter(model.get(), case_dir + "/peft");
    INFO(config.status().ToString());
    REQUIRE(config.ok());
    std::vector<std::string> adapted;
    for (const auto& [module, layer] : lora::Adapters(*model)) adapted.push_back("base_model.model." + module);
    std::sort(adapted.begin(), adapted.end());
    CHECK(adapted == c["adapted"].get<std::vector<std::string>>());
    const Errors e = CompareWithReference(*model, *config, ref);
    std::printf("lora %-18s %2zu adapted modules: logits rel err %.2e, worst of %zu gradients rel err %.2e\n",
                name.c_str(), adapted.size(), e.logits, e.n_grads, e.grads);
    CHECK(e.logits <= 1e-5);
    CHECK(e.grads <= 1e-4);

    // 2. Initialization: the same seed draws the same A and B as get_peft_model.
    auto fresh = LoadModel(case_dir + "/model");
    lora::LoraConfig init_config = *config;
    init_config.seed = c["seed"].get<uint64_t>();
    REQUIRE(lora::InjectLora(fresh.get(), init_config).ok());
    const auto fresh_params = lora::TrainableParameters(*fresh, init_config);
    size_t init_checked = 0;
    for (const auto& [key, value] : ref) {
      if (!absl::StartsWith(key, "init.")) continue;
      for (const auto& [k, t] : fresh_params) {
        if (k != key.substr(5)) continue;
        INFO("init " << k);
        CHECK(at::equal(t.detach(), value));
        ++init_checked;
      }
    }
    CHECK(init_checked == 2);

    // 3. Our adapter (moved off PEFT's values), saved for PEFT to load.
    {
      at::NoGradGuard no_grad;
      const at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(99);
      for (auto& [key, t] : lora::TrainableParameters(*model, *config)) {
        const_cast<at::Tensor&>(t).add_(at::randn(t.sizes(), gen) * 0.02);
      }
      lora::SetTraining(model.get(), false);
      our_logits[name] = model->Forward(ref["input_ids"], ref["attention_mask"]);
    }
    REQUIRE(lora::SaveAdapter(*model, *config, case_dir + "/ours").ok());
  }
  const auto check = testing::RunReference("lora_ref.py", [&] {
    std::vector<std::string> args = {"check", dir};
    args.insert(args.end(), names.begin(), names.end());
    return args;
  }());
  REQUIRE(check.exit_code == 0);
  for (const std::string& name : names) {
    INFO("case " << name);
    auto out = LoadAll(dir + "/" + name + "/check.safetensors");
    const double err = RelativeError(out["adapter_logits"], our_logits[name]);
    std::printf("lora %-18s our adapter in PeftModel.from_pretrained: logits rel err %.2e\n", name.c_str(), err);
    CHECK(err <= 1e-5);
  }
}

TEST_CASE("lora: QLoRA on an NF4 base matches PEFT + bitsandbytes load_in_4bit", "[lora][quant][reference]") {
  if (!testing::ReferenceStackAvailable()) return;
  const std::string dir = testing::TempDir("qlora_ref");
  const auto run = testing::RunReference("lora_ref.py", {"qlora", dir});
  REQUIRE(run.exit_code == 0);
  const nlohmann::json cases = testing::LastJsonLine(run.out)["cases"];
  REQUIRE(cases.size() == 3);
  model::DecoderOptions nf4;
  nf4.quantize_4bit = quant::Quant4Options{quant::QuantType::kNf4, 64, /*double_quant=*/true};
  std::vector<std::string> names;
  std::map<std::string, at::Tensor> base_logits;
  for (const auto& c : cases) {
    const std::string name = c["case"];
    names.push_back(name);
    INFO("case " << name);
    const std::string case_dir = dir + "/" + name;
    auto ref = LoadAll(case_dir + "/ref.safetensors");
    auto model = LoadModel(case_dir + "/model", nf4);
    for (const std::string& linear : model->LinearNames()) CHECK(model->linear(linear)->kind() == "nf4");
    auto config = lora::LoadAdapter(model.get(), case_dir + "/peft");
    REQUIRE(config.ok());
    const Errors e = CompareWithReference(*model, *config, ref);
    const at::Tensor loss = Loss(model->Forward(ref["input_ids"], ref["attention_mask"]), ref);
    const double loss_err = std::abs(loss.item<double>() - ref["loss"].item<double>()) / std::abs(ref["loss"].item<double>());
    std::printf("qlora %-18s logits rel err %.2e, loss rel err %.2e, worst of %zu LoRA gradients rel err %.2e\n",
                name.c_str(), e.logits, loss_err, e.n_grads, e.grads);
    CHECK(e.logits <= 1e-5);
    CHECK(loss_err <= 1e-5);
    CHECK(e.grads <= 1e-4);

    // transformers' own 4-bit folder loads here as 4-bit, with the very same weights.
    lora::RemoveAdapters(model.get());
    auto from_bnb = LoadModel(case_dir + "/bnb_model");
    at::NoGradGuard no_grad;
    for (const std::string& linear : model->LinearNames()) {
      const auto* a = dynamic_cast<const quant::QuantizedLinear*>(model->linear(linear).get());
      const auto* b = dynamic_cast<const quant::QuantizedLinear*>(from_bnb->linear(linear).get());
      REQUIRE(a != nullptr);
      REQUIRE(b != nullptr);
      CHECK(at::equal(a->quantized().packed, b->quantized().packed));
      CHECK(at::equal(a->quantized().state.absmax, b->quantized().state.absmax));
      CHECK(a->quantized().state.offset == b->quantized().state.offset);
    }
    base_logits[name] = model->Forward(ref["input_ids"], ref["attention_mask"]);
    CHECK(at::equal(from_bnb->Forward(ref["input_ids"], ref["attention_mask"]), base_logits[name]));

    // Ours saved 4-bit: the same tensors, byte for byte, as transformers saved.
    auto report = model::SaveHfFolder(*model, case_dir + "/ours_model", {});
    REQUIRE(report.ok());
    CHECK(report->quantized == static_cast<int64_t>(model->LinearNames().size()));
    auto ours = LoadAll(case_dir + "/ours_model/model.safetensors");
    auto theirs = LoadAll(case_dir + "/bnb_model/model.safetensors");
    size_t same = 0;
    for (const auto& [key, t] : theirs) {
      INFO("tensor " << key);
      REQUIRE(ours.count(key) == 1);
      const bool equal = ours[key].scalar_type() == t.scalar_type() && ours[key].sizes() == t.sizes() && at::equal(ours[key], t);
      CHECK(equal);
      same += equal;
    }
    CHECK(ours.size() == theirs.size());
    std::printf("qlora %-18s saved 4-bit folder: %zu of %zu tensors identical to transformers' save_pretrained\n",
                name.c_str(), same, theirs.size());
  }
  const auto check = testing::RunReference("lora_ref.py", [&] {
    std::vector<std::string> args = {"check", dir};
    args.insert(args.end(), names.begin(), names.end());
    return args;
  }());
  REQUIRE(check.exit_code == 0);
  for (const std::string& name : names) {
    auto out = LoadAll(dir + "/" + name + "/check.safetensors");
    CHECK(out["model_is_4bit"].item<int64_t>() == 1);
    const double err = RelativeError(out["model_logits"], base_logits[name]);
    std::printf("qlora %-18s our 4-bit folder in transformers (load_in_4bit): logits rel err %.2e\n", name.c_str(), err);
    CHECK(err <= 1e-5);
  }
}

}  // namespace
}  // namespace llmtrain
