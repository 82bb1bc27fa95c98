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
/// test is skipped with a loud warning, except under CI (CI=true), where it fails.
bool ReferenceStackAvailable();

/// Path of the `llmtrain` CLI in build/bin.
std::string CliPath();

/// A fresh, empty directory under the build tree for one test's files.
std::string TempDir(const std::string& name);

/// Single-quotes `s` for /bin/sh.
std::string ShellQuote(const std::string& s);

}  // namespace llmtrain::testing
