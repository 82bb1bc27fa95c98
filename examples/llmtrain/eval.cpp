// llmtrain eval --model PATH [--data FILE...] [--task NAME|FILE ...] [--tokenizer PATH] [--adapter DIR]
//               [--load-in-4bit] [--format auto] [--image-dir DIR] [--image-list FILE]
//               [--metrics loss,perplexity] [--max-new-tokens 64] [--max-records 0] [--batch-size 8]
//               [--max-length 2048] [--task-docs 200] [--task-seed 0] [--compare-base] [--bootstrap 1000]
//               [--predictions OUT.jsonl] [--json]
// llmtrain make-task NAME --output FILE [--docs 200] [--choices 4] [--seed 0]
// Evaluates a model (and an adapter) on data in any format the trainer reads (eval/evaluate.h):
// the loss and perplexity with the trainer's masking, and generation metrics of greedy replies
// against the data's (eval/text_metrics.h); and on multiple-choice tasks, accuracy by
// log-likelihood as lm-evaluation-harness computes it (eval/multiple_choice.h).
#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "llmtrain/commands.h"
#include "llmtrain/core/atomic_file.h"
#include "llmtrain/core/progress.h"
#include "llmtrain/data/collator.h"
#include "llmtrain/data/dataset.h"
#include "llmtrain/data/image.h"
#include "llmtrain/eval/compare.h"
#include "llmtrain/eval/evaluate.h"
#include "llmtrain/eval/multiple_choice.h"
#include "llmtrain/lora/lora.h"
#include "llmtrain/model/decoder.h"
#include "llmtrain/tokenizer/chat_template.h"
#include "llmtrain/tokenizer/tokenizer.h"
#include "nlohmann/json.hpp"

namespace llmtrain::cli {
namespace {

constexpr char kHelp[] =
    "usage: llmtrain eval --model PATH [--data FILE...] [--task NAME|FILE ...] [--tokenizer PATH]\n"
    "                     [--adapter DIR] [--load-in-4bit] [--format auto] [--image-dir DIR]\n"
    "                     [--image-list FILE] [--metrics loss,perplexity] [--max-new-tokens 64]\n"
    "                     [--max-records 0] [--batch-size 8] [--max-length 2048] [--task-docs 200]\n"
    "                     [--task-seed 0] [--compare-base] [--bootstrap 1000] [--predictions OUT.jsonl]\n"
    "                     [--json]\n"
    "  --data: one or more files in a format the trainer reads (auto-detected, or --format).\n"
    "  --task: a multiple-choice task, built in (debian-packages, iso-countries: --task-docs\n"
    "    questions drawn with --task-seed from the machine's dpkg database and iso-codes) or a\n"
    "    JSONL file of {\"context\", \"choices\", \"gold\"}; repeatable. Metrics accuracy and\n"
    "    accuracy_norm (per character of the choice), as lm-evaluation-harness's hf backend\n"
    "    scores \" \" + choice after the context. Default metrics: loss, perplexity with --data,\n"
    "    accuracy, accuracy_norm with --task.\n"
    "  --metrics: any of loss, perplexity (per-token NLL over the tokens the trainer trains on:\n"
    "    the replies of conversations; every token after the first of plain text), exact_match,\n"
    "    rouge (rouge1, rouge2, rougeL), bleu, chrf: greedy replies to each prompt (the\n"
    "    conversation before its last assistant turn, records with the same prompt sharing their\n"
    "    replies as references), scored as rouge_score (use_stemmer) and sacrebleu do, on their\n"
    "    scales (ROUGE and exact_match 0-1, BLEU and chrF 0-100).\n"
    "  --max-records N: the first N records, and questions of each task (0: all).\n"
    "  --batch-size: sequences per forward (loss, tasks) and prompts generated together\n"
    "    (left-padded; each reply as if alone). --max-length: the longest sequence (tasks: cut from\n"
    "    the left, as lm-eval does; default there the model's max_position_embeddings).\n"
    "  --predictions OUT.jsonl: one line per prompt: {\"where\", \"prediction\", \"reference\",\n"
    "    \"references\"}, and per task question {\"task\", \"where\", \"loglikelihood\",\n"
    "    \"is_greedy\", \"pred\", \"pred_norm\", \"gold\"}.\n"
    "  --compare-base: with --adapter, the same evaluation of the model without it and then with it,\n"
    "    and per metric the difference (adapter - base) with a paired bootstrap 95% interval\n"
    "    (--bootstrap resamples of the records, prompts or questions, seeded with --task-seed); the\n"
    "    JSON adds \"base\" (the base's metrics) and \"compare\" ({metric: {base, adapter,\n"
    "    difference, ci95_low, ci95_high, units}}), the predictions base_prediction / base_pred.\n"
    "  --json: one object of the metrics (and n_tokens, items, skipped; with tasks, \"tasks\":\n"
    "    {name: {accuracy, accuracy_norm, n_docs}}, accuracy and accuracy_norm being over all\n"
    "    their questions).\n"
    "  --tokenizer PATH: when the model folder has none (a GGUF or a folder with tokenizer.json).\n";

struct Options {
  std::string model, tokenizer, format = "auto", image_dir, image_list, predictions;
  std::vector<std::string> data, tasks;
  std::vector<std::string> metrics;  // empty: the defaults of --data and --task
  int64_t max_new_tokens = 64, max_records = 0, batch_size = 8, max_length = 0;
  eval::BuiltinTaskOptions task_options;
  int64_t bootstrap = 1000;
  bool json = false, compare_base = false;
};

constexpr const char* kMetrics[] = {"loss", "perplexity", "exact_match", "rouge", "bleu", "chrf", "accuracy",
                                    "accuracy_norm"};

bool Wants(const Options& o, const char* metric) {
  for (const std::string& m : o.metrics) {
    if (m == metric) return true;
  }
  return false;
}

}  // namespace

int RunEval(const std::vector<std::string>& args) {
  Options o;
  ModelFlags flags;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "--help" || a == "-h") {
      std::fputs(kHelp, stdout);
      std::fputs(kModelFlagsHelp, stdout);
      return 0;
    }
    std::string flag_error;
    if (flags.Parse(a, args, &i, &flag_error)) {
      if (!flag_error.empty()) return Fail("eval", flag_error, 2);
      continue;
    }
    if (a == "--json") {
      o.json = true;
      continue;
    }
    if (a == "--compare-base") {
      o.compare_base = true;
      continue;
    }
    if (i + 1 >= args.size()) return Fail("eval", absl::StrCat(a, " needs a value\n", kHelp), 2);
    const std::string& v = args[++i];
    bool ok = true;
    if (a == "--model") {
      o.model = v;
    } else if (a == "--tokenizer") {
      o.tokenizer = v;
    } else if (a == "--data") {
      o.data.push_back(v);
      while (i + 1 < args.size() && args[i + 1].rfind("--", 0) != 0) o.data.push_back(args[++i]);
    } else if (a == "--task") {
      o.tasks.push_back(v);
    } else if (a == "--task-docs") {
      ok = absl::SimpleAtoi(v, &o.task_options.docs) && o.task_options.docs >= 1;
    } else if (a == "--bootstrap") {
      ok = absl::SimpleAtoi(v, &o.bootstrap) && o.bootstrap >= 1;
    } else if (a == "--task-seed") {
      ok = absl::SimpleAtoi(v, &o.task_options.seed);
    } else if (a == "--format") {
      o.format = v;
    } else if (a == "--image-dir") {
      o.image_dir = v;
    } else if (a == "--image-list") {
      o.image_list = v;
    } else if (a == "--metrics") {
      o.metrics = absl::StrSplit(v, ',', absl::SkipEmpty());
    } else if (a == "--predictions") {
      o.predictions = v;
    } else if (a == "--max-new-tokens") {
      ok = absl::SimpleAtoi(v, &o.max_new_tokens) && o.max_new_tokens >= 1;
    } else if (a == "--max-records") {
      ok = absl::SimpleAtoi(v, &o.max_records) && o.max_records >= 0;
    } else if (a == "--batch-size") {
      ok = absl::SimpleAtoi(v, &o.batch_size) && o.batch_size >= 1;
    } else if (a == "--max-length") {
      ok = absl::SimpleAtoi(v, &o.max_length) && o.max_length >= 2;
    } else {
      return Fail("eval", absl::StrCat("unknown option ", a, "\n", kHelp), 2);
    }
    if (!ok) return Fail("eval", absl::StrCat(a, ": expected a number in range, found \"", v, "\""), 2);
  }
  if (o.model.empty()) return Fail("eval", absl::StrCat("--model is required\n", kHelp), 2);
  if (o.data.empty() && o.tasks.empty()) return Fail("eval", absl::StrCat("--data or --task is required\n", kHelp), 2);
  if (o.metrics.empty()) {
    if (!o.data.empty()) o.metrics = {"loss", "perplexity"};
    if (!o.tasks.empty()) o.metrics.insert(o.metrics.end(), {"accuracy", "accuracy_norm"});
  }
  for (const std::string& m : o.metrics) {
    if (std::none_of(std::begin(kMetrics), std::end(kMetrics), [&](const char* k) { return m == k; })) {
      return Fail("eval", absl::StrCat("--metrics: unknown metric \"", m, "\" (", absl::StrJoin(kMetrics, ", "), ")"),
                  2);
    }
  }
  const bool want_loss = Wants(o, "loss") || Wants(o, "perplexity");
  const bool want_generation = Wants(o, "exact_match") || Wants(o, "rouge") || Wants(o, "bleu") || Wants(o, "chrf");
  const bool want_choice = Wants(o, "accuracy") || Wants(o, "accuracy_norm");
  if ((want_loss || want_generation) && o.data.empty()) {
    return Fail("eval", "--metrics: loss, perplexity and generation metrics need --data", 2);
  }
  if (want_choice != !o.tasks.empty()) {
    return Fail("eval", want_choice ? "--metrics: accuracy and accuracy_norm need --task"
                                    : "--task needs accuracy or accuracy_norm in --metrics",
                2);
  }
  if (!o.predictions.empty() && !want_generation && !want_choice) {
    return Fail("eval", "--predictions needs a generation metric (exact_match, rouge, bleu, chrf) or a --task", 2);
  }
  if (o.compare_base && flags.adapter.empty()) {
    return Fail("eval", "--compare-base needs --adapter (the base is the model without it)", 2);
  }
  // Tasks next: an unknown task or a bad task file is refused before the model loads.
  std::vector<eval::ChoiceTask> tasks;
  for (const std::string& t : o.tasks) {
    auto task = eval::ResolveTask(t, o.task_options);
    if (!task.ok()) return Fail("eval", absl::StrCat("--task: ", task.status().message()), 2);
    // Two files of the same name (a/test.jsonl, b/test.jsonl) keep apart in the results.
    const std::string base_name = task->name;
    for (int k = 2; std::any_of(tasks.begin(), tasks.end(), [&](const auto& other) { return other.name == task->name; });
         ++k) {
      task->name = absl::StrCat(base_name, "-", k);
    }
    tasks.push_back(*std::move(task));
  }
  if (o.compare_base && !IsRegularFile(flags.adapter + "/adapter_config.json")) {
    return Fail("eval", absl::StrCat("--adapter: ", flags.adapter, "/adapter_config.json: not found"), 2);
  }

  // Data first: a bad file is refused before the model loads.
  std::unique_ptr<data::Dataset> dataset;
  if (!o.data.empty()) {
    data::DatasetOptions dataset_options;
    auto format = data::ParseFormat(o.format);
    if (!format.ok()) return Fail("eval", absl::StrCat("--format: ", format.status().message()), 2);
    dataset_options.format = *format;
    dataset_options.image_dir = o.image_dir;
    dataset_options.image_list = o.image_list;
    auto opened = data::Dataset::Open(o.data, dataset_options);
    if (!opened.ok()) return Fail("eval", std::string(opened.status().message()));
    dataset = *std::move(opened);
    for (const data::BadRecord& bad : dataset->bad_records()) std::fprintf(stderr, "skipped %s\n", bad.ToString().c_str());
    if (dataset->size() == 0) return Fail("eval", "--data: no valid records");
    if (want_generation && dataset->format() == data::Format::kText) {
      return Fail("eval",
                  "generation metrics need replies to compare with; plain text has none (use loss, perplexity)", 2);
    }
  }

  auto tok = tokenizer::Tokenizer::Load(o.tokenizer.empty() ? o.model : o.tokenizer);
  if (!tok.ok()) return Fail("eval", std::string(tok.status().message()));
  ModelFlags load_flags = flags;
  if (o.compare_base) load_flags.adapter.clear();  // the base first; the adapter is added after
  auto model = load_flags.Load(o.model, Dtype::kF32);
  if (!model.ok()) return Fail("eval", std::string(model.status().message()));
  lora::SetTraining(model->get(), false);
  std::unique_ptr<tokenizer::ChatTemplate> chat;
  if (dataset != nullptr && dataset->format() != data::Format::kText) {
    auto t = tokenizer::ChatTemplate::ForTokenizer(**tok);
    if (!t.ok()) return Fail("eval", std::string(t.status().message()));
    chat = *std::move(t);
  }
  data::CollatorOptions collator_options;
  collator_options.max_length = o.max_length > 0 ? o.max_length : 2048;
  collator_options.add_eos_to_text = false;  // plain text: the tokens as the tokenizer gives them
  if ((*model)->has_vision()) {
    auto images = ModelImageOptions(o.model, tok->get(), **model);
    if (!images.ok()) return Fail("eval", std::string(images.status().message()));
    collator_options.images = *images;
  }
  const data::Collator collator(**tok, chat.get(), collator_options);

  // One evaluation of the model as it is now: the metrics into *out, the per-unit results into
  // *units (for --compare-base), one JSON object per prompt or question into *lines. Returns an
  // error message, empty when it ran. `label` names the pass in progress lines.
  nlohmann::json skipped = nlohmann::json::array();
  const auto evaluate = [&](const std::string& label, nlohmann::json* out, eval::EvalUnits* units,
                            std::vector<nlohmann::json>* lines, bool record_skipped) -> std::string {
    if (want_loss) {
      const int64_t total = o.max_records > 0 ? std::min(o.max_records, dataset->size()) : dataset->size();
      ProgressReporter progress({.label = absl::StrCat("eval loss", label), .total = total, .unit = "records"});
      eval::LossOptions lo;
      lo.batch_size = o.batch_size;
      lo.max_records = o.max_records;
      lo.on_progress = [&](int64_t done, int64_t) { progress.Set(done); };
      auto loss = eval::EvaluateLoss(**model, *dataset, collator, lo);
      progress.Finish();
      if (!loss.ok()) return std::string(loss.status().message());
      if (record_skipped) {
        for (const auto& [where, why] : loss->skipped) skipped.push_back({{"where", where}, {"reason", why}});
      }
      if (Wants(o, "loss")) (*out)["loss"] = loss->loss;
      if (Wants(o, "perplexity")) (*out)["perplexity"] = loss->perplexity;
      (*out)["n_tokens"] = loss->n_tokens;
      units->records = loss->records;
    }
    if (want_generation) {
      std::vector<std::pair<std::string, std::string>> skipped_items;
      auto items = eval::MakeGenerationItems(*dataset, collator, **tok, *chat, o.max_records, &skipped_items);
      if (!items.ok()) return std::string(items.status().message());
      if (record_skipped) {
        for (const auto& [where, why] : skipped_items) skipped.push_back({{"where", where}, {"reason", why}});
      }
      model::GenerationOptions go;
      go.max_new_tokens = o.max_new_tokens;
      ProgressReporter progress(
          {.label = absl::StrCat("eval generate", label), .total = static_cast<int64_t>(items->size()), .unit = "prompts"});
      const absl::Status generated = eval::GeneratePredictions(
          **model, **tok, go, &*items,
          [&](int64_t done, int64_t) { progress.Set(done); },
          o.batch_size);
      progress.Finish();
      if (!generated.ok()) return std::string(generated.message());
      const eval::GenerationScores s = eval::ScoreGenerations(*items);
      (*out)["items"] = s.items;
      if (Wants(o, "exact_match")) (*out)["exact_match"] = s.exact_match;
      if (Wants(o, "rouge")) {
        (*out)["rouge1"] = s.rouge1;
        (*out)["rouge2"] = s.rouge2;
        (*out)["rougeL"] = s.rougeL;
      }
      if (Wants(o, "bleu")) (*out)["bleu"] = s.bleu;
      if (Wants(o, "chrf")) (*out)["chrf"] = s.chrf;
      for (const eval::GenerationItem& item : *items) {
        lines->push_back({{"where", item.where},
                          {"prediction", item.prediction},
                          {"reference", item.references.front()},
                          {"references", item.references}});
      }
      for (eval::GenerationItem& item : *items) item.pixel_values.clear();  // not needed to score again
      units->items = *std::move(items);
    }
    if (want_choice) {
      nlohmann::json per_task = nlohmann::json::object();
      for (const eval::ChoiceTask& task : tasks) {
        const int64_t total = o.max_records > 0 ? std::min<int64_t>(o.max_records, task.docs.size()) : task.docs.size();
        ProgressReporter progress({.label = absl::StrCat("eval ", task.name, label), .total = total, .unit = "questions"});
        eval::ChoiceOptions co;
        co.batch_size = o.batch_size;
        co.max_length = o.max_length;
        co.max_docs = o.max_records;
        co.on_progress = [&](int64_t done, int64_t) { progress.Set(done); };
        auto r = eval::EvaluateMultipleChoice(**model, **tok, task, co);
        progress.Finish();
        if (!r.ok()) return std::string(r.status().message());
        nlohmann::json t = {{"n_docs", r->n_docs}};
        if (Wants(o, "accuracy")) t["accuracy"] = r->accuracy;
        if (Wants(o, "accuracy_norm")) t["accuracy_norm"] = r->accuracy_norm;
        per_task[task.name] = t;
        for (int64_t d = 0; d < r->n_docs; ++d) {
          const eval::ChoiceScores& c = r->docs[static_cast<size_t>(d)];
          nlohmann::json greedy = nlohmann::json::array();
          for (const bool g : c.is_greedy) greedy.push_back(g);
          lines->push_back({{"task", task.name},
                            {"where", task.docs[static_cast<size_t>(d)].where},
                            {"loglikelihood", c.loglikelihood},
                            {"is_greedy", greedy},
                            {"pred", c.pred},
                            {"pred_norm", c.pred_norm},
                            {"gold", c.gold}});
        }
        units->choices.insert(units->choices.end(), r->docs.begin(), r->docs.end());
      }
      // Over every question of every task, counted (what --compare-base's mean recomputes).
      int64_t right = 0, right_norm = 0;
      for (const eval::ChoiceScores& c : units->choices) {
        right += c.pred == c.gold;
        right_norm += c.pred_norm == c.gold;
      }
      const double docs = std::max<double>(1.0, static_cast<double>(units->choices.size()));
      if (Wants(o, "accuracy")) (*out)["accuracy"] = static_cast<double>(right) / docs;
      if (Wants(o, "accuracy_norm")) (*out)["accuracy_norm"] = static_cast<double>(right_norm) / docs;
      (*out)["tasks"] = per_task;
    }
    return "";
  };

  nlohmann::json result = nlohmann::json::object(), base_result = nlohmann::json::object();
  eval::EvalUnits units, base_units;
  std::vector<nlohmann::json> lines, base_lines;
  if (o.compare_base) {
    // The base first (the model was loaded without the adapter), then the adapter on it.
    if (std::string e = evaluate(" (base)", &base_result, &base_units, &base_lines, false); !e.empty()) {
      return Fail("eval", e);
    }
    if (auto loaded = lora::LoadAdapter(model->get(), flags.adapter); !loaded.ok()) {
      return Fail("eval", std::string(loaded.status().message()));
    }
    lora::SetTraining(model->get(), false);
  }
  if (std::string e = evaluate(o.compare_base ? " (adapter)" : "", &result, &units, &lines, true); !e.empty()) {
    return Fail("eval", e);
  }
  std::vector<eval::MetricComparison> comparison;
  if (o.compare_base) {
    std::vector<std::string> compared;
    for (const std::string& m : o.metrics) compared.push_back(m);
    eval::BootstrapOptions bo;
    bo.resamples = o.bootstrap;
    bo.seed = o.task_options.seed;
    auto c = eval::CompareEvaluations(base_units, units, compared, bo);
    if (!c.ok()) return Fail("eval", std::string(c.status().message()));
    comparison = *std::move(c);
    nlohmann::json table = nlohmann::json::object();
    for (const eval::MetricComparison& row : comparison) {
      table[row.metric] = {{"base", row.base},           {"adapter", row.adapter},     {"difference", row.difference},
                           {"ci95_low", row.low},        {"ci95_high", row.high},      {"units", row.units}};
    }
    result["base"] = base_result;
    result["compare"] = table;
    result["bootstrap_resamples"] = o.bootstrap;
    // Each line also carries the base's answer.
    for (size_t i = 0; i < lines.size() && i < base_lines.size(); ++i) {
      if (base_lines[i].contains("prediction")) lines[i]["base_prediction"] = base_lines[i]["prediction"];
      if (base_lines[i].contains("loglikelihood")) {
        lines[i]["base_loglikelihood"] = base_lines[i]["loglikelihood"];
        lines[i]["base_pred"] = base_lines[i]["pred"];
        lines[i]["base_pred_norm"] = base_lines[i]["pred_norm"];
      }
    }
  }
  if (!o.predictions.empty()) {
    std::string text;
    for (const nlohmann::json& line : lines) {
      absl::StrAppend(&text, line.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace), "\n");
    }
    if (const absl::Status w = WriteFileAtomically(o.predictions, text); !w.ok()) {
      return Fail("eval", std::string(w.message()));
    }
  }
  result["skipped"] = skipped;
  if (o.json) {
    std::printf("%s\n", result.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
    return 0;
  }
  const std::string model_name = absl::StrCat(o.model, flags.adapter.empty() ? "" : absl::StrCat(" + ", flags.adapter));
  if (dataset != nullptr) {
    std::printf("eval: %s on %lld records of %s\n", model_name.c_str(),
                static_cast<long long>(o.max_records > 0 ? std::min(o.max_records, dataset->size()) : dataset->size()),
                std::string(data::FormatName(dataset->format())).c_str());
  } else {
    std::printf("eval: %s\n", model_name.c_str());
  }
  if (result.contains("tasks")) {
    for (const auto& [name, t] : result["tasks"].items()) {
      std::printf("  task %s (%lld questions):", name.c_str(), static_cast<long long>(t["n_docs"].get<int64_t>()));
      for (const char* key : {"accuracy", "accuracy_norm"}) {
        if (t.contains(key)) std::printf(" %s %.4f", key, t[key].get<double>());
      }
      std::printf("\n");
    }
  }
  for (const char* key : {"loss", "perplexity", "n_tokens", "items", "exact_match", "rouge1", "rouge2", "rougeL",
                          "bleu", "chrf", "accuracy", "accuracy_norm"}) {
    if (!result.contains(key)) continue;
    if (result[key].is_number_integer()) {
      std::printf("  %-12s %lld\n", key, static_cast<long long>(result[key].get<int64_t>()));
    } else {
      std::printf("  %-12s %.4f\n", key, result[key].get<double>());
    }
  }
  if (!comparison.empty()) {
    std::printf("  base vs adapter (%lld bootstrap resamples, paired; 95%% interval of the difference):\n",
                static_cast<long long>(o.bootstrap));
    std::printf("  %-14s %12s %12s %12s   %s\n", "metric", "base", "adapter", "difference", "95% interval");
    for (const eval::MetricComparison& row : comparison) {
      std::printf("  %-14s %12.4f %12.4f %+12.4f   [%+.4f, %+.4f]%s\n", row.metric.c_str(), row.base, row.adapter,
                  row.difference, row.low, row.high, row.low > 0 || row.high < 0 ? " *" : "");
    }
    std::printf("  (* the interval excludes 0)\n");
  }
  for (const auto& s : skipped) {
    std::printf("  skipped %s: %s\n", s["where"].get<std::string>().c_str(), s["reason"].get<std::string>().c_str());
  }
  return 0;
}

}  // namespace llmtrain::cli

namespace llmtrain::cli {

int RunMakeTask(const std::vector<std::string>& args) {
  static constexpr char kMakeTaskHelp[] =
      "usage: llmtrain make-task NAME --output FILE [--docs 200] [--choices 4] [--seed 0]\n"
      "  NAME: debian-packages (what a package does, from /var/lib/dpkg/status) or iso-countries\n"
      "  (the country of an ISO 3166-1 code, from Debian's iso-codes). Writes the task file that\n"
      "  `llmtrain eval --task NAME` scores, one {\"context\", \"choices\", \"gold\"} per line.\n";
  std::string name, output;
  eval::BuiltinTaskOptions options;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "--help" || a == "-h") {
      std::fputs(kMakeTaskHelp, stdout);
      return 0;
    }
    if (a.rfind("--", 0) != 0) {
      if (!name.empty()) return Fail("make-task", absl::StrCat("one task name expected, found \"", a, "\" too"), 2);
      name = a;
      continue;
    }
    if (i + 1 >= args.size()) return Fail("make-task", absl::StrCat(a, " needs a value\n", kMakeTaskHelp), 2);
    const std::string& v = args[++i];
    bool ok = true;
    if (a == "--output") {
      output = v;
    } else if (a == "--docs") {
      ok = absl::SimpleAtoi(v, &options.docs) && options.docs >= 1;
    } else if (a == "--choices") {
      ok = absl::SimpleAtoi(v, &options.choices) && options.choices >= 2;
    } else if (a == "--seed") {
      ok = absl::SimpleAtoi(v, &options.seed);
    } else {
      return Fail("make-task", absl::StrCat("unknown option ", a, "\n", kMakeTaskHelp), 2);
    }
    if (!ok) return Fail("make-task", absl::StrCat(a, ": expected a number in range, found \"", v, "\""), 2);
  }
  if (name.empty() || output.empty()) return Fail("make-task", absl::StrCat("NAME and --output are required\n", kMakeTaskHelp), 2);
  auto task = eval::BuildBuiltinTask(name, options);
  if (!task.ok()) return Fail("make-task", std::string(task.status().message()));
  if (const absl::Status w = eval::WriteChoiceTask(*task, output); !w.ok()) return Fail("make-task", std::string(w.message()));
  std::printf("%s: %zu questions of %s, %lld choices each\n", output.c_str(), task->docs.size(), name.c_str(),
              static_cast<long long>(options.choices));
  return 0;
}

}  // namespace llmtrain::cli
