// The metrics writers (train/metrics.h).
#include "llmtrain/train/metrics.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "llmtrain/core/atomic_file.h"
#include "llmtrain/core/log.h"
#include "llmtrain/core/status.h"
#include "llmtrain/train/report.h"
#include "llmtrain/train/tensorboard.h"
#include "nlohmann/json.hpp"

namespace llmtrain::train {
namespace {

class JsonlWriter final : public MetricsWriter {
 public:
  explicit JsonlWriter(std::string path) : path_(std::move(path)) {}

  absl::Status Begin(std::optional<int64_t> resumed_at) override {
    if (!resumed_at) {
      // A fresh run starts a fresh file (an absent one is fine).
      if (std::remove(path_.c_str()) != 0 && errno != ENOENT) {
        return absl::InternalError(absl::StrCat(path_, ": cannot remove the previous run's metrics: ", std::strerror(errno)));
      }
      return absl::OkStatus();
    }
    // Keep what the checkpoint had seen, so the file ends as an uninterrupted run's.
    auto old = ReadFileToString(path_);
    if (!old.ok()) return absl::OkStatus();  // nothing written before the checkpoint's step
    std::string kept;
    std::istringstream lines(*old);
    for (std::string line; std::getline(lines, line);) {
      const nlohmann::json j = nlohmann::json::parse(line, nullptr, false);
      if (j.is_object() && j.value("step", int64_t{0}) <= *resumed_at) kept += line + "\n";
    }
    return WriteFileAtomically(path_, kept);
  }

  absl::Status WriteStep(const StepMetrics& m) override {
    nlohmann::json line = {{"type", "train"},         {"step", m.step},
                           {"loss", m.loss},          {"lr", m.lr},
                           {"grad_norm", m.grad_norm}, {"target_tokens", m.target_tokens},
                           {"tokens_per_second", m.tokens_per_second}, {"peak_rss_mib", m.peak_rss_mib},
                           {"skipped", m.skipped}};
    if (m.skipped) line["nonfinite_where"] = m.nonfinite_where;
    return Append(line);
  }

  absl::Status WriteEval(const EvalMetrics& e) override {
    nlohmann::json samples = nlohmann::json::array();
    for (const EvalSample& sample : e.samples) {
      nlohmann::json one = {{"prompt", sample.prompt}, {"output", sample.output}};
      if (!sample.image.empty()) one["image"] = sample.image;
      samples.push_back(std::move(one));
    }
    nlohmann::json line = {{"type", "eval"},
                           {"step", e.step},
                           {"eval_loss", e.loss},
                           {"eval_perplexity", e.perplexity},
                           {"samples", samples}};
    if (!e.scores.empty()) {
      nlohmann::json scores = nlohmann::json::object();
      for (const auto& [name, value] : e.scores) scores[name] = value;
      line["metrics"] = scores;
    }
    if (!e.compare_base.empty()) {
      nlohmann::json rows = nlohmann::json::array();
      for (const BaseComparison& c : e.compare_base) {
        rows.push_back({{"metric", c.metric},
                        {"base", c.base},
                        {"adapter", c.adapter},
                        {"difference", c.difference},
                        {"ci95_low", c.low},
                        {"ci95_high", c.high},
                        {"units", c.units}});
      }
      line["compare_base"] = rows;
    }
    return Append(line);
  }

 private:
  absl::Status Append(const nlohmann::json& line) {
    std::FILE* f = std::fopen(path_.c_str(), "a");
    if (f == nullptr) return absl::InternalError(absl::StrCat(path_, ": cannot open for appending: ", std::strerror(errno)));
    const std::string text = line.dump() + "\n";
    const bool written = std::fwrite(text.data(), 1, text.size(), f) == text.size();
    const bool closed = std::fclose(f) == 0;
    if (!written || !closed) return absl::InternalError(absl::StrCat(path_, ": write failed: ", std::strerror(errno)));
    return absl::OkStatus();
  }

  std::string path_;
};

class TensorBoardMetrics final : public MetricsWriter {
 public:
  explicit TensorBoardMetrics(std::unique_ptr<TensorBoardWriter> writer) : writer_(std::move(writer)) {}
  absl::Status Begin(std::optional<int64_t>) override { return absl::OkStatus(); }
  absl::Status WriteStep(const StepMetrics& m) override {
    return Scalars({{"train/loss", m.loss}, {"train/lr", m.lr}, {"train/grad_norm", m.grad_norm},
                    {"train/tokens_per_second", m.tokens_per_second}}, m.step);
  }
  absl::Status WriteEval(const EvalMetrics& e) override {
    LLMTRAIN_RETURN_IF_ERROR(Scalars({{"eval/loss", e.loss}, {"eval/perplexity", e.perplexity}}, e.step));
    for (const auto& [name, value] : e.scores) {
      LLMTRAIN_RETURN_IF_ERROR(writer_->AddScalar(absl::StrCat("eval/", name), value, e.step));
    }
    return absl::OkStatus();
  }

 private:
  absl::Status Scalars(const std::vector<std::pair<const char*, double>>& values, int64_t step) {
    for (const auto& [tag, v] : values) LLMTRAIN_RETURN_IF_ERROR(writer_->AddScalar(tag, v, step));
    return absl::OkStatus();
  }
  std::unique_ptr<TensorBoardWriter> writer_;
};

class ReportWriter final : public MetricsWriter {
 public:
  explicit ReportWriter(std::string dir) : dir_(std::move(dir)) {}
  absl::Status Begin(std::optional<int64_t>) override { return absl::OkStatus(); }
  absl::Status WriteStep(const StepMetrics&) override { return absl::OkStatus(); }
  absl::Status WriteEval(const EvalMetrics&) override { return absl::OkStatus(); }
  absl::Status End() override {
    LLMTRAIN_ASSIGN_OR_RETURN(std::string path, WriteRunReport(dir_));
    LogInfo(absl::StrCat("report: ", path));
    return absl::OkStatus();
  }

 private:
  std::string dir_;
};

}  // namespace

std::unique_ptr<MetricsWriter> MakeJsonlMetricsWriter(absl::string_view path) {
  return std::make_unique<JsonlWriter>(std::string(path));
}

absl::StatusOr<std::unique_ptr<MetricsWriter>> MakeTensorBoardMetricsWriter(absl::string_view dir) {
  LLMTRAIN_ASSIGN_OR_RETURN(auto writer, TensorBoardWriter::Open(dir));
  return std::unique_ptr<MetricsWriter>(std::make_unique<TensorBoardMetrics>(std::move(writer)));
}

std::unique_ptr<MetricsWriter> MakeReportWriter(absl::string_view run_dir) {
  return std::make_unique<ReportWriter>(std::string(run_dir));
}

}  // namespace llmtrain::train
