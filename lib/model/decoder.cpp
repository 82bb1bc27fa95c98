// The shared decoder's forward. It reads top to bottom like transformers' eager path: embed, then
// per layer norm → attention → (post-norm) → residual → norm → MLP → (post-norm) → residual,
// then the final norm and the head. Comments cite the transformers class whose math each step
// reproduces; parity tests (tests/model/) compare against it at test time. Loading is load.cpp.
#include "llmtrain/model/decoder.h"

#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/detail/CUDAHooksInterface.h>
#include <ATen/core/grad_mode.h>
#include <ATen/record_function.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "llmtrain/core/status.h"
#include "llmtrain/io/tensors.h"
#include "llmtrain/kernels/rms_norm.h"
#include "llmtrain/kernels/rope.h"
#include "model/attention_mask.h"
#include "model/decoder_state.h"

namespace llmtrain::model {
namespace {

// Holds layer `index` of a sharded decoder (LayerResidency) for its scope, and releases it on
// every way out, an exception included, so a failed forward or backward leaves no layer held.
class LayerHold {
 public:
  LayerHold(LayerResidency* residency, int64_t index) : residency_(residency), index_(index) {
    if (residency_ != nullptr) residency_->Acquire(index_);  // a throw here holds nothing
  }
  ~LayerHold() {
    if (residency_ == nullptr) return;
    try {
      residency_->Release(index_);
    } catch (...) {  // a destructor must not throw; Release fails only on unpaired calls
    }
  }
  LayerHold(const LayerHold&) = delete;
  LayerHold& operator=(const LayerHold&) = delete;

 private:
  LayerResidency* residency_;
  int64_t index_;
};

// The forward's autocast state for the recompute in backward, which runs outside the caller's
// autocast region (torch.utils.checkpoint keeps it the same way): otherwise the recomputed layer
// would compute in float32 where the forward computed in bfloat16.
class RecomputeAutocast {
 public:
  RecomputeAutocast(c10::DeviceType device, bool enabled, c10::ScalarType dtype)
      : device_(device),
        previous_enabled_(at::autocast::is_autocast_enabled(device)),
        previous_dtype_(at::autocast::get_autocast_dtype(device)) {
    at::autocast::set_autocast_enabled(device, enabled);
    at::autocast::set_autocast_dtype(device, dtype);
    at::autocast::increment_nesting();
  }
  ~RecomputeAutocast() {
    if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
    at::autocast::set_autocast_enabled(device_, previous_enabled_);
    at::autocast::set_autocast_dtype(device_, previous_dtype_);
  }
  RecomputeAutocast(const RecomputeAutocast&) = delete;
  RecomputeAutocast& operator=(const RecomputeAutocast&) = delete;

 private:
  c10::DeviceType device_;
  bool previous_enabled_;
  c10::ScalarType previous_dtype_;
};

}  // namespace


absl::Status Validate(const DecoderOptions& options) {
  if (options.dtype != Dtype::kF32 && options.dtype != Dtype::kBf16 && options.dtype != Dtype::kF16) {
    return absl::InvalidArgumentError(absl::StrCat("DecoderOptions.dtype: expected f32, bf16 or f16, found ",
                                                   SafetensorsName(options.dtype)));
  }
  if (options.head_through_factory && options.plan_layer_shares) {
    return absl::InvalidArgumentError("DecoderOptions.head_through_factory: not with plan_layer_shares (a sharded "
                                      "load keeps the head dense)");
  }
  return absl::OkStatus();
}

namespace detail {
namespace {

std::string ShapeString(at::IntArrayRef shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) absl::StrAppend(&s, i ? ", " : "", shape[i]);
  return s + "]";
}

// An owned reference to a decoder's state that can ride in an autograd node's saved_data.
struct StateHandle : torch::CustomClassHolder {
  explicit StateHandle(std::shared_ptr<const DecoderState> state) : state(std::move(state)) {}
  std::shared_ptr<const DecoderState> state;
};

// Activation checkpointing of one decoder layer: forward keeps only the layer's input; backward
// runs the layer again with autograd on and differentiates that (Chen et al. 2016, "Training deep
// nets with sublinear memory cost"). The layer's parameters are inputs of the function, so their
// gradients flow to the model's tensors as without checkpointing. The node holds the decoder's
// state (StateHandle), so the layer it recomputes is alive whatever happened to the Decoder.
class CheckpointFunction : public torch::autograd::Function<CheckpointFunction> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, at::TensorList params,
                            const at::Tensor& cos, const at::Tensor& sin, const at::Tensor& mask,
                            const std::shared_ptr<const DecoderState>& state, int64_t index) {
    ctx->save_for_backward({x, cos, sin, mask});
    ctx->saved_data["state"] = c10::IValue::make_capsule(c10::make_intrusive<StateHandle>(state));
    ctx->saved_data["index"] = index;
    ctx->saved_data["n_params"] = static_cast<int64_t>(params.size());
    // The recompute must draw the same dropout masks as this forward (torch.utils.checkpoint's
    // preserve_rng_state): the generator's state before the layer runs.
    // The layer draws from the default generator of x's device (CPU or that GPU).
    ctx->saved_data["rng"] = at::globalContext().defaultGenerator(x.device()).get_state();
    ctx->saved_data["autocast"] = at::autocast::is_autocast_enabled(x.device().type());
    ctx->saved_data["autocast_dtype"] = static_cast<int64_t>(at::autocast::get_autocast_dtype(x.device().type()));
    at::NoGradGuard no_grad;
    return index >= 0 ? state->Layer(index, x, cos, sin, mask, nullptr, nullptr) : state->VisionLayer(-1 - index, x);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto handle = c10::static_intrusive_pointer_cast<StateHandle>(ctx->saved_data["state"].toCapsule());
    const DecoderState& state = *handle->state;
    const int64_t index = ctx->saved_data["index"].toInt();
    const int64_t n_params = ctx->saved_data["n_params"].toInt();
    const at::Tensor x = saved[0].detach().requires_grad_(true);
    // A sharded layer's weights are gathered for the recompute and its backward, then released.
    torch::autograd::variable_list g;
    {
      // Decoder layers may be sharded; the vision tower's (index −1 − i) never are.
      const LayerHold hold(index >= 0 ? state.residency.get() : nullptr, index);
      at::Tensor out;
      {
      // Replays the forward's random stream for its dropout masks, then puts the stream back.
      at::Generator generator = at::globalContext().defaultGenerator(x.device());
      const at::Tensor now = generator.get_state();
      generator.set_state(ctx->saved_data["rng"].toTensor());
      at::AutoGradMode enable(true);
      const RecomputeAutocast autocast(x.device().type(), ctx->saved_data["autocast"].toBool(),
                                       static_cast<c10::ScalarType>(ctx->saved_data["autocast_dtype"].toInt()));
      out = index >= 0 ? state.Layer(index, x, saved[1], saved[2], saved[3], nullptr, nullptr)
                       : state.VisionLayer(-1 - index, x);
      generator.set_state(now);
      }
      torch::autograd::variable_list wrt = {x};
      for (const at::Tensor& p : index >= 0 ? state.LayerParameters(index) : state.VisionLayerParameters(-1 - index)) {
        wrt.push_back(p);
      }
      TORCH_CHECK(static_cast<int64_t>(wrt.size()) == n_params + 1, "checkpoint: parameter count changed");
      g = torch::autograd::grad({out}, wrt, {grads[0]}, /*retain_graph=*/false, /*create_graph=*/false,
                                /*allow_unused=*/true);
    }
    // One gradient per forward input: x, each parameter, then cos, sin, mask, state, index.
    for (int i = 0; i < 5; ++i) g.emplace_back();
    return g;
  }
};

}  // namespace

absl::Status DecoderState::CheckInputs(const at::Tensor& input_ids, const at::Tensor& mask,
                                       const ImageInputs* images) const {
  if (!input_ids.defined() || input_ids.dim() != 2) {
    return absl::InvalidArgumentError("input_ids: expected an int64 tensor of shape (B, T)");
  }
  if (input_ids.numel() > 0) {
    // An image model's soft token may lie past the vocabulary (it is looked up as id 0).
    const at::Tensor text_ids =
        vision != nullptr ? at::where(input_ids == vision->image_token_id, at::zeros_like(input_ids), input_ids)
                          : input_ids;
    const int64_t max_id = text_ids.max().item<int64_t>();
    const int64_t min_id = text_ids.min().item<int64_t>();
    if (max_id >= config.text.vocab_size || min_id < 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "input_ids: token id ", max_id >= config.text.vocab_size ? max_id : min_id,
          " is outside the vocabulary [0, ", config.text.vocab_size, ")"));
    }
  }
  if (input_ids.device() != embed.device() || (mask.defined() && mask.device() != embed.device())) {
    return absl::InvalidArgumentError(absl::StrCat(
        "input_ids on ", input_ids.device().str(), mask.defined() ? ", attention_mask on " + mask.device().str() : "",
        ": the model is on ", embed.device().str(), " (Decoder::MoveTo moves it)"));
  }
  if (mask.defined() && mask.sizes() != input_ids.sizes()) {
    return absl::InvalidArgumentError(absl::StrCat("attention_mask: shape ", ShapeString(mask.sizes()),
                                                   " differs from input_ids ", ShapeString(input_ids.sizes())));
  }
  if (images == nullptr || images->empty()) return absl::OkStatus();
  if (vision == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("pixel_values / token_type_ids: this ", spec.model_type,
                                                   " model has no vision tower"));
  }
  const at::Tensor& types = images->token_type_ids;
  if (types.defined() && (types.sizes() != input_ids.sizes() || types.device() != input_ids.device())) {
    return absl::InvalidArgumentError(absl::StrCat("token_type_ids: shape ", ShapeString(types.sizes()), " on ",
                                                   types.device().str(), ", expected input_ids' ",
                                                   ShapeString(input_ids.sizes()), " on ", input_ids.device().str()));
  }
  const int64_t image_tokens = input_ids.eq(vision->image_token_id).sum().item<int64_t>();
  const at::Tensor& pixels = images->pixel_values;
  const int64_t S = vision->config.image_size;
  if (!pixels.defined()) {
    if (image_tokens > 0) {
      return absl::InvalidArgumentError(absl::StrCat("input_ids hold ", image_tokens, " image tokens (id ",
                                                     vision->image_token_id, ") but no pixel_values were given"));
    }
    return absl::OkStatus();
  }
  if (pixels.dim() != 4 || pixels.size(1) != vision->config.num_channels || pixels.size(2) != S ||
      pixels.size(3) != S || !at::isFloatingType(pixels.scalar_type())) {
    return absl::InvalidArgumentError(absl::StrCat("pixel_values: expected a float tensor (N, ",
                                                   vision->config.num_channels, ", ", S, ", ", S, "), found ",
                                                   ShapeString(pixels.sizes())));
  }
  if (image_tokens != pixels.size(0) * vision->tokens_per_image) {
    return absl::InvalidArgumentError(absl::StrCat(
        "input_ids hold ", image_tokens, " image tokens (id ", vision->image_token_id, "), but ", pixels.size(0),
        " image(s) give ", pixels.size(0) * vision->tokens_per_image, " (", vision->tokens_per_image, " each)"));
  }
  return absl::OkStatus();
}

at::Tensor DecoderState::Norm(const at::Tensor& x, const at::Tensor& w) const {
  kernels::RmsNormOptions options;
  options.eps = config.text.rms_norm_eps;
  options.scale = spec.norm == NormStyle::kGemma ? kernels::NormScale::kOnePlusWeight : kernels::NormScale::kWeight;
  return kernels::RmsNorm(x, w, options);
}

at::Tensor DecoderState::Hidden(const at::Tensor& input_ids, const at::Tensor& attention_mask,
                                const at::Tensor& position_ids, KvCache* cache, const Probe* probe,
                                const ImageInputs* images) const {
  const absl::Status ok = CheckInputs(input_ids, attention_mask, images);
  TORCH_CHECK(ok.ok(), std::string(ok.message()));
  const io::TextConfig& c = config.text;
  const c10::ScalarType dtype = io::ToScalarType(options.dtype);
  const int64_t B = input_ids.size(0), T = input_ids.size(1);
  const at::Tensor new_mask = attention_mask.defined() ? attention_mask.to(at::kLong)
                                                     : at::ones({B, T}, input_ids.options().dtype(at::kLong));
  const int64_t past = cache != nullptr ? cache->length() : 0;
  TORCH_CHECK(past == 0 || cache->mask.size(0) == B, "Forward: the cache holds ", cache->mask.size(0),
              " rows, the input ", B);
  // Positions: cumsum(mask) − 1, clamped at 0 (what generate() uses under left padding),
  // continuing after the tokens already in the cache.
  at::Tensor positions = position_ids;
  if (!positions.defined()) {
    positions = (new_mask.ne(0).to(at::kLong).cumsum(-1) - 1).clamp_min(0);
    if (past > 0) positions = positions + cache->next_position.unsqueeze(1);
  }
  // The mask over every key: cached tokens first, then the new ones. (B, S)
  const at::Tensor mask = past > 0 ? at::cat({cache->mask, new_mask}, 1) : new_mask;
  if (cache != nullptr) {
    if (cache->k.empty()) {
      cache->k.resize(layers.size());
      cache->v.resize(layers.size());
    }
    cache->mask = mask;
    cache->next_position = mask.sum(-1);  // real tokens so far
  }

  // Gemma3Model: an image token outside the vocabulary is looked up as id 0 (then replaced).
  const at::Tensor is_image = vision != nullptr ? input_ids.eq(vision->image_token_id) : at::Tensor();
  const at::Tensor lookup = vision != nullptr && vision->image_token_id >= c.vocab_size
                                ? at::where(is_image, at::zeros_like(input_ids), input_ids)
                                : input_ids;
  at::Tensor h = at::embedding(embed, lookup);  // (B, T, C)
  if (spec.scale_embeddings) {
    // sqrt(C) as a tensor in the weight dtype: bf16 rounds sqrt(640) = 25.298 to 25.25.
    h = h * at::scalar_tensor(std::sqrt(static_cast<double>(c.hidden_size)), h.options().dtype(dtype));
  }
  if (probe != nullptr) (*probe)("model.embed_tokens", h);
  if (images != nullptr && images->pixel_values.defined()) {
    // The image features, in order, in place of the image tokens (masked_scatter); no scale.
    const at::Tensor features = ImageFeatures(images->pixel_values).to(h.scalar_type());
    if (probe != nullptr) (*probe)("model.multi_modal_projector", features);
    h = h.masked_scatter(is_image.unsqueeze(-1), features);
  }
  // Tokens of one image (a run of token type 1) see each other: their block index, −1 for text.
  at::Tensor blocks;
  if (images != nullptr && images->token_type_ids.defined()) {
    TORCH_CHECK(past == 0, "Forward: token_type_ids are for the first call of a cached forward only");
    const at::Tensor image = images->token_type_ids.eq(1);
    const at::Tensor previous = at::constant_pad_nd(image, {1, 0}, 0).slice(1, 0, T);
    const at::Tensor starts = image & previous.logical_not();
    blocks = at::where(image, starts.to(at::kLong).cumsum(1) - 1, at::full_like(starts, -1, at::kLong));
  }

  // With a cache, sliding layers hold only the last W − 1 earlier keys (see Attention).
  const int64_t sliding_kept = cache != nullptr ? std::min<int64_t>(past, spec.window - 1) : past;
  const AttentionMasks masks = BuildAttentionMasks(mask, past, spec.window, sliding_kept, dtype, blocks);
  // RoPE tables, once per distinct layer RoPE.
  std::vector<kernels::RopeTables> rope;
  for (const at::Tensor& inv : inv_freq) rope.push_back(kernels::MakeRopeTables(positions, inv, dtype));
  for (size_t i = 0; i < layers.size(); ++i) {
    const kernels::RopeTables& r = rope[layer_rope[i]];
    const at::Tensor& layer_mask = spec.sliding[i] && masks.sliding.defined() ? masks.sliding : masks.full;
    const int64_t index = static_cast<int64_t>(i);
    const bool checkpointed = options.activation_checkpointing && cache == nullptr && at::GradMode::is_enabled();
    TORCH_CHECK(residency == nullptr || checkpointed || !at::GradMode::is_enabled(),
                "a decoder whose layers are sharded (set_layer_residency) trains only with activation checkpointing");
    const LayerHold hold(residency.get(), index);
    if (checkpointed) {
      h = CheckpointedLayer(index, h, r.cos, r.sin, layer_mask);
    } else {
      h = Layer(index, h, r.cos, r.sin, layer_mask, cache, probe);
    }
  }
  at::Tensor out = Norm(h, final_norm);
  if (probe != nullptr) (*probe)("model.norm", out);
  return out;
}

at::Tensor DecoderState::Layer(int64_t i, const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin,
                               const at::Tensor& mask, KvCache* cache, const Probe* probe) const {
  const LayerWeights& l = layers[i];
  at::Tensor h = x;
  at::Tensor a = Attention(l, i, Norm(h, l.input_norm), cos, sin, mask, cache);
  if (probe != nullptr) (*probe)(absl::StrCat("model.layers.", i, ".self_attn"), a);
  if (spec.sandwich_norms) a = Norm(a, l.post_attn_norm);
  h = h + a;
  at::Tensor m = Norm(h, spec.sandwich_norms ? l.pre_ffw_norm : l.post_attn_norm);
  const at::Tensor gate = l.proj[4]->Forward(m);
  const at::Tensor act = spec.activation == Activation::kGeluTanh ? at::gelu(gate, "tanh") : at::silu(gate);
  m = l.proj[6]->Forward(act * l.proj[5]->Forward(m));  // down(act(gate(m)) · up(m))
  if (probe != nullptr) (*probe)(absl::StrCat("model.layers.", i, ".mlp"), m);
  if (spec.sandwich_norms) m = Norm(m, l.post_ffw_norm);
  return h + m;
}

at::Tensor DecoderState::Attention(const LayerWeights& l, int64_t index, const at::Tensor& x, const at::Tensor& cos,
                                   const at::Tensor& sin, const at::Tensor& mask, KvCache* cache) const {
  const io::TextConfig& c = config.text;
  const int64_t B = x.size(0), T = x.size(1), D = c.head_dim;
  const int64_t H = c.num_attention_heads, K = c.num_key_value_heads;
  // (B, T, C) → (B, H|K, T, D)
  at::Tensor q = l.proj[0]->Forward(x).view({B, T, H, D}).transpose(1, 2);
  at::Tensor k = l.proj[1]->Forward(x).view({B, T, K, D}).transpose(1, 2);
  at::Tensor v = l.proj[2]->Forward(x).view({B, T, K, D}).transpose(1, 2);
  if (spec.qk_norm) {  // per head, over D, before RoPE
    q = Norm(q, l.q_norm);
    k = Norm(k, l.k_norm);
  }
  q = kernels::ApplyRope(q, cos, sin);
  k = kernels::ApplyRope(k, cos, sin);
  if (cache != nullptr) {  // keys and values of the tokens so far: (B, K, kept + T, D)
    // Stored in the cache's dtype (bfloat16 halves it); attention reads them back widened.
    const c10::ScalarType stored = cache->dtype.value_or(q.scalar_type());
    at::Tensor k_all = k.to(stored), v_all = v.to(stored);
    if (cache->k[index].defined()) {
      k_all = at::cat({cache->k[index], k_all}, 2);
      v_all = at::cat({cache->v[index], v_all}, 2);
    }
    // A sliding layer keeps only the last W − 1 keys: no later query can see further back (what
    // transformers' sliding-window cache keeps). Full layers keep everything.
    const int64_t keep = spec.sliding[index] && spec.window > 0 ? spec.window - 1 : k_all.size(2);
    const int64_t drop = std::max<int64_t>(0, k_all.size(2) - keep);
    cache->k[index] = k_all.slice(2, drop);
    cache->v[index] = v_all.slice(2, drop);
    k = k_all.to(q.scalar_type());
    v = v_all.to(q.scalar_type());
  }
  const int64_t S = k.size(2);  // keys
  at::Tensor o;
  {  // scores, softmax and the weighted sum: the projections are timed on their own
    RECORD_FUNCTION("llmtrain::attention_core", std::vector<c10::IValue>());
    // GQA: query head h reads kv head h / G, G = H / K. Without a cache, as transformers' repeat_kv
    // (the keys copied per query head, the products it computes, bit for bit); with one
    // (generation), each kv head's G query heads are one matrix against its keys, which copies
    // nothing: a decoding step's attention is mostly that copy otherwise.
    const bool grouped = H != K && cache != nullptr;
    if (H != K && !grouped) {
      k = k.unsqueeze(2).expand({B, K, H / K, S, D}).reshape({B, H, S, D});
      v = v.unsqueeze(2).expand({B, K, H / K, S, D}).reshape({B, H, S, D});
    }
    at::Tensor s = grouped ? at::matmul(q.reshape({B, K, (H / K) * T, D}), k.transpose(2, 3)).view({B, H, T, S})
                           : at::matmul(q, k.transpose(2, 3));
    s = s * spec.attn_scale;  // (B, H, T, S)
    if (spec.attn_softcap) {  // Gemma 2: cap · tanh(s / cap), before the mask
      s = at::tanh(s / *spec.attn_softcap) * *spec.attn_softcap;
    }
    s = s + mask;
    const at::Tensor p = at::softmax(s, -1, at::kFloat).to(q.scalar_type());
    o = grouped ? at::matmul(p.reshape({B, K, (H / K) * T, S}), v).view({B, H, T, D})
                : at::matmul(p, v);
    o = o.transpose(1, 2).reshape({B, T, H * D});
  }
  return l.proj[3]->Forward(o);
}

std::vector<at::Tensor> DecoderState::LayerParameters(int64_t i) const {
  const LayerWeights& l = layers[i];
  std::vector<at::Tensor> out;
  for (const at::Tensor* t : {&l.input_norm, &l.post_attn_norm, &l.pre_ffw_norm, &l.post_ffw_norm, &l.q_norm,
                              &l.k_norm}) {
    if (t->defined() && t->requires_grad()) out.push_back(*t);
  }
  for (const auto& p : l.proj) p->AppendTrainable(&out);
  // A bias inside a projection was listed by it; drop repeats (order kept).
  std::vector<at::Tensor> unique;
  for (const at::Tensor& t : out) {
    if (std::none_of(unique.begin(), unique.end(), [&](const at::Tensor& u) { return u.is_same(t); })) {
      unique.push_back(t);
    }
  }
  return unique;
}

at::Tensor DecoderState::CheckpointedLayer(int64_t i, const at::Tensor& x, const at::Tensor& cos,
                                           const at::Tensor& sin, const at::Tensor& mask) const {
  const std::vector<at::Tensor> params = i >= 0 ? LayerParameters(i) : VisionLayerParameters(-1 - i);
  // The node keeps the state alive: a shared_ptr that shares ownership with the Decoder's.
  return CheckpointFunction::apply(x, at::TensorList(params), cos, sin, mask, shared_from_this(), i);
}

}  // namespace detail

Decoder::Decoder(std::shared_ptr<detail::DecoderState> state) : state_(std::move(state)) {}
Decoder::~Decoder() = default;

absl::StatusOr<std::unique_ptr<Decoder>> Decoder::Load(absl::string_view path, const DecoderOptions& options) {
  LLMTRAIN_RETURN_IF_ERROR(Validate(options));
  LLMTRAIN_ASSIGN_OR_RETURN(std::shared_ptr<detail::DecoderState> state, detail::LoadDecoderState(path, options));
  return std::unique_ptr<Decoder>(new Decoder(std::move(state)));
}

const std::vector<int64_t>& Decoder::eos_token_ids() const { return state_->eos_token_ids; }
const at::Tensor& Decoder::lm_head() const { return state_->lm_head; }
std::shared_ptr<Linear> Decoder::head_layer() const { return state_->head; }
c10::Device Decoder::device() const { return state_->embed.device(); }

absl::Status Decoder::MoveTo(c10::Device device) {
  if (!device.is_cpu() && !device.is_cuda()) {
    return absl::InvalidArgumentError(absl::StrCat("Decoder::MoveTo: ", device.str(), ": expected cpu or cuda"));
  }
  if (device.is_cuda()) {
    const int64_t gpus = at::hasCUDA() ? static_cast<int64_t>(at::detail::getCUDAHooks().getNumGPUs()) : 0;
    if (gpus == 0) {
      return absl::InvalidArgumentError(absl::StrCat("Decoder::MoveTo: ", device.str(), ": ",
                                                     LLMTRAIN_WITH_CUDA ? "this machine has no CUDA device"
                                                                        : "this llmtrain was built without CUDA"));
    }
    if (!device.has_index()) device = c10::Device(c10::kCUDA, 0);
    if (device.index() >= gpus) {
      return absl::InvalidArgumentError(
          absl::StrCat("Decoder::MoveTo: ", device.str(), ": this machine has ", gpus, " CUDA device(s)"));
    }
  }
  if (state_->residency != nullptr) {
    return absl::FailedPreconditionError(
        "Decoder::MoveTo: the layers are sharded (set_layer_residency): their engine places their memory");
  }
  detail::DecoderState& s = *state_;
  std::vector<at::Tensor> all = {s.embed, s.final_norm, s.lm_head};
  if (s.head != nullptr) s.head->AppendFrozen(&all);
  for (const at::Tensor& t : s.VisionTensors()) all.push_back(t);
  all.insert(all.end(), s.inv_freq.begin(), s.inv_freq.end());
  for (const auto& [name, t] : s.params) all.push_back(t);
  for (int64_t i = 0; i < num_layers(); ++i) {
    for (const at::Tensor& t : s.LayerFrozen(i)) all.push_back(t);
    for (const at::Tensor& t : s.LayerParameters(i)) all.push_back(t);
  }
  try {
    at::NoGradGuard no_grad;
    std::vector<const c10::TensorImpl*> moved;
    for (at::Tensor& t : all) {
      if (!t.defined() || t.device() == device) continue;
      if (std::find(moved.begin(), moved.end(), t.unsafeGetTensorImpl()) != moved.end()) continue;
      moved.push_back(t.unsafeGetTensorImpl());
      // set_data swaps the storage under the same TensorImpl: every handle sees the moved tensor,
      // and a leaf that requires grad stays one.
      t.set_data(t.detach().to(device));
    }
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("Decoder::MoveTo ", device.str(), ": ", e.what_without_backtrace()));
  }
  return absl::OkStatus();
}
void Decoder::set_activation_checkpointing(bool on) { state_->options.activation_checkpointing = on; }
bool Decoder::activation_checkpointing() const { return state_->options.activation_checkpointing; }
void Decoder::set_layer_residency(std::shared_ptr<LayerResidency> residency) { state_->residency = std::move(residency); }
int64_t Decoder::num_layers() const { return static_cast<int64_t>(state_->layers.size()); }

std::vector<at::Tensor> Decoder::LayerFrozenTensors(int64_t index) const {
  TORCH_CHECK(index >= 0 && index < num_layers(), "LayerFrozenTensors: layer ", index, " of ", num_layers());
  return state_->LayerFrozen(index);
}

namespace detail {
at::Tensor DecoderState::Logits(const at::Tensor& hidden) const {
  return head != nullptr ? head->Forward(hidden) : at::linear(hidden, lm_head);
}

std::vector<at::Tensor> DecoderState::LayerFrozen(int64_t index) const {
  const LayerWeights& l = layers[static_cast<size_t>(index)];
  std::vector<at::Tensor> out;
  for (const at::Tensor* t : {&l.input_norm, &l.post_attn_norm, &l.pre_ffw_norm, &l.post_ffw_norm, &l.q_norm,
                              &l.k_norm}) {
    if (t->defined() && !t->requires_grad()) out.push_back(*t);
  }
  for (const auto& p : l.proj) p->AppendFrozen(&out);
  return out;
}
}  // namespace detail
const std::vector<std::pair<std::string, at::Tensor>>& Decoder::named_parameters() const { return state_->params; }
const io::HfConfig& Decoder::config() const { return state_->config; }
const FamilySpec& Decoder::spec() const { return state_->spec; }
Dtype Decoder::dtype() const { return state_->options.dtype; }

absl::Status Decoder::CheckInputs(const at::Tensor& input_ids, const at::Tensor& attention_mask) const {
  return state_->CheckInputs(input_ids, attention_mask);
}

absl::Status Decoder::CheckInputs(const at::Tensor& input_ids, const at::Tensor& attention_mask,
                                  const ImageInputs& images) const {
  return state_->CheckInputs(input_ids, attention_mask, &images);
}

at::Tensor Decoder::Forward(const at::Tensor& input_ids, const at::Tensor& attention_mask,
                            const at::Tensor& position_ids, const ImageInputs& images) const {
  at::Tensor logits = state_->Logits(state_->Hidden(input_ids, attention_mask, position_ids, nullptr, nullptr, &images));
  const FamilySpec& spec = state_->spec;
  if (spec.final_softcap) logits = at::tanh(logits / *spec.final_softcap) * *spec.final_softcap;
  return logits;
}

at::Tensor Decoder::Forward(const at::Tensor& input_ids, const at::Tensor& attention_mask, KvCache* cache,
                            const ImageInputs& images) const {
  TORCH_CHECK(cache != nullptr, "Forward: cache is null");
  at::Tensor logits = state_->Logits(state_->Hidden(input_ids, attention_mask, {}, cache, nullptr, &images));
  const FamilySpec& spec = state_->spec;
  if (spec.final_softcap) logits = at::tanh(logits / *spec.final_softcap) * *spec.final_softcap;
  return logits;
}

at::Tensor Decoder::LastLogits(const at::Tensor& input_ids, const at::Tensor& attention_mask, KvCache* cache,
                               const ImageInputs& images) const {
  TORCH_CHECK(cache != nullptr, "LastLogits: cache is null");
  const at::Tensor hidden = state_->Hidden(input_ids, attention_mask, {}, cache, nullptr, &images);
  at::Tensor logits = state_->Logits(hidden.select(1, hidden.size(1) - 1));  // (B, V)
  const FamilySpec& spec = state_->spec;
  if (spec.final_softcap) logits = at::tanh(logits / *spec.final_softcap) * *spec.final_softcap;
  return logits;
}

at::Tensor Decoder::Hidden(const at::Tensor& input_ids, const at::Tensor& attention_mask,
                           const at::Tensor& position_ids, const ImageInputs& images) const {
  return state_->Hidden(input_ids, attention_mask, position_ids, nullptr, nullptr, &images);
}

at::Tensor Decoder::ImageFeatures(const at::Tensor& pixel_values) const { return state_->ImageFeatures(pixel_values); }
bool Decoder::has_vision() const { return state_->vision != nullptr; }
int64_t Decoder::image_token_id() const { return state_->vision ? state_->vision->image_token_id : 0; }
int64_t Decoder::tokens_per_image() const { return state_->vision ? state_->vision->tokens_per_image : 0; }
int64_t Decoder::image_size() const { return state_->vision ? state_->vision->config.image_size : 0; }

at::Tensor Decoder::Forward(const at::Tensor& input_ids, const at::Tensor& attention_mask,
                            const at::Tensor& position_ids) const {
  at::Tensor logits = state_->Logits(state_->Hidden(input_ids, attention_mask, position_ids, nullptr, nullptr));
  const FamilySpec& spec = state_->spec;
  if (spec.final_softcap) logits = at::tanh(logits / *spec.final_softcap) * *spec.final_softcap;
  return logits;  // (B, T, V)
}

at::Tensor Decoder::Forward(const at::Tensor& input_ids, const at::Tensor& attention_mask, KvCache* cache) const {
  TORCH_CHECK(cache != nullptr, "Forward: cache is null");
  at::Tensor logits = state_->Logits(state_->Hidden(input_ids, attention_mask, {}, cache, nullptr));
  const FamilySpec& spec = state_->spec;
  if (spec.final_softcap) logits = at::tanh(logits / *spec.final_softcap) * *spec.final_softcap;
  return logits;
}

at::Tensor Decoder::Hidden(const at::Tensor& input_ids, const at::Tensor& attention_mask,
                           const at::Tensor& position_ids) const {
  return state_->Hidden(input_ids, attention_mask, position_ids, nullptr, nullptr);
}

std::optional<std::string> Decoder::FirstNonFiniteModule(const at::Tensor& input_ids, const at::Tensor& attention_mask,
                                                         const at::Tensor& position_ids) const {
  at::NoGradGuard no_grad;
  std::optional<std::string> first;
  const detail::Probe probe = [&first](const std::string& module, const at::Tensor& output) {
    if (!first && !at::isfinite(output).all().item<bool>()) first = module;
  };
  state_->Hidden(input_ids, attention_mask, position_ids, nullptr, &probe);
  return first;
}

std::vector<std::string> Decoder::LinearNames() const {
  std::vector<std::string> names;
  names.reserve(state_->linear_names.size());
  for (const auto& entry : state_->linear_names) names.push_back(entry.first);
  return names;
}

namespace detail {
std::shared_ptr<Linear>& DecoderState::LinearAt(const LinearRef& ref) {
  return ref.vision ? vision->layers[static_cast<size_t>(ref.layer)].proj[ref.slot]
                    : layers[static_cast<size_t>(ref.layer)].proj[ref.slot];
}
const std::shared_ptr<Linear>& DecoderState::LinearAt(const LinearRef& ref) const {
  return ref.vision ? vision->layers[static_cast<size_t>(ref.layer)].proj[ref.slot]
                    : layers[static_cast<size_t>(ref.layer)].proj[ref.slot];
}
}  // namespace detail

std::shared_ptr<Linear> Decoder::linear(absl::string_view name) const {
  for (const auto& [module, where] : state_->linear_names) {
    if (module == name) return state_->LinearAt(where);
  }
  return nullptr;
}

int64_t Decoder::FindParameter(absl::string_view name) const {
  const auto& params = state_->params;
  for (size_t i = 0; i < params.size(); ++i) {
    if (params[i].first == name) return static_cast<int64_t>(i);
  }
  return -1;
}

absl::Status Decoder::ReplaceLinear(absl::string_view name, std::shared_ptr<Linear> layer) {
  for (const auto& [module, where] : state_->linear_names) {
    if (module != name) continue;
    std::shared_ptr<Linear>& slot = state_->LinearAt(where);
    if (layer == nullptr || layer->in_features() != slot->in_features() ||
        layer->out_features() != slot->out_features()) {
      return absl::InvalidArgumentError(absl::StrCat(
          name, ": the new layer must map ", slot->in_features(), " → ", slot->out_features(), " features"));
    }
    // named_parameters() follows the stored weight: gone for a 4-bit layer, the new tensor for a
    // merged one, unchanged for an adapter around the same base.
    slot = std::move(layer);
    const at::Tensor new_weight = slot->stored_weight();
    const std::string key = absl::StrCat(name, ".weight");
    const int64_t index = FindParameter(key);
    auto& params = state_->params;
    if (!new_weight.defined()) {
      if (index >= 0) params.erase(params.begin() + index);
    } else if (index >= 0) {
      params[index].second = new_weight;
    } else {
      params.emplace_back(key, new_weight);
    }
    return absl::OkStatus();
  }
  return absl::NotFoundError(absl::StrCat("\"", name, "\" is not a projection of this ", state_->spec.model_type,
                                          " model"));
}

}  // namespace llmtrain::model
