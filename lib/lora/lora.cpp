// LoRA / DoRA over the decoder's projections (lora/lora.h). Each step cites the PEFT 0.21.2 code
// whose numbers it reproduces; tests/lora/ compares against PEFT at test time.
#include "llmtrain/lora/lora.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/grad_mode.h>
#include <ATen/record_function.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <cmath>
#include <regex>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "llmtrain/core/atomic_file.h"
#include "llmtrain/core/status.h"
#include "llmtrain/io/safetensors.h"
#include "llmtrain/io/tensors.h"
#include "llmtrain/quant/quantized_linear.h"
#include "nlohmann/json.hpp"

namespace llmtrain::lora {
namespace {

constexpr absl::string_view kPrefix = "base_model.model.";

// kaiming_uniform_(w, a = √5) on (rows, fan_in), with the bound computed in the order torch's
// init.py does it, so the same generator state gives the same values.
void KaimingUniform(at::Tensor& w, at::Generator* generator) {
  const double a = std::sqrt(5.0);
  const double gain = std::sqrt(2.0 / (1.0 + std::pow(a, 2)));
  const double std_dev = gain / std::sqrt(static_cast<double>(w.size(1)));
  const double bound = std::sqrt(3.0) * std_dev;
  w.uniform_(-bound, bound, *generator);
}

// Module names of the decoder's non-projection tensors ("model.norm" for "model.norm.weight").
std::string ModuleOf(const std::string& param) {
  const size_t dot = param.rfind('.');
  return dot == std::string::npos ? param : param.substr(0, dot);
}

std::string Shape(at::IntArrayRef s) {
  return absl::StrCat("[", absl::StrJoin(s, ", "), "]");
}

}  // namespace

LoraLinear::LoraLinear(std::shared_ptr<model::Linear> base, int64_t r, double alpha, const LoraConfig& config,
                       c10::ScalarType compute_dtype, at::Generator* generator)
    : base_(std::move(base)), r_(r), dropout_(config.dropout), use_dora_(config.use_dora) {
  TORCH_CHECK(r > 0, "LoRA rank must be positive, got ", r);
  // layer.py update_layer: s = alpha / r, or alpha / √r with rsLoRA (a Python float).
  scaling_ = config.use_rslora ? alpha / std::sqrt(static_cast<double>(r)) : alpha / static_cast<double>(r);
  const int64_t in = base_->in_features(), out = base_->out_features();
  // nn.Linear's constructors draw A then B (kaiming); reset_lora_parameters then redraws A.
  at::Tensor a = at::empty({r, in}, at::kFloat), b = at::empty({out, r}, at::kFloat);
  KaimingUniform(a, generator);
  KaimingUniform(b, generator);
  if (config.init == InitMode::kDefault) {
    KaimingUniform(a, generator);
    b.zero_();
  } else if (config.init == InitMode::kGaussian) {
    a.normal_(0.0, 1.0 / static_cast<double>(r), *generator);
    b.zero_();
  }
  // The adapter is created in the base layer's dtype, then cast to its own (PEFT's
  // _move_adapter_to_device_of_base_layer, then autocast_adapter_dtype).
  const c10::ScalarType dtype = io::ToScalarType(config.dtype);
  a = a.to(compute_dtype);
  b = b.to(compute_dtype);
  if (use_dora_) {
    // dora.py update_layer: m = ‖W + s·(B @ A)‖ over each output row, in the base dtype.
    // The base's dtype: the stored weight's, a 4-bit weight's original one, else (a packed GGUF
    // base, whose blocks have no float dtype) the model's.
    const auto* four_bit = dynamic_cast<const quant::QuantizedLinear*>(base_.get());
    const c10::ScalarType base_dtype = base_->stored_weight().defined() ? base_->stored_weight().scalar_type()
                                       : four_bit != nullptr        ? four_bit->quantized().state.dtype
                                                                    : compute_dtype;
    const at::Tensor w = base_->DenseWeight(base_dtype);
    const at::Tensor lora_weight = at::mm(b.to(w.scalar_type()), a.to(w.scalar_type()));
    const at::Tensor sum = w + scaling_ * lora_weight;
    m_ = at::linalg_vector_norm(sum, 2, {1}).to(sum.scalar_type()).to(dtype).requires_grad_(true);
  }
  a_ = a.to(dtype).requires_grad_(true);
  b_ = b.to(dtype).requires_grad_(true);
}

void LoraLinear::AppendTrainable(std::vector<at::Tensor>* out) const {
  base_->AppendTrainable(out);
  out->push_back(a_);
  out->push_back(b_);
  if (m_.defined()) out->push_back(m_);
}

at::Tensor LoraLinear::Forward(const at::Tensor& x) const {
  at::Tensor result = base_->Forward(x);
  if (merged_) return result;
  RECORD_FUNCTION("llmtrain::lora_adapter", std::vector<c10::IValue>());
  const c10::ScalarType result_dtype = result.scalar_type();
  // A 4-bit base follows peft's bnb.Linear4bit: the adapter's term is cast to the result dtype
  // before the add. A dense base follows lora.Linear: add (promoting), then cast once.
  const bool four_bit = !base_->stored_weight().defined();
  at::Tensor xl = x.scalar_type() == a_.scalar_type() ? x : x.to(a_.scalar_type());
  const bool drop = training_ && dropout_ > 0.0;
  if (!use_dora_) {
    const at::Tensor xd = drop ? at::dropout(xl, dropout_, /*train=*/true) : xl;
    const at::Tensor lora = at::linear(at::linear(xd, a_), b_) * scaling_;
    return four_bit ? result + lora.to(result_dtype) : (result + lora).to(result_dtype);
  }
  // variants.py DoraLinearVariant.forward + dora.py DoraLinearLayer.forward.
  at::Tensor base_result;
  if (!drop) {
    base_result = result;
  } else {
    xl = at::dropout(xl, dropout_, /*train=*/true);
  }
  const c10::ScalarType xdt = xl.scalar_type();
  const at::Tensor lora_weight = at::mm(b_, a_).to(xdt);
  const at::Tensor w = base_->DenseWeight(xdt);
  const at::Tensor weight_norm =
      at::linalg_vector_norm(w + scaling_ * lora_weight.detach(), 2, {1}).to(xdt).detach();
  const at::Tensor mag_norm_scale = (m_ / weight_norm).view({1, -1});
  const at::Tensor lora_result = at::linear(at::linear(xl, a_), b_);
  if (base_result.defined()) {
    if (base_->bias().defined()) base_result = base_result - base_->bias();
  } else {
    base_result = at::linear(xl, w);
  }
  const at::Tensor dora = (mag_norm_scale - 1) * base_result + mag_norm_scale * lora_result * scaling_;
  return (result + dora).to(result_dtype);
}

absl::Status LoraLinear::Merge() {
  if (merged_) return absl::FailedPreconditionError("the adapter is merged already");
  at::Tensor w = base_->stored_weight();
  if (!w.defined()) {
    return absl::FailedPreconditionError(
        "a 4-bit base cannot take the adapter in place; use MergeAdapters (dequantize + merge)");
  }
  at::NoGradGuard no_grad;
  const at::Tensor delta = DeltaWeight();
  if (!use_dora_) {
    // layer.py merge: W += ΔW (a float32 ΔW is added in float32, then rounded to W's dtype).
    w.copy_(w.to(at::kFloat) + delta);
  } else {
    // variants.py merge: the row norm of the unmerged W + ΔW, kept for Unmerge.
    const at::Tensor sum = w.to(at::kFloat) + delta;
    merge_norm_ = at::linalg_vector_norm(sum, 2, {1});
    w.copy_((m_.detach().to(at::kFloat) / merge_norm_).view({-1, 1}) * sum);
  }
  merged_ = true;
  return absl::OkStatus();
}

absl::Status LoraLinear::Unmerge() {
  if (!merged_) return absl::FailedPreconditionError("the adapter is not merged");
  at::Tensor w = base_->stored_weight();
  at::NoGradGuard no_grad;
  const at::Tensor delta = DeltaWeight();
  if (!use_dora_) {
    w.sub_(delta.to(w.scalar_type()));  // layer.py unmerge: ΔW rounded to W's dtype first
  } else {
    const at::Tensor factor = (m_.detach().to(at::kFloat) / merge_norm_).view({-1, 1});
    w.copy_(w.to(at::kFloat) / factor - delta);
    merge_norm_ = at::Tensor();
  }
  merged_ = false;
  return absl::OkStatus();
}

at::Tensor LoraLinear::DeltaWeight() const {
  return at::mm(b_.detach().to(at::kFloat), a_.detach().to(at::kFloat)) * scaling_;
}

at::Tensor LoraLinear::MergedWeight(c10::ScalarType dtype) const {
  const at::Tensor w = base_->DenseWeight(at::kFloat);
  const at::Tensor merged = w + DeltaWeight();
  if (!use_dora_) return merged.to(dtype);
  // variants.py merge_safe: the factor m / ‖W + ΔW‖ per output row.
  const at::Tensor norm = at::linalg_vector_norm(merged, 2, {1});
  return ((m_.detach().to(at::kFloat) / norm).view({-1, 1}) * merged).to(dtype);
}

absl::StatusOr<std::vector<std::string>> InjectLora(model::Decoder* model, const LoraConfig& given) {
  if (absl::Status valid = Validate(given); !valid.ok()) return valid;
  LLMTRAIN_ASSIGN_OR_RETURN(const LoraConfig config, WithDefaultTargets(given, model->config().model_type));
  if (config.r <= 0) return absl::InvalidArgumentError(absl::StrCat("r: must be positive, got ", config.r));
  if (config.dropout < 0.0 || config.dropout >= 1.0) {
    return absl::InvalidArgumentError(absl::StrCat("lora_dropout: must be in [0, 1), got ", config.dropout));
  }
  if (config.dtype != Dtype::kF32 && config.dtype != Dtype::kBf16) {
    return absl::InvalidArgumentError("LoRA dtype: must be f32 or bf16");
  }
  std::vector<std::string> targeted;
  at::Generator generator = at::make_generator<at::CPUGeneratorImpl>(config.seed);
  const c10::ScalarType compute = io::ToScalarType(model->dtype());
  try {
    for (const std::string& name : model->LinearNames()) {
      if (!IsLoraTarget(config, name)) continue;
      std::shared_ptr<model::Linear> base = model->linear(name);
      if (dynamic_cast<const LoraLinear*>(base.get()) != nullptr) {
        return absl::FailedPreconditionError(absl::StrCat(name, ": already has an adapter"));
      }
      const auto [r, alpha] = RankAndAlpha(config, name);
      if (r <= 0) return absl::InvalidArgumentError(absl::StrCat("rank_pattern: rank ", r, " for ", name));
      auto layer = std::make_shared<LoraLinear>(base, r, alpha, config, compute, &generator);
      LLMTRAIN_RETURN_IF_ERROR(model->ReplaceLinear(name, std::move(layer)));
      targeted.push_back(name);
    }
  } catch (...) {
    return StatusFromCurrentException("injecting LoRA");
  }
  if (targeted.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "target_modules: ",
        config.target_regex ? *config.target_regex : absl::StrJoin(config.target_modules, ", "),
        " matches none of the model's projections (e.g. ", model->LinearNames().front(), ")"));
  }
  // modules_to_save: matched as PEFT does (the module name ends with the entry), trained in full.
  for (const std::string& m : config.modules_to_save) {
    bool found = false;
    for (const auto& [name, tensor] : model->named_parameters()) {
      if (!InModuleToSave(name, m)) continue;
      const_cast<at::Tensor&>(tensor).requires_grad_(true);
      found = true;
    }
    if (!found) {
      return absl::InvalidArgumentError(absl::StrCat(
          "modules_to_save: \"", m, "\" names no module of this model",
          m == "lm_head" ? " (its head is tied to model.embed_tokens; save embed_tokens)" : ""));
    }
  }
  return targeted;
}

std::vector<std::pair<std::string, std::shared_ptr<LoraLinear>>> Adapters(const model::Decoder& model) {
  std::vector<std::pair<std::string, std::shared_ptr<LoraLinear>>> out;
  for (const std::string& name : model.LinearNames()) {
    if (auto lora = std::dynamic_pointer_cast<LoraLinear>(model.linear(name))) out.emplace_back(name, lora);
  }
  return out;
}

std::vector<std::pair<std::string, at::Tensor>> TrainableParameters(const model::Decoder& model,
                                                                    const LoraConfig& config) {
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (const auto& [name, lora] : Adapters(model)) {
    const std::string key = absl::StrCat(kPrefix, name);
    out.emplace_back(key + ".lora_A.weight", lora->lora_A());
    out.emplace_back(key + ".lora_B.weight", lora->lora_B());
    if (lora->use_dora()) out.emplace_back(key + ".lora_magnitude_vector", lora->magnitude());
  }
  for (const auto& [name, tensor] : model.named_parameters()) {
    if (std::any_of(config.modules_to_save.begin(), config.modules_to_save.end(),
                    [&](const std::string& m) { return InModuleToSave(name, m); })) {
      out.emplace_back(absl::StrCat(kPrefix, name), tensor);
    }
  }
  return out;
}

void SetTraining(model::Decoder* model, bool training) {
  for (auto& [name, lora] : Adapters(*model)) lora->set_training(training);
}

absl::Status SaveAdapter(const model::Decoder& model, const LoraConfig& given, absl::string_view dir_view) {
  const std::string dir(dir_view);
  // adapter_config.json names the targets PEFT resolved, as PEFT writes it.
  LLMTRAIN_ASSIGN_OR_RETURN(const LoraConfig config, WithDefaultTargets(given, model.config().model_type));
  LLMTRAIN_RETURN_IF_ERROR(MakeDirectories(dir));
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  for (auto& [key, tensor] : TrainableParameters(model, config)) tensors.emplace_back(key, tensor.detach());
  if (tensors.empty()) return absl::FailedPreconditionError("the model has no LoRA adapter to save");
  LLMTRAIN_RETURN_IF_ERROR(io::SaveSafetensors(dir + "/adapter_model.safetensors", tensors, {{"format", "pt"}}));
  return WriteFileAtomically(dir + "/adapter_config.json", AdapterConfigJson(config) + "\n");
}

absl::StatusOr<LoraConfig> LoadAdapter(model::Decoder* model, absl::string_view dir_view) {
  const std::string dir(dir_view);
  const std::string config_path = dir + "/adapter_config.json";
  const std::string weights_path = dir + "/adapter_model.safetensors";
  LLMTRAIN_ASSIGN_OR_RETURN(std::string text, ReadFileToString(config_path));
  LLMTRAIN_ASSIGN_OR_RETURN(LoraConfig parsed, ParseAdapterConfig(config_path, text));
  LLMTRAIN_ASSIGN_OR_RETURN(LoraConfig config, WithDefaultTargets(std::move(parsed), model->config().model_type));
  LLMTRAIN_ASSIGN_OR_RETURN(auto file, io::SafetensorsFile::Open(weights_path));
  // Every tensor must belong to an adapted module or a module to save, with the shape the model
  // gives it. Check them all before injecting, so a bad adapter leaves the model untouched.
  const std::vector<std::string> linears = model->LinearNames();
  std::map<std::string, std::map<std::string, at::Tensor>> by_module;  // module → part → tensor
  std::vector<std::pair<int64_t, at::Tensor>> saved;                   // parameter index → value
  for (const io::TensorInfo& info : file->tensors()) {
    const std::string& key = info.name;
    if (!absl::StartsWith(key, kPrefix)) {
      return absl::InvalidArgumentError(absl::StrCat(weights_path, ": tensor \"", key, "\" does not start with \"",
                                                     kPrefix, "\" (not a PEFT adapter?)"));
    }
    const std::string rest = key.substr(kPrefix.size());
    bool matched = false;
    for (const char* part : {".lora_A.weight", ".lora_B.weight", ".lora_magnitude_vector"}) {
      if (absl::EndsWith(rest, part)) {
        const std::string module = rest.substr(0, rest.size() - std::strlen(part));
        if (std::find(linears.begin(), linears.end(), module) == linears.end()) {
          return absl::InvalidArgumentError(absl::StrCat(
              weights_path, ": module ", module, " is adapted, but this ", model->spec().model_type,
              " model has no such projection (an adapter for another base model?)"));
        }
        by_module[module][part] = io::TensorView(*file, info);
        matched = true;
      }
    }
    if (matched) continue;
    const int64_t index = model->FindParameter(rest);
    if (index < 0) {
      return absl::InvalidArgumentError(absl::StrCat(weights_path, ": tensor \"", key,
                                                     "\" is neither a LoRA weight nor a tensor of this model"));
    }
    const at::Tensor& target = model->named_parameters()[index].second;
    const at::Tensor value = io::TensorView(*file, info);
    if (value.sizes() != target.sizes()) {
      return absl::InvalidArgumentError(absl::StrCat(weights_path, ": module ", ModuleOf(rest), ": \"", key,
                                                     "\" has shape ", Shape(value.sizes()), ", the model needs ",
                                                     Shape(target.sizes())));
    }
    saved.emplace_back(index, value);
  }
  if (by_module.empty()) return absl::InvalidArgumentError(absl::StrCat(weights_path, ": no LoRA tensors"));
  for (const auto& [module, parts] : by_module) {
    const std::shared_ptr<model::Linear> layer = model->linear(module);
    const auto [r, alpha] = RankAndAlpha(config, module);
    const std::map<std::string, std::vector<int64_t>> want = {
        {".lora_A.weight", {r, layer->in_features()}},
        {".lora_B.weight", {layer->out_features(), r}},
        {".lora_magnitude_vector", {layer->out_features()}}};
    for (const auto& [part, shape] : want) {
      const auto it = parts.find(part);
      const bool needed = part != ".lora_magnitude_vector" || config.use_dora;
      if (it == parts.end()) {
        if (needed) return absl::InvalidArgumentError(absl::StrCat(weights_path, ": module ", module, ": no ", part.substr(1)));
        continue;
      }
      if (!needed) {
        return absl::InvalidArgumentError(absl::StrCat(weights_path, ": module ", module,
                                                       ": has a DoRA magnitude but use_dora is false"));
      }
      if (it->second.sizes() != at::IntArrayRef(shape)) {
        return absl::InvalidArgumentError(absl::StrCat(
            weights_path, ": module ", module, ": ", part.substr(1), " has shape ", Shape(it->second.sizes()),
            ", but rank ", r, " on this ", layer->in_features(), " → ", layer->out_features(),
            " projection needs ", Shape(shape)));
      }
    }
  }
  // The config's targets must be exactly the modules the file adapts.
  config.init = InitMode::kDefault;
  LLMTRAIN_ASSIGN_OR_RETURN(std::vector<std::string> targeted, InjectLora(model, config));
  for (const std::string& module : targeted) {
    if (by_module.count(module) == 0) {
      RemoveAdapters(model);
      return absl::InvalidArgumentError(absl::StrCat(weights_path, ": module ", module,
                                                     " is a target of adapter_config.json but has no weights"));
    }
  }
  for (const auto& [module, parts] : by_module) {
    auto lora = std::dynamic_pointer_cast<LoraLinear>(model->linear(module));
    if (lora == nullptr) {
      RemoveAdapters(model);
      return absl::InvalidArgumentError(absl::StrCat(weights_path, ": module ", module,
                                                     " has weights but adapter_config.json does not target it"));
    }
    at::NoGradGuard no_grad;
    lora->lora_A().copy_(parts.at(".lora_A.weight"));
    lora->lora_B().copy_(parts.at(".lora_B.weight"));
    if (config.use_dora) lora->magnitude().copy_(parts.at(".lora_magnitude_vector"));
  }
  {
    at::NoGradGuard no_grad;
    for (const auto& [index, value] : saved) const_cast<at::Tensor&>(model->named_parameters()[index].second).copy_(value);
  }
  return config;
}

absl::Status MergeAdapters(model::Decoder* model) {
  const c10::ScalarType dtype = io::ToScalarType(model->dtype());
  try {
    LLMTRAIN_RETURN_IF_ERROR(SetMerged(model, false));
    for (const auto& [name, lora] : Adapters(*model)) {
      auto merged = std::make_shared<model::DenseLinear>(lora->MergedWeight(dtype), lora->bias());
      LLMTRAIN_RETURN_IF_ERROR(model->ReplaceLinear(name, std::move(merged)));
    }
  } catch (...) {
    return StatusFromCurrentException("merging adapters");
  }
  return absl::OkStatus();
}

absl::Status SetMerged(model::Decoder* model, bool merged) {
  for (const auto& [name, lora] : Adapters(*model)) {
    if (lora->merged() == merged) continue;
    const absl::Status status = merged ? lora->Merge() : lora->Unmerge();
    if (!status.ok()) return Annotate(status, name);
  }
  return absl::OkStatus();
}

void RemoveAdapters(model::Decoder* model) {
  for (const auto& [name, lora] : Adapters(*model)) model->ReplaceLinear(name, lora->base()).IgnoreError();
}

}  // namespace llmtrain::lora
