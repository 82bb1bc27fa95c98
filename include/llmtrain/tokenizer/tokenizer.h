// Tokenizers that give the ids Hugging Face `tokenizers` gives, loaded from an HF folder
// (tokenizer.json + tokenizer_config.json) or from a GGUF file's tokenizer metadata.
//
// Both kinds of BPE are supported:
//   - byte-level BPE (Qwen2/2.5/3, GPT-2 style): a regex pre-tokenizer split (Unicode categories
//     through ICU), bytes mapped to the GPT-2 alphabet, NFC normalization;
//   - SentencePiece-style BPE with byte fallback (Gemma): spaces become "▁", characters missing
//     from the vocabulary become <0xXX> byte tokens.
// The pipeline is HF's: added tokens are cut out of the raw text first (leftmost-longest, with
// lstrip/rstrip/single_word/normalized), the rest is normalized, pre-tokenized and merged by rank,
// and the post-processor adds BOS/EOS where the tokenizer says so. A GGUF vocabulary is turned
// into the same tokenizer transformers builds from it (`AutoTokenizer(gguf_file=)`): for Gemma the
// merges are recovered from the token order.
//
//   LLMTRAIN_ASSIGN_OR_RETURN(auto tok, tokenizer::Tokenizer::Load("model_dir"));
//   std::vector<int32_t> ids = tok->Encode("Hello world");         // with BOS for Gemma
//   std::string text = tok->Decode(ids, /*skip_special_tokens=*/true);
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace llmtrain::io {
class GgufFile;
}

namespace llmtrain::tokenizer {

namespace detail {
struct TokenizerAccess;
}

/// A token matched whole in the text before normalization and BPE (HF `AddedToken`).
struct AddedToken {
  std::string content;
  int32_t id = 0;
  bool special = false;      ///< dropped by Decode(skip_special_tokens = true)
  bool lstrip = false;       ///< also consumes the whitespace before it
  bool rstrip = false;       ///< also consumes the whitespace after it
  bool single_word = false;  ///< only matches between word boundaries
  bool normalized = false;   ///< matched in the normalized text instead of the raw text
};

class Tokenizer {
 public:
  /// `path`: an HF folder (tokenizer.json, and tokenizer_config.json when present), a
  /// tokenizer.json file, or a .gguf file. Errors name the file and the field.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> Load(absl::string_view path);
  /// From tokenizer.json text; `config_json` is tokenizer_config.json text or empty. `where`
  /// names the source in errors.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromJson(absl::string_view where,
                                                             absl::string_view tokenizer_json,
                                                             absl::string_view config_json = {});
  /// From the `tokenizer.ggml.*` metadata of a GGUF file.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromGguf(const io::GgufFile& file);

  ~Tokenizer();
  Tokenizer(const Tokenizer&) = delete;
  Tokenizer& operator=(const Tokenizer&) = delete;

  /// HF `tokenizer(text).input_ids` (add_special_tokens = true) or with add_special_tokens =
  /// false. Special-token strings in the text become their ids either way, as in HF. Invalid
  /// UTF-8 is replaced by U+FFFD first (maximal subparts, as Python's "replace" does).
  std::vector<int32_t> Encode(absl::string_view text, bool add_special_tokens = true) const;
  /// Encode, and each id's byte range [first, second) in `text` (after the U+FFFD repair of
  /// invalid UTF-8): what a loss mask needs to know which ids came from which characters. Ids the
  /// post-processor adds (BOS) get (0, 0), as HF's offset mapping does.
  std::vector<int32_t> EncodeWithOffsets(absl::string_view text, bool add_special_tokens,
                                         std::vector<std::pair<uint32_t, uint32_t>>* offsets) const;
  /// Encode of every text, on all cores (core/threads.h NumThreads()).
  std::vector<std::vector<int32_t>> EncodeBatch(absl::Span<const std::string> texts,
                                                bool add_special_tokens = true) const;
  /// HF `tokenizer.decode(ids, skip_special_tokens=...)`. Ids out of range decode to nothing.
  std::string Decode(absl::Span<const int32_t> ids, bool skip_special_tokens = false) const;

  int32_t vocab_size() const;  ///< the largest id + 1, added tokens included
  std::optional<int32_t> TokenToId(absl::string_view token) const;
  /// The stored spelling of `id` (the BPE alphabet: "▁Hello", "Ġworld"); empty when unknown.
  std::string IdToToken(int32_t id) const;
  bool IsSpecial(int32_t id) const;
  /// The BPE merges in rank order, each "left right" in the BPE alphabet (tokenizer.json's
  /// model.merges, GGUF's tokenizer.ggml.merges); empty for a vocabulary without merges.
  std::vector<std::string> Merges() const;

  std::optional<int32_t> bos_id() const;
  std::optional<int32_t> eos_id() const;
  std::optional<int32_t> pad_id() const;
  /// Whether Encode(…, add_special_tokens = true) puts BOS first (the post-processor's choice).
  bool adds_bos() const;
  const std::vector<AddedToken>& added_tokens() const;
  /// HF `add_tokens(AddedToken(content, special=True, normalized=False))`: the id of `content`
  /// when the tokenizer has it, else a new special token with id vocab_size() (e.g. Gemma 3's
  /// "<image_soft_token>" for a vocabulary that lacks it, as the 270M GGUF's does). Not
  /// thread-safe: add tokens before encoding.
  int32_t AddSpecialToken(absl::string_view content);
  /// "byte_level" or "sentencepiece": which BPE flavour this is.
  absl::string_view kind() const;
  /// tokenizer_config.json `chat_template` (the Jinja source), when there is one.
  const std::string& chat_template_source() const;
  void set_chat_template_source(std::string source);

 private:
  friend struct detail::TokenizerAccess;
  struct Impl;
  explicit Tokenizer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

/// Streams the text of ids as they are generated: Push returns the text that became final with
/// this id (a byte-fallback or byte-level character split across ids is held back until whole).
class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer& tokenizer, bool skip_special_tokens = true);
  std::string Push(int32_t id);
  /// The text still held back (an incomplete character at the end decodes to U+FFFD).
  std::string Finish();

 private:
  const Tokenizer& tokenizer_;
  bool skip_special_;
  std::vector<int32_t> ids_;
  size_t emitted_bytes_ = 0;
};

}  // namespace llmtrain::tokenizer
