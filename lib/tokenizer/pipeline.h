// The parts of a tokenizer, as HF `tokenizers` composes them (internal): normalizer steps,
// pre-tokenizer steps, the BPE model, decoder steps and the post-processor. tokenizer.json and
// GGUF metadata are both turned into this, and Tokenizer::Impl runs it.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/string_view.h"
#include "llmtrain/tokenizer/tokenizer.h"
#include "tokenizer/unicode.h"

namespace llmtrain::tokenizer::detail {

struct NormalizerStep {
  enum class Kind { kNfc, kNfd, kNfkc, kNfkd, kReplace, kPrepend, kLowercase, kStrip };
  Kind kind = Kind::kNfc;
  std::string pattern;  ///< kReplace: the literal string replaced
  std::string content;  ///< kReplace: the replacement; kPrepend: the prefix
  bool left = false, right = false;  ///< kStrip
};

enum class SplitBehavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

struct PreTokenizerStep {
  enum class Kind { kSplit, kByteLevel, kMetaspace };
  Kind kind = Kind::kSplit;
  // kSplit: a literal string or a regex.
  std::string literal;
  std::shared_ptr<const Regex> regex;
  SplitBehavior behavior = SplitBehavior::kIsolated;
  bool invert = false;
  // kByteLevel
  bool add_prefix_space = false;
  bool use_regex = true;
  // kMetaspace
  std::string replacement = "\xE2\x96\x81";  // ▁
  std::string prepend_scheme = "always";     // always | first | never
  bool split = true;
};

struct DecoderStep {
  enum class Kind { kByteLevel, kReplace, kByteFallback, kFuse, kStrip, kMetaspace };
  Kind kind = Kind::kFuse;
  std::string pattern, content;  ///< kReplace; kStrip uses content as the character
  int start = 0, stop = 0;       ///< kStrip: characters removed at each end
  std::string replacement = "\xE2\x96\x81";
  std::string prepend_scheme = "always";
};

/// One item of a TemplateProcessing "single" template.
struct TemplateItem {
  bool is_sequence = false;  ///< the text's ids; otherwise the special token's ids
  std::vector<int32_t> ids;
};

/// The BPE model (HF `models::bpe::BPE`).
struct BpeModel {
  absl::flat_hash_map<std::string, int32_t> vocab;
  std::vector<std::string> id_to_token;  ///< indexed by id (holes are empty)
  /// (left id, right id) packed as left << 32 | right → (rank, merged id)
  absl::flat_hash_map<uint64_t, std::pair<int32_t, int32_t>> merges;
  std::optional<int32_t> unk_id;
  bool fuse_unk = false;
  bool byte_fallback = false;
  bool ignore_merges = false;
  int32_t byte_ids[256];  ///< <0xXX> ids for byte fallback, -1 when missing
};

struct Pipeline {
  std::vector<NormalizerStep> normalizer;
  std::vector<PreTokenizerStep> pre_tokenizer;
  BpeModel model;
  std::vector<DecoderStep> decoder;
  std::vector<TemplateItem> post_single;  ///< empty: ids unchanged
  std::vector<AddedToken> added;
  std::optional<int32_t> bos_id, eos_id, pad_id;
  std::string kind;  ///< "byte_level" | "sentencepiece"
  std::string chat_template;
};

/// Checks the pipeline and packs it into a ready Tokenizer.
absl::StatusOr<std::unique_ptr<Tokenizer>> Build(absl::string_view where, Pipeline pipeline);

/// GPT-2's byte → character map (printable bytes map to themselves, the rest to U+0100…).
const std::vector<char32_t>& BytesToUnicode();

}  // namespace llmtrain::tokenizer::detail
