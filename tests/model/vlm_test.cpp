// model/: Gemma 3 image+text (Gemma3ForConditionalGeneration) against transformers (eager,
// float32) at test time: tiny random checkpoints in each of the three key layouts transformers
// loads, several tower and decoder shapes (tests/reference/vlm_ref.py).
#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <cstdio>
#include <fstream>

#include "llmtrain/core/atomic_file.h"
#include "llmtrain/io/tensors.h"
#include "llmtrain/model/decoder.h"
#include "llmtrain/model/generate.h"
#include "testing/json_util.h"
#include "testing/reference.h"
#include "testing/safetensors_util.h"
#include "testing/tensor_compare.h"

namespace llmtrain {
namespace {

using nlohmann::json;
using testing::LoadAll;

using testing::RelativeError;

std::vector<int64_t> Ids(const at::Tensor& t) {
  const at::Tensor c = t.contiguous();
  return std::vector<int64_t>(c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel());
}

// One reference case, made once per process (a case takes transformers about 5 s).
struct Case {
  std::string dir;
  json info;
};

const Case& Reference(const std::string& name) {
  static std::map<std::string, Case> made;
  if (auto it = made.find(name); it != made.end()) return it->second;
  Case c;
  c.dir = testing::TempDir("vlm_" + name);
  const auto run = testing::RunReference("vlm_ref.py", {"tiny", name, c.dir, "3"});
  REQUIRE(run.exit_code == 0);
  c.info = testing::LastJsonLine(run.out);
  return made.emplace(name, std::move(c)).first->second;
}

TEST_CASE("vlm: logits, gradients and greedy generation with images equal transformers'",
          "[model][vlm][parity][reference]") {
  if (!testing::ReferenceStackAvailable()) return;
  // w8_in_vocab: Hub layout, window 8 < a 16-token image, right padding, rows of 1, 2, 0 images.
  // oov_left: 5.23's save layout, sharded, image token id = vocab size, untied head, left padding.
  // kernel1_memory: the in-memory layout, no pooling (kernel 1), a full layer first.
  const std::string name = GENERATE(as<std::string>{}, "w8_in_vocab", "oov_left", "kernel1_memory");
  INFO("case " << name);
  const Case& ref_case = Reference(name);
  model::DecoderOptions options;
  options.requires_grad = true;
  auto model = model::Decoder::Load(ref_case.dir + "/model", options);
  INFO((model.ok() ? std::string("loaded") : std::string(model.status().message())));
  REQUIRE(model.ok());
  REQUIRE((*model)->has_vision());
  CHECK(static_cast<int>((*model)->named_parameters().size()) == ref_case.info["params"].get<int>());

  auto inputs = LoadAll(ref_case.dir + "/inputs.safetensors");
  auto ref = LoadAll(ref_case.dir + "/ref.safetensors");
  model::ImageInputs images;
  images.pixel_values = inputs["pixel_values"];
  images.token_type_ids = inputs["token_type_ids"];
  const at::Tensor mask = inputs["attention_mask"];
  REQUIRE((*model)->CheckInputs(inputs["input_ids"], mask, images).ok());
  {
    at::NoGradGuard no_grad;
    const at::Tensor features = (*model)->ImageFeatures(images.pixel_values);
    const double error = RelativeError(features.reshape({-1, features.size(-1)}), ref["image_features"]);
    INFO("image features relative error " << error);
    CHECK(error <= 1e-5);
  }
  const at::Tensor logits = (*model)->Forward(inputs["input_ids"], mask, inputs["position_ids"], images);
  const at::Tensor real = mask.to(at::kBool);
  const double logits_error = RelativeError(logits.index({real}), ref["logits"].index({real}));
  INFO("logits relative error " << logits_error);
  CHECK(logits_error <= 1e-5);  // float32, the same ATen ops: summation-order noise only

  const at::Tensor loss = (logits * inputs["loss_weights"] * mask.unsqueeze(-1)).sum();
  loss.backward();
  int compared = 0;
  double worst = 0.0;
  for (const auto& [param, tensor] : (*model)->named_parameters()) {
    INFO("gradient of " << param);
    REQUIRE(ref.count("grad." + param) == 1);
    REQUIRE(tensor.grad().defined());
    if (param.size() > 11 && param.compare(param.size() - 11, 11, "k_proj.bias") == 0) {
      // Analytically 0 (softmax ignores a shift that is the same for every key): both sides hold
      // float32 rounding noise (5.96e-7 measured next to 22.5 in the layer's other gradients).
      CHECK(tensor.grad().abs().max().item<double>() <= 1e-5);
      CHECK(ref["grad." + param].abs().max().item<double>() <= 1e-5);
      ++compared;
      continue;
    }
    const double error = RelativeError(tensor.grad(), ref["grad." + param]);
    INFO("relative error " << error);
    CHECK(error <= 1e-4);  // float32 backward; reductions ordered differently than in Python
    worst = std::max(worst, error);
    ++compared;
  }
  CHECK(compared == ref_case.info["grads"].get<int>());
  std::printf("vlm parity %-15s logits rel err %.2e, worst gradient rel err %.2e over %d parameters\n", name.c_str(),
              logits_error, worst, compared);

  // Greedy generation after a prompt with its image(s), as transformers' generate().
  model::GenerationOptions generation;
  generation.max_new_tokens = 16;
  generation.eos_token_ids = ref_case.info["eos"].get<std::vector<int64_t>>();
  generation.pixel_values = inputs["prompt_pixels"];
  auto greedy = model::Generate(**model, Ids(inputs["prompt"]), generation);
  REQUIRE(greedy.ok());
  CHECK(*greedy == Ids(ref["greedy"]));
}

TEST_CASE("vlm: activation checkpointing in the tower and the decoder gives the same gradients",
          "[model][vlm][reference]") {
  if (!testing::ReferenceStackAvailable()) return;
  const Case& ref_case = Reference("w8_in_vocab");
  auto inputs = LoadAll(ref_case.dir + "/inputs.safetensors");
  std::map<std::string, at::Tensor> grads[2];
  for (int checkpointed = 0; checkpointed < 2; ++checkpointed) {
    model::DecoderOptions options;
    options.requires_grad = true;
    options.activation_checkpointing = checkpointed == 1;
    auto model = model::Decoder::Load(ref_case.dir + "/model", options);
    REQUIRE(model.ok());
    model::ImageInputs images{inputs["pixel_values"], inputs["token_type_ids"]};
    const at::Tensor logits =
        (*model)->Forward(inputs["input_ids"], inputs["attention_mask"], inputs["position_ids"], images);
    (logits * inputs["loss_weights"]).sum().backward();
    for (const auto& [name, t] : (*model)->named_parameters()) grads[checkpointed][name] = t.grad();
  }
  REQUIRE(grads[0].size() == grads[1].size());
  for (const auto& [name, g] : grads[0]) {
    INFO(name);
    REQUIRE(grads[1][name].defined());
    CHECK(at::equal(g, grads[1][name]));  // the recompute runs the same ops on the same inputs
  }
}

TEST_CASE("vlm: llmtrain forward reads pixel_values and token_type_ids", "[model][vlm][cli][reference]") {
  if (!testing::ReferenceStackAvailable()) return;
  const Case& ref_case = Reference("w8_in_vocab");
  auto inputs = LoadAll(ref_case.dir + "/inputs.safetensors");
  const std::string in = ref_case.dir + "/cli_in.safetensors", out = ref_case.dir + "/cli_out.safetensors";
  REQUIRE(io::SaveSafetensors(in, {{"input_ids", inputs["input_ids"]}, {"attention_mask", inputs["attention_mask"]},
                                   {"pixel_values", inputs["pixel_values"]},
                                   {"token_type_ids", inputs["token_type_ids"]}}).ok());
  const auto run = testing::RunCommand(testing::ShellQuote(testing::CliPath()) + " forward --model " +
                                       testing::ShellQuote(ref_case.dir + "/model") + " --input " +
                                       testing::ShellQuote(in) + " --output " + testing::ShellQuote(out) + " 2>&1");
  INFO(run.out);
  REQUIRE(run.exit_code == 0);
  auto ref = LoadAll(ref_case.dir + "/ref.safetensors");
  const at::Tensor real = inputs["attention_mask"].to(at::kBool);
  // Positions from the mask (cumsum − 1), as the reference was given.
  CHECK(RelativeError(LoadAll(out)["logits"].index({real}), ref["logits"].index({real})) <= 1e-5);
}

TEST_CASE("vlm: bad image inputs and configs are refused with the field named", "[model][vlm][reference]") {
  if (!testing::ReferenceStackAvailable()) return;
  const Case& ref_case = Reference("kernel1_memory");
  auto model = model::Decoder::Load(ref_case.dir + "/model", {});
  REQUIRE(model.ok());
  auto inputs = LoadAll(ref_case.dir + "/inputs.safetensors");
  const at::Tensor ids = inputs["input_ids"];
  const at::Tensor mask = inputs["attention_mask"];
  const auto message = [&](const model::ImageInputs& images) {
    const absl::Status status = (*model)->CheckInputs(ids, mask, images);
    return status.ok() ? std::string("ok") : std::string(status.message());
  };
  const at::Tensor pixels = inputs["pixel_values"];
  CHECK(message({pixels, inputs["token_type_ids"]}) == "ok");
  // One image too few for the image tokens.
  CHECK_THAT(message({pixels.slice(0, 0, 1), {}}), Catch::Contains("image tokens") && Catch::Contains("1 image(s)"));
  CHECK_THAT(message({pixels.slice(2, 0, 14), {}}), Catch::Contains("pixel_values: expected"));
  CHECK_THAT(message({pixels, inputs["token_type_ids"].slice(1, 0, 3)}), Catch::Contains("token_type_ids"));
  CHECK_THAT(message({{}, inputs["token_type_ids"]}), Catch::Contains("no pixel_values"));

  // A config whose SigLIP keeps its head (transformers' default) is refused, naming the field.
  const std::string dir = testing::TempDir("vlm_bad_config");
  std::ifstream in(ref_case.dir + "/model/config.json");
  json config = json::parse(in);
  config["vision_config"]["vision_use_head"] = true;
  REQUIRE(WriteFileAtomically(dir + "/config.json", config.dump()).ok());
  std::ifstream weights(ref_case.dir + "/model/model.safetensors", std::ios::binary);
  REQUIRE(WriteFileAtomically(dir + "/model.safetensors",
                              std::string(std::istreambuf_iterator<char>(weights), {})).ok());
  auto refused = model::Decoder::Load(dir, {});
  REQUIRE_FALSE(refused.ok());
  CHECK_THAT(std::string(refused.status().message()), Catch::Contains("vision_config.vision_use_head"));
  config["vision_config"]["vision_use_head"] = false;
  config["mm_tokens_per_image"] = 3;
  REQUIRE(WriteFileAtomically(dir + "/config.json", config.dump()).ok());
  refused = model::Decoder::Load(dir, {});
  REQUIRE_FALSE(refused.ok());
  CHECK_THAT(std::string(refused.status().message()), Catch::Contains("mm_tokens_per_image"));
}

}  // namespace
}  // namespace llmtrain
