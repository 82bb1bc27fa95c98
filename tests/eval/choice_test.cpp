// eval/: multiple-choice accuracy and per-choice log-likelihoods against lm-evaluation-harness's
// `hf` backend (tests/reference/eval_ref.py choice) on the same task files: the two built-in
// tasks and edge cases, for the real Gemma 3 270M (BOS), the same with a random PEFT adapter, and
// a tiny random Qwen2 with the real Qwen2.5 tokenizer (no BOS, max_length 48 so long contexts are
// cut from the left).
#include <ATen/ATen.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdio>
#include <filesystem>

#include "absl/strings/match.h"
#include "absl/strings/str_replace.h"
#include "llmtrain/core/atomic_file.h"
#include "llmtrain/data/builtin.h"
#include "llmtrain/eval/multiple_choice.h"
#include "llmtrain/lora/lora.h"
#include "llmtrain/model/decoder.h"
#include "llmtrain/tokenizer/tokenizer.h"
#include "nlohmann/json.hpp"
#include "testing/json_util.h"
#include "testing/reference.h"

namespace llmtrain {
namespace {

using nlohmann::json;

// Both sides compute float32 logits and a float32 log-softmax; they differ only in the order of
// float32 sums inside the forward (the loss test measures ≤ 5e-7 relative on whole records), so a
// summed log-likelihood may differ by a few float32 roundings of its size.
constexpr double kLogLikelihoodTolerance = 2e-5;

struct Comparison {
  int64_t requests = 0, encoding_mismatches = 0, greedy_mismatches = 0, docs = 0;
  double worst_ll = 0;
  int64_t accuracy_mismatches = 0;
};

void Compare(const std::string& label, const model::Decoder& model, const tokenizer::Tokenizer& tok,
             const std::vector<eval::ChoiceTask>& tasks, const json& ref, Comparison* c) {
  for (const json& r : ref["requests"]) {
    const eval::EncodedRequest e = eval::EncodeChoiceRequest(tok, r[0].get<std::string>(), r[1].get<std::string>());
    ++c->requests;
    const bool same = e.context == r[2].get<std::vector<int32_t>>() && e.continuation == r[3].get<std::vector<int32_t>>();
    if (!same) {
      UNSCOPED_INFO(label << ": encoding differs for context " << r[0].dump() << " continuation " << r[1].dump());
    }
    c->encoding_mismatches += !same;
  }
  for (const eval::ChoiceTask& task : tasks) {
    const std::string key = absl::StrReplaceAll(task.name, {{"-", "_"}});
    REQUIRE(ref["tasks"].contains(key));
    const json& theirs = ref["tasks"][key];
    eval::ChoiceOptions options;
    options.batch_size = 5;  // batches that cut across questions, rows of several lengths
    auto ours = eval::EvaluateMultipleChoice(model, tok, task, options);
    REQUIRE(ours.ok());
    REQUIRE(ours->docs.size() == theirs["docs"].size());
    for (size_t d = 0; d < ours->docs.size(); ++d) {
      const eval::ChoiceScores& s = ours->docs[d];
      const json& doc = theirs["docs"][d];
      REQUIRE(s.loglikelihood.size() == doc.size());
      for (size_t k = 0; k < doc.size(); ++k) {
        const double want = doc[k][0].get<double>();
        c->worst_ll = std::max(c->worst_ll, std::abs(s.loglikelihood[k] - want) / std::max(1.0, std::abs(want)));
        c->greedy_mismatches += s.is_greedy[k] != doc[k][1].get<bool>();
      }
      ++c->docs;
    }
    const bool same_accuracy = ours->accuracy == theirs["acc"].get<double>() &&
                               ours->accuracy_norm == theirs["acc_norm"].get<double>();
    std::printf("eval: %s on %s: accuracy %.4f / %.4f normalized (lm-eval: %.4f / %.4f)\n", label.c_str(),
                task.name.c_str(), ours->accuracy, ours->accuracy_norm, theirs["acc"].get<double>(),
                theirs["acc_norm"].get<double>());
    c->accuracy_mismatches += !same_accuracy;
  }
}

TEST_CASE("eval: multiple-choice accuracy and log-likelihoods equal lm-evaluation-harness (hf backend)",
          "[eval][reference][real]") {
  if (!testing::ReferenceStackAvailable()) return;
  const std::string dir = testing::TempDir("eval_choice");
  std::filesystem::create_directories(dir + "/tasks");
  for (const char* name : eval::kBuiltinTasks) {
    eval::BuiltinTaskOptions options;
    options.docs = 16;
    options.seed = 3;
    auto task = eval::BuildBuiltinTask(name, options);
    REQUIRE(task.ok());
    REQUIRE(task->docs.size() == 16);
    REQUIRE(eval::WriteChoiceTask(*task, dir + "/tasks/" + name + ".jsonl").ok());
  }
  const std::string gguf = std::string(LLMTRAIN_SOURCE_DIR) + "/.venv/models/gemma-3-270m-q4_k_m.gguf";
  const auto run = testing::RunReference("eval_ref.py", {"choice", gguf, dir});
  INFO(run.out);
  REQUIRE(run.exit_code == 0);
  auto text = ReadFileToString(dir + "/lm_eval.json");
  REQUIRE(text.ok());
  const json ref = json::parse(*text);
  std::vector<eval::ChoiceTask> tasks;
  for (const char* name : {"debian-packages", "edge", "iso-countries"}) {
    auto task = eval::LoadChoiceTask(dir + "/tasks/" + name + ".jsonl");
    REQUIRE(task.ok());
    tasks.push_back(*std::move(task));
  }

  Comparison c;
  {
    auto model = model::Decoder::Load(gguf, {});
    REQUIRE(model.ok());
    auto tok = tokenizer::Tokenizer::Load(gguf);
    REQUIRE(tok.ok());
    Compare("gemma-3-270m", **model, **tok, tasks, ref["gemma"], &c);
    REQUIRE(lora::LoadAdapter(model->get(), dir + "/gemma_adapter").ok());
    lora::SetTraining(model->get(), false);
    Compare("gemma-3-270m + LoRA", **model, **tok, tasks, ref["gemma_adapter"], &c);
  }
  {
    auto model = model::Decoder::Load(dir + "/qwen", {});
    REQUIRE(model.ok());
    auto tok = tokenizer::Tokenizer::Load(dir + "/qwen");
    REQUIRE(tok.ok());
    REQUIRE_FALSE(tok->get()->adds_bos());
    Compare("tiny qwen2", **model, **tok, tasks, ref["qwen"], &c);
  }
  std::printf("eval: %lld questions, %lld requests: %lld encodings differ, per-choice log-likelihood worst diff %.2e "
              "(relative above 1), %lld is_greedy differ, %lld accuracies differ vs lm-eval 0.4.13\n",
              static_cast<long long>(c.docs), static_cast<long long>(c.requests),
              static_cast<long long>(c.encoding_mismatches), c.worst_ll, static_cast<long long>(c.greedy_mismatches),
              static_cast<long long>(c.accuracy_mismatches));
  CHECK(c.requests == 3 * 4 * 16 * 2 + 3 * 32);  // 3 models × (2 tasks × 16 × 4 + edge's 32 choices)
  CHECK(c.encoding_mismatches == 0);
  CHECK(c.worst_ll <= kLogLikelihoodTolerance);
  CHECK(c.greedy_mismatches == 0);
  CHECK(c.accuracy_mismatches == 0);
}

TEST_CASE("eval: task files and built-in tasks: shape, determinism and refusals", "[eval]") {
  const std::string dir = testing::TempDir("eval_task_files");
  // Every bad line is named with its field; the task is refused whole.
  const std::string bad =
      "{\"context\": \"Q\", \"choices\": [\"a\", \"b\"], \"gold\": 2}\n"
      "\n"
      "{\"context\": \"Q\", \"choices\": [\"a\", \"b\"], \"gold\": 1}\n"
      "{\"context\": \"Q\", \"choices\": [\"a\"], \"gold\": 0}\n"
      "{\"context\": \"Q\", \"choices\": [\"a\", \"\"], \"gold\": 0}\n"
      "{\"choices\": [\"a\", \"b\"], \"gold\": 0}\n"
      "{\"context\": \"Q\", \"choices\": [\"a\", \"b\"], \"gold\": \"a\"}\n"
      "not json\n"
      "[1, 2]\n";
  REQUIRE(WriteFileAtomically(dir + "/bad.jsonl", bad).ok());
  auto loaded = eval::LoadChoiceTask(dir + "/bad.jsonl");
  REQUIRE_FALSE(loaded.ok());
  const std::string message(loaded.status().message());
  INFO(message);
  CHECK(absl::StrContains(message, "7 bad line(s)"));
  CHECK(absl::StrContains(message, dir + "/bad.jsonl:1: field \"gold\": 2 is outside \"choices\" (2 choices: 0 to 1)"));
  CHECK(absl::StrContains(message, "bad.jsonl:4: field \"choices\": expected at least 2 choices"));
  CHECK(absl::StrContains(message, "bad.jsonl:5: field \"choices\"[1]: empty"));
  CHECK(absl::StrContains(message, "bad.jsonl:6: missing field \"context\""));
  CHECK(absl::StrContains(message, "bad.jsonl:7: field \"gold\": expected an integer"));
  CHECK(absl::StrContains(message, "bad.jsonl:8: not valid JSON"));
  CHECK(absl::StrContains(message, "bad.jsonl:9: expected a JSON object"));
  CHECK_FALSE(absl::StrContains(message, "bad.jsonl:3"));
  REQUIRE(WriteFileAtomically(dir + "/empty.jsonl", "\n\n").ok());
  CHECK_THAT(std::string(eval::LoadChoiceTask(dir + "/empty.jsonl").status().message()),
             Catch::Contains("no questions"));
  CHECK_THAT(std::string(eval::ResolveTask("hellaswag", {}).status().message()),
             Catch::Contains("unknown task \"hellaswag\": expected one of debian-packages, iso-countries"));
  CHECK_THAT(std::string(eval::ResolveTask(dir + "/none.jsonl", {}).status().message()),
             Catch::Contains(dir + "/none.jsonl"));

  // Built-in tasks: deterministic for a seed, distinct choices, the gold's text is the entry's.
  for (const char* name : eval::kBuiltinTasks) {
    eval::BuiltinTaskOptions options;
    options.docs = 50;
    options.choices = 5;
    auto a = eval::BuildBuiltinTask(name, options);
    REQUIRE(a.ok());
    auto b = eval::BuildBuiltinTask(name, options);
    REQUIRE(b.ok());
    options.seed = 1;
    auto other = eval::BuildBuiltinTask(name, options);
    REQUIRE(other.ok());
    REQUIRE(a->docs.size() == 50);
    int64_t same_as_other = 0;
    std::vector<int64_t> gold_places(5, 0);
    for (size_t d = 0; d < a->docs.size(); ++d) {
      const eval::ChoiceDoc& doc = a->docs[d];
      CHECK(doc.context == b->docs[d].context);
      CHECK(doc.choices == b->docs[d].choices);
      CHECK(doc.gold == b->docs[d].gold);
      same_as_other += doc.context == other->docs[d].context;
      REQUIRE(doc.choices.size() == 5);
      std::vector<std::string> sorted = doc.choices;
      std::sort(sorted.begin(), sorted.end());
      CHECK(std::adjacent_find(sorted.begin(), sorted.end()) == sorted.end());
      ++gold_places[static_cast<size_t>(doc.gold)];
    }
    CHECK(same_as_other < 10);
    CHECK(*std::min_element(gold_places.begin(), gold_places.end()) >= 3);  // the gold moves about
    // Written and read back: the same task.
    REQUIRE(eval::WriteChoiceTask(*a, dir + "/" + name + ".jsonl").ok());
    auto back = eval::LoadChoiceTask(dir + "/" + name + ".jsonl");
    REQUIRE(back.ok());
    REQUIRE(back->docs.size() == a->docs.size());
    CHECK(back->docs[7].choices == a->docs[7].choices);
    CHECK(back->docs[7].context == a->docs[7].context);
    CHECK(back->name == name);
  }
  // A Debian package's question offers that package's own synopsis.
  eval::BuiltinTaskOptions options;
  options.docs = 5;
  auto packages = data::ReadDpkgStatus(options.dpkg_status);
  REQUIRE(packages.ok());
  auto deb = eval::BuildBuiltinTask("debian-packages", options);
  REQUIRE(deb.ok());
  for (const eval::ChoiceDoc& doc : deb->docs) {
    const auto p = std::find_if(packages->begin(), packages->end(), [&](const data::DebianPackage& p) {
      return absl::StrContains(doc.context, " " + p.name + " do?");
    });
    REQUIRE(p != packages->end());
    CHECK(doc.choices[static_cast<size_t>(doc.gold)] == p->synopsis);
  }
  options.choices = 1;
  CHECK_THAT(std::string(eval::BuildBuiltinTask("iso-countries", options).status().message()),
             Catch::Contains("choices: expected ≥ 2"));
  options.choices = 4;
  options.iso_3166 = dir + "/bad.jsonl";
  CHECK_THAT(std::string(eval::BuildBuiltinTask("iso-countries", options).status().message()),
             Catch::Contains("expected iso-codes' JSON"));
}

}  // namespace
}  // namespace llmtrain
