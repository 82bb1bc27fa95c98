// The local launcher (dist/launch.h): fork + exec of the ranks, the agent store, output
// prefixing, signal forwarding and stopping the others when one rank fails.
#include "llmtrain/dist/launch.h"

#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <map>
#include <optional>

#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include "absl/status/status.h"
#include "llmtrain/core/threads.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "dist/backends.h"

extern char** environ;

namespace llmtrain::dist {
namespace {

std::atomic<int> g_signal{0};
void OnSignal(int signo) { g_signal.store(signo); }

// The program as execvp would find it, or NotFound.
absl::Status CheckRunnable(const std::string& program) {
  if (program.find('/') != std::string::npos) {
    if (access(program.c_str(), X_OK) == 0) return absl::OkStatus();
    return absl::NotFoundError(absl::StrCat("launch: cannot run \"", program, "\": ", std::strerror(errno)));
  }
  const char* path = std::getenv("PATH");
  for (absl::string_view dir : absl::StrSplit(path ? path : "/usr/bin:/bin", ':')) {
    const std::string candidate = absl::StrCat(dir.empty() ? "." : dir, "/", program);
    if (access(candidate.c_str(), X_OK) == 0) return absl::OkStatus();
  }
  return absl::NotFoundError(absl::StrCat("launch: \"", program, "\" is not on PATH"));
}

std::string SignalName(int signo) {
  const char* name = sigabbrev_np(signo);
  return name ? absl::StrCat("SIG", name) : absl::StrCat("signal ", signo);
}

struct Child {
  int local_rank = 0;
  int rank = 0;
  pid_t pid = -1;
  int out_fd = -1, err_fd = -1;
  std::string out_partial, err_partial;
  bool running = true;
  RankExit exit;
};

void WriteAll(int fd, absl::string_view text) {
  while (!text.empty()) {
    ssize_t n = write(fd, text.data(), text.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return;
    }
    text.remove_prefix(static_cast<size_t>(n));
  }
}

// Emits the complete lines of `partial` (all of it at EOF) to fd with the rank's prefix.
void Flush(std::string& partial, int fd, const std::string& prefix, bool eof) {
  size_t start = 0;
  for (size_t nl = partial.find('\n'); nl != std::string::npos; nl = partial.find('\n', start)) {
    WriteAll(fd, absl::StrCat(prefix, absl::string_view(partial).substr(start, nl + 1 - start)));
    start = nl + 1;
  }
  partial.erase(0, start);
  if (eof && !partial.empty()) {
    WriteAll(fd, absl::StrCat(prefix, partial, "\n"));
    partial.clear();
  }
}

// Reads what is there; false at EOF.
bool Drain(int fd, std::string& partial) {
  char buffer[65536];
  for (;;) {
    ssize_t n = read(fd, buffer, sizeof(buffer));
    if (n > 0) {
      partial.append(buffer, static_cast<size_t>(n));
      if (partial.size() > (1 << 20)) return true;  // a very long line: flush what we have
      continue;
    }
    if (n == 0) return false;
    if (errno == EINTR) continue;
    return true;  // EAGAIN: nothing more now
  }
}

std::vector<std::string> ChildEnvironment(const LaunchOptions& options, int local_rank, int port,
                                          const std::string& run_id) {
  const int world = options.nproc_per_node * options.nnodes;
  const int rank = options.node_rank * options.nproc_per_node + local_rank;
  std::map<std::string, std::string> set = {
      {"RANK", absl::StrCat(rank)},
      {"LOCAL_RANK", absl::StrCat(local_rank)},
      {"WORLD_SIZE", absl::StrCat(world)},
      {"LOCAL_WORLD_SIZE", absl::StrCat(options.nproc_per_node)},
      {"GROUP_RANK", absl::StrCat(options.node_rank)},
      {"GROUP_WORLD_SIZE", absl::StrCat(options.nnodes)},
      {"ROLE_RANK", absl::StrCat(rank)},
      {"ROLE_WORLD_SIZE", absl::StrCat(world)},
      {"ROLE_NAME", "default"},
      {"MASTER_ADDR", options.master_addr},
      {"MASTER_PORT", absl::StrCat(port)},
      {"TORCHELASTIC_USE_AGENT_STORE", "True"},
      {"TORCHELASTIC_RUN_ID", run_id},
      {"TORCHELASTIC_RESTART_COUNT", "0"},
      {"TORCHELASTIC_MAX_RESTARTS", "0"},
  };
  const char* omp = std::getenv("OMP_NUM_THREADS");
  if (omp == nullptr || *omp == '\0') {
    set["OMP_NUM_THREADS"] = absl::StrCat(std::max(1, CpuCount() / options.nproc_per_node));
  }
  std::vector<std::string> env;
  for (char** e = environ; *e != nullptr; ++e) {
    absl::string_view entry(*e);
    absl::string_view name = entry.substr(0, entry.find('='));
    if (set.count(std::string(name)) == 0) env.emplace_back(entry);
  }
  for (const auto& [name, value] : set) env.push_back(absl::StrCat(name, "=", value));
  return env;
}

}  // namespace

absl::Status Validate(const LaunchOptions& options) {
  std::vector<std::string> errors;
  if (options.nproc_per_node < 1 || options.nproc_per_node > 1024) {
    errors.push_back(absl::StrCat("nproc_per_node: expected 1 to 1024, found ", options.nproc_per_node));
  }
  if (options.nnodes < 1) errors.push_back(absl::StrCat("nnodes: expected ≥ 1, found ", options.nnodes));
  if (options.node_rank < 0 || options.node_rank >= std::max(options.nnodes, 1)) {
    errors.push_back(absl::StrCat("node_rank: expected in [0, nnodes=", options.nnodes, "), found ",
                                  options.node_rank));
  }
  if (options.master_addr.empty()) errors.push_back("master_addr: empty");
  if (options.master_port < 0 || options.master_port > 65535) {
    errors.push_back(absl::StrCat("master_port: expected 0 to 65535, found ", options.master_port));
  }
  if (options.master_port == 0 && options.nnodes > 1) {
    errors.push_back("master_port: 0 (any free port) works on one node only; give the port every node uses");
  }
  if (!(options.stop_timeout_s >= 0)) {
    errors.push_back(absl::StrCat("stop_timeout_s: expected ≥ 0, found ", options.stop_timeout_s));
  }
  if (options.command.empty()) errors.push_back("command: empty (give it after --)");
  if (errors.empty()) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat("launch: ", absl::StrJoin(errors, "; ")));
}

absl::StatusOr<LaunchResult> Launch(const LaunchOptions& options) {
  if (absl::Status status = Validate(options); !status.ok()) return status;
  if (absl::Status status = CheckRunnable(options.command[0]); !status.ok()) return status;

  // The agent store: node 0 hosts it for the ranks of every node.
  LaunchResult result;
  result.master_port = options.master_port;
  c10::intrusive_ptr<c10d::TCPStore> store;
  if (options.node_rank == 0) {
    try {
      c10d::TCPStoreOptions store_options;
      store_options.port = static_cast<uint16_t>(options.master_port);
      store_options.isServer = true;
      store_options.waitWorkers = false;
      store_options.timeout = std::chrono::seconds(60);
      store = c10::make_intrusive<c10d::TCPStore>(options.master_addr, store_options);
      result.master_port = store->getPort();
    } catch (const std::exception& e) {
      return absl::UnavailableError(absl::StrCat(
          "launch: cannot host the rendezvous store on port ", options.master_port,
          " (in use? pick another with --master-port): ", detail::ExceptionText(e)));
    }
  }
  const std::string run_id = absl::StrCat("llmtrain-", getpid());

  // SIGINT, SIGTERM and SIGHUP (the terminal went away) are forwarded to the ranks.
  // Under nohup SIGHUP stays ignored. SIGPIPE is ignored while the launcher runs: a dead reader
  // of its output (a closed terminal, a killed `| tee`) must not kill it before it stops the ranks.
  struct sigaction action = {}, ignore = {}, old_int = {}, old_term = {}, old_hup = {}, old_pipe = {};
  action.sa_handler = OnSignal;
  sigemptyset(&action.sa_mask);
  ignore.sa_handler = SIG_IGN;
  sigemptyset(&ignore.sa_mask);
  g_signal.store(0);
  sigaction(SIGINT, &action, &old_int);
  sigaction(SIGTERM, &action, &old_term);
  sigaction(SIGHUP, nullptr, &old_hup);
  if (old_hup.sa_handler != SIG_IGN) sigaction(SIGHUP, &action, nullptr);
  sigaction(SIGPIPE, &ignore, &old_pipe);
  const auto restore_signals = [&] {
    sigaction(SIGINT, &old_int, nullptr);
    sigaction(SIGTERM, &old_term, nullptr);
    sigaction(SIGHUP, &old_hup, nullptr);
    sigaction(SIGPIPE, &old_pipe, nullptr);
  };
  const pid_t launcher = getpid();

  std::vector<Child> children(static_cast<size_t>(options.nproc_per_node));
  std::vector<char*> argv;
  for (const std::string& arg : options.command) argv.push_back(const_cast<char*>(arg.c_str()));
  argv.push_back(nullptr);
  // A rank that cannot be started leaves none behind: those already running are killed.
  const auto fail_start = [&](const std::string& what, int error) {
    for (Child& c : children) {
      if (c.pid <= 0) continue;
      kill(-c.pid, SIGKILL);
      while (waitpid(c.pid, nullptr, 0) < 0 && errno == EINTR) {
      }
      for (int fd : {c.out_fd, c.err_fd}) {
        if (fd >= 0) close(fd);
      }
    }
    restore_signals();
    return absl::InternalError(absl::StrCat("launch: ", what, ": ", std::strerror(error)));
  };
  for (int local = 0; local < options.nproc_per_node; ++local) {
    Child& child = children[static_cast<size_t>(local)];
    child.local_rank = local;
    child.rank = options.node_rank * options.nproc_per_node + local;
    std::vector<std::string> env = ChildEnvironment(options, local, result.master_port, run_id);
    std::vector<char*> envp;
    for (std::string& entry : env) envp.push_back(entry.data());
    envp.push_back(nullptr);
    int out_pipe[2] = {-1, -1}, err_pipe[2] = {-1, -1};
    const auto close_pipes = [&] {
      for (int fd : {out_pipe[0], out_pipe[1], err_pipe[0], err_pipe[1]}) {
        if (fd >= 0) close(fd);
      }
    };
    if (options.prefix_output && (pipe2(out_pipe, O_CLOEXEC) != 0 || pipe2(err_pipe, O_CLOEXEC) != 0)) {
      const int error = errno;
      close_pipes();
      return fail_start("pipe", error);
    }
    fflush(stdout);
    fflush(stderr);
    const pid_t pid = fork();
    if (pid < 0) {
      const int error = errno;
      close_pipes();
      return fail_start("fork", error);
    }
    if (pid == 0) {
      setpgid(0, 0);  // its own group: the launcher signals a rank and whatever it started
      signal(SIGINT, SIG_DFL);
      signal(SIGTERM, SIG_DFL);
      if (old_hup.sa_handler != SIG_IGN) signal(SIGHUP, SIG_DFL);
      // Writes to the launcher's pipes fail with EPIPE once it is gone, instead of killing the
      // rank before it has written its checkpoint.
      signal(SIGPIPE, SIG_IGN);
      // A launcher killed outright (SIGKILL, OOM) cannot forward anything: its death sends the
      // rank SIGTERM, which stops it after its step with a checkpoint.
      prctl(PR_SET_PDEATHSIG, SIGTERM);
      if (getppid() != launcher) _exit(128 + SIGTERM);  // it died before prctl
      if (options.prefix_output) {
        dup2(out_pipe[1], STDOUT_FILENO);
        dup2(err_pipe[1], STDERR_FILENO);
      }
      execvpe(argv[0], argv.data(), envp.data());
      const std::string message = absl::StrCat("launch: exec ", argv[0], ": ", std::strerror(errno), "\n");
      WriteAll(STDERR_FILENO, message);
      _exit(127);
    }
    setpgid(pid, pid);
    child.pid = pid;
    child.exit.rank = child.rank;
    child.exit.pid = pid;
    if (options.prefix_output) {
      close(out_pipe[1]);
      close(err_pipe[1]);
      child.out_fd = out_pipe[0];
      child.err_fd = err_pipe[0];
      fcntl(child.out_fd, F_SETFL, O_NONBLOCK);
      fcntl(child.err_fd, F_SETFL, O_NONBLOCK);
    }
  }

  using Clock = std::chrono::steady_clock;
  std::optional<Clock::time_point> kill_at;  // set once stopping begins
  bool killed = false;
  int forwarded = 0;
  int running = options.nproc_per_node;
  auto stop_others = [&](int signo) {
    for (Child& c : children) {
      if (c.running) {
        kill(-c.pid, signo);
        c.exit.stopped_by_launcher = true;
      }
    }
    if (!kill_at) {
      kill_at = Clock::now() + std::chrono::milliseconds(static_cast<int64_t>(options.stop_timeout_s * 1000));
    }
  };

  while (running > 0 || std::any_of(children.begin(), children.end(),
                                     [](const Child& c) { return c.out_fd >= 0 || c.err_fd >= 0; })) {
    std::vector<pollfd> fds;
    std::vector<std::pair<Child*, bool>> owners;  // (child, is_stderr)
    for (Child& c : children) {
      if (c.out_fd >= 0) { fds.push_back({c.out_fd, POLLIN, 0}); owners.push_back({&c, false}); }
      if (c.err_fd >= 0) { fds.push_back({c.err_fd, POLLIN, 0}); owners.push_back({&c, true}); }
    }
    if (!fds.empty()) {
      poll(fds.data(), fds.size(), 50);
    } else {
      usleep(50 * 1000);
    }
    for (size_t i = 0; i < fds.size(); ++i) {
      if (fds[i].revents == 0) continue;
      Child& c = *owners[i].first;
      const bool is_err = owners[i].second;
      int& fd = is_err ? c.err_fd : c.out_fd;
      std::string& partial = is_err ? c.err_partial : c.out_partial;
      const bool open = Drain(fd, partial);
      Flush(partial, is_err ? STDERR_FILENO : STDOUT_FILENO, absl::StrCat("[rank ", c.rank, "] "), !open);
      if (!open) {
        close(fd);
        fd = -1;
      }
    }
    // Reap.
    for (;;) {
      int status = 0;
      const pid_t pid = waitpid(-1, &status, WNOHANG);
      if (pid <= 0) break;
      for (Child& c : children) {
        if (c.pid != pid || !c.running) continue;
        c.running = false;
        --running;
        if (WIFSIGNALED(status)) {
          c.exit.signal = WTERMSIG(status);
          c.exit.exit_code = 128 + c.exit.signal;
        } else {
          c.exit.exit_code = WEXITSTATUS(status);
        }
        const bool failed = c.exit.exit_code != 0;
        if (failed && !c.exit.stopped_by_launcher && result.exit_code == 0) {
          result.exit_code = c.exit.exit_code;
        }
        if (failed && !kill_at) stop_others(SIGTERM);
      }
    }
    if (const int signo = g_signal.exchange(0); signo != 0) {
      // The first signal is forwarded and the ranks get the time they need to stop after their
      // step with a checkpoint (a step of a large model can take minutes); a second one ends
      // them after stop_timeout_s.
      // SIGHUP reaches the ranks as SIGTERM, which the trainer turns into a checkpoint and a stop.
      const int to_ranks = signo == SIGHUP ? SIGTERM : signo;
      for (Child& c : children) {
        if (c.running) kill(-c.pid, to_ranks);
      }
      if (forwarded != 0 && !kill_at) {
        kill_at = Clock::now() + std::chrono::milliseconds(static_cast<int64_t>(options.stop_timeout_s * 1000));
      }
      forwarded = signo;
    }
    if (kill_at && !killed && Clock::now() >= *kill_at && running > 0) {
      stop_others(SIGKILL);
      killed = true;
    }
    // A rank that is gone may leave a grandchild holding its pipes: stop reading them after the
    // kill deadline.
    if (running == 0 && kill_at && killed) {
      for (Child& c : children) {
        for (int* fd : {&c.out_fd, &c.err_fd}) {
          if (*fd >= 0) close(*fd), *fd = -1;
        }
      }
    }
  }
  restore_signals();

  std::vector<std::string> lines;
  for (const Child& c : children) {
    result.ranks.push_back(c.exit);
    if (c.exit.exit_code == 0) continue;
    std::string how = c.exit.signal != 0 ? absl::StrCat("was killed by ", SignalName(c.exit.signal))
                                         : absl::StrCat("exited with status ", c.exit.exit_code);
    if (c.exit.stopped_by_launcher) absl::StrAppend(&how, " (stopped by the launcher)");
    lines.push_back(absl::StrCat("rank ", c.rank, " (pid ", c.pid, ") ", how));
  }
  if (forwarded != 0 && result.exit_code == 0) {
    for (const Child& c : children) {
      if (c.exit.exit_code != 0) result.exit_code = c.exit.exit_code;
    }
    lines.insert(lines.begin(), absl::StrCat("the launcher got ", SignalName(forwarded),
                                             " and forwarded it to every rank"));
  }
  if (result.exit_code == 0) {
    for (const Child& c : children) {
      if (c.exit.exit_code != 0) result.exit_code = c.exit.exit_code;  // all stopped by the launcher
    }
  }
  result.report = absl::StrJoin(lines, "\n");
  return result;
}

}  // namespace llmtrain::dist
