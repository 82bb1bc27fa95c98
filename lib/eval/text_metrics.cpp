#include "llmtrain/eval/text_metrics.h"

#include <algorithm>
#include <cmath>
#include <functional>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/match.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "tokenizer/unicode.h"

namespace llmtrain::eval {
namespace {

namespace unicode = tokenizer::detail;

// ---- the Porter stemmer (NLTK's NLTK_EXTENSIONS mode) ----

bool IsVowel(char c) { return c == 'a' || c == 'e' || c == 'i' || c == 'o' || c == 'u'; }

// Whether each letter is a consonant: not a vowel, and a "y" only at the start or after a vowel
// (so "y" alternates along a run of them).
std::vector<bool> ConsonantFlags(absl::string_view w) {
  std::vector<bool> flags(w.size());
  for (size_t i = 0; i < w.size(); ++i) {
    flags[i] = IsVowel(w[i]) ? false : w[i] == 'y' ? (i == 0 ? true : !flags[i - 1]) : true;
  }
  return flags;
}

bool IsConsonant(absl::string_view w, size_t i) { return ConsonantFlags(w.substr(0, i + 1))[i]; }

// m in [C](VC)^m[V]: the number of vowel-consonant transitions.
int Measure(absl::string_view stem) {
  const std::vector<bool> c = ConsonantFlags(stem);
  int m = 0;
  for (size_t i = 0; i + 1 < c.size(); ++i) m += !c[i] && c[i + 1];
  return m;
}

bool ContainsVowel(absl::string_view stem) {
  const std::vector<bool> c = ConsonantFlags(stem);
  return std::any_of(c.begin(), c.end(), [](bool consonant) { return !consonant; });
}

bool EndsDoubleConsonant(absl::string_view w) {
  return w.size() >= 2 && w[w.size() - 1] == w[w.size() - 2] && IsConsonant(w, w.size() - 1);
}

// *o: consonant-vowel-consonant, the last not w, x or y; NLTK also takes a two-letter
// vowel-consonant word.
bool EndsCvc(absl::string_view w) {
  const size_t n = w.size();
  if (n >= 3 && IsConsonant(w, n - 3) && !IsConsonant(w, n - 2) && IsConsonant(w, n - 1) && w[n - 1] != 'w' &&
      w[n - 1] != 'x' && w[n - 1] != 'y') {
    return true;
  }
  return n == 2 && !IsConsonant(w, 0) && IsConsonant(w, 1);
}

using Condition = std::function<bool(absl::string_view stem)>;
struct Rule {
  absl::string_view suffix, replacement;
  Condition condition;  // null: always
};

// The first rule whose suffix the word ends with decides: its replacement when its condition
// holds on the stem, else the word unchanged.
std::string ApplyRules(const std::string& word, const std::vector<Rule>& rules) {
  for (const Rule& rule : rules) {
    if (!absl::EndsWith(word, rule.suffix)) continue;
    const absl::string_view stem = absl::string_view(word).substr(0, word.size() - rule.suffix.size());
    if (!rule.condition || rule.condition(stem)) return absl::StrCat(stem, rule.replacement);
    return word;
  }
  return word;
}

Condition PositiveMeasure() {
  return [](absl::string_view stem) { return Measure(stem) > 0; };
}

std::string Step1a(const std::string& w) {
  if (w.size() == 4 && absl::EndsWith(w, "ies")) return w.substr(0, 1) + "ie";
  return ApplyRules(w, {{"sses", "ss", nullptr}, {"ies", "i", nullptr}, {"ss", "ss", nullptr}, {"s", "", nullptr}});
}

std::string Step1b(const std::string& w) {
  if (absl::EndsWith(w, "ied")) return w.substr(0, w.size() - 3) + (w.size() == 4 ? "ie" : "i");
  if (absl::EndsWith(w, "eed")) {
    const std::string stem = w.substr(0, w.size() - 3);
    return Measure(stem) > 0 ? stem + "ee" : w;
  }
  std::string stem;
  bool removed = false;
  for (absl::string_view suffix : {"ed", "ing"}) {
    if (absl::EndsWith(w, suffix) && ContainsVowel(absl::string_view(w).substr(0, w.size() - suffix.size()))) {
      stem = w.substr(0, w.size() - suffix.size());
      removed = true;
      break;
    }
  }
  if (!removed) return w;
  if (absl::EndsWith(stem, "at") || absl::EndsWith(stem, "bl") || absl::EndsWith(stem, "iz")) return stem + "e";
  if (EndsDoubleConsonant(stem)) {
    const char last = stem.back();
    return last != 'l' && last != 's' && last != 'z' ? stem.substr(0, stem.size() - 1) : stem;
  }
  return Measure(stem) == 1 && EndsCvc(stem) ? stem + "e" : stem;
}

std::string Step1c(const std::string& w) {
  return ApplyRules(w, {{"y", "i", [](absl::string_view stem) {
                           return stem.size() > 1 && IsConsonant(stem, stem.size() - 1);
                         }}});
}

std::string Step2(const std::string& w) {
  if (absl::EndsWith(w, "alli") && Measure(absl::string_view(w).substr(0, w.size() - 4)) > 0) {
    return Step2(w.substr(0, w.size() - 4) + "al");
  }
  const Condition m = PositiveMeasure();
  const std::string word = w;
  return ApplyRules(w, {{"ational", "ate", m},
                        {"tional", "tion", m},
                        {"enci", "ence", m},
                        {"anci", "ance", m},
                        {"izer", "ize", m},
                        {"bli", "ble", m},
                        {"alli", "al", m},
                        {"entli", "ent", m},
                        {"eli", "e", m},
                        {"ousli", "ous", m},
                        {"ization", "ize", m},
                        {"ation", "ate", m},
                        {"ator", "ate", m},
                        {"alism", "al", m},
                        {"iveness", "ive", m},
                        {"fulness", "ful", m},
                        {"ousness", "ous", m},
                        {"aliti", "al", m},
                        {"iviti", "ive", m},
                        {"biliti", "ble", m},
                        {"fulli", "ful", m},
                        // NLTK measures the word without "ogi" here, not the stem.
                        {"logi", "log", [&word](absl::string_view) {
                           return Measure(absl::string_view(word).substr(0, word.size() - 3)) > 0;
                         }}});
}

std::string Step3(const std::string& w) {
  const Condition m = PositiveMeasure();
  return ApplyRules(w, {{"icate", "ic", m},
                        {"ative", "", m},
                        {"alize", "al", m},
                        {"iciti", "ic", m},
                        {"ical", "ic", m},
                        {"ful", "", m},
                        {"ness", "", m}});
}

std::string Step4(const std::string& w) {
  const Condition m = [](absl::string_view stem) { return Measure(stem) > 1; };
  const Condition ion = [](absl::string_view stem) {
    return Measure(stem) > 1 && (stem.back() == 's' || stem.back() == 't');
  };
  return ApplyRules(w, {{"al", "", m},   {"ance", "", m}, {"ence", "", m}, {"er", "", m},   {"ic", "", m},
                        {"able", "", m}, {"ible", "", m}, {"ant", "", m},  {"ement", "", m}, {"ment", "", m},
                        {"ent", "", m},  {"ion", "", ion}, {"ou", "", m},  {"ism", "", m},  {"ate", "", m},
                        {"iti", "", m},  {"ous", "", m},  {"ive", "", m},  {"ize", "", m}});
}

std::string Step5a(const std::string& w) {
  if (!absl::EndsWith(w, "e")) return w;
  const std::string stem = w.substr(0, w.size() - 1);
  const int m = Measure(stem);
  return m > 1 || (m == 1 && !EndsCvc(stem)) ? stem : w;
}

std::string Step5b(const std::string& w) {
  if (absl::EndsWith(w, "ll") && Measure(absl::string_view(w).substr(0, w.size() - 1)) > 1) {
    return w.substr(0, w.size() - 1);
  }
  return w;
}

// ---- shared text helpers ----

// Python's str.split(): the runs between whitespace (str.isspace), as views of `text` (valid UTF-8).
std::vector<absl::string_view> PythonSplit(absl::string_view text) {
  std::vector<absl::string_view> out;
  size_t pos = 0, start = std::string::npos;
  while (pos < text.size()) {
    const size_t here = pos;
    const char32_t c = unicode::NextCodePoint(text, &pos);
    if (unicode::IsPythonSpace(c)) {
      if (start != std::string::npos) out.push_back(text.substr(start, here - start));
      start = std::string::npos;
    } else if (start == std::string::npos) {
      start = here;
    }
  }
  if (start != std::string::npos) out.push_back(text.substr(start));
  return out;
}

// Python's str.rstrip().
absl::string_view PythonRstrip(absl::string_view text) {
  size_t end = 0, pos = 0;
  while (pos < text.size()) {
    const char32_t c = unicode::NextCodePoint(text, &pos);
    if (!unicode::IsPythonSpace(c)) end = pos;
  }
  return text.substr(0, end);
}

// Every n-gram of orders 1 … max_order of `tokens`, keyed by its tokens joined with \x1f (which
// no token holds: it is whitespace to Python), with its count.
using Counts = absl::flat_hash_map<std::string, int64_t>;
std::vector<Counts> TokenNgrams(const std::vector<std::string>& tokens, int max_order) {
  std::vector<Counts> out(static_cast<size_t>(max_order));
  for (int n = 1; n <= max_order; ++n) {
    for (size_t i = 0; i + static_cast<size_t>(n) <= tokens.size(); ++i) {
      std::string key = tokens[i];
      for (int k = 1; k < n; ++k) absl::StrAppend(&key, "\x1f", tokens[i + static_cast<size_t>(k)]);
      ++out[static_cast<size_t>(n - 1)][key];
    }
  }
  return out;
}

double FMeasure(double precision, double recall) {
  return precision + recall > 0 ? 2 * precision * recall / (precision + recall) : 0.0;
}

// The n-grams of `a` and of `b`, and those they share (each counted at most as often as in both).
struct Overlap {
  int64_t a_total = 0, b_total = 0, shared = 0;
};
Overlap CountOverlap(const Counts& a, const Counts& b) {
  Overlap o;
  for (const auto& [ngram, count] : a) {
    o.a_total += count;
    const auto it = b.find(ngram);
    if (it != b.end()) o.shared += std::min(count, it->second);
  }
  for (const auto& [ngram, count] : b) o.b_total += count;
  return o;
}

RougeScore ScoreNgrams(const Counts& target, const Counts& prediction) {
  const Overlap o = CountOverlap(target, prediction);
  const int64_t overlap = o.shared, target_count = o.a_total, prediction_count = o.b_total;
  RougeScore s;
  s.precision = static_cast<double>(overlap) / static_cast<double>(std::max<int64_t>(prediction_count, 1));
  s.recall = static_cast<double>(overlap) / static_cast<double>(std::max<int64_t>(target_count, 1));
  s.fmeasure = FMeasure(s.precision, s.recall);
  return s;
}

RougeScore ScoreLcs(const std::vector<std::string>& target, const std::vector<std::string>& prediction) {
  if (target.empty() || prediction.empty()) return {};
  std::vector<int64_t> previous(prediction.size() + 1, 0), row(prediction.size() + 1, 0);
  for (size_t i = 1; i <= target.size(); ++i) {
    for (size_t j = 1; j <= prediction.size(); ++j) {
      row[j] = target[i - 1] == prediction[j - 1] ? previous[j - 1] + 1 : std::max(previous[j], row[j - 1]);
    }
    std::swap(previous, row);
  }
  const double lcs = static_cast<double>(previous.back());
  RougeScore s;
  s.precision = lcs / static_cast<double>(prediction.size());
  s.recall = lcs / static_cast<double>(target.size());
  s.fmeasure = FMeasure(s.precision, s.recall);
  return s;
}

// ---- chrF ----

constexpr int kChrfOrder = 6;
constexpr double kChrfBeta = 2.0;

// Character n-grams of orders 1 … 6 of the text with its whitespace removed, by code point.
std::vector<Counts> CharNgrams(absl::string_view text) {
  std::string joined;
  for (absl::string_view word : PythonSplit(text)) absl::StrAppend(&joined, word);
  std::vector<size_t> offsets;  // where each code point starts, and the end
  for (size_t pos = 0; pos < joined.size();) {
    offsets.push_back(pos);
    unicode::NextCodePoint(joined, &pos);
  }
  offsets.push_back(joined.size());
  const size_t chars = offsets.size() - 1;
  std::vector<Counts> out(kChrfOrder);
  for (size_t n = 1; n <= static_cast<size_t>(kChrfOrder); ++n) {
    for (size_t i = 0; i + n <= chars; ++i) ++out[n - 1][joined.substr(offsets[i], offsets[i + n] - offsets[i])];
  }
  return out;
}

// sacrebleu's CHRF._compute_f_score without eps smoothing: stats are (hyp, ref, match) per order.
double ChrfFromStats(const std::vector<int64_t>& stats) {
  const double factor = kChrfBeta * kChrfBeta;
  double avg_precision = 0, avg_recall = 0;
  int effective_order = 0;
  for (int i = 0; i < kChrfOrder; ++i) {
    const int64_t hyp = stats[static_cast<size_t>(3 * i)], ref = stats[static_cast<size_t>(3 * i + 1)],
                  match = stats[static_cast<size_t>(3 * i + 2)];
    if (hyp > 0 && ref > 0) {
      avg_precision += static_cast<double>(match) / static_cast<double>(hyp);
      avg_recall += static_cast<double>(match) / static_cast<double>(ref);
      ++effective_order;
    }
  }
  if (effective_order == 0) return 0.0;
  avg_precision /= effective_order;
  avg_recall /= effective_order;
  if (avg_precision + avg_recall == 0) return 0.0;
  return 100 * ((1 + factor) * avg_precision * avg_recall / (factor * avg_precision + avg_recall));
}

std::vector<std::string> OrEmpty(const std::vector<std::string>& references) {
  return references.empty() ? std::vector<std::string>{""} : references;
}

}  // namespace

std::string PorterStem(absl::string_view word_view) {
  const std::string word(word_view);
  static const absl::flat_hash_map<std::string, std::string>* const kIrregular =
      new absl::flat_hash_map<std::string, std::string>{
          {"sky", "sky"},         {"skies", "sky"},      {"dying", "die"},           {"lying", "lie"},
          {"tying", "tie"},       {"news", "news"},      {"innings", "inning"},      {"inning", "inning"},
          {"outings", "outing"},  {"outing", "outing"},  {"cannings", "canning"},    {"canning", "canning"},
          {"howe", "howe"},       {"proceed", "proceed"}, {"exceed", "exceed"},      {"succeed", "succeed"}};
  if (const auto it = kIrregular->find(word); it != kIrregular->end()) return it->second;
  if (word.size() <= 2) return word;
  return Step5b(Step5a(Step4(Step3(Step2(Step1c(Step1b(Step1a(word))))))));
}

std::vector<std::string> RougeTokens(absl::string_view text_view, bool stem) {
  const std::string text = unicode::ToValidUtf8(text_view);
  std::vector<std::string> tokens;
  std::string current;
  const auto end_token = [&] {
    if (current.empty()) return;
    tokens.push_back(stem && current.size() > 3 ? PorterStem(current) : current);
    current.clear();
  };
  for (size_t pos = 0; pos < text.size();) {
    const char32_t c = unicode::NextCodePoint(text, &pos);
    if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9')) {
      current.push_back(static_cast<char>(c));
    } else if (c >= 'A' && c <= 'Z') {
      current.push_back(static_cast<char>(c - 'A' + 'a'));
    } else if (c == 0x212A) {  // KELVIN SIGN: lowercases to "k"
      current.push_back('k');
    } else if (c == 0x130) {  // İ: lowercases to "i" + U+0307, which then separates
      current.push_back('i');
      end_token();
    } else {  // no other character lowercases to anything in [a-z0-9]
      end_token();
    }
  }
  end_token();
  // Stems are [a-z0-9]+ like the tokens, but rouge_score drops any that are not.
  tokens.erase(std::remove_if(tokens.begin(), tokens.end(), [](const std::string& t) { return t.empty(); }),
               tokens.end());
  return tokens;
}

RougeScores Rouge(absl::string_view reference, absl::string_view prediction, bool use_stemmer) {
  const std::vector<std::string> target = RougeTokens(reference, use_stemmer);
  const std::vector<std::string> predicted = RougeTokens(prediction, use_stemmer);
  const std::vector<Counts> t = TokenNgrams(target, 2), p = TokenNgrams(predicted, 2);
  RougeScores s;
  s.rouge1 = ScoreNgrams(t[0], p[0]);
  s.rouge2 = ScoreNgrams(t[1], p[1]);
  s.rougeL = ScoreLcs(target, predicted);
  return s;
}

RougeScores RougeMulti(const std::vector<std::string>& references, absl::string_view prediction, bool use_stemmer) {
  RougeScores best;
  bool first = true;
  for (const std::string& reference : references) {
    const RougeScores s = Rouge(reference, prediction, use_stemmer);
    // np.argmax: the first of equal maxima.
    if (first || s.rouge1.fmeasure > best.rouge1.fmeasure) best.rouge1 = s.rouge1;
    if (first || s.rouge2.fmeasure > best.rouge2.fmeasure) best.rouge2 = s.rouge2;
    if (first || s.rougeL.fmeasure > best.rougeL.fmeasure) best.rougeL = s.rougeL;
    first = false;
  }
  return best;
}

std::string Tokenize13a(absl::string_view line_view) {
  std::string line = unicode::ToValidUtf8(line_view);
  line = absl::StrReplaceAll(line, {{"<skipped>", ""}});
  line = absl::StrReplaceAll(line, {{"-\n", ""}});
  line = absl::StrReplaceAll(line, {{"\n", " "}});
  if (absl::StrContains(line, "&")) {
    // One after the other, as Python's chained str.replace: "&amp;lt;" ends as "<".
    for (const auto& [from, to] : {std::pair<const char*, const char*>{"&quot;", "\""},
                                   {"&amp;", "&"}, {"&lt;", "<"}, {"&gt;", ">"}}) {
      line = absl::StrReplaceAll(line, {{from, to}});
    }
  }
  line = absl::StrCat(" ", line, " ");
  // The four regular expressions of sacrebleu's TokenizerRegexp, each a left-to-right pass of
  // non-overlapping matches. They are run on bytes: each class is ASCII or its complement, and a
  // character outside ASCII never takes part in a match except as [^0-9], where matching its last
  // byte (before) or its first byte (after) inserts the same spaces.
  const auto symbol = [](unsigned char c) {
    return (c >= '{' && c <= '~') || (c >= '[' && c <= '`') || (c >= ' ' && c <= '&') || (c >= '(' && c <= '+') ||
           (c >= ':' && c <= '@') || c == '/';
  };
  const auto digit = [](unsigned char c) { return c >= '0' && c <= '9'; };
  const auto period = [](unsigned char c) { return c == '.' || c == ','; };
  std::string a;
  for (const char c : line) {
    if (symbol(static_cast<unsigned char>(c))) {
      a.push_back(' ');
      a.push_back(c);
      a.push_back(' ');
    } else {
      a.push_back(c);
    }
  }
  std::string b;  // ([^0-9])([\.,]) → "\1 \2 "
  for (size_t i = 0; i < a.size();) {
    if (i + 1 < a.size() && !digit(static_cast<unsigned char>(a[i])) && period(static_cast<unsigned char>(a[i + 1]))) {
      absl::StrAppend(&b, absl::string_view(&a[i], 1), " ", absl::string_view(&a[i + 1], 1), " ");
      i += 2;
    } else {
      b.push_back(a[i++]);
    }
  }
  std::string c3;  // ([\.,])([^0-9]) → " \1 \2"
  for (size_t i = 0; i < b.size();) {
    if (i + 1 < b.size() && period(static_cast<unsigned char>(b[i])) && !digit(static_cast<unsigned char>(b[i + 1]))) {
      absl::StrAppend(&c3, " ", absl::string_view(&b[i], 1), " ", absl::string_view(&b[i + 1], 1));
      i += 2;
    } else {
      c3.push_back(b[i++]);
    }
  }
  std::string d;  // ([0-9])(-) → "\1 \2 "
  for (size_t i = 0; i < c3.size();) {
    if (i + 1 < c3.size() && digit(static_cast<unsigned char>(c3[i])) && c3[i + 1] == '-') {
      absl::StrAppend(&d, absl::string_view(&c3[i], 1), " - ");
      i += 2;
    } else {
      d.push_back(c3[i++]);
    }
  }
  return absl::StrJoin(PythonSplit(d), " ");
}

BleuStats SentenceBleuStats(absl::string_view prediction, const std::vector<std::string>& references) {
  constexpr int kOrder = 4;
  const auto tokens_of = [](absl::string_view text) {
    const std::string tokenized = Tokenize13a(PythonRstrip(unicode::ToValidUtf8(text)));
    std::vector<std::string> tokens;
    for (absl::string_view t : PythonSplit(tokenized)) tokens.emplace_back(t);
    return tokens;
  };
  BleuStats s;
  std::vector<Counts> merged(kOrder);
  std::vector<int64_t> ref_lens;
  for (const std::string& ref : OrEmpty(references)) {
    const std::vector<std::string> tokens = tokens_of(ref);
    ref_lens.push_back(static_cast<int64_t>(tokens.size()));
    const std::vector<Counts> ngrams = TokenNgrams(tokens, kOrder);
    for (int n = 0; n < kOrder; ++n) {
      for (const auto& [ngram, count] : ngrams[static_cast<size_t>(n)]) {
        int64_t& m = merged[static_cast<size_t>(n)][ngram];
        m = std::max(m, count);
      }
    }
  }
  const std::vector<std::string> hyp = tokens_of(prediction);
  const int64_t hyp_len = static_cast<int64_t>(hyp.size());
  int64_t closest_diff = -1, closest_len = -1;
  for (const int64_t len : ref_lens) {
    const int64_t diff = std::abs(hyp_len - len);
    if (closest_diff == -1 || diff < closest_diff) {
      closest_diff = diff;
      closest_len = len;
    } else if (diff == closest_diff && len < closest_len) {
      closest_len = len;
    }
  }
  s.sys_len = hyp_len;
  s.ref_len = closest_len;
  const std::vector<Counts> ngrams = TokenNgrams(hyp, kOrder);
  for (int n = 0; n < kOrder; ++n) {
    for (const auto& [ngram, count] : ngrams[static_cast<size_t>(n)]) {
      s.totals[static_cast<size_t>(n)] += count;
      const auto it = merged[static_cast<size_t>(n)].find(ngram);
      if (it != merged[static_cast<size_t>(n)].end()) s.counts[static_cast<size_t>(n)] += std::min(count, it->second);
    }
  }
  return s;
}

BleuStats& BleuStats::operator+=(const BleuStats& o) {
  for (size_t n = 0; n < counts.size(); ++n) {
    counts[n] += o.counts[n];
    totals[n] += o.totals[n];
  }
  sys_len += o.sys_len;
  ref_len += o.ref_len;
  return *this;
}

BleuScore BleuFromStats(const BleuStats& stats) {
  constexpr int kOrder = 4;
  BleuScore s;
  s.counts = stats.counts;
  s.totals = stats.totals;
  s.sys_len = stats.sys_len;
  s.ref_len = stats.ref_len;
  const std::array<int64_t, kOrder>& correct = stats.counts;
  const std::array<int64_t, kOrder>& total = stats.totals;
  if (s.sys_len < s.ref_len) {
    s.bp = s.sys_len > 0 ? std::exp(1 - static_cast<double>(s.ref_len) / static_cast<double>(s.sys_len)) : 0.0;
  }
  if (std::all_of(correct.begin(), correct.end(), [](int64_t c) { return c == 0; })) return s;  // score 0
  // sacrebleu's compute_bleu with smooth_method "exp": each order with no match gets
  // 100 / (2^k · total), k counting such orders; an order with no n-grams ends the loop, leaving
  // it and the rest at 0 (whose log is floored at -9999999999).
  double smooth = 1.0;
  for (int n = 0; n < kOrder; ++n) {
    const size_t k = static_cast<size_t>(n);
    if (total[k] == 0) break;
    if (correct[k] == 0) {
      smooth *= 2;
      s.precisions[k] = 100.0 / (smooth * static_cast<double>(total[k]));
    } else {
      s.precisions[k] = 100.0 * static_cast<double>(correct[k]) / static_cast<double>(total[k]);
    }
  }
  double log_sum = 0;
  for (const double p : s.precisions) log_sum += p == 0.0 ? -9999999999.0 : std::log(p);
  s.score = s.bp * std::exp(log_sum / kOrder);
  return s;
}

BleuScore CorpusBleu(const std::vector<std::string>& predictions,
                     const std::vector<std::vector<std::string>>& references) {
  BleuStats total;
  for (size_t i = 0; i < predictions.size(); ++i) {
    total += SentenceBleuStats(predictions[i], i < references.size() ? references[i] : std::vector<std::string>{});
  }
  return BleuFromStats(total);
}

ChrfStats SentenceChrfStats(absl::string_view prediction, const std::vector<std::string>& references) {
  const std::vector<Counts> hyp = CharNgrams(unicode::ToValidUtf8(prediction));
  ChrfStats best;
  double best_f = -1.0;
  for (const std::string& reference : OrEmpty(references)) {
    const std::vector<Counts> ref = CharNgrams(unicode::ToValidUtf8(reference));
    ChrfStats stats;
    for (int n = 0; n < kChrfOrder; ++n) {
      const Counts& h = hyp[static_cast<size_t>(n)];
      const Counts& r = ref[static_cast<size_t>(n)];
      const Overlap o = CountOverlap(h, r);
      // An order the reference has no n-grams of counts none of the prediction's either.
      stats.values.insert(stats.values.end(), {r.empty() ? 0 : o.a_total, o.b_total, o.shared});
    }
    const double f = ChrfFromStats(stats.values);
    if (f > best_f) {
      best_f = f;
      best = stats;
    }
  }
  return best;
}

ChrfStats& ChrfStats::operator+=(const ChrfStats& o) {
  if (values.empty()) values.assign(o.values.size(), 0);
  for (size_t k = 0; k < values.size() && k < o.values.size(); ++k) values[k] += o.values[k];
  return *this;
}

double ChrfFromStats(const ChrfStats& stats) {
  if (stats.values.empty()) return 0.0;
  return ChrfFromStats(stats.values);
}

double CorpusChrf(const std::vector<std::string>& predictions, const std::vector<std::vector<std::string>>& references) {
  ChrfStats corpus;
  corpus.values.assign(3 * kChrfOrder, 0);
  for (size_t i = 0; i < predictions.size(); ++i) {
    corpus += SentenceChrfStats(predictions[i], i < references.size() ? references[i] : std::vector<std::string>{});
  }
  return ChrfFromStats(corpus);
}

bool ExactMatch(absl::string_view prediction, const std::vector<std::string>& references) {
  const std::string p = unicode::ToValidUtf8(prediction);
  const absl::string_view stripped = unicode::PythonStrip(p);
  return std::any_of(references.begin(), references.end(), [&](const std::string& r) {
    const std::string valid = unicode::ToValidUtf8(r);
    return unicode::PythonStrip(valid) == stripped;
  });
}

}  // namespace llmtrain::eval
