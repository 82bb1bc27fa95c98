// examples/: the programs that assemble llmtrain's components run on tiny models made at test time
// (tests/reference/train_ref.py tiny: random Gemma 3 / Qwen2 weights saved by transformers, a
// byte-level BPE tokenizer, text records), and custom_loop, a hand-written loop without the
// Trainer, trains exactly what the Trainer trains.
#include <ATen/ATen.h>

#include <catch2/catch.hpp>
#include <cmath>
#include <cstdio>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "llmtrain/core/atomic_file.h"
#include "llmtrain/data/image.h"
#include "llmtrain/io/safetensors.h"
#include "llmtrain/io/tensors.h"
#include "llmtrain/spec/build.h"
#include "llmtrain/spec/run_spec.h"
#include "llmtrain/train/trainer.h"
#include "testing/json_util.h"
#include "testing/reference.h"
#include "testing/safetensors_util.h"

namespace llmtrain {
namespace {

std::string Bin(const std::string& name) { return std::string(LLMTRAIN_BINARY_DIR) + "/bin/" + name; }

// A tiny model of `family` with its data in `dir`, and a QLoRA spec over it writing to `run`.
std::string MakeTinyRun(const std::string& dir, const std::string& family, const std::string& run) {
  const auto made = testing::RunReference("train_ref.py", {"tiny", dir, family});
  REQUIRE(made.exit_code == 0);
  const std::string spec = absl::StrCat(
      "model { path: \"", dir, "/model\" load_in_4bit: true quant_blocksize: 64 double_quant: true }\n",
      "lora { r: 4 alpha: 8 dropout: 0.1 target_modules: \"all-linear\" }\n",
      "data { train_files: \"", dir, "/train.jsonl\" format: \"text\" template: \"none\" max_length: 24 }\n",
      "training { max_steps: 6 micro_batch_size: 2 gradient_accumulation_steps: 2 learning_rate: 0.003",
      " warmup_steps: 2 weight_decay: 0.01 max_grad_norm: 1.0 seed: 7 log_every_steps: 1 }\n",
      "checkpoint { every_steps: 3 }\n",
      "output { dir: \"", run, "\" report_to: \"jsonl\" }\n");
  const std::string path = dir + "/run.textproto";
  REQUIRE(WriteFileAtomically(path, spec).ok());
  return path;
}

// The lines of one type ("train", "eval") of a metrics.jsonl.
std::vector<nlohmann::json> MetricsLines(const std::string& path, const std::string& type) {
  auto text = ReadFileToString(path);
  REQUIRE(text.ok());
  std::vector<nlohmann::json> lines;
  std::istringstream in(*text);
  for (std::string line; std::getline(in, line);) {
    const nlohmann::json j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_object() && j.value("type", "") == type) lines.push_back(j);
  }
  return lines;
}

std::vector<nlohmann::json> TrainLines(const std::string& path) { return MetricsLines(path, "train"); }

TEST_CASE("examples: gemma_finetune and qwen_finetune assemble the parts and train", "[examples][reference]") {
  if (!testing::ReferenceStackAvailable()) return;
  const auto [program, family] = GENERATE(table<std::string, std::string>(
      {{"gemma_finetune", "gemma3_text"}, {"qwen_finetune", "qwen2"}}));
  INFO(program << " on a tiny " << family);
  const std::string dir = testing::TempDir("example_" + program);
  const std::string spec = MakeTinyRun(dir, family, dir + "/run");
  const auto result = testing::RunCommand(testing::ShellQuote(Bin(program)) + " " + testing::ShellQuote(spec));
  INFO(result.out);
  REQUIRE(result.exit_code == 0);
  // Each step of the recipe says what it built.
  for (const char* part : {"[2] train data:", "[3] tokenizer:", "[4] collator:", "[5] model:", "[6] adapter:",
                           "[7] optimizer:", "[8] engine:", "[9] adapter:"}) {
    CHECK(absl::StrContains(result.out, part));
  }
  CHECK(absl::StrContains(result.out, "projections stored nf4"));
  CHECK(absl::StrContains(result.out, family == "qwen2" ? "[5] qwen:" : "[5] gemma:"));
  const std::vector<nlohmann::json> lines = TrainLines(dir + "/run/metrics.jsonl");
  REQUIRE(lines.size() == 6);
  for (const auto& line : lines) CHECK(std::isfinite(line["loss"].get<double>()));
  CHECK(IsRegularFile(dir + "/run/adapter/adapter_model.safetensors"));
  CHECK(IsRegularFile(dir + "/run/report.html"));
  std::printf("examples: %s on a tiny %s: loss %.4f → %.4f over 6 steps\n", program.c_str(), family.c_str(),
              lines.front()["loss"].get<double>(), lines.back()["loss"].get<double>());

  // The other family's program refuses this model by its spec field, before loading anything.
  const std::string other = program == "gemma_finetune" ? "qwen_finetune" : "gemma_finetune";
  const auto refused = testing::RunCommand(testing::ShellQuote(Bin(other)) + " " + testing::ShellQuote(spec) +
                                           " model.family=" + family + " 2>&1");
  CHECK(refused.exit_code == 1);
  CHECK(absl::StrContains(refused.out, "model.family"));
}

TEST_CASE("examples: custom_loop trains what the Trainer trains, on the same batches", "[examples][reference]") {
  if (!testing::ReferenceStackAvailable()) return;
  const std::string family = GENERATE(std::string("qwen2"), std::string("gemma3_text"));
  INFO("a tiny " << family);
  const std::string dir = testing::TempDir("example_custom_loop_" + family);
  const std::string spec_path = MakeTinyRun(dir, family, dir + "/custom");

  // The hand-written loop, as its own process: one JSON line per step, then the adapter.
  const auto loop = testing::RunCommand(testing::ShellQuote(Bin("custom_loop")) + " " + testing::ShellQuote(spec_path));
  INFO(loop.out);
  REQUIRE(loop.exit_code == 0);
  std::vector<double> loop_losses;
  std::istringstream in(loop.out);
  for (std::string line; std::getline(in, line);) {
    const nlohmann::json j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_object() && j.contains("loss")) loop_losses.push_back(j["loss"].get<double>());
  }
  REQUIRE(loop_losses.size() == 6);

  // The Trainer, in this process, on the same spec (another output folder).
  auto spec = spec::LoadRunSpec(spec_path, {"output.dir=" + dir + "/trainer"});
  REQUIRE(spec.ok());
  auto trainer = spec::BuildTrainer(*spec);
  INFO(trainer.status().ToString());
  REQUIRE(trainer.ok());
  std::vector<double> trainer_losses;
  train::RunOptions options;
  options.progress = false;
  options.on_step = [&](const train::StepMetrics& m) { trainer_losses.push_back(m.loss); };
  REQUIRE((*trainer)->Run(options).ok());
  REQUIRE(trainer_losses.size() == loop_losses.size());

  double worst_loss = 0, worst_weight = 0;
  for (size_t i = 0; i < loop_losses.size(); ++i) {
    worst_loss = std::max(worst_loss, std::abs(loop_losses[i] - trainer_losses[i]) / std::abs(trainer_losses[i]));
  }
  auto saved = testing::LoadAll(dir + "/custom/adapter/adapter_model.safetensors");
  size_t n = 0;
  for (const auto& [key, t] : (*trainer)->TrainableParameters()) {
    INFO("weight " << key);
    REQUIRE(saved.count(key) == 1);
    const double scale = t.detach().abs().max().item<double>();
    worst_weight = std::max(worst_weight, (saved[key] - t.detach()).abs().max().item<double>() / (scale > 0 ? scale : 1));
    ++n;
  }
  std::printf("examples: custom_loop vs Trainer on a tiny %s (QLoRA, dropout 0.1, 6 steps × 2 micro-batches): "
              "worst step loss rel diff %.2e, %zu LoRA tensors worst rel diff %.2e\n",
              family.c_str(), worst_loss, n, worst_weight);
  // The same parts, data order, seeds and arithmetic in two processes: only thread scheduling of
  // the reductions could differ, and it does not on these shapes; 1e-6 leaves room for it.
  CHECK(worst_loss <= 1e-6);
  CHECK(worst_weight <= 1e-6);
}

}  // namespace
}  // namespace llmtrain

namespace llmtrain {
namespace {

// The image+text example end to end, at a small size: the generated shapes set, a VLM made of the
// real Gemma 3 270M decoder and a new tower (which transformers must load to the same logits), and
// a few QLoRA steps of gemma3_vlm_finetune with the example spec.
TEST_CASE("examples: gemma3_vlm_finetune trains the 270M decoder with a new tower on generated captions",
          "[examples][vlm][reference][real]") {
  if (!testing::ReferenceStackAvailable()) return;
  const std::string dir = testing::TempDir("example_vlm");
  const std::string gguf = std::string(LLMTRAIN_SOURCE_DIR) + "/.venv/models/gemma-3-270m-q4_k_m.gguf";
  const std::string cli = testing::ShellQuote(testing::CliPath());
  const auto data = testing::RunCommand(cli + " make-default-dataset --vlm --images 30 --output " +
                                        testing::ShellQuote(dir + "/data") + " 2>&1");
  INFO(data.out);
  REQUIRE(data.exit_code == 0);
  CHECK(absl::StrContains(data.out, "30 images, 150 captions"));
  const auto made = testing::RunCommand(cli + " make-vlm --text " + testing::ShellQuote(gguf) + " --output " +
                                        testing::ShellQuote(dir + "/model") +
                                        " --image-size 64 --patch-size 16 --tower-layers 1 --tower-hidden 64"
                                        " --tower-heads 2 --tower-intermediate 128 --tokens-per-image 4 2>&1");
  INFO(made.out);
  REQUIRE(made.exit_code == 0);
  // The defaults (the command docs/vlm.md and the example spec's header give) make a valid tower:
  // 224 px in 14 px patches, a 16 × 16 grid pooled to 16 tokens.
  const auto defaults = testing::RunCommand(cli + " make-vlm --text " + testing::ShellQuote(gguf) + " --output " +
                                            testing::ShellQuote(dir + "/default_model") + " 2>&1");
  INFO(defaults.out);
  CHECK(defaults.exit_code == 0);
  CHECK(absl::StrContains(defaults.out, "(2 layers, 128 wide, 224x224 pixels, 16 tokens per image)"));

  // transformers reads the folder make-vlm wrote to the logits we compute (one image, OOV token).
  auto image = data::LoadImage(dir + "/data/Images/shapes_0000.png");
  REQUIRE(image.ok());
  const std::vector<float> pixels = data::PreprocessImage(*image, data::DefaultImageProcessor(64));
  const std::vector<int64_t> ids = {2, 105, 2364, 108, 255999, 262144, 262144, 262144, 262144, 256000, 108, 82858, 672};
  const at::Tensor input_ids = at::tensor(ids, at::kLong).view({1, -1});
  REQUIRE(io::SaveSafetensors(dir + "/check_in.safetensors",
                              {{"input_ids", input_ids}, {"attention_mask", at::ones_like(input_ids)},
                               {"pixel_values", at::tensor(pixels, at::kFloat).view({1, 3, 64, 64})},
                               {"token_type_ids", input_ids.eq(262144).to(at::kLong)}}).ok());
  REQUIRE(testing::RunReference("vlm_ref.py", {"check", dir + "/model", dir + "/check_in.safetensors",
                                               dir + "/check_ref.safetensors"}).exit_code == 0);
  const auto ours = testing::RunCommand(cli + " forward --model " + testing::ShellQuote(dir + "/model") + " --input " +
                                        testing::ShellQuote(dir + "/check_in.safetensors") + " --output " +
                                        testing::ShellQuote(dir + "/check_ours.safetensors") + " 2>&1");
  INFO(ours.out);
  REQUIRE(ours.exit_code == 0);
  const at::Tensor want = testing::LoadAll(dir + "/check_ref.safetensors")["logits"];
  const at::Tensor got = testing::LoadAll(dir + "/check_ours.safetensors")["logits"];
  const double error = (got - want).abs().max().item<double>() / want.abs().max().item<double>();
  std::printf("examples: make-vlm folder (270M decoder + new tower): logits rel err %.2e vs transformers\n", error);
  CHECK(error <= 1e-4);  // the 270M's float32 sums in other orders, as the GGUF parity test allows

  // The example program with the example spec, its paths and length cut down for a test.
  const std::string spec = std::string(LLMTRAIN_SOURCE_DIR) + "/examples/specs/gemma3_vlm_cpu.textproto";
  const auto run = testing::RunCommand(
      testing::ShellQuote(Bin("gemma3_vlm_finetune")) + " " + testing::ShellQuote(spec) + " model.path=" +
      testing::ShellQuote(dir + "/model") + " model.tokenizer=" + testing::ShellQuote(gguf) + " data.train_files=" +
      testing::ShellQuote(dir + "/data/Flickr8k.token.txt") + " data.image_dir=" + testing::ShellQuote(dir + "/data/Images") +
      " data.image_list=" + testing::ShellQuote(dir + "/data/Flickr_8k.trainImages.txt") +
      " data.eval_files=" + testing::ShellQuote(dir + "/data/Flickr8k.token.txt") +
      " data.eval_image_list=" + testing::ShellQuote(dir + "/data/Flickr_8k.devImages.txt") +
      " output.dir=" + testing::ShellQuote(dir + "/run") +
      " training.max_steps=8 training.micro_batch_size=2 training.log_every_steps=1 checkpoint.every_steps=0"
      " eval.every_steps=0 eval.max_batches=2 eval.max_new_tokens=8 2>&1");
  INFO(run.out);
  REQUIRE(run.exit_code == 0);
  CHECK(absl::StrContains(run.out, "[4] images: 4 tokens each, 64×64 pixels"));
  CHECK(absl::StrContains(run.out, "[5] vision: SigLIP tower of 1 layers"));
  CHECK(absl::StrContains(run.out, "[2] eval data: 15 records"));  // the dev split: 3 of the 30 images
  const std::vector<nlohmann::json> lines = TrainLines(dir + "/run/metrics.jsonl");
  REQUIRE(lines.size() == 8);
  for (const auto& line : lines) CHECK(std::isfinite(line["loss"].get<double>()));
  const double first = lines.front()["loss"].get<double>(), last = lines.back()["loss"].get<double>();
  std::printf("examples: gemma3_vlm_finetune, 8 steps: caption loss %.4f → %.4f\n", first, last);
  CHECK(last < first);
  CHECK(IsRegularFile(dir + "/run/adapter/adapter_model.safetensors"));
  // Eval on the dev split (3 of the 30 images, 5 captions each) at the start and the end, each
  // with a caption generated for the spec's two sample images; the report shows them inline.
  const std::vector<nlohmann::json> evals = MetricsLines(dir + "/run/metrics.jsonl", "eval");
  REQUIRE(evals.size() == 2);
  const nlohmann::json& samples = evals.back()["samples"];
  REQUIRE(samples.size() == 2);
  CHECK(samples[0]["image"] == dir + "/data/Images/shapes_0009.png");
  CHECK(samples[1]["image"] == dir + "/data/Images/shapes_0029.jpg");
  CHECK(samples[0]["prompt"] == "Describe this image.");
  // The sample is what `llmtrain generate` answers for that image with the saved adapter.
  const auto generated = testing::RunCommand(
      cli + " generate --model " + testing::ShellQuote(dir + "/model") + " --tokenizer " + testing::ShellQuote(gguf) +
      " --load-in-4bit --adapter " + testing::ShellQuote(dir + "/run/adapter") + " --chat --image " +
      testing::ShellQuote(dir + "/data/Images/shapes_0009.png") + " --prompt 'Describe this image.'" +
      " --max-new-tokens 8 --json");
  INFO(generated.out);
  REQUIRE(generated.exit_code == 0);
  CHECK(nlohmann::json::parse(generated.out)["text"] == samples[0]["output"]);
  std::printf("examples: gemma3_vlm_finetune sample for shapes_0009.png: \"%s\"\n",
              samples[0]["output"].get<std::string>().c_str());
  const auto report = ReadFileToString(dir + "/run/report.html");
  REQUIRE(report.ok());
  CHECK(absl::StrContains(*report, "<img alt=\"\" src=\"data:image/png;base64,"));
  // A text model is refused, before it loads: the spec names images it cannot see.
  const auto text = testing::RunCommand(
      testing::ShellQuote(Bin("gemma3_vlm_finetune")) + " " + testing::ShellQuote(spec) + " model.path=" +
      testing::ShellQuote(gguf) + " data.train_files=" + testing::ShellQuote(dir + "/data/Flickr8k.token.txt") +
      " data.image_dir=" + testing::ShellQuote(dir + "/data/Images") + " data.image_list= 2>&1");
  CHECK(text.exit_code == 1);
  CHECK(absl::StrContains(text.out, "data.image_dir: the model (gemma3_text) has no vision tower"));
}

}  // namespace
}  // namespace llmtrain
