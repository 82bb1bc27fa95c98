// `llmtrain inspect` and `llmtrain convert`, run as a user runs them.
#include <ATen/ATen.h>

#include <catch2/catch.hpp>

#include "llmtrain/io/safetensors.h"
#include "llmtrain/io/tensors.h"
#include "testing/json_util.h"
#include "testing/reference.h"

namespace llmtrain {
namespace {

using nlohmann::json;
using testing::LastJsonLine;
using testing::RunCommand;
using testing::ShellQuote;

std::string GgufModelPath() { return std::string(LLMTRAIN_SOURCE_DIR) + "/.venv/models/gemma-3-270m-q4_k_m.gguf"; }

TEST_CASE("cli: inspect --json on the real Gemma 3 GGUF matches gguf-py", "[io][cli][reference]") {
  if (!testing::ReferenceStackAvailable()) return;
  const auto run = RunCommand(ShellQuote(testing::CliPath()) + " inspect --json " + ShellQuote(GgufModelPath()));
  REQUIRE(run.exit_code == 0);
  const json ours = json::parse(run.out);
  CHECK(ours["format"] == "gguf");
  CHECK(ours["metadata"]["general.architecture"] == "gemma3");
  CHECK(ours["metadata"]["tokenizer.ggml.tokens"].size() == 262144);
  CHECK(ours["config"]["model_type"] == "gemma3_text");
  CHECK(ours["config"]["hidden_size"] == 640);
  const json theirs = LastJsonLine(testing::RunReference("gguf_ref.py", {"describe", GgufModelPath()}).out);
  REQUIRE(ours["tensors"].size() == theirs["tensors"].size());
  for (const json& t : ours["tensors"]) {
    INFO("tensor " << t["name"]);
    const json& want = theirs["tensors"][t["name"].get<std::string>()];
    CHECK(t["dtype"] == want[0]);
    CHECK(t["shape"] == want[1]);
  }
  // The text form prints the same tensors, one per line.
  const auto text = RunCommand(ShellQuote(testing::CliPath()) + " inspect " + ShellQuote(GgufModelPath()));
  CHECK(text.exit_code == 0);
  CHECK(text.out.find("tensors (" + std::to_string(theirs["tensors"].size()) + "):") != std::string::npos);
  CHECK(text.out.find("token_embd.weight") != std::string::npos);
}

TEST_CASE("cli: convert of the real Gemma 3 GGUF equals gguf dequantization", "[io][cli][reference]") {
  if (!testing::ReferenceStackAvailable()) return;
  const std::string out = testing::TempDir("cli_convert") + "/gemma3.safetensors";
  const auto run = RunCommand(ShellQuote(testing::CliPath()) + " convert " + ShellQuote(GgufModelPath()) + " " +
                              ShellQuote(out) + " 2>&1");
  INFO(run.out);
  REQUIRE(run.exit_code == 0);
  const json result = LastJsonLine(testing::RunReference("gguf_ref.py", {"check_convert", GgufModelPath(), out}).out);
  INFO(result.dump());
  CHECK(result["equal"] == true);
  CHECK(result["n_tensors"].get<int>() > 200);
  RunCommand("rm -f " + ShellQuote(out));
}

TEST_CASE("cli: inspect and convert of a sharded transformers checkpoint", "[io][cli][reference]") {
  if (!testing::ReferenceStackAvailable()) return;
  const std::string dir = testing::TempDir("cli_sharded");
  REQUIRE(testing::RunReference("safetensors_ref.py", {"sharded", dir + "/model", "9"}).exit_code == 0);
  const auto run = RunCommand(ShellQuote(testing::CliPath()) + " inspect --json " + ShellQuote(dir + "/model"));
  REQUIRE(run.exit_code == 0);
  const json ours = json::parse(run.out);
  CHECK(ours["format"] == "safetensors-sharded");
  CHECK(ours["config"]["model_type"] == "qwen2");
  CHECK(ours["metadata"]["format"] == "pt");
  CHECK(ours["tensors"][0]["dtype"] == "BF16");

  // The index file itself, and a lone shard (which has no config.json of its own).
  const json by_index = json::parse(
      RunCommand(ShellQuote(testing::CliPath()) + " inspect --json " +
                 ShellQuote(dir + "/model/model.safetensors.index.json")).out);
  CHECK(by_index["format"] == "safetensors-sharded");
  CHECK(by_index["tensors"].size() == ours["tensors"].size());
  CHECK(by_index["config"]["model_type"] == "qwen2");
  const json by_shard = json::parse(
      RunCommand(ShellQuote(testing::CliPath()) + " inspect --json " +
                 ShellQuote(dir + "/model/model-00001-of-00003.safetensors")).out);
  CHECK(by_shard["format"] == "safetensors");
  CHECK(by_shard["config"].is_null());
  CHECK(by_shard["tensors"].size() < ours["tensors"].size());

  const std::string out = dir + "/f32.safetensors";
  REQUIRE(RunCommand(ShellQuote(testing::CliPath()) + " convert " + ShellQuote(dir + "/model") + " " +
                     ShellQuote(out) + " --dtype f32 2>/dev/null").exit_code == 0);
  auto converted = io::SafetensorsFile::Open(out);
  auto source = io::Checkpoint::Open(dir + "/model");
  REQUIRE(converted.ok());
  REQUIRE(source.ok());
  CHECK((*converted)->tensors().size() == (*source)->Names().size());
  for (const io::TensorInfo& t : (*converted)->tensors()) {
    INFO("tensor " << t.name);
    CHECK(t.dtype == Dtype::kF32);
    auto original = io::LoadTensor(**source, t.name);
    REQUIRE(original.ok());
    CHECK(at::equal(io::TensorView(**converted, t), original->to(at::kFloat)));
  }
}

TEST_CASE("cli: usage errors exit 2, bad files exit 1 naming the file", "[io][cli]") {
  const std::string cli = ShellQuote(testing::CliPath());
  CHECK(RunCommand(cli + " 2>/dev/null").exit_code == 2);
  CHECK(RunCommand(cli + " frobnicate 2>/dev/null").exit_code == 2);
  CHECK(RunCommand(cli + " inspect 2>/dev/null").exit_code == 2);
  CHECK(RunCommand(cli + " convert a.gguf 2>/dev/null").exit_code == 2);
  CHECK(RunCommand(cli + " convert a.gguf b.safetensors --dtype int4 2>/dev/null").exit_code == 2);
  const auto missing = RunCommand(cli + " inspect /no/such/model.gguf 2>&1");
  CHECK(missing.exit_code == 1);
  CHECK(missing.out.find("/no/such/model.gguf") != std::string::npos);
  const std::string dir = testing::TempDir("cli_bad");
  RunCommand("printf 'GGUF\\003\\000\\000\\000' > " + ShellQuote(dir + "/trunc.gguf"));
  const auto truncated = RunCommand(cli + " inspect " + ShellQuote(dir + "/trunc.gguf") + " 2>&1");
  CHECK(truncated.exit_code == 1);
  CHECK(truncated.out.find("trunc.gguf") != std::string::npos);
  CHECK(truncated.out.find("truncated") != std::string::npos);
}

TEST_CASE("cli: plan prints the memory per process and whether it fits", "[io][cli]") {
  const std::string cli = ShellQuote(testing::CliPath());
  const std::string root = LLMTRAIN_SOURCE_DIR;
  const std::string spec = ShellQuote(root + "/examples/specs/gemma3_27b_3x24gb.textproto");
  const std::string config = ShellQuote(root + "/examples/model_configs/gemma-3-27b-it.json");
  // The 27B on three GPUs of 24 GiB, from its config alone (the model is not on this machine).
  const auto fits = RunCommand(cli + " plan --spec " + spec + " --model-config " + config + " --gpu-memory 24GiB 2>&1");
  INFO(fits.out);
  CHECK(fits.exit_code == 0);
  CHECK(fits.out.find("gemma3_text, 62 layers, hidden 5376") != std::string::npos);
  CHECK(fits.out.find("engine zero3, 3 processes") != std::string::npos);
  CHECK(fits.out.find("1/3 of every layer (zero3)") != std::string::npos);
  CHECK(fits.out.find("fits: 24.00 GiB allowed (--gpu-memory)") != std::string::npos);
  // On one GPU it does not: exit 1, with the figures.
  const auto one = RunCommand(cli + " plan --spec " + spec + " --model-config " + config +
                              " --set distributed.engine=single --set distributed.world_size=0 --gpu-memory 24GiB --json");
  CHECK(one.exit_code == 1);
  const json plan = json::parse(one.out);
  CHECK(plan["fits"] == false);
  CHECK(plan["world_size"] == 1);
  CHECK(plan["peak_bytes"].get<int64_t>() > (int64_t{24} << 30));
  // Bad use exits 2; a bad spec field exits 1 naming it.
  CHECK(RunCommand(cli + " plan 2>/dev/null").exit_code == 2);
  CHECK(RunCommand(cli + " plan --spec " + spec + " --world-size 0 2>/dev/null").exit_code == 2);
  CHECK(RunCommand(cli + " plan --spec " + spec + " --gpu-memory lots 2>/dev/null").exit_code == 2);
  const auto bad = RunCommand(cli + " plan --spec " + spec + " --model-config " + config +
                              " --set distributed.memory_limit=lots 2>&1");
  CHECK(bad.exit_code == 1);
  CHECK(bad.out.find("distributed.memory_limit") != std::string::npos);
}

}  // namespace
}  // namespace llmtrain
