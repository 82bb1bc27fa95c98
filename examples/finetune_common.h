// Shared by examples/gemma_finetune.cpp and examples/qwen_finetune.cpp: a QLoRA run assembled
// from the public API (no CLI): load a spec, override what the command line gives, validate,
// train with Ctrl-C saving a checkpoint, and print where the adapter is.
#pragma once

#include <atomic>
#include <csignal>
#include <cstdio>
#include <string>
#include <vector>

#include "llmtrain/spec/run_spec.h"
#include "llmtrain/train/trainer.h"

namespace llmtrain::examples {

inline std::atomic<bool> g_stop{false};

/// argv: SPEC [--resume] [path.to.field=value ...]; `family` is the model family the program is for.
inline int RunFinetune(int argc, char** argv, const char* family) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s SPEC.textproto [--resume] [path.to.field=value ...]\n", argv[0]);
    return 2;
  }
  std::vector<std::string> overrides;
  bool resume = false;
  for (int i = 2; i < argc; ++i) {
    if (std::string(argv[i]) == "--resume") {
      resume = true;
    } else {
      overrides.emplace_back(argv[i]);
    }
  }
  auto run = spec::LoadRunSpec(argv[1], overrides);
  if (!run.ok()) {
    std::fprintf(stderr, "%s\n", std::string(run.status().message()).c_str());
    return 1;
  }
  if (run->model().family().empty()) run->mutable_model()->set_family(family);
  auto trainer = train::Trainer::Create(*run);  // validates every field before loading anything
  if (!trainer.ok()) {
    std::fprintf(stderr, "%s\n", std::string(trainer.status().message()).c_str());
    return 1;
  }
  std::signal(SIGINT, [](int) { g_stop.store(true); });
  std::signal(SIGTERM, [](int) { g_stop.store(true); });
  train::RunOptions options;
  options.resume = resume;
  options.stop = &g_stop;
  const absl::Status status = (*trainer)->Run(options);
  if (!status.ok()) {
    std::fprintf(stderr, "%s\n", std::string(status.message()).c_str());
    return 1;
  }
  std::printf("adapter: %s/adapter\n", run->output().dir().c_str());
  return 0;
}

}  // namespace llmtrain::examples
