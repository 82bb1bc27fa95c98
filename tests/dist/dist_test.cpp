// dist/: the launcher environment, shard layouts, and the process group and launcher run for
// real: dist_worker ranks over Gloo at world 2, 3 and 4, with the TCP store (hosted by our
// launcher, or by torchrun's agent) and the file store.
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/wait.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <thread>
#include <csignal>
#include <string>

#include <ATen/ATen.h>

#include "llmtrain/dist/env.h"
#include "llmtrain/dist/launch.h"
#include "llmtrain/dist/process_group.h"
#include "llmtrain/dist/shard.h"
#include "llmtrain/io/tensors.h"
#include "llmtrain/spec/build.h"
#include "llmtrain/spec/run_spec.h"
#include "llmtrain/train/trainer.h"
#include "testing/reference.h"
#include "testing/safetensors_util.h"
#include "nlohmann/json.hpp"
#include "testing/json_util.h"

// After ATen: c10/util/Logging.h defines a CHECK of its own.
#include <catch2/catch.hpp>

namespace dist = llmtrain::dist;
namespace io = llmtrain::io;
namespace spec = llmtrain::spec;
namespace train = llmtrain::train;
namespace testing = llmtrain::testing;

namespace {

absl::StatusOr<dist::DistEnv> EnvOf(const std::map<std::string, std::string>& vars) {
  return dist::DistEnvFrom([&](absl::string_view name) -> std::optional<std::string> {
    auto it = vars.find(std::string(name));
    if (it == vars.end()) return std::nullopt;
    return it->second;
  });
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

// Runs `scenario` on `world` dist_worker ranks through dist::Launch; the ranks' reports are
// <dir>/rank<R>.txt.
dist::LaunchResult LaunchWorkers(const std::string& scenario, int world, const std::string& dir,
                                 const std::string& init = "env://", double timeout_s = 60,
                                 double stop_timeout_s = 10) {
  setenv("LLMTRAIN_TEST_OUT", dir.c_str(), 1);
  setenv("LLMTRAIN_TEST_INIT", init.c_str(), 1);
  setenv("LLMTRAIN_TEST_TIMEOUT_S", std::to_string(timeout_s).c_str(), 1);
  setenv("OMP_NUM_THREADS", "1", 1);
  dist::LaunchOptions options;
  options.nproc_per_node = world;
  options.master_port = 0;  // a free port
  options.stop_timeout_s = stop_timeout_s;
  options.command = {LLMTRAIN_DIST_WORKER, scenario};
  absl::StatusOr<dist::LaunchResult> result = dist::Launch(options);
  REQUIRE(result.ok());
  return *result;
}

}  // namespace

TEST_CASE("DistEnv: torchrun variables") {
  absl::StatusOr<dist::DistEnv> env =
      EnvOf({{"RANK", "3"}, {"LOCAL_RANK", "1"}, {"WORLD_SIZE", "4"}, {"LOCAL_WORLD_SIZE", "2"},
             {"GROUP_RANK", "1"}, {"MASTER_ADDR", "node0"}, {"MASTER_PORT", "29501"},
             {"TORCHELASTIC_USE_AGENT_STORE", "True"}, {"TORCHELASTIC_RUN_ID", "job7"},
             {"TORCHELASTIC_RESTART_COUNT", "2"}});
  REQUIRE(env.ok());
  CHECK(env->launcher == dist::Launcher::kTorchrun);
  CHECK(env->restart_count == 2);
  CHECK(env->rank == 3);
  CHECK(env->local_rank == 1);
  CHECK(env->world_size == 4);
  CHECK(env->local_world_size == 2);
  CHECK(env->node_rank == 1);
  CHECK(env->num_nodes == 2);
  CHECK(env->master_addr == "node0");
  CHECK(env->master_port == 29501);
  CHECK(env->agent_store);
  CHECK(env->job_id == "job7");
  CHECK(dist::Describe(*env) ==
        "rank 3 of 4 (local 1 of 2, node 1 of 2), store node0:29501 hosted by the launcher");
}

TEST_CASE("DistEnv: no launcher is one process") {
  absl::StatusOr<dist::DistEnv> env = EnvOf({{"HOME", "/root"}});
  REQUIRE(env.ok());
  CHECK(env->launcher == dist::Launcher::kSingle);
  CHECK(env->world_size == 1);
  CHECK(env->rank == 0);
  CHECK(dist::Describe(*env) == "one process");
}

TEST_CASE("DistEnv: every inconsistency in one error") {
  absl::StatusOr<dist::DistEnv> env = EnvOf({{"RANK", "2"}, {"WORLD_SIZE", "2"}, {"MASTER_PORT", "99999"}});
  REQUIRE_FALSE(env.ok());
  const std::string message(env.status().message());
  CHECK(env.status().code() == absl::StatusCode::kInvalidArgument);
  CHECK(message.find("RANK: expected an integer in [0, WORLD_SIZE=2), found 2") != std::string::npos);
  CHECK(message.find("MASTER_ADDR: missing (needed when WORLD_SIZE > 1)") != std::string::npos);
  CHECK(message.find("MASTER_PORT: expected an integer in [1, 65535], found \"99999\"") != std::string::npos);

  env = EnvOf({{"RANK", "0"}, {"WORLD_SIZE", "0"}, {"MASTER_ADDR", "h"}, {"MASTER_PORT", "1"}});
  REQUIRE_FALSE(env.ok());
  CHECK(std::string(env.status().message()).find("WORLD_SIZE: expected an integer in [1, ") != std::string::npos);

  env = EnvOf({{"RANK", "x"}, {"WORLD_SIZE", "3"}, {"LOCAL_WORLD_SIZE", "2"}, {"MASTER_ADDR", "h"},
               {"MASTER_PORT", "5"}, {"TORCHELASTIC_USE_AGENT_STORE", "maybe"}, {"TORCHELASTIC_RESTART_COUNT", "-1"}});
  REQUIRE_FALSE(env.ok());
  CHECK(std::string(env.status().message()).find("TORCHELASTIC_RESTART_COUNT: expected an integer in [0, ") !=
        std::string::npos);
  CHECK(std::string(env.status().message()).find("RANK: expected an integer") != std::string::npos);
  CHECK(std::string(env.status().message()).find("WORLD_SIZE: 3 is not a multiple of LOCAL_WORLD_SIZE=2") != std::string::npos);
  CHECK(std::string(env.status().message()).find("TORCHELASTIC_USE_AGENT_STORE") != std::string::npos);
}

TEST_CASE("DistEnv: SLURM variables") {
  absl::StatusOr<dist::DistEnv> env =
      EnvOf({{"SLURM_PROCID", "5"}, {"SLURM_LOCALID", "1"}, {"SLURM_NTASKS", "6"},
             {"SLURM_NTASKS_PER_NODE", "2(x3)"}, {"SLURM_NODEID", "2"}, {"SLURM_NNODES", "3"},
             {"SLURM_JOB_NODELIST", "gpu[07-09,12],cpu3"}, {"SLURM_JOB_ID", "4812345"}});
  REQUIRE(env.ok());
  CHECK(env->launcher == dist::Launcher::kSlurm);
  CHECK(env->rank == 5);
  CHECK(env->local_rank == 1);
  CHECK(env->world_size == 6);
  CHECK(env->local_world_size == 2);
  CHECK(env->node_rank == 2);
  CHECK(env->num_nodes == 3);
  CHECK(env->master_addr == "gpu07");
  CHECK(env->master_port == 15000 + 2345);
  // torchrun's variables win over SLURM's (torchrun inside an allocation).
  env = EnvOf({{"SLURM_PROCID", "5"}, {"SLURM_NTASKS", "6"}, {"RANK", "0"}, {"WORLD_SIZE", "1"}});
  REQUIRE(env.ok());
  CHECK(env->launcher == dist::Launcher::kTorchrun);

  CHECK(*dist::FirstSlurmHost("node1") == "node1");
  CHECK(*dist::FirstSlurmHost("a[003-5]") == "a003");
  CHECK(*dist::FirstSlurmHost("x,y[1-2]") == "x");
  CHECK(*dist::FirstSlurmHost("rack[2]-gpu") == "rack2-gpu");
  CHECK_FALSE(dist::FirstSlurmHost("a[1-2").ok());
  CHECK_FALSE(dist::FirstSlurmHost("[1]").ok());
  CHECK_FALSE(dist::FirstSlurmHost("").ok());
  env = EnvOf({{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "2"}, {"SLURM_JOB_NODELIST", "n[1-"}});
  REQUIRE_FALSE(env.ok());
  CHECK(std::string(env.status().message()).find("SLURM_JOB_NODELIST: unbalanced brackets") != std::string::npos);
}

TEST_CASE("ShardLayout: equal aligned shards that cover the buffer") {
  for (int world : {1, 2, 3, 4, 7}) {
    for (int64_t numel : {0, 1, 31, 32, 33, 4099, 65536}) {
      for (int64_t align : {1, 32}) {
        dist::ShardLayout layout = dist::MakeShardLayout(numel, world, align);
        INFO("world " << world << " numel " << numel << " align " << align);
        CHECK(layout.shard_numel % align == 0);
        CHECK(layout.padded_numel() >= numel);
        CHECK(layout.padded_numel() - numel < world * align);  // the smallest such size
        int64_t covered = 0;
        for (int r = 0; r < world; ++r) covered += layout.End(r) - layout.Begin(r);
        CHECK(covered == numel);
      }
    }
  }
  at::Tensor x = at::arange(10, at::kFloat);
  dist::ShardLayout layout = dist::MakeShardLayout(10, 3, 4);  // shards of 4: [0,4) [4,8) [8,10)+2
  CHECK(at::equal(dist::TakeShard(x, layout, 2), at::tensor({8.f, 9.f, 0.f, 0.f})));
}

TEST_CASE("ProcessGroup: options are checked, one process needs no store") {
  dist::ProcessGroupOptions bad;
  bad.device = "tpu";
  bad.timeout_s = 0;
  bad.init_method = "tcp://x";
  absl::Status status = dist::Validate(bad);
  CHECK(status.code() == absl::StatusCode::kInvalidArgument);
  CHECK(std::string(status.message()).find("device: expected") != std::string::npos);
  CHECK(std::string(status.message()).find("timeout_s: expected > 0") != std::string::npos);
  CHECK(std::string(status.message()).find("init_method: expected") != std::string::npos);

  absl::StatusOr<std::unique_ptr<dist::ProcessGroup>> group = dist::ProcessGroup::Create({}, {});
  REQUIRE(group.ok());
  at::Tensor t = at::full({3}, 2.f);
  REQUIRE((*group)->AllReduce(t).ok());
  CHECK(at::equal(t, at::full({3}, 2.f)));
  // A local mismatch is refused before any communication.
  at::Tensor out = at::empty({5});
  status = (*group)->AllGatherInto(out, t);
  CHECK(status.code() == absl::StatusCode::kInvalidArgument);
  CHECK(std::string(status.message()).find("world_size (1) × 3 elements") != std::string::npos);
}

TEST_CASE("c10d smoke: every collective and dtype at world 2, 3, 4 over the launcher's TCP store") {
  for (int world : {2, 3, 4}) {
    const std::string dir = testing::TempDir("dist_smoke_" + std::to_string(world));
    dist::LaunchResult result = LaunchWorkers("smoke", world, dir);
    INFO(result.report);
    CHECK(result.exit_code == 0);
    for (int r = 0; r < world; ++r) {
      const std::string report = ReadFile(dir + "/rank" + std::to_string(r) + ".txt");
      INFO(report);
      CHECK(report.find("ok smoke world " + std::to_string(world)) != std::string::npos);
      CHECK(report.find("hosted by the launcher") != std::string::npos);
    }
  }
}

TEST_CASE("c10d smoke: the file store at world 2 and 3") {
  for (int world : {2, 3}) {
    const std::string dir = testing::TempDir("dist_filestore_" + std::to_string(world));
    dist::LaunchResult result = LaunchWorkers("smoke", world, dir, "file://" + dir + "/store");
    INFO(result.report);
    CHECK(result.exit_code == 0);
    for (int r = 0; r < world; ++r) {
      CHECK(ReadFile(dir + "/rank" + std::to_string(r) + ".txt").find("ok smoke") != std::string::npos);
    }
  }
}

TEST_CASE("c10d smoke: NCCL on the GPU at world 1, every collective and dtype", "[cuda]") {
  if (!at::hasCUDA()) {
    testing::Skip("no CUDA device: the NCCL process group was not run (it is compiled and linked)");
    return;
  }
  const std::string dir = testing::TempDir("dist_nccl");
  setenv("LLMTRAIN_TEST_DEVICE", "cuda", 1);
  dist::LaunchResult result = LaunchWorkers("smoke", 1, dir);
  unsetenv("LLMTRAIN_TEST_DEVICE");
  INFO(result.report);
  CHECK(result.exit_code == 0);
  const std::string report = ReadFile(dir + "/rank0.txt");
  INFO(report);
  CHECK(report.find("ok smoke world 1") != std::string::npos);
  CHECK(report.find("on cuda:0") != std::string::npos);
}

TEST_CASE("sharded unit on the GPU: moved, gathered over NCCL at world 1, bytes equal and layers computing", "[cuda]") {
  if (!at::hasCUDA()) {
    testing::Skip("no CUDA device: ShardedUnit::MoveTo and the NCCL gather were not run (they are compiled and linked)");
    return;
  }
  const std::string dir = testing::TempDir("dist_unit_cuda");
  setenv("LLMTRAIN_TEST_DEVICE", "cuda", 1);
  dist::LaunchResult result = LaunchWorkers("unit", 1, dir);
  unsetenv("LLMTRAIN_TEST_DEVICE");
  INFO(result.report);
  CHECK(result.exit_code == 0);
  const std::string report = ReadFile(dir + "/rank0.txt");
  INFO(report);
  CHECK(report.find("ok unit world 1") != std::string::npos);
  CHECK(report.find("on cuda:0") != std::string::npos);
}

TEST_CASE("c10d smoke: under torchrun --no-python") {
  if (!testing::ReferenceStackAvailable()) return testing::Skip("no .venv: torchrun is the torch wheel's");
  const std::string dir = testing::TempDir("dist_torchrun");
  const std::string torchrun = std::string(LLMTRAIN_PYTHON).substr(0, std::string(LLMTRAIN_PYTHON).rfind('/')) + "/torchrun";
  testing::CommandResult run = testing::RunCommand(
      "LLMTRAIN_TEST_OUT=" + testing::ShellQuote(dir) + " LLMTRAIN_TEST_INIT=env:// OMP_NUM_THREADS=1 " +
      testing::ShellQuote(torchrun) + " --standalone --no-python --nproc-per-node 3 " +
      testing::ShellQuote(LLMTRAIN_DIST_WORKER) + " smoke 2>&1");
  INFO(run.out);
  CHECK(run.exit_code == 0);
  for (int r = 0; r < 3; ++r) {
    const std::string report = ReadFile(dir + "/rank" + std::to_string(r) + ".txt");
    INFO(report);
    CHECK(report.find("ok smoke world 3") != std::string::npos);
    CHECK(report.find("rank " + std::to_string(r) + " of 3") != std::string::npos);
  }
}

TEST_CASE("shard round trip: gather(shard(x)) == x bitwise at world 2, 3, 4") {
  for (int world : {2, 3, 4}) {
    const std::string dir = testing::TempDir("dist_shard_" + std::to_string(world));
    dist::LaunchResult result = LaunchWorkers("shard", world, dir);
    INFO(result.report);
    CHECK(result.exit_code == 0);
    for (int r = 0; r < world; ++r) {
      const std::string report = ReadFile(dir + "/rank" + std::to_string(r) + ".txt");
      INFO(report);
      CHECK(report.find("ok shard world " + std::to_string(world)) != std::string::npos);
    }
  }
}

TEST_CASE("sharded unit: NF4 and dense projections released, gathered and computing bit for bit at world 2, 3, 4") {
  for (int world : {2, 3, 4}) {
    const std::string dir = testing::TempDir("dist_unit_" + std::to_string(world));
    dist::LaunchResult result = LaunchWorkers("unit", world, dir);
    INFO(result.report);
    CHECK(result.exit_code == 0);
    for (int r = 0; r < world; ++r) {
      const std::string report = ReadFile(dir + "/rank" + std::to_string(r) + ".txt");
      INFO(report);
      CHECK(report.find("ok unit world " + std::to_string(world)) != std::string::npos);
    }
    std::printf("world %d: %s", world, ReadFile(dir + "/unit0.txt").c_str());
  }
}

TEST_CASE("a mismatched collective is an error on every rank, not an abort; a local refusal reaches every rank at once") {
  const std::string dir = testing::TempDir("dist_mismatch");
  dist::LaunchResult result = LaunchWorkers("mismatch", 2, dir);
  INFO(result.report);
  CHECK(result.exit_code == 0);
  for (int r = 0; r < 2; ++r) {
    CHECK(ReadFile(dir + "/rank" + std::to_string(r) + ".txt").find("ok mismatch") != std::string::npos);
    const std::string message = ReadFile(dir + "/message" + std::to_string(r) + ".txt");
    INFO(message);
    CHECK(message.find("rank 0 #1 AllGatherInto(Byte, 10 → 20 elements); rank 1 #1 AllGatherInto(Byte, 12 → 24 elements)") != std::string::npos);
    const std::string local = ReadFile(dir + "/local" + std::to_string(r) + ".txt");
    INFO(local);
    CHECK(local.find(r == 1 ? "the output must hold world_size (2) × 4 elements (rank 1)"
                            : "rank 1 #3 AllGatherInto refused by its own checks") != std::string::npos);
  }
}

TEST_CASE("launcher: a failed rank stops the others and is named") {
  const std::string dir = testing::TempDir("dist_exit3");
  auto start = std::chrono::steady_clock::now();
  dist::LaunchResult result = LaunchWorkers("exit3", 3, dir, "env://", 600, 5);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  INFO(result.report);
  CHECK(result.exit_code == 3);
  CHECK(result.report.find("rank 1 (pid ") != std::string::npos);
  CHECK(result.report.find(") exited with status 3") != std::string::npos);
  REQUIRE(result.ranks.size() == 3);
  CHECK(result.ranks[1].exit_code == 3);
  CHECK_FALSE(result.ranks[1].stopped_by_launcher);
  CHECK(result.ranks[0].stopped_by_launcher);
  CHECK(result.ranks[2].stopped_by_launcher);
  CHECK(seconds < 60);  // a collective timeout of 600 s did not have to pass
}

TEST_CASE("launcher: a rank killed by SIGKILL mid-run ends the run within the timeout") {
  const std::string dir = testing::TempDir("dist_kill");
  auto start = std::chrono::steady_clock::now();
  dist::LaunchResult result = LaunchWorkers("kill", 2, dir, "env://", 600, 5);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  INFO(result.report);
  CHECK(result.exit_code == 128 + SIGKILL);
  CHECK(result.report.find("rank 1 (pid ") != std::string::npos);
  CHECK(result.report.find("was killed by SIGKILL") != std::string::npos);
  CHECK(seconds < 60);
  CHECK(ReadFile(dir + "/rank1.txt").find("past the first barrier") != std::string::npos);
}

TEST_CASE("launcher: SIGTERM to the launcher reaches every rank") {
  const std::string dir = testing::TempDir("dist_sigterm");
  setenv("LLMTRAIN_TEST_OUT", dir.c_str(), 1);
  dist::LaunchOptions options;
  options.nproc_per_node = 2;
  options.master_port = 0;
  options.command = {LLMTRAIN_DIST_WORKER, "sleep"};
  // Signal this process once both ranks wait; Launch forwards it.
  std::thread signaller([&] {
    for (int i = 0; i < 300; ++i) {
      if (ReadFile(dir + "/rank0.txt").find("waiting") != std::string::npos &&
          ReadFile(dir + "/rank1.txt").find("waiting") != std::string::npos) {
        break;
      }
      usleep(100 * 1000);
    }
    kill(getpid(), SIGTERM);
  });
  absl::StatusOr<dist::LaunchResult> result = dist::Launch(options);
  signaller.join();
  REQUIRE(result.ok());
  CHECK(result->exit_code == 0);
  for (int r = 0; r < 2; ++r) {
    CHECK(ReadFile(dir + "/rank" + std::to_string(r) + ".txt").find("got SIGTERM") != std::string::npos);
  }
}

TEST_CASE("launcher: SIGHUP is forwarded as SIGTERM, and a launcher killed outright takes its ranks along") {
  for (const int signo : {SIGHUP, SIGKILL}) {
    INFO("signal " << signo);
    const std::string dir = testing::TempDir(signo == SIGHUP ? "dist_sighup" : "dist_launcher_killed");
    setenv("LLMTRAIN_TEST_OUT", dir.c_str(), 1);
    // The launcher runs in a child of this test, which signals it once both ranks wait.
    const pid_t launcher = fork();
    REQUIRE(launcher >= 0);
    if (launcher == 0) {
      dist::LaunchOptions options;
      options.nproc_per_node = 2;
      options.master_port = 0;
      options.command = {LLMTRAIN_DIST_WORKER, "sleep"};
      absl::StatusOr<dist::LaunchResult> result = dist::Launch(options);
      _exit(result.ok() ? result->exit_code : 99);
    }
    const auto both = [&](const std::string& what) {
      for (int i = 0; i < 300; ++i) {
        if (ReadFile(dir + "/rank0.txt").find(what) != std::string::npos &&
            ReadFile(dir + "/rank1.txt").find(what) != std::string::npos) {
          return true;
        }
        usleep(100 * 1000);
      }
      return false;
    };
    const bool waiting = both("waiting");
    if (!waiting) kill(launcher, SIGKILL);  // its ranks follow it (PR_SET_PDEATHSIG)
    REQUIRE(waiting);
    kill(launcher, signo);
    int status = 0;
    waitpid(launcher, &status, 0);
    // Each rank writes "got SIGTERM" and exits 0: under SIGHUP through the launcher, which
    // exits 0 with them; under SIGKILL through PR_SET_PDEATHSIG.
    CHECK(both("got SIGTERM"));
    if (signo == SIGHUP) {
      CHECK(WIFEXITED(status));
      CHECK(WEXITSTATUS(status) == 0);
    } else {
      CHECK(WIFSIGNALED(status));
    }
  }
}

TEST_CASE("launcher and group: bad input is a clear error") {
  dist::LaunchOptions options;
  options.nproc_per_node = 0;
  options.node_rank = 3;
  absl::Status status = dist::Validate(options);
  CHECK(std::string(status.message()).find("nproc_per_node: expected 1 to 1024, found 0") != std::string::npos);
  CHECK(std::string(status.message()).find("node_rank: expected in [0, nnodes=1), found 3") != std::string::npos);
  CHECK(std::string(status.message()).find("command: empty") != std::string::npos);

  options = {};
  options.command = {"/nonexistent/program"};
  CHECK(dist::Launch(options).status().code() == absl::StatusCode::kNotFound);

  // The store's port in use.
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr = {};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0);
  REQUIRE(listen(fd, 1) == 0);
  socklen_t len = sizeof(addr);
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  options.command = {LLMTRAIN_DIST_WORKER, "smoke"};
  options.master_port = ntohs(addr.sin_port);
  absl::StatusOr<dist::LaunchResult> result = dist::Launch(options);
  close(fd);
  REQUIRE_FALSE(result.ok());
  INFO(result.status().ToString());
  CHECK(std::string(result.status().message()).find("cannot host the rendezvous store on port " +
                                                    std::to_string(options.master_port)) != std::string::npos);

  // Rank 0 of 2 alone: the rendezvous times out with the store's address.
  const std::string dir = testing::TempDir("dist_alone");
  dist::DistEnv env;
  env.world_size = 2;
  dist::ProcessGroupOptions group_options;
  group_options.init_method = "file://" + dir + "/store";
  group_options.timeout_s = 2;
  auto start = std::chrono::steady_clock::now();
  absl::StatusOr<std::unique_ptr<dist::ProcessGroup>> group = dist::ProcessGroup::Create(env, group_options);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  REQUIRE_FALSE(group.ok());
  INFO(group.status().ToString());
  CHECK(group.status().code() == absl::StatusCode::kUnavailable);
  CHECK(seconds < 30);
}

TEST_CASE("llmtrain launch: prefixed output, the failed rank's status, usage errors") {
  const std::string dir = testing::TempDir("dist_cli");
  const std::string env = "LLMTRAIN_TEST_OUT=" + testing::ShellQuote(dir) + " OMP_NUM_THREADS=1 ";
  const std::string launch = env + testing::ShellQuote(testing::CliPath()) + " launch ";
  testing::CommandResult ok = testing::RunCommand(
      launch + "--nproc-per-node 2 --master-port 0 -- " + testing::ShellQuote(LLMTRAIN_DIST_WORKER) + " smoke");
  INFO(ok.out);
  CHECK(ok.exit_code == 0);
  CHECK(ok.out.find("[rank 0] smoke ok at world 2: 0 failures\n") != std::string::npos);
  CHECK(ok.out.find("[rank 1] smoke ok at world 2: 0 failures\n") != std::string::npos);

  testing::CommandResult failed = testing::RunCommand(
      launch + "--nproc-per-node 2 --master-port 0 --stop-timeout 5 -- " +
      testing::ShellQuote(LLMTRAIN_DIST_WORKER) + " exit3 2>&1");
  INFO(failed.out);
  CHECK(failed.exit_code == 3);
  CHECK(failed.out.find("llmtrain launch: rank 1 (pid ") != std::string::npos);
  CHECK(failed.out.find("exited with status 3") != std::string::npos);
  CHECK(failed.out.find("llmtrain launch: exit status 3") != std::string::npos);

  testing::CommandResult usage = testing::RunCommand(launch + "--nproc-per-node 0 2>&1");
  INFO(usage.out);
  CHECK(usage.exit_code == 2);
  CHECK(usage.out.find("nproc_per_node: expected 1 to 1024, found 0") != std::string::npos);
  CHECK(usage.out.find("command: empty (give it after --)") != std::string::npos);
}

namespace {

// The "train" lines of a run's metrics.jsonl.
std::vector<nlohmann::json> TrainLines(const std::string& run) {
  std::vector<nlohmann::json> lines;
  std::ifstream in(run + "/metrics.jsonl");
  for (std::string line; std::getline(in, line);) {
    nlohmann::json j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_object() && j.value("type", "") == "train") lines.push_back(j);
  }
  return lines;
}

double MaxAbsDiff(const std::string& a, const std::string& b) {
  auto x = testing::LoadAll(a), y = testing::LoadAll(b);
  REQUIRE(x.size() == y.size());
  double worst = 0;
  for (const auto& [key, t] : x) {
    REQUIRE(y.count(key) == 1);
    worst = std::max(worst, (t - y[key]).abs().max().item<double>());
  }
  return worst;
}

std::string WriteSpec(const std::string& dir, const std::string& name, const std::string& extra) {
  const std::string path = dir + "/" + name + ".textproto";
  std::ofstream(path) << "model { path: \"" << dir << "/model\" load_in_4bit: true }\n"
                      << "lora { r: 4 alpha: 8 dropout: 0 target_modules: \"all-linear\" }\n"
                      << "data { train_files: \"" << dir << "/train.jsonl\" eval_files: \"" << dir
                      << "/train.jsonl\" format: \"text\" template: \"none\" max_length: 24 }\n"
                      << "eval { sample_prompts: \"The cat\" max_new_tokens: 4 }\n"
                      << "training { max_steps: 5 learning_rate: 0.003 warmup_steps: 1 weight_decay: 0.01 max_grad_norm: 1.0"
                      << " adam_epsilon: 1e-6 seed: 7 log_every_steps: 1 }\n"
                      << "output { dir: \"" << dir << "/" << name << "\" report_to: \"jsonl\" }\n"
                      << extra;
  return path;
}

}  // namespace

// The eval lines (loss at the start and the end) and the last sample of a run.
std::vector<nlohmann::json> EvalLines(const std::string& run) {
  std::vector<nlohmann::json> lines;
  std::ifstream in(run + "/metrics.jsonl");
  for (std::string line; std::getline(in, line);) {
    nlohmann::json j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_object() && j.value("type", "") == "eval") lines.push_back(j);
  }
  return lines;
}

TEST_CASE("zero3 sharded loading: each rank reads and quantizes only its bytes, and they equal a whole load's, "
          "world 2 and 3", "[reference]") {
  if (!testing::ReferenceStackAvailable()) return testing::Skip("no .venv: the tiny models come from transformers");
  // Tiny Qwen2 (q/k/v biases) and Gemma 3 folders in float32 safetensors, and the real Gemma 3
  // 270M GGUF (Q4_K/Q6_K, dequantized by rows) where bootstrap installed it.
  std::string models;
  for (const char* family : {"qwen2", "gemma3_text"}) {
    const std::string dir = testing::TempDir(std::string("dist_load_") + family);
    REQUIRE(testing::RunReference("train_ref.py", {"tiny", dir, family}).exit_code == 0);
    models += dir + "/model;";
  }
  const std::string gguf = std::string(LLMTRAIN_SOURCE_DIR) + "/.venv/models/gemma-3-270m-q4_k_m.gguf";
  if (access(gguf.c_str(), R_OK) == 0) models += gguf;
  setenv("LLMTRAIN_TEST_MODELS", models.c_str(), 1);
  for (int world : {2, 3}) {
    const std::string dir = testing::TempDir("dist_load_" + std::to_string(world));
    dist::LaunchResult result = LaunchWorkers("load", world, dir, "env://", 300);
    INFO(result.report);
    CHECK(result.exit_code == 0);
    for (int r = 0; r < world; ++r) {
      const std::string report = ReadFile(dir + "/rank" + std::to_string(r) + ".txt");
      INFO(report);
      CHECK(report.find("ok load world " + std::to_string(world)) != std::string::npos);
    }
    std::printf("world %d, rank 0:\n%s", world, ReadFile(dir + "/load0.txt").c_str());
  }
}

TEST_CASE("ddp and zero3 trainers: world 2 and 3 equal the single-process trainer on the same global batches",
          "[reference]") {
  if (!testing::ReferenceStackAvailable()) return testing::Skip("no .venv: the tiny models come from transformers");
  // The last column: training.autocast (bf16 GEMMs over the float32 adapter, its own master).
  const auto [family, world, engine, autocast] = GENERATE(table<std::string, int, std::string, std::string>(
      {{"qwen2", 2, "ddp", "off"}, {"qwen2", 3, "ddp", "off"}, {"gemma3_text", 2, "ddp", "off"},
       {"gemma3_text", 3, "ddp", "off"}, {"qwen2", 2, "zero3", "off"}, {"qwen2", 3, "zero3", "off"},
       {"gemma3_text", 2, "zero3", "off"}, {"gemma3_text", 3, "zero3", "off"}, {"qwen2", 2, "zero3", "bf16"},
       {"gemma3_text", 3, "zero3", "bf16"}}));
  INFO(family << " at world " << world << ", engine " << engine << ", autocast " << autocast);
  const std::string dir =
      testing::TempDir("dist_" + engine + "_" + family + "_" + std::to_string(world) + "_" + autocast);
  REQUIRE(testing::RunReference("train_ref.py", {"tiny", dir, family}).exit_code == 0);
  // 32 records. World 2: micro-batches of 2 (padding), accumulation 2, 8 records a step, so the
  // run crosses into epoch 1 where the single process does. World 3 sees 30 records an epoch (the
  // sampler leaves out the tail of 2), so micro-batches of 1 and 30 records in 5 steps keep both
  // runs inside epoch 0. The single process trains on the same global micro-batches with
  // accumulation 2 × world.
  // Under autocast, micro-batches of 1 at any world. With micro-batches of 2 at world 2 the bf16
  // runs were 5.8e-4 apart on the gradient norm (the single process with activation checkpointing
  // on and off agrees bit for bit, so it is not the recompute): padded micro-batches of other
  // shapes than the single process's, where bf16 GEMMs round differently. Without padding they
  // agree like the f32 runs.
  const int micro = world == 2 && autocast == "off" ? 2 : 1;
  const std::string single = WriteSpec(dir, "single", "");
  const std::string ddp = WriteSpec(dir, "ddp", "distributed { engine: " + engine + " timeout_s: 60 }\n");
  const std::string cli = testing::ShellQuote(testing::CliPath());
  const std::string batch = " --set training.autocast=" + autocast + " --set training.micro_batch_size=" +
                            std::to_string(micro) + " --set training.gradient_accumulation_steps=";
  // One thread, as each rank has: bf16 GEMMs may block their sums by the thread count.
  testing::CommandResult a = testing::RunCommand("OMP_NUM_THREADS=1 " + cli + " train --spec " +
                                                 testing::ShellQuote(single) + batch + std::to_string(2 * world) +
                                                 " 2>&1");
  INFO(a.out);
  REQUIRE(a.exit_code == 0);
  testing::CommandResult b = testing::RunCommand("OMP_NUM_THREADS=1 " + cli + " launch --nproc-per-node " +
                                                 std::to_string(world) + " --master-port 0 -- " + cli +
                                                 " train --spec " + testing::ShellQuote(ddp) + batch + "2 2>&1");
  INFO(b.out);
  REQUIRE(b.exit_code == 0);
  const std::vector<nlohmann::json> want = TrainLines(dir + "/single"), got = TrainLines(dir + "/ddp");
  REQUIRE(want.size() == 5);
  REQUIRE(got.size() == 5);
  double worst_loss = 0, worst_norm = 0, worst_weight = 0;
  for (size_t i = 0; i < 5; ++i) {
    CHECK(got[i]["target_tokens"] == want[i]["target_tokens"]);  // the same global batches
    worst_loss = std::max(worst_loss, std::abs(got[i]["loss"].get<double>() - want[i]["loss"].get<double>()) /
                                          std::abs(want[i]["loss"].get<double>()));
    worst_norm = std::max(worst_norm, std::abs(got[i]["grad_norm"].get<double>() - want[i]["grad_norm"].get<double>()) /
                                          std::abs(want[i]["grad_norm"].get<double>()));
  }
  // Evaluation at the start and the end (32 batches split over the ranks; under zero3 a rank
  // without a batch in the last round runs one more forward) and the sample prompt's greedy text.
  const std::vector<nlohmann::json> eval_want = EvalLines(dir + "/single"), eval_got = EvalLines(dir + "/ddp");
  REQUIRE(eval_want.size() == 2);
  REQUIRE(eval_got.size() == 2);
  double worst_eval = 0;
  for (size_t i = 0; i < 2; ++i) {
    worst_eval = std::max(worst_eval, std::abs(eval_got[i]["eval_loss"].get<double>() - eval_want[i]["eval_loss"].get<double>()) /
                                          eval_want[i]["eval_loss"].get<double>());
    CHECK(eval_got[i]["samples"] == eval_want[i]["samples"]);
  }
  CHECK(worst_eval <= 1e-6);
  // zero3 shards each layer as the loader builds it (DecoderOptions::on_layer_loaded).
  if (engine == "zero3") {
    CHECK(b.out.find("layers sharded over " + std::to_string(world) + " processes as they loaded") != std::string::npos);
  }
  auto x = testing::LoadAll(dir + "/single/adapter/adapter_model.safetensors");
  auto y = testing::LoadAll(dir + "/ddp/adapter/adapter_model.safetensors");
  REQUIRE(x.size() == y.size());
  REQUIRE(!x.empty());
  for (const auto& [key, t] : x) {
    REQUIRE(y.count(key) == 1);
    worst_weight = std::max(worst_weight, (t - y[key]).abs().max().item<double>());
  }
  std::printf("%s %s world %d%s vs one process, 5 steps: worst rel diff loss %.2e, grad norm %.2e, eval loss %.2e; "
              "%zu LoRA tensors, worst abs diff %.2e\n", engine.c_str(), family.c_str(), world,
              autocast == "bf16" ? " (autocast bf16)" : "", worst_loss, worst_norm, worst_eval, x.size(), worst_weight);
  // The same records, weights and arithmetic except the order of two sums: each rank adds its own
  // micro-batches' gradients, then the ranks' sums are added (float32), where one process adds
  // them one micro-batch at a time; the float64 loss sums likewise. So losses and gradient norms
  // differ by float32 rounding (measured ≤ 1.5e-7; zero3 sums the gradient norm's squares over its
  // slices in float64). Adam divides each gradient element by
  // sqrt(v) + eps: for elements of size ~eps its step amplifies that rounding. With torch's
  // default eps 1e-8 the LoRA A of the last MLP reached 3.8e-6 apart after 5 steps (its first
  // moments start from gradients of ~1e-8 at step 3); with eps 1e-6, used here, the worst is
  // 1.2e-7, so 1e-6 bounds the engine's error, not the optimizer's sensitivity.
  CHECK(worst_loss <= 1e-6);
  CHECK(worst_norm <= 1e-6);
  CHECK(worst_weight <= 1e-6);
}

TEST_CASE("ddp and zero3 on the GPU at world 1 (NCCL) equal the single-process GPU trainer", "[cuda][reference]") {
  if (!at::hasCUDA()) {
    return testing::Skip("no CUDA device: the engines on CUDA tensors were not run (they are compiled and linked)");
  }
  if (!testing::ReferenceStackAvailable()) return testing::Skip("no .venv: the tiny models come from transformers");
  const std::string dir = testing::TempDir("dist_cuda_engines");
  REQUIRE(testing::RunReference("train_ref.py", {"tiny", dir, "qwen2"}).exit_code == 0);
  const std::string cli = testing::ShellQuote(testing::CliPath());
  const std::string single = WriteSpec(dir, "single", "");
  testing::CommandResult a =
      testing::RunCommand(cli + " train --spec " + testing::ShellQuote(single) + " --set model.device=cuda 2>&1");
  INFO(a.out);
  REQUIRE(a.exit_code == 0);
  const std::vector<nlohmann::json> want = TrainLines(dir + "/single");
  REQUIRE(want.size() == 5);
  for (const std::string engine : {"ddp", "zero3"}) {
    const std::string spec = WriteSpec(dir, engine, "distributed { engine: " + engine + " timeout_s: 60 }\n");
    testing::CommandResult b = testing::RunCommand(cli + " launch --nproc-per-node 1 --master-port 0 -- " + cli +
                                                   " train --spec " + testing::ShellQuote(spec) +
                                                   " --set model.device=cuda 2>&1");
    INFO(b.out);
    REQUIRE(b.exit_code == 0);
    CHECK(b.out.find("nccl") != std::string::npos);
    const std::vector<nlohmann::json> got = TrainLines(dir + "/" + engine);
    REQUIRE(got.size() == 5);
    double worst = 0;
    for (size_t i = 0; i < 5; ++i) {
      worst = std::max(worst, std::abs(got[i]["loss"].get<double>() - want[i]["loss"].get<double>()) /
                                  std::abs(want[i]["loss"].get<double>()));
    }
    const double weights = MaxAbsDiff(dir + "/single/adapter/adapter_model.safetensors",
                                        dir + "/" + engine + "/adapter/adapter_model.safetensors");
    std::printf("%s on cuda at world 1 vs the single GPU trainer, 5 steps: worst rel loss diff %.2e, LoRA abs %.2e\n",
                engine.c_str(), worst, weights);
    // The same kernels on the same batches; zero3 recomputes each layer (activation checkpointing)
    // and steps AdamW through its slice path: float32 rounding at most.
    CHECK(worst <= 1e-5);
    CHECK(weights <= 1e-5);
  }
}

namespace {

std::string Cli() { return testing::ShellQuote(testing::CliPath()); }

// `llmtrain launch` of `llmtrain train` at `world`, with --set overrides.
testing::CommandResult LaunchTrain(int world, const std::string& spec, const std::string& sets) {
  return testing::RunCommand("OMP_NUM_THREADS=1 " + Cli() + " launch --nproc-per-node " + std::to_string(world) +
                             " --master-port 0 --stop-timeout 10 -- " + Cli() + " train --spec " +
                             testing::ShellQuote(spec) + " " + sets + " 2>&1");
}

// A copy of a 5-step run's folder as it stood after step 4: without what step 5 wrote.
void CopyRunAsAfterStep4(const std::string& whole, const std::string& run) {
  REQUIRE(testing::RunCommand("cp -r " + testing::ShellQuote(whole) + " " + testing::ShellQuote(run) + " && rm -r " +
                              testing::ShellQuote(run + "/checkpoints/step-000005") + " " +
                              testing::ShellQuote(run + "/adapter")).exit_code == 0);
}

bool CompleteCheckpoint(const std::string& dir) {
  for (const char* file : {"/trainer_state.json", "/optimizer.safetensors", "/adapter/adapter_model.safetensors",
                           "/adapter/adapter_config.json", "/spec.textproto"}) {
    if (access((dir + file).c_str(), R_OK) != 0) return false;
  }
  return true;
}

}  // namespace

TEST_CASE("ddp and zero3 resume: stopped at step 4 at world 2, resumed at world 1 and 3, ends where the whole run ends",
          "[reference]") {
  if (!testing::ReferenceStackAvailable()) return testing::Skip("no .venv: the tiny models come from transformers");
  // zero3 also shards the adapter's optimizer state: its checkpoint gathers the slices into the
  // single-process layout, and each world size takes its own slices of it.
  const std::string engine = GENERATE(std::string("ddp"), std::string("zero3"));
  INFO("engine " << engine);
  const std::string dir = testing::TempDir("dist_resume_" + engine);
  REQUIRE(testing::RunReference("train_ref.py", {"tiny", dir, "qwen2"}).exit_code == 0);
  // 6 micro-batches of 1 per step at every world size (2 × 3, 1 × 6, 3 × 2): 30 records in 5
  // steps, inside the 30 that world 3 sees of an epoch.
  const std::string spec = WriteSpec(dir, "whole", "distributed { engine: " + engine + " timeout_s: 60 }\n");
  const std::string batch = "--set training.micro_batch_size=1 --set checkpoint.every_steps=4 ";
  testing::CommandResult whole = LaunchTrain(2, spec, batch + "--set training.gradient_accumulation_steps=3");
  INFO(whole.out);
  REQUIRE(whole.exit_code == 0);
  REQUIRE(CompleteCheckpoint(dir + "/whole/checkpoints/step-000004"));
  for (int world : {1, 3}) {
    INFO("resumed at world " << world);
    const std::string run = dir + "/resumed" + std::to_string(world);
    CopyRunAsAfterStep4(dir + "/whole", run);
    // A world size that changes the global batch is refused, naming the accumulation to use.
    testing::CommandResult refused = LaunchTrain(world, spec, batch + "--set output.dir=" + testing::ShellQuote(run) +
                                                              " --set training.gradient_accumulation_steps=3 --resume");
    INFO(refused.out);
    CHECK(refused.exit_code != 0);
    CHECK(refused.out.find("world size × accumulation = 6") != std::string::npos);
    testing::CommandResult resumed = LaunchTrain(world, spec, batch + "--set output.dir=" + testing::ShellQuote(run) +
                                                              " --set training.gradient_accumulation_steps=" +
                                                              std::to_string(6 / world) + " --resume");
    INFO(resumed.out);
    REQUIRE(resumed.exit_code == 0);
    CHECK(resumed.out.find("resumed from") != std::string::npos);
    const std::vector<nlohmann::json> a = TrainLines(dir + "/whole"), b = TrainLines(run);
    REQUIRE(a.size() == 5);
    REQUIRE(b.size() == 5);
    CHECK(b[4]["target_tokens"] == a[4]["target_tokens"]);
    CHECK(std::abs(b[4]["loss"].get<double>() - a[4]["loss"].get<double>()) <= 1e-6 * std::abs(a[4]["loss"].get<double>()));
    const double diff = MaxAbsDiff(dir + "/whole/adapter/adapter_model.safetensors", run + "/adapter/adapter_model.safetensors");
    std::printf("%s resume: world 2 → %d after step 4: step 5 loss %.9f vs %.9f, adapter worst abs diff %.2e\n",
                engine.c_str(), world, b[4]["loss"].get<double>(), a[4]["loss"].get<double>(), diff);
    // Step 5's gradients are summed in another order at another world size: the bound and its
    // reason are those of the parity test above.
    CHECK(diff <= 1e-6);
  }
  const testing::CommandResult peft = testing::RunReference("dist_ref.py", {"peft", dir + "/model", dir + "/resumed3/adapter"});
  INFO(peft.out);
  REQUIRE(peft.exit_code == 0);
  const nlohmann::json loaded = testing::LastJsonLine(peft.out);
  CHECK(loaded["lora_tensors"] == 28);
  CHECK(loaded["equal"] == true);
  CHECK(loaded["finite"] == true);
}

TEST_CASE("ddp resume with packing: each rank resumes at its own data position; another world size is refused",
          "[reference]") {
  if (!testing::ReferenceStackAvailable()) return testing::Skip("no .venv: the tiny models come from transformers");
  const std::string dir = testing::TempDir("dist_resume_packed");
  REQUIRE(testing::RunReference("train_ref.py", {"tiny", dir, "qwen2"}).exit_code == 0);
  // Long and short records, shuffled: packed rows of 24 tokens take one long record or several
  // short ones, so the two ranks consume different numbers of records per micro-batch.
  {
    std::ofstream data(dir + "/train.jsonl");
    for (int i = 0; i < 48; ++i) {
      data << (i % 3 == 0 ? "{\"text\": \"The cat of 7 is 4 and it likes the cats and the dogs.\"}\n"
                          : "{\"text\": \"the cat.\"}\n");
    }
  }
  const std::string spec = WriteSpec(dir, "whole", "distributed { engine: ddp timeout_s: 60 }\n");
  // LoRA dropout: each rank's generator must come back too, or step 5's masks would differ.
  const std::string sets = "--set data.packing=true --set training.micro_batch_size=1 --set lora.dropout=0.1 "
                           "--set training.gradient_accumulation_steps=2 --set checkpoint.every_steps=4 ";
  testing::CommandResult whole = LaunchTrain(2, spec, sets);
  INFO(whole.out);
  REQUIRE(whole.exit_code == 0);
  const std::string ck = dir + "/whole/checkpoints/step-000004";
  REQUIRE(CompleteCheckpoint(ck));
  const nlohmann::json state = nlohmann::json::parse(ReadFile(ck + "/trainer_state.json"));
  INFO(state.dump());
  REQUIRE(state["data_positions"].size() == 2);
  // The premise of this test: the ranks stand at different places.
  REQUIRE(state["data_positions"][0] != state["data_positions"][1]);
  const std::string run = dir + "/resumed";
  CopyRunAsAfterStep4(dir + "/whole", run);
  // At world 1 there is no single place to continue from: refused, naming why.
  testing::CommandResult refused = LaunchTrain(1, spec, sets + "--set training.gradient_accumulation_steps=4 "
                                                               "--set output.dir=" + testing::ShellQuote(run) + " --resume");
  INFO(refused.out);
  CHECK(refused.exit_code != 0);
  CHECK(refused.out.find("stand at different places in the data") != std::string::npos);
  CHECK(refused.out.find("resumes exactly only at world size 2") != std::string::npos);
  // At world 2 each rank continues from its own place: step 5 is the whole run's step 5.
  testing::CommandResult resumed = LaunchTrain(2, spec, sets + "--set output.dir=" + testing::ShellQuote(run) + " --resume");
  INFO(resumed.out);
  REQUIRE(resumed.exit_code == 0);
  const std::vector<nlohmann::json> a = TrainLines(dir + "/whole"), b = TrainLines(run);
  REQUIRE(a.size() == 5);
  REQUIRE(b.size() == 5);
  CHECK(b[4]["target_tokens"] == a[4]["target_tokens"]);
  CHECK(b[4]["loss"] == a[4]["loss"]);
  // The same processes, data, order and arithmetic as the uninterrupted run: the same bytes.
  CHECK(ReadFile(dir + "/whole/adapter/adapter_model.safetensors") == ReadFile(run + "/adapter/adapter_model.safetensors"));
}

TEST_CASE("ddp faults: a rank SIGKILLed mid-run ends the run; the last checkpoint resumes to the whole run's adapter", "[reference]") {
  if (!testing::ReferenceStackAvailable()) return testing::Skip("no .venv: the tiny models come from transformers");
  const std::string dir = testing::TempDir("dist_fault");
  REQUIRE(testing::RunReference("train_ref.py", {"tiny", dir, "qwen2"}).exit_code == 0);
  const std::string spec = WriteSpec(dir, "whole", "distributed { engine: ddp timeout_s: 30 }\n");
  const std::string sets = "--set training.max_steps=40 --set training.micro_batch_size=2 "
                           "--set training.gradient_accumulation_steps=2 --set checkpoint.every_steps=1";
  testing::CommandResult whole = LaunchTrain(2, spec, sets);
  INFO(whole.out);
  REQUIRE(whole.exit_code == 0);

  // The same run, with rank 1 killed once a few steps are logged.
  const std::string run = dir + "/killed";
  const std::string log = dir + "/killed.log";
  const std::string command = "OMP_NUM_THREADS=1 exec " + Cli() + " launch --nproc-per-node 2 --master-port 0 "
                              "--stop-timeout 10 -- " + Cli() + " train --spec " + testing::ShellQuote(spec) + " " + sets +
                              " --set output.dir=" + testing::ShellQuote(run) + " > " + testing::ShellQuote(log) + " 2>&1";
  const pid_t launcher = fork();
  if (launcher == 0) {
    execl("/bin/sh", "sh", "-c", command.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  REQUIRE(launcher > 0);
  pid_t victim = -1;
  for (int i = 0; i < 600 && victim < 0; ++i) {
    usleep(50 * 1000);
    if (TrainLines(run).size() < 8) continue;
    // The launcher's children are the ranks, in rank order.
    std::ifstream children("/proc/" + std::to_string(launcher) + "/task/" + std::to_string(launcher) + "/children");
    pid_t rank0 = -1, rank1 = -1;
    children >> rank0 >> rank1;
    if (rank1 > 0) victim = rank1;
  }
  REQUIRE(victim > 0);
  const size_t logged_before = TrainLines(run).size();
  const auto start = std::chrono::steady_clock::now();
  REQUIRE(kill(victim, SIGKILL) == 0);
  int status = 0;
  REQUIRE(waitpid(launcher, &status, 0) == launcher);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const std::string out = ReadFile(log);
  INFO(out);
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 128 + SIGKILL);
  CHECK(out.find("llmtrain launch: rank 1 (pid " + std::to_string(victim) + ") was killed by SIGKILL") != std::string::npos);
  CHECK(seconds < 30 + 10);  // within distributed.timeout_s (and the launcher's stop timeout)
  std::printf("ddp fault: rank 1 SIGKILLed after %zu logged steps; the launcher exited %d after %.1f s\n", logged_before,
              WEXITSTATUS(status), seconds);
  // Every checkpoint under its final name is complete; resuming finishes the run.
  int complete = 0;
  for (const auto& entry : std::filesystem::directory_iterator(run + "/checkpoints")) {
    const std::string name = entry.path().filename().string();
    if (name.find(".tmp-") != std::string::npos) continue;
    CHECK(CompleteCheckpoint(entry.path().string()));
    ++complete;
  }
  CHECK(complete >= 1);
  testing::CommandResult resumed = LaunchTrain(2, spec, sets + " --set output.dir=" + testing::ShellQuote(run) + " --resume");
  INFO(resumed.out);
  REQUIRE(resumed.exit_code == 0);
  // The same world size sums in the same order: the adapter is the same bytes.
  CHECK(ReadFile(run + "/adapter/adapter_model.safetensors") == ReadFile(dir + "/whole/adapter/adapter_model.safetensors"));
}

TEST_CASE("zero3 at world 2 matches FSDP2 + PEFT + bitsandbytes on Gloo on the same batches", "[reference]") {
  if (!testing::ReferenceStackAvailable()) return testing::Skip("no .venv: FSDP2, PEFT and bitsandbytes are the reference");
  const std::string dir = testing::TempDir("dist_fsdp2");
  REQUIRE(testing::RunReference("train_ref.py", {"tiny", dir, "qwen2"}).exit_code == 0);
  const std::string spec = WriteSpec(dir, "single", "");
  // The global micro-batches of each step, recorded by the single-process trainer (which the
  // parity test above holds equal to zero3's).
  auto run = spec::LoadRunSpec(spec, {"training.micro_batch_size=2", "training.gradient_accumulation_steps=4"});
  REQUIRE(run.ok());
  auto trainer = spec::BuildTrainer(*run);
  REQUIRE(trainer.ok());
  std::vector<std::pair<std::string, at::Tensor>> batches;
  std::map<int64_t, int> micro;
  train::RunOptions options;
  options.progress = false;
  options.on_batch = [&](int64_t step, const std::vector<int64_t>& ids, const std::vector<int64_t>& mask,
                         const std::vector<int64_t>& pos, const std::vector<int64_t>& labels, int64_t b, int64_t t) {
    const std::string key = std::to_string(step) + "." + std::to_string(micro[step]++);
    const auto tensor = [&](const std::vector<int64_t>& v) {
      return at::tensor(at::ArrayRef<int64_t>(v), at::kLong).view({b, t}).clone();
    };
    batches.emplace_back("ids." + key, tensor(ids));
    batches.emplace_back("mask." + key, tensor(mask));
    batches.emplace_back("pos." + key, tensor(pos));
    batches.emplace_back("labels." + key, tensor(labels));
  };
  REQUIRE((*trainer)->Run(options).ok());
  REQUIRE(io::SaveSafetensors(dir + "/batches.safetensors", batches).ok());

  const std::string zero3 = WriteSpec(dir, "zero3", "distributed { engine: zero3 timeout_s: 60 }\n");
  testing::CommandResult ours = LaunchTrain(2, zero3, "--set training.micro_batch_size=2 "
                                                      "--set training.gradient_accumulation_steps=2");
  INFO(ours.out);
  REQUIRE(ours.exit_code == 0);
  const nlohmann::json cfg = {{"seed", 7}, {"r", 4}, {"alpha", 8}, {"lr", 0.003}, {"wd", 0.01},
                              {"eps", 1e-6}, {"warmup", 1}, {"steps", 5}};
  const std::string python = LLMTRAIN_PYTHON;
  const std::string torchrun = python.substr(0, python.rfind('/')) + "/torchrun";
  testing::CommandResult ref = testing::RunCommand(
      "cd " + testing::ShellQuote(std::string(LLMTRAIN_SOURCE_DIR) + "/tests/reference") + " && OMP_NUM_THREADS=1 " +
      testing::ShellQuote(torchrun) + " --standalone --nproc-per-node 2 dist_ref.py fsdp2 " + testing::ShellQuote(dir) +
      " " + testing::ShellQuote(cfg.dump()));
  INFO(ref.out);
  REQUIRE(ref.exit_code == 0);
  const std::vector<double> theirs = testing::LastJsonLine(ref.out)["losses"].get<std::vector<double>>();
  const std::vector<nlohmann::json> got = TrainLines(dir + "/zero3");
  REQUIRE(theirs.size() == 5);
  REQUIRE(got.size() == 5);
  double worst_loss = 0;
  for (size_t i = 0; i < 5; ++i) {
    worst_loss = std::max(worst_loss, std::abs(got[i]["loss"].get<double>() - theirs[i]) / theirs[i]);
  }
  auto mine = testing::LoadAll(dir + "/zero3/adapter/adapter_model.safetensors");
  auto fsdp = testing::LoadAll(dir + "/fsdp2_weights.safetensors");
  REQUIRE(mine.size() == fsdp.size());
  double worst_weight = 0;
  for (const auto& [key, t] : fsdp) {
    INFO(key);
    REQUIRE(mine.count(key) == 1);
    const double scale = t.abs().max().item<double>();
    worst_weight = std::max(worst_weight, (mine[key] - t).abs().max().item<double>() / (scale > 0 ? scale : 1));
  }
  std::printf("zero3 world 2 vs FSDP2 + PEFT + bitsandbytes (Gloo, world 2), 5 QLoRA steps: loss %.4f → %.4f vs "
              "%.4f → %.4f, worst rel diff %.2e; %zu LoRA tensors, worst rel diff %.2e\n",
              got.front()["loss"].get<double>(), got.back()["loss"].get<double>(), theirs.front(), theirs.back(),
              worst_loss, fsdp.size(), worst_weight);
  // Two implementations of the same float32 math (our decoder against transformers' eager path,
  // our 4-bit matmul against bitsandbytes'): train_test's single-process bounds against
  // transformers + PEFT apply.
  CHECK(worst_loss <= 1e-5);
  CHECK(worst_weight <= 1e-4);
}

TEST_CASE("zero3: a NaN on one rank makes every rank skip the step, and the run stops together", "[reference]") {
  if (!testing::ReferenceStackAvailable()) return testing::Skip("no .venv: the tiny models come from transformers");
  const std::string dir = testing::TempDir("dist_nonfinite");
  REQUIRE(testing::RunReference("train_ref.py", {"tiny", dir, "qwen2"}).exit_code == 0);
  setenv("LLMTRAIN_TEST_MODEL_DIR", dir.c_str(), 1);
  dist::LaunchResult result = LaunchWorkers("nonfinite", 2, dir);
  INFO(result.report);
  CHECK(result.exit_code == 0);
  for (int r = 0; r < 2; ++r) {
    const std::string report = ReadFile(dir + "/rank" + std::to_string(r) + ".txt");
    INFO(report);
    CHECK(report.find("ok nonfinite world 2") != std::string::npos);
  }
  // Rank 0 wrote the metrics: 3 skipped steps, and the checkpoint of step 3.
  std::ifstream metrics(dir + "/run/metrics.jsonl");
  int skipped = 0;
  for (std::string line; std::getline(metrics, line);) skipped += line.find("\"skipped\":true") != std::string::npos;
  CHECK(skipped == 3);
  CHECK(CompleteCheckpoint(dir + "/run/checkpoints/step-000003"));
}
