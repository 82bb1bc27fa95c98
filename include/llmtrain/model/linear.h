// A linear layer y = x Wᵀ + b behind one interface, so a decoder's projections can be dense,
// 4-bit (quant::QuantizedLinear) or carry a LoRA adapter (lora::LoraLinear) without the
// decoder knowing which.
//
//   std::shared_ptr<model::Linear> q = decoder->linear("model.layers.0.self_attn.q_proj");
//   at::Tensor y = q->Forward(x);   // (…, in) → (…, out)
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include <ATen/core/Tensor.h>

#include "absl/strings/string_view.h"

namespace llmtrain::model {

class Linear {
 public:
  virtual ~Linear() = default;
  /// (…, in_features) → (…, out_features), in x's dtype. Differentiable in x (and in whatever
  /// the layer trains).
  virtual at::Tensor Forward(const at::Tensor& x) const = 0;
  virtual int64_t in_features() const = 0;
  virtual int64_t out_features() const = 0;
  /// The frozen base weight (out, in) as a dense tensor in `dtype`: the stored tensor of a dense
  /// layer, the dequantized weight of a 4-bit one, the base (without the adapter) of a LoRA one.
  virtual at::Tensor DenseWeight(c10::ScalarType dtype) const = 0;
  /// The bias (out) or an undefined tensor.
  virtual const at::Tensor& bias() const = 0;
  /// The dense weight tensor the layer stores, or undefined when it stores none (4-bit).
  virtual at::Tensor stored_weight() const = 0;
  /// Appends the tensors of this layer that require grad (activation checkpointing recomputes
  /// the layer and differentiates with respect to them).
  virtual void AppendTrainable(std::vector<at::Tensor>* out) const = 0;
  /// "dense", "nf4", "fp4", "lora" … for messages and `inspect`.
  virtual absl::string_view kind() const = 0;
};

/// A plain dense layer over stored tensors (the weight may require grad for full fine-tuning).
class DenseLinear final : public Linear {
 public:
  /// weight (out, in); bias (out) or undefined.
  explicit DenseLinear(at::Tensor weight, at::Tensor bias = {});
  at::Tensor Forward(const at::Tensor& x) const override;
  int64_t in_features() const override;
  int64_t out_features() const override;
  at::Tensor DenseWeight(c10::ScalarType dtype) const override;
  const at::Tensor& bias() const override { return bias_; }
  at::Tensor stored_weight() const override { return weight_; }
  void AppendTrainable(std::vector<at::Tensor>* out) const override;
  absl::string_view kind() const override { return "dense"; }

 private:
  at::Tensor weight_, bias_;
};

}  // namespace llmtrain::model
