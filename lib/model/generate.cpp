#include "llmtrain/model/generate.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <limits>
#include <random>

#include "absl/strings/str_cat.h"
#include "llmtrain/core/status.h"

namespace llmtrain::model {

int64_t ChooseNextToken(at::Tensor logits, const std::vector<int64_t>& history, const GenerationOptions& options,
                        std::mt19937_64& rng) {
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
  if (o.kv_cache_dtype && *o.kv_cache_dtype != at::kFloat && *o.kv_cache_dtype != at::kBFloat16 &&
      *o.kv_cache_dtype != at::kHalf) {
    return absl::InvalidArgumentError("kv_cache_dtype: expected float32, bfloat16 or float16");
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
  cache.dtype = options.kv_cache_dtype;
  std::vector<int64_t> history = prompt, output;
  try {
    // Prefill with the whole prompt, then one token per step.
    at::Tensor logits = model.LastLogits(prompt_ids, at::ones_like(prompt_ids), &cache, images);  // (1, V)
    while (static_cast<int64_t>(output.size()) < options.max_new_tokens) {
      // The choice runs on the CPU (V floats), wherever the model computes.
      const at::Tensor last = logits.squeeze(0).to(at::kCPU, at::kFloat);
      const int64_t token = ChooseNextToken(last.clone(), history, options, rng);
      output.push_back(token);
      history.push_back(token);
      if (options.on_token) options.on_token(token);
      if (std::find(eos.begin(), eos.end(), token) != eos.end()) break;
      if (static_cast<int64_t>(output.size()) == options.max_new_tokens) break;
      const at::Tensor next = at::full({1, 1}, token, prompt_ids.options());
      logits = model.LastLogits(next, at::ones_like(next), &cache);
    }
  } catch (...) {
    return StatusFromCurrentException("generate");
  }
  return output;
}

void KeepRows(KvCache* cache, const at::Tensor& keep) {
  for (at::Tensor& t : cache->k) {
    if (t.defined()) t = t.index_select(0, keep);
  }
  for (at::Tensor& t : cache->v) {
    if (t.defined()) t = t.index_select(0, keep);
  }
  cache->mask = cache->mask.index_select(0, keep);
  cache->next_position = cache->next_position.index_select(0, keep);
}

namespace {

// `t` (B, K, n, D) left-padded with zeros to length `n` on dim 2.
at::Tensor PadLeft(const at::Tensor& t, int64_t n) {
  if (!t.defined() || t.size(2) >= n) return t;
  return at::cat({at::zeros({t.size(0), t.size(1), n - t.size(2), t.size(3)}, t.options()), t}, 2);
}

}  // namespace

absl::Status AppendRows(KvCache* into, KvCache rows) {
  if (rows.length() == 0) return absl::OkStatus();
  if (into->length() == 0) {
    *into = std::move(rows);
    return absl::OkStatus();
  }
  if (into->k.size() != rows.k.size()) {
    return absl::InvalidArgumentError(absl::StrCat("AppendRows: caches of ", into->k.size(), " and ", rows.k.size(),
                                                   " layers"));
  }
  const int64_t length = std::max(into->length(), rows.length());
  for (size_t l = 0; l < into->k.size(); ++l) {
    const at::Tensor& a = into->k[l];
    const at::Tensor& b = rows.k[l];
    if (a.defined() != b.defined() ||
        (a.defined() && (a.size(1) != b.size(1) || a.size(3) != b.size(3) || a.scalar_type() != b.scalar_type()))) {
      return absl::InvalidArgumentError(absl::StrCat("AppendRows: layer ", l, "'s keys differ in shape or dtype"));
    }
  }
  // Everything is built aside and committed at the end: a failure (out of memory) leaves `into`
  // as it was.
  std::vector<at::Tensor> k(into->k.size()), v(into->v.size());
  for (size_t l = 0; l < into->k.size(); ++l) {
    const at::Tensor& a = into->k[l];
    if (!a.defined()) continue;
    // A full layer holds `length` keys after padding; a sliding one min(length, W − 1), which is
    // the longer of the two (a cache past W − 1 holds exactly W − 1).
    const int64_t n = std::max(a.size(2), rows.k[l].size(2));
    k[l] = at::cat({PadLeft(a, n), PadLeft(rows.k[l], n)}, 0);
    v[l] = at::cat({PadLeft(into->v[l], n), PadLeft(rows.v[l], n)}, 0);
  }
  auto pad_mask = [&](const at::Tensor& m) {
    if (m.size(1) == length) return m;
    return at::cat({at::zeros({m.size(0), length - m.size(1)}, m.options()), m}, 1);
  };
  at::Tensor mask = at::cat({pad_mask(into->mask), pad_mask(rows.mask)}, 0);
  at::Tensor next_position = at::cat({into->next_position, rows.next_position}, 0);
  into->k = std::move(k);
  into->v = std::move(v);
  into->mask = std::move(mask);
  into->next_position = std::move(next_position);
  return absl::OkStatus();
}

void DropLeadingPadding(KvCache* cache) {
  if (cache->length() == 0) return;
  // The first column where any row holds a token.
  const at::Tensor any = cache->mask.ne(0).any(0).to(at::kCPU);
  const int64_t length = cache->length();
  int64_t first = 0;
  const bool* used = any.data_ptr<bool>();
  while (first < length && !used[first]) ++first;
  if (first == 0 || first == length) return;
  const int64_t kept = length - first;
  cache->mask = cache->mask.slice(1, first).contiguous();
  for (size_t l = 0; l < cache->k.size(); ++l) {
    if (!cache->k[l].defined()) continue;
    const int64_t n = std::min<int64_t>(cache->k[l].size(2), kept);
    cache->k[l] = cache->k[l].slice(2, cache->k[l].size(2) - n).contiguous();
    cache->v[l] = cache->v[l].slice(2, cache->v[l].size(2) - n).contiguous();
  }
}

absl::StatusOr<std::vector<std::vector<int64_t>>> GenerateBatch(const Decoder& model,
                                                               const std::vector<std::vector<int64_t>>& prompts,
                                                               const GenerationOptions& options,
                                                               const std::vector<at::Tensor>& pixel_values) {
  LLMTRAIN_RETURN_IF_ERROR(Validate(options));
  if (prompts.empty()) return std::vector<std::vector<int64_t>>();
  if (!pixel_values.empty() && pixel_values.size() != prompts.size()) {
    return absl::InvalidArgumentError(absl::StrCat("pixel_values: expected one entry per prompt (", prompts.size(),
                                                   "), found ", pixel_values.size()));
  }
  const int64_t B = static_cast<int64_t>(prompts.size());
  int64_t T = 0;
  for (size_t r = 0; r < prompts.size(); ++r) {
    if (prompts[r].empty()) return absl::InvalidArgumentError(absl::StrCat("prompt ", r, ": expected at least one token id"));
    T = std::max<int64_t>(T, static_cast<int64_t>(prompts[r].size()));
  }
  // Left padding: every row's last prompt token is in the last column, so the next token of every
  // row is read from the same place. Padding is id 0 under mask 0.
  std::vector<int64_t> ids(static_cast<size_t>(B * T), 0), mask(static_cast<size_t>(B * T), 0);
  for (int64_t r = 0; r < B; ++r) {
    const std::vector<int64_t>& p = prompts[static_cast<size_t>(r)];
    const int64_t offset = r * T + (T - static_cast<int64_t>(p.size()));
    std::copy(p.begin(), p.end(), ids.begin() + offset);
    std::fill_n(mask.begin() + offset, p.size(), 1);
  }
  const std::vector<int64_t>& eos = options.eos_token_ids.empty() ? model.eos_token_ids() : options.eos_token_ids;
  // Each row draws from its own generator seeded as Generate's: a prompt samples the same tokens
  // in a batch as alone.
  std::vector<std::mt19937_64> rngs(static_cast<size_t>(B), std::mt19937_64(options.seed));
  std::vector<std::vector<int64_t>> outputs(static_cast<size_t>(B)), histories(prompts);
  std::vector<int64_t> live(static_cast<size_t>(B));  // the prompt index of each row still in the batch
  for (int64_t r = 0; r < B; ++r) live[static_cast<size_t>(r)] = r;
  KvCache cache;
  cache.dtype = options.kv_cache_dtype;
  try {
    at::NoGradGuard no_grad;
    const at::Tensor prompt_ids = at::tensor(ids, at::kLong).view({B, T}).to(model.device());
    const at::Tensor prompt_mask = at::tensor(mask, at::kLong).view({B, T}).to(model.device());
    ImageInputs images;
    std::vector<at::Tensor> defined;
    for (const at::Tensor& p : pixel_values) {
      if (p.defined() && p.size(0) > 0) defined.push_back(p);
    }
    if (!defined.empty()) {
      images.pixel_values = at::cat(defined, 0).to(model.device());  // row by row: the image tokens' order
      images.token_type_ids = prompt_ids.eq(model.image_token_id()).to(at::kLong);
    }
    LLMTRAIN_RETURN_IF_ERROR(model.CheckInputs(prompt_ids, prompt_mask, images));
    at::Tensor logits = model.LastLogits(prompt_ids, prompt_mask, &cache, images);
    while (!live.empty()) {
      const at::Tensor last = logits.to(at::kCPU, at::kFloat);  // (rows, V)
      std::vector<int64_t> next, kept_rows, still_live;
      for (size_t row = 0; row < live.size(); ++row) {
        const size_t p = static_cast<size_t>(live[row]);
        const int64_t token = ChooseNextToken(last[static_cast<int64_t>(row)].clone(), histories[p], options, rngs[p]);
        outputs[p].push_back(token);
        histories[p].push_back(token);
        const bool done = std::find(eos.begin(), eos.end(), token) != eos.end() ||
                          static_cast<int64_t>(outputs[p].size()) == options.max_new_tokens;
        if (done) continue;
        next.push_back(token);
        kept_rows.push_back(static_cast<int64_t>(row));
        still_live.push_back(live[row]);
      }
      if (still_live.empty()) break;
      if (still_live.size() != live.size()) KeepRows(&cache, at::tensor(kept_rows, at::kLong).to(model.device()));
      live = std::move(still_live);
      const at::Tensor step = at::tensor(next, at::kLong).view({-1, 1}).to(model.device());
      logits = model.LastLogits(step, at::ones_like(step), &cache);
    }
  } catch (...) {
    return StatusFromCurrentException("generate (batch)");
  }
  return outputs;
}

}  // namespace llmtrain::model
