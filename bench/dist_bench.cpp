// dist_bench: the distributed engines on the real Gemma 3 270M (QLoRA, the README job's spec),
// at world sizes 1 and 2 over Gloo on this machine's cores: step time, the bytes each rank
// moves per step against the ZeRO-3 formula, and the memory each rank holds.
//
//   build/bin/dist_bench [--steps 8] [--engines ddp,zero3] [--worlds 1,2]
//
// It launches itself (dist::Launch) once per engine and world size; each rank trains `steps`
// steps of the spec with micro-batches of 1 and accumulation 2 per rank, without evaluation or
// checkpoints, and writes what it measured; the parent prints the table. Step times are the
// median of the steps after the first two. OMP_NUM_THREADS is the machine's cores / ranks, so
// every world size uses all cores.
//
// The formulas (per optimizer step, per rank, N ranks, A micro-batches per rank):
//   ddp:   one all-reduce of the adapter's float32 gradients: 4·P bytes in, 2·(N−1)/N·4·P on the
//          wire of a ring;
//   zero3: a reduce-scatter of those gradients and an all-gather of the updated values (4·P bytes
//          each, (N−1)/N·4·P on the wire of a ring), plus every layer's frozen unit gathered twice per micro-batch (forward, and
//          the recompute of activation checkpointing in backward): 2·A·Σunits bytes assembled, of
//          which (N−1)/N come from the other ranks.
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "llmtrain/core/atomic_file.h"
#include "llmtrain/data/builtin.h"
#include "llmtrain/dist/engine.h"
#include "llmtrain/dist/env.h"
#include "llmtrain/dist/launch.h"
#include "llmtrain/dist/sharded_engine.h"
#include "llmtrain/spec/build.h"
#include "llmtrain/spec/run_spec.h"
#include "llmtrain/train/trainer.h"
#include "nlohmann/json.hpp"

namespace {

using namespace llmtrain;
using Clock = std::chrono::steady_clock;

int64_t ResidentMib() {
  std::ifstream statm("/proc/self/statm");
  int64_t size = 0, resident = 0;
  statm >> size >> resident;
  return resident * sysconf(_SC_PAGESIZE) / (1 << 20);
}

int64_t PeakRssMib() {
  struct rusage usage {};
  getrusage(RUSAGE_SELF, &usage);
  return usage.ru_maxrss / 1024;
}

int Worker(const std::string& spec_path, const std::string& engine, const std::string& out, int steps) {
  auto run = spec::LoadRunSpec(spec_path, {"distributed.engine=" + engine, "output.dir=" + out + "/run",
                                           "training.max_steps=" + std::to_string(steps)});
  if (!run.ok()) {
    std::fprintf(stderr, "%s\n", std::string(run.status().message()).c_str());
    return 1;
  }
  auto made = spec::MakeEngine(*run);
  if (!made.ok()) {
    std::fprintf(stderr, "%s\n", std::string(made.status().message()).c_str());
    return 1;
  }
  std::shared_ptr<train::Engine> eng = *made;
  auto trainer = spec::BuildTrainer(*run, eng);
  if (!trainer.ok()) {
    std::fprintf(stderr, "%s\n", std::string(trainer.status().message()).c_str());
    return 1;
  }
  const int64_t resident_after_setup = ResidentMib();
  std::vector<double> step_seconds;
  std::vector<double> losses;
  auto last = Clock::now();
  train::RunOptions options;
  options.progress = false;
  options.on_step = [&](const train::StepMetrics& m) {
    const auto now = Clock::now();
    step_seconds.push_back(std::chrono::duration<double>(now - last).count());
    losses.push_back(m.loss);
    last = now;
  };
  last = Clock::now();
  if (absl::Status status = (*trainer)->Run(options); !status.ok()) {
    std::fprintf(stderr, "%s\n", std::string(status.message()).c_str());
    return 1;
  }
  int64_t lora_params = 0;
  for (const auto& [key, t] : (*trainer)->TrainableParameters()) lora_params += t.numel();
  nlohmann::json j = {{"rank", eng->rank()},
                      {"world", eng->world_size()},
                      {"step_seconds", step_seconds},
                      {"losses", losses},
                      {"lora_params", lora_params},
                      {"resident_mib_after_setup", resident_after_setup},
                      {"resident_mib_end", ResidentMib()},
                      {"peak_rss_mib", PeakRssMib()}};
  // The adapter's optimizer state this rank holds (a slice of it under zero3).
  const train::AdamW& optimizer = (*trainer)->optimizer();
  int64_t state_bytes = 0;
  for (const at::Tensor& t : optimizer.sharded() ? optimizer.ShardStateTensors() : optimizer.StateTensors()) {
    state_bytes += t.numel() * t.element_size();
  }
  j["optimizer_state_bytes"] = state_bytes;
  if (auto* replicated = dynamic_cast<dist::ReplicatedEngine*>(eng.get())) {
    j["gradient_bytes"] = replicated->gradient_bytes();
    j["parameter_gather_bytes"] = replicated->parameter_gather_bytes();
  }
  if (auto* sharded = dynamic_cast<dist::ShardedEngine*>(eng.get())) {
    j["unit_bytes"] = sharded->unit_bytes();
    j["shard_bytes"] = sharded->shard_bytes();
    j["gathered_bytes"] = sharded->gathered_bytes();
  }
  std::ofstream(out + "/rank" + std::to_string(eng->rank()) + ".json") << j.dump() << "\n";
  return 0;
}

double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  int steps = 8;
  std::vector<std::string> engines = {"ddp", "zero3"};
  std::vector<int> worlds = {1, 2};
  std::string worker_engine, worker_out, worker_spec;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const auto value = [&]() -> std::string { return i + 1 < argc ? argv[++i] : ""; };
    if (a == "--steps") {
      steps = std::atoi(value().c_str());
    } else if (a == "--engines") {
      engines = absl::StrSplit(value(), ',');
    } else if (a == "--worlds") {
      worlds.clear();
      for (absl::string_view w : absl::StrSplit(value(), ',')) worlds.push_back(std::atoi(std::string(w).c_str()));
    } else if (a == "--worker-engine") {
      worker_engine = value();
    } else if (a == "--worker-out") {
      worker_out = value();
    } else if (a == "--worker-spec") {
      worker_spec = value();
    } else {
      std::fprintf(stderr, "usage: dist_bench [--steps N] [--engines ddp,zero3] [--worlds 1,2]\n");
      return 2;
    }
  }
  if (!worker_engine.empty()) return Worker(worker_spec, worker_engine, worker_out, steps);
  if (steps < 3) {
    std::fprintf(stderr, "dist_bench: --steps must be at least 3 (the first two are not timed)\n");
    return 2;
  }

  // The README job's spec and data, without evaluation or checkpoints.
  const std::string root = LLMTRAIN_SOURCE_DIR;
  const std::string dir = root + "/build/dist_bench";
  if (std::system(("rm -rf '" + dir + "' && mkdir -p '" + dir + "'").c_str()) != 0) return 1;
  const std::string data = dir + "/train.jsonl";
  auto records = data::BuildDebianPackageDataset("/var/lib/dpkg/status", data);
  if (!records.ok()) {
    std::fprintf(stderr, "dist_bench: %s\n", std::string(records.status().message()).c_str());
    return 1;
  }
  const std::string spec = dir + "/spec.textproto";
  std::ofstream(spec) << "model { path: \"" << root << "/.venv/models/gemma-3-270m-q4_k_m.gguf\" dtype: f32"
                      << " load_in_4bit: true quant_type: nf4 double_quant: true }\n"
                      << "lora { r: 16 alpha: 32 dropout: 0 target_modules: \"all-linear\" }\n"
                      << "data { train_files: \"" << data << "\" format: dolly template: model max_length: 64"
                      << " mask_prompt: true }\n"
                      << "training { micro_batch_size: 1 gradient_accumulation_steps: 2 learning_rate: 0.0005"
                      << " seed: 42 log_every_steps: 1 }\n"
                      << "output { report_to: jsonl }\n"
                      << "distributed { timeout_s: 600 }\n";
  std::printf("dist_bench: the real Gemma 3 270M, QLoRA r 16 all-linear, micro-batch 1 × accumulation 2 per rank, "
              "max_length 64, %d steps (median of steps 3..%d), Gloo on %ld cores\n\n", steps, steps,
              sysconf(_SC_NPROCESSORS_ONLN));
  std::printf("%-6s %5s %8s %10s %10s %11s %15s %14s %12s %11s %11s %8s %8s\n", "engine", "world", "step s",
              "samples/s", "vs world 1", "adapt MiB/st", "gathered MiB/st", "formula MiB/st", "recv MiB/st",
              "held MiB/rk", "optim MiB/rk", "RSS MiB", "peak MiB");
  for (const std::string& engine : engines) {
    double base = 0;
    for (int world : worlds) {
      const std::string out = absl::StrCat(dir, "/", engine, "_", world);
      if (std::system(("mkdir -p '" + out + "'").c_str()) != 0) return 1;
      dist::LaunchOptions launch;
      launch.nproc_per_node = world;
      launch.master_port = 0;
      launch.command = {argv[0], "--steps", std::to_string(steps), "--worker-engine", engine, "--worker-out", out,
                        "--worker-spec", spec};
      unsetenv("OMP_NUM_THREADS");  // the launcher gives each rank cores / world
      auto result = dist::Launch(launch);
      if (!result.ok() || result->exit_code != 0) {
        std::fprintf(stderr, "dist_bench: %s at world %d failed: %s\n", engine.c_str(), world,
                     result.ok() ? result->report.c_str() : std::string(result.status().message()).c_str());
        return 1;
      }
      std::ifstream in(out + "/rank0.json");
      nlohmann::json j;
      in >> j;
      std::vector<double> times = j["step_seconds"].get<std::vector<double>>();
      times.erase(times.begin(), times.begin() + 2);
      const double step = Median(times);
      // Every rank trains 2 micro-batches of 1 record a step: the global batch grows with the world.
      const double samples_per_second = 2.0 * world / step;
      if (world == worlds.front()) base = samples_per_second;
      const double mib = 1 << 20;
      const double grad =
          (j.value("gradient_bytes", int64_t{0}) + j.value("parameter_gather_bytes", int64_t{0})) / mib / steps;
      const double gathered = j.value("gathered_bytes", int64_t{0}) / mib / steps;
      const double units = j.value("unit_bytes", int64_t{0}) / mib;
      const double formula = engine == "zero3" ? 2.0 * 2 * units : 0.0;
      const double held = j.value("shard_bytes", int64_t{0}) / mib;
      const double state = j.value("optimizer_state_bytes", int64_t{0}) / mib;
      std::printf("%-6s %5d %8.3f %10.3f %10.2f %11.2f %15.1f %14.1f %12.1f %11.1f %11.1f %8lld %8lld\n",
                  engine.c_str(), world, step, samples_per_second, samples_per_second / base, grad, gathered, formula,
                  gathered * (world - 1) / world, held, state,
                  static_cast<long long>(j["resident_mib_end"].get<int64_t>()),
                  static_cast<long long>(j["peak_rss_mib"].get<int64_t>()));
      std::fflush(stdout);
    }
  }
  std::printf("\nsamples/s: records trained per second by all ranks together; vs world 1: that throughput against the "
              "engine's world-1 run, each using all cores. adapt MiB/st: the adapter's bytes per step in collectives: "
              "ddp all-reduces its float32 gradients (4 bytes per LoRA parameter), zero3 reduce-scatters them and "
              "all-gathers the updated values (4 + 4 bytes; each rank steps 1/N of the optimizer state). gathered: layer units assembled per step on rank 0; formula: "
              "2 passes (forward, recompute) × 2 micro-batches × the units' bytes; recv: the part of it that came "
              "from the other ranks, (N−1)/N. held: the frozen layer bytes rank 0 keeps between uses (zero3). optim: the "
              "adapter's AdamW state rank 0 holds (moments, and float32 values of its slice under zero3). RSS: "
              "resident at the end; peak: ru_maxrss.\n");
  return 0;
}
