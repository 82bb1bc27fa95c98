// The tokenizer pipeline (HF `tokenizers` semantics): added tokens → normalizer → pre-tokenizer →
// BPE → post-processor, and the decoder chain for the way back.
#include "llmtrain/tokenizer/tokenizer.h"

#include <algorithm>
#include <array>
#include <queue>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "llmtrain/core/status.h"
#include "llmtrain/core/threads.h"
#include "tokenizer/pipeline.h"

namespace llmtrain::tokenizer {

namespace detail {

struct TokenizerAccess {
  // Tokenizer::Impl is private: detail::Build gets a fresh one here.
  static std::unique_ptr<Tokenizer::Impl> NewImpl();
  static std::unique_ptr<Tokenizer> Make(std::unique_ptr<Tokenizer::Impl> impl) {
    return std::unique_ptr<Tokenizer>(new Tokenizer(std::move(impl)));
  }
};

const std::vector<char32_t>& BytesToUnicode() {
  static const std::vector<char32_t> table = [] {
    std::vector<char32_t> map(256, 0);
    std::vector<bool> printable(256, false);
    for (int b = '!'; b <= '~'; ++b) printable[b] = true;
    for (int b = 0xA1; b <= 0xAC; ++b) printable[b] = true;
    for (int b = 0xAE; b <= 0xFF; ++b) printable[b] = true;
    char32_t next = 256;
    for (int b = 0; b < 256; ++b) map[b] = printable[b] ? static_cast<char32_t>(b) : next++;
    return map;
  }();
  return table;
}

}  // namespace detail

using detail::AppendUtf8;
using detail::NextCodePoint;

namespace {

// A byte trie over added-token contents for leftmost-longest matching (what HF's Aho-Corasick
// with MatchKind::LeftmostLongest finds).
class Trie {
 public:
  void Insert(absl::string_view key, int32_t value) {
    int node = 0;
    for (unsigned char c : key) {
      auto it = nodes_[node].next.find(c);
      if (it == nodes_[node].next.end()) {
        nodes_.push_back({});
        it = nodes_[node].next.emplace(c, static_cast<int>(nodes_.size() - 1)).first;
      }
      node = it->second;
    }
    nodes_[node].value = value;
    if (!key.empty()) first_byte_[static_cast<unsigned char>(key[0])] = true;
  }
  bool empty() const { return nodes_.size() == 1; }
  // The longest key starting at `pos`: (length, value), or length 0.
  std::pair<size_t, int32_t> LongestAt(absl::string_view text, size_t pos) const {
    if (!first_byte_[static_cast<unsigned char>(text[pos])]) return {0, -1};
    int node = 0;
    std::pair<size_t, int32_t> best{0, -1};
    for (size_t i = pos; i < text.size(); ++i) {
      const auto it = nodes_[node].next.find(static_cast<unsigned char>(text[i]));
      if (it == nodes_[node].next.end()) break;
      node = it->second;
      if (nodes_[node].value >= 0) best = {i + 1 - pos, nodes_[node].value};
    }
    return best;
  }

 private:
  struct Node {
    absl::flat_hash_map<unsigned char, int> next;
    int32_t value = -1;
  };
  std::vector<Node> nodes_ = std::vector<Node>(1);
  std::array<bool, 256> first_byte_{};
};

// Text with, when tracked, the byte range of the input that each of its bytes came from: how
// token offsets survive normalization, pre-tokenization and the byte-level mapping.
struct AText {
  std::string s;
  bool track = false;
  std::vector<uint32_t> b, e;  // per byte of s: [b, e) in the input

  static AText Of(std::string text, bool track) {
    AText t;
    t.s = std::move(text);
    t.track = track;
    if (track) {
      t.b.resize(t.s.size());
      t.e.resize(t.s.size());
      for (size_t i = 0; i < t.s.size(); ++i) {
        t.b[i] = static_cast<uint32_t>(i);
        t.e[i] = static_cast<uint32_t>(i + 1);
      }
    }
    return t;
  }
  AText Sub(size_t begin, size_t end) const {
    AText t;
    t.s = s.substr(begin, end - begin);
    t.track = track;
    if (track) {
      t.b.assign(b.begin() + begin, b.begin() + end);
      t.e.assign(e.begin() + begin, e.begin() + end);
    }
    return t;
  }
  // Appends `bytes`, all aligned to [ob, oe).
  void Add(absl::string_view bytes, uint32_t ob, uint32_t oe) {
    s.append(bytes.data(), bytes.size());
    if (track) {
      b.insert(b.end(), bytes.size(), ob);
      e.insert(e.end(), bytes.size(), oe);
    }
  }
  void AddFrom(const AText& from, size_t begin, size_t end) {
    s.append(from.s, begin, end - begin);
    if (track) {
      b.insert(b.end(), from.b.begin() + begin, from.b.begin() + end);
      e.insert(e.end(), from.e.begin() + begin, from.e.begin() + end);
    }
  }
  // The input range of bytes [begin, end) of s.
  std::pair<uint32_t, uint32_t> Range(size_t begin, size_t end) const {
    uint32_t lo = UINT32_MAX, hi = 0;
    for (size_t i = begin; i < end; ++i) {
      lo = std::min(lo, b[i]);
      hi = std::max(hi, e[i]);
    }
    return lo == UINT32_MAX ? std::make_pair(0u, 0u) : std::make_pair(lo, hi);
  }
};

AText EmptyLike(const AText& t) {
  AText out;
  out.track = t.track;
  return out;
}

AText ReplaceAll(const AText& in, absl::string_view pattern, absl::string_view content) {
  const absl::string_view text = in.s;
  if (text.find(pattern) == absl::string_view::npos) return in;
  AText out = EmptyLike(in);
  size_t prev = 0;
  for (size_t pos = text.find(pattern); pos != absl::string_view::npos; pos = text.find(pattern, pos + pattern.size())) {
    out.AddFrom(in, prev, pos);
    const auto [ob, oe] = in.track ? in.Range(pos, pos + pattern.size()) : std::make_pair(0u, 0u);
    out.Add(content, ob, oe);
    prev = pos + pattern.size();
  }
  out.AddFrom(in, prev, in.s.size());
  return out;
}

// A prefix aligned to the first byte of the text (HF aligns prepended text to the first char).
AText PrependText(const AText& in, absl::string_view prefix) {
  if (in.s.empty()) return in;
  AText out = EmptyLike(in);
  out.Add(prefix, in.track ? in.b[0] : 0, in.track ? in.e[0] : 0);
  out.AddFrom(in, 0, in.s.size());
  return out;
}

// A piece of text on its way through the pipeline: an added token's id, or text to tokenize.
struct Piece {
  AText text;
  int32_t added_id = -1;
  bool at_start = false;  // begins at offset 0 of the input (Metaspace prepend_scheme "first")
};

bool EndsWithWordChar(absl::string_view s) {
  if (s.empty()) return false;
  size_t pos = s.size() - 1;
  while (pos > 0 && (static_cast<unsigned char>(s[pos]) & 0xC0) == 0x80) --pos;
  const char32_t c = NextCodePoint(s, &pos);
  return detail::IsAlphanumeric(c) || c == U'_';
}

bool StartsWithWordChar(absl::string_view s) {
  if (s.empty()) return false;
  size_t pos = 0;
  const char32_t c = NextCodePoint(s, &pos);
  return detail::IsAlphanumeric(c) || c == U'_';
}

// Byte length of the whitespace run at the end / start of s (Rust char::is_whitespace).
size_t TrailingWhitespaceStart(absl::string_view s) {
  size_t pos = 0, last_non_space_end = 0;
  while (pos < s.size()) {
    if (!detail::IsWhitespace(NextCodePoint(s, &pos))) last_non_space_end = pos;
  }
  return last_non_space_end;
}

size_t LeadingWhitespaceLength(absl::string_view s) {
  size_t pos = 0;
  while (pos < s.size()) {
    size_t next = pos;
    if (!detail::IsWhitespace(NextCodePoint(s, &next))) break;
    pos = next;
  }
  return pos;
}

// Matches of a literal string, left to right, non-overlapping.
std::vector<std::pair<size_t, size_t>> FindLiteral(absl::string_view text, absl::string_view literal) {
  std::vector<std::pair<size_t, size_t>> out;
  if (literal.empty()) return out;
  for (size_t pos = text.find(literal); pos != absl::string_view::npos; pos = text.find(literal, pos + literal.size())) {
    out.emplace_back(pos, pos + literal.size());
  }
  return out;
}

// HF `NormalizedString::split`: the matches and the gaps between them, then the behaviour.
std::vector<AText> SplitBy(const AText& atext, const std::vector<std::pair<size_t, size_t>>& matches,
                           detail::SplitBehavior behavior, bool invert) {
  const absl::string_view text = atext.s;
  struct Span {
    size_t begin, end;
    bool is_match;
  };
  std::vector<Span> spans;
  size_t prev = 0;
  for (const auto& [b, e] : matches) {
    if (b > prev) spans.push_back({prev, b, invert});
    spans.push_back({b, e, !invert});
    prev = e;
  }
  if (prev < text.size()) spans.push_back({prev, text.size(), invert});

  std::vector<Span> merged;
  using B = detail::SplitBehavior;
  switch (behavior) {
    case B::kIsolated:
      merged = spans;
      break;
    case B::kRemoved:
      for (const Span& s : spans) {
        if (!s.is_match) merged.push_back(s);
      }
      break;
    case B::kMergedWithPrevious: {
      bool previous_match = false;
      for (const Span& s : spans) {
        if (s.is_match && !previous_match && !merged.empty()) {
          merged.back().end = s.end;
        } else {
          merged.push_back(s);
        }
        previous_match = s.is_match;
      }
      break;
    }
    case B::kMergedWithNext: {
      bool previous_match = false;
      for (auto it = spans.rbegin(); it != spans.rend(); ++it) {
        if (it->is_match && !previous_match && !merged.empty()) {
          merged.back().begin = it->begin;
        } else {
          merged.push_back(*it);
        }
        previous_match = it->is_match;
      }
      std::reverse(merged.begin(), merged.end());
      break;
    }
    case B::kContiguous: {
      bool previous_match = false;
      for (const Span& s : spans) {
        if (s.is_match == previous_match && !merged.empty()) {
          merged.back().end = s.end;
        } else {
          merged.push_back(s);
        }
        previous_match = s.is_match;
      }
      break;
    }
  }
  std::vector<AText> out;
  for (const Span& s : merged) {
    if (s.end > s.begin) out.push_back(atext.Sub(s.begin, s.end));
  }
  return out;
}

const char* kGpt2Pattern = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

}  // namespace

struct Tokenizer::Impl {
  detail::Pipeline p;
  Trie raw_trie;         // added tokens matched in the raw text
  Trie normalized_trie;  // added tokens matched after normalization
  absl::flat_hash_map<int32_t, size_t> added_by_id;
  absl::flat_hash_map<std::string, int32_t> added_by_content;
  absl::flat_hash_map<char32_t, int32_t> char_ids;  // single-character vocabulary entries
  std::shared_ptr<const detail::Regex> gpt2_regex;  // ByteLevel(use_regex = true)
  int32_t vocab_size = 0;

  using WordCache = absl::flat_hash_map<std::string, std::vector<int32_t>>;

  // HF AddedVocabulary::split_with_indices on one text with one trie.
  void SplitAdded(const Trie& trie, const Piece& in, std::vector<Piece>* out) const {
    const absl::string_view s = in.text.s;
    if (trie.empty() || s.empty()) {
      out->push_back(in);
      return;
    }
    size_t start_offset = 0;
    size_t pos = 0;
    while (pos < s.size()) {
      const auto [length, id] = trie.LongestAt(s, pos);
      if (length == 0) {
        ++pos;
        continue;
      }
      const AddedToken& token = p.added[added_by_id.at(id)];
      size_t start = pos, stop = pos + length;
      pos = stop;  // the search goes on after the match itself
      if (token.single_word) {
        const bool start_space = start == 0 || !EndsWithWordChar(s.substr(0, start));
        const bool stop_space = stop == s.size() || !StartsWithWordChar(s.substr(stop));
        if (!start_space || !stop_space) continue;
      }
      if (token.lstrip) start = std::max(TrailingWhitespaceStart(s.substr(0, start)), start_offset);
      if (token.rstrip) stop += LeadingWhitespaceLength(s.substr(stop));
      if (start_offset < start) out->push_back({in.text.Sub(start_offset, start), -1, in.at_start && start_offset == 0});
      // HF keeps searching after the match itself, not after the stripped whitespace: a token
      // that starts inside that whitespace still matches (its span then overlaps).
      out->push_back({in.text.Sub(std::min(start, stop), stop), id, false});
      start_offset = stop;  // as HF, even when this match lies inside the previous one's stripped whitespace
    }
    if (start_offset < s.size()) {
      out->push_back({in.text.Sub(start_offset, s.size()), -1, in.at_start && start_offset == 0});
    }
  }

  // Normal form of a tracked text: normalized chunk by chunk between normalization boundaries
  // (the result equals normalizing the whole), each chunk's output aligned to the chunk's input.
  static AText NormalizeForm(const AText& in, detail::NormalForm form) {
    if (!in.track) return AText::Of(detail::Normalize(form, in.s), false);
    const std::string whole = detail::Normalize(form, in.s);
    if (whole == in.s) return in;
    AText out = EmptyLike(in);
    size_t chunk = 0;
    for (size_t pos = 0; pos < in.s.size();) {
      const size_t begin = pos;
      const char32_t c = NextCodePoint(in.s, &pos);
      if (begin > chunk && detail::HasNormalizationBoundaryBefore(form, c)) {
        const auto [ob, oe] = in.Range(chunk, begin);
        out.Add(detail::Normalize(form, absl::string_view(in.s).substr(chunk, begin - chunk)), ob, oe);
        chunk = begin;
      }
    }
    if (chunk < in.s.size()) {
      const auto [ob, oe] = in.Range(chunk, in.s.size());
      out.Add(detail::Normalize(form, absl::string_view(in.s).substr(chunk)), ob, oe);
    }
    if (out.s != whole) {  // cannot happen with boundaries; align the whole piece then
      AText fallback = EmptyLike(in);
      const auto [ob, oe] = in.Range(0, in.s.size());
      fallback.Add(whole, ob, oe);
      return fallback;
    }
    return out;
  }

  AText NormalizeText(const AText& text) const {
    AText s = text;
    for (const auto& step : p.normalizer) {
      using K = detail::NormalizerStep::Kind;
      switch (step.kind) {
        case K::kNfc: s = NormalizeForm(s, detail::NormalForm::kNfc); break;
        case K::kNfd: s = NormalizeForm(s, detail::NormalForm::kNfd); break;
        case K::kNfkc: s = NormalizeForm(s, detail::NormalForm::kNfkc); break;
        case K::kNfkd: s = NormalizeForm(s, detail::NormalForm::kNfkd); break;
        case K::kReplace: s = ReplaceAll(s, step.pattern, step.content); break;
        case K::kPrepend: s = PrependText(s, step.content); break;
        case K::kLowercase: {
          std::string lower = detail::Lowercase(s.s);
          if (lower != s.s) {
            AText out = EmptyLike(s);
            const auto [ob, oe] = s.track ? s.Range(0, s.s.size()) : std::make_pair(0u, 0u);
            out.Add(lower, ob, oe);
            s = std::move(out);
          }
          break;
        }
        case K::kStrip: {
          size_t begin = 0, end = s.s.size();
          if (step.left) begin = LeadingWhitespaceLength(s.s);
          if (step.right) end = std::max(begin, TrailingWhitespaceStart(s.s));
          s = s.Sub(begin, end);
          break;
        }
      }
    }
    return s;
  }

  static AText ToByteLevel(const AText& text) {
    const auto& table = detail::BytesToUnicode();
    AText out = EmptyLike(text);
    out.s.reserve(text.s.size() * 2);
    std::string ch;
    for (size_t i = 0; i < text.s.size(); ++i) {
      ch.clear();
      AppendUtf8(table[static_cast<unsigned char>(text.s[i])], &ch);
      out.Add(ch, text.track ? text.b[i] : 0, text.track ? text.e[i] : 0);
    }
    return out;
  }

  std::vector<AText> PreTokenize(const Piece& piece) const {
    std::vector<AText> parts{piece.text};
    for (const auto& step : p.pre_tokenizer) {
      std::vector<AText> next;
      using K = detail::PreTokenizerStep::Kind;
      for (size_t i = 0; i < parts.size(); ++i) {
        AText& part = parts[i];
        switch (step.kind) {
          case K::kSplit: {
            const auto matches = step.regex ? step.regex->FindAll(part.s) : FindLiteral(part.s, step.literal);
            for (auto& t : SplitBy(part, matches, step.behavior, step.invert)) next.push_back(std::move(t));
            break;
          }
          case K::kByteLevel: {
            if (step.add_prefix_space && !absl::StartsWith(part.s, " ")) part = PrependText(part, " ");
            if (step.use_regex) {
              for (auto& t : SplitBy(part, gpt2_regex->FindAll(part.s), detail::SplitBehavior::kIsolated, false)) {
                next.push_back(ToByteLevel(t));
              }
            } else {
              next.push_back(ToByteLevel(part));
            }
            break;
          }
          case K::kMetaspace: {
            AText t = ReplaceAll(part, " ", step.replacement);
            const bool prepend = step.prepend_scheme == "always" ||
                                 (step.prepend_scheme == "first" && piece.at_start && i == 0);
            if (prepend && !absl::StartsWith(t.s, step.replacement)) t = PrependText(t, step.replacement);
            if (step.split) {
              for (auto& u : SplitBy(t, FindLiteral(t.s, step.replacement), detail::SplitBehavior::kMergedWithNext,
                                     false)) {
                next.push_back(std::move(u));
              }
            } else {
              next.push_back(std::move(t));
            }
            break;
          }
        }
      }
      parts = std::move(next);
    }
    return parts;
  }

  // HF BPE::merge_word + Word::merge_all (no dropout): lowest rank first, leftmost on ties.
  // `lengths`, when given, receives each token's byte length within `word`.
  void Bpe(absl::string_view word, std::vector<int32_t>* out, std::vector<uint32_t>* lengths = nullptr) const {
    const detail::BpeModel& m = p.model;
    if (m.ignore_merges) {
      const auto it = m.vocab.find(word);
      if (it != m.vocab.end()) {
        out->push_back(it->second);
        if (lengths != nullptr) lengths->push_back(static_cast<uint32_t>(word.size()));
        return;
      }
    }
    struct Symbol {
      int32_t id;
      int prev, next;
      bool alive;
      uint32_t length;  // bytes of the word it covers
    };
    std::vector<Symbol> symbols;
    symbols.reserve(word.size());
    bool last_unk = false;
    auto push = [&](int32_t id, uint32_t length) {
      const int index = static_cast<int>(symbols.size());
      symbols.push_back({id, index - 1, index + 1, true, length});
    };
    for (size_t pos = 0; pos < word.size();) {
      const size_t begin = pos;
      const char32_t c = NextCodePoint(word, &pos);
      const auto it = char_ids.find(c);
      if (it != char_ids.end()) {
        push(it->second, static_cast<uint32_t>(pos - begin));
        last_unk = false;
        continue;
      }
      if (m.byte_fallback) {
        bool all = true;
        for (size_t b = begin; b < pos; ++b) all &= m.byte_ids[static_cast<unsigned char>(word[b])] >= 0;
        if (all) {
          for (size_t b = begin; b < pos; ++b) push(m.byte_ids[static_cast<unsigned char>(word[b])], 1);
          last_unk = false;
          continue;
        }
      }
      if (m.unk_id) {
        if (m.fuse_unk && last_unk) {  // consecutive unknowns become one <unk>
          symbols.back().length += static_cast<uint32_t>(pos - begin);
          continue;
        }
        push(*m.unk_id, static_cast<uint32_t>(pos - begin));
        last_unk = true;
      }
    }
    if (symbols.empty()) return;
    symbols.back().next = -1;

    struct Merge {
      int32_t rank;
      int pos;
      int32_t new_id;
      bool operator<(const Merge& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
    };
    std::priority_queue<Merge> queue;
    auto lookup = [&](int32_t a, int32_t b) -> const std::pair<int32_t, int32_t>* {
      const auto it = m.merges.find((static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b));
      return it == m.merges.end() ? nullptr : &it->second;
    };
    for (size_t i = 0; i + 1 < symbols.size(); ++i) {
      if (const auto* merge = lookup(symbols[i].id, symbols[i + 1].id)) {
        queue.push({merge->first, static_cast<int>(i), merge->second});
      }
    }
    while (!queue.empty()) {
      const Merge top = queue.top();
      queue.pop();
      Symbol& left = symbols[top.pos];
      if (!left.alive || left.next < 0) continue;
      Symbol& right = symbols[left.next];
      const auto* merge = lookup(left.id, right.id);
      if (merge == nullptr || merge->second != top.new_id) continue;
      left.id = top.new_id;
      left.length += right.length;
      right.alive = false;
      left.next = right.next;
      if (right.next >= 0) symbols[right.next].prev = top.pos;
      if (left.prev >= 0) {
        if (const auto* m2 = lookup(symbols[left.prev].id, left.id)) queue.push({m2->first, left.prev, m2->second});
      }
      if (left.next >= 0) {
        if (const auto* m2 = lookup(left.id, symbols[left.next].id)) queue.push({m2->first, top.pos, m2->second});
      }
    }
    for (int i = 0; i >= 0 && i < static_cast<int>(symbols.size()); i = symbols[i].next) {
      out->push_back(symbols[i].id);
      if (lengths != nullptr) lengths->push_back(symbols[i].length);
    }
  }

  void BpeCached(const std::string& word, WordCache* cache, std::vector<int32_t>* out) const {
    if (cache == nullptr || word.size() > 256) {
      Bpe(word, out);
      return;
    }
    const auto it = cache->find(word);
    if (it != cache->end()) {
      out->insert(out->end(), it->second.begin(), it->second.end());
      return;
    }
    std::vector<int32_t> ids;
    Bpe(word, &ids);
    out->insert(out->end(), ids.begin(), ids.end());
    if (cache->size() > 50000) cache->clear();
    cache->emplace(word, std::move(ids));
  }

  // `offsets`, when given, receives each id's byte range in the (UTF-8-repaired) input; ids the
  // post-processor adds get (0, 0), as in HF.
  std::vector<int32_t> Encode(absl::string_view raw, bool add_special, WordCache* cache,
                              std::vector<std::pair<uint32_t, uint32_t>>* offsets = nullptr) const {
    const bool track = offsets != nullptr;
    std::vector<Piece> pieces;
    SplitAdded(raw_trie, Piece{AText::Of(detail::ToValidUtf8(raw), track), -1, true}, &pieces);
    std::vector<int32_t> ids;
    std::vector<uint32_t> lengths;
    for (const Piece& piece : pieces) {
      if (piece.added_id >= 0) {
        ids.push_back(piece.added_id);
        if (track) offsets->push_back(piece.text.Range(0, piece.text.s.size()));
        continue;
      }
      std::vector<Piece> sub;
      SplitAdded(normalized_trie, Piece{NormalizeText(piece.text), -1, piece.at_start}, &sub);
      for (const Piece& s : sub) {
        if (s.added_id >= 0) {
          ids.push_back(s.added_id);
          if (track) offsets->push_back(s.text.Range(0, s.text.s.size()));
          continue;
        }
        for (const AText& word : PreTokenize(s)) {
          if (!track) {
            BpeCached(word.s, cache, &ids);
            continue;
          }
          lengths.clear();
          Bpe(word.s, &ids, &lengths);
          size_t at = 0;
          for (uint32_t n : lengths) {
            offsets->push_back(word.Range(at, at + n));
            at += n;
          }
        }
      }
    }
    if (!add_special || p.post_single.empty()) return ids;
    std::vector<int32_t> out;
    std::vector<std::pair<uint32_t, uint32_t>> out_offsets;
    out.reserve(ids.size() + 2);
    for (const auto& item : p.post_single) {
      if (item.is_sequence) {
        out.insert(out.end(), ids.begin(), ids.end());
        if (track) out_offsets.insert(out_offsets.end(), offsets->begin(), offsets->end());
      } else {
        out.insert(out.end(), item.ids.begin(), item.ids.end());
        if (track) out_offsets.insert(out_offsets.end(), item.ids.size(), {0u, 0u});
      }
    }
    if (track) *offsets = std::move(out_offsets);
    return out;
  }

  std::string Decode(absl::Span<const int32_t> ids, bool skip_special) const {
    std::vector<std::string> tokens;
    tokens.reserve(ids.size());
    for (int32_t id : ids) {
      const auto added = added_by_id.find(id);
      if (added != added_by_id.end()) {
        const AddedToken& t = p.added[added->second];
        if (skip_special && t.special) continue;
        tokens.push_back(t.content);
      } else if (id >= 0 && id < static_cast<int32_t>(p.model.id_to_token.size()) &&
                 !p.model.id_to_token[id].empty()) {
        tokens.push_back(p.model.id_to_token[id]);
      }
    }
    for (const auto& step : p.decoder) tokens = ApplyDecoder(step, std::move(tokens));
    std::string out;
    for (const auto& t : tokens) out += t;
    return out;
  }

  static std::vector<std::string> ApplyDecoder(const detail::DecoderStep& step, std::vector<std::string> tokens) {
    using K = detail::DecoderStep::Kind;
    switch (step.kind) {
      case K::kReplace:
        for (auto& t : tokens) t = absl::StrReplaceAll(t, {{step.pattern, step.content}});
        return tokens;
      case K::kFuse: {
        std::string all;
        for (const auto& t : tokens) all += t;
        return {all};
      }
      case K::kByteFallback: {
        std::vector<std::string> out;
        std::string bytes;
        size_t n_bytes = 0;
        auto flush = [&] {
          if (n_bytes == 0) return;
          if (detail::ToValidUtf8(bytes) == bytes) {
            out.push_back(bytes);
          } else {
            std::string repl;
            for (size_t i = 0; i < n_bytes; ++i) repl += "\xEF\xBF\xBD";
            out.push_back(repl);
          }
          bytes.clear();
          n_bytes = 0;
        };
        for (auto& t : tokens) {
          if (t.size() == 6 && absl::StartsWith(t, "<0x") && t[5] == '>') {
            unsigned value = 0;
            bool ok = true;
            for (int k = 3; k < 5; ++k) {
              const char c = t[k];
              value <<= 4;
              if (c >= '0' && c <= '9') value |= c - '0';
              else if (c >= 'A' && c <= 'F') value |= c - 'A' + 10;
              else if (c >= 'a' && c <= 'f') value |= c - 'a' + 10;
              else ok = false;
            }
            if (ok) {
              bytes.push_back(static_cast<char>(value));
              ++n_bytes;
              continue;
            }
          }
          flush();
          out.push_back(std::move(t));
        }
        flush();
        return out;
      }
      case K::kStrip: {
        for (auto& t : tokens) {
          absl::string_view v = t;
          for (int k = 0; k < step.start && absl::StartsWith(v, step.content); ++k) v.remove_prefix(step.content.size());
          for (int k = 0; k < step.stop && absl::EndsWith(v, step.content); ++k) v.remove_suffix(step.content.size());
          t = std::string(v);
        }
        return tokens;
      }
      case K::kMetaspace: {
        for (size_t i = 0; i < tokens.size(); ++i) {
          std::string s = absl::StrReplaceAll(tokens[i], {{step.replacement, " "}});
          if (i == 0 && step.prepend_scheme != "never" && absl::StartsWith(s, " ")) s.erase(0, 1);
          tokens[i] = std::move(s);
        }
        return tokens;
      }
      case K::kByteLevel: {
        static const absl::flat_hash_map<char32_t, uint8_t> reverse = [] {
          absl::flat_hash_map<char32_t, uint8_t> r;
          const auto& table = detail::BytesToUnicode();
          for (int b = 0; b < 256; ++b) r[table[b]] = static_cast<uint8_t>(b);
          return r;
        }();
        std::string bytes;
        for (const auto& t : tokens) {
          std::string mapped;
          bool all = true;
          for (size_t pos = 0; pos < t.size();) {
            const auto it = reverse.find(NextCodePoint(t, &pos));
            if (it == reverse.end()) {
              all = false;
              break;
            }
            mapped.push_back(static_cast<char>(it->second));
          }
          bytes += all ? mapped : t;
        }
        return {detail::ToValidUtf8(bytes)};
      }
    }
    return tokens;
  }
};

std::unique_ptr<Tokenizer::Impl> detail::TokenizerAccess::NewImpl() { return std::make_unique<Tokenizer::Impl>(); }

Tokenizer::Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::~Tokenizer() = default;

std::vector<int32_t> Tokenizer::Encode(absl::string_view text, bool add_special_tokens) const {
  return impl_->Encode(text, add_special_tokens, nullptr);
}

std::vector<int32_t> Tokenizer::EncodeWithOffsets(absl::string_view text, bool add_special_tokens,
                                                  std::vector<std::pair<uint32_t, uint32_t>>* offsets) const {
  offsets->clear();
  return impl_->Encode(text, add_special_tokens, nullptr, offsets);
}

std::vector<std::vector<int32_t>> Tokenizer::EncodeBatch(absl::Span<const std::string> texts,
                                                         bool add_special_tokens) const {
  std::vector<std::vector<int32_t>> out(texts.size());
  ParallelFor(static_cast<int64_t>(texts.size()), 16, [&](int64_t begin, int64_t end) {
    Impl::WordCache cache;  // one per worker: no locks on the hot path
    for (int64_t i = begin; i < end; ++i) out[i] = impl_->Encode(texts[i], add_special_tokens, &cache);
  });
  return out;
}

std::string Tokenizer::Decode(absl::Span<const int32_t> ids, bool skip_special_tokens) const {
  return impl_->Decode(ids, skip_special_tokens);
}

int32_t Tokenizer::vocab_size() const { return impl_->vocab_size; }

std::optional<int32_t> Tokenizer::TokenToId(absl::string_view token) const {
  const auto added = impl_->added_by_content.find(token);
  if (added != impl_->added_by_content.end()) return added->second;
  const auto it = impl_->p.model.vocab.find(token);
  if (it != impl_->p.model.vocab.end()) return it->second;
  return std::nullopt;
}

std::string Tokenizer::IdToToken(int32_t id) const {
  const auto added = impl_->added_by_id.find(id);
  if (added != impl_->added_by_id.end()) return impl_->p.added[added->second].content;
  if (id >= 0 && id < static_cast<int32_t>(impl_->p.model.id_to_token.size())) return impl_->p.model.id_to_token[id];
  return {};
}

std::vector<std::string> Tokenizer::Merges() const {
  std::vector<std::pair<int32_t, uint64_t>> by_rank;
  by_rank.reserve(impl_->p.model.merges.size());
  for (const auto& [key, value] : impl_->p.model.merges) by_rank.emplace_back(value.first, key);
  std::sort(by_rank.begin(), by_rank.end());
  std::vector<std::string> merges;
  merges.reserve(by_rank.size());
  for (const auto& [rank, key] : by_rank) {
    merges.push_back(absl::StrCat(IdToToken(static_cast<int32_t>(key >> 32)), " ",
                                  IdToToken(static_cast<int32_t>(key & 0xffffffffu))));
  }
  return merges;
}

bool Tokenizer::IsSpecial(int32_t id) const {
  const auto added = impl_->added_by_id.find(id);
  return added != impl_->added_by_id.end() && impl_->p.added[added->second].special;
}

std::optional<int32_t> Tokenizer::bos_id() const { return impl_->p.bos_id; }
std::optional<int32_t> Tokenizer::eos_id() const { return impl_->p.eos_id; }
std::optional<int32_t> Tokenizer::pad_id() const { return impl_->p.pad_id; }
bool Tokenizer::adds_bos() const {
  const auto& single = impl_->p.post_single;
  return !single.empty() && !single.front().is_sequence && impl_->p.bos_id &&
         std::find(single.front().ids.begin(), single.front().ids.end(), *impl_->p.bos_id) != single.front().ids.end();
}
const std::vector<AddedToken>& Tokenizer::added_tokens() const { return impl_->p.added; }

int32_t Tokenizer::AddSpecialToken(absl::string_view content) {
  if (const auto it = impl_->added_by_content.find(std::string(content)); it != impl_->added_by_content.end()) {
    return it->second;
  }
  if (const auto it = impl_->p.model.vocab.find(std::string(content)); it != impl_->p.model.vocab.end()) {
    // In the vocabulary already: HF makes it an added token with that id.
    AddedToken token;
    token.content = std::string(content);
    token.id = it->second;
    token.special = true;
    impl_->added_by_id[token.id] = impl_->p.added.size();
    impl_->added_by_content[token.content] = token.id;
    impl_->raw_trie.Insert(token.content, token.id);
    impl_->p.added.push_back(std::move(token));
    return it->second;
  }
  AddedToken token;
  token.content = std::string(content);
  token.id = impl_->vocab_size++;
  token.special = true;
  impl_->added_by_id[token.id] = impl_->p.added.size();
  impl_->added_by_content[token.content] = token.id;
  impl_->raw_trie.Insert(token.content, token.id);
  impl_->p.added.push_back(std::move(token));
  return impl_->vocab_size - 1;
}
absl::string_view Tokenizer::kind() const { return impl_->p.kind; }
const std::string& Tokenizer::chat_template_source() const { return impl_->p.chat_template; }
void Tokenizer::set_chat_template_source(std::string source) { impl_->p.chat_template = std::move(source); }

StreamDecoder::StreamDecoder(const Tokenizer& tokenizer, bool skip_special_tokens)
    : tokenizer_(tokenizer), skip_special_(skip_special_tokens) {}

std::string StreamDecoder::Push(int32_t id) {
  ids_.push_back(id);
  const std::string text = tokenizer_.Decode(ids_, skip_special_);
  // Hold back while the text ends in a replacement character: the next id may complete it.
  if (absl::EndsWith(text, "\xEF\xBF\xBD") || text.size() < emitted_bytes_) return {};
  std::string fresh = text.substr(emitted_bytes_);
  emitted_bytes_ = text.size();
  return fresh;
}

std::string StreamDecoder::Finish() {
  const std::string text = tokenizer_.Decode(ids_, skip_special_);
  if (text.size() <= emitted_bytes_) return {};
  std::string fresh = text.substr(emitted_bytes_);
  emitted_bytes_ = text.size();
  return fresh;
}

namespace detail {

absl::StatusOr<std::unique_ptr<Tokenizer>> Build(absl::string_view where, Pipeline pipeline) {
  auto impl = TokenizerAccess::NewImpl();
  impl->p = std::move(pipeline);
  Pipeline& p = impl->p;
  int32_t max_id = static_cast<int32_t>(p.model.id_to_token.size()) - 1;
  for (size_t i = 0; i < p.added.size(); ++i) {
    const AddedToken& t = p.added[i];
    if (t.id < 0) return absl::InvalidArgumentError(absl::StrCat(where, ": added token \"", t.content, "\" has id ", t.id));
    if (t.content.empty()) return absl::InvalidArgumentError(absl::StrCat(where, ": added token ", t.id, " is empty"));
    impl->added_by_id[t.id] = i;
    impl->added_by_content[t.content] = t.id;
    max_id = std::max(max_id, t.id);
  }
  // HF matches non-normalized tokens in the raw text, the others after normalizing.
  for (const AddedToken& t : p.added) {
    if (!t.normalized) {
      impl->raw_trie.Insert(t.content, t.id);
    } else {
      impl->normalized_trie.Insert(impl->NormalizeText(AText::Of(t.content, false)).s, t.id);
    }
  }
  impl->vocab_size = max_id + 1;
  for (const auto& [token, id] : p.model.vocab) {
    size_t pos = 0;
    if (token.empty()) continue;
    const char32_t c = NextCodePoint(token, &pos);
    if (pos == token.size()) impl->char_ids[c] = id;
  }
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof(name), "<0x%02X>", b);
    const auto it = p.model.vocab.find(name);
    p.model.byte_ids[b] = it == p.model.vocab.end() ? -1 : it->second;
  }
  for (const auto& step : p.pre_tokenizer) {
    if (step.kind == PreTokenizerStep::Kind::kByteLevel && step.use_regex && !impl->gpt2_regex) {
      LLMTRAIN_ASSIGN_OR_RETURN(auto regex, Regex::Compile(where, kGpt2Pattern));
      impl->gpt2_regex = std::move(regex);
    }
  }
  if (p.kind.empty()) {
    bool byte_level = false;
    for (const auto& step : p.pre_tokenizer) byte_level |= step.kind == PreTokenizerStep::Kind::kByteLevel;
    p.kind = byte_level ? "byte_level" : "sentencepiece";
  }
  return TokenizerAccess::Make(std::move(impl));
}

}  // namespace detail

}  // namespace llmtrain::tokenizer
