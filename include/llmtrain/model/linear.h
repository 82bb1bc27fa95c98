// A linear layer y = x Wᵀ + b behind one interface, so a decoder's projections can be dense,
// 4-bit (quant::QuantizedLinear) or carry a LoRA adapter (lora::LoraLinear) without the
// decoder knowing which. The decoder builds its projections through a LinearFactory: dense by
// default, 4-bit with the factory quant/ provides (quant::QuantizedLinearFactory), so the model
// layer never depends on the layers above it.
//
//   std::shared_ptr<model::Linear> q = decoder->linear("model.layers.0.self_attn.q_proj");
//   at::Tensor y = q->Forward(x);   // (…, in) → (…, out)
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "llmtrain/io/gguf.h"

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
  /// Appends the stored tensors forward reads that do not train (weight, bias, packed 4-bit data
  /// and its quant state): what a sharded engine splits across processes (dist/sharded_unit.h).
  virtual void AppendFrozen(std::vector<at::Tensor>* out) const = 0;
  /// "dense", "nf4", "fp4", "lora" … for messages and `inspect`.
  virtual absl::string_view kind() const = 0;
};

/// Bytes of the tensors `layer` reads in forward (AppendFrozen and AppendTrainable, each tensor
/// once): what one decoding step reads of it. Packed bytes for packed layers.
int64_t StoredBytes(const Linear& layer);

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
  void AppendFrozen(std::vector<at::Tensor>* out) const override;
  absl::string_view kind() const override { return "dense"; }

 private:
  at::Tensor weight_, bias_;
};

/// Sharded loading: the bytes of one frozen tensor this process keeps, and the part of them it
/// alone computes. The owned ranges of all processes partition the tensor (a tensor every
/// process keeps whole is owned by one of them).
struct TensorShare {
  int64_t kept_begin = 0, kept_end = 0;
  int64_t owned_begin = 0, owned_end = 0;
};

/// A GGUF weight as the file stores it: its ggml type and the bytes of its blocks (rows × the
/// row's blocks, row-major, owned).
struct StoredBlocks {
  io::GgmlType type = io::GgmlType::kF32;
  at::Tensor bytes;  ///< uint8 (n_bytes)
};

/// What a loading decoder offers a LinearFactory for one projection. Tensor names are the
/// checkpoint's own (HF names for folders, GGUF names for .gguf files).
struct ProjectionSource {
  std::string module;              ///< HF module name, e.g. "model.layers.0.self_attn.q_proj"
  std::string weight_key;          ///< the weight's name in the checkpoint
  std::vector<int64_t> shape;      ///< (out, in) as the config needs it
  c10::ScalarType dtype = c10::kFloat;  ///< the model's dtype
  bool from_gguf = false;
  at::Tensor bias;                 ///< (out) in the model dtype, or undefined
  /// Whether the checkpoint holds a tensor called `key`.
  std::function<bool(const std::string& key)> has;
  /// Tensor `key` as stored, converted to `dtype` where the format converts on load (GGUF); the
  /// result is owned (never a view of a mapped file). Marks `key` as used, so the decoder's
  /// "every tensor has a role" check accepts it. NotFound names the key.
  std::function<absl::StatusOr<at::Tensor>(const std::string& key, c10::ScalarType dtype)> load;
  /// The dense weight (out, in) in the model dtype, its shape checked against `shape`: what a
  /// DenseLinear holds. Marks the weight as used.
  std::function<absl::StatusOr<at::Tensor>()> dense_weight;
  /// GGUF files only (null otherwise): the weight's blocks as stored, its shape checked against
  /// `shape`, for layers that compute from them (quant::GgufLinear). Marks the weight as used.
  std::function<absl::StatusOr<StoredBlocks>()> stored_blocks;

  // Sharded loading (DecoderOptions::plan_layer_shares) calls the factory twice per projection.
  /// First call: make the layer with its frozen tensors in their final shapes and dtypes, reading
  /// nothing; their values are never read (the decoder lays the layer out from them).
  bool layout_only = false;
  /// Second call: one share per tensor the layout-only layer listed in AppendFrozen. The factory
  /// must fill at least the kept bytes of each (it may read and compute only those: the other
  /// bytes are never read) and list tensors of the same shapes and dtypes in the same order.
  std::vector<TensorShare> shares;
  /// Elements [begin, end) of the flattened dense weight, in the model dtype as dense_weight()
  /// gives them, reading only the rows they lie in. Marks the weight as used.
  std::function<absl::StatusOr<at::Tensor>(int64_t begin, int64_t end)> dense_elements;
  using Finish = std::function<absl::StatusOr<std::shared_ptr<Linear>>()>;
  /// With `shares`: a factory that needs values summed over the processes (the 4-bit block
  /// scales each process computed for its part) calls defer(values, finish) and returns null.
  /// The loader sums every deferred projection's values of the layer in one collective, in place
  /// (float32 CPU tensors), then calls each finish for the layer. So no process waits for another
  /// between projections: each does all its reading and quantizing of the layer in two stretches.
  std::function<void(at::Tensor values, Finish finish)> defer;
};

/// Makes one projection of a loading decoder (see DecoderOptions::linear_factory). Called once per
/// projection, in load order, so at most one dense weight is alive at a time.
using LinearFactory =
    std::function<absl::StatusOr<std::shared_ptr<Linear>>(const ProjectionSource& source)>;

/// The default factory: a DenseLinear over the stored weight and bias.
absl::StatusOr<std::shared_ptr<Linear>> MakeDenseLinear(const ProjectionSource& source);

}  // namespace llmtrain::model
