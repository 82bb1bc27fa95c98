// io/hf_config against transformers' configuration classes, at test time.
#include <catch2/catch.hpp>
#include <algorithm>
#include <fstream>

#include "llmtrain/core/atomic_file.h"
#include "llmtrain/io/families.h"
#include "llmtrain/io/hf_config.h"
#include "testing/json_util.h"
#include "testing/reference.h"

namespace llmtrain {
namespace {

using nlohmann::json;

// Every key we resolve must exist in transformers' to_dict() with the same value (numbers by
// value: transformers keeps 1000000 an int where the file has one, as we do).
void CheckSubset(const json& ours, const json& theirs, const std::string& path) {
  for (auto it = ours.begin(); it != ours.end(); ++it) {
    const std::string key = path + it.key();
    INFO("key " << key);
    REQUIRE(theirs.contains(it.key()));
    const json& t = theirs[it.key()];
    if (it->is_object() && t.is_object()) {
      CheckSubset(*it, t, key + ".");
    } else if (it->is_number() && t.is_number()) {
      CHECK(it->get<double>() == t.get<double>());
    } else {
      CHECK(*it == t);
    }
  }
}

struct Case {
  const char* name;
  const char* config;
};

// Sparse, legacy and real-world shapes of config.json for every supported model_type.
const Case kCases[] = {
    {"gemma3_sparse", R"({"model_type": "gemma3", "architectures": ["Gemma3ForConditionalGeneration"],
      "torch_dtype": "bfloat16", "eos_token_id": [1, 106],
      "text_config": {"hidden_size": 640, "num_hidden_layers": 8, "num_attention_heads": 4,
                      "num_key_value_heads": 1, "sliding_window": 512,
                      "rope_scaling": {"rope_type": "linear", "factor": 8.0}},
      "vision_config": {"hidden_size": 1152, "image_size": 896, "patch_size": 14,
                        "num_hidden_layers": 27, "num_attention_heads": 16,
                        "intermediate_size": 4304, "vision_use_head": false}})"},
    {"gemma3_minimal", R"({"model_type": "gemma3"})"},
    {"gemma3_text_legacy", R"({"model_type": "gemma3_text", "rope_theta": 1000000.0,
      "rope_local_base_freq": 10000.0, "sliding_window_pattern": 3, "num_hidden_layers": 7,
      "final_logit_softcapping": null, "vocab_size": 262144, "unknown_key": {"a": 1}})"},
    {"gemma3_text_layer_types", R"({"model_type": "gemma3_text", "num_hidden_layers": 3,
      "layer_types": ["sliding_attention", "attention", "full_attention"],
      "rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": 500000.0},
                          "sliding_attention": {"rope_type": "default", "rope_theta": 20000.0}}})"},
    {"gemma2_small", R"({"model_type": "gemma2", "num_hidden_layers": 5, "hidden_size": 64,
      "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
      "torch_dtype": "float32"})"},
    {"qwen2_sliding", R"({"model_type": "qwen2", "num_key_value_heads": null,
      "num_attention_heads": 8, "hidden_size": 64, "use_sliding_window": true,
      "sliding_window": 128, "max_window_layers": 2, "num_hidden_layers": 4,
      "rope_theta": 1000000.0, "torch_dtype": "bfloat16", "tie_word_embeddings": true,
      "foo_bar": [1, 2, 3]})"},
    {"qwen2_minimal", R"({"model_type": "qwen2"})"},
    {"qwen3_yarn", R"({"model_type": "qwen3", "rope_scaling": {"type": "yarn", "factor": 4.0},
      "rope_theta": 1000000, "num_hidden_layers": 3, "use_sliding_window": false,
      "layer_types": ["full_attention", "full_attention", "sliding_attention"],
      "eos_token_id": [151645, 151643], "bos_token_id": 151643})"},
};

// Configs transformers refuses; ours must refuse them too, naming the key.
const Case kBadCases[] = {
    {"hidden_size", R"({"model_type": "qwen2", "hidden_size": "abc"})"},
    {"num_hidden_layers", R"({"model_type": "qwen3", "num_hidden_layers": true})"},
    {"layer_types", R"({"model_type": "qwen3", "num_hidden_layers": 3, "layer_types": ["full_attention"]})"},
    {"hidden_size", R"({"model_type": "gemma2", "hidden_size": 1000, "num_attention_heads": 32})"},
    {"text_config.head_dim", R"({"model_type": "gemma3", "text_config": {"head_dim": null}})"},
    {"model_type", R"({"hidden_size": 64})"},
    {"use_cache", R"({"model_type": "qwen2", "use_cache": 1})"},
    {"rope_type", R"({"model_type": "qwen3", "rope_scaling": {"rope_type": "linear"}})"},
    {"eos_token_id", R"({"model_type": "qwen2", "eos_token_id": "1"})"},
};

TEST_CASE("hf_config: defaults and derived values equal transformers'", "[io][hf_config][reference]") {
  if (!testing::ReferenceStackAvailable()) return;
  const std::string root = testing::TempDir("hf_config");
  std::vector<std::string> args = {"configs"};
  for (const Case& c : kCases) {
    const std::string dir = root + "/" + c.name;
    testing::RunCommand("mkdir -p " + testing::ShellQuote(dir));
    REQUIRE(WriteFileAtomically(dir + "/config.json", c.config).ok());
    args.push_back(dir);
  }
  for (size_t i = 0; i < std::size(kBadCases); ++i) {
    const std::string dir = root + "/bad" + std::to_string(i);
    testing::RunCommand("mkdir -p " + testing::ShellQuote(dir));
    REQUIRE(WriteFileAtomically(dir + "/config.json", kBadCases[i].config).ok());
    args.push_back(dir);
  }
  const json theirs = testing::LastJsonLine(testing::RunReference("hf_config_ref.py", args).out);
  REQUIRE(theirs.is_object());

  for (const Case& c : kCases) {
    INFO("case " << c.name);
    const std::string dir = root + "/" + c.name;
    auto config = io::LoadHfConfig(dir);
    REQUIRE(config.ok());
    REQUIRE(!theirs[dir].contains("__error__"));
    CheckSubset(json::parse(config->resolved_json), theirs[dir], "");
  }
  for (size_t i = 0; i < std::size(kBadCases); ++i) {
    const std::string dir = root + "/bad" + std::to_string(i);
    INFO("bad case " << kBadCases[i].config);
    CHECK(theirs[dir].contains("__error__"));  // transformers refuses it too
    auto config = io::LoadHfConfig(dir);
    REQUIRE(!config.ok());
    CHECK(config.status().message().find(dir + "/config.json") != absl::string_view::npos);
    CHECK(config.status().message().find(kBadCases[i].name) != absl::string_view::npos);
  }
}

// The family registry is the one list of supported model types: each entry's config class parses
// (text tower and vision as the entry says), an unknown type is refused naming every supported
// one, and the PEFT default targets are PEFT's own mapping.
TEST_CASE("families: each family's config parses, PEFT defaults equal PEFT's", "[io][hf_config][reference]") {
  std::vector<std::string> types;
  REQUIRE(io::Families().size() >= 5);
  for (const io::FamilyInfo* entry : io::Families()) {
    const io::FamilyInfo& family = *entry;
    INFO("model_type " << family.model_type);
    types.push_back(family.model_type);
    CHECK(io::FindFamily(family.model_type) == &family);
    auto config = io::ParseHfConfig("config.json", json{{"model_type", family.model_type}}.dump());
    REQUIRE(config.ok());
    CHECK(config->model_type == family.model_type);
    CHECK(config->text.model_type == family.text_model_type);
    CHECK(config->vision.has_value() == family.has_vision);
    if (!family.gguf_architecture.empty()) {
      CHECK(io::FindFamilyForGguf(family.gguf_architecture) == &family);
      CHECK(!family.has_vision);  // a GGUF holds a text backbone
    }
  }
  CHECK(io::FindFamilyForGguf("") == nullptr);
  auto unknown = io::ParseHfConfig("config.json", R"({"model_type": "llama"})");
  REQUIRE(!unknown.ok());
  CHECK(unknown.status().code() == absl::StatusCode::kUnimplemented);
  for (const std::string& type : types) {
    CHECK(unknown.status().message().find(type) != absl::string_view::npos);
  }

  if (!testing::ReferenceStackAvailable()) return;
  std::vector<std::string> args = {"peft-targets"};
  args.insert(args.end(), types.begin(), types.end());
  const json theirs = testing::LastJsonLine(testing::RunReference("hf_config_ref.py", args).out);
  REQUIRE(theirs.is_object());
  for (const io::FamilyInfo* entry : io::Families()) {
    const io::FamilyInfo& family = *entry;
    INFO("model_type " << family.model_type << ": PEFT says " << theirs[family.model_type].dump());
    std::vector<std::string> ours = family.peft_default_targets;
    std::sort(ours.begin(), ours.end());
    if (theirs[family.model_type].is_null()) {
      CHECK(ours.empty());
    } else {
      CHECK(json(ours) == theirs[family.model_type]);
    }
  }
}

TEST_CASE("hf_config: typed fields of a sparse gemma3 config", "[io][hf_config]") {
  auto config = io::ParseHfConfig("config.json", kCases[0].config);
  REQUIRE(config.ok());
  CHECK(config->model_type == "gemma3");
  CHECK(config->text.hidden_size == 640);
  CHECK(config->text.head_dim == 256);  // the class default, not hidden / heads
  CHECK(config->text.layer_types.size() == 8);
  CHECK(config->text.layer_types[5] == "full_attention");
  CHECK(config->text.layer_types[4] == "sliding_attention");
  CHECK(config->text.rope_full.rope_type == "linear");
  CHECK(*config->text.rope_full.factor == 8.0);
  CHECK(config->text.rope_full.rope_theta == 1000000.0);
  CHECK(config->text.rope_sliding.rope_theta == 10000.0);
  CHECK(config->text.sliding_window == 512);
  CHECK(!config->text.final_logit_softcapping.has_value());
  CHECK(*config->text.query_pre_attn_scalar == 256.0);
  REQUIRE(config->vision.has_value());
  CHECK(config->vision->image_size == 896);
  CHECK(config->vision->patch_size == 14);
  CHECK(!config->vision->vision_use_head);
  CHECK(config->mm_tokens_per_image == 256);
  CHECK(*config->dtype == "bfloat16");
  // Unknown keys are kept verbatim.
  CHECK(json::parse(config->resolved_json)["architectures"][0] == "Gemma3ForConditionalGeneration");

  auto qwen = io::ParseHfConfig("config.json", kCases[5].config);
  REQUIRE(qwen.ok());
  CHECK(qwen->text.num_key_value_heads == 8);  // explicit null: as many as attention heads
  CHECK(qwen->text.head_dim == 8);             // qwen2: hidden_size / num_attention_heads
  CHECK(qwen->text.layer_types[1] == "full_attention");
  CHECK(qwen->text.layer_types[2] == "sliding_attention");
  CHECK(json::parse(qwen->resolved_json)["foo_bar"] == json::parse("[1, 2, 3]"));
}

}  // namespace
}  // namespace llmtrain
