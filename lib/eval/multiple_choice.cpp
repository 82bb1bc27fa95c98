#include "llmtrain/eval/multiple_choice.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "llmtrain/core/status.h"
#include "tokenizer/unicode.h"

namespace llmtrain::eval {
namespace {

// Python's len() of a UTF-8 string: its code points.
int64_t CodePoints(absl::string_view text) {
  int64_t n = 0;
  for (size_t pos = 0; pos < text.size();) {
    tokenizer::detail::NextCodePoint(text, &pos);
    ++n;
  }
  return n;
}

}  // namespace

absl::StatusOr<ChoiceResult> EvaluateMultipleChoice(const model::Decoder& model, const tokenizer::Tokenizer& tok,
                                                    const ChoiceTask& task, const ChoiceOptions& options) {
  if (options.batch_size < 1) {
    return absl::InvalidArgumentError(absl::StrCat("ChoiceOptions.batch_size: expected ≥ 1, found ", options.batch_size));
  }
  if (options.max_length < 0 || options.max_docs < 0) {
    return absl::InvalidArgumentError("ChoiceOptions.max_length and max_docs: expected ≥ 0");
  }
  const int64_t max_length = options.max_length > 0                              ? options.max_length
                             : model.config().text.max_position_embeddings > 0 ? model.config().text.max_position_embeddings
                                                                          : 2048;
  const int64_t total = options.max_docs > 0 ? std::min<int64_t>(options.max_docs, task.docs.size()) : task.docs.size();
  struct Request {
    int64_t doc, choice;
    std::vector<int64_t> input;  // context + continuation, left-truncated, without the last id
    std::vector<int64_t> continuation;
  };
  std::vector<Request> requests;
  for (int64_t d = 0; d < total; ++d) {
    const ChoiceDoc& doc = task.docs[static_cast<size_t>(d)];
    if (doc.choices.size() < 2 || doc.gold < 0 || doc.gold >= static_cast<int64_t>(doc.choices.size()) ||
        std::any_of(doc.choices.begin(), doc.choices.end(), [](const std::string& c) { return c.empty(); })) {
      return absl::InvalidArgumentError(absl::StrCat(doc.where, ": expected ≥ 2 non-empty choices and gold among them, "
                                                     "found ", doc.choices.size(), " choices and gold ", doc.gold));
    }
    for (size_t c = 0; c < doc.choices.size(); ++c) {
      const EncodedRequest e = EncodeChoiceRequest(tok, doc.context, absl::StrCat(" ", doc.choices[c]));
      if (e.continuation.empty()) {
        return absl::InvalidArgumentError(absl::StrCat(doc.where, ": choice ", c, " gives no tokens to score"));
      }
      if (static_cast<int64_t>(e.continuation.size()) > max_length) {
        return absl::InvalidArgumentError(absl::StrCat(doc.where, ": choice ", c, " is ", e.continuation.size(),
                                                       " tokens, more than max_length ", max_length));
      }
      Request r{d, static_cast<int64_t>(c), {}, {e.continuation.begin(), e.continuation.end()}};
      std::vector<int64_t> full(e.context.begin(), e.context.end());
      full.insert(full.end(), e.continuation.begin(), e.continuation.end());
      const size_t keep = std::min(full.size(), static_cast<size_t>(max_length + 1));
      r.input.assign(full.end() - static_cast<std::ptrdiff_t>(keep), full.end() - 1);
      requests.push_back(std::move(r));
    }
  }
  ChoiceResult result;
  result.n_docs = total;
  result.docs.resize(static_cast<size_t>(total));
  for (int64_t d = 0; d < total; ++d) {
    const ChoiceDoc& doc = task.docs[static_cast<size_t>(d)];
    ChoiceScores& s = result.docs[static_cast<size_t>(d)];
    s.loglikelihood.assign(doc.choices.size(), 0.0);
    s.is_greedy.assign(doc.choices.size(), false);
    s.gold = doc.gold;
    s.where = doc.where;
    s.digest = ChoiceDocDigest(doc);
  }
  // 0: none (image+text models apply none; see Decoder::Forward).
  const double softcap = model.has_vision() ? 0.0 : model.spec().final_softcap.value_or(0.0);
  try {
    at::NoGradGuard no_grad;
    const at::Tensor head = model.lm_head();
    for (size_t begin = 0; begin < requests.size(); begin += static_cast<size_t>(options.batch_size)) {
      const size_t end = std::min(requests.size(), begin + static_cast<size_t>(options.batch_size));
      const int64_t B = static_cast<int64_t>(end - begin);
      int64_t T = 0;
      for (size_t i = begin; i < end; ++i) T = std::max<int64_t>(T, requests[i].input.size());
      std::vector<int64_t> ids(static_cast<size_t>(B * T), 0), mask(static_cast<size_t>(B * T), 0);
      for (size_t i = begin; i < end; ++i) {
        const Request& r = requests[i];
        std::copy(r.input.begin(), r.input.end(), ids.begin() + static_cast<std::ptrdiff_t>((i - begin) * T));
        std::fill_n(mask.begin() + static_cast<std::ptrdiff_t>((i - begin) * T), r.input.size(), 1);
      }
      const at::Tensor input_ids = at::tensor(at::ArrayRef<int64_t>(ids), at::kLong).view({B, T}).to(model.device());
      const at::Tensor attention = at::tensor(at::ArrayRef<int64_t>(mask), at::kLong).view({B, T}).to(model.device());
      const at::Tensor hidden = model.Hidden(input_ids, attention);  // (B, T, C)
      for (size_t i = begin; i < end; ++i) {
        const Request& r = requests[i];
        const int64_t L = static_cast<int64_t>(r.input.size());
        const int64_t n = static_cast<int64_t>(r.continuation.size());
        at::Tensor logits = at::matmul(hidden.select(0, static_cast<int64_t>(i - begin)).narrow(0, L - n, n), head.t())
                                .to(at::kFloat);
        if (softcap > 0) logits = at::tanh(logits / softcap) * softcap;
        const at::Tensor targets =
            at::tensor(at::ArrayRef<int64_t>(r.continuation), at::kLong).to(logits.device()).unsqueeze(1);
        const at::Tensor logp = at::log_softmax(logits, -1).gather(1, targets).squeeze(1).cpu();
        const bool greedy = at::equal(logits.argmax(-1).cpu(), targets.squeeze(1).cpu());
        double sum = 0;
        const float* p = logp.data_ptr<float>();
        for (int64_t k = 0; k < n; ++k) sum += p[k];
        ChoiceScores& s = result.docs[static_cast<size_t>(r.doc)];
        s.loglikelihood[static_cast<size_t>(r.choice)] = sum;
        s.is_greedy[static_cast<size_t>(r.choice)] = greedy;
      }
      if (options.on_progress) {
        const bool doc_done = end == requests.size() || requests[end].doc != requests[end - 1].doc;
        options.on_progress(doc_done ? requests[end - 1].doc + 1 : requests[end - 1].doc, total);
      }
    }
  } catch (...) {
    return StatusFromCurrentException(absl::StrCat("scoring task ", task.name));
  }
  int64_t right = 0, right_norm = 0;
  for (int64_t d = 0; d < total; ++d) {
    const ChoiceDoc& doc = task.docs[static_cast<size_t>(d)];
    ChoiceScores& s = result.docs[static_cast<size_t>(d)];
    double best = 0, best_norm = 0;
    for (size_t c = 0; c < doc.choices.size(); ++c) {
      const double ll = s.loglikelihood[c];
      const double norm = ll / static_cast<double>(CodePoints(doc.choices[c]));
      if (c == 0 || ll > best) {
        best = ll;
        s.pred = static_cast<int64_t>(c);
      }
      if (c == 0 || norm > best_norm) {
        best_norm = norm;
        s.pred_norm = static_cast<int64_t>(c);
      }
    }
    right += s.pred == s.gold;
    right_norm += s.pred_norm == s.gold;
  }
  if (total > 0) {
    result.accuracy = static_cast<double>(right) / static_cast<double>(total);
    result.accuracy_norm = static_cast<double>(right_norm) / static_cast<double>(total);
  }
  return result;
}

}  // namespace llmtrain::eval
