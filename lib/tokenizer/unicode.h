// Unicode services of the tokenizer (internal), all through ICU: no hand-made character tables.
//   - UTF-8 repair with U+FFFD per maximal invalid subpart (Python "replace", Rust from_utf8_lossy);
//   - normalization forms NFC/NFD/NFKC/NFKD;
//   - character predicates with the exact definitions HF tokenizers (Rust `char`) and Python use;
//   - regex splitting with the Oniguruma semantics of HF's pre-tokenizer patterns.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

struct URegularExpression;

namespace llmtrain::tokenizer::detail {

/// Decodes one code point of valid UTF-8 at `pos` and advances it.
char32_t NextCodePoint(absl::string_view text, size_t* pos);
void AppendUtf8(char32_t c, std::string* out);

/// `text` with every maximal invalid subpart replaced by U+FFFD; `text` itself when valid.
std::string ToValidUtf8(absl::string_view text);

enum class NormalForm { kNfc, kNfd, kNfkc, kNfkd };
/// `text` (valid UTF-8) in the normal form.
std::string Normalize(NormalForm form, absl::string_view text);
/// Whether normalizing to `form` never combines `c` with what comes before it (ICU
/// hasBoundaryBefore): text can be normalized in chunks cut before such characters.
bool HasNormalizationBoundaryBefore(NormalForm form, char32_t c);
/// Unicode lowercase of every character (Rust `str::to_lowercase`, HF `Lowercase`).
std::string Lowercase(absl::string_view text);

bool IsWhitespace(char32_t c);    ///< Unicode White_Space (Rust char::is_whitespace, regex \s)
bool IsAlphanumeric(char32_t c);  ///< Alphabetic or numeric (Rust char::is_alphanumeric)
bool IsPythonSpace(char32_t c);   ///< Python str.isspace: bidi WS/B/S or category Zs
/// Python `str.strip()` (Jinja's `trim`).
absl::string_view PythonStrip(absl::string_view text);

/// A compiled HF pre-tokenizer regex. HF compiles with Oniguruma, where \s and \S are the Unicode
/// White_Space property; ICU's \s is narrower, so they are rewritten before compiling. Thread-safe:
/// each call borrows a clone of the compiled pattern.
class Regex {
 public:
  /// Errors name `where` and carry ICU's message.
  static absl::StatusOr<std::unique_ptr<Regex>> Compile(absl::string_view where, absl::string_view pattern);
  ~Regex();
  /// Byte ranges [begin, end) of the non-empty, non-overlapping matches in `text`, left to right.
  std::vector<std::pair<size_t, size_t>> FindAll(absl::string_view text) const;

 private:
  Regex() = default;
  URegularExpression* Acquire() const;
  void Release(URegularExpression* re) const;
  URegularExpression* compiled_ = nullptr;
  mutable std::mutex mutex_;
  mutable std::vector<URegularExpression*> pool_;
};

}  // namespace llmtrain::tokenizer::detail
