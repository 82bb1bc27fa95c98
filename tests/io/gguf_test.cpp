// io/gguf against the `gguf` package (gguf-py), at test time, and on the real Gemma 3 270M.
#include <ATen/ATen.h>

#include <catch2/catch.hpp>
#include <cmath>
#include <cstring>
#include <random>

#include "io/gguf_quants_device.cuh"
#include "io/gguf_quants_impl.h"
#include "llmtrain/core/atomic_file.h"
#include "llmtrain/io/gguf.h"
#include "llmtrain/io/hf_config.h"
#include "llmtrain/io/safetensors.h"
#include "llmtrain/io/tensors.h"
#include "testing/gguf_blocks.h"
#include "testing/json_util.h"
#include "testing/reference.h"

namespace llmtrain {
namespace {

using nlohmann::json;
using testing::LastJsonLine;
using testing::RunReference;

// Our metadata value as [[type names], value], the shape gguf_ref.py prints.
json Describe(const io::GgufValue& v) {
  json types = json::array({std::string(io::GgufValueTypeName(v.type))});
  json value;
  if (v.type == io::GgufValueType::kArray) {
    types.push_back(std::string(io::GgufValueTypeName(v.array_type)));
    value = json::array();
    for (const auto& s : v.strings) value.push_back(s);
    for (auto u : v.uints) value.push_back(u);
    for (auto i : v.ints) value.push_back(i);
    for (auto d : v.floats) value.push_back(d);
    for (bool b : v.bools) value.push_back(b);
  } else if (auto s = v.AsString()) {
    value = *s;
  } else if (auto b = v.AsBool()) {
    value = *b;
  } else if (const auto* u = std::get_if<uint64_t>(&v.scalar)) {
    value = *u;
  } else if (const auto* i = std::get_if<int64_t>(&v.scalar)) {
    value = *i;
  } else {
    value = std::get<double>(v.scalar);
  }
  return json::array({types, value});
}

std::string GgufModelPath() { return std::string(LLMTRAIN_SOURCE_DIR) + "/.venv/models/gemma-3-270m-q4_k_m.gguf"; }

TEST_CASE("gguf: files written by gguf-py parse, and every type dequantizes bit-identically",
          "[io][gguf][reference]") {
  if (!testing::ReferenceStackAvailable()) return;
  const std::string dir = testing::TempDir("gguf_read");
  const std::string path = dir + "/ref.gguf";
  const auto ref = RunReference("gguf_ref.py", {"write", path, "3"});
  REQUIRE(ref.exit_code == 0);
  const json manifest = LastJsonLine(ref.out);
  auto file = io::GgufFile::Open(path);
  REQUIRE(file.ok());
  CHECK((*file)->version() == 3);
  REQUIRE((*file)->metadata().size() == manifest["metadata"].size());
  for (const auto& [key, value] : (*file)->metadata()) {
    INFO("metadata " << key);
    REQUIRE(manifest["metadata"].contains(key));
    CHECK(Describe(value) == manifest["metadata"][key]);
  }
  auto expected = io::SafetensorsFile::Open(path + ".expected.safetensors");
  REQUIRE(expected.ok());
  REQUIRE((*file)->tensors().size() == manifest["tensors"].size());
  std::set<std::string> types;
  for (const io::GgufTensorInfo& t : (*file)->tensors()) {
    INFO("tensor " << t.name);
    CHECK(std::string(io::GgmlTypeName(t.type)) == manifest["tensors"][t.name][0].get<std::string>());
    CHECK(t.shape == manifest["tensors"][t.name][1].get<std::vector<int64_t>>());
    const io::TensorInfo* want = (*expected)->Find(t.name);
    REQUIRE(want != nullptr);
    CHECK(want->shape == t.shape);
    std::vector<float> got(t.n_elems());
    REQUIRE(io::DequantizeTensor(**file, t, absl::MakeSpan(got)).ok());
    // Bit-identical: compare the float bits, not the values.
    CHECK(std::memcmp(got.data(), (*expected)->Data(*want).data(), got.size() * 4) == 0);
    // The plain C++ path (no intrinsics) gives the same bits as the dispatched one.
    std::vector<float> portable(t.n_elems());
    REQUIRE(io::detail::DequantizeWith(t.type, (*file)->Data(t), absl::MakeSpan(portable), false).ok());
    CHECK(std::memcmp(portable.data(), got.data(), got.size() * 4) == 0);
    types.insert(std::string(io::GgmlTypeName(t.type)));
  }
  CHECK(types == std::set<std::string>{"F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0",
                                       "Q5_1", "Q4_K", "Q5_K", "Q6_K"});

  // Version 2 has the same layout (64-bit counts); the same bytes with version 2 parse the same.
  std::string bytes = *ReadFileToString(path);
  bytes[4] = 2;
  auto v2 = io::GgufFile::Parse(io::MappedFile::FromBytes(
      "v2.gguf", absl::Span<const uint8_t>(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size())));
  REQUIRE(v2.ok());
  CHECK((*v2)->version() == 2);
  CHECK((*v2)->tensors().size() == (*file)->tensors().size());
  CHECK((*v2)->data_start() == (*file)->data_start());
}

TEST_CASE("gguf: files we write load in gguf-py unchanged", "[io][gguf][reference]") {
  if (!testing::ReferenceStackAvailable()) return;
  const std::string dir = testing::TempDir("gguf_write");
  std::mt19937 rng(17);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> x(4 * 64);
  for (float& v : x) v = normal(rng);
  // Edge values: f16/bf16 rounding ties, f16 subnormals and overflow, exact zeros.
  x[0] = 1.0f + std::ldexp(1.0f, -11);
  x[1] = 1.0f + 3 * std::ldexp(1.0f, -11);
  x[2] = std::ldexp(3.0f, -26);
  x[3] = 70000.0f;
  x[4] = -0.0f;
  for (int j = 32; j < 64; ++j) x[j] = 0.0f;  // an all-zero Q8_0 block
  x[64] = 0.5f;                               // Q8_0 ties: x · (127 / 0.5) hits .5 exactly
  x[65] = 0.5f * 3.5f / 127.0f;
  x[96] = -3.0f;                              // Q4_0: the first of two equal magnitudes sets d's sign
  x[97] = 3.0f;
  x[160] = 2.0f / 16.0f * 7.0f;               // Q4_0: x / d + 8.5 lands on a whole number
  x[161] = -2.0f;

  io::GgufWriter w;
  w.AddString("general.architecture", "llmtrain_test");
  w.AddUint32("test.u32", 4000000000u);
  w.AddFloat32("test.f32", 0.1f);
  w.AddBool("test.bool", false);
  io::GgufValue strings;
  strings.type = io::GgufValueType::kArray;
  strings.array_type = io::GgufValueType::kString;
  strings.strings = {"<pad>", "", "héllo"};
  w.Add("test.strings", strings);
  io::GgufValue i64;
  i64.type = io::GgufValueType::kInt64;
  i64.scalar = int64_t{-5};
  w.Add("test.i64", i64);
  std::vector<io::TensorToWrite> values;
  for (auto [name, type] : {std::pair{"f32", io::GgmlType::kF32}, std::pair{"f16", io::GgmlType::kF16},
                            std::pair{"bf16", io::GgmlType::kBF16}, std::pair{"q8_0", io::GgmlType::kQ8_0},
                            std::pair{"q4_0", io::GgmlType::kQ4_0}, std::pair{"q5_0", io::GgmlType::kQ5_0}}) {
    REQUIRE(w.AddTensor(name, type, {4, 64}, x).ok());
    values.push_back({name, Dtype::kF32, {4, 64},
                      absl::Span<const uint8_t>(reinterpret_cast<const uint8_t*>(x.data()), x.size() * 4)});
  }
  // 2 Mi random values for each quantizer: no rounding of gguf's escapes on few edge cases.
  std::vector<float> big(512 * 4096);
  for (float& v : big) v = normal(rng);
  // Rows that take the quantizers' special cases: all zeros, a constant, values too small for a
  // scale (Q6_K's 1e-15), all positive (Q4_K's min clamped to 0), one outlier, and steps.
  for (int64_t c = 0; c < 4096; ++c) {
    big[c] = 0.0f;
    big[4096 + c] = 0.25f;
    big[2 * 4096 + c] = 1e-20f * normal(rng);
    big[3 * 4096 + c] = std::fabs(normal(rng)) + 0.5f;
    big[4 * 4096 + c] = c % 97 == 0 ? 40.0f : 0.01f * normal(rng);
    big[5 * 4096 + c] = static_cast<float>(c % 16) - 7.0f;
  }
  for (auto [name, type] : {std::pair{"q8_0_big", io::GgmlType::kQ8_0}, std::pair{"q4_0_big", io::GgmlType::kQ4_0},
                            std::pair{"q5_0_big", io::GgmlType::kQ5_0}, std::pair{"q4_k_big", io::GgmlType::kQ4_K},
                            std::pair{"q6_k_big", io::GgmlType::kQ6_K}}) {
    REQUIRE(w.AddTensor(name, type, {512, 4096}, big).ok());
    values.push_back({name, Dtype::kF32, {512, 4096},
                      absl::Span<const uint8_t>(reinterpret_cast<const uint8_t*>(big.data()), big.size() * 4)});
  }
  CHECK(!w.AddTensor("q8_0_bad", io::GgmlType::kQ8_0, {2, 10}, absl::MakeConstSpan(x.data(), 20)).ok());
  CHECK(!w.AddTensor("q4_k_bad", io::GgmlType::kQ4_K, {4, 64}, x).ok());  // rows of 64: not whole super-blocks
  CHECK(w.AddTensor("q5_k", io::GgmlType::kQ5_K, {1, 256}, absl::MakeConstSpan(big.data(), 256)).code() ==
        absl::StatusCode::kUnimplemented);
  const std::string path = dir + "/ours.gguf";
  REQUIRE(w.Write(path).ok());
  REQUIRE(io::WriteSafetensors(dir + "/values.safetensors", values).ok());

  const json result = LastJsonLine(RunReference("gguf_ref.py", {"read", path, dir + "/values.safetensors"}).out);
  INFO(result.dump());
  CHECK(result["ok"] == true);
  CHECK(result["metadata"]["test.u32"] == json::parse(R"([["UINT32"], 4000000000])"));
  CHECK(result["metadata"]["test.bool"] == json::parse(R"([["BOOL"], false])"));
  CHECK(result["metadata"]["test.i64"] == json::parse(R"([["INT64"], -5])"));
  CHECK(result["metadata"]["test.strings"] == json::parse(R"([["ARRAY", "STRING"], ["<pad>", "", "héllo"]])"));
  CHECK(result["tensors"]["q8_0"] == json::parse(R"(["Q8_0", [4, 64]])"));
  // Q4_K and Q6_K against llama.cpp's quantizer, the rest against gguf's.
  CHECK(result["checked"]["ggml"] == json::parse(R"(["q4_k_big", "q6_k_big"])"));
  CHECK(result["checked"]["gguf"].size() == 9);
  // And our reader reads our file back the same.
  auto back = io::GgufFile::Open(path);
  REQUIRE(back.ok());
  CHECK((*back)->tensors().size() == 11);
  std::vector<float> f32(x.size());
  REQUIRE(io::DequantizeTensor(**back, *(*back)->FindTensor("f32"), absl::MakeSpan(f32)).ok());
  CHECK(std::memcmp(f32.data(), x.data(), x.size() * 4) == 0);

  // A custom alignment is written as general.alignment and honoured by gguf-py.
  io::GgufWriter aligned(64);
  REQUIRE(aligned.AddTensor("a", io::GgmlType::kF32, {3}, absl::MakeConstSpan(x.data(), 3)).ok());
  REQUIRE(aligned.AddTensor("q8_0", io::GgmlType::kQ8_0, {4, 64}, x).ok());
  REQUIRE(aligned.Write(dir + "/aligned.gguf").ok());
  const json aligned_result =
      LastJsonLine(RunReference("gguf_ref.py", {"read", dir + "/aligned.gguf", dir + "/values.safetensors"}).out);
  INFO(aligned_result.dump());
  CHECK(aligned_result["metadata"]["general.alignment"] == json::parse(R"([["UINT32"], 64])"));
  CHECK(aligned_result["problems"].size() == 1);  // "a" has no values in values.safetensors
  auto aligned_back = io::GgufFile::Open(dir + "/aligned.gguf");
  REQUIRE(aligned_back.ok());
  CHECK((*aligned_back)->alignment() == 64);
  CHECK((*aligned_back)->data_start() % 64 == 0);
  CHECK((*aligned_back)->FindTensor("q8_0")->offset == 64);
}

TEST_CASE("gguf: the real Gemma 3 270M Q4_K_M file", "[io][gguf][reference]") {
  if (!testing::ReferenceStackAvailable()) return;
  auto file = io::GgufFile::Open(GgufModelPath());
  REQUIRE(file.ok());
  const io::GgufFile& gguf = **file;
  CHECK(*gguf.FindMetadata("general.architecture")->AsString() == "gemma3");
  CHECK(gguf.FindMetadata("tokenizer.ggml.tokens")->array_size() == 262144);
  std::map<std::string, int> type_counts;
  for (const auto& t : gguf.tensors()) ++type_counts[std::string(io::GgmlTypeName(t.type))];
  CHECK(type_counts["Q4_K"] > 0);
  CHECK(type_counts["Q6_K"] > 0);
  const io::GgufTensorInfo* embed = gguf.FindTensor("token_embd.weight");
  REQUIRE(embed != nullptr);
  CHECK(embed->shape == std::vector<int64_t>{262144, 640});  // row-major: [vocab, hidden]

  SECTION("dequantizing straight into bf16 equals dequantizing to f32 then casting") {
    for (const char* name : {"token_embd.weight", "blk.0.attn_q.weight", "blk.3.ffn_down.weight",
                             "output_norm.weight"}) {
      INFO("tensor " << name);
      const io::GgufTensorInfo* t = gguf.FindTensor(name);
      REQUIRE(t != nullptr);
      auto direct = io::LoadGgufTensor(gguf, *t, at::kBFloat16);
      auto via_f32 = io::LoadGgufTensor(gguf, *t);
      REQUIRE(direct.ok());
      REQUIRE(via_f32.ok());
      CHECK(direct->sizes().vec() == t->shape);
      CHECK(at::equal(*direct, via_f32->to(at::kBFloat16)));
    }
  }
  SECTION("rows dequantized alone equal the same rows of the whole tensor (f32 and bf16)") {
    for (const char* name : {"blk.0.attn_q.weight", "blk.3.ffn_down.weight", "output_norm.weight"}) {
      const io::GgufTensorInfo* t = gguf.FindTensor(name);
      REQUIRE(t != nullptr);
      auto whole = io::LoadGgufTensor(gguf, *t);
      REQUIRE(whole.ok());
      const at::Tensor rows_of = whole->reshape({-1, t->ne[0]});
      const int64_t rows = rows_of.size(0);
      for (const auto& [begin, end] : std::vector<std::pair<int64_t, int64_t>>{
               {0, rows}, {0, 1}, {rows / 3, std::min(rows, rows / 3 + 7)}, {rows - 1, rows}, {rows / 2, rows / 2}}) {
        for (const auto dtype : {at::kFloat, at::kBFloat16}) {
          INFO("tensor " << name << " rows [" << begin << ", " << end << ") of " << rows << " as " << dtype);
          auto part = io::LoadGgufRows(gguf, *t, begin, end, dtype);
          REQUIRE(part.ok());
          CHECK(part->sizes() == at::IntArrayRef({end - begin, t->ne[0]}));
          CHECK(at::equal(*part, rows_of.narrow(0, begin, end - begin).to(dtype)));
        }
      }
      auto outside = io::LoadGgufRows(gguf, *t, rows - 1, rows + 1, at::kFloat);
      REQUIRE(!outside.ok());
      CHECK_THAT(std::string(outside.status().message()), Catch::Contains("rows [" + std::to_string(rows - 1)));
    }
  }
  SECTION("config equals transformers' config from the same file") {
    auto config = io::HfConfigFromGguf(gguf);
    REQUIRE(config.ok());
    CHECK(config->text.num_hidden_layers == 18);
    CHECK(config->text.tie_word_embeddings);
    const json ours = json::parse(config->resolved_json);
    const json theirs = LastJsonLine(RunReference("hf_config_ref.py", {"gguf", GgufModelPath()}).out);
    REQUIRE(theirs.is_object());
    for (auto it = ours.begin(); it != ours.end(); ++it) {
      INFO("key " << it.key());
      REQUIRE(theirs.contains(it.key()));
      CHECK(*it == theirs[it.key()]);
    }
  }
  SECTION("the CUDA kernels equal the CPU path (needs a GPU)") {
    if (!at::hasCUDA()) {
      testing::Skip("no CUDA device: the CUDA dequantization was not run (it is compiled and linked)");
      return;
    }
    for (const auto& t : gguf.tensors()) {
      INFO("tensor " << t.name);
      auto cpu = io::LoadGgufTensor(gguf, t);
      auto gpu = io::LoadGgufTensorTo(gguf, t, c10::Device(c10::kCUDA, 0));
      REQUIRE(cpu.ok());
      REQUIRE(gpu.ok());
      CHECK(at::equal(cpu->view(at::kInt), gpu->cpu().view(at::kInt)));
    }
  }
}

// The CUDA kernels' per-value decoders (io/gguf_quants_device.cuh), built for the host here (plain
// float operations where the device uses the _rn intrinsics; this file is compiled with
// -ffp-contract=off), against the CPU oracle bit for bit: their block offsets, nibble and bit
// positions and the order of their roundings are what the GPU runs, checked without a GPU.
TEST_CASE("gguf: the CUDA kernels' value decoders, built for the host, equal io::Dequantize", "[io][gguf]") {
  const io::GgmlType types[] = {io::GgmlType::kF16,  io::GgmlType::kBF16, io::GgmlType::kQ8_0, io::GgmlType::kQ4_0,
                                io::GgmlType::kQ4_1, io::GgmlType::kQ5_0, io::GgmlType::kQ5_1, io::GgmlType::kQ4_K,
                                io::GgmlType::kQ5_K, io::GgmlType::kQ6_K};
  const int64_t rows = 24, cols = 512;
  for (const io::GgmlType type : types) {
    INFO(io::GgmlTypeName(type));
    const std::vector<uint8_t> raw = testing::RandomGgufBlocks(type, rows, cols, 17);
    std::vector<float> want(rows * cols), got(rows * cols, -1.0f);
    REQUIRE(io::Dequantize(type, raw, absl::MakeSpan(want)).ok());
    const bool visited = io::detail::VisitDeviceType(type, [&](auto t) {
      using Block = io::detail::DeviceBlock<decltype(t)::value>;
      const auto traits = io::GetGgmlTypeTraits(static_cast<uint32_t>(type));
      CHECK(Block::kElems == static_cast<int>(traits->block_elems));
      CHECK(Block::kBytes == static_cast<int>(traits->block_bytes));
      for (int64_t i = 0; i < rows * cols; ++i) {
        got[i] = Block::Value(raw.data() + (i / Block::kElems) * Block::kBytes, static_cast<int>(i % Block::kElems));
      }
    });
    REQUIRE(visited);
    int64_t differ = 0;
    for (int64_t i = 0; i < rows * cols; ++i) differ += std::memcmp(&want[i], &got[i], 4) != 0 ? 1 : 0;
    CHECK(differ == 0);
  }
  // The types without device decoders are named as such (the loader and GgufLinear refuse or
  // fall back for them).
  for (const io::GgmlType type : {io::GgmlType::kF32, io::GgmlType::kQ8_1, io::GgmlType::kQ2_K, io::GgmlType::kF64}) {
    CHECK_FALSE(io::detail::VisitDeviceType(type, [](auto) {}));
  }
}

// Every block type the CPU path decodes, on the GPU: random blocks (finite half-precision scales,
// random quants) written with GgufWriter, loaded onto CUDA and compared bit for bit with the CPU
// dequantization. All but F32 run our kernels (io/gguf_quants_device.cuh); F32 is read on the CPU
// and copied (LoadGgufTensorTo). 1,536 rows of 512 values: thousands of thread blocks.
TEST_CASE("gguf: every block type loads onto CUDA bit-identically to the CPU path", "[io][gguf][cuda]") {
  if (!at::hasCUDA()) {
    testing::Skip("no CUDA device: the CUDA GGUF dequantization was not run (it is compiled and linked)");
    return;
  }
  struct Kind {
    io::GgmlType type;
    std::vector<int> half_offsets;  // byte offsets of the block's float16 fields
  };
  const std::vector<Kind> kinds = {
      {io::GgmlType::kF32, {}},         {io::GgmlType::kF16, {}},       {io::GgmlType::kBF16, {}},
      {io::GgmlType::kQ8_0, {0}},       {io::GgmlType::kQ4_0, {0}},     {io::GgmlType::kQ4_1, {0, 2}},
      {io::GgmlType::kQ5_0, {0}},       {io::GgmlType::kQ5_1, {0, 2}},  {io::GgmlType::kQ4_K, {0, 2}},
      {io::GgmlType::kQ5_K, {0, 2}},    {io::GgmlType::kQ6_K, {208}}};
  const std::vector<int64_t> shape = {1536, 512};
  std::mt19937 rng(23);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  io::GgufWriter w;
  w.AddString("general.architecture", "llmtrain_test");
  for (const Kind& kind : kinds) {
    const auto traits = io::GetGgmlTypeTraits(static_cast<uint32_t>(kind.type));
    REQUIRE(traits.has_value());
    const std::string name(traits->name);
    if (kind.type == io::GgmlType::kF32 || kind.type == io::GgmlType::kF16 || kind.type == io::GgmlType::kBF16) {
      std::vector<float> values(shape[0] * shape[1]);
      for (float& v : values) v = normal(rng);
      REQUIRE(w.AddTensor(name, kind.type, shape, values).ok());
      continue;
    }
    std::vector<uint8_t> bytes(io::GgufWriter::TensorBytes(kind.type, shape));
    REQUIRE(bytes.size() % traits->block_bytes == 0);
    for (uint8_t& b : bytes) b = static_cast<uint8_t>(rng());
    for (size_t block = 0; block < bytes.size(); block += traits->block_bytes) {
      for (const int offset : kind.half_offsets) {
        const uint16_t bits = c10::Half(0.02f * normal(rng)).x;
        bytes[block + offset] = static_cast<uint8_t>(bits & 0xff);
        bytes[block + offset + 1] = static_cast<uint8_t>(bits >> 8);
      }
    }
    REQUIRE(w.AddRawTensor(name, kind.type, shape, std::move(bytes)).ok());
  }
  const std::string path = testing::TempDir("gguf_cuda") + "/types.gguf";
  REQUIRE(w.Write(path).ok());
  auto file = io::GgufFile::Open(path);
  REQUIRE(file.ok());
  REQUIRE((*file)->tensors().size() == kinds.size());
  for (const io::GgufTensorInfo& t : (*file)->tensors()) {
    INFO("type " << io::GgmlTypeName(t.type));
    auto cpu = io::LoadGgufTensor(**file, t);
    auto gpu = io::LoadGgufTensorTo(**file, t, c10::Device(c10::kCUDA, 0));
    REQUIRE(cpu.ok());
    REQUIRE(gpu.ok());
    CHECK(gpu->is_cuda());
    CHECK(cpu->isfinite().all().item<bool>());
    CHECK(at::equal(cpu->view(at::kInt), gpu->cpu().view(at::kInt)));
  }
}

}  // namespace
}  // namespace llmtrain
