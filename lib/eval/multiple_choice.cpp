#include "llmtrain/eval/multiple_choice.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <random>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "llmtrain/core/atomic_file.h"
#include "llmtrain/core/status.h"
#include "llmtrain/data/builtin.h"
#include "nlohmann/json.hpp"
#include "tokenizer/unicode.h"

namespace llmtrain::eval {
namespace {

constexpr int kMaxReportedBadLines = 10;

std::string Dump(const nlohmann::json& j) { return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace); }

// Python's len() of a UTF-8 string: its code points.
int64_t CodePoints(absl::string_view text) {
  int64_t n = 0;
  for (size_t pos = 0; pos < text.size();) {
    tokenizer::detail::NextCodePoint(text, &pos);
    ++n;
  }
  return n;
}

// Why one parsed line is not a doc, or "" when it is one.
std::string CheckDoc(const nlohmann::json& j, ChoiceDoc* doc) {
  if (!j.is_object()) return "expected a JSON object";
  const auto context = j.find("context");
  if (context == j.end()) return "missing field \"context\"";
  if (!context->is_string()) return "field \"context\": expected a string";
  const auto choices = j.find("choices");
  if (choices == j.end()) return "missing field \"choices\"";
  if (!choices->is_array()) return "field \"choices\": expected an array of strings";
  if (choices->size() < 2) return absl::StrCat("field \"choices\": expected at least 2 choices, found ", choices->size());
  for (size_t i = 0; i < choices->size(); ++i) {
    const nlohmann::json& c = (*choices)[i];
    if (!c.is_string()) return absl::StrCat("field \"choices\"[", i, "]: expected a string");
    if (c.get_ref<const std::string&>().empty()) {
      return absl::StrCat("field \"choices\"[", i, "]: empty (its length-normalized score would divide by 0)");
    }
  }
  const auto gold = j.find("gold");
  if (gold == j.end()) return "missing field \"gold\"";
  if (!gold->is_number_integer()) return "field \"gold\": expected an integer index into \"choices\"";
  const int64_t g = gold->get<int64_t>();
  if (g < 0 || g >= static_cast<int64_t>(choices->size())) {
    return absl::StrCat("field \"gold\": ", g, " is outside \"choices\" (", choices->size(), " choices: 0 to ",
                        choices->size() - 1, ")");
  }
  doc->context = context->get<std::string>();
  doc->choices = choices->get<std::vector<std::string>>();
  doc->gold = g;
  return "";
}

// A draw below n from a standard engine (std::uniform_int_distribution differs between libraries).
uint64_t Below(std::mt19937_64& rng, uint64_t n) { return rng() % n; }

struct Entry {
  std::string key;     // what the question names
  std::string answer;  // the right choice's text
};

absl::StatusOr<ChoiceTask> SampleTask(std::string name, std::vector<Entry> entries, const BuiltinTaskOptions& o,
                                      const std::function<std::string(const Entry&)>& context) {
  // An answer two entries share cannot tell them apart: neither is asked nor offered.
  absl::flat_hash_map<std::string, int> uses;
  for (const Entry& e : entries) ++uses[e.answer];
  std::erase_if(entries, [&](const Entry& e) { return uses[e.answer] > 1 || e.answer.empty(); });
  const int64_t n = static_cast<int64_t>(entries.size());
  if (n < o.choices) {
    return absl::FailedPreconditionError(absl::StrCat("task ", name, ": ", n, " usable entries, fewer than the ",
                                                      o.choices, " choices a question needs"));
  }
  std::mt19937_64 rng(o.seed * 0x9E3779B97F4A7C15ull + 0x5EED);
  std::vector<int64_t> order(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) order[static_cast<size_t>(i)] = i;
  for (int64_t i = n - 1; i > 0; --i) std::swap(order[static_cast<size_t>(i)], order[Below(rng, static_cast<uint64_t>(i + 1))]);
  ChoiceTask task;
  task.name = std::move(name);
  const int64_t docs = std::min(o.docs, n);
  for (int64_t d = 0; d < docs; ++d) {
    const Entry& e = entries[static_cast<size_t>(order[static_cast<size_t>(d)])];
    ChoiceDoc doc;
    doc.where = absl::StrCat(task.name, ":", d);
    doc.context = context(e);
    absl::flat_hash_set<int64_t> taken = {order[static_cast<size_t>(d)]};
    std::vector<std::string> distractors;
    while (static_cast<int64_t>(distractors.size()) < o.choices - 1) {
      const int64_t j = static_cast<int64_t>(Below(rng, static_cast<uint64_t>(n)));
      if (!taken.insert(j).second) continue;
      distractors.push_back(entries[static_cast<size_t>(j)].answer);
    }
    doc.gold = static_cast<int64_t>(Below(rng, static_cast<uint64_t>(o.choices)));
    doc.choices = std::move(distractors);
    doc.choices.insert(doc.choices.begin() + doc.gold, e.answer);
    task.docs.push_back(std::move(doc));
  }
  return task;
}

}  // namespace

absl::StatusOr<ChoiceTask> LoadChoiceTask(absl::string_view path) {
  LLMTRAIN_ASSIGN_OR_RETURN(const std::string text, ReadFileToString(path));
  ChoiceTask task;
  absl::string_view base = path;
  if (const size_t slash = base.rfind('/'); slash != absl::string_view::npos) base.remove_prefix(slash + 1);
  absl::ConsumeSuffix(&base, ".jsonl");
  absl::ConsumeSuffix(&base, ".json");
  task.name = std::string(base);
  std::vector<std::string> bad;
  int64_t bad_count = 0;
  int64_t line_no = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++line_no;
    if (absl::EndsWith(line, "\r")) line.remove_suffix(1);
    if (line_no == 1) absl::ConsumePrefix(&line, "\xEF\xBB\xBF");
    if (tokenizer::detail::PythonStrip(line).empty()) continue;
    const std::string where = absl::StrCat(path, ":", line_no);
    const nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    ChoiceDoc doc;
    const std::string why = j.is_discarded() ? "not valid JSON" : CheckDoc(j, &doc);
    if (!why.empty()) {
      if (++bad_count <= kMaxReportedBadLines) bad.push_back(absl::StrCat(where, ": ", why));
      continue;
    }
    doc.where = where;
    task.docs.push_back(std::move(doc));
  }
  if (bad_count > 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("task file ", path, ": ", bad_count, " bad line(s) (a task is scored whole, so none is skipped):\n  ",
                     absl::StrJoin(bad, "\n  "), bad_count > kMaxReportedBadLines ? "\n  ..." : ""));
  }
  if (task.docs.empty()) return absl::InvalidArgumentError(absl::StrCat("task file ", path, ": no questions in it"));
  return task;
}

absl::Status WriteChoiceTask(const ChoiceTask& task, absl::string_view path) {
  std::string out;
  for (const ChoiceDoc& d : task.docs) {
    absl::StrAppend(&out, Dump({{"context", d.context}, {"choices", d.choices}, {"gold", d.gold}}), "\n");
  }
  return WriteFileAtomically(path, out);
}

absl::StatusOr<ChoiceTask> BuildBuiltinTask(absl::string_view name, const BuiltinTaskOptions& o) {
  if (o.docs < 1) return absl::InvalidArgumentError(absl::StrCat("task ", name, ": docs: expected ≥ 1, found ", o.docs));
  if (o.choices < 2) {
    return absl::InvalidArgumentError(absl::StrCat("task ", name, ": choices: expected ≥ 2, found ", o.choices));
  }
  if (name == "debian-packages") {
    LLMTRAIN_ASSIGN_OR_RETURN(const std::vector<data::DebianPackage> packages, data::ReadDpkgStatus(o.dpkg_status));
    std::vector<Entry> entries;
    for (const data::DebianPackage& p : packages) entries.push_back({p.name, p.synopsis});
    return SampleTask("debian-packages", std::move(entries), o, [](const Entry& e) {
      return absl::StrCat("Question: What does the Debian package ", e.key, " do?\nAnswer:");
    });
  }
  if (name == "iso-countries") {
    LLMTRAIN_ASSIGN_OR_RETURN(const std::string text, ReadFileToString(o.iso_3166));
    const nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
    const auto list = j.is_object() ? j.find("3166-1") : j.end();
    if (j.is_discarded() || list == j.end() || !list->is_array()) {
      return absl::InvalidArgumentError(absl::StrCat(o.iso_3166, ": expected iso-codes' JSON {\"3166-1\": [...]}"));
    }
    std::vector<Entry> entries;
    for (const nlohmann::json& c : *list) {
      const auto code = c.find("alpha_2"), country = c.find("name");
      if (code == c.end() || country == c.end() || !code->is_string() || !country->is_string()) continue;
      entries.push_back({code->get<std::string>(), country->get<std::string>()});
    }
    return SampleTask("iso-countries", std::move(entries), o, [](const Entry& e) {
      return absl::StrCat("Question: Which country has the ISO 3166-1 alpha-2 code ", e.key, "?\nAnswer:");
    });
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown built-in task \"", name, "\" (the built-in tasks: ",
                                                 absl::StrJoin(kBuiltinTasks, ", "), ")"));
}

absl::StatusOr<ChoiceTask> ResolveTask(absl::string_view name_or_path, const BuiltinTaskOptions& options) {
  for (const char* builtin : kBuiltinTasks) {
    if (name_or_path == builtin) return BuildBuiltinTask(name_or_path, options);
  }
  if (!absl::StrContains(name_or_path, '/') && !absl::StrContains(name_or_path, '.')) {
    return absl::InvalidArgumentError(absl::StrCat("unknown task \"", name_or_path, "\": expected one of ",
                                                   absl::StrJoin(kBuiltinTasks, ", "), " or a task file (.jsonl)"));
  }
  return LoadChoiceTask(name_or_path);
}

EncodedRequest EncodeChoiceRequest(const tokenizer::Tokenizer& tok, absl::string_view context,
                                   absl::string_view continuation_view) {
  std::string continuation(continuation_view);
  EncodedRequest r;
  if (context.empty()) {
    const std::vector<int32_t> cont = tok.Encode(continuation, /*add_special_tokens=*/false);
    const std::optional<int32_t> prefix = tok.bos_id().has_value() ? tok.bos_id() : tok.eos_id();
    if (prefix.has_value() && (cont.empty() || cont.front() != *prefix)) {
      r.context = {*prefix};
      r.continuation = cont;
    } else if (!cont.empty()) {
      r.context = {cont.front()};
      r.continuation.assign(cont.begin() + 1, cont.end());
    }
    return r;
  }
  // Python's rstrip(): the trailing whitespace goes with the continuation.
  const absl::string_view stripped = tokenizer::detail::PythonStrip(context);
  const size_t end = stripped.empty() ? 0 : static_cast<size_t>(stripped.data() - context.data()) + stripped.size();
  std::string ctx(context.substr(0, end));
  continuation = absl::StrCat(context.substr(end), continuation);
  // tok_encode: the tokenizer's default special tokens, none when the text starts with BOS's text.
  const std::string bos_text = tok.bos_id().has_value() ? tok.IdToToken(*tok.bos_id()) : std::string();
  const auto encode = [&](const std::string& text) {
    return tok.Encode(text, !(!bos_text.empty() && absl::StartsWith(text, bos_text)));
  };
  const std::vector<int32_t> whole = encode(ctx + continuation);
  r.context = encode(ctx);
  if (r.context.empty()) {
    // A blank context with a tokenizer that adds no BOS: nothing to condition on (lm-eval asserts
    // here); score it as an empty context.
    return EncodeChoiceRequest(tok, "", continuation);
  }
  const size_t n = std::min(r.context.size(), whole.size());
  r.continuation.assign(whole.begin() + static_cast<std::ptrdiff_t>(n), whole.end());
  return r;
}

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
