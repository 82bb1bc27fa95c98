// LoRA adapters over a decoder's projections, computing what HF PEFT 0.21 computes (its LoRA
// `Linear`, and its bitsandbytes `Linear4bit` over a 4-bit base), and saving/loading PEFT's
// adapter folders (adapter_config.json + adapter_model.safetensors).
//
//   y = base(x) + B(A(dropout(x))) · s,     s = alpha / r   (alpha / √r with rsLoRA)
//   DoRA: y = base(x) + (m / ‖W + s·BA‖_row − 1) · (base(x) − b) + (m / ‖…‖) · B(A(x)) · s
//         with the row norm detached, m the trained magnitude (out)
//
//   lora::LoraConfig config;
//   config.r = 16; config.alpha = 32; config.target_modules = {"all-linear"};
//   LLMTRAIN_ASSIGN_OR_RETURN(auto targeted, lora::InjectLora(model.get(), config));
//   … train lora::TrainableParameters(*model) …
//   LLMTRAIN_RETURN_IF_ERROR(lora::SaveAdapter(*model, config, "out/adapter"));
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "llmtrain/core/dtype.h"
#include "llmtrain/lora/adapter_config.h"
#include "llmtrain/model/decoder.h"
#include "llmtrain/model/linear.h"

namespace llmtrain::lora {

/// A LoRA (or DoRA) adapter around a dense or 4-bit linear layer.
class LoraLinear final : public model::Linear {
 public:
  /// `base` stays frozen. `compute_dtype` is the model's dtype: the init is rounded through it
  /// as PEFT's adapters are created in the base layer's dtype before being cast to `dtype`.
  LoraLinear(std::shared_ptr<model::Linear> base, int64_t r, double alpha, const LoraConfig& config,
             c10::ScalarType compute_dtype, at::Generator* generator);

  at::Tensor Forward(const at::Tensor& x) const override;
  int64_t in_features() const override { return base_->in_features(); }
  int64_t out_features() const override { return base_->out_features(); }
  at::Tensor DenseWeight(c10::ScalarType dtype) const override { return base_->DenseWeight(dtype); }
  const at::Tensor& bias() const override { return base_->bias(); }
  at::Tensor stored_weight() const override { return base_->stored_weight(); }
  void AppendTrainable(std::vector<at::Tensor>* out) const override;
  void AppendFrozen(std::vector<at::Tensor>* out) const override { base_->AppendFrozen(out); }
  absl::string_view kind() const override { return use_dora_ ? "dora" : "lora"; }

  const std::shared_ptr<model::Linear>& base() const { return base_; }
  at::Tensor& lora_A() { return a_; }          ///< (r, in)
  at::Tensor& lora_B() { return b_; }          ///< (out, r)
  at::Tensor& magnitude() { return m_; }       ///< (out), DoRA only
  const at::Tensor& lora_A() const { return a_; }
  const at::Tensor& lora_B() const { return b_; }
  const at::Tensor& magnitude() const { return m_; }
  int64_t r() const { return r_; }
  double scaling() const { return scaling_; }
  bool use_dora() const { return use_dora_; }
  /// Dropout applies only while training (PEFT's module.train()).
  void set_training(bool training) { training_ = training; }

  /// PEFT merge(): adds the adapter into the dense base weight in place (DoRA: rescales the rows
  /// by m / ‖W + ΔW‖, remembering that norm for Unmerge); Forward then runs the base alone.
  /// FailedPrecondition on a 4-bit base (see MergeAdapters) or when merged already.
  absl::Status Merge();
  /// PEFT unmerge(): takes the adapter back out of the base weight (exact in float32 up to
  /// rounding; in bf16 the delta is rounded first, as PEFT does).
  absl::Status Unmerge();
  bool merged() const { return merged_; }

  /// B·A·s as float32 (out, in): what merging adds to the base weight (before DoRA's rescale).
  at::Tensor DeltaWeight() const;
  /// The merged dense weight (out, in) in `dtype`: W + ΔW, or for DoRA m / ‖W + ΔW‖_row · (W + ΔW)
  /// (PEFT's merge), with W the base weight as DenseWeight gives it.
  at::Tensor MergedWeight(c10::ScalarType dtype) const;

 private:
  std::shared_ptr<model::Linear> base_;
  at::Tensor a_, b_, m_;
  int64_t r_ = 0;
  double scaling_ = 1.0, dropout_ = 0.0;
  bool use_dora_ = false, training_ = false, merged_ = false;
  at::Tensor merge_norm_;  // DoRA: ‖W + ΔW‖ per row at Merge()
};

/// Wraps every projection `config` targets in a LoraLinear and marks modules_to_save trainable.
/// Returns the adapted module names, in model order. InvalidArgument if nothing matches (naming
/// the targets) or a modules_to_save entry names nothing.
absl::StatusOr<std::vector<std::string>> InjectLora(model::Decoder* model, const LoraConfig& config);

/// The adapters, by module name, in model order.
std::vector<std::pair<std::string, std::shared_ptr<LoraLinear>>> Adapters(const model::Decoder& model);

/// What training updates: A, B (and magnitudes) of every adapter, then the modules_to_save
/// tensors, by the key they are saved under.
std::vector<std::pair<std::string, at::Tensor>> TrainableParameters(const model::Decoder& model,
                                                                    const LoraConfig& config);

/// Dropout on (training) or off (evaluation) for every adapter.
void SetTraining(model::Decoder* model, bool training);

/// Writes `dir`/adapter_config.json and `dir`/adapter_model.safetensors (keys
/// "base_model.model.<module>.lora_A.weight", ".lora_B.weight", ".lora_magnitude_vector", and
/// modules_to_save as "base_model.model.<name>"), atomically.
absl::Status SaveAdapter(const model::Decoder& model, const LoraConfig& config, absl::string_view dir);

/// Reads a PEFT adapter folder, injects it into `model` and loads its tensors. Every adapted
/// module must exist and every tensor must fit: a missing module, a rank or shape that differs,
/// or a tensor of no module gets an error naming the module and the file. Returns the config.
absl::StatusOr<LoraConfig> LoadAdapter(model::Decoder* model, absl::string_view dir);

/// Merges every adapter into its base (PEFT merge_and_unload): each LoraLinear becomes a
/// DenseLinear holding MergedWeight in the model's dtype (a 4-bit base is dequantized first) and
/// its bias. The model then computes what it computed with the adapters, up to rounding.
absl::Status MergeAdapters(model::Decoder* model);

/// Merge() or Unmerge() every adapter in place (PEFT merge_adapter / unmerge_adapter).
absl::Status SetMerged(model::Decoder* model, bool merged);

/// Removes every adapter: each LoraLinear gives its base back (unmerge of an unmerged model).
void RemoveAdapters(model::Decoder* model);

}  // namespace llmtrain::lora
