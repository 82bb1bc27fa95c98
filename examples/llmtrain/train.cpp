// llmtrain train --spec FILE [--set path=value ...] [--resume] [--stop-at-step N]
// Runs the training a run spec describes. Ctrl-C (SIGINT) or SIGTERM stops after the current step
// with a checkpoint; --resume continues from the newest checkpoint in output.dir; --stop-at-step
// evaluates and checkpoints at step N and stops there (a rung of `llmtrain sweep`).
#include <csignal>
#include <cstdio>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "llmtrain/commands.h"
#include "llmtrain/core/status.h"
#include "llmtrain/spec/build.h"
#include "llmtrain/spec/run_spec.h"
#include "llmtrain/train/trainer.h"

namespace llmtrain::cli {
namespace {

constexpr char kHelp[] =
    "usage: llmtrain train --spec FILE [--set path.to.field=value ...] [--resume] [--stop-at-step N]\n"
    "  FILE: a run spec (text proto or JSON; `llmtrain spec --print-defaults` shows every field).\n"
    "  The spec is validated first, every error at once. Ctrl-C / SIGTERM stop after the current\n"
    "  step with a checkpoint; --resume continues from the newest checkpoint in output.dir.\n"
    "  --stop-at-step N: evaluate and checkpoint at step N, then stop (the schedule stays the whole\n"
    "  run's; --resume continues it): a rung of `llmtrain sweep`, the trial protocol of spec/sweep.h.\n";

std::atomic<bool> g_stop{false};
void OnSignal(int) { g_stop.store(true); }

}  // namespace

int RunTrain(const std::vector<std::string>& args) {
  std::string file;
  std::vector<std::string> overrides;
  bool resume = false;
  int64_t stop_at_step = 0;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "--help" || a == "-h") {
      std::fputs(kHelp, stdout);
      return 0;
    }
    if (a == "--resume") {
      resume = true;
      continue;
    }
    if (i + 1 >= args.size()) return Fail("train", absl::StrCat(a, " needs a value\n", kHelp), 2);
    if (a == "--spec") {
      file = args[++i];
    } else if (a == "--set") {
      overrides.push_back(args[++i]);
    } else if (a == "--stop-at-step") {
      if (!absl::SimpleAtoi(args[++i], &stop_at_step) || stop_at_step < 1) {
        return Fail("train", absl::StrCat("--stop-at-step: expected a step ≥ 1, found \"", args[i], "\""), 2);
      }
    } else {
      return Fail("train", absl::StrCat("unknown option ", a, "\n", kHelp), 2);
    }
  }
  if (file.empty()) return Fail("train", absl::StrCat("--spec is required\n", kHelp), 2);
  try {
    auto run = spec::LoadRunSpec(file, overrides);
    if (!run.ok()) return Fail("train", std::string(run.status().message()));
    auto trainer = spec::BuildTrainer(*run);
    if (!trainer.ok()) return Fail("train", std::string(trainer.status().message()));
    std::signal(SIGINT, OnSignal);
    std::signal(SIGTERM, OnSignal);
    train::RunOptions options;
    options.resume = resume;
    options.stop_at_step = stop_at_step;
    options.stop = &g_stop;
    const absl::Status status = (*trainer)->Run(options);
    if (!status.ok()) return Fail("train", std::string(status.message()));
  } catch (...) {
    return Fail("train", std::string(StatusFromCurrentException("train").message()));
  }
  return 0;
}

}  // namespace llmtrain::cli
