// llmtrain spec --print-defaults
// llmtrain spec --check FILE [--set path=value ...]
// Prints the complete commented default spec, or validates a spec (every error at once) and
// prints it resolved (overrides applied, defaults filled).
#include <cstdio>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "llmtrain/commands.h"
#include "llmtrain/spec/run_spec.h"

namespace llmtrain::cli {
namespace {

constexpr char kHelp[] =
    "usage: llmtrain spec --print-defaults\n"
    "       llmtrain spec --check FILE [--set path.to.field=value ...]\n"
    "  --print-defaults: every field of a run spec with its default and its meaning (text proto).\n"
    "  --check: validates FILE (text proto or JSON) without loading the model, reports every error\n"
    "  with its field, and prints the resolved spec; exit 1 if it is invalid.\n";

}  // namespace

int RunSpecCommand(const std::vector<std::string>& args) {
  std::string file;
  std::vector<std::string> overrides;
  bool defaults = false;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "--help" || a == "-h") {
      std::fputs(kHelp, stdout);
      return 0;
    }
    if (a == "--print-defaults") {
      defaults = true;
      continue;
    }
    if (i + 1 >= args.size()) return Fail("spec", absl::StrCat(a, " needs a value\n", kHelp), 2);
    if (a == "--check") {
      file = args[++i];
    } else if (a == "--set") {
      overrides.push_back(args[++i]);
    } else {
      return Fail("spec", absl::StrCat("unknown option ", a, "\n", kHelp), 2);
    }
  }
  if (defaults) {
    std::fputs(spec::DefaultSpecText().c_str(), stdout);
    return 0;
  }
  if (file.empty()) return Fail("spec", absl::StrCat("give --print-defaults or --check FILE\n", kHelp), 2);
  auto run = spec::LoadRunSpec(file, overrides);
  if (!run.ok()) return Fail("spec", std::string(run.status().message()));
  if (absl::Status valid = spec::ValidateRunSpec(*run); !valid.ok()) return Fail("spec", std::string(valid.message()));
  std::fputs(spec::SpecToText(*run).c_str(), stdout);
  return 0;
}

}  // namespace llmtrain::cli
