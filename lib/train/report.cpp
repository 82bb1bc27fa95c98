// The run report (train/report.h).
#include "llmtrain/train/report.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <optional>
#include <sstream>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "llmtrain/core/atomic_file.h"
#include "llmtrain/data/image.h"
#include "nlohmann/json.hpp"

namespace llmtrain::train {
namespace {

std::string Escape(absl::string_view text) { return HtmlEscape(text); }

// A line plot of (x, y) points as inline SVG, with its range labelled.
std::string Plot(const std::string& title, const std::vector<std::pair<double, double>>& points) {
  if (points.empty()) return absl::StrCat("<h3>", Escape(title), "</h3><p>(no data)</p>");
  const int w = 560, h = 200, pad = 40;
  double x0 = points.front().first, x1 = x0, y0 = points.front().second, y1 = y0;
  for (const auto& [x, y] : points) {
    x0 = std::min(x0, x);
    x1 = std::max(x1, x);
    y0 = std::min(y0, y);
    y1 = std::max(y1, y);
  }
  if (x1 == x0) x1 = x0 + 1;
  if (y1 == y0) y1 = y0 + 1;
  std::string poly;
  for (const auto& [x, y] : points) {
    absl::StrAppendFormat(&poly, "%.1f,%.1f ", pad + (x - x0) / (x1 - x0) * (w - 2 * pad),
                          h - pad - (y - y0) / (y1 - y0) * (h - 2 * pad));
  }
  return absl::StrFormat(
      "<h3>%s</h3><svg width=\"%d\" height=\"%d\" role=\"img\" aria-label=\"%s\">"
      "<rect x=\"0\" y=\"0\" width=\"%d\" height=\"%d\" fill=\"#fafafa\" stroke=\"#ccc\"/>"
      "<polyline fill=\"none\" stroke=\"#1f6feb\" stroke-width=\"2\" points=\"%s\"/>"
      "<text x=\"4\" y=\"14\" font-size=\"11\">%.4g</text><text x=\"4\" y=\"%d\" font-size=\"11\">%.4g</text>"
      "<text x=\"%d\" y=\"%d\" font-size=\"11\">step %g</text><text x=\"%d\" y=\"%d\" font-size=\"11\" "
      "text-anchor=\"end\">step %g</text></svg>",
      Escape(title), w, h, Escape(title), w, h, poly, y1, h - pad + 4, y0, pad, h - 6, x0, w - pad, h - 6, x1);
}

// An image sample's picture as an inline PNG thumbnail (longer side 128 pixels, Pillow's bilinear
// resize), above its file name; the name alone when the file cannot be read now.
std::string ImageCell(const std::string& path, std::map<std::string, std::string>* cache) {
  auto [it, inserted] = cache->try_emplace(path);
  if (inserted) {
    std::string cell;
    if (auto image = data::LoadImage(path); image.ok()) {
      const int64_t side = std::max(image->width, image->height);
      const double scale = side > 128 ? 128.0 / static_cast<double>(side) : 1.0;
      const data::RgbImage thumb = data::ResizeBilinear(
          *image, std::max<int64_t>(1, std::llround(static_cast<double>(image->width) * scale)),
          std::max<int64_t>(1, std::llround(static_cast<double>(image->height) * scale)));
      if (auto png = data::EncodePng(thumb); png.ok()) {
        cell = absl::StrCat("<img alt=\"\" src=\"data:image/png;base64,", absl::Base64Escape(*png), "\"><br>");
      }
    }
    it->second = absl::StrCat(cell, "<code>", Escape(path), "</code><br>");
  }
  return it->second;
}

}  // namespace

absl::StatusOr<std::string> RunReportHtml(absl::string_view dir_view) {
  const std::string dir(dir_view);
  auto metrics = ReadFileToString(dir + "/metrics.jsonl");
  if (!metrics.ok()) return metrics.status();
  std::vector<std::pair<double, double>> loss, eval_loss, lr, tps;
  std::string samples;
  std::map<std::string, std::string> thumbnails;  // image path → its cell
  // The eval metrics over steps (in the order they first appear) and the last comparison with
  // the base model.
  std::vector<std::pair<std::string, std::vector<std::pair<double, double>>>> scores;
  std::string comparison;
  std::istringstream lines(*metrics);
  int64_t line_no = 0;
  for (std::string line; std::getline(lines, line);) {
    ++line_no;
    const nlohmann::json j = nlohmann::json::parse(line, nullptr, false);
    if (!j.is_object()) {
      return absl::InvalidArgumentError(absl::StrCat(dir, "/metrics.jsonl:", line_no, ": not a JSON object"));
    }
    // A skipped step's loss is NaN, which JSON writes as null: such points are left out of the
    // plots, as are values of the wrong type in a hand-edited file.
    const auto number = [&j](const char* key) -> std::optional<double> {
      const auto it = j.find(key);
      if (it == j.end() || !it->is_number() || !std::isfinite(it->get<double>())) return std::nullopt;
      return it->get<double>();
    };
    const auto text = [](const nlohmann::json& o, const char* key) {
      const auto it = o.find(key);
      return it != o.end() && it->is_string() ? it->get<std::string>() : std::string();
    };
    const std::optional<double> step = number("step");
    if (!step) continue;
    const auto add = [&](std::vector<std::pair<double, double>>* series, const char* key) {
      if (const std::optional<double> v = number(key)) series->emplace_back(*step, *v);
    };
    if (text(j, "type") == "train") {
      add(&loss, "loss");
      add(&lr, "lr");
      add(&tps, "tokens_per_second");
    } else if (text(j, "type") == "eval") {
      add(&eval_loss, "eval_loss");
      if (j.contains("metrics") && j["metrics"].is_object()) {
        for (const auto& item : j["metrics"].items()) {
          const std::string name = item.key();
          const nlohmann::json& value = item.value();
          if (!value.is_number() || !std::isfinite(value.get<double>())) continue;
          auto series = std::find_if(scores.begin(), scores.end(), [&](const auto& s) { return s.first == name; });
          if (series == scores.end()) series = scores.insert(scores.end(), {name, {}});
          series->second.emplace_back(*step, value.get<double>());
        }
      }
      if (j.contains("compare_base") && j["compare_base"].is_array()) {
        comparison.clear();
        for (const auto& row : j["compare_base"]) {
          if (!row.is_object()) continue;
          const auto num = [&row](const char* key) {
            const auto it = row.find(key);
            return it != row.end() && it->is_number() ? it->get<double>() : std::nan("");
          };
          const double low = num("ci95_low"), high = num("ci95_high");
          absl::StrAppendFormat(&comparison,
                                "<tr><td>%s</td><td>%.4f</td><td>%.4f</td><td>%+.4f</td><td>[%+.4f, %+.4f]%s</td>"
                                "<td>%g</td></tr>",
                                Escape(text(row, "metric")), num("base"), num("adapter"), num("difference"), low, high,
                                low > 0 || high < 0 ? " *" : "", num("units"));
        }
      }
      if (j.contains("samples") && j["samples"].is_array()) {
        for (const auto& sample : j["samples"]) {
          if (!sample.is_object()) continue;
          const std::string image = text(sample, "image");
          absl::StrAppend(&samples, "<tr><td>", static_cast<int64_t>(*step), "</td><td>",
                          image.empty() ? std::string() : ImageCell(image, &thumbnails), Escape(text(sample, "prompt")),
                          "</td><td><pre>", Escape(text(sample, "output")), "</pre></td></tr>");
        }
      }
    }
  }
  const std::string spec = ReadFileToString(dir + "/spec.textproto").value_or("(no spec.textproto)");
  const std::string data = ReadFileToString(dir + "/data_summary.txt").value_or("(no data_summary.txt)");
  std::string html = absl::StrCat(
      "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>llmtrain run: ", Escape(dir), "</title>",
      "<style>body{font-family:sans-serif;max-width:1200px;margin:2em auto}pre{white-space:pre-wrap;"
      "background:#f4f4f4;padding:.5em}table{border-collapse:collapse}td,th{border:1px solid #ddd;padding:4px;"
      "vertical-align:top}.grid{display:flex;flex-wrap:wrap;gap:1em}</style></head><body>",
      "<h1>llmtrain run</h1><p>", Escape(dir), "</p>");
  if (!loss.empty()) {
    absl::StrAppendFormat(&html, "<p>train loss %.4f (step %g) → %.4f (step %g)", loss.front().second, loss.front().first,
                          loss.back().second, loss.back().first);
    if (!eval_loss.empty()) {
      absl::StrAppendFormat(&html, "; eval loss %.4f → %.4f", eval_loss.front().second, eval_loss.back().second);
    }
    html += "</p>";
  }
  absl::StrAppend(&html, "<div class=\"grid\"><div>", Plot("train loss", loss), "</div><div>",
                  Plot("eval loss", eval_loss), "</div><div>", Plot("learning rate", lr), "</div><div>",
                  Plot("tokens/s", tps), "</div>");
  for (const auto& [name, series] : scores) absl::StrAppend(&html, "<div>", Plot(absl::StrCat("eval ", name), series), "</div>");
  html += "</div>";
  if (!comparison.empty()) {
    absl::StrAppend(&html,
                    "<h2>Base model vs adapter</h2><p>The last evaluation against the first (step 0: the base "
                    "model, as a new adapter changes nothing), on the same records; the interval is a paired "
                    "bootstrap 95% interval of the difference (* it excludes 0).</p><table><tr><th>metric</th>"
                    "<th>base</th><th>adapter</th><th>difference</th><th>95% interval</th><th>units</th></tr>",
                    comparison, "</table>");
  }
  absl::StrAppend(&html, "<h2>Samples</h2>",
                  samples.empty() ? "<p>(none)</p>"
                                  : absl::StrCat("<table><tr><th>step</th><th>prompt</th><th>output</th></tr>", samples,
                                                 "</table>"));
  absl::StrAppend(&html, "<h2>Data</h2><pre>", Escape(data), "</pre><h2>Spec</h2><pre>", Escape(spec),
                  "</pre></body></html>\n");
  return html;
}

std::string HtmlEscape(absl::string_view text) {
  std::string out;
  for (char c : text) {
    switch (c) {
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '&': out += "&amp;"; break;
      case '"': out += "&quot;"; break;
      default: out += c;
    }
  }
  return out;
}

absl::StatusOr<std::string> WriteRunReport(absl::string_view dir) {
  auto html = RunReportHtml(dir);
  if (!html.ok()) return html.status();
  const std::string path = absl::StrCat(dir, "/report.html");
  if (absl::Status s = WriteFileAtomically(path, *html); !s.ok()) return s;
  return path;
}

}  // namespace llmtrain::train
