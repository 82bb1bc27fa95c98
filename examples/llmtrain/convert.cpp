// llmtrain convert IN OUT.safetensors [--dtype f32|bf16|f16]
// Dequantizes (GGUF) or casts (safetensors) every tensor of IN and writes one safetensors file
// with the same tensor names and row-major shapes. Tensors are produced and written one at a
// time, so peak memory is about one tensor, not the model.
#include <ATen/ATen.h>

#include <cstdio>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "llmtrain/commands.h"
#include "llmtrain/core/atomic_file.h"
#include "llmtrain/core/dtype.h"
#include "llmtrain/core/progress.h"
#include "llmtrain/core/status.h"
#include "llmtrain/io/gguf.h"
#include "llmtrain/io/safetensors.h"
#include "llmtrain/io/tensors.h"

namespace llmtrain::cli {
namespace {

constexpr char kHelp[] =
    "usage: llmtrain convert IN OUT.safetensors [--dtype f32|bf16|f16]\n"
    "  IN: a .gguf file, a .safetensors file, a sharded index or a model folder.\n"
    "  GGUF tensors are dequantized to float32 (bit-identical to gguf.quants.dequantize);\n"
    "  --dtype then casts every floating-point tensor. Integer tensors keep their type.\n";

// A source tensor: its name, row-major shape, and how to materialize it.
struct Source {
  std::string name;
  std::vector<int64_t> shape;
  c10::ScalarType stored_type;
  std::function<absl::StatusOr<at::Tensor>()> load;
};

absl::Status Convert(const std::string& in, const std::string& out, std::optional<Dtype> dtype) {
  std::vector<Source> sources;
  std::unique_ptr<io::GgufFile> gguf;
  std::unique_ptr<io::Checkpoint> checkpoint;
  const bool is_gguf = absl::EndsWith(in, ".gguf");
  if (is_gguf) {
    LLMTRAIN_ASSIGN_OR_RETURN(gguf, io::GgufFile::Open(in));
    for (const io::GgufTensorInfo& t : gguf->tensors()) {
      if (!io::CanDequantize(t.type)) {
        return absl::UnimplementedError(absl::StrCat(in, ": tensor \"", t.name, "\" has type ",
                                                     io::GgmlTypeName(t.type),
                                                     ", which llmtrain cannot dequantize"));
      }
      c10::ScalarType stored = at::kFloat;
      if (t.type == io::GgmlType::kI8) stored = at::kChar;
      if (t.type == io::GgmlType::kI16) stored = at::kShort;
      if (t.type == io::GgmlType::kI32) stored = at::kInt;
      if (t.type == io::GgmlType::kI64) stored = at::kLong;
      sources.push_back({t.name, t.shape, stored,
                         [&gguf, &t]() { return io::LoadGgufTensor(*gguf, t); }});
    }
  } else {
    LLMTRAIN_ASSIGN_OR_RETURN(checkpoint, io::Checkpoint::Open(in));
    for (const std::string& name : checkpoint->Names()) {
      LLMTRAIN_ASSIGN_OR_RETURN(auto found, checkpoint->Find(name));
      sources.push_back({name, found.second->shape, io::ToScalarType(found.second->dtype),
                         [&checkpoint, name]() { return io::LoadTensor(*checkpoint, name); }});
    }
  }
  // The output dtype of each tensor, known before any tensor is loaded, so the header can be
  // written first and the tensors streamed after it.
  std::vector<io::TensorToWrite> plan;
  for (const Source& s : sources) {
    c10::ScalarType target = s.stored_type;
    if (dtype && at::isFloatingType(s.stored_type)) target = io::ToScalarType(*dtype);
    LLMTRAIN_ASSIGN_OR_RETURN(Dtype out_dtype, io::FromScalarType(target));
    int64_t n = 1;
    for (int64_t d : s.shape) n *= d;
    // Only the sizes of these spans are read while building the header.
    plan.push_back({s.name, out_dtype, s.shape,
                    absl::Span<const uint8_t>(nullptr, n * ElementBits(out_dtype) / 8)});
  }
  std::vector<size_t> order;
  LLMTRAIN_ASSIGN_OR_RETURN(std::string header, io::BuildSafetensorsHeader(plan, {{"format", "pt"}}, &order));
  AtomicFile file;
  LLMTRAIN_RETURN_IF_ERROR(file.Open(out));
  LLMTRAIN_RETURN_IF_ERROR(file.Write(header));
  ProgressReporter progress({.label = "convert", .total = static_cast<int64_t>(order.size()),
                             .unit = "tensors"});
  for (size_t i : order) {
    LLMTRAIN_ASSIGN_OR_RETURN(at::Tensor t, sources[i].load());
    t = t.to(io::ToScalarType(plan[i].dtype)).contiguous();
    if (static_cast<size_t>(t.nbytes()) != plan[i].data.size()) {
      return absl::InternalError(absl::StrCat("tensor \"", sources[i].name, "\": size changed"));
    }
    LLMTRAIN_RETURN_IF_ERROR(file.Write(absl::Span<const uint8_t>(
        static_cast<const uint8_t*>(t.data_ptr()), t.nbytes())));
    progress.Advance(1);
  }
  progress.Finish();
  LLMTRAIN_RETURN_IF_ERROR(file.Commit());
  std::fprintf(stderr, "wrote %zu tensors (%llu bytes) to %s\n", order.size(),
               static_cast<unsigned long long>(file.bytes_written()), out.c_str());
  return absl::OkStatus();
}

}  // namespace

int RunConvert(const std::vector<std::string>& args) {
  std::vector<std::string> positional;
  std::optional<Dtype> dtype;
  for (size_t i = 0; i < args.size(); ++i) {
    if (args[i] == "--help" || args[i] == "-h") {
      std::fputs(kHelp, stdout);
      return 0;
    }
    if (args[i] == "--dtype") {
      if (i + 1 >= args.size()) return Fail("convert", "--dtype needs a value (f32, bf16, f16)", 2);
      auto parsed = DtypeFromUserName(args[++i]);
      if (!parsed.ok()) return Fail("convert", std::string(parsed.status().message()), 2);
      dtype = *parsed;
    } else if (absl::StartsWith(args[i], "--")) {
      return Fail("convert", absl::StrCat("unknown option ", args[i], "\n", kHelp), 2);
    } else {
      positional.push_back(args[i]);
    }
  }
  if (positional.size() != 2) return Fail("convert", absl::StrCat("expected IN and OUT\n", kHelp), 2);
  try {
    const absl::Status status = Convert(positional[0], positional[1], dtype);
    if (!status.ok()) return Fail("convert", std::string(status.message()));
  } catch (...) {
    return Fail("convert", std::string(StatusFromCurrentException("convert").message()));
  }
  return 0;
}

}  // namespace llmtrain::cli
