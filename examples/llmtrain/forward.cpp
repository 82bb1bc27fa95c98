// llmtrain forward --model PATH --input IN.safetensors --output OUT.safetensors [--dtype f32]
// Runs the decoder on input_ids (and attention_mask, if IN has one) and writes the logits.
#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <cstdio>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "llmtrain/commands.h"
#include "llmtrain/core/status.h"
#include "llmtrain/io/safetensors.h"
#include "llmtrain/io/tensors.h"
#include "llmtrain/model/decoder.h"

namespace llmtrain::cli {
namespace {

constexpr char kHelp[] =
    "usage: llmtrain forward --model PATH --input IN.safetensors --output OUT.safetensors\n"
    "                        [--dtype f32|bf16|f16] [--load-in-4bit] [--adapter DIR]\n"
    "  PATH: a model folder (config.json + safetensors) or a .gguf file.\n"
    "  IN holds input_ids (I64 [B,T]) and optionally attention_mask (I64 [B,T]); for an image+text\n"
    "  model also pixel_values (F32 [N,3,S,S], `llmtrain preprocess-images`) and token_type_ids\n"
    "  (I64 [B,T], 1 on image soft tokens: each image's tokens then see each other).\n"
    "  OUT gets logits (F32 [B,T,V]).\n";

absl::Status Forward(const std::string& model_path, const std::string& in, const std::string& out,
                     Dtype dtype, const ModelFlags& flags) {
  LLMTRAIN_ASSIGN_OR_RETURN(auto model, flags.Load(model_path, dtype));
  LLMTRAIN_ASSIGN_OR_RETURN(auto inputs, io::SafetensorsFile::Open(in));
  const io::TensorInfo* ids_info = inputs->Find("input_ids");
  if (ids_info == nullptr || ids_info->dtype != Dtype::kI64 || ids_info->shape.size() != 2) {
    return absl::InvalidArgumentError(absl::StrCat(in, ": expected a tensor \"input_ids\" of I64 [B, T]"));
  }
  // Each input is copied out of the mapped file into its own allocation: a view into the mapping
  // lies wherever the file put it, and oneMKL's float32 kernels may round differently for
  // differently aligned operands (on some CPUs), so the logits would depend on the file's layout.
  const auto read = [&](const io::TensorInfo& info) { return io::TensorView(*inputs, info).clone(); };
  const at::Tensor ids = read(*ids_info);
  at::Tensor mask;
  if (const io::TensorInfo* m = inputs->Find("attention_mask")) {
    if (m->dtype != Dtype::kI64) {
      return absl::InvalidArgumentError(absl::StrCat(in, ": attention_mask must be I64"));
    }
    mask = read(*m);
  }
  model::ImageInputs images;
  if (const io::TensorInfo* p = inputs->Find("pixel_values")) {
    if (p->dtype != Dtype::kF32 || p->shape.size() != 4) {
      return absl::InvalidArgumentError(absl::StrCat(in, ": pixel_values must be F32 [N, 3, S, S]"));
    }
    images.pixel_values = read(*p);
  }
  if (const io::TensorInfo* t = inputs->Find("token_type_ids")) {
    if (t->dtype != Dtype::kI64) return absl::InvalidArgumentError(absl::StrCat(in, ": token_type_ids must be I64"));
    images.token_type_ids = read(*t);
  }
  const absl::Status ok = model->CheckInputs(ids, mask, images);
  if (!ok.ok()) return Annotate(ok, in);
  at::NoGradGuard no_grad;
  const at::Tensor logits =
      (images.empty() ? model->Forward(ids, mask) : model->Forward(ids, mask, at::Tensor(), images)).to(at::kFloat);
  return io::SaveSafetensors(out, {{"logits", logits}}, {{"format", "pt"}});
}

}  // namespace

int RunForward(const std::vector<std::string>& args) {
  std::string model_path, in, out;
  Dtype dtype = Dtype::kF32;
  ModelFlags flags;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "--help" || a == "-h") {
      std::fputs(kHelp, stdout);
      std::fputs(kModelFlagsHelp, stdout);
      return 0;
    }
    std::string flag_error;
    if (flags.Parse(a, args, &i, &flag_error)) {
      if (!flag_error.empty()) return Fail("forward", flag_error, 2);
      continue;
    }
    if (i + 1 >= args.size()) return Fail("forward", absl::StrCat(a, " needs a value\n", kHelp), 2);
    const std::string& value = args[++i];
    if (a == "--model") {
      model_path = value;
    } else if (a == "--input") {
      in = value;
    } else if (a == "--output") {
      out = value;
    } else if (a == "--dtype") {
      auto parsed = DtypeFromUserName(value);
      if (!parsed.ok()) return Fail("forward", std::string(parsed.status().message()), 2);
      dtype = *parsed;
    } else {
      return Fail("forward", absl::StrCat("unknown option ", a, "\n", kHelp), 2);
    }
  }
  if (model_path.empty() || in.empty() || out.empty()) {
    return Fail("forward", absl::StrCat("--model, --input and --output are required\n", kHelp), 2);
  }
  try {
    const absl::Status status = Forward(model_path, in, out, dtype, flags);
    if (!status.ok()) return Fail("forward", std::string(status.message()));
  } catch (...) {
    return Fail("forward", std::string(StatusFromCurrentException("forward").message()));
  }
  return 0;
}

}  // namespace llmtrain::cli
