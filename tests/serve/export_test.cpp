// serve/export.h through `llmtrain export`: tiny models of every family with a merged adapter,
// and the real Gemma 3 270M GGUF, exported and loaded by transformers (gguf_file=) and read by
// the gguf package; Q8_0 and Q4_0 bytes against gguf.quants.quantize; refusals.
#include <ATen/ATen.h>

#include <catch2/catch.hpp>
#include <cstdio>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "llmtrain/core/atomic_file.h"
#include "testing/json_util.h"
#include "testing/reference.h"

namespace llmtrain {
namespace {

using nlohmann::json;

const char kIds[] = "[[1, 5, 9, 40, 77, 120, 200, 31, 8, 250, 3, 66], [300, 2, 17, 90, 45, 6, 128, 210, 19, 11, 0, 7]]";

const char kText[] = "The cat of 12 is 5 and it likes the birds. Über naïve café!";

std::string Q(const std::string& s) { return testing::ShellQuote(s); }

json Compare(const std::string& ref_dir, const std::string& ref_gguf, const std::vector<std::string>& ggufs,
             const char* ids = kIds) {
  std::vector<std::string> args = {"compare", ids, ref_dir, ref_gguf};
  args.insert(args.end(), ggufs.begin(), ggufs.end());
  const auto r = testing::RunReference("export_ref.py", args);
  INFO(r.out);
  REQUIRE(r.exit_code == 0);
  return testing::LastJsonLine(r.out);
}

// transformers' tokenizer read back from `file` encodes kText as the reference's does.
void CheckTokens(const std::string& ref_dir, const std::string& ref_gguf, const std::string& file) {
  const auto t = testing::RunReference("export_ref.py", {"tokens", ref_dir, ref_gguf, file, kText});
  INFO(t.out);
  REQUIRE(t.exit_code == 0);
  const json ids = testing::LastJsonLine(t.out);
  CHECK(ids["ref"].size() > 5);
  CHECK(ids["ref"] == ids["gguf"]);
}

TEST_CASE("export: tiny models of each family with a merged adapter load in transformers as GGUF", "[serve][export]") {
  if (!testing::ReferenceStackAvailable()) return testing::Skip("no .venv: the reference stack is missing");
  const std::string cli = testing::CliPath();
  for (const std::string family : {"qwen2", "qwen3", "gemma2", "gemma3_text"}) {
    INFO("family " << family);
    const std::string dir = testing::TempDir("export_" + family);
    REQUIRE(testing::RunReference("export_ref.py", {"tiny", family, dir + "/model"}).exit_code == 0);
    REQUIRE(testing::RunReference("export_ref.py", {"adapter", dir + "/model", dir + "/adapter", "3"}).exit_code == 0);
    // The reference: our merge of the adapter into an f32 folder (lora_test checks it against PEFT).
    const auto merged = testing::RunCommand(absl::StrCat(cli, " merge --model ", Q(dir + "/model"), " --adapter ",
                                                         Q(dir + "/adapter"), " --output ", Q(dir + "/merged"),
                                                         " --dtype f32 2>&1"));
    INFO(merged.out);
    REQUIRE(merged.exit_code == 0);
    std::vector<std::string> files;
    for (const std::string type : {"f32", "f16", "bf16", "q8_0", "q4_0"}) {
      const std::string out = absl::StrCat(dir, "/gguf_", type, "/model-", type, ".gguf");
      const auto r = testing::RunCommand(absl::StrCat("mkdir -p ", Q(dir + "/gguf_" + type), " && ", cli, " export --model ",
                                                      Q(dir + "/model"), " --adapter ", Q(dir + "/adapter"), " --type ",
                                                      type, " --output ", Q(out), " 2>&1"));
      INFO(r.out);
      REQUIRE(r.exit_code == 0);
      CHECK_THAT(r.out, Catch::Contains("14 adapted projections merged"));
      files.push_back(out);
    }
    const json result = Compare(dir + "/merged", "-", files);
    INFO(result.dump());
    const json& f = result["files"];
    const std::string arch = family == "gemma3_text" ? "gemma3" : family;
    for (const auto& [name, file] : f.items()) {
      INFO(name);
      CHECK(file["architecture"] == arch);
      CHECK(file["finite"] == true);
      CHECK(file["requant_problems"].empty());
      // Norms and biases stay F32; every 2-D weight has the file's type (rows are whole blocks).
      const json& types = file["types"];
      CHECK(types.size() <= 2);
      if (name == "model-q8_0.gguf" || name == "model-q4_0.gguf") {
        CHECK(types["F32"].get<int>() + file["requantized"].get<int>() == file["tensors"].get<int>());
      }
    }
    // The most likely next token at every position, unchanged by f32 and f16 (the quantized
    // types move a tiny random model's nearly flat logits enough to swap some).
    CHECK(f["model-f32.gguf"]["same_argmax"] == true);
    CHECK(f["model-f16.gguf"]["same_argmax"] == true);
    // f32: the same weights and the same computation, so the same logits. (Gemma's norms go
    // through llama.cpp's 1 + w and back, which is exact for these weights; rms_norm_eps goes
    // through float32 and changed nothing here.)
    CHECK(f["model-f32.gguf"]["rel"].get<double>() == 0.0);
    // f16 / bf16: every weight rounded once (2^-11 / 2^-8 relative). Measured when this was
    // written, worst family: 9.6e-4 / 8.5e-3 of the largest logit; the bounds are 3x and 2.5x.
    CHECK(f["model-f16.gguf"]["rel"].get<double>() <= 3e-3);
    CHECK(f["model-bf16.gguf"]["rel"].get<double>() <= 2e-2);
    // q8_0 / q4_0: the bytes are gguf's own quantizer's on the f32 export's values (above). On
    // these random weights 8- and 4-bit blocks moved the logits by up to 2.5e-2 and 0.35 of the
    // largest; the bounds (5e-2, 0.5) only catch a broken layout, the bytes are the real check.
    CHECK(f["model-q8_0.gguf"]["requantized"].get<int>() > 0);
    CHECK(f["model-q4_0.gguf"]["requantized"].get<int>() > 0);
    CHECK(f["model-q8_0.gguf"]["rel"].get<double>() <= 5e-2);
    CHECK(f["model-q4_0.gguf"]["rel"].get<double>() <= 0.5);
    // Qwen's byte-level BPE vocabulary (tokens, merges, pre-tokenizer "qwen2") read back by
    // transformers from the GGUF encodes as the tokenizer.json does.
    if (family == "qwen2" || family == "qwen3") CheckTokens(dir + "/model", "-", files[0]);
    std::printf("export: %-11s f32 %.2e, f16 %.2e, bf16 %.2e, q8_0 %.2e, q4_0 %.2e (max |Δlogit| / max |logit| against "
                "the merged f32 folder, transformers on both); %d + %d tensors re-quantized by gguf equal\n",
                family.c_str(), f["model-f32.gguf"]["rel"].get<double>(), f["model-f16.gguf"]["rel"].get<double>(),
                f["model-bf16.gguf"]["rel"].get<double>(), f["model-q8_0.gguf"]["rel"].get<double>(),
                f["model-q4_0.gguf"]["rel"].get<double>(), f["model-q8_0.gguf"]["requantized"].get<int>(),
                f["model-q4_0.gguf"]["requantized"].get<int>());
  }
}

TEST_CASE("export --adapter-only: a LoRA GGUF with PEFT's tensors under the converter's names", "[serve][export]") {
  if (!testing::ReferenceStackAvailable()) return testing::Skip("no .venv: the reference stack is missing");
  const std::string cli = testing::CliPath();
  // Qwen2 untied with LoRA, Gemma 3 with rsLoRA (its alpha is written as alpha · √r).
  for (const std::string family : {"qwen2", "gemma3_text"}) {
    INFO("family " << family);
    const std::string dir = testing::TempDir("export_lora_" + family);
    REQUIRE(testing::RunReference("export_ref.py", {"tiny", family, dir + "/model"}).exit_code == 0);
    REQUIRE(testing::RunReference("export_ref.py", {"adapter", dir + "/model", dir + "/adapter", "4",
                                                    family == "qwen2" ? "lora" : "rslora"}).exit_code == 0);
    for (const std::string type : {"f32", "f16"}) {
      const std::string out = absl::StrCat(dir, "/adapter-", type, ".gguf");
      const auto r = testing::RunCommand(absl::StrCat(cli, " export --model ", Q(dir + "/model"), " --adapter ",
                                                      Q(dir + "/adapter"), " --adapter-only --type ", type, " --output ",
                                                      Q(out), " 2>&1"));
      INFO(r.out);
      REQUIRE(r.exit_code == 0);
      CHECK_THAT(r.out, Catch::Contains("LoRA adapter, 28 tensors"));
      const auto ref = testing::RunReference(
          "export_ref.py", {"lora", dir + "/adapter", out, family == "qwen2" ? "qwen2" : "gemma3", "2"});
      INFO(ref.out);
      REQUIRE(ref.exit_code == 0);
      const json got = testing::LastJsonLine(ref.out);
      INFO(got.dump());
      CHECK(got["problems"].empty());
      CHECK(got["compared"] == 28);  // lora_A and lora_B of 7 projections × 2 layers
      CHECK(got["tensors"] == 28);
      std::printf("export --adapter-only %s %s: 28 tensors equal PEFT's (in %s), adapter.lora.alpha %s\n",
                  family.c_str(), type.c_str(), type.c_str(), got["alpha"].dump().c_str());
    }
    // Refusals before anything is written.
    const auto no_adapter = testing::RunCommand(absl::StrCat(cli, " export --model ", Q(dir + "/model"),
                                                             " --adapter-only --output ", Q(dir + "/x.gguf"), " 2>&1"));
    CHECK(no_adapter.exit_code == 2);
    CHECK_THAT(no_adapter.out, Catch::Contains("--adapter-only needs --adapter DIR"));
    const auto q4 = testing::RunCommand(absl::StrCat(cli, " export --model ", Q(dir + "/model"), " --adapter ",
                                                     Q(dir + "/adapter"), " --adapter-only --type q4_0 --output ",
                                                     Q(dir + "/x.gguf"), " 2>&1"));
    CHECK(q4.exit_code == 2);
    CHECK_FALSE(IsRegularFile(dir + "/x.gguf"));
  }
}

TEST_CASE("export: what a GGUF cannot state is refused before anything is written", "[serve][export]") {
  if (!testing::ReferenceStackAvailable()) return testing::Skip("no .venv: the reference stack is missing");
  const std::string cli = testing::CliPath();
  const std::string dir = testing::TempDir("export_refused");
  // Gemma 3 with linear RoPE scaling (as the 4B and larger have): transformers reads no scaling
  // from a GGUF.
  REQUIRE(testing::RunReference("export_ref.py", {"tiny", "gemma3_text", dir + "/scaled", "8"}).exit_code == 0);
  const auto scaled = testing::RunCommand(absl::StrCat(cli, " export --model ", Q(dir + "/scaled"), " --output ",
                                                       Q(dir + "/scaled.gguf"), " 2>&1"));
  INFO(scaled.out);
  CHECK(scaled.exit_code == 1);
  CHECK_THAT(scaled.out, Catch::Contains("the GGUF would not compute what the model computes"));
  CHECK_THAT(scaled.out, Catch::Contains("RoPE of layer"));
  CHECK_FALSE(IsRegularFile(dir + "/scaled.gguf"));
  // Gemma with query_pre_attn_scalar ≠ head_dim: llama.cpp scales by 1/sqrt(head_dim).
  REQUIRE(testing::RunReference("export_ref.py", {"tiny", "gemma3_text", dir + "/qpas", "", "64"}).exit_code == 0);
  const auto qpas = testing::RunCommand(absl::StrCat(cli, " export --model ", Q(dir + "/qpas"), " --output ",
                                                     Q(dir + "/qpas.gguf"), " 2>&1"));
  INFO(qpas.out);
  CHECK(qpas.exit_code == 1);
  CHECK_THAT(qpas.out, Catch::Contains("llama.cpp scales Gemma's attention by 1/sqrt(head_dim) = 0.0625"));
  CHECK_FALSE(IsRegularFile(dir + "/qpas.gguf"));
  // A vocabulary of another size than the embedding (the 270M's for a tiny model).
  const auto vocab = testing::RunCommand(absl::StrCat(
      cli, " export --model ", Q(dir + "/qpas"), " --vocab ",
      Q(std::string(LLMTRAIN_SOURCE_DIR) + "/.venv/models/gemma-3-270m-q4_k_m.gguf"), " --output ", Q(dir + "/v.gguf"), " 2>&1"));
  INFO(vocab.out);
  CHECK(vocab.exit_code == 1);
  CHECK_THAT(vocab.out, Catch::Contains("the vocabulary has 262144 tokens, the model's embedding 320 rows"));
  const auto type = testing::RunCommand(absl::StrCat(cli, " export --model ", Q(dir + "/scaled"), " --type q5_k --output ",
                                                     Q(dir + "/x.gguf"), " 2>&1"));
  CHECK(type.exit_code == 2);
  CHECK_THAT(type.out, Catch::Contains("--type: \"q5_k\" is not one of f32, f16, bf16, q8_0, q4_0, q4_k_m"));
}

std::string RealModel() { return std::string(LLMTRAIN_SOURCE_DIR) + "/.venv/models/gemma-3-270m-q4_k_m.gguf"; }

TEST_CASE("export: the real Gemma 3 270M from its GGUF, in transformers", "[serve][export][real]") {
  if (!testing::ReferenceStackAvailable()) return testing::Skip("no .venv: the reference stack is missing");
  const std::string cli = testing::CliPath();
  const std::string dir = testing::TempDir("export_270m");
  std::vector<std::string> files;
  for (const std::string type : {"f32", "f16", "bf16", "q8_0", "q4_k_m"}) {
    const std::string out = absl::StrCat(dir, "/", type, "/gemma-3-270m-", type, ".gguf");
    const auto r = testing::RunCommand(absl::StrCat("mkdir -p ", Q(dir + "/" + type), " && ", cli, " export --model ",
                                                    Q(RealModel()), " --type ", type, " --output ", Q(out), " 2>&1"));
    INFO(r.out);
    REQUIRE(r.exit_code == 0);
    files.push_back(out);
  }
  // The same ids through transformers on the original Q4_K_M file and on each export.
  const std::string model_dir = RealModel().substr(0, RealModel().rfind('/'));
  const std::string model_name = RealModel().substr(RealModel().rfind('/') + 1);
  const json result = Compare(model_dir, model_name, files,
                              "[[2, 818, 5279, 529, 7001, 563, 9079, 236761, 669, 2255, 3487, 528]]");
  INFO(result.dump());
  const json& f = result["files"];
  for (const auto& [name, file] : f.items()) {
    INFO(name);
    CHECK(file["architecture"] == "gemma3");
    CHECK(file["finite"] == true);
    CHECK(file["requant_problems"].empty());
  }
  // f32: the original's dequantized weights as they are (the norms' 1 + w back and forth).
  CHECK(f["gemma-3-270m-f32.gguf"]["rel"].get<double>() <= 1e-6);
  CHECK(f["gemma-3-270m-f32.gguf"]["same_argmax"] == true);
  CHECK(f["gemma-3-270m-f16.gguf"]["rel"].get<double>() <= 1e-2);
  CHECK(f["gemma-3-270m-bf16.gguf"]["rel"].get<double>() <= 5e-2);
  CHECK(f["gemma-3-270m-q8_0.gguf"]["rel"].get<double>() <= 5e-2);
  CHECK(f["gemma-3-270m-q8_0.gguf"]["requantized"].get<int>() > 0);
  // q4_k_m: llama-quantize's choice of type for each of the 236 tensors (the original file is its
  // Q4_K_M output), and every quantized tensor's bytes equal llama.cpp's (Q4_K, Q6_K) or gguf's
  // (Q5_0, Q8_0) quantizer on the f32 export's values.
  const json& k = f["gemma-3-270m-q4_k_m.gguf"];
  CHECK(k["mix_differs"].empty());
  CHECK(k["types"] == json::parse(R"({"F32": 109, "Q4_K": 27, "Q5_0": 81, "Q6_K": 9, "Q8_0": 10})"));
  CHECK(k["requantized"].get<int>() == 127);
  // Measured 1.05e-3: most blocks of values that were Q4_K_M already quantize back as they were.
  CHECK(k["rel"].get<double>() <= 1e-2);
  // The vocabulary goes along unchanged: transformers' tokenizer from the export encodes as the
  // original's.
  CheckTokens(model_dir, model_name, files[0]);
  std::printf("export: Gemma 3 270M: f32 %.2e, f16 %.2e, bf16 %.2e, q8_0 %.2e, q4_k_m %.2e (max |Δlogit| / max "
              "|logit| against transformers on the original Q4_K_M GGUF)\n",
              f["gemma-3-270m-f32.gguf"]["rel"].get<double>(), f["gemma-3-270m-f16.gguf"]["rel"].get<double>(),
              f["gemma-3-270m-bf16.gguf"]["rel"].get<double>(), f["gemma-3-270m-q8_0.gguf"]["rel"].get<double>(),
              k["rel"].get<double>());
}

}  // namespace
}  // namespace llmtrain
