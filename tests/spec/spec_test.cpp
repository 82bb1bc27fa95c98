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
      {"output.dir=", "output.dir", "is required"},
      {"output.report_to=wandb", "output.report_to", "is not one of"},
      {"distributed.world_size=2", "distributed.world_size", "must be 0 or 1 for the single-process engine"},
      {"distributed.world_size=-1", "distributed.world_size", "must be ≥ 0"},
      {"distributed.cpu_offload=true", "distributed.cpu_offload", "is not built yet"},
      {"distributed.timeout_s=0", "distributed.timeout_s", "must be > 0"},
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

  // A GPU with a multi-process engine is refused (the engines carry CPU tensors so far).
  {
    auto run = spec::ParseRunSpec("run.textproto", valid);
    REQUIRE(run.ok());
    REQUIRE(spec::ApplyOverride(&*run, "model.device=cuda:1").ok());
    spec::FillDefaults(&*run);
    CHECK(spec::ValidateRunSpec(*run).ok());
    REQUIRE(spec::ApplyOverride(&*run, "distributed.engine=zero3").ok());
    CHECK_THAT(std::string(spec::ValidateRunSpec(*run).message()),
               Catch::Contains("model.device: \"cuda:1\" with distributed.engine zero3"));
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
      // Model folders and data files are the user's (or, for the 270M, relative to the repo root).
      CHECK((e.field == "model.path" || absl::StartsWith(e.field, "data.train_files") ||
             absl::StartsWith(e.field, "data.eval_files")));
    }
    ++n;
  }
  CHECK(n >= 4);
}

}  // namespace
}  // namespace llmtrain
