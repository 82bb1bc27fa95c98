// Hyperparameter sweeps (spec/sweep.h): the space, the trials, successive halving, the trial
// processes, the state file and the leaderboard.
#include "llmtrain/spec/sweep.h"

#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <map>
#include <random>
#include <set>
#include <thread>

#include <google/protobuf/io/tokenizer.h>
#include <google/protobuf/text_format.h>
#include <nlohmann/json.hpp>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "io/json_checked.h"
#include "llmtrain/core/atomic_file.h"
#include "llmtrain/core/log.h"
#include "llmtrain/core/progress.h"
#include "llmtrain/core/status.h"
#include "llmtrain/core/threads.h"
#include "spec/text_proto_errors.h"
#include "llmtrain/spec/run_spec.h"
#include "llmtrain/train/report.h"

extern char** environ;

namespace llmtrain::spec {
namespace {

namespace pb = google::protobuf;

using Collector = detail::TextProtoErrors;

// The metrics a trial can be ranked by, and the eval.metrics entry that produces each.
struct MetricSource {
  const char* name;
  const char* eval_metric;  // "" = always in the eval line
};
constexpr MetricSource kMetrics[] = {
    {"eval_loss", ""},          {"eval_perplexity", ""}, {"exact_match", "exact_match"}, {"rouge1", "rouge"},
    {"rouge2", "rouge"},        {"rougeL", "rouge"},     {"bleu", "bleu"},               {"chrf", "chrf"},
    {"accuracy", "accuracy"}, {"accuracy_norm", "accuracy_norm"},
};

bool HasRange(const SweepParam& p) { return p.has_min() || p.has_max(); }

std::string FormatValue(double v, bool integer) {
  if (integer) return absl::StrCat(static_cast<int64_t>(std::llround(v)));
  return absl::StrFormat("%.6g", v);
}

// The space's identity for a resumed sweep: everything but how many trials run at once.
std::string SpaceKey(const SweepSpace& space) {
  SweepSpace s = space;
  s.clear_parallel();
  std::string text;
  pb::TextFormat::PrintToString(s, &text);
  return text;
}

std::string TrialDirName(int id) { return absl::StrFormat("trials/%03d", id); }

// The trial's metric at each evaluation in its metrics.jsonl, by step (a later line for the same
// step replaces an earlier one). Lines that are not JSON objects are skipped: a trial killed
// mid-write leaves at most a partial last line.
std::vector<std::pair<int64_t, double>> ReadCurve(const std::string& trial_dir, const std::string& metric) {
  std::map<int64_t, double> by_step;
  auto text = ReadFileToString(trial_dir + "/metrics.jsonl");
  if (!text.ok()) return {};
  for (absl::string_view line : absl::StrSplit(*text, '\n', absl::SkipWhitespace())) {
    const nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (!j.is_object()) continue;
    const auto type = j.find("type");
    if (type == j.end() || !type->is_string() || type->get<std::string>() != "eval") continue;
    const auto step = j.find("step");
    if (step == j.end() || !step->is_number_integer()) continue;
    const nlohmann::json* value = nullptr;
    if (metric == "eval_loss" || metric == "eval_perplexity") {
      if (auto it = j.find(metric); it != j.end()) value = &*it;
    } else if (auto m = j.find("metrics"); m != j.end() && m->is_object()) {
      if (auto it = m->find(metric); it != m->end()) value = &*it;
    }
    // JSON has no NaN or infinity: the metrics writer writes a non-finite value as null.
    if (value != nullptr && value->is_number()) by_step[step->get<int64_t>()] = value->get<double>();
    if (value != nullptr && value->is_null()) by_step[step->get<int64_t>()] = std::nan("");
  }
  return {by_step.begin(), by_step.end()};
}

std::optional<double> ValueAt(const std::vector<std::pair<int64_t, double>>& curve, int64_t step) {
  for (const auto& [s, v] : curve) {
    if (s == step) return v;
  }
  return std::nullopt;
}

std::string LastLines(const std::string& path, int n) {
  auto text = ReadFileToString(path);
  if (!text.ok()) return "";
  std::vector<absl::string_view> lines = absl::StrSplit(*text, '\n', absl::SkipWhitespace());
  if (lines.size() > static_cast<size_t>(n)) lines.erase(lines.begin(), lines.end() - n);
  return absl::StrJoin(lines, "\n");
}

std::string ParamsText(const TrialParams& params) {
  std::vector<std::string> parts;
  for (const auto& [f, v] : params) parts.push_back(absl::StrCat(f, "=", v));
  return absl::StrJoin(parts, " ");
}

std::string SignalName(int signo) {
  const char* name = sigabbrev_np(signo);
  return name ? absl::StrCat("SIG", name) : absl::StrCat("signal ", signo);
}

constexpr TrialState kStates[] = {TrialState::kPending, TrialState::kRunning, TrialState::kWaiting,
                                  TrialState::kStopped, TrialState::kCompleted, TrialState::kFailed};

// The grid's points, saturating at kMaxTrials + 1.
constexpr int64_t kMaxTrials = 100000;
int64_t GridSize(const SweepSpace& space) {
  int64_t size = 1;
  for (const SweepParam& p : space.param()) size = std::min<int64_t>(kMaxTrials + 1, size * std::max(1, p.values_size()));
  return size;
}

// The field a --set path names (the map's value field for "map.KEY"); null when there is none.
const pb::FieldDescriptor* FieldAt(absl::string_view path) {
  const pb::Descriptor* d = RunSpec::descriptor();
  const std::vector<std::string> parts = absl::StrSplit(path, '.');
  for (size_t i = 0; i < parts.size(); ++i) {
    const pb::FieldDescriptor* f = d->FindFieldByName(parts[i]);
    if (f == nullptr) return nullptr;
    if (f->is_map()) return f->message_type()->map_value();
    if (i + 1 == parts.size()) return f;
    if (f->cpp_type() != pb::FieldDescriptor::CPPTYPE_MESSAGE) return nullptr;
    d = f->message_type();
  }
  return nullptr;
}

// ---- sweep.json ----

// Everything sweep.json holds.
struct SweepFile {
  std::string spec_text;  // the base spec, overrides applied and defaults filled
  std::string space_key;  // SpaceKey
  std::string metric;
  bool maximize = false;
  std::vector<int64_t> rungs;  // the steps trials run to in turn; {0} = the end, unknown
  SweepResult result;
};

nlohmann::json ToJson(const SweepFile& f) {
  nlohmann::json trials = nlohmann::json::array();
  for (const SweepTrial& t : f.result.trials) {
    nlohmann::json params = nlohmann::json::array();
    for (const auto& [field, value] : t.params) params.push_back({field, value});
    nlohmann::json values = nlohmann::json::array();
    for (const auto& [step, v] : t.values) {
      values.push_back({step, std::isfinite(v) ? nlohmann::json(v) : nlohmann::json()});
    }
    trials.push_back({{"id", t.id},
                      {"dir", t.dir},
                      {"params", params},
                      {"state", std::string(TrialStateName(t.state))},
                      {"target_step", t.target_step},
                      {"values", values},
                      {"processes", t.processes},
                      {"error", t.error}});
  }
  nlohmann::json decisions = nlohmann::json::array();
  for (const RungDecision& d : f.result.decisions) {
    decisions.push_back({{"step", d.step}, {"kept", d.kept}, {"stopped", d.stopped}});
  }
  return {{"version", 1},          {"spec", f.spec_text}, {"space", f.space_key}, {"metric", f.metric},
          {"maximize", f.maximize}, {"rungs", f.rungs},    {"trials", trials},      {"decisions", decisions}};
}

// A strict reader: every field present with its type, ids in order, values finite.
absl::StatusOr<SweepFile> FromJson(absl::string_view where, const nlohmann::json& j) {
  const auto bad = [&](const std::string& field, const std::string& what) {
    return absl::DataLossError(absl::StrCat(where, ": \"", field, "\" ", what));
  };
  if (!j.is_object()) return absl::DataLossError(absl::StrCat(where, ": expected a JSON object"));
  const auto get = [&](const nlohmann::json& o, const char* key, nlohmann::json::value_t type,
                       const std::string& path) -> absl::StatusOr<const nlohmann::json*> {
    const auto it = o.find(key);
    if (it == o.end()) return bad(path, "is missing");
    const bool ok = it->type() == type || (type == nlohmann::json::value_t::number_integer && it->is_number_unsigned()) ||
                    (type == nlohmann::json::value_t::number_float && it->is_number());
    if (!ok) return bad(path, absl::StrCat("is ", io::detail::Describe(*it)));
    return &*it;
  };
  using T = nlohmann::json::value_t;
  SweepFile f;
  LLMTRAIN_ASSIGN_OR_RETURN(const nlohmann::json* version, get(j, "version", T::number_integer, "version"));
  if (version->get<int64_t>() != 1) return bad("version", absl::StrCat("is ", version->dump(), ", expected 1"));
  LLMTRAIN_ASSIGN_OR_RETURN(const nlohmann::json* spec, get(j, "spec", T::string, "spec"));
  f.spec_text = spec->get<std::string>();
  LLMTRAIN_ASSIGN_OR_RETURN(const nlohmann::json* space, get(j, "space", T::string, "space"));
  f.space_key = space->get<std::string>();
  LLMTRAIN_ASSIGN_OR_RETURN(const nlohmann::json* metric, get(j, "metric", T::string, "metric"));
  f.metric = metric->get<std::string>();
  LLMTRAIN_ASSIGN_OR_RETURN(const nlohmann::json* maximize, get(j, "maximize", T::boolean, "maximize"));
  f.maximize = maximize->get<bool>();
  LLMTRAIN_ASSIGN_OR_RETURN(const nlohmann::json* rungs, get(j, "rungs", T::array, "rungs"));
  for (size_t i = 0; i < rungs->size(); ++i) {
    if (!(*rungs)[i].is_number_integer() || (*rungs)[i].get<int64_t>() < 0) {
      return bad(absl::StrCat("rungs[", i, "]"), "is not a step");
    }
    f.rungs.push_back((*rungs)[i].get<int64_t>());
  }
  if (f.rungs.empty()) return bad("rungs", "is empty");
  LLMTRAIN_ASSIGN_OR_RETURN(const nlohmann::json* trials, get(j, "trials", T::array, "trials"));
  for (size_t i = 0; i < trials->size(); ++i) {
    const nlohmann::json& t = (*trials)[i];
    const std::string at = absl::StrCat("trials[", i, "]");
    if (!t.is_object()) return bad(at, "is not an object");
    SweepTrial trial;
    LLMTRAIN_ASSIGN_OR_RETURN(const nlohmann::json* id, get(t, "id", T::number_integer, at + ".id"));
    if (id->get<int64_t>() != static_cast<int64_t>(i)) return bad(at + ".id", absl::StrCat("is not ", i));
    trial.id = static_cast<int>(i);
    LLMTRAIN_ASSIGN_OR_RETURN(const nlohmann::json* dir, get(t, "dir", T::string, at + ".dir"));
    trial.dir = dir->get<std::string>();
    if (trial.dir != TrialDirName(trial.id)) return bad(at + ".dir", absl::StrCat("is not ", TrialDirName(trial.id)));
    LLMTRAIN_ASSIGN_OR_RETURN(const nlohmann::json* params, get(t, "params", T::array, at + ".params"));
    for (size_t p = 0; p < params->size(); ++p) {
      const nlohmann::json& pair = (*params)[p];
      if (!pair.is_array() || pair.size() != 2 || !pair[0].is_string() || !pair[1].is_string()) {
        return bad(absl::StrCat(at, ".params[", p, "]"), "is not a [field, value] pair of strings");
      }
      trial.params.emplace_back(pair[0].get<std::string>(), pair[1].get<std::string>());
    }
    LLMTRAIN_ASSIGN_OR_RETURN(const nlohmann::json* state, get(t, "state", T::string, at + ".state"));
    bool known = false;
    for (TrialState s : kStates) {
      if (TrialStateName(s) == state->get<std::string>()) {
        trial.state = s;
        known = true;
      }
    }
    if (!known) return bad(at + ".state", absl::StrCat("is \"", state->get<std::string>(), "\", not a trial state"));
    LLMTRAIN_ASSIGN_OR_RETURN(const nlohmann::json* target, get(t, "target_step", T::number_integer, at + ".target_step"));
    trial.target_step = target->get<int64_t>();
    LLMTRAIN_ASSIGN_OR_RETURN(const nlohmann::json* values, get(t, "values", T::array, at + ".values"));
    for (size_t v = 0; v < values->size(); ++v) {
      const nlohmann::json& pair = (*values)[v];
      if (!pair.is_array() || pair.size() != 2 || !pair[0].is_number_integer() ||
          !(pair[1].is_number() || pair[1].is_null())) {
        return bad(absl::StrCat(at, ".values[", v, "]"), "is not a [step, value] pair");
      }
      trial.values.emplace_back(pair[0].get<int64_t>(), pair[1].is_null() ? std::nan("") : pair[1].get<double>());
    }
    LLMTRAIN_ASSIGN_OR_RETURN(const nlohmann::json* processes, get(t, "processes", T::number_integer, at + ".processes"));
    trial.processes = static_cast<int>(std::clamp<int64_t>(processes->get<int64_t>(), 0, 1 << 30));
    LLMTRAIN_ASSIGN_OR_RETURN(const nlohmann::json* error, get(t, "error", T::string, at + ".error"));
    trial.error = error->get<std::string>();
    f.result.trials.push_back(std::move(trial));
  }
  const int n = static_cast<int>(f.result.trials.size());
  LLMTRAIN_ASSIGN_OR_RETURN(const nlohmann::json* decisions, get(j, "decisions", T::array, "decisions"));
  for (size_t i = 0; i < decisions->size(); ++i) {
    const nlohmann::json& d = (*decisions)[i];
    const std::string at = absl::StrCat("decisions[", i, "]");
    if (!d.is_object()) return bad(at, "is not an object");
    RungDecision decision;
    LLMTRAIN_ASSIGN_OR_RETURN(const nlohmann::json* step, get(d, "step", T::number_integer, at + ".step"));
    decision.step = step->get<int64_t>();
    for (const char* key : {"kept", "stopped"}) {
      LLMTRAIN_ASSIGN_OR_RETURN(const nlohmann::json* ids, get(d, key, T::array, absl::StrCat(at, ".", key)));
      for (const nlohmann::json& id : *ids) {
        if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() >= n) {
          return bad(absl::StrCat(at, ".", key), "holds something that is not a trial id");
        }
        (std::string(key) == "kept" ? decision.kept : decision.stopped).push_back(static_cast<int>(id.get<int64_t>()));
      }
    }
    f.result.decisions.push_back(std::move(decision));
  }
  // The state must be one a sweep could have written: rungs increasing, each decision at its rung
  // over the trials the one before kept, no trial twice, and targets at rungs.
  for (size_t i = 1; i < f.rungs.size(); ++i) {
    if (f.rungs[i] <= f.rungs[i - 1]) return bad("rungs", "are not increasing");
  }
  if (f.result.decisions.size() >= f.rungs.size()) return bad("decisions", "has more entries than rungs below the end");
  std::set<int> members;
  for (int id = 0; id < n; ++id) members.insert(id);
  for (size_t i = 0; i < f.result.decisions.size(); ++i) {
    const RungDecision& d = f.result.decisions[i];
    const std::string at = absl::StrCat("decisions[", i, "]");
    if (d.step != f.rungs[i]) return bad(at + ".step", absl::StrCat("is not the rung's step ", f.rungs[i]));
    std::set<int> seen;
    for (const std::vector<int>* ids : {&d.kept, &d.stopped}) {
      for (int id : *ids) {
        if (!seen.insert(id).second) return bad(at, absl::StrCat("names trial ", id, " twice"));
        if (members.count(id) == 0) return bad(at, absl::StrCat("names trial ", id, ", which the rung before stopped"));
      }
    }
    if (seen.size() != members.size()) return bad(at, "does not decide on every trial of its rung");
    members = std::set<int>(d.kept.begin(), d.kept.end());
  }
  for (const SweepTrial& t : f.result.trials) {
    if (t.target_step != 0 && std::find(f.rungs.begin(), f.rungs.end(), t.target_step) == f.rungs.end()) {
      return bad(absl::StrCat("trials[", t.id, "].target_step"), absl::StrCat("is not a rung's step: ", t.target_step));
    }
  }
  return f;
}

// ---- the leaderboard ----

struct Ranked {
  const SweepTrial* trial;
  int64_t steps = 0;               // furthest step with a value
  std::optional<double> value;     // its value there
};

// Completed trials by final value, then the others by how far they went and their value there,
// failed ones last.
std::vector<Ranked> Rank(const SweepResult& r, bool maximize) {
  std::vector<Ranked> ranked;
  for (const SweepTrial& t : r.trials) {
    Ranked x{&t, 0, std::nullopt};
    if (!t.values.empty()) {
      x.steps = t.values.back().first;
      if (std::isfinite(t.values.back().second)) x.value = t.values.back().second;
    }
    ranked.push_back(x);
  }
  const auto group = [](const Ranked& x) {
    switch (x.trial->state) {
      case TrialState::kCompleted: return 0;
      case TrialState::kFailed: return 2;
      default: return 1;
    }
  };
  std::stable_sort(ranked.begin(), ranked.end(), [&](const Ranked& a, const Ranked& b) {
    if (group(a) != group(b)) return group(a) < group(b);
    if (a.steps != b.steps) return a.steps > b.steps;
    if (a.value.has_value() != b.value.has_value()) return a.value.has_value();
    if (a.value && *a.value != *b.value) return maximize ? *a.value > *b.value : *a.value < *b.value;
    return a.trial->id < b.trial->id;
  });
  return ranked;
}

std::string Escape(absl::string_view text) { return train::HtmlEscape(text); }

// Ten colours that stay apart (matplotlib's tab10), repeated with a dash pattern beyond ten.
constexpr const char* kColors[] = {"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
                                   "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"};

std::string CurvesSvg(const std::vector<std::pair<const SweepTrial*, std::vector<std::pair<int64_t, double>>>>& curves,
                      const std::vector<int64_t>& rungs, const std::string& metric, std::optional<int> best) {
  constexpr double kW = 760, kH = 380, kLeft = 64, kRight = 16, kTop = 16, kBottom = 40;
  double x_max = 1, y_min = INFINITY, y_max = -INFINITY;
  for (const auto& [t, c] : curves) {
    for (const auto& [s, v] : c) {
      if (!std::isfinite(v)) continue;
      x_max = std::max(x_max, static_cast<double>(s));
      y_min = std::min(y_min, v);
      y_max = std::max(y_max, v);
    }
  }
  if (!std::isfinite(y_min)) return "<p>No evaluation yet.</p>\n";
  if (y_max - y_min < 1e-12) {
    y_min -= 0.5;
    y_max += 0.5;
  }
  const double pad = 0.05 * (y_max - y_min);
  y_min -= pad;
  y_max += pad;
  const auto X = [&](double s) { return kLeft + (kW - kLeft - kRight) * s / x_max; };
  const auto Y = [&](double v) { return kTop + (kH - kTop - kBottom) * (y_max - v) / (y_max - y_min); };
  std::string svg = absl::StrFormat(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" font-family=\"sans-serif\" "
      "font-size=\"11\">\n<rect x=\"%.0f\" y=\"%.0f\" width=\"%.0f\" height=\"%.0f\" fill=\"none\" stroke=\"#999\"/>\n",
      kW, kH, kLeft, kTop, kW - kLeft - kRight, kH - kTop - kBottom);
  for (int i = 0; i <= 4; ++i) {
    const double v = y_min + (y_max - y_min) * i / 4;
    absl::StrAppendFormat(&svg,
                          "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#eee\"/>"
                          "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">%.4g</text>\n",
                          kLeft, Y(v), kW - kRight, Y(v), kLeft - 4, Y(v) + 4, v);
  }
  for (int64_t r : rungs) {
    if (r <= 0) continue;
    absl::StrAppendFormat(&svg,
                          "<line x1=\"%.1f\" y1=\"%.0f\" x2=\"%.1f\" y2=\"%.0f\" stroke=\"#ccc\" stroke-dasharray=\"2,3\"/>"
                          "<text x=\"%.1f\" y=\"%.0f\" text-anchor=\"middle\">%d</text>\n",
                          X(r), kTop, X(r), kH - kBottom, X(r), kH - kBottom + 14, r);
  }
  absl::StrAppendFormat(&svg, "<text x=\"%.0f\" y=\"%.0f\" text-anchor=\"middle\">step (rungs dotted)</text>\n",
                        (kLeft + kW - kRight) / 2, kH - 8);
  absl::StrAppendFormat(&svg, "<text x=\"14\" y=\"%.0f\" transform=\"rotate(-90 14 %.0f)\" text-anchor=\"middle\">%s</text>\n",
                        kH / 2, kH / 2, Escape(metric));
  for (const auto& [t, c] : curves) {
    std::vector<std::pair<int64_t, double>> finite;
    for (const auto& p : c) {
      if (std::isfinite(p.second)) finite.push_back(p);
    }
    if (finite.empty()) continue;
    const char* color = kColors[t->id % 10];
    const bool is_best = best && *best == t->id;
    const bool dashed = t->state != TrialState::kCompleted;
    std::string points;
    for (const auto& [s, v] : finite) absl::StrAppendFormat(&points, "%.1f,%.1f ", X(static_cast<double>(s)), Y(v));
    absl::StrAppendFormat(&svg,
                          "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"%s\"%s points=\"%s\"><title>trial %d "
                          "(%s)</title></polyline>\n",
                          color, is_best ? "3" : "1.5", dashed ? " stroke-dasharray=\"5,3\"" : "", points, t->id,
                          Escape(ParamsText(t->params)));
    const auto& [ls, lv] = finite.back();
    absl::StrAppendFormat(&svg, "<text x=\"%.1f\" y=\"%.1f\" fill=\"%s\">%d</text>\n", X(static_cast<double>(ls)) + 3,
                          Y(lv) - 3, color, t->id);
  }
  svg += "</svg>\n";
  return svg;
}

absl::StatusOr<SweepFile> ReadSweepFile(const std::string& dir) {
  const std::string path = dir + "/sweep.json";
  LLMTRAIN_ASSIGN_OR_RETURN(const std::string text, ReadFileToString(path));
  LLMTRAIN_ASSIGN_OR_RETURN(const nlohmann::json j, io::detail::ParseJson(path, text));
  return FromJson(path, j);
}

absl::StatusOr<SweepResult> WriteLeaderboardFrom(const std::string& dir, const SweepFile& f) {
  SweepResult r = f.result;
  const std::vector<Ranked> ranked = Rank(r, f.maximize);
  for (const Ranked& x : ranked) {
    if (x.trial->state == TrialState::kCompleted && x.value) {
      r.best = x.trial->id;
      break;
    }
  }
  std::vector<std::pair<const SweepTrial*, std::vector<std::pair<int64_t, double>>>> curves;
  nlohmann::json rows = nlohmann::json::array();
  int rank = 0;
  for (const Ranked& x : ranked) {
    const SweepTrial& t = *x.trial;
    auto curve = ReadCurve(absl::StrCat(dir, "/", t.dir), f.metric);
    nlohmann::json params = nlohmann::json::object();
    for (const auto& [field, value] : t.params) params[field] = value;
    nlohmann::json c = nlohmann::json::array();
    for (const auto& [s, v] : curve) c.push_back({s, std::isfinite(v) ? nlohmann::json(v) : nlohmann::json()});
    nlohmann::json row = {{"rank", ++rank},   {"trial", t.id},     {"state", std::string(TrialStateName(t.state))},
                          {"params", params}, {"steps", x.steps},  {"value", x.value ? nlohmann::json(*x.value) : nlohmann::json()},
                          {"curve", c},       {"dir", t.dir},      {"processes", t.processes}};
    if (t.state == TrialState::kCompleted) row["adapter"] = t.dir + "/adapter";
    if (!t.error.empty()) row["error"] = t.error;
    rows.push_back(std::move(row));
    curves.emplace_back(&t, std::move(curve));
  }
  nlohmann::json decisions = nlohmann::json::array();
  for (const RungDecision& d : r.decisions) decisions.push_back({{"step", d.step}, {"kept", d.kept}, {"stopped", d.stopped}});
  nlohmann::json board = {{"metric", f.metric}, {"maximize", f.maximize}, {"rungs", f.rungs},
                          {"trials", rows},     {"decisions", decisions}, {"best", nullptr}};
  const SweepTrial* best = r.best ? &r.trials[*r.best] : nullptr;
  if (best != nullptr) {
    nlohmann::json params = nlohmann::json::object();
    for (const auto& [field, value] : best->params) params[field] = value;
    board["best"] = {{"trial", best->id},
                     {"value", best->values.back().second},
                     {"params", params},
                     {"spec", best->dir + "/spec.textproto"},
                     {"adapter", best->dir + "/adapter"}};
  }
  r.leaderboard_json = dir + "/leaderboard.json";
  LLMTRAIN_RETURN_IF_ERROR(WriteFileAtomically(r.leaderboard_json, board.dump(2) + "\n"));

  // The page: the best trial, every trial's curve on one plot, the table, the decisions.
  std::string html =
      "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>llmtrain sweep</title>\n"
      "<style>body{font-family:sans-serif;margin:24px;max-width:1100px}table{border-collapse:collapse}"
      "td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}th{background:#f4f4f4}"
      ".sw{display:inline-block;width:12px;height:12px;margin-right:4px}</style></head><body>\n";
  absl::StrAppend(&html, "<h1>Sweep: ", Escape(dir), "</h1>\n");
  if (best != nullptr) {
    absl::StrAppendFormat(&html,
                          "<p><b>Best: trial %d</b>, %s %.6g (%s).<br>Spec: <code>%s/spec.textproto</code>, adapter: "
                          "<code>%s/adapter</code></p>\n",
                          best->id, Escape(f.metric), best->values.back().second, Escape(ParamsText(best->params)),
                          Escape(best->dir), Escape(best->dir));
  } else {
    html += "<p>No trial has completed yet.</p>\n";
  }
  absl::StrAppend(&html, "<h2>", Escape(f.metric), " of every trial</h2>\n",
                  "<p>Completed trials solid, the others dashed, the best one thick.</p>\n",
                  CurvesSvg(curves, f.rungs, f.metric, r.best));
  html += "<h2>Trials</h2>\n<table><tr><th>rank</th><th>trial</th><th>state</th><th>parameters</th><th>steps</th><th>";
  absl::StrAppend(&html, Escape(f.metric), "</th></tr>\n");
  rank = 0;
  for (const Ranked& x : ranked) {
    const SweepTrial& t = *x.trial;
    absl::StrAppendFormat(&html,
                          "<tr><td>%d</td><td><span class=\"sw\" style=\"background:%s\"></span>%d</td><td>%s</td>"
                          "<td>%s</td><td>%d</td><td>%s</td></tr>\n",
                          ++rank, kColors[t.id % 10], t.id, TrialStateName(t.state), Escape(ParamsText(t.params)),
                          x.steps, x.value ? absl::StrFormat("%.6g", *x.value) : "");
  }
  html += "</table>\n";
  if (!r.decisions.empty()) {
    html += "<h2>Successive halving</h2>\n<ul>\n";
    for (const RungDecision& d : r.decisions) {
      absl::StrAppendFormat(&html, "<li>step %d: kept %s; stopped %s</li>\n", d.step, absl::StrJoin(d.kept, ", "),
                            absl::StrJoin(d.stopped, ", "));
    }
    html += "</ul>\n";
  }
  html += "</body></html>\n";
  r.leaderboard_html = dir + "/leaderboard.html";
  LLMTRAIN_RETURN_IF_ERROR(WriteFileAtomically(r.leaderboard_html, html));
  return r;
}

// ---- running trials ----

// The sweep folder's lock: held by the sweep and inherited by its trials (the descriptor is not
// close-on-exec), so that it stays held until the last trial of a killed sweep has exited.
class FolderLock {
 public:
  ~FolderLock() {
    if (fd_ >= 0) close(fd_);
  }
  absl::Status Acquire(const std::string& path, bool progress, const std::atomic<bool>* stop) {
    fd_ = open(path.c_str(), O_RDWR | O_CREAT, 0644);
    if (fd_ < 0) return absl::InternalError(absl::StrCat(path, ": cannot open: ", std::strerror(errno)));
    if (flock(fd_, LOCK_EX | LOCK_NB) == 0) return absl::OkStatus();
    if (errno != EWOULDBLOCK) return absl::InternalError(absl::StrCat(path, ": cannot lock: ", std::strerror(errno)));
    if (progress) LogInfo(absl::StrCat("sweep: ", path, " is held (another sweep of this folder, or the trials of a "
                                       "killed one finishing their checkpoints): waiting for it"));
    while (flock(fd_, LOCK_EX | LOCK_NB) != 0) {
      if (errno != EWOULDBLOCK && errno != EINTR) {
        return absl::InternalError(absl::StrCat(path, ": cannot lock: ", std::strerror(errno)));
      }
      if (stop != nullptr && stop->load()) return absl::CancelledError(absl::StrCat("sweep: stopped while waiting for ", path));
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    return absl::OkStatus();
  }

 private:
  int fd_ = -1;
};

struct Running {
  int trial = 0;
  pid_t pid = -1;
};

class SweepRunner {
 public:
  SweepRunner(const SweepOptions& options, std::string dir, SweepFile file, std::string spec_path)
      : o_(options), dir_(std::move(dir)), f_(std::move(file)), spec_path_(std::move(spec_path)) {}

  absl::StatusOr<SweepResult> Run() {
    const bool asha = o_.space.method() == SweepSpace::asha;
    const int eta = asha ? o_.space.rungs().reduction_factor() : 2;
    const int parallel = std::max(1, o_.space.parallel());
    threads_ = o_.threads_per_trial > 0 ? o_.threads_per_trial : std::max(1, CpuCount() / parallel);
    BuildEnvironment();
    ProgressOptions po;
    po.label = "sweep";
    po.unit = "step";
    po.total = PlannedSteps(eta);
    if (o_.progress) {
      progress_.emplace(po);
      progress_->Set(DoneSteps());
    }
    for (size_t k = 0; k < f_.rungs.size(); ++k) {
      const int64_t step = f_.rungs[k];
      std::vector<int> members;
      if (k == 0) {
        for (const SweepTrial& t : f_.result.trials) members.push_back(t.id);
      } else {
        members = f_.result.decisions[k - 1].kept;
      }
      std::vector<int> queue;
      for (int id : members) {
        SweepTrial& t = f_.result.trials[id];
        if (t.state == TrialState::kPending || ((t.state == TrialState::kRunning) && t.target_step == step)) {
          t.target_step = step;
          queue.push_back(id);
        }
      }
      LLMTRAIN_RETURN_IF_ERROR(Save());
      if (o_.progress && !queue.empty()) {
        LogInfo(absl::StrFormat("sweep: %s: %d trial(s) to run, %d at a time with %d thread(s) each",
                                step > 0 ? absl::StrCat("to step ", step) : std::string("to the end"), queue.size(),
                                parallel, threads_));
      }
      LLMTRAIN_RETURN_IF_ERROR(RunQueue(queue, parallel));
      if (stopping_) break;
      if (k + 1 < f_.rungs.size() && f_.result.decisions.size() == k) {
        std::vector<std::pair<int, std::optional<double>>> values;
        for (int id : members) values.emplace_back(id, ValueAt(f_.result.trials[id].values, step));
        RungDecision d = DecideRung(step, values, eta, f_.maximize);
        for (int id : d.kept) {
          f_.result.trials[id].state = TrialState::kRunning;
          f_.result.trials[id].target_step = f_.rungs[k + 1];
        }
        for (int id : d.stopped) {
          if (f_.result.trials[id].state != TrialState::kFailed) f_.result.trials[id].state = TrialState::kStopped;
        }
        if (o_.progress) LogInfo(DescribeDecision(d, k));
        f_.result.decisions.push_back(std::move(d));
        LLMTRAIN_RETURN_IF_ERROR(Save());
      }
    }
    if (progress_) progress_->Finish();
    LLMTRAIN_ASSIGN_OR_RETURN(SweepResult result, WriteLeaderboardFrom(dir_, f_));
    if (stopping_) {
      return absl::CancelledError(absl::StrCat("sweep stopped; the trials that were running stopped with a "
                                               "checkpoint: run the same command to continue (", dir_, "/sweep.json)"));
    }
    if (o_.progress) {
      if (result.best) {
        const SweepTrial& b = result.trials[*result.best];
        LogInfo(absl::StrFormat("sweep: best trial %d: %s %.6g (%s); spec %s/%s/spec.textproto, adapter %s/%s/adapter",
                                b.id, f_.metric, b.values.back().second, ParamsText(b.params), dir_, b.dir, dir_, b.dir));
      } else {
        LogWarning("sweep: no trial completed");
      }
      LogInfo(absl::StrCat("sweep: leaderboard ", result.leaderboard_html));
    }
    return result;
  }

 private:
  int64_t PlannedSteps(int eta) const {
    if (f_.rungs.back() <= 0) return 0;
    int64_t n = static_cast<int64_t>(f_.result.trials.size()), total = 0, prev = 0;
    for (int64_t r : f_.rungs) {
      total += n * (r - prev);
      prev = r;
      n = std::max<int64_t>(1, n / eta);
    }
    return total;
  }
  int64_t DoneSteps() const {
    int64_t done = 0;
    for (const SweepTrial& t : f_.result.trials) {
      if (!t.values.empty()) done += t.values.back().first;
    }
    return done;
  }

  std::string DescribeDecision(const RungDecision& d, size_t k) const {
    const auto list = [&](const std::vector<int>& ids) {
      std::vector<std::string> parts;
      for (int id : ids) {
        const auto v = ValueAt(f_.result.trials[id].values, d.step);
        parts.push_back(v ? absl::StrFormat("%d (%.6g)", id, *v) : absl::StrFormat("%d (failed)", id));
      }
      return absl::StrJoin(parts, ", ");
    };
    const size_t n = d.kept.size() + d.stopped.size();
    return absl::StrFormat("sweep: rung %d (step %d), %d trials by %s: kept %s; stopped the worst %d: %s", k + 1, d.step, n,
                           f_.metric, list(d.kept), d.stopped.size(), list(d.stopped));
  }

  absl::Status Save() {
    return WriteFileAtomically(dir_ + "/sweep.json", ToJson(f_).dump(1) + "\n");
  }

  void BuildEnvironment() {
    const std::string threads = absl::StrCat(threads_);
    for (char** e = environ; *e != nullptr; ++e) {
      if (absl::StartsWith(*e, "LLMTRAIN_NUM_THREADS=") || absl::StartsWith(*e, "OMP_NUM_THREADS=")) continue;
      env_.push_back(*e);
    }
    env_.push_back("LLMTRAIN_NUM_THREADS=" + threads);
    env_.push_back("OMP_NUM_THREADS=" + threads);
  }

  // True when the trial's files show it reached its target: the evaluation at the step and a
  // checkpoint there (a rung), or the final adapter (the end).
  bool Reached(const SweepTrial& t, int64_t* step, std::optional<double>* value) const {
    const std::string tdir = absl::StrCat(dir_, "/", t.dir);
    const auto curve = ReadCurve(tdir, f_.metric);
    const bool final = t.target_step == f_.rungs.back();
    if (final) {
      if (!IsRegularFile(tdir + "/adapter/adapter_config.json") || curve.empty()) return false;
      if (t.target_step > 0 && curve.back().first != t.target_step) return false;
      *step = curve.back().first;
      *value = curve.back().second;
      return true;
    }
    *step = t.target_step;
    *value = ValueAt(curve, t.target_step);
    return value->has_value() && IsDirectory(absl::StrFormat("%s/checkpoints/step-%06d", tdir, t.target_step));
  }

  void Record(SweepTrial* t, int64_t step, double value) {
    t->values.erase(std::remove_if(t->values.begin(), t->values.end(), [&](const auto& p) { return p.first == step; }),
                    t->values.end());
    t->values.emplace_back(step, value);
    t->state = t->target_step == f_.rungs.back() ? TrialState::kCompleted : TrialState::kWaiting;
    t->error.clear();
  }

  // Starts the trial's process towards its target. An error when it cannot be started at all
  // (the program cannot be executed, no fork): then the trial is left as it was.
  absl::StatusOr<pid_t> Start(SweepTrial* t) {
    const std::string tdir = absl::StrCat(dir_, "/", t->dir);
    LLMTRAIN_RETURN_IF_ERROR(MakeDirectories(tdir));
    std::vector<std::string> args = {o_.program};
    args.insert(args.end(), o_.program_args.begin(), o_.program_args.end());
    args.insert(args.end(), {"train", "--spec", spec_path_});
    for (const std::string& s : o_.overrides) args.insert(args.end(), {"--set", s});
    for (const auto& [field, value] : t->params) args.insert(args.end(), {"--set", absl::StrCat(field, "=", value)});
    args.insert(args.end(), {"--set", "output.dir=" + tdir, "--resume"});
    if (t->target_step > 0 && t->target_step < f_.rungs.back()) {
      args.insert(args.end(), {"--stop-at-step", absl::StrCat(t->target_step)});
    }
    const std::string log = tdir + "/train.log";
    const int log_fd = open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (log_fd < 0) return absl::InternalError(absl::StrCat(log, ": cannot open: ", std::strerror(errno)));
    const std::string header = absl::StrCat("== llmtrain sweep: process ", t->processes + 1, " of trial ", t->id, ": ",
                                            absl::StrJoin(args, " "), "\n");
    if (write(log_fd, header.data(), header.size()) < 0) {
      close(log_fd);
      return absl::InternalError(absl::StrCat(log, ": cannot write: ", std::strerror(errno)));
    }
    // Everything the child needs is made before fork: between fork and exec it only makes system
    // calls (the parent has threads). A close-on-exec pipe tells the parent whether exec worked.
    std::vector<char*> argv, envp;
    for (std::string& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    for (std::string& e : env_) envp.push_back(e.data());
    envp.push_back(nullptr);
    int exec_pipe[2];
    if (pipe2(exec_pipe, O_CLOEXEC) != 0) {
      close(log_fd);
      return absl::InternalError(absl::StrCat("sweep: pipe: ", std::strerror(errno)));
    }
    // The sweep's stop handler must not run in the child: signals wait until the child has reset it.
    sigset_t all, previous;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &previous);
    const pid_t parent = getpid();
    const pid_t pid = fork();
    if (pid == 0) {
      // The child: its own process group (a Ctrl-C reaches the sweep, which passes it on), SIGTERM
      // when the sweep dies, default signal handling, the log as stdout and stderr.
      setpgid(0, 0);
      prctl(PR_SET_PDEATHSIG, SIGTERM);
      for (int signo : {SIGINT, SIGTERM, SIGHUP, SIGPIPE}) signal(signo, SIG_DFL);
      sigset_t none;
      sigemptyset(&none);
      pthread_sigmask(SIG_SETMASK, &none, nullptr);
      if (getppid() != parent) _exit(128 + SIGTERM);
      dup2(log_fd, STDOUT_FILENO);
      dup2(log_fd, STDERR_FILENO);
      execve(argv[0], argv.data(), envp.data());
      const int error = errno;
      (void)!write(exec_pipe[1], &error, sizeof(error));
      _exit(127);
    }
    const int fork_errno = errno;
    pthread_sigmask(SIG_SETMASK, &previous, nullptr);
    close(exec_pipe[1]);
    close(log_fd);
    if (pid < 0) {
      close(exec_pipe[0]);
      return absl::InternalError(absl::StrCat("sweep: fork: ", std::strerror(fork_errno)));
    }
    setpgid(pid, pid);
    int exec_errno = 0;
    ssize_t n;
    while ((n = read(exec_pipe[0], &exec_errno, sizeof(exec_errno))) < 0 && errno == EINTR) {
    }
    close(exec_pipe[0]);
    if (n > 0) {
      waitpid(pid, nullptr, 0);
      return absl::FailedPreconditionError(absl::StrCat("sweep: cannot run \"", o_.program, "\": ",
                                                        std::strerror(exec_errno), " (trial ", t->id, " not started)"));
    }
    t->processes += 1;
    t->state = TrialState::kRunning;
    return pid;
  }

  // Runs the queued trials to their targets, `parallel` at a time. On an error (a trial that
  // cannot be started, a state file that cannot be written) the running trials are stopped as on
  // a stop signal, with their checkpoints, before the error returns.
  absl::Status RunQueue(const std::vector<int>& queue, int parallel) {
    absl::Status status = RunQueueUntilError(queue, parallel);
    if (!status.ok() && !running_.empty()) {
      for (const Running& r : running_) kill(r.pid, SIGTERM);
      for (const Running& r : running_) {
        while (waitpid(r.pid, nullptr, 0) < 0 && errno == EINTR) {
        }
      }
      running_.clear();
    }
    return status;
  }

  absl::Status RunQueueUntilError(const std::vector<int>& queue, int parallel) {
    size_t next = 0;
    bool signalled = false;
    while ((!stopping_ && next < queue.size()) || !running_.empty()) {
      if (o_.stop != nullptr && o_.stop->load()) stopping_ = true;
      if (stopping_ && !signalled) {
        for (const Running& r : running_) kill(r.pid, SIGTERM);
        signalled = true;
        if (o_.progress && !running_.empty()) LogInfo("sweep: stopping: the running trials write their checkpoints");
      }
      while (!stopping_ && static_cast<int>(running_.size()) < parallel && next < queue.size()) {
        SweepTrial& t = f_.result.trials[queue[next++]];
        std::optional<double> value;
        int64_t step = 0;
        if (t.processes > 0 && Reached(t, &step, &value)) {  // it got there before a kill of the sweep
          Record(&t, step, *value);
          LLMTRAIN_RETURN_IF_ERROR(Save());
          continue;
        }
        LLMTRAIN_ASSIGN_OR_RETURN(const pid_t pid, Start(&t));
        running_.push_back({t.id, pid});
        LLMTRAIN_RETURN_IF_ERROR(Save());
        if (o_.progress) {
          LogInfo(absl::StrFormat("sweep: trial %d %s (%s) → %s", t.id, t.processes > 1 ? "continued" : "started",
                                  ParamsText(t.params),
                                  t.target_step > 0 ? absl::StrCat("step ", t.target_step) : std::string("the end")));
        }
      }
      bool any = false;
      for (size_t i = 0; i < running_.size();) {
        int status = 0;
        const pid_t done = waitpid(running_[i].pid, &status, WNOHANG);
        if (done == 0 || (done < 0 && errno == EINTR)) {
          ++i;
          continue;
        }
        any = true;
        Finished(&f_.result.trials[running_[i].trial], done < 0 ? -1 : status);
        running_.erase(running_.begin() + static_cast<std::ptrdiff_t>(i));
        LLMTRAIN_RETURN_IF_ERROR(Save());
      }
      if (!any) std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return absl::OkStatus();
  }

  void Finished(SweepTrial* t, int status) {
    std::optional<double> value;
    int64_t step = 0;
    const std::string log = absl::StrCat(dir_, "/", t->dir, "/train.log");
    if (Reached(*t, &step, &value)) {
      Record(t, step, *value);
      if (progress_) progress_->Set(DoneSteps());
      if (o_.progress) {
        LogInfo(absl::StrFormat("sweep: trial %d %s: %s %.6g", t->id,
                                t->state == TrialState::kCompleted ? "completed"
                                                                   : absl::StrCat("reached step ", t->target_step),
                                f_.metric, *value));
      }
      return;
    }
    if (stopping_ && status >= 0 && ((WIFEXITED(status) && WEXITSTATUS(status) == 0) ||
                                     (WIFSIGNALED(status) && WTERMSIG(status) == SIGTERM))) {
      return;  // stopped with the sweep: it stays kRunning and resumes from its checkpoint
    }
    std::string how;
    if (status < 0) {
      how = "was lost (waitpid failed)";
    } else if (WIFEXITED(status)) {
      how = WEXITSTATUS(status) == 0 ? absl::StrCat("exited 0 before ", t->target_step > 0 ? absl::StrCat("step ", t->target_step) : "the end")
                                     : absl::StrCat("exited with code ", WEXITSTATUS(status));
    } else if (WIFSIGNALED(status)) {
      how = absl::StrCat("was killed by ", SignalName(WTERMSIG(status)));
    }
    t->state = TrialState::kFailed;
    t->error = absl::StrCat("trial ", t->id, " ", how, "; the end of ", log, ":\n", LastLines(log, 6));
    LogWarning(absl::StrCat("sweep: ", t->error));
  }

  const SweepOptions& o_;
  std::string dir_;
  SweepFile f_;
  std::string spec_path_;
  int threads_ = 1;
  std::vector<std::string> env_;
  bool stopping_ = false;
  std::vector<Running> running_;
  std::optional<ProgressReporter> progress_;
};

}  // namespace

absl::string_view TrialStateName(TrialState state) {
  switch (state) {
    case TrialState::kPending: return "pending";
    case TrialState::kRunning: return "running";
    case TrialState::kWaiting: return "waiting";
    case TrialState::kStopped: return "stopped";
    case TrialState::kCompleted: return "completed";
    case TrialState::kFailed: return "failed";
  }
  return "?";
}

absl::StatusOr<SweepSpace> ParseSweepSpace(absl::string_view where, absl::string_view text) {
  SweepSpace space;
  pb::TextFormat::Parser parser;
  Collector collector;
  parser.RecordErrorsTo(&collector);
  // Enum values may be written quoted, as in run specs (method: "asha"); a bad one is named.
  LLMTRAIN_ASSIGN_OR_RETURN(const std::string normalized,
                            detail::NormalizeEnumsInText(where, SweepSpace::descriptor(), text));
  if (!parser.ParseFromString(normalized, &space)) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": ", collector.first.empty() ? "not a valid space" : collector.first));
  }
  if (!space.has_method()) space.set_method(SweepSpace::grid);
  if (!space.has_trials()) space.set_trials(0);
  if (!space.has_parallel()) space.set_parallel(1);
  if (!space.has_seed()) space.set_seed(0);
  if (!space.has_metric()) space.set_metric("eval_loss");
  if (!space.rungs().has_reduction_factor()) space.mutable_rungs()->set_reduction_factor(2);
  if (!space.rungs().has_min_steps()) space.mutable_rungs()->set_min_steps(0);
  return space;
}

absl::StatusOr<SweepSpace> LoadSweepSpace(absl::string_view path) {
  LLMTRAIN_ASSIGN_OR_RETURN(const std::string text, ReadFileToString(path));
  return ParseSweepSpace(path, text);
}

bool SweepUsesGrid(const SweepSpace& space) {
  if (space.method() == SweepSpace::grid) return true;
  if (space.method() == SweepSpace::random) return false;
  for (const SweepParam& p : space.param()) {
    if (p.values_size() == 0) return false;
  }
  return space.trials() == 0 || space.trials() == GridSize(space);
}

absl::Status ValidateSweep(const RunSpec& base_in, const SweepSpace& space) {
  std::vector<std::string> errors;
  RunSpec base = base_in;
  FillDefaults(&base);
  std::set<std::string> base_errors;
  for (const SpecError& e : FindSpecErrors(base)) {
    base_errors.insert(absl::StrCat(e.field, ": ", e.message));
    errors.push_back(absl::StrCat("spec: ", e.field, ": ", e.message));
  }
  const bool asha = space.method() == SweepSpace::asha;
  if (space.param_size() == 0) errors.push_back("param: the space has no param (give at least one field to vary)");
  std::set<std::string> fields;
  bool all_values = true;
  for (int i = 0; i < space.param_size(); ++i) {
    const SweepParam& p = space.param(i);
    const std::string at = absl::StrCat("param[", i, "]");
    if (p.field().empty()) {
      errors.push_back(at + ".field: required (a run spec field as --set names it, e.g. training.learning_rate)");
      continue;
    }
    const std::string field_at = absl::StrCat(at, " (", p.field(), ")");
    if (!fields.insert(p.field()).second) errors.push_back(absl::StrCat(field_at, ": the field is varied twice"));
    if (p.field() == "output.dir") {
      errors.push_back(field_at + ": output.dir is the sweep's (each trial runs in OUTPUT/trials/NNN)");
      continue;
    }
    if (absl::StartsWith(p.field(), "output.") || absl::StartsWith(p.field(), "eval.") ||
        p.field() == "data.eval_files" || p.field() == "data.eval_image_list") {
      errors.push_back(field_at + ": trials are compared by evaluations made and recorded alike: do not vary "
                                  "output.*, eval.* or the eval data");
      continue;
    }
    if (asha && (p.field() == "training.max_steps" || p.field() == "training.epochs")) {
      errors.push_back(field_at + ": asha stops trials at steps of one common length: do not vary it");
    }
    std::vector<std::string> tried;
    if (p.values_size() > 0 && HasRange(p)) {
      errors.push_back(field_at + ": give values or a range (min, max), not both");
    } else if (p.values_size() > 0) {
      for (const std::string& v : p.values()) tried.push_back(v);
    } else if (!HasRange(p)) {
      errors.push_back(field_at + ": empty: give values, or min and max");
    } else if (!p.has_min() || !p.has_max()) {
      errors.push_back(field_at + ": a range needs both min and max");
    } else if (!std::isfinite(p.min()) || !std::isfinite(p.max())) {
      errors.push_back(field_at + ": min and max must be finite");
    } else if (p.min() > p.max()) {
      errors.push_back(absl::StrCat(field_at, ": empty range: min ", p.min(), " > max ", p.max()));
    } else if (p.log() && p.min() <= 0) {
      errors.push_back(absl::StrCat(field_at, ": log needs min > 0, got ", p.min()));
    } else if (p.integer() && std::ceil(p.min()) > std::floor(p.max())) {
      errors.push_back(absl::StrCat(field_at, ": empty range: no whole number in [", p.min(), ", ", p.max(), "]"));
    } else if (const pb::FieldDescriptor* f = FieldAt(p.field());
               f != nullptr && (f->cpp_type() == pb::FieldDescriptor::CPPTYPE_STRING ||
                                f->cpp_type() == pb::FieldDescriptor::CPPTYPE_ENUM ||
                                f->cpp_type() == pb::FieldDescriptor::CPPTYPE_BOOL)) {
      errors.push_back(field_at + ": a range needs a numeric field: give values");
    } else if (f != nullptr && !p.integer() &&
               (f->cpp_type() == pb::FieldDescriptor::CPPTYPE_INT32 || f->cpp_type() == pb::FieldDescriptor::CPPTYPE_INT64 ||
                f->cpp_type() == pb::FieldDescriptor::CPPTYPE_UINT32 ||
                f->cpp_type() == pb::FieldDescriptor::CPPTYPE_UINT64)) {
      errors.push_back(field_at + ": a whole-number field: add integer: true to the range");
    } else {
      tried.push_back(FormatValue(p.integer() ? std::ceil(p.min()) : p.min(), p.integer()));
      tried.push_back(FormatValue(p.integer() ? std::floor(p.max()) : p.max(), p.integer()));
    }
    if (p.values_size() == 0) all_values = false;
    if (HasRange(p) && space.method() == SweepSpace::grid) {
      errors.push_back(field_at + ": grid search needs values (a range is for random or asha)");
    }
    // Each value must be one --set takes and must make a valid spec (problems of the base spec
    // itself are reported once, above).
    for (const std::string& v : tried) {
      RunSpec trial = base;
      if (absl::Status s = ApplyOverride(&trial, absl::StrCat(p.field(), "=", v)); !s.ok()) {
        errors.push_back(absl::StrCat(field_at, ": ", s.message()));
        break;  // an unknown field fails every value alike
      }
      for (const SpecError& e : FindSpecErrors(trial)) {
        if (base_errors.count(absl::StrCat(e.field, ": ", e.message)) == 0) {
          errors.push_back(absl::StrCat(field_at, " = \"", v, "\": ", e.field, ": ", e.message));
        }
      }
    }
  }
  const int64_t grid_size = GridSize(space);
  if (space.trials() < 0 || space.trials() > kMaxTrials) {
    errors.push_back(absl::StrCat("trials: must be in [0, ", kMaxTrials, "], got ", space.trials()));
  }
  if (SweepUsesGrid(space) && all_values && grid_size > kMaxTrials) {
    errors.push_back(absl::StrCat("param: the grid has more than ", kMaxTrials, " points"));
  }
  if (space.parallel() < 1) errors.push_back(absl::StrCat("parallel: must be ≥ 1, got ", space.parallel()));
  if (space.method() == SweepSpace::grid && all_values && space.trials() != 0 && space.trials() != grid_size) {
    errors.push_back(absl::StrCat("trials: the grid has ", grid_size, " points; give 0 (all of them) or ", grid_size,
                                  ", not ", space.trials(), " (random search draws a number of trials)"));
  }
  if (!SweepUsesGrid(space) && space.trials() <= 0) {
    errors.push_back(absl::StrCat("trials: ", space.method() == SweepSpace::random ? "random search" : "asha over random draws",
                                  " needs trials ≥ 1"));
  }
  if (base.data().eval_files_size() == 0) {
    errors.push_back("data.eval_files: a sweep ranks trials by their evaluations: give eval data");
  }
  if (std::find(base.output().report_to().begin(), base.output().report_to().end(), OutputSpec::jsonl) ==
      base.output().report_to().end()) {
    errors.push_back("output.report_to: a sweep reads each trial's metrics.jsonl: include jsonl");
  }
  bool metric_known = false;
  for (const MetricSource& m : kMetrics) {
    if (space.metric() != m.name) continue;
    metric_known = true;
    if (*m.eval_metric != '\0' &&
        std::find(base.eval().metrics().begin(), base.eval().metrics().end(), m.eval_metric) == base.eval().metrics().end()) {
      errors.push_back(absl::StrCat("metric: ", space.metric(), " needs \"", m.eval_metric, "\" in the spec's eval.metrics"));
    }
  }
  if (!metric_known) {
    std::vector<std::string> names;
    for (const MetricSource& m : kMetrics) names.push_back(m.name);
    errors.push_back(absl::StrCat("metric: unknown \"", space.metric(), "\" (", absl::StrJoin(names, ", "), ")"));
  }
  if (asha) {
    const int64_t total = base.training().max_steps();
    if (total <= 0) {
      errors.push_back("training.max_steps: asha needs a step count (rungs are steps of it; 0 = from epochs is only "
                       "known once the data is read)");
    }
    if (space.rungs().min_steps() < 1) {
      errors.push_back(absl::StrCat("rungs.min_steps: must be ≥ 1, got ", space.rungs().min_steps()));
    } else if (total > 0 && space.rungs().min_steps() >= total) {
      errors.push_back(absl::StrCat("rungs.min_steps: must be below training.max_steps (", total, "), got ",
                                    space.rungs().min_steps()));
    }
    if (space.rungs().reduction_factor() < 2) {
      errors.push_back(absl::StrCat("rungs.reduction_factor: must be ≥ 2, got ", space.rungs().reduction_factor()));
    }
  }
  if (errors.empty()) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat("invalid sweep:\n  ", absl::StrJoin(errors, "\n  ")));
}

std::vector<TrialParams> SampleTrials(const SweepSpace& space) {
  std::vector<TrialParams> trials;
  if (SweepUsesGrid(space)) {
    std::vector<size_t> index(space.param_size(), 0);
    while (true) {
      TrialParams t;
      for (int i = 0; i < space.param_size(); ++i) t.emplace_back(space.param(i).field(), space.param(i).values(index[i]));
      trials.push_back(std::move(t));
      int i = space.param_size() - 1;  // the last param varies fastest
      while (i >= 0 && ++index[i] == static_cast<size_t>(space.param(i).values_size())) index[i--] = 0;
      if (i < 0) break;
    }
    return trials;
  }
  std::mt19937_64 rng(space.seed());
  const auto uniform = [&] { return static_cast<double>(rng() >> 11) * 0x1p-53; };  // [0, 1)
  for (int n = 0; n < space.trials(); ++n) {
    TrialParams t;
    for (const SweepParam& p : space.param()) {
      if (p.values_size() > 0) {
        t.emplace_back(p.field(), p.values(static_cast<int>(rng() % static_cast<uint64_t>(p.values_size()))));
        continue;
      }
      const double u = uniform();
      double v = p.log() ? std::exp(std::log(p.min()) + u * (std::log(p.max()) - std::log(p.min())))
                         : p.min() + u * (p.max() - p.min());
      if (p.integer()) {
        const double lo = std::ceil(p.min()), hi = std::floor(p.max());
        v = p.log() ? std::round(v) : lo + std::floor(u * (hi - lo + 1));
        v = std::clamp(v, lo, hi);
      }
      t.emplace_back(p.field(), FormatValue(v, p.integer()));
    }
    trials.push_back(std::move(t));
  }
  return trials;
}

std::vector<int64_t> RungSteps(int64_t total_steps, int64_t min_steps, int reduction_factor) {
  std::vector<int64_t> rungs;
  for (int64_t r = std::max<int64_t>(1, min_steps); r < total_steps; r *= std::max(2, reduction_factor)) rungs.push_back(r);
  rungs.push_back(total_steps);
  return rungs;
}

bool MetricMaximized(absl::string_view metric) { return metric != "eval_loss" && metric != "eval_perplexity"; }

RungDecision DecideRung(int64_t step, const std::vector<std::pair<int, std::optional<double>>>& values,
                        int reduction_factor, bool maximize) {
  std::vector<std::pair<int, std::optional<double>>> order = values;
  std::stable_sort(order.begin(), order.end(), [&](const auto& a, const auto& b) {
    const bool fa = a.second.has_value() && std::isfinite(*a.second);
    const bool fb = b.second.has_value() && std::isfinite(*b.second);
    if (fa != fb) return fa;
    if (fa && *a.second != *b.second) return maximize ? *a.second > *b.second : *a.second < *b.second;
    return a.first < b.first;
  });
  RungDecision d;
  d.step = step;
  const size_t keep = std::max<size_t>(1, order.size() / static_cast<size_t>(std::max(2, reduction_factor)));
  for (const auto& [id, v] : order) {
    const bool usable = v.has_value() && std::isfinite(*v);
    (d.kept.size() < keep && usable ? d.kept : d.stopped).push_back(id);
  }
  return d;
}

absl::StatusOr<SweepResult> ReadSweepState(absl::string_view output_dir) {
  LLMTRAIN_ASSIGN_OR_RETURN(SweepFile f, ReadSweepFile(std::string(output_dir)));
  return f.result;
}

absl::StatusOr<SweepResult> ParseSweepState(absl::string_view where, absl::string_view text) {
  LLMTRAIN_ASSIGN_OR_RETURN(const nlohmann::json j, io::detail::ParseJson(where, text));
  LLMTRAIN_ASSIGN_OR_RETURN(SweepFile f, FromJson(where, j));
  return f.result;
}

absl::StatusOr<SweepResult> WriteLeaderboard(absl::string_view output_dir) {
  const std::string dir(output_dir);
  LLMTRAIN_ASSIGN_OR_RETURN(SweepFile f, ReadSweepFile(dir));
  return WriteLeaderboardFrom(dir, f);
}

absl::StatusOr<SweepResult> RunSweep(const SweepOptions& options) {
  if (options.output_dir.empty()) return absl::InvalidArgumentError("sweep: the output folder is required");
  if (options.program.empty()) return absl::InvalidArgumentError("sweep: the trial program is required");
  if (access(options.program.c_str(), X_OK) != 0) {
    return absl::NotFoundError(absl::StrCat("sweep: cannot run \"", options.program, "\": ", std::strerror(errno)));
  }
  // Everything is checked before anything starts.
  LLMTRAIN_ASSIGN_OR_RETURN(RunSpec base, LoadRunSpec(options.spec_path, options.overrides));
  LLMTRAIN_RETURN_IF_ERROR(ValidateSweep(base, options.space));
  const SweepSpace& space = options.space;
  SweepFile fresh;
  fresh.spec_text = SpecToText(base);
  fresh.space_key = SpaceKey(space);
  fresh.metric = space.metric();
  fresh.maximize = MetricMaximized(space.metric());
  // Grid and random trials run to their end: the spec's max_steps, or, when that is 0 (from
  // epochs) or a param changes the length, whatever step each one ends at (rungs {0}).
  bool varies_length = false;
  for (const SweepParam& p : space.param()) {
    varies_length |= p.field() == "training.max_steps" || p.field() == "training.epochs";
  }
  fresh.rungs = space.method() == SweepSpace::asha
                    ? RungSteps(base.training().max_steps(), space.rungs().min_steps(), space.rungs().reduction_factor())
                    : std::vector<int64_t>{varies_length ? 0 : base.training().max_steps()};
  // Paths given to the trials are absolute: they run wherever the sweep runs from.
  char* real = realpath(options.spec_path.c_str(), nullptr);
  if (real == nullptr) return absl::NotFoundError(absl::StrCat(options.spec_path, ": ", std::strerror(errno)));
  const std::string spec_path(real);
  std::free(real);
  LLMTRAIN_RETURN_IF_ERROR(MakeDirectories(options.output_dir));
  char* real_dir = realpath(options.output_dir.c_str(), nullptr);
  if (real_dir == nullptr) return absl::NotFoundError(absl::StrCat(options.output_dir, ": ", std::strerror(errno)));
  const std::string dir(real_dir);
  std::free(real_dir);

  FolderLock lock;
  LLMTRAIN_RETURN_IF_ERROR(lock.Acquire(dir + "/sweep.lock", options.progress, options.stop));
  SweepFile file;
  if (IsRegularFile(dir + "/sweep.json")) {
    LLMTRAIN_ASSIGN_OR_RETURN(file, ReadSweepFile(dir));
    if (file.spec_text != fresh.spec_text) {
      return absl::FailedPreconditionError(absl::StrCat(
          options.output_dir, "/sweep.json is a sweep of another spec (the file or its --set overrides changed): "
                              "continue it with the same spec, or choose another --output"));
    }
    if (file.space_key != fresh.space_key) {
      return absl::FailedPreconditionError(absl::StrCat(
          options.output_dir, "/sweep.json is a sweep of another space (params, method, trials, seed, metric or rungs "
                              "changed; only parallel may): continue it with the same space, or choose another --output"));
    }
    const std::vector<TrialParams> expected = SampleTrials(space);
    bool same = expected.size() == file.result.trials.size();
    for (size_t i = 0; same && i < expected.size(); ++i) same = expected[i] == file.result.trials[i].params;
    if (!same || file.rungs != fresh.rungs) {
      return absl::DataLossError(absl::StrCat(options.output_dir, "/sweep.json: its trials or rungs are not the ones "
                                              "its space gives (the file was changed): choose another --output"));
    }
    int done = 0, resumed = 0;
    for (const SweepTrial& t : file.result.trials) {
      done += t.state == TrialState::kCompleted || t.state == TrialState::kStopped || t.state == TrialState::kFailed;
      resumed += t.state == TrialState::kRunning;
    }
    if (options.progress) {
      LogInfo(absl::StrFormat("sweep: continuing %s: %d of %d trials finished, %d to resume from their checkpoints",
                              dir, done, file.result.trials.size(), resumed));
    }
  } else {
    file = fresh;
    const std::vector<TrialParams> trials = SampleTrials(space);
    for (size_t i = 0; i < trials.size(); ++i) {
      SweepTrial t;
      t.id = static_cast<int>(i);
      t.params = trials[i];
      t.dir = TrialDirName(t.id);
      file.result.trials.push_back(std::move(t));
    }
  }
  SweepRunner runner(options, dir, std::move(file), spec_path);
  return runner.Run();
}

}  // namespace llmtrain::spec
