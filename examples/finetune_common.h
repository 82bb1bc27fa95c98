// The QLoRA recipe that examples/gemma_finetune.cpp and examples/qwen_finetune.cpp share, built
// from the library's components one by one (what spec::BuildTrainer does in one call), so each
// step shows which part of the public API it uses. The run spec supplies every value; nothing
// here decides one.
//
//   1 spec  2 data  3 tokenizer + chat template  4 collator + loader  5 model (4-bit base)
//   6 LoRA adapter  7 AdamW + schedule  8 engine + metric writers  9 Trainer: run
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <atomic>
#include <csignal>
#include <cstdio>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "llmtrain/data/collator.h"
#include "llmtrain/data/dataset.h"
#include "llmtrain/lora/lora.h"
#include "llmtrain/model/decoder.h"
#include "llmtrain/spec/build.h"
#include "llmtrain/spec/run_spec.h"
#include "llmtrain/tokenizer/chat_template.h"
#include "llmtrain/tokenizer/tokenizer.h"
#include "llmtrain/train/metrics.h"
#include "llmtrain/train/optimizer.h"
#include "llmtrain/train/trainer.h"

namespace llmtrain::examples {

inline std::atomic<bool> g_stop{false};

inline int Failed(const absl::Status& status) {
  std::fprintf(stderr, "%s\n", std::string(status.message()).c_str());
  return 1;
}

/// argv: SPEC [--resume] [path.to.field=value ...]. `families` are the model types the program
/// is for; `describe` prints what is particular to the family of the model it loaded.
inline int RunQloraRecipe(int argc, char** argv, const std::vector<std::string>& families,
                          const std::function<void(const model::Decoder&)>& describe) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s SPEC.textproto [--resume] [path.to.field=value ...]\n", argv[0]);
    return 2;
  }
  std::vector<std::string> overrides;
  bool resume = false;
  for (int i = 2; i < argc; ++i) {
    if (std::string(argv[i]) == "--resume") {
      resume = true;
    } else {
      overrides.emplace_back(argv[i]);
    }
  }
  try {
    // 1. The run spec: loaded, overridden, checked whole before anything loads.
    auto run = spec::LoadRunSpec(argv[1], overrides);
    if (!run.ok()) return Failed(run.status());
    if (run->model().family().empty()) run->mutable_model()->set_family(families.front());
    if (std::find(families.begin(), families.end(), run->model().family()) == families.end()) {
      return Failed(absl::InvalidArgumentError(absl::StrCat("model.family: this program runs ",
                                                            absl::StrJoin(families, " or "), ", not ",
                                                            run->model().family())));
    }
    if (absl::Status valid = spec::ValidateRunSpec(*run); !valid.ok()) return Failed(valid);
    train::TrainerComponents parts;

    // 2. Data: every record checked, bad ones listed by file:line and skipped.
    auto dataset_options = spec::ToDatasetOptions(*run);
    if (!dataset_options.ok()) return Failed(dataset_options.status());
    const std::vector<std::string> train_files(run->data().train_files().begin(), run->data().train_files().end());
    auto train_data = data::Dataset::Open(train_files, *dataset_options);
    if (!train_data.ok()) return Failed(train_data.status());
    parts.train_data = *std::move(train_data);
    if (absl::Status ok = parts.train_data->CheckBadFraction(run->data().max_bad_fraction()); !ok.ok()) return Failed(ok);
    std::printf("[2] train data: %s\n", parts.train_data->Summary().c_str());
    if (!run->data().eval_files().empty()) {
      const std::vector<std::string> eval_files(run->data().eval_files().begin(), run->data().eval_files().end());
      auto eval_options = spec::ToEvalDatasetOptions(*run);  // Flickr8K: the dev split's images
      if (!eval_options.ok()) return Failed(eval_options.status());
      auto eval_data = data::Dataset::Open(eval_files, *eval_options);
      if (!eval_data.ok()) return Failed(eval_data.status());
      parts.eval_data = *std::move(eval_data);
      std::printf("[2] eval data: %lld records\n", static_cast<long long>(parts.eval_data->size()));
    }

    // 3. Tokenizer and chat template: the model's own (GGUF vocabulary or tokenizer.json).
    const std::string tokenizer_path = run->model().tokenizer().empty() ? run->model().path() : run->model().tokenizer();
    auto tok = tokenizer::Tokenizer::Load(tokenizer_path);
    if (!tok.ok()) return Failed(tok.status());
    parts.tokenizer = *std::move(tok);
    if (run->data().template_() == spec::DataSpec::model) {
      auto chat = tokenizer::ChatTemplate::ForTokenizer(*parts.tokenizer);
      if (!chat.ok()) return Failed(chat.status());
      parts.chat = *std::move(chat);
    }
    std::printf("[3] tokenizer: %s BPE, %lld tokens; chat template: %s\n", std::string(parts.tokenizer->kind()).c_str(),
                static_cast<long long>(parts.tokenizer->vocab_size()), parts.chat ? "the model's" : "none (plain text)");

    // 4. Collator (templating, loss mask, truncation, padding or packing) and the loader.
    //    An image+text model also gets its images: tokens per image, the processor, decoding
    //    on a worker thread ahead of each step.
    data::CollatorOptions collator_options = spec::ToCollatorOptions(*run);
    if (absl::Status images = spec::ConfigureImages(*run, parts.tokenizer.get(), &collator_options); !images.ok()) {
      return Failed(images);
    }
    parts.collator = std::make_unique<data::Collator>(*parts.tokenizer, parts.chat.get(), collator_options);
    parts.train_loader = std::make_unique<data::DataLoader>(*parts.train_data, *parts.collator,
                                                            spec::ToLoaderOptions(*run, /*rank=*/0, /*world_size=*/1));
    if (collator_options.images.tokens_per_image > 0) {
      parts.train_loader->set_prefetch(true);
      std::printf("[4] images: %lld tokens each, %lld×%lld pixels, decoded ahead of each step\n",
                  static_cast<long long>(collator_options.images.tokens_per_image),
                  static_cast<long long>(collator_options.images.processor.height),
                  static_cast<long long>(collator_options.images.processor.width));
    }
    std::printf("[4] collator: %lld tokens per sequence, %lld sequences per micro-batch%s\n",
                static_cast<long long>(parts.collator->options().max_length),
                static_cast<long long>(parts.collator->options().batch_size),
                parts.collator->options().packing ? ", packed" : "");

    // 5. The model, its projections quantized to 4 bits as they load (QLoRA's frozen base).
    auto model = model::Decoder::Load(run->model().path(), spec::ToDecoderOptions(*run));
    if (!model.ok()) return Failed(model.status());
    parts.model = *std::move(model);
    const std::vector<std::string> projections = parts.model->LinearNames();
    std::printf("[5] model: %s, %lld layers, %zu projections stored %s\n", parts.model->spec().model_type.c_str(),
                static_cast<long long>(parts.model->config().text.num_hidden_layers), projections.size(),
                std::string(parts.model->linear(projections.front())->kind()).c_str());
    describe(*parts.model);

    // 6. The LoRA adapter, injected around the targeted projections (PEFT's names and init).
    parts.adapter = spec::ToLoraConfig(*run);
    auto targeted = lora::InjectLora(parts.model.get(), parts.adapter);
    if (!targeted.ok()) return Failed(targeted.status());
    std::vector<at::Tensor> params;
    int64_t n_params = 0;
    for (const auto& [key, t] : lora::TrainableParameters(*parts.model, parts.adapter)) {
      params.push_back(t);
      n_params += t.numel();
    }
    std::printf("[6] adapter: rank %lld on %zu projections, %lld trainable parameters\n",
                static_cast<long long>(parts.adapter.r), targeted->size(), static_cast<long long>(n_params));

    // 7. AdamW over the adapter, and the learning-rate schedule over the run's steps.
    parts.optimizer = std::make_unique<train::AdamW>(params, spec::ToAdamWOptions(*run));
    const train::TrainerOptions options = spec::ToTrainerOptions(*run);
    const int64_t total = train::TotalSteps(options, parts.train_data->size(), run->training().micro_batch_size());
    auto schedule = spec::ToLrSchedule(*run, total);
    if (!schedule.ok()) return Failed(schedule.status());
    parts.schedule = std::make_unique<train::LrSchedule>(*schedule);
    std::printf("[7] optimizer: AdamW, peak lr %g, %s schedule over %lld steps\n", parts.optimizer->options().lr,
                spec::TrainingSpec::LrScheduler_Name(run->training().lr_scheduler()).c_str(), static_cast<long long>(total));

    // 8. One process (the sharded engine plugs in here), and where the metrics go.
    parts.engine = std::make_shared<train::SingleProcessEngine>();
    parts.metrics.push_back(train::MakeJsonlMetricsWriter(options.output_dir + "/metrics.jsonl"));
    parts.metrics.push_back(train::MakeReportWriter(options.output_dir));
    std::printf("[8] engine: one process; metrics: %s/metrics.jsonl, report.html\n", options.output_dir.c_str());
    at::manual_seed(run->training().seed());  // dropout's generator

    // 9. The trainer; Ctrl-C or SIGTERM stop after the current step with a checkpoint.
    auto trainer = train::Trainer::Create(std::move(parts), options);
    if (!trainer.ok()) return Failed(trainer.status());
    std::signal(SIGINT, [](int) { g_stop.store(true); });
    std::signal(SIGTERM, [](int) { g_stop.store(true); });
    train::RunOptions run_options;
    run_options.resume = resume;
    run_options.stop = &g_stop;
    if (absl::Status status = (*trainer)->Run(run_options); !status.ok()) return Failed(status);
    std::printf("[9] adapter: %s/adapter\n", options.output_dir.c_str());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
  return 0;
}

}  // namespace llmtrain::examples
