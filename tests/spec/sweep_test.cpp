// spec/sweep.h: the search space and its errors, the trials it draws, successive halving's
// rungs and decisions, the state file, and `llmtrain sweep` on a tiny model: ASHA stops the worst
// half at the first rung, the best trial is the best completed one and equals a straight run, and
// a sweep killed with SIGKILL resumes without rerunning what had finished.
#include <catch2/catch.hpp>
#include <signal.h>
#include <sys/stat.h>
#include <sched.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <map>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "llmtrain/core/atomic_file.h"
#include "llmtrain/spec/run_spec.h"
#include "llmtrain/spec/sweep.h"
#include "testing/reference.h"

namespace llmtrain {
namespace {

std::string GgufModelPath() { return std::string(LLMTRAIN_SOURCE_DIR) + "/.venv/models/gemma-3-270m-q4_k_m.gguf"; }

// A valid base spec over the real 270M's metadata (the model is never loaded here).
spec::RunSpec BaseSpec(const std::string& dir) {
  const std::string data = dir + "/train.jsonl";
  REQUIRE(WriteFileAtomically(data, "{\"instruction\": \"Say hi\", \"response\": \"hi\"}\n").ok());
  auto run = spec::ParseRunSpec("base", absl::StrCat("model { path: \"", GgufModelPath(), "\" }\n", "data { train_files: \"",
                                                     data, "\" eval_files: \"", data, "\" }\n",
                                                     "training { max_steps: 8 }\noutput { dir: \"", dir, "/run\" }\n"));
  REQUIRE(run.ok());
  return *run;
}

spec::SweepSpace Space(const std::string& text) {
  auto space = spec::ParseSweepSpace("space.textproto", text);
  INFO(space.status().ToString());
  REQUIRE(space.ok());
  return *space;
}

int CountOf(const std::string& text, const std::string& needle) {
  int n = 0;
  for (size_t at = text.find(needle); at != std::string::npos; at = text.find(needle, at + 1)) ++n;
  return n;
}

std::string SweepError(const spec::RunSpec& base, const std::string& space_text) {
  const absl::Status s = spec::ValidateSweep(base, Space(space_text));
  return s.ok() ? "" : std::string(s.message());
}

TEST_CASE("sweep: a space parses with its defaults; unknown fields name their line", "[spec][sweep]") {
  const spec::SweepSpace s = Space("param { field: \"lora.r\" values: \"4\" values: \"8\" }\nmethod: \"asha\"\n");
  CHECK(s.method() == spec::SweepSpace::asha);
  CHECK(s.parallel() == 1);
  CHECK(s.trials() == 0);
  CHECK(s.metric() == "eval_loss");
  CHECK(s.rungs().reduction_factor() == 2);
  auto bad = spec::ParseSweepSpace("space.textproto", "param { field: \"lora.r\" }\nmethd: grid\n");
  REQUIRE_FALSE(bad.ok());
  CHECK_THAT(std::string(bad.status().message()), Catch::Contains("space.textproto: line 2"));
  CHECK_THAT(std::string(bad.status().message()), Catch::Contains("methd"));
  // A quoted enum value is read as the identifier; a bad one names its line, field and the choices,
  // and a quoted string elsewhere (a value that looks like a method) is left alone.
  CHECK(Space("param { field: \"lora.r\" values: \"4\" }\nmethod:\"random\" trials: 1").method() ==
        spec::SweepSpace::random);
  CHECK(Space("param { field: \"training.seed\" values: \"asha\" }").param(0).values(0) == "asha");
  auto bad_method = spec::ParseSweepSpace("space.textproto", "param { field: \"lora.r\" }\nmethod: \"hyperband\"\n");
  REQUIRE_FALSE(bad_method.ok());
  CHECK(std::string(bad_method.status().message()) ==
        "space.textproto: line 2: method: \"hyperband\" is not one of \"grid\", \"random\", \"asha\"");
}

TEST_CASE("sweep: every invalid space is refused before any work, naming the param and the rule", "[spec][sweep]") {
  const std::string dir = testing::TempDir("sweep_bad");
  const spec::RunSpec base = BaseSpec(dir);
  CHECK(SweepError(base, "param { field: \"lora.r\" values: \"4\" values: \"8\" }") == "");
  struct Bad {
    std::string space;
    std::string message;
  };
  const std::vector<Bad> table = {
      {"", "param: the space has no param"},
      {"param { field: \"training.lr\" values: \"1e-3\" }",
       "param[0] (training.lr): --set training.lr: \"lr\" is not a field of TrainingSpec"},
      {"param { field: \"lora.r\" }", "param[0] (lora.r): empty: give values, or min and max"},
      {"param { field: \"training.learning_rate\" min: 1e-2 max: 1e-4 } method: random trials: 2",
       "param[0] (training.learning_rate): empty range: min 0.01 > max 0.0001"},
      {"param { field: \"lora.r\" min: 2.2 max: 2.8 integer: true } method: random trials: 2",
       "param[0] (lora.r): empty range: no whole number in [2.2, 2.8]"},
      {"param { field: \"training.learning_rate\" min: 0 max: 1e-3 log: true } method: random trials: 2",
       "param[0] (training.learning_rate): log needs min > 0, got 0"},
      {"param { field: \"training.learning_rate\" min: 1e-4 } method: random trials: 2",
       "param[0] (training.learning_rate): a range needs both min and max"},
      {"param { field: \"training.learning_rate\" min: 1e-4 max: 1e-3 }",
       "param[0] (training.learning_rate): grid search needs values"},
      {"param { field: \"lora.r\" values: \"4\" min: 1 max: 3 }", "give values or a range (min, max), not both"},
      {"param { field: \"output.dir\" values: \"x\" }", "param[0] (output.dir): output.dir is the sweep's"},
      {"param { field: \"lora.r\" values: \"4\" } param { field: \"lora.r\" values: \"8\" }",
       "param[1] (lora.r): the field is varied twice"},
      {"param { field: \"lora.r\" values: \"4\" values: \"0\" }", "param[0] (lora.r) = \"0\": lora.r: must be in [1, 65536]"},
      {"param { field: \"lora.r\" values: \"four\" }", "--set lora.r: \"four\" is not an integer"},
      {"param { field: \"lora.r\" values: \"4\" values: \"8\" } trials: 3", "trials: the grid has 2 points; give 0"},
      {"param { field: \"training.learning_rate\" min: 1e-4 max: 1e-3 } method: random",
       "trials: random search needs trials ≥ 1"},
      {"param { field: \"lora.r\" values: \"4\" } parallel: 0", "parallel: must be ≥ 1, got 0"},
      {"param { field: \"lora.r\" values: \"4\" } metric: \"rouge\"", "metric: unknown \"rouge\""},
      {"param { field: \"lora.r\" values: \"4\" } metric: \"rougeL\"", "metric: rougeL needs \"rouge\" in the spec's eval.metrics"},
      {"param { field: \"lora.r\" values: \"4\" } method: asha", "rungs.min_steps: must be ≥ 1, got 0"},
      {"param { field: \"lora.r\" values: \"4\" } method: asha rungs { min_steps: 8 }",
       "rungs.min_steps: must be below training.max_steps (8), got 8"},
      {"param { field: \"lora.r\" values: \"4\" } method: asha rungs { min_steps: 2 reduction_factor: 1 }",
       "rungs.reduction_factor: must be ≥ 2, got 1"},
      {"param { field: \"training.max_steps\" values: \"4\" } method: asha rungs { min_steps: 2 }",
       "asha stops trials at steps of one common length"},
      {"param { field: \"lora.r\" min: 2 max: 8 } method: random trials: 2",
       "param[0] (lora.r): a whole-number field: add integer: true to the range"},
      {"param { field: \"training.lr_scheduler\" min: 0 max: 1 } method: random trials: 2",
       "param[0] (training.lr_scheduler): a range needs a numeric field: give values"},
      {"param { field: \"eval.max_batches\" values: \"1\" }", "do not vary output.*, eval.* or the eval data"},
      {"param { field: \"output.report_to\" values: \"tensorboard\" }", "do not vary output.*, eval.* or the eval data"},
      {"param { field: \"data.eval_files\" values: \"x.jsonl\" }", "do not vary output.*, eval.* or the eval data"},
      {"param { field: \"lora.r\" values: \"4\" } method: random trials: 100001", "trials: must be in [0, 100000]"},
  };
  for (const Bad& b : table) {
    INFO(b.space);
    const std::string error = SweepError(base, b.space);
    CHECK_THAT(error, Catch::Contains(b.message));
  }
  // What the base spec lacks is named once, as the spec's.
  spec::RunSpec no_eval = base;
  no_eval.mutable_data()->clear_eval_files();
  CHECK_THAT(SweepError(no_eval, "param { field: \"lora.r\" values: \"4\" }"),
             Catch::Contains("data.eval_files: a sweep ranks trials by their evaluations"));
  spec::RunSpec tb_only = base;
  tb_only.mutable_output()->add_report_to(spec::OutputSpec::tensorboard);
  CHECK_THAT(SweepError(tb_only, "param { field: \"lora.r\" values: \"4\" }"),
             Catch::Contains("output.report_to: a sweep reads each trial's metrics.jsonl: include jsonl"));
  // 10^6 points: refused before anything is drawn.
  std::string huge;
  for (const char* field : {"training.learning_rate", "lora.r", "lora.alpha", "training.warmup_steps", "training.seed"}) {
    absl::StrAppend(&huge, "param { field: \"", field, "\"");
    for (int v = 1; v <= 10; ++v) absl::StrAppend(&huge, " values: \"", v, "\"");
    huge += " }\n";
  }
  huge += "param { field: \"lora.dropout\"";
  for (int v = 0; v < 10; ++v) absl::StrAppend(&huge, " values: \"0.", v, "\"");
  huge += " }\n";
  CHECK_THAT(SweepError(base, huge), Catch::Contains("param: the grid has more than 100000 points"));
  spec::RunSpec epochs = base;
  epochs.mutable_training()->set_max_steps(0);
  CHECK_THAT(SweepError(epochs, "param { field: \"lora.r\" values: \"4\" } method: asha rungs { min_steps: 2 }"),
             Catch::Contains("training.max_steps: asha needs a step count"));
  spec::RunSpec missing = base;
  missing.mutable_model()->set_path("/no/such/model.gguf");
  const std::string e = SweepError(missing, "param { field: \"lora.r\" values: \"4\" values: \"8\" }");
  CHECK_THAT(e, Catch::Contains("spec: model.path"));
  CHECK(e.find("model.path") == e.rfind("model.path"));
}

TEST_CASE("sweep: the grid in order, random draws in their ranges and from their seed", "[spec][sweep]") {
  const auto grid = spec::SampleTrials(Space(
      "param { field: \"training.learning_rate\" values: \"1e-4\" values: \"1e-3\" }\n"
      "param { field: \"lora.r\" values: \"4\" values: \"8\" values: \"16\" }\n"));
  REQUIRE(grid.size() == 6);
  CHECK(grid[0] == spec::TrialParams{{"training.learning_rate", "1e-4"}, {"lora.r", "4"}});
  CHECK(grid[2] == spec::TrialParams{{"training.learning_rate", "1e-4"}, {"lora.r", "16"}});
  CHECK(grid[3] == spec::TrialParams{{"training.learning_rate", "1e-3"}, {"lora.r", "4"}});
  CHECK(grid[5] == spec::TrialParams{{"training.learning_rate", "1e-3"}, {"lora.r", "16"}});

  const std::string random =
      "param { field: \"training.learning_rate\" min: 1e-5 max: 1e-1 log: true }\n"
      "param { field: \"lora.r\" min: 2 max: 5 integer: true }\n"
      "param { field: \"lora.dropout\" min: 0 max: 0.2 }\n"
      "param { field: \"training.lr_scheduler\" values: \"linear\" values: \"cosine\" }\n"
      "method: random trials: 400 seed: 3\n";
  const auto a = spec::SampleTrials(Space(random));
  CHECK(a == spec::SampleTrials(Space(random)));
  const auto other = spec::SampleTrials(Space(absl::StrReplaceAll(random, {{"seed: 3", "seed: 4"}})));
  CHECK(a != other);
  REQUIRE(a.size() == 400);
  int lr_below_1e4 = 0, cosine = 0;
  std::map<std::string, int> ranks;
  for (const spec::TrialParams& t : a) {
    REQUIRE(t.size() == 4);
    const double lr = std::stod(t[0].second), dropout = std::stod(t[2].second);
    CHECK(lr >= 1e-5);
    CHECK(lr <= 1e-1);
    lr_below_1e4 += lr < 1e-4;
    ranks[t[1].second] += 1;
    CHECK(dropout >= 0);
    CHECK(dropout <= 0.2);
    cosine += t[3].second == "cosine";
  }
  // Log-uniform over four decades: a quarter below 1e-4 (a uniform draw would put 0.09% there).
  CHECK(lr_below_1e4 > 70);
  CHECK(lr_below_1e4 < 130);
  // Whole numbers 2…5, each about a quarter.
  REQUIRE(ranks.size() == 4);
  for (const auto& [r, n] : ranks) {
    INFO("rank " << r);
    CHECK((r == "2" || r == "3" || r == "4" || r == "5"));
    CHECK(n > 70);
  }
  CHECK(cosine > 160);
  CHECK(cosine < 240);
  // asha draws from the grid when it has values only and trials is 0 or the grid's size.
  CHECK(spec::SweepUsesGrid(Space("param { field: \"lora.r\" values: \"4\" values: \"8\" } method: asha")));
  CHECK_FALSE(spec::SweepUsesGrid(Space("param { field: \"lora.r\" values: \"4\" values: \"8\" } method: asha trials: 5")));
}

TEST_CASE("sweep: rungs and successive halving's decisions", "[spec][sweep]") {
  CHECK(spec::RungSteps(8, 2, 2) == std::vector<int64_t>{2, 4, 8});
  CHECK(spec::RungSteps(10, 3, 3) == std::vector<int64_t>{3, 9, 10});
  CHECK(spec::RungSteps(9, 3, 3) == std::vector<int64_t>{3, 9});
  CHECK(spec::RungSteps(100, 10, 4) == std::vector<int64_t>{10, 40, 100});
  CHECK(spec::MetricMaximized("rougeL"));
  CHECK_FALSE(spec::MetricMaximized("eval_loss"));
  CHECK_FALSE(spec::MetricMaximized("eval_perplexity"));

  // 8 trials, one failed (no value), two tied: the best 4 go on, best first; ties by id.
  const std::vector<std::pair<int, std::optional<double>>> values = {
      {0, 3.0}, {1, std::nullopt}, {2, 2.5}, {3, 2.0}, {4, 2.5}, {5, 4.0}, {6, 1.5}, {7, 3.5}};
  const spec::RungDecision d = spec::DecideRung(2, values, 2, /*maximize=*/false);
  CHECK(d.step == 2);
  CHECK(d.kept == std::vector<int>{6, 3, 2, 4});
  CHECK(d.stopped == std::vector<int>{0, 7, 5, 1});
  const spec::RungDecision up = spec::DecideRung(2, values, 4, /*maximize=*/true);
  CHECK(up.kept == std::vector<int>{5, 7});
  // At least one goes on; a failed trial never does.
  CHECK(spec::DecideRung(1, {{0, 2.0}, {1, 1.0}, {2, 3.0}}, 2, false).kept == std::vector<int>{1});
  CHECK(spec::DecideRung(1, {{0, std::nullopt}, {1, NAN}}, 2, false).kept.empty());
}

TEST_CASE("sweep: a damaged sweep.json is refused naming the field", "[spec][sweep]") {
  const std::string good =
      R"({"version": 1, "spec": "s", "space": "p", "metric": "eval_loss", "maximize": false, "rungs": [2, 8],)"
      R"( "trials": [{"id": 0, "dir": "trials/000", "params": [["lora.r", "4"]], "state": "waiting", "target_step": 2,)"
      R"( "values": [[2, 1.5]], "processes": 1, "error": ""}], "decisions": []})";
  auto ok = spec::ParseSweepState("sweep.json", good);
  INFO(ok.status().ToString());
  REQUIRE(ok.ok());
  REQUIRE(ok->trials.size() == 1);
  CHECK(ok->trials[0].state == spec::TrialState::kWaiting);
  CHECK(ok->trials[0].values == std::vector<std::pair<int64_t, double>>{{2, 1.5}});
  // A non-finite value (a diverged trial) is stored as null and read back as NaN.
  auto nan = spec::ParseSweepState("sweep.json", absl::StrReplaceAll(good, {{"[[2, 1.5]]", "[[2, null]]"}}));
  REQUIRE(nan.ok());
  CHECK(std::isnan(nan->trials[0].values[0].second));
  const std::vector<std::pair<std::string, std::string>> bad = {
      {"{", "sweep.json"},
      {absl::StrReplaceAll(good, {{"\"version\": 1", "\"version\": 2"}}), "\"version\" is 2"},
      {absl::StrReplaceAll(good, {{"\"id\": 0", "\"id\": 1"}}), "\"trials[0].id\" is not 0"},
      {absl::StrReplaceAll(good, {{"\"waiting\"", "\"sleeping\""}}), "\"trials[0].state\" is \"sleeping\""},
      {absl::StrReplaceAll(good, {{"[[2, 1.5]]", "[[2]]"}}), "\"trials[0].values[0]\" is not a [step, value] pair"},
      {absl::StrReplaceAll(good, {{"\"trials/000\"", "\"../x\""}}), "\"trials[0].dir\" is not trials/000"},
      {absl::StrReplaceAll(good, {{"\"decisions\": []", "\"decisions\": [{\"step\": 2, \"kept\": [5], \"stopped\": []}]"}}),
       "\"decisions[0].kept\" holds something that is not a trial id"},
      {absl::StrReplaceAll(good, {{", \"error\": \"\"", ""}}), "\"trials[0].error\" is missing"},
      {absl::StrReplaceAll(good, {{"\"decisions\": []", "\"decisions\": [{\"step\": 2, \"kept\": [0, 0], \"stopped\": []}]"}}),
       "\"decisions[0]\" names trial 0 twice"},
      {absl::StrReplaceAll(good, {{"\"decisions\": []", "\"decisions\": [{\"step\": 4, \"kept\": [0], \"stopped\": []}]"}}),
       "\"decisions[0].step\" is not the rung's step 2"},
      {absl::StrReplaceAll(good, {{"\"decisions\": []", "\"decisions\": [{\"step\": 2, \"kept\": [], \"stopped\": []}]"}}),
       "\"decisions[0]\" does not decide on every trial of its rung"},
      {absl::StrReplaceAll(good, {{"\"target_step\": 2", "\"target_step\": 3"}}), "\"trials[0].target_step\" is not a rung's step: 3"},
      {absl::StrReplaceAll(good, {{"[2, 8]", "[8, 2]"}}), "\"rungs\" are not increasing"},
  };
  for (const auto& [text, message] : bad) {
    INFO(text);
    auto r = spec::ParseSweepState("sweep.json", text);
    REQUIRE_FALSE(r.ok());
    CHECK_THAT(std::string(r.status().message()), Catch::Contains(message));
  }
}

// A stand-in for `llmtrain train` that follows the trial protocol: its eval_loss is the trial's
// learning rate. The trial whose folder ends in 001 fails as a crashed process would, the one in
// 006 exits 0 without getting anywhere; each writes the threads it was given, and sleeps
// $FAKE_TRAINER_SLEEP seconds first when that is set.
constexpr char kFakeTrainer[] = R"SH(#!/bin/sh
dir=""; stop=""; lr=""
while [ $# -gt 0 ]; do
  case "$1" in
    --set) case "$2" in output.dir=*) dir="${2#output.dir=}";; training.learning_rate=*) lr="${2#training.learning_rate=}";; esac; shift 2;;
    --stop-at-step) stop="$2"; shift 2;;
    *) shift;;
  esac
done
echo "$LLMTRAIN_NUM_THREADS $OMP_NUM_THREADS" > "$dir/threads"
[ -n "$FAKE_TRAINER_SLEEP" ] && sleep "$FAKE_TRAINER_SLEEP"
case "$dir" in *001) echo "fake trainer: out of memory" >&2; exit 3;; *006) exit 0;; esac
step=${stop:-8}
echo "{\"type\": \"eval\", \"step\": $step, \"eval_loss\": $lr}" >> "$dir/metrics.jsonl"
if [ -n "$stop" ]; then mkdir -p "$dir/checkpoints/step-$(printf %06d "$step")"
else mkdir -p "$dir/adapter" && : > "$dir/adapter/adapter_config.json"; fi
)SH";

spec::SweepOptions FakeSweep(const std::string& dir) {
  const spec::RunSpec base = BaseSpec(dir);
  REQUIRE(WriteFileAtomically(dir + "/spec.textproto", spec::SpecToText(base)).ok());
  REQUIRE(WriteFileAtomically(dir + "/fake_trainer", kFakeTrainer).ok());
  REQUIRE(chmod((dir + "/fake_trainer").c_str(), 0755) == 0);
  spec::SweepOptions o;
  o.spec_path = dir + "/spec.textproto";
  o.space = Space(
      "param { field: \"training.learning_rate\" values: \"0.8\" values: \"0.1\" values: \"0.5\" values: \"0.3\""
      " values: \"0.6\" values: \"0.2\" values: \"0.7\" values: \"0.4\" }\n"
      "method: asha rungs { min_steps: 2 } parallel: 3\n");
  o.output_dir = dir + "/sweep";
  o.program = dir + "/fake_trainer";
  o.progress = false;
  return o;
}

int Cores() {
  cpu_set_t set;
  REQUIRE(sched_getaffinity(0, sizeof(set), &set) == 0);
  return CPU_COUNT(&set);
}

TEST_CASE("sweep: a failed trial is recorded with its exit and log, ranked last, and the sweep goes on", "[spec][sweep]") {
  const std::string dir = testing::TempDir("sweep_fake");
  spec::SweepOptions o = FakeSweep(dir);
  auto r = spec::RunSweep(o);
  INFO(r.status().ToString());
  REQUIRE(r.ok());
  REQUIRE(r->trials.size() == 8);
  REQUIRE(r->decisions.size() == 2);
  CHECK(r->decisions[0].kept == std::vector<int>{5, 3, 7, 2});
  CHECK(r->decisions[0].stopped == std::vector<int>{4, 0, 1, 6});
  CHECK(r->decisions[1].kept == std::vector<int>{5, 3});
  REQUIRE(r->best.has_value());
  CHECK(*r->best == 5);
  CHECK(r->trials[1].state == spec::TrialState::kFailed);
  CHECK_THAT(r->trials[1].error, Catch::Contains("trial 1 exited with code 3"));
  CHECK_THAT(r->trials[1].error, Catch::Contains("fake trainer: out of memory"));
  CHECK(r->trials[6].state == spec::TrialState::kFailed);
  CHECK_THAT(r->trials[6].error, Catch::Contains("trial 6 exited 0 before step 2"));
  // Three at a time on this machine's cores: each trial had its share of threads.
  const std::string share = std::to_string(std::max(1, Cores() / 3));
  CHECK(ReadFileToString(dir + "/sweep/trials/000/threads").value_or("") == share + " " + share + "\n");
  CHECK(r->trials[0].state == spec::TrialState::kStopped);
  CHECK(r->trials[3].state == spec::TrialState::kCompleted);
  CHECK(r->trials[3].values == std::vector<std::pair<int64_t, double>>{{2, 0.3}, {4, 0.3}, {8, 0.3}});
  auto board = ReadFileToString(r->leaderboard_json);
  REQUIRE(board.ok());
  const nlohmann::json j = nlohmann::json::parse(*board);
  CHECK(j["best"]["trial"] == 5);
  // The failed trials rank last, by id.
  CHECK(j["trials"][6]["trial"] == 1);
  CHECK(j["trials"][7]["trial"] == 6);
  CHECK(j["trials"][7]["state"] == "failed");
  auto html = ReadFileToString(r->leaderboard_html);
  REQUIRE(html.ok());
  CHECK(std::count(html->begin(), html->end(), '\n') > 10);
  CHECK_THAT(*html, Catch::Contains("<polyline"));
  // The same command again (with another parallel) has nothing left to do: failed trials are not
  // retried. Another space or spec in the same folder is refused.
  o.space.set_parallel(1);
  auto again = spec::RunSweep(o);
  REQUIRE(again.ok());
  for (int t = 0; t < 8; ++t) CHECK(again->trials[t].processes == r->trials[t].processes);
  CHECK(again->trials[5].processes == 3);
  CHECK(again->trials[1].processes == 1);
  spec::SweepOptions other_space = o;
  other_space.space.set_seed(9);
  auto refused = spec::RunSweep(other_space);
  REQUIRE_FALSE(refused.ok());
  CHECK_THAT(std::string(refused.status().message()), Catch::Contains("is a sweep of another space"));
  spec::SweepOptions other_spec = o;
  other_spec.overrides = {"lora.r=4"};
  refused = spec::RunSweep(other_spec);
  REQUIRE_FALSE(refused.ok());
  CHECK_THAT(std::string(refused.status().message()), Catch::Contains("is a sweep of another spec"));
  // A program that cannot be executed stops the sweep with an error; no trial is marked failed.
  spec::SweepOptions missing = FakeSweep(testing::TempDir("sweep_noexec"));
  REQUIRE(chmod(missing.program.c_str(), 0644) == 0);
  auto not_run = spec::RunSweep(missing);
  REQUIRE_FALSE(not_run.ok());
  CHECK_THAT(std::string(not_run.status().message()), Catch::Contains("cannot run"));
}

TEST_CASE("sweep: a stop request stops the running trials; the same sweep then continues", "[spec][sweep]") {
  const std::string dir = testing::TempDir("sweep_stop");
  spec::SweepOptions o = FakeSweep(dir);
  o.space.set_parallel(2);
  setenv("FAKE_TRAINER_SLEEP", "0.4", 1);
  std::atomic<bool> stop{false};
  o.stop = &stop;
  // The stop comes once a trial has reached its rung (the others sleep 0.4 s: some still run).
  std::thread stopper([&] {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::minutes(2);
    while (std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
      auto text = ReadFileToString(dir + "/sweep/sweep.json");
      if (!text.ok()) continue;
      const nlohmann::json j = nlohmann::json::parse(*text, nullptr, false);
      if (j.is_discarded()) continue;
      bool reached = false;
      for (const auto& t : j["trials"]) reached |= !t["values"].empty();
      if (reached) break;
    }
    stop.store(true);
  });
  auto r = spec::RunSweep(o);
  stopper.join();
  unsetenv("FAKE_TRAINER_SLEEP");
  REQUIRE_FALSE(r.ok());
  CHECK(r.status().code() == absl::StatusCode::kCancelled);
  CHECK_THAT(std::string(r.status().message()), Catch::Contains("run the same command to continue"));
  const nlohmann::json at_stop = nlohmann::json::parse(ReadFileToString(dir + "/sweep/sweep.json").value_or("{}"));
  int pending = 0, finished = 0;
  for (const auto& t : at_stop["trials"]) {
    pending += t["state"] == "pending" || t["state"] == "running";
    finished += !t["values"].empty();
  }
  CHECK(pending > 0);
  CHECK(finished > 0);
  stop.store(false);
  auto resumed = spec::RunSweep(o);
  INFO(resumed.status().ToString());
  REQUIRE(resumed.ok());
  CHECK(resumed->decisions.size() == 2);
  REQUIRE(resumed->best.has_value());
  CHECK(*resumed->best == 5);
  // Trials with a value at the stop were not run again for it.
  for (const auto& t : at_stop["trials"]) {
    if (t["values"].empty()) continue;
    const int id = t["id"].get<int>();
    INFO("trial " << id);
    auto log = ReadFileToString(absl::StrFormat("%s/sweep/trials/%03d/train.log", dir, id));
    CHECK(CountOf(log.value_or(""), "--stop-at-step 2\n") == 1);
  }
  std::printf("sweep: stopped with %d trials pending or running and %d at their rung; continued to the end\n", pending,
              finished);
}

// ---- `llmtrain sweep` on a tiny model ----

nlohmann::json ReadJson(const std::string& path) {
  auto text = ReadFileToString(path);
  INFO(path);
  REQUIRE(text.ok());
  return nlohmann::json::parse(*text);
}

// eval_loss by step from a trial's metrics.jsonl.
std::map<int64_t, double> EvalLosses(const std::string& trial_dir) {
  std::map<int64_t, double> losses;
  auto text = ReadFileToString(trial_dir + "/metrics.jsonl");
  if (!text.ok()) return losses;
  for (absl::string_view line : absl::StrSplit(*text, '\n', absl::SkipWhitespace())) {
    const nlohmann::json j = nlohmann::json::parse(line);
    if (j["type"] == "eval") losses[j["step"].get<int64_t>()] = j["eval_loss"].get<double>();
  }
  return losses;
}


// A tiny Qwen2 model (train_ref.py tiny) and a QLoRA spec of 8 steps over it; returns the spec.
std::string TinySpec(const std::string& dir) {
  REQUIRE(testing::RunReference("train_ref.py", {"tiny", dir + "/tiny", "qwen2"}).exit_code == 0);
  const std::string spec = dir + "/spec.textproto";
  REQUIRE(WriteFileAtomically(spec, absl::StrCat(
      "model { path: \"", dir, "/tiny/model\" load_in_4bit: true }\n",
      "lora { r: 4 alpha: 8 dropout: 0 target_modules: \"all-linear\" }\n",
      "data { train_files: \"", dir, "/tiny/train.jsonl\" eval_files: \"", dir, "/tiny/train.jsonl\" format: text",
      " template: none max_length: 24 }\n",
      "training { max_steps: 8 micro_batch_size: 2 learning_rate: 0.003 warmup_steps: 1 seed: 7 }\n",
      "eval { max_batches: 2 }\n",
      "output { dir: \"", dir, "/unused\" report_to: jsonl }\n")).ok());
  return spec;
}

TEST_CASE("sweep: 8 trials of lr × rank with ASHA on a tiny model; a SIGKILL'ed sweep resumes", "[spec][sweep][cli]") {
  if (!testing::ReferenceStackAvailable()) return testing::Skip("no .venv: the tiny model cannot be made");
  const std::string dir = testing::TempDir("sweep_tiny");
  const std::string spec = TinySpec(dir), space = dir + "/space.textproto";
  const auto q = testing::ShellQuote;
  REQUIRE(WriteFileAtomically(space,
      "param { field: \"training.learning_rate\" values: \"1e-4\" values: \"1e-3\" values: \"3e-3\" values: \"1e-2\" }\n"
      "param { field: \"lora.r\" values: \"2\" values: \"8\" }\n"
      "method: asha\nrungs { min_steps: 2 reduction_factor: 2 }\n").ok());
  const std::string cli = testing::CliPath();
  const std::string command = absl::StrCat(cli, " sweep --spec ", q(spec), " --space ", q(space));

  // Bad input is refused before anything runs or is written.
  const std::string bad_space = dir + "/bad.textproto";
  REQUIRE(WriteFileAtomically(bad_space, "param { field: \"lora.rank\" values: \"4\" }\n"
                                         "param { field: \"training.learning_rate\" min: 1e-2 max: 1e-3 }\n"
                                         "method: random trials: 4\n").ok());
  const auto refused = testing::RunCommand(absl::StrCat(cli, " sweep --spec ", q(spec), " --space ", q(bad_space),
                                                        " --output ", q(dir + "/refused"), " 2>&1"));
  INFO(refused.out);
  CHECK(refused.exit_code == 2);
  CHECK_THAT(refused.out, Catch::Contains("param[0] (lora.rank): --set lora.rank: \"rank\" is not a field of LoraSpec"));
  CHECK_THAT(refused.out, Catch::Contains("param[1] (training.learning_rate): empty range: min 0.01 > max 0.001"));
  CHECK_FALSE(IsDirectory(dir + "/refused"));

  // 1. The whole sweep, two trials at a time.
  const auto run = testing::RunCommand(absl::StrCat(command, " --output ", q(dir + "/a"), " --parallel 2 2>&1"));
  INFO(run.out);
  REQUIRE(run.exit_code == 0);
  const nlohmann::json state = ReadJson(dir + "/a/sweep.json");
  REQUIRE(state["trials"].size() == 8);
  std::vector<std::map<int64_t, double>> losses;
  for (int t = 0; t < 8; ++t) losses.push_back(EvalLosses(absl::StrFormat("%s/a/trials/%03d", dir, t)));
  // The first rung (step 2) stopped exactly the 4 trials with the highest eval loss there.
  std::vector<std::pair<double, int>> at2;
  for (int t = 0; t < 8; ++t) {
    REQUIRE(losses[t].count(2) == 1);
    at2.emplace_back(losses[t][2], t);
  }
  std::sort(at2.begin(), at2.end());
  std::set<int> worst, stopped;
  for (int i = 4; i < 8; ++i) worst.insert(at2[i].second);
  for (const auto& id : state["decisions"][0]["stopped"]) stopped.insert(id.get<int>());
  CHECK(stopped == worst);
  CHECK(state["decisions"][0]["step"] == 2);
  CHECK_THAT(run.out, Catch::Contains("sweep: rung 1 (step 2), 8 trials by eval_loss: kept"));
  CHECK_THAT(run.out, Catch::Contains("stopped the worst 4:"));
  for (int t : worst) {
    INFO("trial " << t);
    CHECK(losses[t].rbegin()->first == 2);  // trained no further than the rung
    CHECK(state["trials"][t]["state"] == "stopped");
  }
  // Rungs 2, 4, 8: 4 trials reach step 4 and 2 complete.
  std::vector<int> completed;
  for (int t = 0; t < 8; ++t) {
    if (state["trials"][t]["state"] == "completed") completed.push_back(t);
  }
  REQUIRE(completed.size() == 2);
  // The best trial's eval loss is the minimum over the completed trials' final evaluations.
  const nlohmann::json board = ReadJson(dir + "/a/leaderboard.json");
  const int best = board["best"]["trial"].get<int>();
  double min_final = INFINITY;
  for (int t : completed) {
    REQUIRE(losses[t].rbegin()->first == 8);
    min_final = std::min(min_final, losses[t][8]);
  }
  CHECK(board["best"]["value"].get<double>() == min_final);
  CHECK(losses[best][8] == min_final);
  CHECK(board["trials"][0]["trial"] == best);
  CHECK(IsRegularFile(absl::StrFormat("%s/a/trials/%03d/adapter/adapter_model.safetensors", dir, best)));
  CHECK_THAT(run.out, Catch::Contains(absl::StrFormat("sweep: best trial %d: eval_loss", best)));
  std::printf("sweep: 8 trials, ASHA rungs 2/4/8: stopped at step 2: %s; best trial %d, eval loss %.6f\n",
              state["decisions"][0]["stopped"].dump().c_str(), best, min_final);

  // 2. The best trial's three processes (stopped at 2 and 4, resumed) equal one straight run.
  std::string overrides;
  for (const auto& [field, value] : board["best"]["params"].items()) {
    absl::StrAppend(&overrides, " --set ", q(absl::StrCat(field, "=", value.get<std::string>())));
  }
  CHECK(state["trials"][best]["processes"] == 3);
  const std::string share = std::to_string(std::max(1, Cores() / 2));
  const auto straight = testing::RunCommand(absl::StrCat("LLMTRAIN_NUM_THREADS=", share, " OMP_NUM_THREADS=", share, " ", cli,
                                                         " train --spec ", q(spec), overrides, " --set ",
                                                         q("output.dir=" + dir + "/straight"), " 2>&1"));
  INFO(straight.out);
  REQUIRE(straight.exit_code == 0);
  const auto straight_losses = EvalLosses(dir + "/straight");
  REQUIRE(straight_losses.count(8) == 1);
  // The same steps on the same thread count (a trial's share of the cores): the resumed run continues exactly (the trainer's
  // resume test), so the eval losses are equal, not close.
  CHECK(straight_losses.at(8) == min_final);

  // A trial stopped at step 2 asked to stop at step 2 again has nothing to do and writes nothing.
  const int stopped_trial = *worst.begin();
  const std::string stopped_dir = absl::StrFormat("%s/a/trials/%03d", dir, stopped_trial);
  const auto metrics_before = ReadFileToString(stopped_dir + "/metrics.jsonl");
  std::string stopped_overrides;
  for (const auto& pair : state["trials"][stopped_trial]["params"]) {
    absl::StrAppend(&stopped_overrides, " --set ", q(absl::StrCat(pair[0].get<std::string>(), "=", pair[1].get<std::string>())));
  }
  const auto again = testing::RunCommand(absl::StrCat(cli, " train --spec ", q(spec), stopped_overrides, " --set ",
                                                      q("output.dir=" + stopped_dir), " --resume --stop-at-step 2 2>&1"));
  INFO(again.out);
  CHECK(again.exit_code == 0);
  CHECK_THAT(again.out, Catch::Contains("already at step 2 (--stop-at-step 2): nothing to do"));
  CHECK(ReadFileToString(stopped_dir + "/metrics.jsonl").value_or("") == metrics_before.value_or("-"));

  // 3. SIGKILL the sweep once a few trials have reached the first rung, then
  // run the same command: trials that had reached their rung are not run again, and the results
  // equal the uninterrupted sweep's.
  const std::string killed_dir = dir + "/b";
  const pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    const std::string log = killed_dir + ".log";
    execl("/bin/sh", "sh", "-c",
          absl::StrCat("exec ", command, " --output ", q(killed_dir), " --parallel 2 > ", q(log), " 2>&1").c_str(),
          static_cast<char*>(nullptr));
    _exit(127);
  }
  std::map<int, int> done_at_kill;  // trial → processes that had finished its rung
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::minutes(5);
  while (std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    auto text = ReadFileToString(killed_dir + "/sweep.json");
    if (!text.ok()) continue;
    const nlohmann::json s = nlohmann::json::parse(*text, nullptr, false);
    if (s.is_discarded()) continue;
    int reached = 0;
    for (const auto& t : s["trials"]) reached += !t["values"].empty();
    if (reached >= 3) break;
  }
  REQUIRE(kill(pid, SIGKILL) == 0);
  int status = 0;
  REQUIRE(waitpid(pid, &status, 0) == pid);
  CHECK(WIFSIGNALED(status));
  const nlohmann::json at_kill = ReadJson(killed_dir + "/sweep.json");
  for (const auto& t : at_kill["trials"]) {
    if (!t["values"].empty()) done_at_kill[t["id"].get<int>()] = t["processes"].get<int>();
  }
  INFO("trials at their rung when killed: " << done_at_kill.size());
  REQUIRE(done_at_kill.size() >= 3);
  const auto resumed = testing::RunCommand(absl::StrCat(command, " --output ", q(killed_dir), " --parallel 2 2>&1"));
  INFO(resumed.out);
  REQUIRE(resumed.exit_code == 0);
  CHECK_THAT(resumed.out, Catch::Contains("sweep: continuing"));
  const nlohmann::json after = ReadJson(killed_dir + "/sweep.json");
  for (const auto& [id, processes] : done_at_kill) {
    INFO("trial " << id);
    auto log = ReadFileToString(absl::StrFormat("%s/trials/%03d/train.log", killed_dir, id));
    REQUIRE(log.ok());
    // One process ran it to step 2, and none again after the kill.
    CHECK(CountOf(*log, "--stop-at-step 2\n") == 1);
    CHECK(CountOf(*log, "== llmtrain sweep: process") == after["trials"][id]["processes"].get<int>());
  }
  for (int t = 0; t < 8; ++t) {
    INFO("trial " << t);
    CHECK(after["trials"][t]["state"] == state["trials"][t]["state"]);
    CHECK(after["trials"][t]["values"] == state["trials"][t]["values"]);
  }
  CHECK(after["decisions"] == state["decisions"]);
  std::printf("sweep: SIGKILL with %zu of 8 trials at rung 1: resumed, the same decisions and values as the "
              "uninterrupted sweep\n", done_at_kill.size());
}

TEST_CASE("sweep: examples/optuna_sweep.py completes 4 trials through Optuna's SQLite storage", "[spec][sweep][cli]") {
  if (!testing::ReferenceStackAvailable()) return testing::Skip("no .venv: the tiny model cannot be made");
  const std::string dir = testing::TempDir("sweep_optuna");
  const std::string spec = TinySpec(dir);
  const auto q = testing::ShellQuote;
  const std::string python = LLMTRAIN_PYTHON;
  const auto run = testing::RunCommand(absl::StrCat(
      q(python), " ", q(std::string(LLMTRAIN_SOURCE_DIR) + "/examples/optuna_sweep.py"), " --llmtrain ",
      q(testing::CliPath()), " --spec ", q(spec), " --output ", q(dir + "/optuna"),
      " --rungs 2,4 --complete 4 --startup-trials 1 --seed 0 --threads 1 2>", q(dir + "/optuna.log")));
  INFO(run.out << ReadFileToString(dir + "/optuna.log").value_or(""));
  REQUIRE(run.exit_code == 0);
  // Its last line of output is the summary.
  const std::vector<std::string> lines = absl::StrSplit(run.out, '\n', absl::SkipWhitespace());
  REQUIRE_FALSE(lines.empty());
  const nlohmann::json summary = nlohmann::json::parse(lines.back());
  CHECK(summary["trials"]["complete"] == 4);
  // What the study holds, read back from its database by Optuna itself.
  const auto trials = testing::RunCommand(absl::StrCat(
      q(python), " -c ",
      q("import json, optuna, sys\n"
        "s = optuna.load_study(study_name='llmtrain', storage=sys.argv[1])\n"
        "print(json.dumps([[t.number, t.state.name, t.value, t.user_attrs.get('dir', ''),"
        " sorted(t.intermediate_values.items())] for t in s.trials]))\n"),
      " ", q("sqlite:///" + dir + "/optuna/optuna.db"), " 2>/dev/null"));
  REQUIRE(trials.exit_code == 0);
  const nlohmann::json all = nlohmann::json::parse(trials.out);
  int complete = 0, pruned = 0;
  for (const auto& t : all) {
    INFO(t.dump());
    const auto losses = EvalLosses(t[3].get<std::string>());
    // Each reported value is the trial's eval loss at that rung, and a completed trial's value its
    // eval loss at the last step.
    for (const auto& point : t[4]) CHECK(losses.at(point[0].get<int64_t>()) == point[1].get<double>());
    if (t[1] == "COMPLETE") {
      ++complete;
      CHECK(t[2].get<double>() == losses.at(8));
    } else if (t[1] == "PRUNED") {
      ++pruned;
      CHECK(losses.rbegin()->first < 8);
    }
  }
  CHECK(complete == 4);
  // With one startup trial the median rule has something to compare with from the second trial
  // on: on this model and seed, 7 of 11 trials were pruned at step 2 when this was written.
  CHECK(pruned >= 1);
  std::printf("sweep: optuna_sweep.py: %d trials complete, %d pruned by the median rule, best %s\n", complete, pruned,
              summary["best"].dump().c_str());
}

}  // namespace
}  // namespace llmtrain
