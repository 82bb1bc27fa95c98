// A benchmark's reference side (a Python script of bench/) as a child process that keeps its
// model or layer loaded: one command per line on its stdin, one JSON line back on its stdout. The
// two sides alternate round by round, so the machine's drift between minutes hits both alike.
// Its first line, {"ready": true, ...}, also states the threads it computes on (torch_threads,
// rayon_threads, ...), and each bench prints them beside ours.
#pragma once

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <functional>
#include <utility>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "nlohmann/json.hpp"

namespace llmtrain::bench {

/// The median of per-round timings (0 for none): what every benchmark here compares.
inline double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}

/// Median seconds of a() and of b(), measured alternately (one of each per round, after a
/// warm-up of each), so the machine's drift between seconds hits both alike.
inline std::pair<double, double> TimePair(int64_t rounds, const std::function<void()>& a,
                                          const std::function<void()>& b) {
  a();
  b();
  std::vector<double> ta, tb;
  for (int64_t r = 0; r < rounds; ++r) {
    for (int side = 0; side < 2; ++side) {
      const auto start = std::chrono::steady_clock::now();
      (side == 0 ? a : b)();
      (side == 0 ? ta : tb).push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    }
  }
  return {Median(ta), Median(tb)};
}

class ReferenceProcess;

/// Our step against the reference's: `ours` runs once to warm up, then each round times one call of
/// it here and asks the reference for one `command` (its reply's "s", seconds), so the machine's
/// drift hits both alike. Without a reference (null) only ours runs. Returns both series.
std::pair<std::vector<double>, std::vector<double>> TimeAgainstReference(int64_t rounds,
                                                                          const std::function<void()>& ours,
                                                                          ReferenceProcess* reference,
                                                                          const std::string& command);

class ReferenceProcess {
 public:
  bool Start(const std::vector<std::string>& argv) {
    int to_child[2], from_child[2];
    if (::pipe(to_child) != 0 || ::pipe(from_child) != 0) return false;
    pid_ = ::fork();
    if (pid_ < 0) return false;
    if (pid_ == 0) {
      ::dup2(to_child[0], 0);
      ::dup2(from_child[1], 1);
      for (int fd : {to_child[0], to_child[1], from_child[0], from_child[1]}) ::close(fd);
      if (const int null = ::open("/dev/null", O_WRONLY); null >= 0) ::dup2(null, 2);  // progress bars
      std::vector<char*> args;
      for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
      args.push_back(nullptr);
      ::execv(args[0], args.data());
      ::_exit(127);
    }
    ::close(to_child[0]);
    ::close(from_child[1]);
    in_ = ::fdopen(to_child[1], "w");
    out_ = ::fdopen(from_child[0], "r");
    return in_ != nullptr && out_ != nullptr;
  }
  // Sends a command (empty: none) and returns the parsed reply (discarded on error).
  nlohmann::json Ask(const std::string& command) {
    if (!command.empty()) {
      std::fprintf(in_, "%s\n", command.c_str());
      std::fflush(in_);
    }
    char* line = nullptr;
    size_t capacity = 0;
    const ssize_t n = ::getline(&line, &capacity, out_);
    nlohmann::json reply = n > 0 ? nlohmann::json::parse(line, line + n, nullptr, false) : nlohmann::json();
    std::free(line);
    return reply;
  }
  ~ReferenceProcess() {
    if (in_ != nullptr) std::fclose(in_);
    if (out_ != nullptr) std::fclose(out_);
    if (pid_ > 0) ::waitpid(pid_, nullptr, 0);
  }

 private:
  pid_t pid_ = -1;
  FILE* in_ = nullptr;
  FILE* out_ = nullptr;
};


inline std::pair<std::vector<double>, std::vector<double>> TimeAgainstReference(int64_t rounds,
                                                                                 const std::function<void()>& ours,
                                                                                 ReferenceProcess* reference,
                                                                                 const std::string& command) {
  ours();
  std::vector<double> mine, theirs;
  for (int64_t r = 0; r < rounds; ++r) {
    const auto start = std::chrono::steady_clock::now();
    ours();
    mine.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    if (reference != nullptr) {
      const nlohmann::json reply = reference->Ask(command);
      theirs.push_back(reply.is_object() ? reply.value("s", 0.0) : 0.0);
    }
  }
  return {mine, theirs};
}

}  // namespace llmtrain::bench
