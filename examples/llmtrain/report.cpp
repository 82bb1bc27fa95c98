// llmtrain report RUN_DIR
// Writes RUN_DIR/report.html: one self-contained page with the loss, eval-loss, lr and throughput
// plots (inline SVG), the eval samples, the data summary and the spec.
#include <cstdio>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "llmtrain/commands.h"
#include "llmtrain/train/report.h"

namespace llmtrain::cli {

int RunReport(const std::vector<std::string>& args) {
  if (args.size() == 1 && (args[0] == "--help" || args[0] == "-h")) {
    std::fputs("usage: llmtrain report RUN_DIR\n  writes RUN_DIR/report.html (plots, samples, data summary, spec)\n", stdout);
    return 0;
  }
  if (args.size() != 1) return Fail("report", "usage: llmtrain report RUN_DIR", 2);
  auto path = train::WriteRunReport(args[0]);
  if (!path.ok()) return Fail("report", std::string(path.status().message()));
  std::printf("report: %s\n", path->c_str());
  return 0;
}

}  // namespace llmtrain::cli
