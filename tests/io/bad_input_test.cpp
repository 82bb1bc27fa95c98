// The bad-input table: corrupted safetensors, sharded indexes, GGUF files and config.json. Each
// must give a clear Status (the file, the rule) and never a crash; scripts/test also runs this
// binary under ASan+UBSan. No LibTorch and no Python: it builds in seconds.
#include <catch2/catch.hpp>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "llmtrain/core/atomic_file.h"
#include "llmtrain/io/gguf.h"
#include "llmtrain/io/hf_config.h"
#include "llmtrain/io/safetensors.h"
#include "testing/reference.h"

namespace llmtrain {
namespace {

using Bytes = std::string;

// --- builders of valid files, then mutated per row -----------------------------------------

Bytes Safetensors(const std::string& header_json, const Bytes& data, int64_t declared = -1) {
  Bytes out(8, '\0');
  const uint64_t n = declared >= 0 ? static_cast<uint64_t>(declared) : header_json.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return out + header_json + data;
}

// Two F32 tensors a [2] and b [1, 2]: 8 + 8 bytes of data.
const char* kTwoTensors =
    R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1,2],"data_offsets":[8,16]}})";
const Bytes kSixteenBytes(16, '\x01');

struct Gguf {
  Bytes bytes;
  template <typename T>
  Gguf& Put(T v) {
    bytes.append(reinterpret_cast<const char*>(&v), sizeof(T));
    return *this;
  }
  Gguf& Str(const std::string& s) {
    Put<uint64_t>(s.size());
    bytes += s;
    return *this;
  }
  Gguf& Header(uint32_t version, int64_t n_tensors, int64_t n_kv) {
    bytes += "GGUF";
    return Put(version).Put(n_tensors).Put(n_kv);
  }
  Gguf& KvU32(const std::string& key, uint32_t v) { return Str(key).Put<uint32_t>(4).Put(v); }
  Gguf& Tensor(const std::string& name, std::vector<uint64_t> ne, uint32_t type, uint64_t offset) {
    Str(name).Put<uint32_t>(static_cast<uint32_t>(ne.size()));
    for (uint64_t d : ne) Put(d);
    return Put(type).Put(offset);
  }
  Gguf& PadTo(size_t alignment) {
    bytes.append((alignment - bytes.size() % alignment) % alignment, '\0');
    return *this;
  }
  Gguf& Data(size_t n) {
    bytes.append(n, '\0');
    return *this;
  }
};

// A valid file: one kv, two F32 tensors of 8 elements (32 bytes each).
Bytes ValidGguf() {
  Gguf g;
  g.Header(3, 2, 1).KvU32("test.n", 1).Tensor("a", {8}, 0, 0).Tensor("b", {8}, 0, 32).PadTo(32).Data(64);
  return g.bytes;
}

enum class Parser { kSafetensors, kGguf, kIndexFolder, kConfig };

struct BadFile {
  const char* what;
  Parser parser;
  std::function<Bytes()> make;
  absl::StatusCode code;
  const char* message;  // a substring the error must contain
};

const std::vector<BadFile>& Table() {
  static const std::vector<BadFile> table = {
      // safetensors
      {"empty file", Parser::kSafetensors, [] { return Bytes(); }, absl::StatusCode::kDataLoss, "header too small"},
      {"truncated header length", Parser::kSafetensors, [] { return Bytes(7, '\0'); }, absl::StatusCode::kDataLoss, "header too small"},
      {"header length over 100 MB", Parser::kSafetensors, [] { return Safetensors("{}", "", 200'000'000); }, absl::StatusCode::kDataLoss, "header too large"},
      {"header length beyond the file", Parser::kSafetensors, [] { return Safetensors("{}", "", 4096); }, absl::StatusCode::kDataLoss, "runs past"},
      {"header not a JSON object", Parser::kSafetensors, [] { return Safetensors("[1, 2]", ""); }, absl::StatusCode::kDataLoss, "must start with '{'"},
      {"bad JSON", Parser::kSafetensors, [] { return Safetensors(R"({"a": {"dtype": "F32", )", ""); }, absl::StatusCode::kDataLoss, "invalid JSON"},
      {"header not UTF-8", Parser::kSafetensors, [] { return Safetensors("{\"\xff\xfe\": 1}", ""); }, absl::StatusCode::kDataLoss, "not valid UTF-8"},
      {"duplicate tensor name", Parser::kSafetensors, [] { return Safetensors(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"a":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})", kSixteenBytes); }, absl::StatusCode::kDataLoss, "duplicate key \"a\""},
      {"unknown dtype", Parser::kSafetensors, [] { return Safetensors(R"({"a":{"dtype":"F4","shape":[2],"data_offsets":[0,1]}})", Bytes(1, 0)); }, absl::StatusCode::kDataLoss, "unknown dtype \"F4\""},
      {"dtype/shape mismatch", Parser::kSafetensors, [] { return Safetensors(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", Bytes(8, 0)); }, absl::StatusCode::kDataLoss, "needs 12"},
      {"overlapping offsets", Parser::kSafetensors, [] { return Safetensors(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", Bytes(12, 0)); }, absl::StatusCode::kDataLoss, "overlap"},
      {"gap between tensors", Parser::kSafetensors, [] { return Safetensors(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[12,20]}})", Bytes(20, 0)); }, absl::StatusCode::kDataLoss, "gap"},
      {"data beyond the end of the file", Parser::kSafetensors, [] { return Safetensors(kTwoTensors, Bytes(12, 0)); }, absl::StatusCode::kDataLoss, "file truncated"},
      {"trailing bytes", Parser::kSafetensors, [] { return Safetensors(kTwoTensors, Bytes(20, 0)); }, absl::StatusCode::kDataLoss, "after the last tensor"},
      {"negative dimension", Parser::kSafetensors, [] { return Safetensors(R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", Bytes(8, 0)); }, absl::StatusCode::kDataLoss, "non-negative integer"},
      {"float dimension", Parser::kSafetensors, [] { return Safetensors(R"({"a":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}})", Bytes(8, 0)); }, absl::StatusCode::kDataLoss, "non-negative integer"},
      {"element count overflow", Parser::kSafetensors, [] { return Safetensors(R"({"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}})", Bytes(8, 0)); }, absl::StatusCode::kDataLoss, "overflows"},
      {"non-string __metadata__ value", Parser::kSafetensors, [] { return Safetensors(R"({"__metadata__":{"format":1}})", ""); }, absl::StatusCode::kDataLoss, "__metadata__ \"format\""},
      {"data_offsets with three numbers", Parser::kSafetensors, [] { return Safetensors(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8,9]}})", Bytes(8, 0)); }, absl::StatusCode::kDataLoss, "data_offsets"},
      {"missing dtype", Parser::kSafetensors, [] { return Safetensors(R"({"a":{"shape":[2],"data_offsets":[0,8]}})", Bytes(8, 0)); }, absl::StatusCode::kDataLoss, "missing \"dtype\""},
      {"nesting a million deep", Parser::kSafetensors, [] { return Safetensors("{\"a\":" + std::string(1'000'000, '[') + std::string(1'000'000, ']') + "}", ""); }, absl::StatusCode::kDataLoss, "nesting deeper"},
      // sharded index (written as a folder with shards)
      {"index: shard path outside the folder", Parser::kIndexFolder, [] { return Bytes(R"({"weight_map": {"a": "../model.safetensors"}})"); }, absl::StatusCode::kDataLoss, "same folder"},
      {"index: tensor not in its shard", Parser::kIndexFolder, [] { return Bytes(R"({"weight_map": {"a": "shard.safetensors", "b": "shard.safetensors", "c": "shard.safetensors"}})"); }, absl::StatusCode::kDataLoss, "does not hold it"},
      {"index: shard tensor missing from weight_map", Parser::kIndexFolder, [] { return Bytes(R"({"weight_map": {"a": "shard.safetensors"}})"); }, absl::StatusCode::kDataLoss, "does not list"},
      {"index: bad JSON", Parser::kIndexFolder, [] { return Bytes(R"({"weight_map": )"); }, absl::StatusCode::kDataLoss, "invalid JSON"},
      {"index: no weight_map", Parser::kIndexFolder, [] { return Bytes(R"({"metadata": {}})"); }, absl::StatusCode::kDataLoss, "weight_map"},
      // GGUF
      {"gguf: wrong magic", Parser::kGguf, [] { Bytes b = ValidGguf(); b[0] = 'X'; return b; }, absl::StatusCode::kDataLoss, "not a GGUF file"},
      {"gguf: version 1", Parser::kGguf, [] { Gguf g; g.Header(1, 0, 0); return g.bytes; }, absl::StatusCode::kUnimplemented, "version 1"},
      {"gguf: big-endian version", Parser::kGguf, [] { Gguf g; g.Header(0x03000000, 0, 0); return g.bytes; }, absl::StatusCode::kDataLoss, "byte-swapped"},
      {"gguf: truncated header", Parser::kGguf, [] { return ValidGguf().substr(0, 10); }, absl::StatusCode::kDataLoss, "file truncated"},
      {"gguf: huge tensor count", Parser::kGguf, [] { Gguf g; g.Header(3, int64_t{1} << 60, 0); return g.bytes; }, absl::StatusCode::kDataLoss, "tensor count"},
      {"gguf: negative metadata count", Parser::kGguf, [] { Gguf g; g.Header(3, 0, -1); return g.bytes; }, absl::StatusCode::kDataLoss, "metadata count"},
      {"gguf: string longer than the file", Parser::kGguf, [] { Gguf g; g.Header(3, 0, 1).Str("k").Put<uint32_t>(8).Put<uint64_t>(1'000'000).Data(16); return g.bytes; }, absl::StatusCode::kDataLoss, "needs 1000000 bytes"},
      {"gguf: unknown value type", Parser::kGguf, [] { Gguf g; g.Header(3, 0, 1).Str("k").Put<uint32_t>(99).Data(16); return g.bytes; }, absl::StatusCode::kDataLoss, "unknown value type 99"},
      {"gguf: array of arrays", Parser::kGguf, [] { Gguf g; g.Header(3, 0, 1).Str("k").Put<uint32_t>(9).Put<uint32_t>(9).Put<uint64_t>(1).Data(16); return g.bytes; }, absl::StatusCode::kDataLoss, "arrays of arrays"},
      {"gguf: array count beyond the file", Parser::kGguf, [] { Gguf g; g.Header(3, 0, 1).Str("k").Put<uint32_t>(9).Put<uint32_t>(4).Put<uint64_t>(uint64_t{1} << 62).Data(16); return g.bytes; }, absl::StatusCode::kDataLoss, "array of"},
      {"gguf: bool that is 2", Parser::kGguf, [] { Gguf g; g.Header(3, 0, 1).Str("k").Put<uint32_t>(7).Put<uint8_t>(2).Data(16); return g.bytes; }, absl::StatusCode::kDataLoss, "BOOL must be 0 or 1"},
      {"gguf: duplicate key", Parser::kGguf, [] { Gguf g; g.Header(3, 0, 2).KvU32("k", 1).KvU32("k", 2); return g.bytes; }, absl::StatusCode::kDataLoss, "duplicate metadata key \"k\""},
      {"gguf: unknown ggml type", Parser::kGguf, [] { Gguf g; g.Header(3, 1, 0).Tensor("a", {8}, 5, 0).PadTo(32).Data(32); return g.bytes; }, absl::StatusCode::kUnimplemented, "unknown ggml type id 5"},
      {"gguf: row not a multiple of the block", Parser::kGguf, [] { Gguf g; g.Header(3, 1, 0).Tensor("a", {100}, 12, 0).PadTo(32).Data(256); return g.bytes; }, absl::StatusCode::kDataLoss, "not a multiple of the Q4_K block size"},
      {"gguf: misaligned offset", Parser::kGguf, [] { Gguf g; g.Header(3, 2, 0).Tensor("a", {8}, 0, 0).Tensor("b", {8}, 0, 36).PadTo(32).Data(96); return g.bytes; }, absl::StatusCode::kDataLoss, "not a multiple of the alignment"},
      {"gguf: overlapping tensors", Parser::kGguf, [] { Gguf g; g.Header(3, 2, 0).Tensor("a", {16}, 0, 0).Tensor("b", {8}, 0, 32).PadTo(32).Data(96); return g.bytes; }, absl::StatusCode::kDataLoss, "overlaps"},
      {"gguf: tensor data past the end", Parser::kGguf, [] { Bytes b = ValidGguf(); b.resize(b.size() - 8); return b; }, absl::StatusCode::kDataLoss, "runs past the end"},
      {"gguf: five dimensions", Parser::kGguf, [] { Gguf g; g.Header(3, 1, 0).Tensor("a", {1, 1, 1, 1, 1}, 0, 0).PadTo(32).Data(32); return g.bytes; }, absl::StatusCode::kDataLoss, "5 dimensions"},
      {"gguf: alignment not a power of two", Parser::kGguf, [] { Gguf g; g.Header(3, 0, 1).KvU32("general.alignment", 24); return g.bytes; }, absl::StatusCode::kDataLoss, "power of two"},
      {"gguf: alignment of the wrong type", Parser::kGguf, [] { Gguf g; g.Header(3, 0, 1).Str("general.alignment").Put<uint32_t>(8).Str("32"); return g.bytes; }, absl::StatusCode::kDataLoss, "general.alignment must be a UINT32"},
      {"gguf: tensor name over 63 bytes", Parser::kGguf, [] { Gguf g; g.Header(3, 1, 0).Tensor(std::string(64, 'n'), {8}, 0, 0).PadTo(32).Data(32); return g.bytes; }, absl::StatusCode::kDataLoss, "name is 64 bytes"},
      {"gguf: duplicate tensor name", Parser::kGguf, [] { Gguf g; g.Header(3, 2, 0).Tensor("a", {8}, 0, 0).Tensor("a", {8}, 0, 32).PadTo(32).Data(64); return g.bytes; }, absl::StatusCode::kDataLoss, "duplicate tensor name"},
      {"gguf: element count overflow", Parser::kGguf, [] { Gguf g; g.Header(3, 1, 0).Tensor("a", {uint64_t{1} << 40, uint64_t{1} << 40}, 0, 0).PadTo(32).Data(32); return g.bytes; }, absl::StatusCode::kDataLoss, "overflows"},
      // config.json
      {"config: bad JSON", Parser::kConfig, [] { return Bytes(R"({"model_type": "qwen2",)"); }, absl::StatusCode::kDataLoss, "invalid JSON"},
      {"config: unsupported model_type", Parser::kConfig, [] { return Bytes(R"({"model_type": "llama"})"); }, absl::StatusCode::kUnimplemented, "\"llama\" is not supported"},
      {"config: a billion layers", Parser::kConfig, [] { return Bytes(R"({"model_type": "qwen3", "num_hidden_layers": 1000000000})"); }, absl::StatusCode::kInvalidArgument, "num_hidden_layers: 1000000000 is over the limit"},
      {"config: wrong type", Parser::kConfig, [] { return Bytes(R"({"model_type": "gemma2", "rms_norm_eps": "tiny"})"); }, absl::StatusCode::kInvalidArgument, "rms_norm_eps: expected a number, found the string \"tiny\""},
  };
  return table;
}

absl::Status ParseBad(const BadFile& row, const std::string& dir) {
  const Bytes bytes = row.make();
  switch (row.parser) {
    case Parser::kSafetensors: {
      const std::string path = dir + "/bad.safetensors";
      REQUIRE(WriteFileAtomically(path, bytes).ok());
      return io::SafetensorsFile::Open(path).status();
    }
    case Parser::kGguf: {
      const std::string path = dir + "/bad.gguf";
      REQUIRE(WriteFileAtomically(path, bytes).ok());
      return io::GgufFile::Open(path).status();
    }
    case Parser::kIndexFolder: {
      // One valid shard holding tensors a and b, and the index under test.
      REQUIRE(WriteFileAtomically(dir + "/shard.safetensors", Safetensors(kTwoTensors, kSixteenBytes)).ok());
      REQUIRE(WriteFileAtomically(dir + "/model.safetensors.index.json", bytes).ok());
      return io::Checkpoint::Open(dir).status();
    }
    case Parser::kConfig: {
      REQUIRE(WriteFileAtomically(dir + "/config.json", bytes).ok());
      return io::LoadHfConfig(dir).status();
    }
  }
  return absl::OkStatus();
}

TEST_CASE("bad input: every corrupted file gets a clear error and no crash", "[io][bad_input]") {
  CHECK(Table().size() >= 25);
  const std::string dir = testing::TempDir("bad_input");
  for (const BadFile& row : Table()) {
    INFO("case: " << row.what);
    const absl::Status status = ParseBad(row, dir);
    INFO("status: " << status.ToString());
    REQUIRE(!status.ok());
    CHECK(status.code() == row.code);
    CHECK(status.message().find(row.message) != absl::string_view::npos);
    CHECK(status.message().find(dir) != absl::string_view::npos);  // names the file
  }
}

TEST_CASE("bad input: the valid bases of the table parse", "[io][bad_input]") {
  const std::string dir = testing::TempDir("bad_input_valid");
  REQUIRE(WriteFileAtomically(dir + "/ok.safetensors", Safetensors(kTwoTensors, kSixteenBytes)).ok());
  auto st = io::SafetensorsFile::Open(dir + "/ok.safetensors");
  REQUIRE(st.ok());
  CHECK((*st)->tensors().size() == 2);
  REQUIRE(WriteFileAtomically(dir + "/ok.gguf", ValidGguf()).ok());
  auto gguf = io::GgufFile::Open(dir + "/ok.gguf");
  REQUIRE(gguf.ok());
  CHECK((*gguf)->tensors().size() == 2);
  CHECK((*gguf)->FindTensor("b")->offset == 32);
  // Every prefix of a valid file is refused cleanly (truncation at every byte).
  const Bytes valid = ValidGguf();
  for (size_t n = 0; n < valid.size(); ++n) {
    INFO("prefix of " << n << " bytes");
    auto parsed = io::GgufFile::Parse(io::MappedFile::FromBytes(
        "prefix.gguf", absl::Span<const uint8_t>(reinterpret_cast<const uint8_t*>(valid.data()), n)));
    CHECK(!parsed.ok());
  }
  const Bytes st_valid = Safetensors(kTwoTensors, kSixteenBytes);
  for (size_t n = 0; n < st_valid.size(); ++n) {
    INFO("prefix of " << n << " bytes");
    auto parsed = io::SafetensorsFile::Parse(io::MappedFile::FromBytes(
        "prefix.safetensors", absl::Span<const uint8_t>(reinterpret_cast<const uint8_t*>(st_valid.data()), n)));
    CHECK(!parsed.ok());
  }
}

}  // namespace
}  // namespace llmtrain
