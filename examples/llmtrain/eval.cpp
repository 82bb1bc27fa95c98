// llmtrain eval --model PATH --data FILE... [--tokenizer PATH] [--adapter DIR] [--load-in-4bit]
//               [--format auto] [--image-dir DIR] [--image-list FILE] [--metrics loss,perplexity]
//               [--max-new-tokens 64] [--max-records 0] [--batch-size 8] [--max-length 2048]
//               [--predictions OUT.jsonl] [--json]
// Evaluates a model (and an adapter) on data in any format the trainer reads (eval/evaluate.h):
// the loss and perplexity with the trainer's masking, and generation metrics of greedy replies
// against the data's (eval/text_metrics.h).
#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "llmtrain/commands.h"
#include "llmtrain/core/atomic_file.h"
#include "llmtrain/core/progress.h"
#include "llmtrain/data/collator.h"
#include "llmtrain/data/dataset.h"
#include "llmtrain/data/image.h"
#include "llmtrain/eval/evaluate.h"
#include "llmtrain/lora/lora.h"
#include "llmtrain/model/decoder.h"
#include "llmtrain/tokenizer/chat_template.h"
#include "llmtrain/tokenizer/tokenizer.h"
#include "nlohmann/json.hpp"

namespace llmtrain::cli {
namespace {

constexpr char kHelp[] =
    "usage: llmtrain eval --model PATH --data FILE... [--tokenizer PATH] [--adapter DIR] [--load-in-4bit]\n"
    "                     [--format auto] [--image-dir DIR] [--image-list FILE]\n"
    "                     [--metrics loss,perplexity] [--max-new-tokens 64] [--max-records 0]\n"
    "                     [--batch-size 8] [--max-length 2048] [--predictions OUT.jsonl] [--json]\n"
    "  --data: one or more files in a format the trainer reads (auto-detected, or --format).\n"
    "  --metrics: any of loss, perplexity (per-token NLL over the tokens the trainer trains on:\n"
    "    the replies of conversations; every token after the first of plain text), exact_match,\n"
    "    rouge (rouge1, rouge2, rougeL), bleu, chrf: greedy replies to each prompt (the\n"
    "    conversation before its last assistant turn, records with the same prompt sharing their\n"
    "    replies as references), scored as rouge_score (use_stemmer) and sacrebleu do, on their\n"
    "    scales (ROUGE and exact_match 0-1, BLEU and chrF 0-100).\n"
    "  --max-records N: the first N records (0: all). --batch-size: sequences per loss forward.\n"
    "  --predictions OUT.jsonl: one line per prompt: {\"where\", \"prediction\", \"reference\",\n"
    "    \"references\"}. --json: one object of the metrics (and n_tokens, items, skipped).\n"
    "  --tokenizer PATH: when the model folder has none (a GGUF or a folder with tokenizer.json).\n";

struct Options {
  std::string model, tokenizer, format = "auto", image_dir, image_list, predictions;
  std::vector<std::string> data;
  std::vector<std::string> metrics = {"loss", "perplexity"};
  int64_t max_new_tokens = 64, max_records = 0, batch_size = 8, max_length = 2048;
  bool json = false;
};

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
  if (o.data.empty()) return Fail("eval", absl::StrCat("--data is required\n", kHelp), 2);
  for (const std::string& m : o.metrics) {
    static const char* const kKnown[] = {"loss", "perplexity", "exact_match", "rouge", "bleu", "chrf"};
    if (std::none_of(std::begin(kKnown), std::end(kKnown), [&](const char* k) { return m == k; })) {
      return Fail("eval", absl::StrCat("--metrics: unknown metric \"", m,
                                       "\" (loss, perplexity, exact_match, rouge, bleu, chrf)"), 2);
    }
  }
  const bool want_loss = Wants(o, "loss") || Wants(o, "perplexity");
  const bool want_generation = Wants(o, "exact_match") || Wants(o, "rouge") || Wants(o, "bleu") || Wants(o, "chrf");
  if (!o.predictions.empty() && !want_generation) {
    return Fail("eval", "--predictions needs a generation metric in --metrics (exact_match, rouge, bleu, chrf)", 2);
  }

  // Data first: a bad file is refused before the model loads.
  data::DatasetOptions dataset_options;
  auto format = data::ParseFormat(o.format);
  if (!format.ok()) return Fail("eval", absl::StrCat("--format: ", format.status().message()), 2);
  dataset_options.format = *format;
  dataset_options.image_dir = o.image_dir;
  dataset_options.image_list = o.image_list;
  auto dataset = data::Dataset::Open(o.data, dataset_options);
  if (!dataset.ok()) return Fail("eval", std::string(dataset.status().message()));
  for (const data::BadRecord& bad : (*dataset)->bad_records()) std::fprintf(stderr, "skipped %s\n", bad.ToString().c_str());
  if ((*dataset)->size() == 0) return Fail("eval", "--data: no valid records");
  if (want_generation && (*dataset)->format() == data::Format::kText) {
    return Fail("eval", "generation metrics need replies to compare with; plain text has none (use loss, perplexity)",
                2);
  }

  auto tok = tokenizer::Tokenizer::Load(o.tokenizer.empty() ? o.model : o.tokenizer);
  if (!tok.ok()) return Fail("eval", std::string(tok.status().message()));
  auto model = flags.Load(o.model, Dtype::kF32);
  if (!model.ok()) return Fail("eval", std::string(model.status().message()));
  lora::SetTraining(model->get(), false);
  std::unique_ptr<tokenizer::ChatTemplate> chat;
  if ((*dataset)->format() != data::Format::kText) {
    auto t = tokenizer::ChatTemplate::ForTokenizer(**tok);
    if (!t.ok()) return Fail("eval", std::string(t.status().message()));
    chat = *std::move(t);
  }
  data::CollatorOptions collator_options;
  collator_options.max_length = o.max_length;
  collator_options.add_eos_to_text = false;  // plain text: the tokens as the tokenizer gives them
  if ((*model)->has_vision()) {
    auto images = ModelImageOptions(o.model, tok->get(), **model);
    if (!images.ok()) return Fail("eval", std::string(images.status().message()));
    collator_options.images = *images;
  }
  const data::Collator collator(**tok, chat.get(), collator_options);

  nlohmann::json result = nlohmann::json::object();
  nlohmann::json skipped = nlohmann::json::array();
  if (want_loss) {
    const int64_t total = o.max_records > 0 ? std::min(o.max_records, (*dataset)->size()) : (*dataset)->size();
    ProgressReporter progress({.label = "eval loss", .total = total, .unit = "records"});
    eval::LossOptions lo;
    lo.batch_size = o.batch_size;
    lo.max_records = o.max_records;
    int64_t last = 0;
    lo.on_progress = [&](int64_t done, int64_t) {
      progress.Advance(done - last);
      last = done;
    };
    auto loss = eval::EvaluateLoss(**model, **dataset, collator, lo);
    progress.Finish();
    if (!loss.ok()) return Fail("eval", std::string(loss.status().message()));
    for (const auto& [where, why] : loss->skipped) skipped.push_back({{"where", where}, {"reason", why}});
    if (Wants(o, "loss")) result["loss"] = loss->loss;
    if (Wants(o, "perplexity")) result["perplexity"] = loss->perplexity;
    result["n_tokens"] = loss->n_tokens;
  }
  if (want_generation) {
    std::vector<std::pair<std::string, std::string>> skipped_items;
    auto items = eval::MakeGenerationItems(**dataset, collator, **tok, *chat, o.max_records, &skipped_items);
    if (!items.ok()) return Fail("eval", std::string(items.status().message()));
    for (const auto& [where, why] : skipped_items) skipped.push_back({{"where", where}, {"reason", why}});
    model::GenerationOptions go;
    go.max_new_tokens = o.max_new_tokens;
    ProgressReporter progress({.label = "eval generate", .total = static_cast<int64_t>(items->size()), .unit = "prompts"});
    const absl::Status generated =
        eval::GeneratePredictions(**model, **tok, go, &*items, [&](int64_t, int64_t) { progress.Advance(1); });
    progress.Finish();
    if (!generated.ok()) return Fail("eval", std::string(generated.message()));
    const eval::GenerationScores s = eval::ScoreGenerations(*items);
    result["items"] = s.items;
    if (Wants(o, "exact_match")) result["exact_match"] = s.exact_match;
    if (Wants(o, "rouge")) {
      result["rouge1"] = s.rouge1;
      result["rouge2"] = s.rouge2;
      result["rougeL"] = s.rougeL;
    }
    if (Wants(o, "bleu")) result["bleu"] = s.bleu;
    if (Wants(o, "chrf")) result["chrf"] = s.chrf;
    if (!o.predictions.empty()) {
      std::string lines;
      for (const eval::GenerationItem& item : *items) {
        absl::StrAppend(&lines,
                        nlohmann::json({{"where", item.where},
                                        {"prediction", item.prediction},
                                        {"reference", item.references.front()},
                                        {"references", item.references}})
                            .dump(-1, ' ', false, nlohmann::json::error_handler_t::replace),
                        "\n");
      }
      if (const absl::Status w = WriteFileAtomically(o.predictions, lines); !w.ok()) {
        return Fail("eval", std::string(w.message()));
      }
    }
  }
  result["skipped"] = skipped;
  if (o.json) {
    std::printf("%s\n", result.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
    return 0;
  }
  std::printf("eval: %s%s on %lld records of %s\n", o.model.c_str(),
              flags.adapter.empty() ? "" : absl::StrCat(" + ", flags.adapter).c_str(),
              static_cast<long long>(o.max_records > 0 ? std::min(o.max_records, (*dataset)->size()) : (*dataset)->size()),
              std::string(data::FormatName((*dataset)->format())).c_str());
  for (const char* key : {"loss", "perplexity", "n_tokens", "items", "exact_match", "rouge1", "rouge2", "rougeL",
                          "bleu", "chrf"}) {
    if (!result.contains(key)) continue;
    if (result[key].is_number_integer()) {
      std::printf("  %-12s %lld\n", key, static_cast<long long>(result[key].get<int64_t>()));
    } else {
      std::printf("  %-12s %.4f\n", key, result[key].get<double>());
    }
  }
  for (const auto& s : skipped) {
    std::printf("  skipped %s: %s\n", s["where"].get<std::string>().c_str(), s["reason"].get<std::string>().c_str());
  }
  return 0;
}

}  // namespace llmtrain::cli
