#include "llmtrain/eval/tasks.h"

#include <algorithm>
#include <functional>
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

namespace {

void Fnv(uint64_t* h, absl::string_view bytes) {
  for (const char c : bytes) *h = (*h ^ static_cast<unsigned char>(c)) * 0x100000001B3ull;
  *h = (*h ^ 0xFF) * 0x100000001B3ull;  // a separator, so that "ab","c" differs from "a","bc"
}

}  // namespace

uint64_t ChoiceDocDigest(const ChoiceDoc& doc) {
  uint64_t h = 0xCBF29CE484222325ull;
  Fnv(&h, doc.context);
  for (const std::string& c : doc.choices) Fnv(&h, c);
  Fnv(&h, absl::StrCat(doc.gold));
  return h;
}

uint64_t ChoiceTaskDigest(const ChoiceTask& task) {
  uint64_t h = 0xCBF29CE484222325ull;
  Fnv(&h, task.name);
  for (const ChoiceDoc& d : task.docs) Fnv(&h, absl::StrCat(ChoiceDocDigest(d)));
  return h;
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

}  // namespace llmtrain::eval
