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
#include <cstring>
#include <functional>
#include <limits>
#include <fstream>
#include <map>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "llmtrain/core/atomic_file.h"
#include "llmtrain/io/safetensors.h"
#include "llmtrain/io/tensors.h"
#include "llmtrain/lora/lora.h"
#include "llmtrain/model/decoder.h"
#include "llmtrain/lora/hf_folder.h"
#include "llmtrain/quant/quantized_linear.h"
#include "testing/json_util.h"
#include "testing/reference.h"
#include "testing/safetensors_util.h"
#include "testing/tensor_compare.h"

namespace llmtrain {
namespace {

using testing::LoadAll;

using testing::RelativeError;

// Folders saved 4-bit (by transformers or by us) load as 4-bit: the quant factory is the default.
std::unique_ptr<model::Decoder> LoadModel(const std::string& path, model::DecoderOptions options = {}) {
  if (!options.linear_factory) options.linear_factory = quant::QuantizedLinearFactory(std::nullopt);
  auto model = model::Decoder::Load(path, options);
  INFO(model.status().ToString());
  REQUIRE(model.ok());
  return *std::move(model);
}

lora::HfFolderOptions SaveAs(Dtype dtype) {
  lora::HfFolderOptions options;
  options.dtype = dtype;
  return options;
}

// Every tensor of `theirs` (a safetensors file) against `ours`: same names, dtypes, shapes and
// bytes, checked one by one. Returns (equal tensors, tensors of theirs).
std::pair<size_t, size_t> CompareSavedTensors(const std::string& ours_path, const std::string& theirs_path) {
  auto ours = LoadAll(ours_path);
  auto theirs = LoadAll(theirs_path);
  size_t same = 0;
  for (const auto& [key, t] : theirs) {
    INFO("tensor " << key);
    REQUIRE(ours.count(key) == 1);
    const bool equal = ours[key].scalar_type() == t.scalar_type() && ours[key].sizes() == t.sizes() && at::equal(ours[key], t);
    CHECK(equal);
    same += equal;
  }
  CHECK(ours.size() == theirs.size());
  return {same, theirs.size()};
}

// QLoRA's base: NF4, blocks of 64, double quantization (transformers' bnb_4bit settings in lora_ref.py).
quant::Quant4Options Nf4DoubleQuant() {
  quant::Quant4Options options;
  options.type = quant::QuantType::kNf4;
  options.blocksize = 64;
  options.double_quant = true;
  return options;
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

// No targets named: PEFT's default of the model's family, from the family registry; a family PEFT
// has no default for is refused; named targets are kept; an unresolved config adapts nothing.
TEST_CASE("lora: default targets come from the model's family, as PEFT resolves them", "[lora]") {
  lora::LoraConfig none;
  for (const char* type : {"qwen2", "qwen3", "gemma2", "gemma3_text"}) {
    INFO("model_type " << type);
    auto resolved = lora::WithDefaultTargets(none, type);
    REQUIRE(resolved.ok());
    CHECK(resolved->target_modules == std::vector<std::string>{"q_proj", "v_proj"});
    CHECK(lora::IsLoraTarget(*resolved, "model.layers.0.self_attn.v_proj"));
    CHECK(!lora::IsLoraTarget(*resolved, "model.layers.0.mlp.up_proj"));
  }
  // Image+text Gemma 3 (PEFT has no default): the decoder's q_proj and v_proj, not the tower's.
  auto vlm = lora::WithDefaultTargets(none, "gemma3");
  REQUIRE(vlm.ok());
  CHECK(lora::IsLoraTarget(*vlm, "model.language_model.layers.3.self_attn.q_proj"));
  CHECK(lora::IsLoraTarget(*vlm, "model.language_model.layers.0.self_attn.v_proj"));
  CHECK(!lora::IsLoraTarget(*vlm, "model.language_model.layers.0.self_attn.k_proj"));
  CHECK(!lora::IsLoraTarget(*vlm, "model.vision_tower.encoder.layers.0.self_attn.q_proj"));
  auto refused = lora::WithDefaultTargets(none, "llama");
  REQUIRE(!refused.ok());
  CHECK(refused.status().message().find("\"llama\"") != absl::string_view::npos);
  lora::LoraConfig named;
  named.target_modules = {"o_proj"};
  auto kept = lora::WithDefaultTargets(named, "gemma3");
  REQUIRE(kept.ok());
  CHECK(kept->target_modules == std::vector<std::string>{"o_proj"});
  CHECK(!lora::IsLoraTarget(none, "model.layers.0.self_attn.q_proj"));
  CHECK(nlohmann::json::parse(lora::AdapterConfigJson(none))["target_modules"].is_null());
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

    // 4a. Merge in place and unmerge (PEFT merge_adapter / unmerge_adapter): the same logits
    // merged, and the base weights back after.
    {
      at::NoGradGuard no_grad;
      std::vector<at::Tensor> before;
      for (const auto& [module, layer] : lora::Adapters(*model)) before.push_back(layer->stored_weight().clone());
      REQUIRE(lora::SetMerged(model.get(), true).ok());
      const double in_place = RelativeError(model->Forward(ref["input_ids"], ref["attention_mask"]), our_logits[name]);
      REQUIRE(lora::SetMerged(model.get(), false).ok());
      double restored = 0;
      size_t i = 0;
      for (const auto& [module, layer] : lora::Adapters(*model)) {
        restored = std::max(restored, RelativeError(layer->stored_weight(), before[i++]));
      }
      const double unmerged = RelativeError(model->Forward(ref["input_ids"], ref["attention_mask"]), our_logits[name]);
      std::printf("lora %-18s merged in place: logits rel err %.2e; unmerged: weights back to %.2e, logits %.2e\n",
                  name.c_str(), in_place, restored, unmerged);
      CHECK(in_place <= 1e-5);
      CHECK(restored <= 1e-6);
      CHECK(unmerged <= 1e-5);
    }

    // 4. Merged (PEFT merge_and_unload): the same logits, and a float32 folder transformers loads.
    REQUIRE(lora::MergeAdapters(model.get()).ok());
    CHECK(lora::Adapters(*model).empty());
    {
      at::NoGradGuard no_grad;
      const double merged_err = RelativeError(model->Forward(ref["input_ids"], ref["attention_mask"]), our_logits[name]);
      std::printf("lora %-18s merged into the weights: logits rel err %.2e vs the adapter\n", name.c_str(), merged_err);
      CHECK(merged_err <= 1e-5);
    }
    REQUIRE(lora::SaveHfFolder(*model, case_dir + "/ours_model", SaveAs(Dtype::kF32)).ok());
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
    const double merged_err = RelativeError(out["model_logits"], our_logits[name]);
    std::printf("lora %-18s our adapter in PeftModel.from_pretrained: logits rel err %.2e; our merged folder in "
                "transformers: %.2e\n", name.c_str(), err, merged_err);
    CHECK(err <= 1e-5);
    CHECK(merged_err <= 1e-5);
  }
}

TEST_CASE("lora: QLoRA on an NF4 base matches PEFT + bitsandbytes load_in_4bit", "[lora][quant][reference]") {
  if (!testing::ReferenceStackAvailable()) return;
  const std::string dir = testing::TempDir("qlora_ref");
  const auto run = testing::RunReference("lora_ref.py", {"qlora", dir});
  REQUIRE(run.exit_code == 0);
  const nlohmann::json cases = testing::LastJsonLine(run.out)["cases"];
  REQUIRE(cases.size() == 4);
  model::DecoderOptions nf4;
  nf4.linear_factory = quant::QuantizedLinearFactory(Nf4DoubleQuant());
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

    // Merged exports of the QLoRA model: bf16 (dequantized base + adapter), and re-quantized to NF4,
    // which adds rounding error against that merged model; the save reports it.
    {
      auto merged = LoadModel(case_dir + "/model", nf4);
      REQUIRE(lora::LoadAdapter(merged.get(), case_dir + "/peft").ok());
      at::NoGradGuard no_grad;
      const at::Tensor with_adapter = merged->Forward(ref["input_ids"], ref["attention_mask"]);
      const int64_t n_adapted = static_cast<int64_t>(lora::Adapters(*merged).size());
      REQUIRE(lora::MergeAdapters(merged.get()).ok());
      const at::Tensor merged_logits = merged->Forward(ref["input_ids"], ref["attention_mask"]);
      const double merge_err = RelativeError(merged_logits, with_adapter);
      CHECK(merge_err <= 1e-5);
      auto bf16 = lora::SaveHfFolder(*merged, case_dir + "/merged_bf16", SaveAs(Dtype::kBf16));
      REQUIRE(bf16.ok());
      model::DecoderOptions bf16_options;
      bf16_options.dtype = Dtype::kBf16;
      auto reloaded = LoadModel(case_dir + "/merged_bf16", bf16_options);
      const double bf16_err = RelativeError(reloaded->Forward(ref["input_ids"], ref["attention_mask"]), merged_logits);
      CHECK(bf16_err <= 3e-2);
      lora::HfFolderOptions nf4_save;
      nf4_save.quantize_4bit = Nf4DoubleQuant();
      auto requant = lora::SaveHfFolder(*merged, case_dir + "/merged_nf4", nf4_save);
      REQUIRE(requant.ok());
      CHECK(requant->requantized == n_adapted);  // the merged ones; the others were 4-bit already
      CHECK(requant->quantized == static_cast<int64_t>(merged->LinearNames().size()));
      auto requantized = LoadModel(case_dir + "/merged_nf4");
      const double requant_err = RelativeError(requantized->Forward(ref["input_ids"], ref["attention_mask"]), merged_logits);
      std::printf("qlora %-18s merged: logits rel err %.2e vs base + adapter; bf16 folder %.2e; re-quantized to NF4: "
                  "weight rel err %.3f, logits rel err %.3f\n", name.c_str(), merge_err, bf16_err,
                  requant->requantize_rel_error, requant_err);
      // The error the re-quantization reports, against bitsandbytes quantizing the same merged
      // float32 weights itself (quantize_4bit → dequantize_4bit, NF4, blocks of 64, double
      // quantization): our quantizer writes bitsandbytes' bytes, so only the float64 sums differ.
      REQUIRE(lora::SaveHfFolder(*merged, case_dir + "/merged_f32", SaveAs(Dtype::kF32)).ok());
      const auto requant_ref = testing::RunReference("lora_ref.py", {"requant", dir, name});
      REQUIRE(requant_ref.exit_code == 0);
      const nlohmann::json theirs = testing::LastJsonLine(requant_ref.out);
      CHECK(theirs["projections"].get<int64_t>() == n_adapted);
      const double theirs_err = theirs["requant_rel_error"].get<double>();
      std::printf("qlora %-18s re-quantization error: ours %.6f, bitsandbytes on the same merged weights %.6f\n",
                  name.c_str(), requant->requantize_rel_error, theirs_err);
      CHECK(std::abs(requant->requantize_rel_error - theirs_err) <= 1e-6 * theirs_err);
      CHECK(requant->requantize_rel_error > 0.0);
    }

    // LoRA weights in bf16 on the 4-bit base: they stay bf16, get bf16 gradients, and compute what
    // the float32 adapter computes up to bf16 rounding of A and B.
    {
      auto bf16_model = LoadModel(case_dir + "/model", nf4);
      lora::LoraConfig bf16_config = *config;
      bf16_config.dtype = Dtype::kBf16;
      REQUIRE(lora::InjectLora(bf16_model.get(), bf16_config).ok());
      {
        at::NoGradGuard no_grad;
        const auto f32_params = lora::TrainableParameters(*model, *config);
        const auto bf16_params = lora::TrainableParameters(*bf16_model, bf16_config);
        REQUIRE(f32_params.size() == bf16_params.size());
        for (size_t i = 0; i < f32_params.size(); ++i) {
          const_cast<at::Tensor&>(bf16_params[i].second).copy_(f32_params[i].second);
        }
      }
      const at::Tensor logits = bf16_model->Forward(ref["input_ids"], ref["attention_mask"]);
      Loss(logits, ref).backward();
      for (const auto& [key, t] : lora::TrainableParameters(*bf16_model, bf16_config)) {
        CHECK(t.scalar_type() == at::kBFloat16);
        CHECK(t.grad().scalar_type() == at::kBFloat16);
      }
      const double bf16_err = RelativeError(logits.detach(), ref["logits"]);
      std::printf("qlora %-18s LoRA weights in bf16: logits rel err %.2e vs the float32 adapter\n", name.c_str(), bf16_err);
      CHECK(bf16_err <= 2e-2);
    }

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
    auto report = lora::SaveHfFolder(*model, case_dir + "/ours_model", {});
    REQUIRE(report.ok());
    CHECK(report->quantized == static_cast<int64_t>(model->LinearNames().size()));
    const auto [same, total] = CompareSavedTensors(case_dir + "/ours_model/model.safetensors",
                                                   case_dir + "/bnb_model/model.safetensors");
    std::printf("qlora %-18s saved 4-bit folder: %zu of %zu tensors identical to transformers' save_pretrained\n",
                name.c_str(), same, total);
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

// Writes `tensors` with `config_from`'s config.json into a new folder.
std::string WriteFolder(const std::string& dir, const std::map<std::string, at::Tensor>& tensors,
                        const std::string& config_from) {
  REQUIRE(MakeDirectories(dir).ok());
  std::vector<std::pair<std::string, at::Tensor>> list(tensors.begin(), tensors.end());
  REQUIRE(io::SaveSafetensors(dir + "/model.safetensors", list).ok());
  auto config = ReadFileToString(config_from + "/config.json");
  REQUIRE(config.ok());
  REQUIRE(WriteFileAtomically(dir + "/config.json", *config).ok());
  return dir;
}

TEST_CASE("lora: adapters that do not fit and corrupted quant states are refused by name", "[lora][reference]") {
  if (!testing::ReferenceStackAvailable()) return;
  const std::string dir = testing::TempDir("lora_bad");
  // Reuses the reference cases' files when the earlier tests made them; else makes them.
  const auto run = testing::RunReference("lora_ref.py", {"make", dir});
  REQUIRE(run.exit_code == 0);
  const auto run4 = testing::RunReference("lora_ref.py", {"qlora", dir});
  REQUIRE(run4.exit_code == 0);
  const auto message = [](const absl::Status& status) { return std::string(status.message()); };

  SECTION("a rank that differs from the tensors names the module") {
    const std::string adapter = dir + "/bad_rank";
    REQUIRE(MakeDirectories(adapter).ok());
    auto text = ReadFileToString(dir + "/qwen3_dora/peft/adapter_config.json");
    REQUIRE(text.ok());
    REQUIRE(WriteFileAtomically(adapter + "/adapter_config.json",
                                absl::StrReplaceAll(*text, {{"\"r\": 4", "\"r\": 8"}})).ok());
    auto weights = ReadFileToString(dir + "/qwen3_dora/peft/adapter_model.safetensors");
    REQUIRE(WriteFileAtomically(adapter + "/adapter_model.safetensors", *weights).ok());
    auto model = LoadModel(dir + "/qwen3_dora/model");
    auto loaded = lora::LoadAdapter(model.get(), adapter);
    REQUIRE(!loaded.ok());
    CHECK_THAT(message(loaded.status()), Catch::Contains("module model.layers.0.mlp.gate_proj: lora_A.weight has shape [4, 48], "
                                                         "but rank 8 on this 48 → 96 projection needs [8, 48]"));
    CHECK(lora::Adapters(*model).empty());  // nothing injected
  }
  SECTION("an adapter of another base model names the module") {
    auto model = LoadModel(dir + "/gemma2_lora/model");
    auto loaded = lora::LoadAdapter(model.get(), dir + "/qwen3_dora/peft");
    REQUIRE(!loaded.ok());
    CHECK_THAT(message(loaded.status()), Catch::Contains("module model.layers.0.mlp.gate_proj: lora_A.weight has shape [4, 48]"));
  }
  SECTION("a module the model lacks is named") {
    auto model = LoadModel(dir + "/gemma2_lora/model");  // 3 layers
    auto loaded = lora::LoadAdapter(model.get(), dir + "/gemma3_text_dora/peft");  // 4 layers
    REQUIRE(!loaded.ok());
    CHECK_THAT(message(loaded.status()), Catch::Contains("module model.layers.3."));
    CHECK_THAT(message(loaded.status()), Catch::Contains("has no such projection"));
  }
  SECTION("a corrupted quant state is refused, naming the tensor") {
    const std::string good = dir + "/qwen2_qlora/bnb_model";
    auto tensors = LoadAll(good + "/model.safetensors");
    const std::string key = "model.layers.1.mlp.up_proj.weight";
    struct Corruption {
      std::string what, tensor, expect;
      std::function<at::Tensor(const at::Tensor&)> change;
    };
    const auto json_bytes = [](const std::string& text) {
      at::Tensor t = at::empty({static_cast<int64_t>(text.size())}, at::kByte);
      std::memcpy(t.data_ptr(), text.data(), text.size());
      return t;
    };
    const std::string state_key = key + ".quant_state.bitsandbytes__nf4";
    const std::string state(static_cast<const char*>(tensors[state_key].data_ptr()), tensors[state_key].numel());
    const std::vector<Corruption> corruptions = {
        {"blocksize", state_key, "blocksize must be one of",
         [&](const at::Tensor&) { return json_bytes(absl::StrReplaceAll(state, {{"\"blocksize\": 64", "\"blocksize\": 48"}})); }},
        {"shape", state_key, "has shape [64, 128], but the config needs [128, 64]",
         [&](const at::Tensor&) { return json_bytes(absl::StrReplaceAll(state, {{"[128, 64]", "[64, 128]"}})); }},
        {"numel", state_key, "expected 8192 uint8 bytes for shape [128,128], found 4096",
         [&](const at::Tensor&) { return json_bytes(absl::StrReplaceAll(state, {{"[128, 64]", "[128, 128]"}})); }},
        {"json", state_key, "not a JSON object", [&](const at::Tensor&) { return json_bytes("{\"quant_type\": "); }},
        {"absmax length", key + ".absmax", "absmax: expected 128 uint8 codes",
         [](const at::Tensor& t) { return t.narrow(0, 0, t.numel() - 1).clone(); }},
        {"packed length", key, "expected 4096 uint8 bytes", [](const at::Tensor& t) { return t.narrow(0, 0, 100).clone(); }},
        {"nested absmax", key + ".nested_absmax", "block scales are not all finite",
         [](const at::Tensor& t) { return at::full_like(t, std::numeric_limits<float>::infinity()); }},
    };
    for (const Corruption& c : corruptions) {
      INFO("corruption " << c.what);
      auto changed = tensors;
      changed[c.tensor] = c.change(tensors[c.tensor]);
      const std::string folder = WriteFolder(dir + "/corrupt_" + absl::StrReplaceAll(c.what, {{" ", "_"}}), changed, good);
      model::DecoderOptions options;
      options.linear_factory = quant::QuantizedLinearFactory(std::nullopt);  // reads the 4-bit state
      auto model = model::Decoder::Load(folder, options);
      REQUIRE(!model.ok());
      CHECK_THAT(message(model.status()), Catch::Contains(c.expect));
      CHECK_THAT(message(model.status()), Catch::Contains("up_proj"));
    }
  }
}

TEST_CASE("lora: CLI quantize, merge, and forward/generate with --adapter and --load-in-4bit", "[lora][cli][reference]") {
  if (!testing::ReferenceStackAvailable()) return;
  const std::string dir = testing::TempDir("lora_cli");
  REQUIRE(testing::RunReference("lora_ref.py", {"make", dir}).exit_code == 0);
  REQUIRE(testing::RunReference("lora_ref.py", {"qlora", dir}).exit_code == 0);
  const std::string cli = testing::CliPath();
  const auto q = [](const std::string& s) { return testing::ShellQuote(s); };
  const auto logits_of = [&](const std::string& args) {
    const std::string out = dir + "/logits.safetensors";
    const auto run = testing::RunCommand(absl::StrCat(cli, " forward ", args, " --output ", q(out), " 2>&1"));
    INFO(run.out);
    REQUIRE(run.exit_code == 0);
    return LoadAll(out)["logits"];
  };

  const std::string lora_case = dir + "/qwen2_dora";
  auto ref = LoadAll(lora_case + "/ref.safetensors");
  // forward --adapter: PEFT's adapter gives PEFT's logits.
  const double adapter_err = RelativeError(
      logits_of(absl::StrCat("--model ", q(lora_case + "/model"), " --adapter ", q(lora_case + "/peft"), " --input ",
                             q(lora_case + "/ref.safetensors"))), ref["logits"]);
  CHECK(adapter_err <= 1e-5);
  // forward --load-in-4bit --adapter: the QLoRA model's logits.
  const std::string qlora_case = dir + "/gemma3_text_qlora";
  auto qref = LoadAll(qlora_case + "/ref.safetensors");
  const double qlora_err = RelativeError(
      logits_of(absl::StrCat("--model ", q(qlora_case + "/model"), " --load-in-4bit --adapter ", q(qlora_case + "/peft"),
                             " --input ", q(qlora_case + "/ref.safetensors"))), qref["logits"]);
  CHECK(qlora_err <= 1e-5);

  // merge: a float32 folder with the adapter's logits; re-quantized, with the error reported.
  auto merge = testing::RunCommand(absl::StrCat(cli, " merge --model ", q(lora_case + "/model"), " --adapter ",
                                                q(lora_case + "/peft"), " --output ", q(dir + "/merged"), " --dtype f32 2>&1"));
  INFO(merge.out);
  REQUIRE(merge.exit_code == 0);
  CHECK_THAT(merge.out, Catch::Contains("9 adapted projections merged"));
  const double merged_err = RelativeError(logits_of(absl::StrCat("--model ", q(dir + "/merged"), " --input ",
                                                                 q(lora_case + "/ref.safetensors"))), ref["logits"]);
  CHECK(merged_err <= 1e-5);
  auto requant = testing::RunCommand(absl::StrCat(cli, " merge --model ", q(qlora_case + "/model"), " --load-in-4bit --adapter ",
                                                  q(qlora_case + "/peft"), " --output ", q(dir + "/merged_nf4"),
                                                  " --requantize nf4 2>&1"));
  INFO(requant.out);
  REQUIRE(requant.exit_code == 0);
  CHECK_THAT(requant.out, Catch::Contains("re-quantized 28 merged projections to nf4: weight error"));

  // quantize: nf4 / fp4 folders our loader reads 4-bit; int8 a folder transformers loads 8-bit.
  for (const std::string method : {"nf4", "fp4"}) {
    auto run = testing::RunCommand(absl::StrCat(cli, " quantize --model ", q(lora_case + "/model"), " --output ",
                                                q(dir + "/q_" + method), " --method ", method, " --double-quant --dtype f32 2>&1"));
    INFO(run.out);
    REQUIRE(run.exit_code == 0);
    CHECK_THAT(run.out, Catch::Contains("21 projections to " + method + " (blocks of 64, double quantization)"));
    auto loaded = LoadModel(dir + "/q_" + method);
    for (const std::string& name : loaded->LinearNames()) CHECK(loaded->linear(name)->kind() == method);
  }
  auto int8 = testing::RunCommand(absl::StrCat(cli, " quantize --model ", q(lora_case + "/model"), " --output ",
                                               q(lora_case + "/ours_int8"), " --method int8 --dtype f32 2>&1"));
  INFO(int8.out);
  REQUIRE(int8.exit_code == 0);
  REQUIRE(testing::RunReference("lora_ref.py", {"check", dir, "qwen2_dora"}).exit_code == 0);
  auto check = LoadAll(lora_case + "/check.safetensors");
  CHECK(check["int8_is_8bit"].item<int64_t>() == 1);
  auto dense = LoadModel(lora_case + "/model");
  at::Tensor dense_logits;
  {
    at::NoGradGuard no_grad;
    dense_logits = dense->Forward(ref["input_ids"], ref["attention_mask"]);
  }
  const double int8_err = RelativeError(check["int8_logits"], dense_logits);
  std::printf("lora cli: forward --adapter rel err %.2e; --load-in-4bit --adapter %.2e; merged folder %.2e; "
              "int8 folder in transformers (load_in_8bit) vs dense logits %.2e\n",
              adapter_err, qlora_err, merged_err, int8_err);
  CHECK(int8_err <= 0.05);

  // generate --load-in-4bit --adapter: the ids PEFT's greedy generate gives on transformers'
  // load_in_4bit model with the same adapter.
  auto gen = testing::RunCommand(absl::StrCat(cli, " generate --model ", q(qlora_case + "/model"), " --load-in-4bit --adapter ",
                                              q(qlora_case + "/peft"), " --input-ids '[1, 5, 9, 17]' --max-new-tokens 12 --json"));
  INFO(gen.out);
  REQUIRE(gen.exit_code == 0);
  const std::vector<int64_t> ours_ids = testing::LastJsonLine(gen.out)["ids"].get<std::vector<int64_t>>();
  const auto peft_gen = testing::RunReference("lora_ref.py", {"generate", dir, "gemma3_text_qlora", "[1, 5, 9, 17]", "12"});
  REQUIRE(peft_gen.exit_code == 0);
  const std::vector<int64_t> peft_ids = testing::LastJsonLine(peft_gen.out)["ids"].get<std::vector<int64_t>>();
  std::printf("lora cli: generate --load-in-4bit --adapter: %zu new ids, PEFT's greedy generate %zu, %s\n",
              ours_ids.size(), peft_ids.size(), ours_ids == peft_ids ? "equal" : "different");
  CHECK(ours_ids == peft_ids);

  // quantize without --dtype follows the float32 checkpoint, as transformers' from_pretrained(
  // load_in_4bit) does: the 4-bit tensors equal those transformers + bitsandbytes saved, byte for byte.
  auto default_dtype = testing::RunCommand(absl::StrCat(cli, " quantize --model ", q(qlora_case + "/model"), " --output ",
                                                        q(dir + "/q_default"), " --method nf4 --double-quant 2>&1"));
  INFO(default_dtype.out);
  REQUIRE(default_dtype.exit_code == 0);
  const auto [same_q, total_q] = CompareSavedTensors(dir + "/q_default/model.safetensors",
                                                     qlora_case + "/bnb_model/model.safetensors");
  std::printf("lora cli: quantize (default dtype) of a float32 checkpoint: %zu of %zu tensors equal transformers' "
              "load_in_4bit save\n", same_q, total_q);
}

}  // namespace
}  // namespace llmtrain
