// `llmtrain launch`: starts the ranks of one machine with torchrun's environment variables, as
// `torchrun --no-python` would, so the same binaries run under either (and under srun).
//
// On node 0 the launcher hosts the rendezvous store at master_addr:master_port itself and every
// rank is a client of it (torchrun's agent store, TORCHELASTIC_USE_AGENT_STORE=True). Each rank
// runs in its own process group with OMP_NUM_THREADS = cores / ranks unless that is set, and
// its output lines are prefixed with "[rank N] ". SIGINT and SIGTERM received by the launcher
// are forwarded to every rank, SIGHUP as SIGTERM unless it is ignored (nohup) (the trainer then
// checkpoints and stops, however long its step takes); a second signal also ends them with
// SIGKILL after stop_timeout_s. A launcher killed outright takes its ranks along: each gets
// SIGTERM (PR_SET_PDEATHSIG, tied to the thread that calls Launch), and the ranks run with
// SIGPIPE ignored so that writing to the dead launcher's pipes cannot kill them first. When a
// rank fails (a non-zero exit or a signal) the others get SIGTERM, then SIGKILL after
// stop_timeout_s, and the result names the rank and how it ended.
//
//   dist::LaunchOptions options;
//   options.nproc_per_node = 2;
//   options.command = {"build/bin/llmtrain", "train", "--spec", "run.textproto"};
//   LLMTRAIN_ASSIGN_OR_RETURN(dist::LaunchResult result, dist::Launch(options));
//   return result.exit_code;
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace llmtrain::dist {

struct LaunchOptions {
  int nproc_per_node = 1;                 ///< ranks started on this machine
  int nnodes = 1;                         ///< machines; each runs one launcher
  int node_rank = 0;                      ///< this machine's index; node 0 hosts the store
  std::string master_addr = "127.0.0.1";  ///< node 0's address, as the other nodes reach it
  int master_port = 29500;                ///< the store's port; 0 = any free port (one node only)
  double stop_timeout_s = 30.0;           ///< after a failure or a second signal, seconds before SIGKILL
  bool prefix_output = true;              ///< "[rank N] " before every output line
  std::vector<std::string> command;       ///< the program and its arguments, run once per rank
};

/// InvalidArgument naming every bad field.
absl::Status Validate(const LaunchOptions& options);

struct RankExit {
  int rank = 0;
  int pid = 0;
  int exit_code = 0;  ///< when it exited
  int signal = 0;     ///< when a signal ended it (then exit_code is 128 + signal)
  bool stopped_by_launcher = false;  ///< SIGTERM/SIGKILL sent after another rank failed
};

struct LaunchResult {
  int exit_code = 0;            ///< 0 when every rank exited 0; else the first failure's code
  std::vector<RankExit> ranks;  ///< by local rank
  std::string report;           ///< one line per failed rank ("rank 1 (pid 812) was killed by SIGKILL")
  int master_port = 0;          ///< the store's port (the chosen one when master_port was 0)
};

/// Runs the ranks to the end. Errors only for what stops it from starting them (the store's port
/// in use, a command that cannot be started; ranks already started are then killed); how the
/// ranks ended is in the result. Installs handlers for SIGINT, SIGTERM and SIGHUP and ignores
/// SIGPIPE while it runs, and restores the previous dispositions after.
absl::StatusOr<LaunchResult> Launch(const LaunchOptions& options);

}  // namespace llmtrain::dist
