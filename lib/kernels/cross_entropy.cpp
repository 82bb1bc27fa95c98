// Chunked cross-entropy as a custom autograd function that keeps no logits.
//   d loss / d logits = softmax(logits) − onehot(label)   (per counted row, times the upstream grad)
//   with a soft-cap c·tanh(z/c): times (1 − tanh²(z/c)).
#include "llmtrain/kernels/cross_entropy.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>

namespace llmtrain::kernels {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// float32 logits of rows [begin, end), soft-capped if asked. Also returns tanh(z/c) for backward.
at::Tensor ChunkLogits(const at::Tensor& hidden, const at::Tensor& weight, int64_t begin, int64_t end,
                       const std::optional<double>& softcap, at::Tensor* tanh_out) {
  at::Tensor logits = at::linear(hidden.slice(0, begin, end), weight).to(at::kFloat);  // (n, V)
  if (softcap) {
    at::Tensor t = at::tanh(logits / *softcap);
    logits = t * *softcap;
    if (tanh_out != nullptr) *tanh_out = t;
  }
  return logits;
}

// The loss is the last op of a step, so its gradient is linear in one upstream scalar g. Forward
// therefore computes, chunk by chunk, the loss and the gradients for g = 1 (softmax − onehot,
// times the head and the hidden states) while each chunk's logits are at hand; backward scales
// them by g. Three GEMMs per chunk, as with the full logits, and never more than one chunk of
// logits alive.
class ChunkedCrossEntropyFunction : public torch::autograd::Function<ChunkedCrossEntropyFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& hidden, const at::Tensor& weight,
                            const at::Tensor& labels, int64_t chunk, int64_t ignore_index,
                            double softcap, bool has_softcap) {
    const std::optional<double> cap = has_softcap ? std::optional<double>(softcap) : std::nullopt;
    const bool need_hidden = hidden.requires_grad(), need_weight = weight.requires_grad();
    at::Tensor total = at::zeros({}, at::TensorOptions().dtype(at::kFloat).device(hidden.device()));
    at::Tensor grad_hidden = need_hidden ? at::empty_like(hidden) : at::Tensor();
    at::Tensor grad_weight =
        need_weight ? at::zeros(weight.sizes(), weight.options().dtype(at::kFloat)) : at::Tensor();
    at::NoGradGuard no_grad;
    const int64_t n = hidden.size(0);
    for (int64_t begin = 0; begin < n; begin += chunk) {
      const int64_t end = std::min(n, begin + chunk);
      at::Tensor t;
      const at::Tensor logits = ChunkLogits(hidden, weight, begin, end, cap, &t);  // (n, V) f32
      const at::Tensor y = labels.slice(0, begin, end);
      const at::Tensor counted = y != ignore_index;
      const at::Tensor safe = at::where(counted, y, at::zeros_like(y));
      const at::Tensor lse = at::logsumexp(logits, -1);
      const at::Tensor nll = lse - logits.gather(1, safe.unsqueeze(1)).squeeze(1);
      total = total + at::where(counted, nll, at::zeros_like(nll)).sum();
      if (!need_hidden && !need_weight) continue;
      // d loss / d logits for g = 1: softmax − onehot on counted rows, through the soft-cap.
      at::Tensor d = (logits - lse.unsqueeze(1)).exp_();
      d.scatter_add_(1, safe.unsqueeze(1), at::full({end - begin, 1}, -1.0f, d.options()));
      d.mul_(counted.to(at::kFloat).unsqueeze(1));
      if (cap) d.mul_(1 - t.square_());
      const at::Tensor d_model = d.to(hidden.scalar_type());
      if (need_hidden) grad_hidden.slice(0, begin, end).copy_(at::matmul(d_model, weight));
      if (need_weight) grad_weight.add_(at::matmul(d_model.t(), hidden.slice(0, begin, end)).to(at::kFloat));
    }
    ctx->saved_data["need_hidden"] = need_hidden;
    ctx->saved_data["need_weight"] = need_weight;
    ctx->save_for_backward({grad_hidden, need_weight ? grad_weight.to(weight.scalar_type()) : grad_weight});
    return total;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& g = grad_outputs[0];
    at::Tensor grad_hidden, grad_weight;
    if (ctx->saved_data["need_hidden"].toBool()) grad_hidden = saved[0] * g.to(saved[0].scalar_type());
    if (ctx->saved_data["need_weight"].toBool()) grad_weight = saved[1] * g.to(saved[1].scalar_type());
    return {grad_hidden, grad_weight, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

CrossEntropyResult ChunkedCrossEntropy(const at::Tensor& hidden, const at::Tensor& weight,
                                       const at::Tensor& labels, const CrossEntropyOptions& options) {
  TORCH_CHECK(hidden.dim() == 2 && weight.dim() == 2 && hidden.size(1) == weight.size(1),
              "ChunkedCrossEntropy: hidden ", hidden.sizes(), " and weight ", weight.sizes(),
              " must be (N, C) and (V, C)");
  TORCH_CHECK(labels.dim() == 1 && labels.size(0) == hidden.size(0), "ChunkedCrossEntropy: labels ",
              labels.sizes(), " must be (N) with N = ", hidden.size(0));
  TORCH_CHECK(options.chunk_tokens > 0, "ChunkedCrossEntropy: chunk_tokens must be positive");
  const at::Tensor counted = labels != options.ignore_index;
  const at::Tensor in_range = (labels >= 0) & (labels < weight.size(0));
  TORCH_CHECK((in_range | ~counted).all().item<bool>(), "ChunkedCrossEntropy: a label is outside [0, ",
              weight.size(0), ") and is not ignore_index ", options.ignore_index);
  CrossEntropyResult result;
  result.n_tokens = counted.sum().item<int64_t>();
  result.loss_sum = ChunkedCrossEntropyFunction::apply(
      hidden, weight, labels.to(at::kLong), options.chunk_tokens, options.ignore_index,
      options.final_softcap.value_or(0.0), options.final_softcap.has_value());
  return result;
}

}  // namespace llmtrain::kernels
