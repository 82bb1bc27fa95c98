// spec/: run specs parse from text proto and JSON, take --set overrides, fill defaults, and every
// invalid spec is refused before the model loads, with each error naming its field.
#include <catch2/catch.hpp>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "llmtrain/core/atomic_file.h"
#include "llmtrain/spec/run_spec.h"
#include "llmtrain/spec/memory_plan.h"
#include "testing/reference.h"

namespace llmtrain {
namespace {

std::string GgufModelPath() { return std::string(LLMTRAIN_SOURCE_DIR) + "/.venv/models/gemma-3-270m-q4_k_m.gguf"; }

// A valid spec over the real 270M's GGUF (only its metadata is read) and a real data file.
std::string ValidSpec(const std::string& dir) {
  const std::string data = dir + "/train.jsonl";
  REQUIRE(WriteFileAtomically(data, "{\"instruction\": \"Say hi\", \"response\": \"hi\"}\n").ok());
  return absl::StrCat("model { path: \"", GgufModelPath(), "\" }\n", "data { train_files: \"", data, "\" }\n",
                      "output { dir: \"", dir, "/run\" }\n");
}

TEST_CASE("spec: text proto, JSON, overrides and defaults", "[spec]") {
  const std::string dir = testing::TempDir("spec_parse");
  auto parsed = spec::ParseRunSpec("run.textproto", ValidSpec(dir) + "lora { r: 16 target_modules: \"q_proj\" }\n");
  REQUIRE(parsed.ok());
  spec::RunSpec run = *parsed;
  REQUIRE(spec::ApplyOverride(&run, "training.learning_rate=0.001").ok());
  REQUIRE(spec::ApplyOverride(&run, "lora.target_modules=q_proj, v_proj").ok());
  REQUIRE(spec::ApplyOverride(&run, "lora.rank_pattern.o_proj=4").ok());
  REQUIRE(spec::ApplyOverride(&run, "model.load_in_4bit=false").ok());
  spec::FillDefaults(&run);
  CHECK(run.lora().r() == 16);
  CHECK(run.training().learning_rate() == 0.001);
  CHECK(run.lora().target_modules_size() == 2);
  CHECK(run.lora().rank_pattern().at("o_proj") == 4);
  CHECK_FALSE(run.model().load_in_4bit());            // set to false, not replaced by the default
  CHECK(run.training().gradient_accumulation_steps() == 1);  // default
  CHECK(run.data().max_length() == 512);
  CHECK(spec::ValidateRunSpec(run).ok());

  // The same as JSON.
  auto json = spec::ParseRunSpec("run.json", absl::StrCat("{\"model\": {\"path\": \"", GgufModelPath(),
                                                          "\", \"loadIn4bit\": true}, \"lora\": {\"r\": 4}}"));
  REQUIRE(json.ok());
  CHECK(json->lora().r() == 4);
  CHECK(json->model().load_in_4bit());

  // --print-defaults parses back to the defaults.
  auto defaults = spec::ParseRunSpec("defaults", spec::DefaultSpecText());
  INFO(spec::DefaultSpecText());
  REQUIRE(defaults.ok());
  spec::RunSpec filled;
  spec::FillDefaults(&filled);
  CHECK(spec::SpecToText(*defaults) == spec::SpecToText(filled));

  // Parse errors name the line; unknown fields and bad overrides name the field.
  auto bad_text = spec::ParseRunSpec("run.textproto", "model {\n  pathh: \"x\"\n}\n");
  REQUIRE(!bad_text.ok());
  CHECK_THAT(std::string(bad_text.status().message()), Catch::Contains("line 2"));
  CHECK_THAT(std::string(bad_text.status().message()), Catch::Contains("pathh"));
  spec::RunSpec o;
  CHECK_THAT(std::string(spec::ApplyOverride(&o, "lora.rr=3").message()), Catch::Contains("\"rr\" is not a field of LoraSpec"));
  CHECK_THAT(std::string(spec::ApplyOverride(&o, "lora.r=three").message()), Catch::Contains("lora.r: \"three\" is not an integer"));
  CHECK_THAT(std::string(spec::ApplyOverride(&o, "lora=3").message()), Catch::Contains("is a section"));
}

TEST_CASE("spec: every invalid spec is refused before any work, naming the field", "[spec]") {
  const std::string dir = testing::TempDir("spec_bad");
  const std::string valid = ValidSpec(dir);
  struct Bad {
    std::string change;  // an override, or "text:" + extra text-proto lines
    std::string field;
    std::string message;
  };
  const std::vector<Bad> table = {
      {"model.path=", "model.path", "is required"},
      {"model.path=/no/such/model", "model.path", "no such folder or .gguf file"},
      {"model.path=/no/such/model.gguf", "model.path", "no such file"},
      {"model.family=qwen2", "model.family", "but the model is gemma3_text"},
      {"model.dtype=f64", "model.dtype", "is not one of"},
      {"model.quant_type=int3", "model.quant_type", "is not one of"},
      {"model.quant_blocksize=48", "model.quant_blocksize", "48 is not one of"},
      {"lora.r=0", "lora.r", "must be in [1, 65536], got 0"},
      {"lora.alpha=-1", "lora.alpha", "must be > 0"},
      {"lora.dropout=1", "lora.dropout", "must be in [0, 1)"},
      {"lora.target_modules=qq_proj", "lora.target_modules", "matches none of the model's 126 projections"},
      {"lora.target_regex=(", "lora.target_regex", "is not a valid regular expression"},
      {"lora.layers_to_transform=40", "lora.layers_to_transform", "layer 40 is outside the model's 18 layers"},
      {"lora.rank_pattern.o_proj=0", "lora.rank_pattern[\"o_proj\"]", "must be > 0"},
      {"lora.dtype=f16", "lora.dtype", "is not one of"},
      {"lora.init=pissa", "lora.init", "is not one of"},
      {"data.train_files=", "data.train_files", "is required"},
      {"data.train_files=/no/such.jsonl", "data.train_files[0]", "no such file"},
      {"data.eval_files=/no/eval.jsonl", "data.eval_files[0]", "no such file"},
      {"data.format=csv", "data.format", "\"csv\" is not one of"},
      {"data.max_length=100000", "data.max_length", "over the model's context of 32768 tokens"},
      {"data.max_length=0", "data.max_length", "must be ≥ 2"},
      {"data.truncation=left", "data.truncation", "is not one of"},
      {"data.max_bad_fraction=2", "data.max_bad_fraction", "must be in [0, 1]"},
      {"training.learning_rate=0", "training.learning_rate", "must be > 0"},
      {"training.max_steps=-5", "training.max_steps", "must be ≥ 0"},
      {"training.epochs=0", "training.epochs", "must be > 0"},
      {"training.micro_batch_size=0", "training.micro_batch_size", "must be ≥ 1"},
      {"training.gradient_accumulation_steps=0", "training.gradient_accumulation_steps", "must be ≥ 1"},
      {"training.lr_scheduler=step", "training.lr_scheduler", "is not one of"},
      {"training.autocast=fp8", "training.autocast", "is not one of"},
      {"training.warmup_ratio=1.5", "training.warmup_ratio", "must be in [0, 1)"},
      {"training.adam_beta2=1", "training.adam_beta2", "must be in [0, 1)"},
      {"training.adam_epsilon=0", "training.adam_epsilon", "must be > 0"},
      {"training.max_grad_norm=-1", "training.max_grad_norm", "must be ≥ 0"},
      {"checkpoint.keep_last=0", "checkpoint.keep_last", "must be ≥ 1"},
      {"checkpoint.every_steps=-1", "checkpoint.every_steps", "must be ≥ 0"},
      {"eval.every_steps=-2", "eval.every_steps", "must be ≥ 0"},
      {"data.eval_image_list=/no/dev.txt", "data.eval_image_list", "no such file"},
      {"eval.sample_images=/no/x.png", "eval.sample_images[0]", "/no/x.png: no such file"},
      {"eval.sample_images=/no/x.png", "eval.sample_images", "the model (gemma3_text) has no vision tower"},
      {"output.dir=", "output.dir", "is required"},
      {"output.report_to=wandb", "output.report_to", "is not one of"},
      {"distributed.world_size=2", "distributed.world_size", "must be 0 or 1 for the single-process engine"},
      {"distributed.world_size=-1", "distributed.world_size", "must be ≥ 0"},
      {"distributed.timeout_s=0", "distributed.timeout_s", "must be > 0"},
      {"distributed.memory_limit=lots", "distributed.memory_limit", "expected a size such as 24GiB"},
      {"distributed.memory_limit=0", "distributed.memory_limit", "must be positive"},
      {"distributed.init_method=tcp://h:1", "distributed.init_method", "must be \"env://\""},
      {"distributed.engine=fsdp", "distributed.engine", "is not one of"},
      {"model.device=gpu", "model.device", "must be \"cpu\", \"cuda\" or \"cuda:N\" (N < 100), got \"gpu\""},
      {"model.device=cuda:x", "model.device", "must be \"cpu\""},
      {"model.device=cuda:999", "model.device", "must be \"cpu\""},
  };
  for (const Bad& bad : table) {
    INFO("change " << bad.change);
    auto run = spec::ParseRunSpec("run.textproto", valid);
    REQUIRE(run.ok());
    // An enumerated field refuses an unknown name as it is set; other rules are checked by
    // ValidateRunSpec. Either way, before any work, naming the field.
    absl::Status status = spec::ApplyOverride(&*run, bad.change);
    if (status.ok()) {
      spec::FillDefaults(&*run);
      status = spec::ValidateRunSpec(*run);
    }
    REQUIRE(!status.ok());
    CHECK_THAT(std::string(status.message()), Catch::Contains(bad.field + ": ") && Catch::Contains(bad.message));
  }
  std::printf("spec: %zu invalid specs refused, each naming its field\n", table.size());

  // A rule across sections: autocast over a bf16 model.
  {
    auto run = spec::ParseRunSpec("run.textproto", valid);
    REQUIRE(run.ok());
    REQUIRE(spec::ApplyOverride(&*run, "model.dtype=bf16").ok());
    REQUIRE(spec::ApplyOverride(&*run, "training.autocast=bf16").ok());
    spec::FillDefaults(&*run);
    CHECK_THAT(std::string(spec::ValidateRunSpec(*run).message()),
               Catch::Contains("training.autocast: needs model.dtype \"f32\" (the model is \"bf16\" already)"));
  }

  // A multi-process engine on GPUs gives each process cuda:LOCAL_RANK: a fixed index is refused.
  {
    auto run = spec::ParseRunSpec("run.textproto", valid);
    REQUIRE(run.ok());
    REQUIRE(spec::ApplyOverride(&*run, "model.device=cuda:1").ok());
    spec::FillDefaults(&*run);
    CHECK(spec::ValidateRunSpec(*run).ok());
    REQUIRE(spec::ApplyOverride(&*run, "distributed.engine=zero3").ok());
    CHECK_THAT(std::string(spec::ValidateRunSpec(*run).message()),
               Catch::Contains("model.device: \"cuda:1\" with distributed.engine zero3: use \"cuda\""));
    REQUIRE(spec::ApplyOverride(&*run, "model.device=cuda").ok());
    CHECK(spec::ValidateRunSpec(*run).ok());
  }

  // All errors at once.
  auto run = spec::ParseRunSpec("run.textproto", valid);
  REQUIRE(run.ok());
  for (const char* change : {"lora.r=0", "training.learning_rate=-1", "data.max_length=0"}) {
    REQUIRE(spec::ApplyOverride(&*run, change).ok());
  }
  spec::FillDefaults(&*run);
  const std::string message(spec::ValidateRunSpec(*run).message());
  CHECK_THAT(message, Catch::Contains("the run spec has 3 errors") && Catch::Contains("lora.r: ") &&
                          Catch::Contains("training.learning_rate: ") && Catch::Contains("data.max_length: "));
}

TEST_CASE("spec: enumerated fields are proto enums that accept their names in every form", "[spec]") {
  const std::string dir = testing::TempDir("spec_enums");
  const std::string valid = ValidSpec(dir);
  // Identifiers, quoted names (specs written before the fields were enums), lists, JSON, --set.
  auto bare = spec::ParseRunSpec("a.textproto", "model { dtype: bf16 }\ntraining { autocast: off "
                                 "lr_scheduler: cosine }\ndata { format: dolly template: none }\n"
                                 "output { report_to: [jsonl, tensorboard] }\n");
  auto quoted = spec::ParseRunSpec("b.textproto", "model { dtype: \"bf16\" }\ntraining { autocast: \"\" "
                                   "lr_scheduler: 'cosine' }\ndata { format: \"dolly\" template: \"none\" }\n"
                                   "# a comment with \"quotes\" and dtype: x\n"
                                   "output { report_to: [\"jsonl\", \"tensorboard\"] }\n");
  INFO(bare.status().ToString() << " / " << quoted.status().ToString());
  REQUIRE(bare.ok());
  REQUIRE(quoted.ok());
  CHECK(spec::SpecToText(*bare) == spec::SpecToText(*quoted));
  CHECK(bare->model().dtype() == spec::ModelSpec::bf16);
  CHECK(bare->training().lr_scheduler() == spec::TrainingSpec::cosine);
  CHECK(bare->data().format() == spec::DataSpec::dolly);
  CHECK(bare->output().report_to_size() == 2);
  // A string that only looks like an enum value is left alone.
  auto prompt = spec::ParseRunSpec("c.textproto", valid + "eval { sample_prompts: \"dtype: \\\"x\\\"\" }\n");
  INFO(prompt.status().ToString());
  REQUIRE(prompt.ok());
  CHECK(prompt->eval().sample_prompts(0) == "dtype: \"x\"");
  auto json = spec::ParseRunSpec("d.json", "{\"model\": {\"dtype\": \"bf16\", \"quantType\": \"fp4\"}, "
                                 "\"training\": {\"autocast\": \"\"}, \"output\": {\"reportTo\": [\"jsonl\"]}}");
  INFO(json.status().ToString());
  REQUIRE(json.ok());
  CHECK(json->model().quant_type() == spec::ModelSpec::fp4);
  CHECK(json->training().autocast() == spec::TrainingSpec::off);
  spec::RunSpec set;
  REQUIRE(spec::ApplyOverride(&set, "lora.init=gaussian").ok());
  CHECK(set.lora().init() == spec::LoraSpec::gaussian);
  // Unknown names are refused with the field's full path, in text, JSON and --set.
  const auto text_error = spec::ParseRunSpec("e.textproto", "training {\n  autocast: fp8\n}\n");
  CHECK_THAT(std::string(text_error.status().message()),
             Catch::Contains("e.textproto: line 2: training.autocast: \"fp8\" is not one of \"off\", \"bf16\""));
  const auto json_error = spec::ParseRunSpec("f.json", "{\"data\": {\"truncation\": \"left\"}}");
  CHECK_THAT(std::string(json_error.status().message()),
             Catch::Contains("f.json: data.truncation: \"left\" is not one of \"right\", \"drop\""));
  CHECK_THAT(std::string(spec::ApplyOverride(&set, "output.report_to=jsonl,wandb").message()),
             Catch::Contains("--set output.report_to: \"wandb\" is not one of \"jsonl\", \"tensorboard\""));
}

TEST_CASE("spec: the example specs are valid but for the files each machine provides", "[spec]") {
  int n = 0;
  for (const auto& entry : std::filesystem::directory_iterator(std::string(LLMTRAIN_SOURCE_DIR) + "/examples/specs")) {
    INFO("spec " << entry.path().string());
    auto run = spec::LoadRunSpec(entry.path().string());
    REQUIRE(run.ok());
    for (const spec::SpecError& e : spec::FindSpecErrors(*run)) {
      INFO(e.field << ": " << e.message);
      // Model folders, tokenizers, data files and image folders are the user's (or, for the 270M
      // and the generated sets, relative to the repo root, where the README's commands run).
      CHECK((e.field == "model.path" || e.field == "model.tokenizer" || absl::StartsWith(e.field, "data.train_files") ||
             absl::StartsWith(e.field, "data.eval_files") || e.field == "data.image_dir" ||
             e.field == "data.image_list" || e.field == "data.eval_image_list" ||
             absl::StartsWith(e.field, "eval.sample_images")));
    }
    ++n;
  }
  CHECK(n >= 4);
}

TEST_CASE("spec: memory sizes parse with binary and decimal units", "[spec][plan]") {
  const std::vector<std::pair<std::string, int64_t>> good = {
      {"24GiB", int64_t{24} << 30}, {"24 GiB", int64_t{24} << 30}, {"24G", int64_t{24} << 30},
      {"1.5GB", 1500000000},        {"512MiB", int64_t{512} << 20}, {"4096", 4096},
      {"8K", 8192},                 {" 2 tib ", int64_t{2} << 40},  {"80GB", 80000000000}};
  for (const auto& [text, bytes] : good) {
    INFO(text);
    auto parsed = spec::ParseByteSize(text);
    REQUIRE(parsed.ok());
    CHECK(*parsed == bytes);
  }
  for (const std::string bad : {"", "GiB", "-1G", "12 parsecs", "1..5G", "1e99G"}) {
    INFO(bad);
    auto parsed = spec::ParseByteSize(bad);
    REQUIRE_FALSE(parsed.ok());
    CHECK_THAT(std::string(parsed.status().message()), Catch::Contains(absl::StrCat("\"", bad, "\"")));
  }
}

// The plan of the README job's shape on the real 270M's config (its GGUF metadata only).
spec::RunSpec PlanSpec(const std::string& dir, const std::vector<std::string>& sets) {
  auto run = spec::ParseRunSpec("plan", ValidSpec(dir));
  REQUIRE(run.ok());
  for (const std::string set : {"model.load_in_4bit=true", "lora.r=16", "lora.target_modules=all-linear",
                                 "data.max_length=64", "training.micro_batch_size=2"}) {
    REQUIRE(spec::ApplyOverride(&*run, set).ok());
  }
  for (const std::string& set : sets) REQUIRE(spec::ApplyOverride(&*run, set).ok());
  spec::FillDefaults(&*run);
  return *run;
}

int64_t Item(const spec::MemoryPlan& plan, const std::string& prefix) {
  for (const spec::MemoryItem& item : plan.resident) {
    if (absl::StartsWith(item.name, prefix)) return item.bytes;
  }
  for (const spec::MemoryPhase& phase : plan.phases) {
    for (const spec::MemoryItem& item : phase.items) {
      if (absl::StartsWith(item.name, prefix)) return item.bytes;
    }
  }
  return -1;
}

TEST_CASE("spec: the memory plan counts the 270M's tensors and shards them under zero3", "[spec][plan]") {
  const std::string dir = testing::TempDir("spec_plan");
  spec::MemoryPlanOptions options;
  options.runtime_bytes = 0;
  auto one = spec::PlanMemory(PlanSpec(dir, {}), options);
  INFO(one.status().ToString());
  REQUIRE(one.ok());
  INFO(one->ToString());
  // Gemma 3 270M: 18 layers of q (1024×640), k and v (256×640), o (640×1024), gate and up
  // (2048×640), down (640×2048); embedding 262144×640 tied to the head.
  const int64_t per_layer = 1024 * 640 + 2 * 256 * 640 + 640 * 1024 + 3 * 2048 * 640;
  CHECK(Item(*one, "embedding") == int64_t{262144} * 640 * 4);
  CHECK(Item(*one, "base projections, 4-bit packed") == 18 * per_layer / 2);
  const int64_t lora = 18 * 16 * ((640 + 1024) + 2 * (640 + 256) + (1024 + 640) + 3 * (640 + 2048));
  CHECK(one->trainable_parameters == lora);
  CHECK(lora == 3796992);  // what PEFT counts for the README job (train_test)
  CHECK(Item(*one, "adapter") == lora * 16);
  CHECK(Item(*one, "gathered layers") == -1);
  // The cross-entropy chunk: 126 target rows of 262144 float32 logits, and the hidden gradient.
  CHECK(Item(*one, "cross-entropy chunk") == 126 * 262144 * 4 + 126 * 640 * 4);
  CHECK(one->world_size == 1);

  // zero3 over 2 processes: every layer's frozen bytes split in two, two whole layers gathered,
  // activation checkpointing on; the embedding stays whole.
  spec::MemoryPlanOptions two_options = options;
  two_options.world_size = 2;
  auto two = spec::PlanMemory(PlanSpec(dir, {"distributed.engine=zero3"}), two_options);
  REQUIRE(two.ok());
  INFO(two->ToString());
  CHECK(Item(*two, "base projections, 4-bit packed") == 18 * per_layer / 4);
  CHECK(Item(*two, "gathered layers") > 0);
  CHECK(Item(*two, "embedding") == Item(*one, "embedding"));
  // The adapter's weights and gradients stay whole, its AdamW state is halved.
  CHECK(Item(*two, "adapter + gradients") == lora * 8);
  CHECK(Item(*two, "AdamW state") == lora / 2 * 12);
  CHECK(Item(*two, "activations kept (each layer's input)") < Item(*one, "activations kept for backward"));
  CHECK(Item(*two, "gradients laid out flat") == lora * 4);
  CHECK(Item(*two, "updated values all-gathered") == lora * 4);
  CHECK_THAT(two->ToString(), Catch::Contains("activation checkpointing on (zero3 turns it on)"));

  // A bf16 model halves the embedding and the activations; checkpointing lowers the peak.
  auto bf16 = spec::PlanMemory(PlanSpec(dir, {"model.dtype=bf16", "training.activation_checkpointing=true"}), options);
  REQUIRE(bf16.ok());
  CHECK(Item(*bf16, "embedding") * 2 == Item(*one, "embedding"));
  CHECK(bf16->peak_bytes() < one->peak_bytes());

  // The check before loading: over the limit is refused with the plan and the way out.
  CHECK(spec::CheckPlanFits(*one, one->peak_bytes(), "test").ok());
  const absl::Status refused = spec::CheckPlanFits(*one, one->peak_bytes() - 1, "distributed.memory_limit");
  CHECK(refused.code() == absl::StatusCode::kResourceExhausted);
  CHECK_THAT(std::string(refused.message()), Catch::Contains("distributed.memory_limit allows"));
  CHECK_THAT(std::string(refused.message()), Catch::Contains("peak per process"));
}

TEST_CASE("spec: the example specs' plans for 3 × 24 GB and one 24 GB GPU", "[spec][plan]") {
  const std::string root = LLMTRAIN_SOURCE_DIR;
  const std::vector<std::pair<std::string, std::string>> examples = {
      {"gemma3_27b_3x24gb.textproto", "gemma-3-27b-it.json"},
      // The same run on the image+text checkpoint: its SigLIP tower (896 px, 27 layers, LoRA from
      // all-linear) whole on every GPU, its activations and its own forward and backward.
      {"gemma3_27b_3x24gb.textproto", "gemma-3-27b-it-vision.json"},
      {"gemma2_2b_3x24gb.textproto", "gemma-2-2b-it.json"},
      {"qwen2_5_14b_qlora.textproto", "qwen2.5-14b.json"}};
  for (const auto& [spec_file, config_file] : examples) {
    INFO(spec_file);
    auto run = spec::LoadRunSpec(root + "/examples/specs/" + spec_file);
    REQUIRE(run.ok());
    auto config = io::LoadHfConfig(root + "/examples/model_configs/" + config_file);
    REQUIRE(config.ok());
    spec::MemoryPlanOptions options;
    options.config = *config;
    options.device = "cuda";
    auto plan = spec::PlanMemory(*run, options);
    INFO(plan.status().ToString());
    REQUIRE(plan.ok());
    INFO(plan->ToString());
    CHECK(plan->world_size == (run->distributed().engine() == spec::DistributedSpec::single ? 1 : 3));
    // What each spec's comment promises: it fits its GPUs.
    CHECK(plan->peak_bytes() < (int64_t{24} << 30));
    if (config->vision.has_value()) {
      const std::string text = plan->ToString();
      CHECK(absl::StrContains(text, "SigLIP tower: 27 layers, hidden 1152, intermediate 4304, heads 16, 4096 patches"));
      CHECK(absl::StrContains(text, "vision tower forward"));
      CHECK(absl::StrContains(text, "vision tower backward"));
    }
  }
}

}  // namespace
}  // namespace llmtrain
