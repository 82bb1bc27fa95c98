#include "llmtrain/model/generate.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <limits>
#include <random>

#include "absl/strings/str_cat.h"
#include "llmtrain/core/status.h"

namespace llmtrain::model {
namespace {

// One next-token choice from float32 logits (V) after `history` (prompt + output so far).
int64_t ChooseToken(at::Tensor logits, const std::vector<int64_t>& history,
                    const GenerationOptions& options, std::mt19937_64& rng) {
  if (options.repetition_penalty != 1.0 && !history.empty()) {
    // transformers RepetitionPenaltyLogitsProcessor: negative scores × p, positive ÷ p.
    std::vector<int64_t> unique(history);
    std::sort(unique.begin(), unique.end());
    unique.erase(std::unique(unique.begin(), unique.end()), unique.end());
    const at::Tensor ids = at::tensor(unique, at::kLong);
    const at::Tensor seen = logits.index_select(0, ids);
    logits.index_put_({ids}, at::where(seen < 0, seen * options.repetition_penalty,
                                       seen / options.repetition_penalty));
  }
  if (options.temperature <= 0.0) return logits.argmax().item<int64_t>();
  logits = logits / options.temperature;
  const double lowest = -std::numeric_limits<float>::infinity();
  if (options.top_k > 0 && options.top_k < logits.size(0)) {
    const at::Tensor kth = std::get<0>(logits.topk(options.top_k)).min();
    logits = at::where(logits < kth, at::scalar_tensor(lowest), logits);
  }
  if (options.top_p < 1.0) {
    // Keep the most likely tokens whose cumulative probability first reaches top_p.
    auto [sorted, order] = logits.sort(/*dim=*/0, /*descending=*/true);
    const at::Tensor cumulative = sorted.softmax(0).cumsum(0);
    at::Tensor drop = (cumulative - sorted.softmax(0)) >= options.top_p;  // mass before this one
    drop.index_put_({0}, false);
    logits = logits.index_put({order.index({drop})}, at::scalar_tensor(lowest));
  }
  const at::Tensor probs = logits.softmax(0).to(at::kDouble);
  std::uniform_real_distribution<double> uniform(0.0, 1.0);
  const double u = uniform(rng);
  const at::Tensor cdf = probs.cumsum(0);
  const int64_t chosen = (cdf < u * cdf[-1].item<double>()).sum().item<int64_t>();
  return std::min<int64_t>(chosen, probs.size(0) - 1);
}

}  // namespace

absl::Status Validate(const GenerationOptions& o) {
  if (o.max_new_tokens < 1) {
    return absl::InvalidArgumentError(absl::StrCat("max_new_tokens: expected ≥ 1, found ", o.max_new_tokens));
  }
  if (o.temperature < 0) {
    return absl::InvalidArgumentError(absl::StrCat("temperature: expected ≥ 0, found ", o.temperature));
  }
  if (o.top_k < 0) return absl::InvalidArgumentError(absl::StrCat("top_k: expected ≥ 0, found ", o.top_k));
  if (!(o.top_p > 0.0 && o.top_p <= 1.0)) {
    return absl::InvalidArgumentError(absl::StrCat("top_p: expected a value in (0, 1], found ", o.top_p));
  }
  if (!(o.repetition_penalty > 0.0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("repetition_penalty: expected > 0, found ", o.repetition_penalty));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<int64_t>> Generate(const Decoder& model, const std::vector<int64_t>& prompt,
                                              const GenerationOptions& options) {
  LLMTRAIN_RETURN_IF_ERROR(Validate(options));
  if (prompt.empty()) return absl::InvalidArgumentError("prompt: expected at least one token id");
  const at::Tensor prompt_ids = at::tensor(prompt, at::kLong).view({1, -1}).to(model.device());
  ImageInputs images;
  if (options.pixel_values.defined()) {
    images.pixel_values = options.pixel_values.to(model.device());
    images.token_type_ids = prompt_ids.eq(model.image_token_id()).to(at::kLong);
  }
  LLMTRAIN_RETURN_IF_ERROR(model.CheckInputs(prompt_ids, {}, images));
  const std::vector<int64_t>& eos = options.eos_token_ids.empty() ? model.eos_token_ids()
                                                                  : options.eos_token_ids;
  at::NoGradGuard no_grad;
  std::mt19937_64 rng(options.seed);
  KvCache cache;
  std::vector<int64_t> history = prompt, output;
  try {
    // Prefill with the whole prompt, then one token per step.
    at::Tensor logits = model.Forward(prompt_ids, at::ones_like(prompt_ids), &cache, images);
    while (static_cast<int64_t>(output.size()) < options.max_new_tokens) {
      // The choice runs on the CPU (V floats), wherever the model computes.
      const at::Tensor last = logits.select(1, logits.size(1) - 1).squeeze(0).to(at::kCPU, at::kFloat);
      const int64_t token = ChooseToken(last.clone(), history, options, rng);
      output.push_back(token);
      history.push_back(token);
      if (options.on_token) options.on_token(token);
      if (std::find(eos.begin(), eos.end(), token) != eos.end()) break;
      if (static_cast<int64_t>(output.size()) == options.max_new_tokens) break;
      const at::Tensor next = at::full({1, 1}, token, prompt_ids.options());
      logits = model.Forward(next, at::ones_like(next), &cache);
    }
  } catch (...) {
    return StatusFromCurrentException("generate");
  }
  return output;
}

}  // namespace llmtrain::model
