// Subcommands of the `llmtrain` tool. Each takes the arguments after its name and returns the
// process exit code: 0 on success, 1 on a runtime error, 2 on a usage error.
#pragma once

#include <string>
#include <vector>

namespace llmtrain::cli {

int RunInspect(const std::vector<std::string>& args);
int RunConvert(const std::vector<std::string>& args);
int RunForward(const std::vector<std::string>& args);
int RunGenerate(const std::vector<std::string>& args);
int RunTokenize(const std::vector<std::string>& args);
int RunDataCheck(const std::vector<std::string>& args);
int RunMakeDefaultDataset(const std::vector<std::string>& args);

/// Prints "llmtrain <command>: <message>" to stderr and returns `code`.
int Fail(const std::string& command, const std::string& message, int code = 1);

}  // namespace llmtrain::cli
