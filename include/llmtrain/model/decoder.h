// The shared decoder-only transformer: embedding, L × (norm → attention → residual → norm → MLP
// → residual), final norm, LM head. Families (model/family.h) say how each one differs. The math
// follows transformers' eager path so logits and gradients match it number for number.
//
// Shapes: B batch, T tokens, C hidden, H query heads, K kv heads, D head_dim, V vocab, L layers.
//
//   LLMTRAIN_ASSIGN_OR_RETURN(auto model, model::Decoder::Load("path/to/model_or.gguf", {}));
//   at::Tensor logits = model->Forward(input_ids, attention_mask);  // (B, T, V)
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "llmtrain/core/dtype.h"
#include "llmtrain/io/hf_config.h"
#include "llmtrain/model/family.h"
#include "llmtrain/model/linear.h"

namespace llmtrain::model {

namespace detail {
struct DecoderState;
}  // namespace detail

struct DecoderOptions {
  /// Dtype of the weights and activations: f32, bf16 or f16 (Gemma refuses f16, whose residual
  /// stream overflows; transformers warns and produces inf/NaN there).
  Dtype dtype = Dtype::kF32;
  /// Parameters require grad after loading (for fine-tuning the whole model or for gradient
  /// checks); LoRA training leaves them frozen.
  bool requires_grad = false;
  /// Keep only each decoder layer's input during forward and run the layer again in backward:
  /// activation memory drops from all intermediates of every layer to one layer's worth.
  /// Gradients are identical: the recompute draws the forward's dropout masks and runs under the
  /// forward's autocast state. Applies when autograd is on and no KV cache is used.
  bool activation_checkpointing = false;
  /// Makes each of the seven projections of every layer as it loads; unset = dense
  /// (MakeDenseLinear). quant::QuantizedLinearFactory gives QLoRA's frozen 4-bit base
  /// (transformers' load_in_4bit): each weight is converted to `dtype`, quantized and dropped, so
  /// the dense weights never coexist, and folders saved in bitsandbytes' 4-bit format load as
  /// they are. Embedding, norms and head stay in `dtype`.
  LinearFactory linear_factory;
  /// The LM head is made by linear_factory too (module "lm_head", weight the embedding's when
  /// tied), so logits come from the layer it makes: a packed head (quant::PackedLinearFactory)
  /// reads its blocks instead of the float head, the largest read of a small model's decoding
  /// step. The embedding lookup keeps the dense table; training's loss (Decoder::lm_head) too.
  /// Not with plan_layer_shares.
  bool head_through_factory = false;
  /// Called during Load as soon as each decoder layer is built (layers in order, the embedding
  /// before them), with the layer's frozen tensors (see LayerFrozenTensors). A sharded engine
  /// keeps its share of them and frees the rest before the next layer loads, so no process holds
  /// the whole base. An error stops the load.
  std::function<absl::Status(int64_t layer, const std::vector<at::Tensor>& frozen)> on_layer_loaded;
  /// Sharded loading, with on_layer_loaded: given a layer's frozen tensors in their final shapes
  /// but not yet read (LinearFactory's layout-only pass), the bytes of each this process keeps
  /// and owns. The projections are then made again with their shares (ProjectionSource::shares),
  /// so a process reads and quantizes only its part of each weight, and on_layer_loaded receives
  /// tensors whose kept bytes are filled. Every process loads the same layers in the same order.
  std::function<absl::StatusOr<std::vector<TensorShare>>(int64_t layer, const std::vector<at::Tensor>& frozen)>
      plan_layer_shares;
  /// Sums a float32 CPU tensor over the processes in place: the collective plan_layer_shares'
  /// loads need (once per layer, for what the factory deferred: ProjectionSource::defer).
  std::function<absl::Status(at::Tensor& values)> sum_over_processes;
};

/// InvalidArgument naming the field for options the decoder cannot run (a dtype other than
/// f32, bf16, f16).
absl::Status Validate(const DecoderOptions& options);

/// The images of an image+text model's batch (Gemma3ForConditionalGeneration): each image's
/// features replace its tokens, and tokens of one image see each other both ways.
struct ImageInputs {
  /// (N, 3, S, S) float, S = the tower's image_size, the images in the order their tokens come
  /// (row by row, left to right): data::PreprocessImage's output. Undefined = no images.
  at::Tensor pixel_values;
  /// (B, T) int64, 1 on image soft tokens and 0 elsewhere (the processor's token_type_ids).
  /// Defined: a run of 1s (one image) attends to itself bidirectionally, sliding layers still cut
  /// at their window (transformers' mask when token_type_ids are passed). Undefined: all causal.
  at::Tensor token_type_ids;
  bool empty() const { return !pixel_values.defined() && !token_type_ids.defined(); }
};

/// Keys and values of earlier tokens, per layer, for incremental decoding. Filled by Forward.
struct KvCache {
  /// per layer (B, K, past, D), after RoPE and QK-norm; sliding-window layers keep only their last
  /// W − 1 keys and values (no later query can see further back)
  std::vector<at::Tensor> k, v;
  at::Tensor mask;               ///< (B, past) int64: 1 = token, 0 = padding
  /// The dtype k and v are stored in: float32 (the model's own dtype when undefined), or bfloat16
  /// to halve the cache's memory and reads; attention widens them back to the query's dtype.
  std::optional<c10::ScalarType> dtype;
  at::Tensor next_position;      ///< (B) int64: the position the next token gets
  int64_t length() const { return mask.defined() ? mask.size(1) : 0; }
};

/// Makes a decoder layer's frozen weights present around their use: a sharded engine
/// (dist/sharded_engine.h) gathers them from every process in Acquire and frees them in Release.
/// The decoder calls Acquire(i) before layer i computes (in forward, and again before the
/// recompute of activation checkpointing in backward) and Release(i) when nothing will read the
/// weights until the next Acquire. Every process runs the same forwards, so the calls come in the
/// same order everywhere. Errors are thrown (c10::Error); the trainer turns them into a Status.
class LayerResidency {
 public:
  virtual ~LayerResidency() = default;
  virtual void Acquire(int64_t layer) = 0;
  virtual void Release(int64_t layer) = 0;
};

class Decoder {
 public:
  /// Loads a model from a folder with config.json and safetensors (single or sharded), or from a
  /// .gguf file (dequantized on load; Gemma norms shifted back from llama.cpp's 1 + w). Every
  /// tensor the family's table expects must be present with its shape, and every tensor in the
  /// file must be expected; errors name the tensor.
  static absl::StatusOr<std::unique_ptr<Decoder>> Load(absl::string_view path,
                                                       const DecoderOptions& options);

  /// Logits (B, T, V) in the model dtype. input_ids: int64 (B, T), values < V.
  /// attention_mask: int64/bool (B, T), 1 = token, 0 = padding (left or right); undefined = all 1.
  /// Packed rows (data::Batch::segment_ids): values 1, 2, … name the examples of a row, and a
  /// token attends only to earlier tokens of its own example; pass their restarting position_ids.
  /// position_ids: int64 (B, T); undefined = cumsum(mask ≠ 0) − 1 clamped at 0.
  /// Throws c10::Error on bad shapes or ids ≥ V (use CheckInputs first for a Status).
  at::Tensor Forward(const at::Tensor& input_ids, const at::Tensor& attention_mask = {},
                     const at::Tensor& position_ids = {}) const;

  /// Forward over new tokens after those in `cache` (which it extends): logits (B, T, V) of the
  /// new tokens. Positions continue from the cache; sliding layers see the last `window` keys.
  at::Tensor Forward(const at::Tensor& input_ids, const at::Tensor& attention_mask,
                     KvCache* cache) const;

  /// Image+text forward (has_vision()): the tower's features replace the image tokens
  /// (image_token_id(), tokens_per_image() per image) and token_type_ids shape the mask (see
  /// ImageInputs). With a cache, images and token_type_ids only on the first call (the prompt).
  /// No final soft-cap: Gemma3ForConditionalGeneration applies none.
  at::Tensor Forward(const at::Tensor& input_ids, const at::Tensor& attention_mask, const at::Tensor& position_ids,
                     const ImageInputs& images) const;
  at::Tensor Forward(const at::Tensor& input_ids, const at::Tensor& attention_mask, KvCache* cache,
                     const ImageInputs& images) const;
  at::Tensor Hidden(const at::Tensor& input_ids, const at::Tensor& attention_mask, const at::Tensor& position_ids,
                    const ImageInputs& images) const;
  /// The cached forward of generation, keeping only the last position's logits (B, V) in the
  /// model dtype: the LM head runs on one position per row, not T (transformers' logits_to_keep=1).
  /// The last column must hold each row's last token (left padding). Images as Forward's.
  at::Tensor LastLogits(const at::Tensor& input_ids, const at::Tensor& attention_mask, KvCache* cache,
                        const ImageInputs& images = {}) const;
  /// The projected image features (N, tokens_per_image(), C) of pixel_values (N, 3, S, S): the
  /// SigLIP tower, its post-LayerNorm, the average pool to tokens_per_image() and the projector
  /// (transformers' get_image_features(...).pooler_output). FailedPrecondition-style c10::Error
  /// without a tower.
  at::Tensor ImageFeatures(const at::Tensor& pixel_values) const;
  /// Whether the model has a vision tower (model_type gemma3 with a vision_config).
  bool has_vision() const;
  /// Image+text models: the soft token each image feature replaces, the tokens per image and the
  /// tower's input side S in pixels; 0 for text models.
  int64_t image_token_id() const;
  int64_t tokens_per_image() const;
  int64_t image_size() const;

  /// Token ids that end generation: the config's eos_token_id(s), generation_config.json's
  /// (HF folders), and the chat end-of-turn tokens found in a GGUF vocabulary.
  const std::vector<int64_t>& eos_token_ids() const;

  /// The final-normed hidden states (B, T, C) that the LM head turns into logits; with
  /// lm_head() they feed kernels::ChunkedCrossEntropy without materializing the logits.
  at::Tensor Hidden(const at::Tensor& input_ids, const at::Tensor& attention_mask = {},
                    const at::Tensor& position_ids = {}) const;
  /// The first module, in forward order, whose output holds a NaN or an infinity on this input:
  /// "model.embed_tokens", "model.layers.{i}.self_attn" (after its projection o_proj),
  /// "model.layers.{i}.mlp" or "model.norm"; nullopt when all of them are finite. Runs one forward
  /// without gradients (the trainer's NaN guard uses it to say where a non-finite loss began).
  std::optional<std::string> FirstNonFiniteModule(const at::Tensor& input_ids, const at::Tensor& attention_mask = {},
                                                  const at::Tensor& position_ids = {}) const;
  /// The LM head (V, C): the embedding when tied.
  const at::Tensor& lm_head() const;
  /// The head layer DecoderOptions::head_through_factory made, which Forward's logits come from,
  /// or null when they come from lm_head().
  std::shared_ptr<Linear> head_layer() const;
  /// The device the model computes on (its embedding's): inputs must be there too.
  c10::Device device() const;
  /// Moves every tensor the model holds (embedding, norms, head, RoPE tables, each projection's
  /// frozen and trainable tensors, LoRA included) to `device`, in place: handles held elsewhere
  /// (an optimizer's parameter list) see the moved tensors, and trainable ones stay leaves that
  /// require grad. Do it before an optimizer's state exists. Each tensor is copied and its old
  /// memory freed before the next one moves, so the peak is the model plus its largest tensor.
  /// InvalidArgument for a CUDA device in a build without CUDA or on a machine without that GPU;
  /// FailedPrecondition under a layer residency (a sharded engine owns the layers' memory).
  absl::Status MoveTo(c10::Device device);
  /// Turns activation checkpointing on or off (see DecoderOptions).
  void set_activation_checkpointing(bool on);
  bool activation_checkpointing() const;
  /// Who makes each layer's frozen weights present (null: they always are). With one set,
  /// training needs activation checkpointing: a layer's weights are released after its forward
  /// and acquired again for its backward.
  void set_layer_residency(std::shared_ptr<LayerResidency> residency);
  int64_t num_layers() const;
  /// The frozen tensors layer `index` reads: its norms and what its projections list in
  /// Linear::AppendFrozen (a sharded engine moves them into a ShardedUnit).
  std::vector<at::Tensor> LayerFrozenTensors(int64_t index) const;

  /// InvalidArgument naming the problem if Forward would refuse these inputs.
  absl::Status CheckInputs(const at::Tensor& input_ids, const at::Tensor& attention_mask) const;
  /// The same with images: pixel_values' shape, token_type_ids' shape, and as many image tokens
  /// as the images have features.
  absl::Status CheckInputs(const at::Tensor& input_ids, const at::Tensor& attention_mask,
                           const ImageInputs& images) const;

  /// Stored tensors by HF name ("model.layers.0.self_attn.q_proj.weight", also for a model loaded
  /// from GGUF), in load order: every dense tensor, not the weights of 4-bit projections
  /// (see linear()).
  const std::vector<std::pair<std::string, at::Tensor>>& named_parameters() const;

  /// The HF module names of the projections, layer by layer: "model.layers.{i}.self_attn.q_proj",
  /// k_proj, v_proj, o_proj, "model.layers.{i}.mlp.gate_proj", up_proj, down_proj. An image+text
  /// model lists its tower's first ("model.vision_tower.encoder.layers.{i}.self_attn.k_proj",
  /// v_proj, q_proj, out_proj, "….mlp.fc1", fc2: SiglipAttention's order), then its decoder's under
  /// "model.language_model.layers.{i}." (transformers' module names).
  std::vector<std::string> LinearNames() const;
  /// The projection called `name` (an entry of LinearNames()), or null.
  std::shared_ptr<Linear> linear(absl::string_view name) const;
  /// Puts `layer` in place of projection `name` (LoRA injection, quantization). Its in/out
  /// features must match. When the new layer stores no dense weight, the old weight leaves
  /// named_parameters() and its memory is freed once nothing else holds it.
  absl::Status ReplaceLinear(absl::string_view name, std::shared_ptr<Linear> layer);
  /// The index of `name` in named_parameters(), or -1.
  int64_t FindParameter(absl::string_view name) const;
  const io::HfConfig& config() const;
  const FamilySpec& spec() const;
  Dtype dtype() const;

  ~Decoder();
  Decoder(const Decoder&) = delete;
  Decoder& operator=(const Decoder&) = delete;

 private:
  explicit Decoder(std::shared_ptr<detail::DecoderState> state);
  // Everything a forward reads, shared with the autograd nodes of activation checkpointing
  // (lib/model/decoder_state.h), so backward holds its own reference and no raw pointer.
  std::shared_ptr<detail::DecoderState> state_;
};

}  // namespace llmtrain::model
