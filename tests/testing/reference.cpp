#include "testing/reference.h"

#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdio>
#include <cstdlib>
#include <utility>

namespace llmtrain::testing {
namespace {

// The skips of this run: test case name → its distinct reasons, in the order they happened.
// Catch2 runs test cases on one thread, and so does Skip (a WARN is not thread-safe either).
using SkipLog = std::vector<std::pair<std::string, std::vector<std::string>>>;

SkipLog& Skips() {
  static SkipLog log;
  return log;
}

}  // namespace

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
    Skip("the reference stack (" LLMTRAIN_PYTHON ") is missing; run scripts/bootstrap");
  }
  return available;
}

void Skip(const std::string& reason) {
  WARN("SKIPPED: " << reason);
  const std::string test_case = Catch::getResultCapture().getCurrentTestName();
  SkipLog& log = Skips();
  for (auto& [name, reasons] : log) {
    if (name != test_case) continue;
    for (const std::string& r : reasons) {
      if (r == reason) return;  // the same test case again (each SECTION path reruns it)
    }
    reasons.push_back(reason);
    return;
  }
  log.push_back({test_case, {reason}});
}

namespace detail {

std::string SkipSummary(const std::string& binary) {
  const SkipLog& log = Skips();
  const size_t n = log.size();
  std::string line = "skipped: " + std::to_string(n) + (n == 1 ? " test case" : " test cases") + " in " + binary;
  for (size_t i = 0; i < n; ++i) {
    line += i == 0 ? ": " : "; ";
    line += "\"" + log[i].first + "\" (";
    for (size_t k = 0; k < log[i].second.size(); ++k) line += (k ? ", " : "") + log[i].second[k];
    line += ")";
  }
  return line;
}

}  // namespace detail

CommandResult RunReference(const std::string& script, const std::vector<std::string>& args) {
  std::string command = ShellQuote(LLMTRAIN_PYTHON) + " " +
                        ShellQuote(std::string(LLMTRAIN_SOURCE_DIR) + "/tests/reference/" + script);
  for (const std::string& a : args) command += " " + ShellQuote(a);
  return RunCommand(command);
}

std::string CliPath() { return std::string(LLMTRAIN_BINARY_DIR) + "/bin/llmtrain"; }

std::string TempDir(const std::string& name) {
  // LLMTRAIN_TEST_TMP moves them (scripts/device-check runs the tests away from their build).
  const char* tmp = std::getenv("LLMTRAIN_TEST_TMP");
  const std::string base = tmp != nullptr && *tmp != '\0' ? std::string(tmp) : std::string(LLMTRAIN_BINARY_DIR) + "/test_tmp";
  ::mkdir(base.c_str(), 0755);
  const std::string dir = base + "/" + name + "." + std::to_string(::getpid());
  RunCommand("rm -rf " + ShellQuote(dir));
  ::mkdir(dir.c_str(), 0755);
  return dir;
}

}  // namespace llmtrain::testing
