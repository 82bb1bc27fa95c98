// Helpers for tests that compare with the Python reference stack (.venv) at test time.
#pragma once

#include <string>
#include <vector>

namespace llmtrain::testing {

/// Result of one subprocess: exit code and what it printed on stdout (stderr is passed through).
struct CommandResult {
  int exit_code = -1;
  std::string out;
};

/// Runs a command line through /bin/sh and captures stdout.
CommandResult RunCommand(const std::string& command);

/// Runs tests/reference/<script> with the .venv Python and `args` (each shell-quoted).
CommandResult RunReference(const std::string& script, const std::vector<std::string>& args);

/// True when the .venv Python with the reference stack is present. When it is not, the calling
/// test records a Skip (and should return), except under CI (CI=true), where it fails.
bool ReferenceStackAvailable();

/// Records that the running test case skips its work, or part of it, for `reason`: a Catch2
/// warning in its output now, and a line at the end of the run that names every skipped test
/// case with its reasons (tests/testing/main.cpp), so that a skip is never counted as a pass
/// without saying so. The caller returns after it.
///   if (!at::hasCUDA()) return testing::Skip("no CUDA device: the CUDA path was not run");
void Skip(const std::string& reason);

namespace detail {
/// The closing line of a test binary: "skipped: 0 test cases in <binary>", or
/// "skipped: N test case(s) in <binary>: \"<test case>\" (<reason>); …" in the order the skips
/// happened, each test case once (with all its distinct reasons).
std::string SkipSummary(const std::string& binary);
}  // namespace detail

/// Path of the `llmtrain` CLI in build/bin.
std::string CliPath();

/// A fresh, empty directory under the build tree for one test's files.
std::string TempDir(const std::string& name);

/// Single-quotes `s` for /bin/sh.
std::string ShellQuote(const std::string& s);

}  // namespace llmtrain::testing
