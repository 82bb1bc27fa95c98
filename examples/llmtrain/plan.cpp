// llmtrain plan --spec FILE [--set path=value ...] [--world-size N] [--gpu-memory 24GiB]
//               [--model-config config.json] [--json]
// The memory one process of the run will need (spec/memory_plan.h), from the spec and the
// model's config alone, and whether it fits.
#include <cstdio>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "llmtrain/commands.h"
#include "llmtrain/core/atomic_file.h"
#include "llmtrain/spec/memory_plan.h"
#include "llmtrain/spec/run_spec.h"
#include "nlohmann/json.hpp"

namespace llmtrain::cli {
namespace {

constexpr char kHelp[] =
    "usage: llmtrain plan --spec FILE [--set path.to.field=value ...] [--world-size N]\n"
    "                     [--gpu-memory SIZE] [--model-config config.json] [--json]\n"
    "  The memory per process of the run FILE describes, reading only the model's config: the\n"
    "  frozen base (or each process's shards), quant state, embedding, adapter with gradients and\n"
    "  AdamW state, gathered layers, activations (with and without activation checkpointing), the\n"
    "  cross-entropy chunk, loading, and the peak; then whether it fits.\n"
    "  --world-size N: processes (default: distributed.world_size, else 1 for engine single).\n"
    "  --gpu-memory SIZE: plan the run on GPUs of SIZE each (24GiB, 80GB), one per process,\n"
    "    whatever model.device says. Without it: on model.device, compared with\n"
    "    distributed.memory_limit, else with this machine's available memory / N processes.\n"
    "  --model-config FILE: the model's config.json, for a model that is not on this machine.\n"
    "  Exit status 0 when it fits (or nothing to compare with), 1 when it does not, 2 on bad use.\n";

}  // namespace

int RunPlan(const std::vector<std::string>& args) {
  std::string file, gpu_memory, model_config;
  std::vector<std::string> overrides;
  int world_size = 0;
  bool json = false;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "--help" || a == "-h") {
      std::fputs(kHelp, stdout);
      return 0;
    }
    if (a == "--json") {
      json = true;
      continue;
    }
    if (i + 1 >= args.size()) return Fail("plan", absl::StrCat(a, " needs a value\n", kHelp), 2);
    const std::string& value = args[++i];
    if (a == "--spec") {
      file = value;
    } else if (a == "--set") {
      overrides.push_back(value);
    } else if (a == "--gpu-memory") {
      gpu_memory = value;
    } else if (a == "--model-config") {
      model_config = value;
    } else if (a == "--world-size") {
      if (!absl::SimpleAtoi(value, &world_size) || world_size < 1 || world_size > 65536) {
        return Fail("plan", absl::StrCat("--world-size: expected a count ≥ 1, got \"", value, "\""), 2);
      }
    } else {
      return Fail("plan", absl::StrCat("unknown option ", a, "\n", kHelp), 2);
    }
  }
  if (file.empty()) return Fail("plan", absl::StrCat("--spec is required\n", kHelp), 2);
  int64_t gpu_bytes = 0;
  if (!gpu_memory.empty()) {
    auto bytes = spec::ParseByteSize(gpu_memory);
    if (!bytes.ok() || *bytes <= 0) {
      return Fail("plan", absl::StrCat("--gpu-memory: \"", gpu_memory, "\": expected a size such as 24GiB"), 2);
    }
    gpu_bytes = *bytes;
  }
  auto run = spec::LoadRunSpec(file, overrides);
  if (!run.ok()) return Fail("plan", std::string(run.status().message()));
  if (world_size > 0) run->mutable_distributed()->set_world_size(world_size);
  // Every field must be valid; the files need not be here (a plan comes before the download).
  std::string errors;
  for (const spec::SpecError& e : spec::FindSpecErrors(*run)) {
    const bool file_field = e.field == "model.path" || e.field == "model.tokenizer" ||
                            e.field.rfind("data.train_files", 0) == 0 || e.field.rfind("data.eval_files", 0) == 0;
    if (file_field && (!model_config.empty() || e.field != "model.path")) continue;
    absl::StrAppend(&errors, e.field, ": ", e.message, "\n");
  }
  if (!errors.empty()) return Fail("plan", absl::StrCat(file, ": invalid spec\n", errors));

  spec::MemoryPlanOptions options;
  options.world_size = world_size;
  if (!gpu_memory.empty() && run->model().device() == "cpu") options.device = "cuda";
  if (!model_config.empty()) {
    auto config = io::LoadHfConfig(model_config);
    if (!config.ok()) return Fail("plan", std::string(config.status().message()));
    options.config = *config;
  }
  auto plan = spec::PlanMemory(*run, options);
  if (!plan.ok()) return Fail("plan", std::string(plan.status().message()));

  // What to compare with: --gpu-memory, distributed.memory_limit, else this machine.
  int64_t limit = 0;
  std::string source;
  const std::string& setting = run->distributed().memory_limit();
  if (gpu_bytes > 0) {
    limit = gpu_bytes;
    source = "--gpu-memory";
  } else if (setting != "auto" && setting != "off") {
    limit = *spec::ParseByteSize(setting);  // validated above
    source = "distributed.memory_limit";
  } else if (plan->device == "cpu") {
    if (const int64_t available = spec::HostMemoryAvailable(); available > 0) {
      limit = available / plan->local_world_size;
      source = absl::StrCat("this machine's available memory", plan->local_world_size > 1
                                                                    ? absl::StrCat(" / ", plan->local_world_size, " processes")
                                                                    : "");
    }
  }
  const absl::Status fits = limit > 0 ? spec::CheckPlanFits(*plan, limit, source) : absl::OkStatus();
  if (json) {
    nlohmann::json out;
    out["model"] = plan->model;
    out["run"] = plan->run;
    out["device"] = plan->device;
    out["world_size"] = plan->world_size;
    out["resident_bytes"] = plan->resident_bytes();
    out["peak_bytes"] = plan->peak_bytes();
    out["peak_phase"] = plan->peak_phase().name;
    for (const spec::MemoryItem& item : plan->resident) out["resident"].push_back({{"name", item.name}, {"bytes", item.bytes}});
    for (const spec::MemoryPhase& phase : plan->phases) {
      nlohmann::json p = {{"name", phase.name}, {"bytes", plan->PhaseBytes(phase)}};
      for (const spec::MemoryItem& item : phase.items) p["items"].push_back({{"name", item.name}, {"bytes", item.bytes}});
      out["phases"].push_back(p);
    }
    out["limit_bytes"] = limit;
    out["limit_source"] = source;
    out["fits"] = fits.ok();
    std::fputs((out.dump(2) + "\n").c_str(), stdout);
    return fits.ok() ? 0 : 1;
  }
  std::fputs(plan->ToString().c_str(), stdout);
  if (limit == 0) {
    std::fputs("fits: nothing to compare with (give --gpu-memory)\n", stdout);
    return 0;
  }
  std::fputs(absl::StrCat(fits.ok() ? "fits" : "does not fit", ": ", spec::FormatBytes(limit), " allowed (", source,
                          ")\n").c_str(),
             stdout);
  return fits.ok() ? 0 : 1;
}

}  // namespace llmtrain::cli
