// The config.json class of each family as data (internal to the library): its fields with their
// types and transformers defaults, and the post-init rules that differ between families, stated
// as options. hf_config.cpp applies them. Each family's file in lib/model/ states its schema and
// its FamilyInfo and registers both with LLMTRAIN_REGISTER_FAMILY_FORMAT; io names no family.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "llmtrain/io/families.h"

namespace llmtrain::io::detail {

/// The JSON types a config field accepts.
enum class Kind {
  kInt,            // JSON integer (not bool)
  kIntOrNull,
  kFloat,          // JSON number (integers accepted and widened)
  kFloatOrNull,
  kBool,
  kBoolOrNull,
  kString,
  kStringListOrNull,
  kTokenIds,       // integer, list of integers, or null (eos_token_id)
  kIntOrPair,      // integer or [h, w] (SigLIP image_size / patch_size)
  kObjectOrNull,   // rope_parameters: checked by the RoPE rules
};

/// One field of a configuration class: name, accepted type, default (as JSON text).
struct Field {
  const char* name;
  Kind kind;
  const char* default_json;
};

/// Which layers slide when config.json has no layer_types.
enum class SlidingLayers {
  /// Gemma: every `full_attention_every`-th layer is full, the others slide.
  kAllButEveryNth,
  /// Qwen: layers from max_window_layers on slide, when a sliding window is set.
  kFromMaxWindowLayers,
};

/// The post-init rules of a decoder's config class that a field table cannot state.
struct TextRules {
  SlidingLayers sliding_layers = SlidingLayers::kAllButEveryNth;
  int64_t full_attention_every = 2;
  /// Gemma 3: sliding_window_pattern sets full_attention_every, and the class keeps the pattern it
  /// used as _sliding_window_pattern.
  bool sliding_window_pattern_key = false;
  /// Gemma: hidden_size must divide into the attention heads.
  bool hidden_divisible_by_heads = false;
  /// Qwen: num_key_value_heads: null means as many as the attention heads.
  bool null_kv_heads_means_heads = false;
  /// Qwen: sliding_window counts only with use_sliding_window (else it becomes null).
  bool sliding_window_needs_flag = false;
  /// Gemma 3: RoPE per layer type (rope_parameters.full_attention from rope_theta and
  /// rope_scaling, rope_parameters.sliding_attention from rope_local_base_freq).
  bool rope_per_layer_type = false;
  double full_rope_theta = 10000.0;     ///< default theta of full-attention layers
  double sliding_rope_theta = 10000.0;  ///< default theta of sliding layers (rope_per_layer_type)
  /// Config keys transformers does not take from this family's GGUF metadata
  /// (integrations/ggml.py maps them for some architectures only).
  std::vector<std::string> gguf_unmapped_keys;
};

/// A configuration class: a decoder's, or an image+text one that nests a decoder's.
struct ConfigSchema {
  std::string model_type;
  std::vector<Field> fields;  ///< top-level fields
  TextRules text;             ///< the decoder's rules (text-only classes)
  /// Image+text classes: the class text_config always is (whatever model_type it names), and the
  /// vision tower's fields (vision_config, a siglip_vision_model).
  std::string text_model_type;
  std::vector<Field> vision_fields;
};

/// The schema of `model_type`, or nullptr.
const ConfigSchema* FindConfigSchema(absl::string_view model_type);

/// Registers one family's file-format facts and config class, under info.model_type (which
/// schema.model_type must equal). Done at load time by LLMTRAIN_REGISTER_FAMILY_FORMAT.
bool RegisterFamilyFormat(FamilyInfo info, ConfigSchema schema);

}  // namespace llmtrain::io::detail

#define LLMTRAIN_FORMAT_CONCAT_(a, b) a##b
#define LLMTRAIN_FORMAT_CONCAT(a, b) LLMTRAIN_FORMAT_CONCAT_(a, b)
/// Registers a family's FamilyInfo and ConfigSchema (from expressions) at load time.
#define LLMTRAIN_REGISTER_FAMILY_FORMAT(info, schema)                                  \
  static const bool LLMTRAIN_FORMAT_CONCAT(llmtrain_family_format_registered_, __LINE__) = \
      ::llmtrain::io::detail::RegisterFamilyFormat(info, schema)
