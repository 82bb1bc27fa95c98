// eval/: loss and perplexity against transformers (+ PEFT) on the real Gemma 3 270M GGUF, for plain
// text (every token after the first of tokenizer(text)) and Dolly records (the trainer's labels).
#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdio>

#include "absl/strings/match.h"
#include "llmtrain/core/atomic_file.h"
#include "llmtrain/data/collator.h"
#include "llmtrain/data/dataset.h"
#include "llmtrain/eval/evaluate.h"
#include "llmtrain/eval/multiple_choice.h"
#include "llmtrain/lora/lora.h"
#include "llmtrain/lora/adapter_config.h"
#include "llmtrain/model/decoder.h"
#include "llmtrain/tokenizer/chat_template.h"
#include "llmtrain/tokenizer/tokenizer.h"
#include "nlohmann/json.hpp"
#include "testing/json_util.h"
#include "testing/reference.h"

namespace llmtrain {
namespace {

using nlohmann::json;

// Per record: our summed NLL against the reference's, relative; token counts must be equal.
double WorstRecordError(const eval::LossResult& ours, const json& theirs, int64_t* count_mismatches) {
  REQUIRE(ours.records.size() == theirs.size());
  double worst = 0;
  for (size_t i = 0; i < ours.records.size(); ++i) {
    const double want = theirs[i][0].get<double>();
    worst = std::max(worst, std::abs(ours.records[i].nll_sum - want) / std::abs(want));
    *count_mismatches += ours.records[i].n_tokens != theirs[i][1].get<int64_t>();
  }
  return worst;
}

double ReferenceLoss(const json& theirs) {
  double nll = 0;
  int64_t n = 0;
  for (const json& r : theirs) {
    nll += r[0].get<double>();
    n += r[1].get<int64_t>();
  }
  return nll / static_cast<double>(n);
}

TEST_CASE("eval: loss and perplexity equal transformers and PEFT on the real 270M (text and Dolly records)",
          "[eval][reference][real]") {
  if (!testing::ReferenceStackAvailable()) return;
  const std::string dir = testing::TempDir("eval_loss");
  REQUIRE(testing::RunReference("eval_ref.py", {"loss_data", dir}).exit_code == 0);
  const std::string gguf = std::string(LLMTRAIN_SOURCE_DIR) + "/.venv/models/gemma-3-270m-q4_k_m.gguf";
  auto model = model::Decoder::Load(gguf, {});
  REQUIRE(model.ok());
  auto tok = tokenizer::Tokenizer::Load(gguf);
  REQUIRE(tok.ok());
  auto chat = tokenizer::ChatTemplate::ForTokenizer(**tok);
  REQUIRE(chat.ok());

  // Plain text, format detected: every token after the first, no EOS appended (as transformers'
  // loss on tokenizer(text) counts them).
  auto text_data = data::Dataset::Open({dir + "/text.jsonl"});
  REQUIRE(text_data.ok());
  REQUIRE((*text_data)->format() == data::Format::kText);
  data::CollatorOptions text_options;
  text_options.add_eos_to_text = false;
  const data::Collator text_collator(**tok, chat->get(), text_options);
  // Dolly with the model's chat template: the response and the end of turn count, the prompt not.
  auto dolly_data = data::Dataset::Open({dir + "/dolly.jsonl"});
  REQUIRE(dolly_data.ok());
  const data::Collator dolly_collator(**tok, chat->get(), data::CollatorOptions());
  json rows = {{"ids", json::array()}, {"labels", json::array()}};
  for (int64_t i = 0; i < (*dolly_data)->size(); ++i) {
    auto example = (*dolly_data)->Get(i);
    REQUIRE(example.ok());
    auto t = dolly_collator.Tokenize(*example);
    REQUIRE(t.ok());
    rows["ids"].push_back(t->ids);
    rows["labels"].push_back(t->labels);
  }
  REQUIRE(WriteFileAtomically(dir + "/dolly_ids.json", rows.dump()).ok());

  eval::LossOptions options;
  options.batch_size = 3;  // batches of several lengths, right-padded
  int64_t progress_calls = 0;
  options.on_progress = [&](int64_t done, int64_t total) {
    ++progress_calls;
    CHECK(done <= total);
  };
  auto base_text = eval::EvaluateLoss(**model, **text_data, text_collator, options);
  REQUIRE(base_text.ok());
  auto base_dolly = eval::EvaluateLoss(**model, **dolly_data, dolly_collator, options);
  REQUIRE(base_dolly.ok());
  CHECK(progress_calls >= 4);

  const auto run = testing::RunReference("eval_ref.py", {"loss", gguf, dir});
  INFO(run.out);
  REQUIRE(run.exit_code == 0);
  const json ref = testing::LastJsonLine(run.out);
  CHECK(ref["bos_first"].get<bool>());

  REQUIRE(lora::LoadAdapter(model->get(), dir + "/adapter").ok());
  lora::SetTraining(model->get(), false);
  auto adapter_text = eval::EvaluateLoss(**model, **text_data, text_collator, options);
  REQUIRE(adapter_text.ok());
  auto adapter_dolly = eval::EvaluateLoss(**model, **dolly_data, dolly_collator, options);
  REQUIRE(adapter_dolly.ok());

  int64_t count_mismatches = 0;
  const double worst = std::max({WorstRecordError(*base_text, ref["text"]["base"], &count_mismatches),
                                 WorstRecordError(*base_dolly, ref["dolly"]["base"], &count_mismatches),
                                 WorstRecordError(*adapter_text, ref["text"]["adapter"], &count_mismatches),
                                 WorstRecordError(*adapter_dolly, ref["dolly"]["adapter"], &count_mismatches)});
  double worst_loss = 0;
  const std::pair<const eval::LossResult*, const json*> totals[] = {
      {&*base_text, &ref["text"]["base"]}, {&*base_dolly, &ref["dolly"]["base"]},
      {&*adapter_text, &ref["text"]["adapter"]}, {&*adapter_dolly, &ref["dolly"]["adapter"]}};
  for (const auto& [ours, theirs] : totals) {
    const double want = ReferenceLoss(*theirs);
    worst_loss = std::max(worst_loss, std::abs(ours->loss - want) / want);
    CHECK(ours->perplexity == Approx(std::exp(ours->loss)));
  }
  std::printf("eval: 270M GGUF, 12 texts (%lld tokens) and 8 Dolly records (%lld target tokens), base and a random "
              "PEFT adapter: loss %.4f / %.4f (text), %.4f / %.4f (Dolly); worst record NLL rel diff %.2e, worst loss "
              "rel diff %.2e vs transformers + PEFT\n",
              static_cast<long long>(base_text->n_tokens), static_cast<long long>(base_dolly->n_tokens),
              base_text->loss, adapter_text->loss, base_dolly->loss, adapter_dolly->loss, worst, worst_loss);
  CHECK(count_mismatches == 0);
  CHECK(worst <= 1e-5);
  CHECK(worst_loss <= 1e-5);
  CHECK(std::abs(adapter_text->loss - base_text->loss) > 1e-3);  // the adapter changes the model
}

TEST_CASE("eval: EvaluateLoss refuses bad options and lists the records the collator refuses", "[eval][real]") {
  const std::string dir = testing::TempDir("eval_loss_bad");
  REQUIRE(WriteFileAtomically(dir + "/d.jsonl", "{\"text\": \"a short text\"}\n{\"text\": \"" + std::string(300, 'x') +
                                                     " " + std::string(300, 'y') + "\"}\n")
              .ok());
  const std::string gguf = std::string(LLMTRAIN_SOURCE_DIR) + "/.venv/models/gemma-3-270m-q4_k_m.gguf";
  auto model = model::Decoder::Load(gguf, {});
  REQUIRE(model.ok());
  auto tok = tokenizer::Tokenizer::Load(gguf);
  REQUIRE(tok.ok());
  auto data = data::Dataset::Open({dir + "/d.jsonl"});
  REQUIRE(data.ok());
  data::CollatorOptions co;
  co.max_length = 8;
  co.truncation = data::CollatorOptions::Truncation::kDrop;
  const data::Collator collator(**tok, nullptr, co);
  eval::LossOptions bad;
  bad.batch_size = 0;
  CHECK_THAT(std::string(eval::EvaluateLoss(**model, **data, collator, bad).status().message()),
             Catch::Contains("LossOptions.batch_size"));
  auto r = eval::EvaluateLoss(**model, **data, collator);
  REQUIRE(r.ok());
  CHECK(r->records.size() == 1);
  REQUIRE(r->skipped.size() == 1);
  CHECK(r->skipped[0].first == dir + "/d.jsonl:2");
  CHECK(r->n_tokens == r->records[0].n_tokens);
}

// The command line over the same library calls: its JSON keys, its loss equal to EvaluateLoss's,
// its predictions file scored again equal to its metrics, and its refusals.
TEST_CASE("eval: llmtrain eval reports loss, perplexity, generation metrics and task accuracy", "[eval][real][cli]") {
  const std::string dir = testing::TempDir("eval_cli");
  std::string dolly;
  for (int i = 0; i < 6; ++i) {
    const char* answers[] = {"Paris", "4", "blue", "Paris", "a cat", "4"};
    const char* questions[] = {"What is the capital of France?", "What is 2 + 2?", "What colour is the sky?",
                               "What is the capital of France?", "Which animal says meow?", "What is 2 + 2?"};
    dolly += nlohmann::json({{"instruction", questions[i]}, {"context", ""}, {"response", answers[i]},
                             {"category", "open_qa"}}).dump() + "\n";
  }
  REQUIRE(WriteFileAtomically(dir + "/qa.jsonl", dolly).ok());
  REQUIRE(WriteFileAtomically(dir + "/text.jsonl", "{\"text\": \"Some plain text.\"}\n").ok());
  const std::string gguf = std::string(LLMTRAIN_SOURCE_DIR) + "/.venv/models/gemma-3-270m-q4_k_m.gguf";
  const std::string cli = testing::ShellQuote(testing::CliPath()) + " eval --model " + testing::ShellQuote(gguf);
  const auto run = testing::RunCommand(cli + " --data " + testing::ShellQuote(dir + "/qa.jsonl") +
                                       " --metrics loss,perplexity,exact_match,rouge,bleu,chrf --max-new-tokens 6"
                                       " --json --predictions " + testing::ShellQuote(dir + "/p.jsonl") + " 2>/dev/null");
  INFO(run.out);
  REQUIRE(run.exit_code == 0);
  const json out = testing::LastJsonLine(run.out);
  for (const char* key : {"loss", "perplexity", "n_tokens", "exact_match", "rouge1", "rouge2", "rougeL", "bleu", "chrf"}) {
    CHECK(out.contains(key));
  }
  // Records with the same prompt are one item with both replies as references.
  CHECK(out["items"].get<int64_t>() == 4);
  auto model = model::Decoder::Load(gguf, {});
  REQUIRE(model.ok());
  auto tok = tokenizer::Tokenizer::Load(gguf);
  REQUIRE(tok.ok());
  auto chat = tokenizer::ChatTemplate::ForTokenizer(**tok);
  REQUIRE(chat.ok());
  auto data = data::Dataset::Open({dir + "/qa.jsonl"});
  REQUIRE(data.ok());
  data::CollatorOptions co;
  co.add_eos_to_text = false;
  const data::Collator collator(**tok, chat->get(), co);
  auto loss = eval::EvaluateLoss(**model, **data, collator);
  REQUIRE(loss.ok());
  CHECK(out["loss"].get<double>() == Approx(loss->loss).epsilon(1e-12));
  CHECK(out["n_tokens"].get<int64_t>() == loss->n_tokens);
  std::vector<eval::GenerationItem> items;
  auto lines = ReadFileToString(dir + "/p.jsonl");
  REQUIRE(lines.ok());
  for (const json& line : testing::JsonLines(*lines)) {
    eval::GenerationItem item;
    item.prediction = line["prediction"];
    item.references = line["references"].get<std::vector<std::string>>();
    CHECK(line["reference"] == item.references.front());
    items.push_back(item);
  }
  REQUIRE(items.size() == 4);
  CHECK(items[0].references == std::vector<std::string>{"Paris", "Paris"});
  const eval::GenerationScores s = eval::ScoreGenerations(items);
  CHECK(out["rougeL"].get<double>() == Approx(s.rougeL).epsilon(1e-12));
  CHECK(out["bleu"].get<double>() == Approx(s.bleu).epsilon(1e-12));
  CHECK(out["chrf"].get<double>() == Approx(s.chrf).epsilon(1e-12));
  CHECK(out["exact_match"].get<double>() == Approx(s.exact_match).epsilon(1e-12));

  const auto unknown = testing::RunCommand(cli + " --data " + testing::ShellQuote(dir + "/qa.jsonl") + " --metrics bleurt 2>&1");
  CHECK(unknown.exit_code == 2);
  CHECK(absl::StrContains(unknown.out, "--metrics: unknown metric \"bleurt\""));
  const auto text = testing::RunCommand(cli + " --data " + testing::ShellQuote(dir + "/text.jsonl") + " --metrics rouge 2>&1");
  CHECK(text.exit_code == 2);
  CHECK(absl::StrContains(text.out, "plain text has none"));
  const auto missing = testing::RunCommand(cli + " --data " + testing::ShellQuote(dir + "/none.jsonl") + " 2>&1");
  CHECK(missing.exit_code == 1);
  CHECK(absl::StrContains(missing.out, dir + "/none.jsonl"));

  // Multiple choice: a task file and a built-in task, their accuracies over all their questions,
  // the per-question lines equal to EvaluateMultipleChoice's.
  const std::string mc =
      "{\"context\": \"Question: What is the capital of France?\\nAnswer:\", \"choices\": [\"Paris\", \"Rome\"], \"gold\": 0}\n"
      "{\"context\": \"2 + 2 =\", \"choices\": [\"3\", \"4\", \"5\"], \"gold\": 1}\n"
      "{\"context\": \"The sky is\", \"choices\": [\"green\", \"blue\"], \"gold\": 1, \"id\": 7}\n";
  REQUIRE(WriteFileAtomically(dir + "/mc.jsonl", mc).ok());
  const auto choice = testing::RunCommand(cli + " --task " + testing::ShellQuote(dir + "/mc.jsonl") +
                                          " --task iso-countries --task-docs 4 --json --predictions " +
                                          testing::ShellQuote(dir + "/mc_p.jsonl") + " 2>/dev/null");
  INFO(choice.out);
  REQUIRE(choice.exit_code == 0);
  const json mc_out = testing::LastJsonLine(choice.out);
  CHECK_FALSE(mc_out.contains("loss"));
  CHECK(mc_out["tasks"]["mc"]["n_docs"].get<int64_t>() == 3);
  CHECK(mc_out["tasks"]["iso-countries"]["n_docs"].get<int64_t>() == 4);
  const double pooled = (mc_out["tasks"]["mc"]["accuracy"].get<double>() * 3 +
                         mc_out["tasks"]["iso-countries"]["accuracy"].get<double>() * 4) / 7;
  CHECK(mc_out["accuracy"].get<double>() == Approx(pooled).epsilon(1e-12));
  CHECK(mc_out.contains("accuracy_norm"));
  auto task = eval::LoadChoiceTask(dir + "/mc.jsonl");
  REQUIRE(task.ok());
  auto scored = eval::EvaluateMultipleChoice(**model, **tok, *task);
  REQUIRE(scored.ok());
  CHECK(mc_out["tasks"]["mc"]["accuracy"].get<double>() == scored->accuracy);
  auto mc_lines = ReadFileToString(dir + "/mc_p.jsonl");
  REQUIRE(mc_lines.ok());
  const std::vector<json> per_question = testing::JsonLines(*mc_lines);
  REQUIRE(per_question.size() == 7);
  CHECK(per_question[1]["where"] == dir + "/mc.jsonl:2");
  CHECK(per_question[1]["loglikelihood"].get<std::vector<double>>() == scored->docs[1].loglikelihood);
  CHECK(per_question[1]["pred"].get<int64_t>() == scored->docs[1].pred);
  CHECK(per_question[6]["task"] == "iso-countries");

  // --compare-base: a random adapter against the base, on the records and the task at once.
  {
    auto adapted = model::Decoder::Load(gguf, {});
    REQUIRE(adapted.ok());
    lora::LoraConfig config;
    config.r = 4;
    config.alpha = 8;
    config.target_modules = {"q_proj", "v_proj"};
    REQUIRE(lora::InjectLora(adapted->get(), config).ok());
    at::manual_seed(3);
    for (auto& [name, adapter] : lora::Adapters(**adapted)) {
      at::NoGradGuard no_grad;
      adapter->lora_B().normal_(0, 0.05);
    }
    REQUIRE(lora::SaveAdapter(**adapted, config, dir + "/adapter").ok());
  }
  const auto compared = testing::RunCommand(cli + " --adapter " + testing::ShellQuote(dir + "/adapter") +
                                            " --compare-base --data " + testing::ShellQuote(dir + "/qa.jsonl") +
                                            " --task " + testing::ShellQuote(dir + "/mc.jsonl") +
                                            " --metrics loss,accuracy --bootstrap 200 --json 2>/dev/null");
  INFO(compared.out);
  REQUIRE(compared.exit_code == 0);
  const json cmp = testing::LastJsonLine(compared.out);
  REQUIRE(cmp.contains("base"));
  REQUIRE(cmp.contains("compare"));
  // The base is the model without the adapter: the same loss as EvaluateLoss on it.
  CHECK(cmp["base"]["loss"].get<double>() == Approx(loss->loss).epsilon(1e-12));
  CHECK(cmp["base"]["accuracy"].get<double>() == scored->accuracy);
  CHECK(cmp["compare"]["loss"]["base"] == cmp["base"]["loss"]);
  CHECK(cmp["compare"]["loss"]["adapter"] == cmp["loss"]);
  CHECK(cmp["compare"]["loss"]["difference"].get<double>() ==
        Approx(cmp["loss"].get<double>() - cmp["base"]["loss"].get<double>()).epsilon(1e-12));
  CHECK(cmp["compare"]["loss"]["difference"].get<double>() != 0);
  CHECK(cmp["compare"]["loss"]["ci95_low"].get<double>() <= cmp["compare"]["loss"]["ci95_high"].get<double>());
  CHECK(cmp["compare"]["loss"]["units"].get<int64_t>() == 6);
  CHECK(cmp["compare"]["accuracy"]["units"].get<int64_t>() == 3);
  CHECK(cmp["bootstrap_resamples"].get<int64_t>() == 200);
  const auto no_adapter = testing::RunCommand(cli + " --compare-base --task " + testing::ShellQuote(dir + "/mc.jsonl") + " 2>&1");
  CHECK(no_adapter.exit_code == 2);
  CHECK(absl::StrContains(no_adapter.out, "--compare-base needs --adapter"));

  // Refused before the model loads (the model path does not exist, the task error comes first).
  const std::string no_model = testing::ShellQuote(testing::CliPath()) + " eval --model " + testing::ShellQuote(dir + "/no-model");
  REQUIRE(WriteFileAtomically(dir + "/gold.jsonl", "{\"context\": \"Q\", \"choices\": [\"a\", \"b\"], \"gold\": 5}\n").ok());
  const auto gold = testing::RunCommand(no_model + " --task " + testing::ShellQuote(dir + "/gold.jsonl") + " 2>&1");
  CHECK(gold.exit_code == 2);
  CHECK(absl::StrContains(gold.out, dir + "/gold.jsonl:1: field \"gold\": 5 is outside \"choices\""));
  const auto unknown_task = testing::RunCommand(no_model + " --task mmlu 2>&1");
  CHECK(unknown_task.exit_code == 2);
  CHECK(absl::StrContains(unknown_task.out, "unknown task \"mmlu\""));
  const auto no_task = testing::RunCommand(no_model + " --data " + testing::ShellQuote(dir + "/qa.jsonl") +
                                           " --metrics accuracy 2>&1");
  CHECK(no_task.exit_code == 2);
  CHECK(absl::StrContains(no_task.out, "accuracy and accuracy_norm need --task"));
  const auto bad_metric = testing::RunCommand(no_model + " --task iso-countries --metrics accuracy,f1 2>&1");
  CHECK(bad_metric.exit_code == 2);
  CHECK(absl::StrContains(bad_metric.out, "unknown metric \"f1\""));
}

}  // namespace
}  // namespace llmtrain
