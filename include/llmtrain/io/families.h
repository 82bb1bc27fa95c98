// The supported model families as their files describe them: one registry that every layer asks
// instead of keeping its own list of model types.
//
// What a family's files say lives here, in io: the config.json class (model_type, fields,
// defaults and post-init rules), the GGUF architecture name, whether the GGUF's vocabulary loads
// as its tokenizer, and PEFT's default LoRA targets. Each family's own file in lib/model/ states
// these next to how the family computes (model/family.h) and registers both at load time, so
// adding a family is that one file; the parsers, the GGUF tokenizer and LoRA name no family.
//
//   const io::FamilyInfo* family = io::FindFamily(config.model_type);
//   if (family == nullptr) return absl::UnimplementedError(io::UnsupportedModelType(config.model_type));
#pragma once

#include <string>
#include <vector>

#include "absl/strings/string_view.h"

namespace llmtrain::io {

/// One supported family: the facts its file formats state.
struct FamilyInfo {
  std::string model_type;    ///< config.json model_type ("gemma2", "gemma3_text", "gemma3", …)
  std::string display_name;  ///< for messages: "Gemma 3 (text)"
  /// The decoder's model_type: the family itself, or its text tower's (gemma3 → gemma3_text).
  std::string text_model_type;
  bool has_vision = false;   ///< image+text: config.json nests text_config and vision_config
  /// GGUF general.architecture that llama.cpp writes for it; empty when no GGUF holds it. A GGUF
  /// holds the text backbone only, so gemma3's GGUF reads as gemma3_text.
  std::string gguf_architecture;
  /// The GGUF's "llama" (SentencePiece) vocabulary loads as the tokenizer. Otherwise the model's
  /// tokenizer.json is needed (Qwen's GGUF vocabulary is byte-level BPE with pre-tokenizer rules
  /// that the GGUF names but does not state).
  bool gguf_vocabulary = false;
  /// tokenizer.ggml.pre that llama.cpp's converter writes for the family's byte-level BPE
  /// tokenizer ("qwen2"); empty when its GGUF vocabulary is not byte-level BPE.
  std::string gguf_pre_tokenizer;
  /// PEFT's target_modules when a LoRA config names none
  /// (TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING); empty: PEFT asks for them.
  std::vector<std::string> peft_default_targets;
};

/// Every registered family, sorted by model_type.
std::vector<const FamilyInfo*> Families();

/// The family of config.json `model_type`, or nullptr.
const FamilyInfo* FindFamily(absl::string_view model_type);

/// The text family a GGUF of `architecture` (general.architecture) loads as, or nullptr.
const FamilyInfo* FindFamilyForGguf(absl::string_view architecture);

/// "model_type \"llama\" is not supported (supported: gemma2, gemma3, gemma3_text, qwen2, qwen3)".
std::string UnsupportedModelType(absl::string_view model_type);

/// "general.architecture \"llama\" is not supported (supported: gemma2, gemma3, qwen2, qwen3)".
std::string UnsupportedGgufArchitecture(absl::string_view architecture);

}  // namespace llmtrain::io
