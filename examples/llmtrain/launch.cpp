// llmtrain launch --nproc-per-node N [--nnodes M --node-rank R --master-addr A --master-port P]
//                 [--stop-timeout S] [--no-prefix] -- COMMAND [ARGS...]
// Starts N ranks of COMMAND on this machine with torchrun's variables (dist/launch.h). Its exit
// status is 0 when every rank exited 0, else the first failed rank's; a report naming the
// failed ranks goes to stderr.
#include <cstdio>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "llmtrain/commands.h"
#include "llmtrain/dist/launch.h"

namespace llmtrain::cli {
namespace {

constexpr char kHelp[] =
    "usage: llmtrain launch --nproc-per-node N [--nnodes M --node-rank R] [--master-addr A]\n"
    "                       [--master-port P] [--stop-timeout S] [--no-prefix] -- COMMAND [ARGS]\n"
    "  Starts N ranks of COMMAND on this machine with torchrun's environment variables (RANK,\n"
    "  LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, GROUP_RANK, MASTER_ADDR, MASTER_PORT,\n"
    "  TORCHELASTIC_USE_AGENT_STORE=True). Node 0 hosts the rendezvous store at A:P (default\n"
    "  127.0.0.1:29500; --master-port 0 picks a free port on one node).\n"
    "  OMP_NUM_THREADS is cores / N unless it is set. Output lines get a \"[rank R] \" prefix\n"
    "  (--no-prefix: none). SIGINT and SIGTERM are forwarded to every rank (a second one also\n"
    "  kills them after S seconds). When a rank fails, the others get SIGTERM, then SIGKILL after\n"
    "  S seconds (default 30), and the exit status is the failed rank's.\n"
    "  example: llmtrain launch --nproc-per-node 2 -- build/bin/llmtrain train --spec run.textproto\n";

}  // namespace

int RunLaunch(const std::vector<std::string>& args) {
  dist::LaunchOptions options;
  size_t i = 0;
  auto int_value = [&](const std::string& flag, int* out) -> bool {
    if (i + 1 >= args.size() || !absl::SimpleAtoi(args[i + 1], out)) {
      Fail("launch", flag + " needs an integer", 2);
      return false;
    }
    ++i;
    return true;
  };
  for (; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "--help" || a == "-h") {
      std::fputs(kHelp, stdout);
      return 0;
    }
    if (a == "--") {
      options.command.assign(args.begin() + static_cast<long>(i) + 1, args.end());
      break;
    }
    if (a == "--nproc-per-node" || a == "--nproc_per_node") {
      if (!int_value(a, &options.nproc_per_node)) return 2;
    } else if (a == "--nnodes") {
      if (!int_value(a, &options.nnodes)) return 2;
    } else if (a == "--node-rank" || a == "--node_rank") {
      if (!int_value(a, &options.node_rank)) return 2;
    } else if (a == "--master-port" || a == "--master_port") {
      if (!int_value(a, &options.master_port)) return 2;
    } else if (a == "--master-addr" || a == "--master_addr") {
      if (i + 1 >= args.size()) return Fail("launch", a + " needs a host", 2);
      options.master_addr = args[++i];
    } else if (a == "--stop-timeout") {
      if (i + 1 >= args.size() || !absl::SimpleAtod(args[i + 1], &options.stop_timeout_s)) {
        return Fail("launch", "--stop-timeout needs seconds", 2);
      }
      ++i;
    } else if (a == "--no-prefix") {
      options.prefix_output = false;
    } else {
      return Fail("launch", "unknown option \"" + a + "\" (the command goes after --)\n" + kHelp, 2);
    }
  }
  absl::StatusOr<dist::LaunchResult> result = dist::Launch(options);
  if (!result.ok()) {
    return Fail("launch", std::string(result.status().message()),
                result.status().code() == absl::StatusCode::kInvalidArgument ? 2 : 1);
  }
  if (result->exit_code != 0) {
    for (absl::string_view line : absl::StrSplit(result->report, '\n')) {
      std::fprintf(stderr, "llmtrain launch: %.*s\n", static_cast<int>(line.size()), line.data());
    }
    std::fprintf(stderr, "llmtrain launch: exit status %d\n", result->exit_code);
  }
  return result->exit_code;
}

}  // namespace llmtrain::cli
