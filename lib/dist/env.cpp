// DistEnv from torchrun's or SLURM's variables (dist/env.h).
#include "llmtrain/dist/env.h"

#include <algorithm>
#include <cstdlib>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"

namespace llmtrain::dist {
namespace {

// Collects every problem, so one run of a badly set-up job shows them all.
class Reader {
 public:
  explicit Reader(const EnvLookup& lookup) : lookup_(lookup) {}

  std::optional<std::string> Get(absl::string_view name) const {
    std::optional<std::string> value = lookup_(name);
    if (value && value->empty()) return std::nullopt;  // set but empty counts as unset
    return value;
  }

  // An integer in [lo, hi]; `fallback` when unset and not required.
  int Int(absl::string_view name, int lo, int hi, std::optional<int> fallback,
          absl::string_view range_text = "") {
    std::optional<std::string> text = Get(name);
    if (!text) {
      if (fallback) return *fallback;
      errors_.push_back(absl::StrCat(name, ": missing"));
      return lo;
    }
    int value = 0;
    if (!absl::SimpleAtoi(*text, &value) || value < lo || value > hi) {
      errors_.push_back(absl::StrCat(
          name, ": expected an integer in ",
          range_text.empty() ? absl::StrCat("[", lo, ", ", hi, "]") : std::string(range_text),
          ", found \"", *text, "\""));
      return lo;
    }
    return value;
  }

  void Error(std::string message) { errors_.push_back(std::move(message)); }

  absl::Status Finish(absl::string_view launcher) const {
    if (errors_.empty()) return absl::OkStatus();
    return absl::InvalidArgumentError(absl::StrCat("distributed environment (", launcher,
                                                   "): ", absl::StrJoin(errors_, "; ")));
  }

 private:
  const EnvLookup& lookup_;
  std::vector<std::string> errors_;
};

constexpr int kMaxWorld = 1 << 20;

// Ranks are checked against the world size only once both parsed.
void CheckRank(Reader& reader, absl::string_view name, int value, absl::string_view world_name,
               int world) {
  if (value >= world) {
    reader.Error(absl::StrCat(name, ": expected an integer in [0, ", world_name, "=", world,
                              "), found ", value));
  }
}

absl::StatusOr<DistEnv> FromTorchrun(Reader& reader) {
  DistEnv env;
  env.launcher = Launcher::kTorchrun;
  env.world_size = reader.Int("WORLD_SIZE", 1, kMaxWorld, std::nullopt);
  env.rank = reader.Int("RANK", 0, kMaxWorld, std::nullopt);
  env.local_world_size = reader.Int("LOCAL_WORLD_SIZE", 1, kMaxWorld, env.world_size);
  env.local_rank = reader.Int("LOCAL_RANK", 0, kMaxWorld, env.rank);
  env.node_rank = reader.Int("GROUP_RANK", 0, kMaxWorld, 0);
  CheckRank(reader, "RANK", env.rank, "WORLD_SIZE", env.world_size);
  CheckRank(reader, "LOCAL_RANK", env.local_rank, "LOCAL_WORLD_SIZE", env.local_world_size);
  if (env.local_world_size > env.world_size) {
    reader.Error(absl::StrCat("LOCAL_WORLD_SIZE: ", env.local_world_size,
                              " is more than WORLD_SIZE=", env.world_size));
  } else if (env.world_size % env.local_world_size != 0) {
    reader.Error(absl::StrCat("WORLD_SIZE: ", env.world_size,
                              " is not a multiple of LOCAL_WORLD_SIZE=", env.local_world_size));
  } else {
    env.num_nodes = env.world_size / env.local_world_size;
    CheckRank(reader, "GROUP_RANK", env.node_rank, "nodes", env.num_nodes);
  }
  const bool needs_store = env.world_size > 1;
  if (std::optional<std::string> addr = reader.Get("MASTER_ADDR")) {
    env.master_addr = *addr;
  } else if (needs_store) {
    reader.Error("MASTER_ADDR: missing (needed when WORLD_SIZE > 1)");
  }
  if (needs_store || reader.Get("MASTER_PORT")) {
    env.master_port = reader.Int("MASTER_PORT", 1, 65535, std::nullopt);
  }
  if (std::optional<std::string> agent = reader.Get("TORCHELASTIC_USE_AGENT_STORE")) {
    if (*agent == "True" || *agent == "true" || *agent == "1") {
      env.agent_store = true;
    } else if (*agent != "False" && *agent != "false" && *agent != "0") {
      reader.Error(absl::StrCat("TORCHELASTIC_USE_AGENT_STORE: expected True or False, found \"",
                                *agent, "\""));
    }
  }
  env.job_id = reader.Get("TORCHELASTIC_RUN_ID").value_or("");
  env.restart_count = reader.Int("TORCHELASTIC_RESTART_COUNT", 0, 1 << 20, 0);
  if (absl::Status status = reader.Finish("torchrun variables"); !status.ok()) return status;
  return env;
}

// SLURM_NTASKS_PER_NODE may read "4" or "4(x2)" or "4,2(x3)"; the first count is this layout's.
std::optional<int> LeadingInt(const std::optional<std::string>& text) {
  if (!text) return std::nullopt;
  size_t end = 0;
  while (end < text->size() && (*text)[end] >= '0' && (*text)[end] <= '9') ++end;
  int value = 0;
  if (end == 0 || !absl::SimpleAtoi(absl::string_view(*text).substr(0, end), &value)) {
    return std::nullopt;
  }
  return value;
}

absl::StatusOr<DistEnv> FromSlurm(Reader& reader) {
  DistEnv env;
  env.launcher = Launcher::kSlurm;
  env.world_size = reader.Int("SLURM_NTASKS", 1, kMaxWorld, std::nullopt);
  env.rank = reader.Int("SLURM_PROCID", 0, kMaxWorld, std::nullopt);
  env.local_rank = reader.Int("SLURM_LOCALID", 0, kMaxWorld, 0);
  env.node_rank = reader.Int("SLURM_NODEID", 0, kMaxWorld, 0);
  env.num_nodes = reader.Int("SLURM_NNODES", 1, kMaxWorld, 1);
  std::optional<std::string> per_node = reader.Get("SLURM_NTASKS_PER_NODE");
  std::optional<int> local_world = LeadingInt(per_node);
  if (per_node && !local_world) {
    reader.Error(absl::StrCat("SLURM_NTASKS_PER_NODE: expected a count, found \"", *per_node, "\""));
  }
  env.local_world_size = local_world.value_or(env.world_size / std::max(env.num_nodes, 1));
  if (env.local_world_size < 1) env.local_world_size = 1;
  CheckRank(reader, "SLURM_PROCID", env.rank, "SLURM_NTASKS", env.world_size);
  CheckRank(reader, "SLURM_LOCALID", env.local_rank, "tasks per node", env.local_world_size);
  CheckRank(reader, "SLURM_NODEID", env.node_rank, "SLURM_NNODES", env.num_nodes);
  env.job_id = reader.Get("SLURM_JOB_ID").value_or("");
  if (std::optional<std::string> addr = reader.Get("MASTER_ADDR")) {
    env.master_addr = *addr;
  } else if (std::optional<std::string> nodes = reader.Get("SLURM_JOB_NODELIST")) {
    absl::StatusOr<std::string> first = FirstSlurmHost(*nodes);
    if (first.ok()) {
      env.master_addr = *first;
    } else {
      reader.Error(absl::StrCat("SLURM_JOB_NODELIST: ", first.status().message()));
    }
  } else if (env.world_size > 1) {
    reader.Error("MASTER_ADDR and SLURM_JOB_NODELIST: both missing (one names the store's host)");
  }
  if (reader.Get("MASTER_PORT")) {
    env.master_port = reader.Int("MASTER_PORT", 1, 65535, std::nullopt);
  } else {
    // Lightning's rule, so a job's ranks agree on a port without being told: 15000 + the
    // job id's last four digits.
    absl::string_view id = env.job_id;
    if (id.size() > 4) id = id.substr(id.size() - 4);
    int tail = 0;
    env.master_port = absl::SimpleAtoi(id, &tail) ? 15000 + tail : 29500;
  }
  if (absl::Status status = reader.Finish("SLURM variables"); !status.ok()) return status;
  return env;
}

}  // namespace

absl::StatusOr<std::string> FirstSlurmHost(absl::string_view nodelist) {
  // Hosts are separated by commas outside brackets; "prefix[ranges]suffix" expands to the first
  // number of the first range, keeping its zero padding.
  absl::string_view first = nodelist;
  int depth = 0;
  for (size_t i = 0; i < nodelist.size(); ++i) {
    if (nodelist[i] == '[') ++depth;
    if (nodelist[i] == ']') --depth;
    if (depth < 0 || depth > 1) return absl::InvalidArgumentError(absl::StrCat(
        "unbalanced brackets in \"", nodelist, "\""));
    if (nodelist[i] == ',' && depth == 0) {
      first = nodelist.substr(0, i);
      break;
    }
  }
  if (depth != 0 && first.size() == nodelist.size()) {
    return absl::InvalidArgumentError(absl::StrCat("unbalanced brackets in \"", nodelist, "\""));
  }
  const size_t open = first.find('[');
  if (open == absl::string_view::npos) {
    if (first.empty()) return absl::InvalidArgumentError("empty host list");
    return std::string(first);
  }
  const size_t close = first.find(']', open);
  if (close == absl::string_view::npos || open == 0) {
    return absl::InvalidArgumentError(absl::StrCat("malformed host \"", first, "\""));
  }
  absl::string_view ranges = first.substr(open + 1, close - open - 1);
  size_t end = 0;
  while (end < ranges.size() && ranges[end] >= '0' && ranges[end] <= '9') ++end;
  if (end == 0) {
    return absl::InvalidArgumentError(absl::StrCat("malformed range in \"", first, "\""));
  }
  return absl::StrCat(first.substr(0, open), ranges.substr(0, end), first.substr(close + 1));
}

absl::StatusOr<DistEnv> DistEnvFrom(const EnvLookup& lookup) {
  Reader reader(lookup);
  if (reader.Get("RANK") || reader.Get("WORLD_SIZE")) return FromTorchrun(reader);
  if (reader.Get("SLURM_PROCID") || reader.Get("SLURM_NTASKS")) return FromSlurm(reader);
  return DistEnv{};
}

absl::StatusOr<DistEnv> DistEnvFromEnvironment() {
  return DistEnvFrom([](absl::string_view name) -> std::optional<std::string> {
    const char* value = std::getenv(std::string(name).c_str());
    if (value == nullptr) return std::nullopt;
    return std::string(value);
  });
}

std::string Describe(const DistEnv& env) {
  if (env.world_size == 1 && env.launcher == Launcher::kSingle) return "one process";
  return absl::StrCat("rank ", env.rank, " of ", env.world_size, " (local ", env.local_rank,
                      " of ", env.local_world_size, ", node ", env.node_rank, " of ",
                      env.num_nodes, "), store ", env.master_addr, ":", env.master_port,
                      env.agent_store ? " hosted by the launcher" : " hosted by rank 0",
                      env.launcher == Launcher::kSlurm ? " (SLURM)" : "");
}

}  // namespace llmtrain::dist
