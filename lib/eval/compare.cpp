#include "llmtrain/eval/compare.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <random>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "llmtrain/eval/text_metrics.h"

namespace llmtrain::eval {
namespace {

// The q-quantile of sorted values, interpolating linearly between order statistics.
double Quantile(const std::vector<double>& sorted, double q) {
  if (sorted.empty()) return 0.0;
  const double at = q * static_cast<double>(sorted.size() - 1);
  const size_t lo = static_cast<size_t>(std::floor(at));
  const size_t hi = std::min(lo + 1, sorted.size() - 1);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (at - static_cast<double>(lo));
}

// A metric as a function of the units a draw picks (indices into one side's units).
using Metric = std::function<double(const std::vector<size_t>& draw)>;

struct Side {
  std::vector<double> nll, tokens, exact, rouge1, rouge2, rougeL, accuracy, accuracy_norm;
  std::vector<BleuStats> bleu;
  std::vector<ChrfStats> chrf;
};

Side Prepare(const EvalUnits& u, bool need_generation) {
  Side s;
  for (const RecordLoss& r : u.records) {
    s.nll.push_back(r.nll_sum);
    s.tokens.push_back(static_cast<double>(r.n_tokens));
  }
  if (need_generation) {
    for (const GenerationItem& item : u.items) {
      s.exact.push_back(ExactMatch(item.prediction, item.references) ? 1.0 : 0.0);
      const RougeScores r = RougeMulti(item.references, item.prediction);
      s.rouge1.push_back(r.rouge1.fmeasure);
      s.rouge2.push_back(r.rouge2.fmeasure);
      s.rougeL.push_back(r.rougeL.fmeasure);
      s.bleu.push_back(SentenceBleuStats(item.prediction, item.references));
      s.chrf.push_back(SentenceChrfStats(item.prediction, item.references));
    }
  }
  for (const ChoiceScores& c : u.choices) {
    s.accuracy.push_back(c.pred == c.gold ? 1.0 : 0.0);
    s.accuracy_norm.push_back(c.pred_norm == c.gold ? 1.0 : 0.0);
  }
  return s;
}

double Mean(const std::vector<double>& v, const std::vector<size_t>& draw) {
  if (draw.empty()) return 0.0;
  double sum = 0;
  for (const size_t i : draw) sum += v[i];
  return sum / static_cast<double>(draw.size());
}

double Loss(const Side& s, const std::vector<size_t>& draw) {
  double nll = 0, n = 0;
  for (const size_t i : draw) {
    nll += s.nll[i];
    n += s.tokens[i];
  }
  return n > 0 ? nll / n : 0.0;
}

// One side's metric by name; `units` tells which units it resamples.
enum class Units { kRecords, kItems, kQuestions };
struct MetricDef {
  Units units;
  std::function<double(const Side&, const std::vector<size_t>&)> value;
};

bool Lookup(const std::string& name, MetricDef* def) {
  if (name == "loss") {
    *def = {Units::kRecords, [](const Side& s, const std::vector<size_t>& d) { return Loss(s, d); }};
  } else if (name == "perplexity") {
    *def = {Units::kRecords, [](const Side& s, const std::vector<size_t>& d) { return std::exp(Loss(s, d)); }};
  } else if (name == "exact_match") {
    *def = {Units::kItems, [](const Side& s, const std::vector<size_t>& d) { return Mean(s.exact, d); }};
  } else if (name == "rouge1") {
    *def = {Units::kItems, [](const Side& s, const std::vector<size_t>& d) { return Mean(s.rouge1, d); }};
  } else if (name == "rouge2") {
    *def = {Units::kItems, [](const Side& s, const std::vector<size_t>& d) { return Mean(s.rouge2, d); }};
  } else if (name == "rougeL") {
    *def = {Units::kItems, [](const Side& s, const std::vector<size_t>& d) { return Mean(s.rougeL, d); }};
  } else if (name == "bleu") {
    *def = {Units::kItems, [](const Side& s, const std::vector<size_t>& d) {
              BleuStats total;
              for (const size_t i : d) total += s.bleu[i];
              return BleuFromStats(total).score;
            }};
  } else if (name == "chrf") {
    *def = {Units::kItems, [](const Side& s, const std::vector<size_t>& d) {
              ChrfStats total;
              for (const size_t i : d) total += s.chrf[i];
              return ChrfFromStats(total);
            }};
  } else if (name == "accuracy") {
    *def = {Units::kQuestions, [](const Side& s, const std::vector<size_t>& d) { return Mean(s.accuracy, d); }};
  } else if (name == "accuracy_norm") {
    *def = {Units::kQuestions, [](const Side& s, const std::vector<size_t>& d) { return Mean(s.accuracy_norm, d); }};
  } else {
    return false;
  }
  return true;
}

}  // namespace

absl::StatusOr<std::vector<MetricComparison>> CompareEvaluations(const EvalUnits& base, const EvalUnits& adapter,
                                                                 const std::vector<std::string>& requested,
                                                                 const BootstrapOptions& options) {
  if (options.resamples < 1) {
    return absl::InvalidArgumentError(absl::StrCat("BootstrapOptions.resamples: expected ≥ 1, found ", options.resamples));
  }
  if (!(options.confidence > 0 && options.confidence < 1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("BootstrapOptions.confidence: expected a value in (0, 1), found ", options.confidence));
  }
  std::vector<std::string> metrics;
  for (const std::string& m : requested) {
    if (m == "rouge") {
      metrics.insert(metrics.end(), {"rouge1", "rouge2", "rougeL"});
    } else {
      metrics.push_back(m);
    }
  }
  std::vector<MetricDef> defs;
  bool need_generation = false;
  for (const std::string& m : metrics) {
    MetricDef def;
    if (!Lookup(m, &def)) return absl::InvalidArgumentError(absl::StrCat("compare: unknown metric \"", m, "\""));
    need_generation |= def.units == Units::kItems;
    defs.push_back(std::move(def));
  }
  // The two sides must be the same units in the same order.
  if (base.records.size() != adapter.records.size() || base.items.size() != adapter.items.size() ||
      base.choices.size() != adapter.choices.size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "compare: the two evaluations cover different units (records ", base.records.size(), " / ",
        adapter.records.size(), ", items ", base.items.size(), " / ", adapter.items.size(), ", questions ",
        base.choices.size(), " / ", adapter.choices.size(), ")"));
  }
  for (size_t i = 0; i < base.records.size(); ++i) {
    if (base.records[i].where != adapter.records[i].where) {
      return absl::InvalidArgumentError(absl::StrCat("compare: record ", i, " is ", base.records[i].where,
                                                     " on one side and ", adapter.records[i].where, " on the other"));
    }
  }
  for (size_t i = 0; i < base.items.size(); ++i) {
    if (base.items[i].where != adapter.items[i].where) {
      return absl::InvalidArgumentError(absl::StrCat("compare: generation item ", i, " is ",
                                                     absl::StrJoin(base.items[i].where, ","), " on one side and ",
                                                     absl::StrJoin(adapter.items[i].where, ","), " on the other"));
    }
  }
  for (size_t i = 0; i < base.choices.size(); ++i) {
    const ChoiceScores &b = base.choices[i], &a = adapter.choices[i];
    if (b.where != a.where || b.digest != a.digest || b.gold != a.gold) {
      return absl::InvalidArgumentError(absl::StrCat("compare: question ", i, " (", b.where, ") is not the same question "
                                                     "on the other side (", a.where, "): a task built from data that changed?"));
    }
  }
  const Side b = Prepare(base, need_generation), a = Prepare(adapter, need_generation);
  const auto count = [&](Units u) {
    return u == Units::kRecords ? base.records.size() : u == Units::kItems ? base.items.size() : base.choices.size();
  };
  const auto all = [](size_t n) {
    std::vector<size_t> v(n);
    for (size_t i = 0; i < n; ++i) v[i] = i;
    return v;
  };
  std::vector<MetricComparison> out;
  std::vector<std::vector<double>> differences(defs.size());
  // A metric with nothing to resample (every record skipped, no task) has no row.
  for (size_t m = defs.size(); m-- > 0;) {
    if (count(defs[m].units) == 0) {
      defs.erase(defs.begin() + static_cast<std::ptrdiff_t>(m));
      metrics.erase(metrics.begin() + static_cast<std::ptrdiff_t>(m));
    }
  }
  for (size_t m = 0; m < defs.size(); ++m) {
    const std::vector<size_t> every = all(count(defs[m].units));
    MetricComparison c;
    c.metric = metrics[m];
    c.units = static_cast<int64_t>(every.size());
    c.base = defs[m].value(b, every);
    c.adapter = defs[m].value(a, every);
    c.difference = c.adapter - c.base;
    out.push_back(c);
  }
  // One draw per unit kind per resample, shared by every metric of that kind and by both sides.
  std::mt19937_64 rng(options.seed * 0x9E3779B97F4A7C15ull + 0xB007);
  for (int64_t r = 0; r < options.resamples; ++r) {
    std::vector<size_t> draws[3];
    for (const Units u : {Units::kRecords, Units::kItems, Units::kQuestions}) {
      const size_t n = count(u);
      std::vector<size_t>& d = draws[static_cast<int>(u)];
      d.resize(n);
      for (size_t i = 0; i < n; ++i) d[i] = n > 0 ? static_cast<size_t>(rng() % n) : 0;
    }
    for (size_t m = 0; m < defs.size(); ++m) {
      const std::vector<size_t>& d = draws[static_cast<int>(defs[m].units)];
      differences[m].push_back(defs[m].value(a, d) - defs[m].value(b, d));
    }
  }
  const double tail = (1.0 - options.confidence) / 2.0;
  for (size_t m = 0; m < defs.size(); ++m) {
    std::sort(differences[m].begin(), differences[m].end());
    out[m].low = Quantile(differences[m], tail);
    out[m].high = Quantile(differences[m], 1.0 - tail);
  }
  return out;
}

}  // namespace llmtrain::eval
