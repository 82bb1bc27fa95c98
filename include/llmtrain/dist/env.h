// Where this process sits in a distributed run, read from the launcher's environment variables:
// torchrun's (and `llmtrain launch`'s, which sets the same ones) first, then SLURM's (srun), and
// with neither a single process of world size 1.
//
//   LLMTRAIN_ASSIGN_OR_RETURN(dist::DistEnv env, dist::DistEnvFromEnvironment());
//   if (env.world_size > 1) { ... dist::ProcessGroup::Create(env, options) ... }
//
// Every inconsistency is reported in one error ("RANK: expected an integer in [0, WORLD_SIZE=2),
// found 2; MASTER_ADDR: missing (needed when WORLD_SIZE > 1)").
#pragma once

#include <functional>
#include <optional>
#include <string>
#include "absl/strings/string_view.h"

#include "absl/status/statusor.h"

namespace llmtrain::dist {

/// Which launcher set the variables.
enum class Launcher {
  kSingle,    ///< none: one process
  kTorchrun,  ///< RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT (torchrun, `llmtrain launch`)
  kSlurm,     ///< SLURM_PROCID / SLURM_NTASKS (srun)
};

struct DistEnv {
  Launcher launcher = Launcher::kSingle;
  int rank = 0;              ///< global rank, in [0, world_size)
  int world_size = 1;        ///< processes in the run
  int local_rank = 0;        ///< rank on this machine (which GPU it uses)
  int local_world_size = 1;  ///< processes on this machine
  int node_rank = 0;         ///< torchrun GROUP_RANK / SLURM_NODEID
  int num_nodes = 1;         ///< machines (SLURM_NNODES; torchrun: world / local world)
  std::string master_addr = "127.0.0.1";  ///< host of the rendezvous store
  int master_port = 29500;                ///< its port
  /// torchrun's TORCHELASTIC_USE_AGENT_STORE: the launcher hosts the store and every rank is a
  /// client. Otherwise rank 0 hosts it.
  bool agent_store = false;
  std::string job_id;  ///< TORCHELASTIC_RUN_ID or SLURM_JOB_ID, for messages
  /// TORCHELASTIC_RESTART_COUNT: how often torchrun restarted the ranks (0 elsewhere). The
  /// process group's keys in the store carry it, so a restarted group never reads the keys its
  /// previous attempt left in the agent's store.
  int restart_count = 0;
};

/// Looks a variable up; nullopt when it is unset.
using EnvLookup = std::function<std::optional<std::string>(absl::string_view name)>;

/// From the given variables (tests pass a map). InvalidArgument naming every bad variable.
absl::StatusOr<DistEnv> DistEnvFrom(const EnvLookup& lookup);
/// From this process's environment (getenv).
absl::StatusOr<DistEnv> DistEnvFromEnvironment();

/// The first host of a SLURM hostlist ("gpu[07-09,12],cpu3" → "gpu07"); InvalidArgument when the
/// list is malformed.
absl::StatusOr<std::string> FirstSlurmHost(absl::string_view nodelist);

/// "rank 1 of 3 (local 1 of 3, node 0 of 1), store 127.0.0.1:29500 hosted by the launcher".
std::string Describe(const DistEnv& env);

}  // namespace llmtrain::dist
