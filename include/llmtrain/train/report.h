// One self-contained HTML page per run (`llmtrain report RUN_DIR`): plots of train loss, eval loss,
// learning rate and throughput as inline SVG, the spec, the eval samples and the data summary. No
// scripts, no external files: it opens from disk in any browser.
//
//   LLMTRAIN_ASSIGN_OR_RETURN(std::string path, train::WriteRunReport("build/runs/gemma3-270m-qlora"));
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace llmtrain::train {

/// The page's HTML from a run folder's metrics.jsonl, spec.textproto and data_summary.txt.
absl::StatusOr<std::string> RunReportHtml(absl::string_view run_dir);

/// `text` with <, >, & and " as HTML entities, for text and attribute values of a page.
std::string HtmlEscape(absl::string_view text);

/// Writes RunReportHtml to run_dir/report.html (atomically) and returns that path.
absl::StatusOr<std::string> WriteRunReport(absl::string_view run_dir);

}  // namespace llmtrain::train
