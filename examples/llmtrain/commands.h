// Subcommands of the `llmtrain` tool. Each takes the arguments after its name and returns the
// process exit code: 0 on success, 1 on a runtime error, 2 on a usage error.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "llmtrain/core/dtype.h"
#include "llmtrain/data/collator.h"
#include "llmtrain/model/decoder.h"
#include "llmtrain/quant/quant4.h"

namespace llmtrain::cli {

int RunInspect(const std::vector<std::string>& args);
int RunConvert(const std::vector<std::string>& args);
int RunForward(const std::vector<std::string>& args);
int RunGenerate(const std::vector<std::string>& args);
int RunTokenize(const std::vector<std::string>& args);
int RunDataCheck(const std::vector<std::string>& args);
int RunMakeDefaultDataset(const std::vector<std::string>& args);
int RunQuantize(const std::vector<std::string>& args);
int RunMerge(const std::vector<std::string>& args);
int RunExport(const std::vector<std::string>& args);
int RunSpecCommand(const std::vector<std::string>& args);
int RunTrain(const std::vector<std::string>& args);
int RunSweep(const std::vector<std::string>& args);
int RunPlan(const std::vector<std::string>& args);
int RunReport(const std::vector<std::string>& args);
int RunLaunch(const std::vector<std::string>& args);
int RunPreprocessImages(const std::vector<std::string>& args);
int RunMakeVlm(const std::vector<std::string>& args);
int RunEval(const std::vector<std::string>& args);
int RunMakeTask(const std::vector<std::string>& args);
int RunServe(const std::vector<std::string>& args);

/// Model options shared by `forward` and `generate`:
///   --load-in-4bit          quantize the projections to NF4 (blocks of 64, double quantization)
///   --quant-type nf4|fp4    with --load-in-4bit
///   --adapter DIR           a PEFT LoRA adapter folder applied on top
struct ModelFlags {
  bool load_in_4bit = false;
  quant::QuantType quant_type = quant::QuantType::kNf4;
  std::string adapter;
  bool packed = false;  ///< --packed: decode from the packed weights (quant::PackedLinearFactory)
  /// Consumes args[*i] (and its value) if it is one of these options; sets *error on a bad value.
  bool Parse(const std::string& option, const std::vector<std::string>& args, size_t* i, std::string* error);
  absl::StatusOr<std::unique_ptr<model::Decoder>> Load(const std::string& path, Dtype dtype) const;
};
/// The image options of an image+text model loaded from `model_path`: its tokens per image and
/// tower size, the three image tokens' ids (data::MakeImageOptions adds the soft token to
/// `tokenizer` when missing), and the folder's preprocessor_config.json when it has one (refused
/// when it does not resize).
absl::StatusOr<data::ImageOptions> ModelImageOptions(const std::string& model_path, tokenizer::Tokenizer* tokenizer,
                                                     const model::Decoder& model);

/// The value of --kv-cache: "f32", "bf16" or "f16" as a dtype; InvalidArgument naming the option
/// otherwise.
absl::StatusOr<c10::ScalarType> ParseKvCacheDtype(const std::string& value);

/// The lines of help for ModelFlags.
inline constexpr char kModelFlagsHelp[] =
    "  --load-in-4bit: quantize the projections to 4 bits as they load (QLoRA's frozen base);\n"
    "    --quant-type nf4|fp4 (default nf4), blocks of 64 with double quantization.\n"
    "  --adapter DIR: apply a PEFT LoRA adapter (adapter_config.json + adapter_model.safetensors).\n"
    "  --packed: compute from the packed weights: a GGUF's blocks as stored (its head too), the\n"
    "    4-bit base with --load-in-4bit (docs/decoding.md). On CUDA the GGUF types F16, BF16,\n"
    "    Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K and Q6_K compute there from their blocks.\n";

/// Prints "llmtrain <command>: <message>" to stderr and returns `code`.
int Fail(const std::string& command, const std::string& message, int code = 1);

}  // namespace llmtrain::cli
