// Your own training loop over llmtrain's parts, without train::Trainer: the "link it into your
// own C++ trainer" use. The run spec supplies the model, adapter, data and optimizer settings;
// the loop is written out here, step by step:
//
//   for each optimizer step:
//     for each micro-batch: hidden = model.Hidden(…); loss = chunked cross-entropy over the LM
//                           head; (loss_sum / target tokens of the whole step).backward()
//     clip the gradient norm; AdamW step at lr × schedule; clear the gradients
//   save the adapter (PEFT format)
//
// It computes what the Trainer computes (examples_test checks losses and LoRA weights against
// it), without evaluation, checkpoints or the non-finite guard. Prints one JSON line per step:
// {"step", "loss", "grad_norm", "lr"}.
//
//   build/bin/custom_loop SPEC.textproto [path.to.field=value ...]
#include <ATen/ATen.h>

#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "llmtrain/data/collator.h"
#include "llmtrain/data/dataset.h"
#include "llmtrain/kernels/cross_entropy.h"
#include "llmtrain/lora/lora.h"
#include "llmtrain/model/decoder.h"
#include "llmtrain/spec/build.h"
#include "llmtrain/spec/run_spec.h"
#include "llmtrain/tokenizer/chat_template.h"
#include "llmtrain/tokenizer/tokenizer.h"
#include "llmtrain/train/optimizer.h"
#include "llmtrain/train/trainer.h"

namespace {

using namespace llmtrain;  // NOLINT: a program, not a header

int Failed(const absl::Status& status) {
  std::fprintf(stderr, "%s\n", std::string(status.message()).c_str());
  return 1;
}

// A row-major (B, T) int64 tensor from a batch field.
at::Tensor AsTensor(const std::vector<int64_t>& values, const data::Batch& b) {
  return at::tensor(at::ArrayRef<int64_t>(values), at::kLong).view({b.batch_size, b.seq_len});
}

int Main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s SPEC.textproto [path.to.field=value ...]\n", argv[0]);
    return 2;
  }
  auto run = spec::LoadRunSpec(argv[1], std::vector<std::string>(argv + 2, argv + argc));
  if (!run.ok()) return Failed(run.status());
  if (absl::Status valid = spec::ValidateRunSpec(*run); !valid.ok()) return Failed(valid);

  // The parts: data, tokenizer, collator and loader; the model with its adapter; AdamW.
  auto dataset_options = spec::ToDatasetOptions(*run);
  if (!dataset_options.ok()) return Failed(dataset_options.status());
  const std::vector<std::string> train_files(run->data().train_files().begin(), run->data().train_files().end());
  auto dataset = data::Dataset::Open(train_files, *dataset_options);
  if (!dataset.ok()) return Failed(dataset.status());
  const std::string tokenizer_path = run->model().tokenizer().empty() ? run->model().path() : run->model().tokenizer();
  auto tok = tokenizer::Tokenizer::Load(tokenizer_path);
  if (!tok.ok()) return Failed(tok.status());
  std::unique_ptr<tokenizer::ChatTemplate> chat;
  if (run->data().template_() == spec::DataSpec::model) {
    auto made = tokenizer::ChatTemplate::ForTokenizer(**tok);
    if (!made.ok()) return Failed(made.status());
    chat = *std::move(made);
  }
  const data::Collator collator(**tok, chat.get(), spec::ToCollatorOptions(*run));
  data::DataLoader loader(**dataset, collator, spec::ToLoaderOptions(*run, /*rank=*/0, /*world_size=*/1));
  auto model = model::Decoder::Load(run->model().path(), spec::ToDecoderOptions(*run));
  if (!model.ok()) return Failed(model.status());
  const lora::LoraConfig adapter = spec::ToLoraConfig(*run);
  if (auto targeted = lora::InjectLora(model->get(), adapter); !targeted.ok()) return Failed(targeted.status());
  std::vector<at::Tensor> params;
  for (const auto& [key, t] : lora::TrainableParameters(**model, adapter)) params.push_back(t);
  train::AdamW adam(params, spec::ToAdamWOptions(*run));
  const train::TrainerOptions options = spec::ToTrainerOptions(*run);
  const int64_t steps = train::TotalSteps(options, (*dataset)->size(), run->training().micro_batch_size());
  auto schedule = spec::ToLrSchedule(*run, steps);
  if (!schedule.ok()) return Failed(schedule.status());
  at::manual_seed(run->training().seed());  // dropout's generator
  lora::SetTraining(model->get(), true);     // dropout on

  kernels::CrossEntropyOptions ce_options;
  ce_options.final_softcap = (*model)->spec().final_softcap;  // Gemma 2 caps its logits
  for (int64_t step = 0; step < steps; ++step) {
    // The micro-batches of this step, and their target tokens: the loss is normalized by all of
    // them, so accumulation computes what one big batch would.
    std::vector<data::Batch> batches;
    int64_t targets = 0;
    for (int64_t i = 0; i < options.gradient_accumulation_steps; ++i) {
      auto batch = loader.Next();
      if (!batch.ok()) return Failed(batch.status());
      targets += batch->target_tokens;
      batches.push_back(*std::move(batch));
    }
    const double denominator = static_cast<double>(std::max<int64_t>(1, targets));
    double loss_sum = 0;
    for (const data::Batch& b : batches) {
      if (b.target_tokens == 0) continue;
      // Packed rows pass segment ids as the mask (no attention across examples).
      const at::Tensor hidden = (*model)->Hidden(AsTensor(b.input_ids, b),
                                                 AsTensor(b.segment_ids.empty() ? b.attention_mask : b.segment_ids, b),
                                                 AsTensor(b.position_ids, b));  // (B, T, C)
      const int64_t T = b.seq_len, C = hidden.size(-1);
      // Position t predicts token t + 1: hidden[:, :-1] against labels[:, 1:].
      const kernels::CrossEntropyResult ce = kernels::ChunkedCrossEntropy(
          hidden.narrow(1, 0, T - 1).reshape({-1, C}), (*model)->lm_head(),
          AsTensor(b.labels, b).narrow(1, 1, T - 1).reshape({-1}), ce_options);
      (ce.loss_sum / denominator).backward();
      loss_sum += ce.loss_sum.item<double>();
    }
    const double loss = loss_sum / denominator;
    const double grad_norm = train::ClipGradNorm(params, options.max_grad_norm);
    const double lr = adam.options().lr * schedule->Factor(step);
    if (std::isfinite(loss) && std::isfinite(grad_norm)) adam.Step(lr);  // else: skip this update
    for (at::Tensor& p : params) p.mutable_grad() = at::Tensor();
    std::printf("{\"step\": %lld, \"loss\": %.17g, \"grad_norm\": %.17g, \"lr\": %.17g}\n",
                static_cast<long long>(step + 1), loss, grad_norm, lr);
  }
  const std::string adapter_dir = options.output_dir + "/adapter";
  if (absl::Status saved = lora::SaveAdapter(**model, adapter, adapter_dir); !saved.ok()) return Failed(saved);
  std::fprintf(stderr, "adapter: %s (%lld steps)\n", adapter_dir.c_str(), static_cast<long long>(steps));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return Main(argc, argv);
  } catch (const std::exception& e) {  // c10::Error from LibTorch: a message, not a crash
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
}
