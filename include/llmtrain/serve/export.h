// GGUF export (`llmtrain export`): a decoder, with its adapters merged, as a GGUF file that
// llama.cpp and Ollama load, and transformers' `from_pretrained(..., gguf_file=...)` too.
//
// The file is what llama.cpp's converter (convert_hf_to_gguf.py) writes for the family:
// general.architecture (gemma2, gemma3, qwen2, qwen3) and its hyper-parameter keys, tensor names
// blk.N.attn_q.weight and so on (the family's name table, model/family.h), Gemma's norms stored as
// 1 + w, the vocabulary as tokenizer.ggml.* keys and the chat template. Before anything is
// written the metadata is read back the way a GGUF is loaded (io::HfConfigFromGguf) and must give
// the model's own computation (norms, RoPE of every layer, attention scale, windows, soft-caps,
// tied embeddings): a model whose settings a GGUF cannot state is refused, naming them.
//
// Types (llama.cpp's --outtype names): f32, f16, bf16 and q8_0, q4_0. The quantized types apply to
// the 2-D weights whose rows are whole blocks of 32 (the others stay f32, as llama.cpp keeps
// norms and biases); q8_0 and q4_0 round as gguf.quants.quantize does, byte for byte. q4_k_m is
// llama-quantize's Q4_K_M (without an importance matrix): its mix of Q4_K and Q6_K by tensor and
// layer, Q5_0 / Q8_0 for rows that are not whole super-blocks of 256, and ggml's k-quant rounding
// (io::QuantizeQ4_K, QuantizeQ6_K).
//
//   LLMTRAIN_ASSIGN_OR_RETURN(auto vocab, serve::GgufVocabularyFromGguf(*source_gguf));
//   serve::ExportOptions options{.type = serve::ExportType::kQ8_0};
//   LLMTRAIN_ASSIGN_OR_RETURN(serve::ExportReport r, serve::ExportGguf(*model, vocab, "out.gguf", options));
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "llmtrain/io/gguf.h"

namespace llmtrain::model {
class Decoder;
}  // namespace llmtrain::model
namespace llmtrain::tokenizer {
class Tokenizer;
}  // namespace llmtrain::tokenizer

namespace llmtrain::serve {

enum class ExportType { kF32, kF16, kBF16, kQ8_0, kQ4_0, kQ4_K_M };

/// "f32", "f16", "bf16", "q8_0", "q4_0", "q4_k_m" (InvalidArgument lists them for anything else).
absl::StatusOr<ExportType> ParseExportType(absl::string_view name);
absl::string_view ExportTypeName(ExportType type);

/// The tokenizer.* metadata of the exported file.
struct GgufVocabulary {
  std::vector<std::pair<std::string, io::GgufValue>> metadata;
};

/// Every tokenizer.* key of a GGUF (the model's own GGUF: its vocabulary goes along unchanged).
GgufVocabulary GgufVocabularyFromGguf(const io::GgufFile& file);

/// A byte-level BPE tokenizer (tokenizer.json: Qwen) as llama.cpp's converter writes it:
/// tokenizer.ggml.model "gpt2", `pre` (the pre-tokenizer's llama.cpp name, "qwen2" for Qwen),
/// the tokens by id padded to `vocab_size` with "[PAD<id>]" (UNUSED), token types (CONTROL for
/// special added tokens, USER_DEFINED for the other added tokens, NORMAL otherwise), the merges
/// in rank order, the BOS/EOS/padding ids (the tokenizer's, else `config_bos` / `config_eos`
/// from config.json, as the converter falls back), add_bos_token, and the chat template. A
/// tokenizer with more ids than `vocab_size` is refused. A SentencePiece tokenizer.json (Gemma) is
/// refused: llama.cpp converts those from tokenizer.model, which this library does not read;
/// export a Gemma model from its GGUF, or pass that GGUF's vocabulary.
absl::StatusOr<GgufVocabulary> GgufVocabularyFromTokenizer(const tokenizer::Tokenizer& tokenizer, absl::string_view pre,
                                                           int64_t vocab_size, std::optional<int64_t> config_bos = {},
                                                           std::optional<int64_t> config_eos = {});

struct ExportOptions {
  ExportType type = ExportType::kF16;
  std::string name;  ///< general.name; empty: none written
};

struct ExportReport {
  int64_t tensors = 0;
  uint64_t bytes = 0;                      ///< the file's size
  std::map<std::string, int64_t> by_type;  ///< tensors per ggml type name
  int64_t skipped_vision = 0;              ///< vision-tower tensors left out (llama.cpp keeps them in an mmproj file)
};

/// Writes `model` as a GGUF at `path` (atomically, one tensor in memory at a time). Adapters must
/// be merged first (lora::MergeAdapters); 4-bit projections are written from their dequantized
/// weights. Errors name what cannot be exported: an unmerged adapter, a family with no GGUF
/// architecture, settings the metadata cannot state, a vocabulary whose token count is not the
/// embedding's rows, what llama.cpp computes otherwise (Gemma's attention scale: llama.cpp uses
/// 1/sqrt(head_dim), or 1/sqrt(hidden/heads) for the 27B models; an untied Gemma 2, whose
/// output.weight llama.cpp does not read).
absl::StatusOr<ExportReport> ExportGguf(const model::Decoder& model, const GgufVocabulary& vocabulary,
                                        absl::string_view path, const ExportOptions& options);

/// The adapters of `model` (unmerged LoRA on its projections) as a LoRA adapter GGUF for
/// llama.cpp's `--lora` (what convert_lora_to_gguf.py writes): general.type "adapter",
/// adapter.type "lora", adapter.lora.alpha, the architecture's keys, and for each adapted projection
/// `<its GGUF name>.lora_a` (r, in) and `.lora_b` (out, r). llama.cpp scales each by alpha / r, so
/// alpha is written as scaling · r (rsLoRA's alpha / √r becomes alpha · √r), which must be the same
/// for every adapter. Types f32, f16, bf16, q8_0 (rows that are not whole blocks of 32 fall back to
/// f16). Refused, naming the reason: no adapters, DoRA (llama.cpp has no magnitude vector), merged
/// adapters, adapters on the vision tower, scalings that one alpha cannot state, a family with no
/// GGUF architecture.
absl::StatusOr<ExportReport> ExportLoraGguf(const model::Decoder& model, absl::string_view path,
                                            const ExportOptions& options);

}  // namespace llmtrain::serve
