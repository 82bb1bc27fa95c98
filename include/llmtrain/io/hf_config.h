// Hugging Face `config.json` for gemma2, gemma3_text, gemma3 (text_config + vision_config),
// qwen2 and qwen3, with the defaults and derived values transformers fills.
//
// transformers' configuration classes (v5) define the defaults; this parser reproduces them and
// their post-init rules: Gemma layer_types from the sliding-window pattern, Qwen's sliding
// window only with use_sliding_window, RoPE parameters per layer type from the legacy
// rope_theta / rope_scaling / rope_local_base_freq keys. Unknown keys are kept. A wrong type is
// an error naming the key: `config.json: text_config.hidden_size: expected an integer, found
// the string "abc"`.
//
//   LLMTRAIN_ASSIGN_OR_RETURN(io::HfConfig config, io::LoadHfConfig("path/to/model"));
//   int64_t head_dim = config.text.head_dim;
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include "absl/strings/string_view.h"
#include <vector>

#include "absl/status/statusor.h"

namespace llmtrain::io {

class GgufFile;

/// RoPE of one layer type (transformers `rope_parameters`).
struct RopeParameters {
  std::string rope_type = "default";  ///< default, linear, dynamic, yarn, llama3, longrope
  double rope_theta = 10000.0;
  std::optional<double> factor;       ///< linear / dynamic / yarn scaling factor
};

/// The decoder's hyper-parameters (a text-only model, or the text tower of gemma3).
struct TextConfig {
  std::string model_type;  ///< gemma2, gemma3_text, qwen2, qwen3
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;
  int64_t num_key_value_heads = 0;
  int64_t head_dim = 0;  ///< qwen2 has no field: hidden_size / num_attention_heads
  int64_t max_position_embeddings = 0;
  double rms_norm_eps = 1e-6;
  std::string hidden_activation;  ///< gemma `hidden_activation`, qwen `hidden_act`
  bool attention_bias = false;    ///< qwen2's q/k/v biases are not governed by this field
  double attention_dropout = 0.0;
  /// Gemma attention scale is query_pre_attn_scalar^-0.5; absent for Qwen (head_dim^-0.5).
  std::optional<double> query_pre_attn_scalar;
  std::optional<int64_t> sliding_window;  ///< null when no layer slides
  std::vector<std::string> layer_types;   ///< "sliding_attention" / "full_attention" per layer
  std::optional<double> final_logit_softcapping;
  std::optional<double> attn_logit_softcapping;
  bool tie_word_embeddings = false;
  RopeParameters rope_full;     ///< RoPE of full-attention layers
  RopeParameters rope_sliding;  ///< RoPE of sliding layers (equals rope_full except Gemma 3)
  std::optional<int64_t> bos_token_id;
  std::optional<int64_t> pad_token_id;
  std::vector<int64_t> eos_token_ids;  ///< config eos_token_id, as a list
};

/// SigLIP vision tower of gemma3 (`siglip_vision_model`).
struct VisionConfig {
  int64_t hidden_size = 768;
  int64_t intermediate_size = 3072;
  int64_t num_hidden_layers = 12;
  int64_t num_attention_heads = 12;
  int64_t num_channels = 3;
  int64_t image_size = 224;
  int64_t patch_size = 16;
  std::string hidden_act = "gelu_pytorch_tanh";
  double layer_norm_eps = 1e-6;
  bool vision_use_head = true;
};

struct HfConfig {
  std::string model_type;  ///< the top-level model_type: gemma2, gemma3_text, gemma3, qwen2, qwen3
  TextConfig text;
  std::optional<VisionConfig> vision;  ///< gemma3 only
  /// gemma3 only: image tokens per image and the special token ids around them.
  int64_t mm_tokens_per_image = 0;
  int64_t boi_token_index = 0;
  int64_t eoi_token_index = 0;
  int64_t image_token_index = 0;
  std::optional<std::string> dtype;  ///< stored dtype ("bfloat16"), from dtype or torch_dtype
  /// The whole resolved config as JSON text: every field with its default filled, the derived
  /// values, and every unknown key kept verbatim. Nested for gemma3.
  std::string resolved_json;
};

/// Parses config.json text. `where` prefixes errors (usually the file path).
absl::StatusOr<HfConfig> ParseHfConfig(absl::string_view where, absl::string_view json_text);
/// Reads `path`: a config.json, or a folder holding one.
absl::StatusOr<HfConfig> LoadHfConfig(absl::string_view path);
/// Builds the config transformers builds from a GGUF file's metadata (gemma2, gemma3 → gemma3_text,
/// qwen2, qwen3). Unimplemented for other architectures.
absl::StatusOr<HfConfig> HfConfigFromGguf(const GgufFile& gguf);
/// The config.json-style JSON transformers builds from the GGUF metadata (before defaults).
absl::StatusOr<std::string> GgufToConfigJson(const GgufFile& gguf);

}  // namespace llmtrain::io
