// Chunked cross-entropy as a custom autograd function that keeps no logits, over the rows whose
// label counts.
//   d loss / d logits = softmax(logits) − onehot(label)   (per counted row, times the upstream grad)
//   with a soft-cap c·tanh(z/c): times (1 − tanh²(z/c)).
#include "llmtrain/kernels/cross_entropy.h"

#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <ATen/record_function.h>
#include <torch/csrc/autograd/custom_function.h>

#include "absl/strings/str_cat.h"

namespace llmtrain::kernels {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The loss is the last op of a step, so its gradient is linear in one upstream scalar g. Forward
// therefore computes, chunk by chunk, the loss and the gradients for g = 1 (softmax − onehot,
// times the head and the hidden states) while each chunk's logits are at hand; backward scales
// them by g. Three GEMMs per chunk, as with the full logits, and never more than one chunk of
// logits alive.
//
// Memory traffic matters as much as the GEMMs here: a chunk of Gemma logits is 256 MiB and the
// head's gradient 640 MiB, so the chunk buffers are allocated once and reused (fresh pages cost a
// page fault each), the head gradient is accumulated in place by the GEMM (beta = 1) instead of
// through zeros + a temporary + add, and backward scales the saved gradients in place.
class ChunkedCrossEntropyFunction : public torch::autograd::Function<ChunkedCrossEntropyFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& hidden, const at::Tensor& weight,
                            const at::Tensor& labels, int64_t chunk, int64_t sub_chunk, int64_t ignore_index,
                            double softcap, bool has_softcap) {
    RECORD_FUNCTION("llmtrain::cross_entropy", std::vector<c10::IValue>());
    const bool need_hidden = hidden.requires_grad(), need_weight = weight.requires_grad();
    const int64_t n = hidden.size(0), vocab = weight.size(0);
    const at::ScalarType model_dtype = hidden.scalar_type();
    const bool float_model = model_dtype == at::kFloat && weight.scalar_type() == at::kFloat;
    at::Tensor total = at::zeros({}, at::TensorOptions().dtype(at::kFloat).device(hidden.device()));
    at::Tensor grad_hidden = need_hidden ? at::empty_like(hidden) : at::Tensor();
    // float32 accumulator of the head gradient over chunks; written by the first chunk.
    at::Tensor grad_weight =
        need_weight ? at::empty(weight.sizes(), weight.options().dtype(at::kFloat)) : at::Tensor();
    at::NoGradGuard no_grad;
    const int64_t rows = std::min(n, chunk);
    // A float32 model reduces its float32 logits in place, so a sub-chunk is the whole chunk. A
    // bf16/fp16 model's GEMMs take the whole chunk (the larger M runs much faster there) while
    // the float32 reduction goes through a smaller buffer, sub_chunk rows at a time.
    const int64_t sub_rows = float_model ? rows : std::min(rows, sub_chunk);
    // Reused per chunk, and no other chunk-sized temporaries: the model-dtype logits (the GEMM's
    // output, and then the gradient the backward GEMMs take), float32 logits that become the
    // log-probabilities in place (each row's max and sum are taken before the row is written) and
    // then the gradient (the same buffer as the logits for a float32 model), and tanh(z / cap)
    // under a soft-cap.
    at::Tensor logits_buf = at::empty({rows, vocab}, hidden.options());
    at::Tensor f32_buf =
        float_model ? logits_buf : at::empty({sub_rows, vocab}, hidden.options().dtype(at::kFloat));
    at::Tensor tanh_buf =
        has_softcap ? at::empty({sub_rows, vocab}, hidden.options().dtype(at::kFloat)) : at::Tensor();
    for (int64_t begin = 0; begin < n; begin += chunk) {
      const int64_t end = std::min(n, begin + chunk), m = end - begin;
      const at::Tensor h = hidden.slice(0, begin, end);
      at::Tensor logits = logits_buf.narrow(0, 0, m);
      at::mm_out(logits, h, weight.t());
      for (int64_t s0 = 0; s0 < m; s0 += sub_rows) {
        const int64_t s = std::min(sub_rows, m - s0);
        at::Tensor part = logits.narrow(0, s0, s);
        at::Tensor logp = float_model ? part : f32_buf.narrow(0, 0, s).copy_(part), t;
        if (has_softcap) {  // z = cap · tanh(z / cap), keeping t = tanh(z / cap) for backward
          t = tanh_buf.narrow(0, 0, s);
          logp.div_(softcap).tanh_();
          t.copy_(logp);
          logp.mul_(softcap);
        }
        at::_log_softmax_out(logp, logp, 1, false);  // z − logsumexp(z), as transformers' loss
        const at::Tensor y = labels.slice(0, begin + s0, begin + s0 + s);
        const at::Tensor counted = y != ignore_index;
        const at::Tensor safe = at::where(counted, y, at::zeros_like(y)).unsqueeze(1);
        const at::Tensor nll = -logp.gather(1, safe).squeeze(1);
        total = total + at::where(counted, nll, at::zeros_like(nll)).sum();
        if (!need_hidden && !need_weight) continue;
        // d loss / d logits for g = 1: softmax − onehot on counted rows (zero elsewhere), through
        // the soft-cap; for a bf16/fp16 model written back over its logits, in the model dtype.
        at::Tensor d = logp.exp_();
        d.scatter_add_(1, safe, at::full({s, 1}, -1.0f, d.options()));
        const at::Tensor ignored = (~counted).nonzero().squeeze(1);
        if (ignored.numel() > 0) d.index_fill_(0, ignored, 0.0);
        if (has_softcap) d.mul_(t.square_().neg_().add_(1));
        if (!float_model) part.copy_(d);
      }
      if (!need_hidden && !need_weight) continue;
      const at::Tensor& d_model = logits;
      if (need_hidden) {
        at::Tensor rows_out = grad_hidden.slice(0, begin, end);
        at::mm_out(rows_out, d_model, weight);
      }
      if (!need_weight) continue;
      if (float_model) {
        if (begin == 0) {
          at::mm_out(grad_weight, d_model.t(), h);
        } else {
          grad_weight.addmm_(d_model.t(), h);
        }
      } else if (begin == 0) {
        grad_weight.copy_(at::mm(d_model.t(), h));
      } else {
        grad_weight.add_(at::mm(d_model.t(), h).to(at::kFloat));
      }
    }
    // Held in saved_data rather than save_for_backward: backward takes them out, so the tensors it
    // returns are the only references and autograd accumulates into them in place (a saved
    // variable would live on until the node is released and force a copy of the (V, C) gradient).
    ctx->saved_data["grad_hidden"] = grad_hidden;
    ctx->saved_data["grad_weight"] =
        need_weight && !float_model ? grad_weight.to(weight.scalar_type()) : grad_weight;
    return total;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    // The gradients are taken out of the context and scaled in place (no second 640 MiB tensor),
    // so they serve one backward only.
    auto take = [&](const char* key) {
      const auto it = ctx->saved_data.find(key);
      TORCH_CHECK(it != ctx->saved_data.end(),
                  "ChunkedCrossEntropy: backward can run only once per forward (retain_graph is not supported)");
      at::Tensor t = it->second.isTensor() ? it->second.toTensor() : at::Tensor();
      ctx->saved_data.erase(it);
      return t;
    };
    at::Tensor grad_hidden = take("grad_hidden"), grad_weight = take("grad_weight");
    const at::Tensor& g = grad_outputs[0];
    // A loss used as is (g = 1) needs no scaling; that check costs one scalar read.
    if (g.numel() != 1 || g.item<double>() != 1.0) {
      if (grad_hidden.defined()) grad_hidden.mul_(g.to(grad_hidden.scalar_type()));
      if (grad_weight.defined()) grad_weight.mul_(g.to(grad_weight.scalar_type()));
    }
    return {std::move(grad_hidden), std::move(grad_weight), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(),
            at::Tensor(), at::Tensor()};
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
  TORCH_CHECK(options.chunk_tokens >= 0 && options.chunk_bytes > 0,
              "ChunkedCrossEntropy: chunk_tokens must be ≥ 0 and chunk_bytes positive");
  // Rows per chunk: given, or as many model-dtype logits as fit the budget (for Gemma's 262k
  // vocabulary and 128 MiB: 128 rows in float32, 256 in bf16); a bf16/fp16 model reduces them in
  // float32 through a buffer of half the budget (64 rows).
  const int64_t vocab = weight.size(0);
  const c10::DeviceType device = hidden.device().type();
  const bool autocast = hidden.scalar_type() == at::kFloat && at::autocast::is_autocast_enabled(device);
  const int64_t elem =
      autocast ? static_cast<int64_t>(c10::elementSize(at::autocast::get_autocast_dtype(device)))
               : static_cast<int64_t>(c10::elementSize(hidden.scalar_type()));
  const int64_t chunk =
      options.chunk_tokens > 0 ? options.chunk_tokens : std::max<int64_t>(1, options.chunk_bytes / (vocab * elem));
  const int64_t sub_chunk = std::max<int64_t>(1, options.chunk_bytes / 2 / (vocab * int64_t{4}));
  const at::Tensor counted = labels != options.ignore_index;
  const at::Tensor in_range = (labels >= 0) & (labels < weight.size(0));
  TORCH_CHECK((in_range | ~counted).all().item<bool>(), "ChunkedCrossEntropy: a label is outside [0, ",
              weight.size(0), ") and is not ignore_index ", options.ignore_index);
  CrossEntropyResult result;
  result.n_tokens = counted.sum().item<int64_t>();
  // Rows whose label is ignored (prompts under loss masking, padding) contribute nothing: only the
  // counted rows go through the head's GEMMs (index_select's backward scatters their gradients
  // back, zeros elsewhere).
  at::Tensor rows = hidden, targets = labels.to(at::kLong);
  at::Tensor head = weight;
  // Under autocast the head's GEMMs run in the autocast dtype, as torch.autocast runs the
  // lm_head linear; the reduction stays float32 either way.
  if (autocast) {
    const c10::ScalarType dtype = at::autocast::get_autocast_dtype(device);
    rows = rows.to(dtype);
    head = weight.to(dtype);
  }
  if (result.n_tokens < hidden.size(0)) {
    const at::Tensor keep = counted.nonzero().squeeze(1);
    rows = rows.index_select(0, keep);
    targets = targets.index_select(0, keep);
  }
  result.loss_sum = ChunkedCrossEntropyFunction::apply(rows, head, targets, chunk, sub_chunk,
                                                       options.ignore_index, options.final_softcap.value_or(0.0),
                                                       options.final_softcap.has_value());
  return result;
}

absl::Status Validate(const CrossEntropyOptions& o) {
  if (o.chunk_tokens < 0) {
    return absl::InvalidArgumentError(absl::StrCat("CrossEntropyOptions.chunk_tokens: expected ≥ 0, found ", o.chunk_tokens));
  }
  if (o.chunk_bytes <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("CrossEntropyOptions.chunk_bytes: expected > 0, found ", o.chunk_bytes));
  }
  if (o.ignore_index >= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("CrossEntropyOptions.ignore_index: expected a negative label, found ", o.ignore_index));
  }
  if (o.final_softcap && !(*o.final_softcap > 0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("CrossEntropyOptions.final_softcap: expected > 0, found ", *o.final_softcap));
  }
  return absl::OkStatus();
}

}  // namespace llmtrain::kernels
