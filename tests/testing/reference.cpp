#include "testing/reference.h"

#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdio>
#include <cstdlib>

namespace llmtrain::testing {

std::string ShellQuote(const std::string& s) {
  std::string out = "'";
  for (char c : s) {
    if (c == '\'') {
      out += "'\\''";
    } else {
      out += c;
    }
  }
  return out + "'";
}

CommandResult RunCommand(const std::string& command) {
  CommandResult result;
  FILE* pipe = ::popen(command.c_str(), "r");
  if (pipe == nullptr) return result;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), pipe)) > 0) result.out.append(buf, n);
  const int status = ::pclose(pipe);
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return result;
}

bool ReferenceStackAvailable() {
  static const bool available = ::access(LLMTRAIN_PYTHON, X_OK) == 0;
  if (!available) {
    const char* ci = std::getenv("CI");
    if (ci != nullptr && std::string(ci) == "true") {
      FAIL("the reference stack (" LLMTRAIN_PYTHON ") is missing under CI: run scripts/bootstrap");
    }
    WARN("SKIPPED: the reference stack (" LLMTRAIN_PYTHON ") is missing; run scripts/bootstrap");
  }
  return available;
}

CommandResult RunReference(const std::string& script, const std::vector<std::string>& args) {
  std::string command = ShellQuote(LLMTRAIN_PYTHON) + " " +
                        ShellQuote(std::string(LLMTRAIN_SOURCE_DIR) + "/tests/reference/" + script);
  for (const std::string& a : args) command += " " + ShellQuote(a);
  return RunCommand(command);
}

std::string CliPath() { return std::string(LLMTRAIN_BINARY_DIR) + "/bin/llmtrain"; }

std::string TempDir(const std::string& name) {
  const std::string base = std::string(LLMTRAIN_BINARY_DIR) + "/test_tmp";
  ::mkdir(base.c_str(), 0755);
  const std::string dir = base + "/" + name + "." + std::to_string(::getpid());
  RunCommand("rm -rf " + ShellQuote(dir));
  ::mkdir(dir.c_str(), 0755);
  return dir;
}

}  // namespace llmtrain::testing
