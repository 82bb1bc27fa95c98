// io/safetensors against the Python `safetensors` package and transformers, at test time.
#include <ATen/ATen.h>

#include <catch2/catch.hpp>

#include "absl/strings/str_cat.h"
#include "llmtrain/core/atomic_file.h"
#include "llmtrain/io/safetensors.h"
#include "llmtrain/io/tensors.h"
#include "testing/json_util.h"
#include "testing/reference.h"

namespace llmtrain {
namespace {

using testing::LastJsonLine;
using testing::RunReference;

TEST_CASE("safetensors: files written by Python load with identical bytes", "[io][safetensors][reference]") {
  if (!testing::ReferenceStackAvailable()) return;
  const std::string dir = testing::TempDir("st_read");
  const std::string ref_path = dir + "/ref.safetensors";
  const auto ref = RunReference("safetensors_ref.py", {"write", ref_path, "7"});
  REQUIRE(ref.exit_code == 0);
  const nlohmann::json manifest = LastJsonLine(ref.out);
  REQUIRE(manifest.is_object());

  auto file = io::SafetensorsFile::Open(ref_path);
  REQUIRE(file.ok());
  CHECK((*file)->metadata().at("note") == "llmtrain ✓");
  CHECK((*file)->metadata().at("format") == "pt");
  REQUIRE((*file)->tensors().size() == manifest.size());
  int scalars = 0, empties = 0;
  for (const io::TensorInfo& t : (*file)->tensors()) {
    INFO("tensor " << t.name);
    REQUIRE(manifest.contains(t.name));
    const auto& m = manifest[t.name];
    CHECK(SafetensorsName(t.dtype) == m["dtype"].get<std::string>());
    CHECK(t.shape == m["shape"].get<std::vector<int64_t>>());
    CHECK(std::to_string(testing::Fnv1a64((*file)->Data(t))) == m["fnv"].get<std::string>());
    scalars += t.shape.empty();
    empties += t.n_elems() == 0;
    // The LibTorch view has the same dtype, shape and bytes.
    const at::Tensor view = io::TensorView(**file, t);
    CHECK(view.sizes().vec() == t.shape);
    CHECK(view.scalar_type() == io::ToScalarType(t.dtype));
    if (view.numel() > 0) {
      CHECK(std::memcmp(view.data_ptr(), (*file)->Data(t).data(), t.n_bytes()) == 0);
    }
  }
  CHECK(scalars == 15);  // one 0-d tensor of every dtype
  CHECK(empties == 15);  // one empty tensor of every dtype
}

TEST_CASE("safetensors: files we write load in Python with identical values", "[io][safetensors][reference]") {
  if (!testing::ReferenceStackAvailable()) return;
  const std::string dir = testing::TempDir("st_write");
  const std::string ref_path = dir + "/ref.safetensors";
  REQUIRE(RunReference("safetensors_ref.py", {"write", ref_path, "11"}).exit_code == 0);
  auto file = io::SafetensorsFile::Open(ref_path);
  REQUIRE(file.ok());

  SECTION("raw writer") {
    std::vector<io::TensorToWrite> tensors;
    for (const io::TensorInfo& t : (*file)->tensors()) {
      tensors.push_back({t.name, t.dtype, t.shape, (*file)->Data(t)});
    }
    const std::string ours = dir + "/ours_raw.safetensors";
    REQUIRE(io::WriteSafetensors(ours, tensors, (*file)->metadata()).ok());
    const nlohmann::json result = LastJsonLine(RunReference("safetensors_ref.py", {"verify", ours, ref_path}).out);
    INFO(result.dump());
    CHECK(result["equal"] == true);
    // Same layout rules as the reference writer: every tensor at the same data offsets. (The
    // header bytes can differ only in the order of __metadata__ keys, which the reference keeps
    // in a hash map.)
    auto back = io::SafetensorsFile::Open(ours);
    REQUIRE(back.ok());
    for (const io::TensorInfo& t : (*file)->tensors()) {
      INFO("tensor " << t.name);
      CHECK((*back)->Find(t.name)->begin == t.begin);
    }
  }
  SECTION("LibTorch tensors, strided views included") {
    std::vector<std::pair<std::string, at::Tensor>> tensors;
    for (const io::TensorInfo& t : (*file)->tensors()) {
      at::Tensor v = io::TensorView(**file, t);
      // A transposed copy transposed back: non-contiguous, same values.
      if (v.dim() == 2) v = v.t().contiguous().t();
      tensors.emplace_back(t.name, v);
    }
    const std::string ours = dir + "/ours_torch.safetensors";
    REQUIRE(io::SaveSafetensors(ours, tensors, (*file)->metadata()).ok());
    const nlohmann::json result = LastJsonLine(RunReference("safetensors_ref.py", {"verify", ours, ref_path}).out);
    INFO(result.dump());
    CHECK(result["equal"] == true);
  }
}

TEST_CASE("safetensors: sharded checkpoints round-trip with transformers", "[io][safetensors][reference]") {
  if (!testing::ReferenceStackAvailable()) return;
  const std::string dir = testing::TempDir("st_sharded");
  const std::string ref_dir = dir + "/ref";
  const nlohmann::json info = LastJsonLine(RunReference("safetensors_ref.py", {"sharded", ref_dir, "5"}).out);
  REQUIRE(info.is_object());
  REQUIRE(info["n_shards"].get<int>() >= 2);

  for (const std::string& path : {ref_dir, ref_dir + "/model.safetensors.index.json"}) {
    auto checkpoint = io::Checkpoint::Open(path);
    REQUIRE(checkpoint.ok());
    CHECK(static_cast<int>((*checkpoint)->shards().size()) == info["n_shards"].get<int>());
    CHECK(static_cast<int>((*checkpoint)->Names().size()) == info["n_tensors"].get<int>());
    CHECK((*checkpoint)->index_metadata().count("total_size") == 1);
  }
  auto checkpoint = io::Checkpoint::Open(ref_dir);
  REQUIRE(checkpoint.ok());
  CHECK(io::LoadTensor(**checkpoint, "no.such.tensor").status().code() == absl::StatusCode::kNotFound);

  // Write the same tensors back as shards of ours, and let transformers load both folders.
  std::vector<io::TensorToWrite> tensors;
  for (const std::string& name : (*checkpoint)->Names()) {
    auto found = (*checkpoint)->Find(name);
    REQUIRE(found.ok());
    tensors.push_back({name, found->second->dtype, found->second->shape, found->first->Data(*found->second)});
  }
  const std::string ours_dir = dir + "/ours";
  testing::RunCommand("mkdir -p " + testing::ShellQuote(ours_dir) + " && cp " +
                      testing::ShellQuote(ref_dir + "/config.json") + " " + testing::ShellQuote(ours_dir));
  REQUIRE(io::WriteShardedSafetensors(ours_dir, tensors, 16 * 1024, {{"format", "pt"}}).ok());
  auto ours = io::Checkpoint::Open(ours_dir);
  REQUIRE(ours.ok());
  CHECK((*ours)->shards().size() >= 2);
  const nlohmann::json result =
      LastJsonLine(RunReference("safetensors_ref.py", {"compare_models", ours_dir, ref_dir}).out);
  INFO(result.dump());
  CHECK(result["equal"] == true);
}

}  // namespace
}  // namespace llmtrain
