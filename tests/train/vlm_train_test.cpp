// train/: QLoRA on a tiny Gemma 3 image+text model against transformers + PEFT + bitsandbytes
// replaying the same batches (pixel_values and token_type_ids included), as the text families do.
#include <ATen/ATen.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <map>
#include <set>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "llmtrain/data/collator.h"
#include "llmtrain/io/tensors.h"
#include "llmtrain/model/family.h"
#include "llmtrain/spec/build.h"
#include "llmtrain/spec/memory_plan.h"
#include "llmtrain/spec/run_spec.h"
#include "llmtrain/train/trainer.h"
#include "testing/json_util.h"
#include "testing/reference.h"
#include "testing/safetensors_util.h"

namespace llmtrain {
namespace {

TEST_CASE("train: 5 QLoRA steps on a tiny VLM equal transformers + PEFT + bitsandbytes on the same batches",
          "[train][vlm][reference]") {
  if (!testing::ReferenceStackAvailable()) return;
  const std::string dir = testing::TempDir("vlm_train");
  REQUIRE(testing::RunReference("vlm_train_ref.py", {"tiny", dir}).exit_code == 0);
  const int64_t steps = 5;
  // LoRA on the decoder's attention and on the tower's q/v (a pattern naming both).
  const std::string target = R"(.*(language_model\.layers\.\d+\.self_attn\.(q|k|v|o)_proj|vision_tower.*self_attn\.(q|v)_proj))";
  auto run = spec::ParseRunSpec("test", absl::StrCat(
      "model { path: \"", dir, "/model\" load_in_4bit: true }\n",
      "lora { r: 4 alpha: 8 dropout: 0 target_regex: \"", absl::CEscape(target),
      "\" modules_to_save: \"multi_modal_projector\" }\n",
      "data { train_files: \"", dir, "/captions.txt\" image_dir: \"", dir, "/Images\" max_length: 64 }\n",
      "training { max_steps: ", steps, " micro_batch_size: 2 gradient_accumulation_steps: 2 learning_rate: 0.003",
      " warmup_steps: 1 weight_decay: 0.01 max_grad_norm: 1.0 seed: 7 log_every_steps: 1 }\n",
      "output { dir: \"", dir, "/run\" report_to: \"jsonl\" }\n"));
  INFO(run.status().ToString());
  REQUIRE(run.ok());
  auto trainer = spec::BuildTrainer(*run);
  INFO(trainer.status().ToString());
  REQUIRE(trainer.ok());
  std::vector<std::pair<std::string, at::Tensor>> batches;
  std::map<int64_t, int> micro;
  std::vector<double> ours;
  int64_t images = 0;
  train::RunOptions options;
  options.progress = false;
  options.on_micro_batch = [&](int64_t step, const data::Batch& b) {
    const std::string key = absl::StrCat(step, ".", micro[step]++);
    const auto tensor = [&](const std::vector<int64_t>& v) {
      return at::tensor(at::ArrayRef<int64_t>(v), at::kLong).view({b.batch_size, b.seq_len}).clone();
    };
    batches.emplace_back("ids." + key, tensor(b.input_ids));
    batches.emplace_back("mask." + key, tensor(b.attention_mask));
    batches.emplace_back("pos." + key, tensor(b.position_ids));
    batches.emplace_back("labels." + key, tensor(b.labels));
    batches.emplace_back("types." + key, tensor(b.token_type_ids));
    REQUIRE(b.num_images == b.batch_size);  // one image per caption record
    images += b.num_images;
    batches.emplace_back("pixels." + key, at::tensor(at::ArrayRef<float>(b.pixel_values), at::kFloat)
                                              .view({b.num_images, 3, b.image_height, b.image_width})
                                              .clone());
  };
  options.on_step = [&](const train::StepMetrics& m) { ours.push_back(m.loss); };
  REQUIRE((*trainer)->Run(options).ok());
  REQUIRE(io::SaveSafetensors(dir + "/batches.safetensors", batches).ok());
  const nlohmann::json cfg = {{"seed", 7}, {"r", 4}, {"alpha", 8}, {"target", target}, {"lr", 0.003},
                              {"wd", 0.01}, {"warmup", 1}, {"steps", steps}, {"save", {"multi_modal_projector"}}};
  const auto replay = testing::RunReference("vlm_train_ref.py", {"replay", dir, cfg.dump()});
  REQUIRE(replay.exit_code == 0);
  const nlohmann::json result = testing::LastJsonLine(replay.out);
  const std::vector<double> theirs = result["losses"].get<std::vector<double>>();
  REQUIRE(theirs.size() == ours.size());
  double worst_loss = 0;
  for (size_t i = 0; i < ours.size(); ++i) worst_loss = std::max(worst_loss, std::abs(ours[i] - theirs[i]) / std::abs(theirs[i]));
  auto weights = testing::LoadAll(dir + "/replay_weights.safetensors");
  double worst_weight = 0;
  size_t n = 0, tower = 0, projector = 0;
  for (const auto& [key, t] : (*trainer)->TrainableParameters()) {
    INFO("weight " << key);
    REQUIRE(weights.count(key) == 1);
    const double scale = weights[key].abs().max().item<double>();
    worst_weight = std::max(worst_weight, (t.detach() - weights[key]).abs().max().item<double>() / (scale > 0 ? scale : 1));
    ++n;
    tower += key.find("vision_tower") != std::string::npos;
    projector += key.find("multi_modal_projector") != std::string::npos;
  }
  CHECK(n == weights.size());
  CHECK(tower > 0);
  CHECK(projector == 2);  // modules_to_save takes the projector's matrix and its norm, as PEFT's wrapper does
  std::printf("train: tiny VLM, %lld QLoRA steps (%lld images) against transformers + PEFT + bitsandbytes: loss %.4f → "
              "%.4f (ours) vs %.4f → %.4f; worst step loss rel diff %.2e; %zu LoRA tensors (%zu in the tower), worst "
              "rel diff %.2e; bitsandbytes quantized %zu modules\n",
              static_cast<long long>(steps), static_cast<long long>(images), ours.front(), ours.back(), theirs.front(),
              theirs.back(), worst_loss, n, tower, worst_weight, result["quantized"].size());
  CHECK(worst_loss <= 1e-5);
  CHECK(worst_weight <= 1e-4);

  // The memory plan of this run counts the tower's tensors as the loaded model holds them, byte
  // for byte (4-bit projections with their quant state, the rest float32), and the trainable
  // parameters (the decoder's and the tower's LoRA, the projector in full).
  auto plan = spec::PlanMemory(*run);
  INFO(plan.status().ToString());
  REQUIRE(plan.ok());
  const model::Decoder& model = (*trainer)->model();
  std::set<const void*> seen;
  int64_t tower_bytes = 0;
  const auto count = [&](const at::Tensor& t) {
    if (t.defined() && seen.insert(t.storage().data()).second) tower_bytes += static_cast<int64_t>(t.storage().nbytes());
  };
  for (const auto& [name, t] : model.named_parameters()) {
    if (absl::StartsWith(name, "model.vision_tower.") || absl::StartsWith(name, "model.multi_modal_projector.")) count(t);
  }
  for (const std::string& name : model::VisionProjectionNames(model.config())) {
    std::vector<at::Tensor> frozen;
    model.linear(name)->AppendFrozen(&frozen);
    for (const at::Tensor& t : frozen) count(t);
  }
  int64_t planned_tower = -1;
  for (const spec::MemoryItem& item : plan->resident) {
    if (absl::StartsWith(item.name, "vision tower + projector")) planned_tower = item.bytes;
  }
  CHECK(planned_tower == tower_bytes);
  int64_t trainable = 0;
  for (const auto& [key, t] : (*trainer)->TrainableParameters()) trainable += t.numel();
  CHECK(plan->trainable_parameters == trainable);
  const std::string text = plan->ToString();
  INFO(text);
  CHECK(absl::StrContains(text, "SigLIP tower: 2 layers, hidden 64"));
  CHECK(absl::StrContains(text, "vision tower backward"));  // LoRA in the tower: it runs with autograd

  // `llmtrain generate --chat --image` on the base model: the image's tokens in the user turn.
  const auto generate = testing::RunCommand(testing::ShellQuote(testing::CliPath()) + " generate --model " +
                                            testing::ShellQuote(dir + "/model") + " --chat --prompt 'Describe this image.'"
                                            " --image " + testing::ShellQuote(dir + "/Images/img000.png") +
                                            " --max-new-tokens 6 --json 2>&1");
  INFO(generate.out);
  REQUIRE(generate.exit_code == 0);
  CHECK(testing::LastJsonLine(generate.out)["ids"].size() >= 1);
  const auto no_chat = testing::RunCommand(testing::ShellQuote(testing::CliPath()) + " generate --model " +
                                           testing::ShellQuote(dir + "/model") + " --prompt x --image " +
                                           testing::ShellQuote(dir + "/Images/img000.png") + " 2>&1");
  CHECK(no_chat.exit_code == 2);
  CHECK(no_chat.out.find("--image needs --chat") != std::string::npos);
}

}  // namespace
}  // namespace llmtrain
