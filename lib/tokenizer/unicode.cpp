#include "tokenizer/unicode.h"

#include <unicode/uchar.h>
#include <unicode/unorm2.h>
#include <unicode/uregex.h>
#include <unicode/ustring.h>
#include <unicode/utext.h>

#include "absl/strings/str_cat.h"

namespace llmtrain::tokenizer::detail {
namespace {

// UTF-8 → UTF-16 with U+FFFD substitution (ICU follows the maximal-subpart practice).
std::u16string ToUtf16(absl::string_view text) {
  std::u16string out(text.size() + 1, u'\0');
  int32_t length = 0;
  UErrorCode status = U_ZERO_ERROR;
  u_strFromUTF8WithSub(reinterpret_cast<UChar*>(out.data()), static_cast<int32_t>(out.size()), &length,
                       text.data(), static_cast<int32_t>(text.size()), 0xFFFD, nullptr, &status);
  out.resize(U_SUCCESS(status) ? static_cast<size_t>(length) : 0);
  return out;
}

std::string ToUtf8(const std::u16string& text) {
  std::string out(text.size() * 3 + 1, '\0');
  int32_t length = 0;
  UErrorCode status = U_ZERO_ERROR;
  u_strToUTF8WithSub(out.data(), static_cast<int32_t>(out.size()), &length,
                     reinterpret_cast<const UChar*>(text.data()), static_cast<int32_t>(text.size()), 0xFFFD,
                     nullptr, &status);
  out.resize(U_SUCCESS(status) ? static_cast<size_t>(length) : 0);
  return out;
}

bool IsValidUtf8(absl::string_view text) {
  UErrorCode status = U_ZERO_ERROR;
  int32_t length = 0;
  u_strFromUTF8(nullptr, 0, &length, text.data(), static_cast<int32_t>(text.size()), &status);
  return status == U_BUFFER_OVERFLOW_ERROR || status == U_STRING_NOT_TERMINATED_WARNING || U_SUCCESS(status);
}

// Oniguruma's \s / \S are White_Space; ICU's \s is [\t\n\f\r\p{Z}] (no \v, no U+0085). Rewrite
// them outside of escapes; inside a class \p{White_Space} / \P{White_Space} work as well.
std::string RewriteWhitespaceClasses(absl::string_view pattern) {
  std::string out;
  for (size_t i = 0; i < pattern.size(); ++i) {
    if (pattern[i] == '\\' && i + 1 < pattern.size()) {
      const char next = pattern[i + 1];
      if (next == 's') {
        out += "\\p{White_Space}";
      } else if (next == 'S') {
        out += "\\P{White_Space}";
      } else {
        out += pattern[i];
        out += next;
      }
      ++i;
    } else {
      out += pattern[i];
    }
  }
  return out;
}

// ICU's shared instance of a normal form.
const UNormalizer2* Normalizer(NormalForm form, UErrorCode* status) {
  switch (form) {
    case NormalForm::kNfc: return unorm2_getNFCInstance(status);
    case NormalForm::kNfd: return unorm2_getNFDInstance(status);
    case NormalForm::kNfkc: return unorm2_getNFKCInstance(status);
    case NormalForm::kNfkd: return unorm2_getNFKDInstance(status);
  }
  return unorm2_getNFCInstance(status);
}

}  // namespace

char32_t NextCodePoint(absl::string_view text, size_t* pos) {
  const auto* s = reinterpret_cast<const uint8_t*>(text.data());
  size_t i = *pos;
  const uint8_t lead = s[i];
  char32_t c;
  int extra;
  if (lead < 0x80) {
    c = lead;
    extra = 0;
  } else if (lead < 0xE0) {
    c = lead & 0x1F;
    extra = 1;
  } else if (lead < 0xF0) {
    c = lead & 0x0F;
    extra = 2;
  } else {
    c = lead & 0x07;
    extra = 3;
  }
  ++i;
  for (int k = 0; k < extra && i < text.size(); ++k, ++i) c = (c << 6) | (s[i] & 0x3F);
  *pos = i;
  return c;
}

void AppendUtf8(char32_t c, std::string* out) {
  if (c < 0x80) {
    out->push_back(static_cast<char>(c));
  } else if (c < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (c >> 6)));
    out->push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else if (c < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (c >> 12)));
    out->push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (c >> 18)));
    out->push_back(static_cast<char>(0x80 | ((c >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (c & 0x3F)));
  }
}

std::string ToValidUtf8(absl::string_view text) {
  if (IsValidUtf8(text)) return std::string(text);
  return ToUtf8(ToUtf16(text));
}

std::string Normalize(NormalForm form, absl::string_view text) {
  UErrorCode status = U_ZERO_ERROR;
  const UNormalizer2* normalizer = Normalizer(form, &status);
  if (U_FAILURE(status)) return std::string(text);
  // ASCII is invariant under every form.
  bool ascii = true;
  for (char ch : text) ascii &= static_cast<unsigned char>(ch) < 0x80;
  if (ascii) return std::string(text);
  const std::u16string source = ToUtf16(text);
  const auto* src = reinterpret_cast<const UChar*>(source.data());
  const auto src_len = static_cast<int32_t>(source.size());
  if (unorm2_isNormalized(normalizer, src, src_len, &status) && U_SUCCESS(status)) return std::string(text);
  status = U_ZERO_ERROR;
  std::u16string out(source.size() * 4 + 16, u'\0');
  int32_t length = unorm2_normalize(normalizer, src, src_len, reinterpret_cast<UChar*>(out.data()),
                                    static_cast<int32_t>(out.size()), &status);
  if (status == U_BUFFER_OVERFLOW_ERROR) {
    status = U_ZERO_ERROR;
    out.assign(static_cast<size_t>(length) + 1, u'\0');
    length = unorm2_normalize(normalizer, src, src_len, reinterpret_cast<UChar*>(out.data()),
                              static_cast<int32_t>(out.size()), &status);
  }
  if (U_FAILURE(status)) return std::string(text);
  out.resize(static_cast<size_t>(length));
  return ToUtf8(out);
}

bool HasNormalizationBoundaryBefore(NormalForm form, char32_t c) {
  UErrorCode status = U_ZERO_ERROR;
  const UNormalizer2* normalizer = Normalizer(form, &status);
  return U_SUCCESS(status) && unorm2_hasBoundaryBefore(normalizer, static_cast<UChar32>(c));
}

std::string Lowercase(absl::string_view text) {
  const std::u16string source = ToUtf16(text);
  std::u16string out(source.size() * 3 + 16, u'\0');
  UErrorCode status = U_ZERO_ERROR;
  // The root locale ("") gives the language-independent full case mapping Rust uses.
  const int32_t length =
      u_strToLower(reinterpret_cast<UChar*>(out.data()), static_cast<int32_t>(out.size()),
                   reinterpret_cast<const UChar*>(source.data()), static_cast<int32_t>(source.size()), "", &status);
  if (U_FAILURE(status)) return std::string(text);
  out.resize(static_cast<size_t>(length));
  return ToUtf8(out);
}

bool IsWhitespace(char32_t c) { return u_isUWhiteSpace(static_cast<UChar32>(c)); }

bool IsAlphanumeric(char32_t c) {
  const auto cp = static_cast<UChar32>(c);
  if (u_hasBinaryProperty(cp, UCHAR_ALPHABETIC)) return true;
  const int8_t type = u_charType(cp);
  return type == U_DECIMAL_DIGIT_NUMBER || type == U_LETTER_NUMBER || type == U_OTHER_NUMBER;
}

bool IsPythonSpace(char32_t c) {
  const auto cp = static_cast<UChar32>(c);
  const UCharDirection dir = u_charDirection(cp);
  return dir == U_WHITE_SPACE_NEUTRAL || dir == U_BLOCK_SEPARATOR || dir == U_SEGMENT_SEPARATOR ||
         u_charType(cp) == U_SPACE_SEPARATOR;
}

absl::string_view PythonStrip(absl::string_view text) {
  size_t begin = 0;
  while (begin < text.size()) {
    size_t next = begin;
    if (!IsPythonSpace(NextCodePoint(text, &next))) break;
    begin = next;
  }
  size_t end = begin;
  for (size_t pos = begin; pos < text.size();) {
    const bool space = IsPythonSpace(NextCodePoint(text, &pos));
    if (!space) end = pos;
  }
  return text.substr(begin, end - begin);
}

absl::StatusOr<std::unique_ptr<Regex>> Regex::Compile(absl::string_view where, absl::string_view pattern) {
  const std::string rewritten = RewriteWhitespaceClasses(pattern);
  const std::u16string source = ToUtf16(rewritten);
  UErrorCode status = U_ZERO_ERROR;
  UParseError parse_error{};
  URegularExpression* re = uregex_open(reinterpret_cast<const UChar*>(source.data()),
                                       static_cast<int32_t>(source.size()), 0, &parse_error, &status);
  if (U_FAILURE(status)) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": the regex \"", pattern, "\" does not compile (",
                                                   u_errorName(status), " at offset ", parse_error.offset, ")"));
  }
  auto regex = std::unique_ptr<Regex>(new Regex());
  regex->compiled_ = re;
  return regex;
}

Regex::~Regex() {
  for (URegularExpression* re : pool_) uregex_close(re);
  if (compiled_ != nullptr) uregex_close(compiled_);
}

URegularExpression* Regex::Acquire() const {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!pool_.empty()) {
      URegularExpression* re = pool_.back();
      pool_.pop_back();
      return re;
    }
  }
  UErrorCode status = U_ZERO_ERROR;
  URegularExpression* re = uregex_clone(compiled_, &status);
  // A pattern from a file can backtrack catastrophically; cap each match (ICU steps are on the
  // order of a millisecond) rather than hang.
  uregex_setTimeLimit(re, 10000, &status);
  return re;
}

void Regex::Release(URegularExpression* re) const {
  std::lock_guard<std::mutex> lock(mutex_);
  pool_.push_back(re);
}

std::vector<std::pair<size_t, size_t>> Regex::FindAll(absl::string_view text) const {
  std::vector<std::pair<size_t, size_t>> matches;
  if (text.empty()) return matches;
  URegularExpression* re = Acquire();
  UErrorCode status = U_ZERO_ERROR;
  // A UTF-8 UText: ICU reports native indices, which are byte offsets here.
  UText* utext = utext_openUTF8(nullptr, text.data(), static_cast<int64_t>(text.size()), &status);
  uregex_setUText(re, utext, &status);
  while (U_SUCCESS(status) && uregex_findNext(re, &status)) {
    const int64_t begin = uregex_start64(re, 0, &status);
    const int64_t end = uregex_end64(re, 0, &status);
    if (U_FAILURE(status)) break;
    if (end > begin) matches.emplace_back(static_cast<size_t>(begin), static_cast<size_t>(end));
  }
  // Detach the text before the UText goes away.
  UErrorCode reset = U_ZERO_ERROR;
  uregex_setText(re, u"", 0, &reset);
  utext_close(utext);
  Release(re);
  return matches;
}

}  // namespace llmtrain::tokenizer::detail
