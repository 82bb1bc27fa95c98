// Gemma 3's image path (transformers SiglipVisionModel + Gemma3MultiModalProjector, eager): the
// SigLIP tower turns an image into (S/p)² patch states, the projector pools them to
// mm_tokens_per_image tokens and maps them into the decoder's hidden size. decoder.cpp puts the
// result in place of the image tokens; load.cpp fills VisionState.
#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <cmath>

#include "llmtrain/kernels/rms_norm.h"
#include "model/decoder_state.h"

namespace llmtrain::model::detail {

at::Tensor DecoderState::VisionLayer(int64_t index, const at::Tensor& x) const {
  const VisionState& v = *vision;
  const VisionLayerWeights& l = v.layers[static_cast<size_t>(index)];
  const int64_t N = x.size(0), P = x.size(1), C = v.config.hidden_size;
  const int64_t H = v.config.num_attention_heads, D = C / H;
  const double eps = v.config.layer_norm_eps;
  // SiglipAttention (eager): no mask, scale head_dim^-0.5, softmax in float32.
  const at::Tensor a = at::layer_norm(x, {C}, l.ln1_weight, l.ln1_bias, eps);
  const at::Tensor k = l.proj[0]->Forward(a).view({N, P, H, D}).transpose(1, 2);
  const at::Tensor val = l.proj[1]->Forward(a).view({N, P, H, D}).transpose(1, 2);
  const at::Tensor q = l.proj[2]->Forward(a).view({N, P, H, D}).transpose(1, 2);
  const at::Tensor s = at::matmul(q, k.transpose(2, 3)) * std::pow(static_cast<double>(D), -0.5);
  const at::Tensor p = at::softmax(s, -1, at::kFloat).to(q.scalar_type());
  const at::Tensor o = at::matmul(p, val).transpose(1, 2).reshape({N, P, C});
  const at::Tensor h = x + l.proj[3]->Forward(o);
  // SiglipMLP: fc2(act(fc1(LN2 h))).
  const at::Tensor m = at::layer_norm(h, {C}, l.ln2_weight, l.ln2_bias, eps);
  const at::Tensor up = l.proj[4]->Forward(m);
  const at::Tensor act = v.config.hidden_act == "gelu" ? at::gelu(up) : at::gelu(up, "tanh");
  return h + l.proj[5]->Forward(act);
}

std::vector<at::Tensor> DecoderState::VisionLayerParameters(int64_t index) const {
  const VisionLayerWeights& l = vision->layers[static_cast<size_t>(index)];
  std::vector<at::Tensor> out;
  for (const at::Tensor* t : {&l.ln1_weight, &l.ln1_bias, &l.ln2_weight, &l.ln2_bias}) {
    if (t->defined() && t->requires_grad()) out.push_back(*t);
  }
  for (const auto& p : l.proj) p->AppendTrainable(&out);
  std::vector<at::Tensor> unique;  // a bias a projection listed twice counts once
  for (const at::Tensor& t : out) {
    if (std::none_of(unique.begin(), unique.end(), [&](const at::Tensor& u) { return u.is_same(t); })) {
      unique.push_back(t);
    }
  }
  return unique;
}

std::vector<at::Tensor> DecoderState::VisionTensors() const {
  std::vector<at::Tensor> out;
  if (!vision) return out;
  const VisionState& v = *vision;
  out = {v.patch_weight, v.patch_bias, v.position, v.post_weight, v.post_bias, v.mm_norm, v.mm_projection};
  for (const VisionLayerWeights& l : v.layers) {
    for (const at::Tensor* t : {&l.ln1_weight, &l.ln1_bias, &l.ln2_weight, &l.ln2_bias}) out.push_back(*t);
    for (const auto& p : l.proj) {
      p->AppendFrozen(&out);
      p->AppendTrainable(&out);
    }
  }
  return out;
}

at::Tensor DecoderState::ImageFeatures(const at::Tensor& pixel_values) const {
  TORCH_CHECK(vision != nullptr, "ImageFeatures: this ", spec.model_type, " model has no vision tower");
  const VisionState& v = *vision;
  const int64_t S = v.config.image_size, p = v.config.patch_size, C = v.config.hidden_size;
  TORCH_CHECK(pixel_values.dim() == 4 && pixel_values.size(1) == v.config.num_channels && pixel_values.size(2) == S &&
                  pixel_values.size(3) == S,
              "pixel_values: expected (N, ", v.config.num_channels, ", ", S, ", ", S, "), found ", pixel_values.sizes());
  const c10::ScalarType dtype = v.patch_weight.scalar_type();
  // Without anything to train in the tower (the usual LoRA-on-the-decoder run), it runs without
  // autograd: none of its activations are kept.
  bool trains = pixel_values.requires_grad() || v.patch_weight.requires_grad() || v.position.requires_grad() ||
                v.post_weight.requires_grad();
  for (int64_t i = 0; !trains && i < static_cast<int64_t>(v.layers.size()); ++i) {
    trains = !VisionLayerParameters(i).empty();
  }
  at::Tensor h;
  {
    const at::AutoGradMode grad_mode(at::GradMode::is_enabled() && trains);
    // SiglipVisionEmbeddings: conv patches (stride p, no padding), row-major tokens, + positions.
    h = at::conv2d(pixel_values.to(pixel_values.options().dtype(dtype).device(v.patch_weight.device())),
                   v.patch_weight, v.patch_bias, {p, p});
    h = h.flatten(2).transpose(1, 2) + v.position.unsqueeze(0);  // (N, P, Cv)
    for (int64_t i = 0; i < static_cast<int64_t>(v.layers.size()); ++i) {
      const bool checkpointed = options.activation_checkpointing && at::GradMode::is_enabled();
      // (The checkpoint function's rope and mask inputs are unused here: empty tensors.)
      const at::Tensor none = at::empty({0}, h.options());
      h = checkpointed ? CheckpointedLayer(-1 - i, h, none, none, none) : VisionLayer(i, h);
    }
    h = at::layer_norm(h, {C}, v.post_weight, v.post_bias, v.config.layer_norm_eps);
  }
  // Gemma3MultiModalProjector: (N, P, Cv) → grid → k×k average pool → tokens, RMSNorm (1 + w, in
  // float32), then x @ W.
  const int64_t N = h.size(0), grid = S / p;
  const int64_t side = static_cast<int64_t>(std::lround(std::sqrt(static_cast<double>(v.tokens_per_image))));
  const int64_t kernel = grid / side;
  at::Tensor x = h.transpose(1, 2).reshape({N, C, grid, grid}).contiguous();
  x = at::avg_pool2d(x, {kernel, kernel}, {kernel, kernel});
  x = x.flatten(2).transpose(1, 2);  // (N, tokens, Cv)
  kernels::RmsNormOptions norm;
  norm.eps = v.config.layer_norm_eps;
  norm.scale = kernels::NormScale::kOnePlusWeight;
  x = kernels::RmsNorm(x, v.mm_norm, norm);
  return at::matmul(x, v.mm_projection).to(h.scalar_type());
}

}  // namespace llmtrain::model::detail
