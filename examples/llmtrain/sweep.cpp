// llmtrain sweep --spec FILE --space SPACE --output DIR [--set path=value ...] [--trials N]
//                [--parallel P] [--method grid|random|asha] [--seed S] [--dry-run]
// A hyperparameter search over a run spec (spec/sweep.h): each trial is `llmtrain train` with its
// own --set overrides, as its own process; successive halving stops weak trials at rungs; the
// same command continues a stopped or killed sweep; DIR/leaderboard.{json,html} rank the trials.
#include <unistd.h>

#include <atomic>
#include <climits>
#include <csignal>
#include <cstdio>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "llmtrain/commands.h"
#include "llmtrain/spec/run_spec.h"
#include "llmtrain/spec/sweep.h"

namespace llmtrain::cli {
namespace {

constexpr char kHelp[] =
    "usage: llmtrain sweep --spec FILE --space SPACE --output DIR [--set path.to.field=value ...]\n"
    "                      [--trials N] [--parallel P] [--method grid|random|asha] [--seed S] [--dry-run]\n"
    "  FILE: the base run spec (--set applies to it before each trial's own overrides).\n"
    "  SPACE: a text proto of proto/llmtrain/sweep.proto: the fields to vary and their values or\n"
    "    ranges, the method, the trials, and rungs { min_steps reduction_factor }; --trials,\n"
    "    --parallel, --method and --seed replace its fields.\n"
    "  DIR: sweep.json (the state), trials/NNN/ (each trial's run folder and train.log),\n"
    "    leaderboard.json and leaderboard.html. Running the same command again continues the\n"
    "    sweep: finished trials are kept, interrupted ones resume from their checkpoints.\n"
    "  Each trial runs with cores / parallel threads. Ctrl-C stops the running trials with a\n"
    "  checkpoint. --dry-run prints the trials and rungs and runs nothing.\n";

std::atomic<bool> g_stop{false};
void OnSignal(int) { g_stop.store(true); }

}  // namespace

int RunSweep(const std::vector<std::string>& args) {
  std::string spec_file, space_file, output, method;
  std::vector<std::string> overrides;
  int trials = -1, parallel = -1;
  int64_t seed = -1;
  bool dry_run = false;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "--help" || a == "-h") {
      std::fputs(kHelp, stdout);
      return 0;
    }
    if (a == "--dry-run") {
      dry_run = true;
      continue;
    }
    if (i + 1 >= args.size()) return Fail("sweep", absl::StrCat(a, " needs a value\n", kHelp), 2);
    const std::string& v = args[++i];
    bool ok = true;
    if (a == "--spec") {
      spec_file = v;
    } else if (a == "--space") {
      space_file = v;
    } else if (a == "--output") {
      output = v;
    } else if (a == "--set") {
      overrides.push_back(v);
    } else if (a == "--method") {
      method = v;
      ok = v == "grid" || v == "random" || v == "asha";
    } else if (a == "--trials") {
      ok = absl::SimpleAtoi(v, &trials) && trials >= 1;
    } else if (a == "--parallel") {
      ok = absl::SimpleAtoi(v, &parallel) && parallel >= 1;
    } else if (a == "--seed") {
      ok = absl::SimpleAtoi(v, &seed) && seed >= 0;
    } else {
      return Fail("sweep", absl::StrCat("unknown option ", a, "\n", kHelp), 2);
    }
    if (!ok) return Fail("sweep", absl::StrCat(a, ": unexpected value \"", v, "\""), 2);
  }
  if (spec_file.empty() || space_file.empty() || (output.empty() && !dry_run)) {
    return Fail("sweep", absl::StrCat("--spec, --space and --output are required\n", kHelp), 2);
  }
  auto space = spec::LoadSweepSpace(space_file);
  if (!space.ok()) return Fail("sweep", std::string(space.status().message()));
  if (!method.empty()) {
    space->set_method(method == "grid" ? spec::SweepSpace::grid
                                       : method == "random" ? spec::SweepSpace::random : spec::SweepSpace::asha);
  }
  if (trials > 0) space->set_trials(trials);
  if (parallel > 0) space->set_parallel(parallel);
  if (seed >= 0) space->set_seed(static_cast<uint64_t>(seed));

  if (dry_run) {
    auto base = spec::LoadRunSpec(spec_file, overrides);
    if (!base.ok()) return Fail("sweep", std::string(base.status().message()));
    if (absl::Status valid = spec::ValidateSweep(*base, *space); !valid.ok()) return Fail("sweep", std::string(valid.message()));
    const auto all = spec::SampleTrials(*space);
    std::printf("%zu trials (%s):\n", all.size(), spec::SweepUsesGrid(*space) ? "the grid" : "random draws");
    for (size_t t = 0; t < all.size(); ++t) {
      std::string line = absl::StrFormat("  trial %03zu:", t);
      for (const auto& [f, v] : all[t]) absl::StrAppend(&line, " ", f, "=", v);
      std::puts(line.c_str());
    }
    if (space->method() == spec::SweepSpace::asha) {
      std::string rungs;
      for (int64_t r : spec::RungSteps(base->training().max_steps(), space->rungs().min_steps(),
                                       space->rungs().reduction_factor())) {
        absl::StrAppend(&rungs, rungs.empty() ? "" : ", ", r);
      }
      std::printf("successive halving: rungs at steps %s, keeping 1 in %d at each\n", rungs.c_str(),
                  space->rungs().reduction_factor());
    }
    return 0;
  }

  spec::SweepOptions options;
  options.spec_path = spec_file;
  options.overrides = overrides;
  options.space = *space;
  options.output_dir = output;
  // This program runs the trials.
  char self[PATH_MAX];
  const ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
  if (n <= 0) return Fail("sweep", "cannot find this program's path (/proc/self/exe)");
  options.program.assign(self, static_cast<size_t>(n));
  options.stop = &g_stop;
  std::signal(SIGINT, OnSignal);
  std::signal(SIGTERM, OnSignal);
  auto result = spec::RunSweep(options);
  if (!result.ok()) return Fail("sweep", std::string(result.status().message()), result.status().code() == absl::StatusCode::kInvalidArgument ? 2 : 1);
  return 0;
}

}  // namespace llmtrain::cli
