// eval::CompareEvaluations: point estimates equal the metrics of the whole sets, the paired
// bootstrap interval behaves as one (degenerate when the sides agree, covering the true
// difference about 95% of the time on simulated data), and mismatched sides are refused.
#include <ATen/ATen.h>

#include <catch2/catch.hpp>
#include <cmath>
#include <random>

#include "absl/strings/str_cat.h"
#include "llmtrain/eval/compare.h"
#include "llmtrain/eval/text_metrics.h"

namespace llmtrain {
namespace {

eval::EvalUnits Units(std::mt19937_64& rng, int64_t n, double nll_shift) {
  eval::EvalUnits u;
  std::normal_distribution<double> noise(0.0, 1.0);
  for (int64_t i = 0; i < n; ++i) {
    eval::RecordLoss r;
    r.where = absl::StrCat("d.jsonl:", i + 1);
    r.n_tokens = 5 + i % 7;
    r.nll_sum = static_cast<double>(r.n_tokens) * (2.0 + nll_shift + 0.3 * noise(rng));
    u.records.push_back(r);
  }
  return u;
}

TEST_CASE("compare: point estimates, degenerate and simulated intervals, refusals", "[eval]") {
  std::mt19937_64 rng(11);
  // The same evaluation on both sides: difference 0 and the interval [0, 0].
  const eval::EvalUnits same = Units(rng, 50, 0.0);
  auto zero = eval::CompareEvaluations(same, same, {"loss", "perplexity"});
  REQUIRE(zero.ok());
  REQUIRE(zero->size() == 2);
  for (const eval::MetricComparison& c : *zero) {
    CHECK(c.difference == 0);
    CHECK(c.low == 0);
    CHECK(c.high == 0);
    CHECK(c.units == 50);
  }
  double nll = 0, n = 0;
  for (const eval::RecordLoss& r : same.records) {
    nll += r.nll_sum;
    n += static_cast<double>(r.n_tokens);
  }
  CHECK((*zero)[0].base == Approx(nll / n).epsilon(1e-12));
  CHECK((*zero)[1].base == Approx(std::exp(nll / n)).epsilon(1e-12));

  // Questions all wrong on one side and all right on the other: difference 1 in every resample.
  eval::EvalUnits wrong, right;
  for (int i = 0; i < 30; ++i) {
    eval::ChoiceScores c;
    c.gold = i % 3;
    c.pred = c.pred_norm = (c.gold + 1) % 3;
    wrong.choices.push_back(c);
    c.pred = c.pred_norm = c.gold;
    right.choices.push_back(c);
  }
  auto acc = eval::CompareEvaluations(wrong, right, {"accuracy", "accuracy_norm"});
  REQUIRE(acc.ok());
  CHECK((*acc)[0].difference == 1);
  CHECK((*acc)[0].low == 1);
  CHECK((*acc)[0].high == 1);

  // Generation metrics: the point estimates are the corpus scores of the whole set.
  eval::EvalUnits gen_a, gen_b;
  const char* refs[] = {"the cat sat on the mat", "a dog runs in the park", "rain falls on the city at night",
                        "she reads a book by the window", "the train leaves at noon"};
  const char* preds_a[] = {"the cat sat on a mat", "a dog walks", "rain on the city", "she reads", "the train leaves at noon"};
  const char* preds_b[] = {"cat", "dog", "rain falls", "she reads a book by the window", "train"};
  std::vector<std::string> pa, pb;
  std::vector<std::vector<std::string>> rr;
  for (int i = 0; i < 5; ++i) {
    eval::GenerationItem a, b;
    a.where = b.where = {absl::StrCat("g.jsonl:", i + 1)};
    a.references = b.references = {refs[i]};
    a.prediction = preds_a[i];
    b.prediction = preds_b[i];
    gen_a.items.push_back(a);
    gen_b.items.push_back(b);
    pa.push_back(preds_a[i]);
    pb.push_back(preds_b[i]);
    rr.push_back({refs[i]});
  }
  auto gen = eval::CompareEvaluations(gen_b, gen_a, {"exact_match", "rouge", "bleu", "chrf"}, {.resamples = 200});
  REQUIRE(gen.ok());
  REQUIRE(gen->size() == 6);  // rouge is rouge1, rouge2, rougeL
  CHECK((*gen)[1].metric == "rouge1");
  CHECK((*gen)[0].adapter == Approx(0.2));
  CHECK((*gen)[4].metric == "bleu");
  CHECK((*gen)[4].adapter == eval::CorpusBleu(pa, rr).score);
  CHECK((*gen)[4].base == eval::CorpusBleu(pb, rr).score);
  CHECK((*gen)[5].adapter == eval::CorpusChrf(pa, rr));
  for (const eval::MetricComparison& c : *gen) {
    CHECK(c.low <= c.high);
    CHECK(c.units == 5);
  }

  // Same seed, same interval; another seed, another one.
  const eval::EvalUnits better = Units(rng, 50, -0.2);
  auto s0 = eval::CompareEvaluations(same, better, {"loss"}, {.resamples = 500, .seed = 1});
  auto s0b = eval::CompareEvaluations(same, better, {"loss"}, {.resamples = 500, .seed = 1});
  auto s1 = eval::CompareEvaluations(same, better, {"loss"}, {.resamples = 500, .seed = 2});
  REQUIRE((s0.ok() && s0b.ok() && s1.ok()));
  CHECK((*s0)[0].low == (*s0b)[0].low);
  CHECK((*s0)[0].low != (*s1)[0].low);
  CHECK((*s0)[0].low <= (*s0)[0].difference);
  CHECK((*s0)[0].high >= (*s0)[0].difference);

  // Coverage: 200 simulated pairs of evaluations whose true loss difference is 0 (each record's
  // two losses share their record's difficulty and differ by independent noise); the 95%
  // interval should contain 0 in about 95% of them (bounds: a binomial(200, 0.95) falls outside
  // [0.88, 0.995] with probability < 1e-4; the bootstrap percentile interval runs slightly narrow).
  int64_t covered = 0;
  const int64_t sims = 200;
  std::normal_distribution<double> noise(0.0, 1.0);
  for (int64_t s = 0; s < sims; ++s) {
    eval::EvalUnits base, adapter;
    for (int i = 0; i < 60; ++i) {
      eval::RecordLoss r;
      r.where = absl::StrCat("d:", i);
      r.n_tokens = 10;
      const double difficulty = 2.0 + 0.5 * noise(rng);
      r.nll_sum = 10 * (difficulty + 0.1 * noise(rng));
      base.records.push_back(r);
      r.nll_sum = 10 * (difficulty + 0.1 * noise(rng));
      adapter.records.push_back(r);
    }
    auto c = eval::CompareEvaluations(base, adapter, {"loss"}, {.resamples = 400, .seed = static_cast<uint64_t>(s)});
    REQUIRE(c.ok());
    covered += (*c)[0].low <= 0 && 0 <= (*c)[0].high;
  }
  const double coverage = static_cast<double>(covered) / static_cast<double>(sims);
  std::printf("compare: the paired bootstrap 95%% interval covered the true difference in %lld of %lld simulations "
              "(%.3f)\n",
              static_cast<long long>(covered), static_cast<long long>(sims), coverage);
  CHECK(coverage >= 0.88);
  CHECK(coverage <= 0.995);

  // A metric with nothing to resample has no row; a question that changed is refused.
  auto no_items = eval::CompareEvaluations(same, same, {"loss", "bleu"});
  REQUIRE(no_items.ok());
  REQUIRE(no_items->size() == 1);
  CHECK((*no_items)[0].metric == "loss");
  eval::EvalUnits changed = right;
  changed.choices[4].digest = 7;
  CHECK_THAT(std::string(eval::CompareEvaluations(right, changed, {"accuracy"}).status().message()),
             Catch::Contains("question 4") && Catch::Contains("not the same question"));

  // Refusals.
  CHECK_THAT(std::string(eval::CompareEvaluations(same, same, {"bleurt"}).status().message()),
             Catch::Contains("unknown metric \"bleurt\""));
  eval::EvalUnits shorter = same;
  shorter.records.pop_back();
  CHECK_THAT(std::string(eval::CompareEvaluations(same, shorter, {"loss"}).status().message()),
             Catch::Contains("records 50 / 49"));
  eval::EvalUnits moved = same;
  moved.records[3].where = "other.jsonl:4";
  CHECK_THAT(std::string(eval::CompareEvaluations(same, moved, {"loss"}).status().message()),
             Catch::Contains("record 3 is d.jsonl:4 on one side and other.jsonl:4"));
  CHECK_THAT(std::string(eval::CompareEvaluations(same, same, {"loss"}, {.resamples = 0}).status().message()),
             Catch::Contains("resamples"));
}

}  // namespace
}  // namespace llmtrain
