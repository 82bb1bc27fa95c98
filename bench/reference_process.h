// A benchmark's reference side (a Python script of bench/) as a child process that keeps its
// model or layer loaded: one command per line on its stdin, one JSON line back on its stdout. The
// two sides alternate round by round, so the machine's drift between minutes hits both alike.
#pragma once

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
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


}  // namespace llmtrain::bench
