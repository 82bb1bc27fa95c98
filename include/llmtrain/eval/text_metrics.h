// Generation metrics of predictions against references, computed as the libraries people report
// them with compute them (issue 16): ROUGE as Google's `rouge_score` (RougeScorer with
// use_stemmer=True: its tokenizer and NLTK's Porter stemmer), BLEU and chrF as `sacrebleu`'s
// corpus scores with their defaults (13a tokenization, exponential smoothing; character 6-grams,
// beta 2). Inputs are UTF-8 (invalid bytes are read as U+FFFD, as Python decodes them with
// "replace"); the scales are the libraries' (ROUGE 0–1, BLEU and chrF 0–100).
//
//   eval::RougeScores r = eval::Rouge("the cat sat", "a cat sat down");          // r.rougeL.fmeasure
//   eval::BleuScore b = eval::CorpusBleu({"a cat sat"}, {{"the cat sat", "a cat sat"}});
//   double chrf = eval::CorpusChrf({"a cat sat"}, {{"the cat sat"}});
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"

namespace llmtrain::eval {

/// NLTK's PorterStemmer().stem (its default mode, NLTK_EXTENSIONS) of a lowercase ASCII word:
/// M. F. Porter's five steps with NLTK's irregular forms ("skies" → "sky", "dying" → "die") and
/// rule changes ("ies"/"ied" on 4-letter words, "y" → "i" after a consonant only, "alli",
/// "fulli", "logi").
std::string PorterStem(absl::string_view word);

/// rouge_score's tokens: the text lowercased (Python's str.lower), every run of characters outside
/// [a-z0-9] a separator, and with `stem` each token longer than 3 characters Porter-stemmed.
std::vector<std::string> RougeTokens(absl::string_view text, bool stem);

struct RougeScore {
  double precision = 0, recall = 0, fmeasure = 0;
};
struct RougeScores {
  RougeScore rouge1, rouge2, rougeL;
};

/// RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer).score(reference, prediction): n-gram
/// overlap (clipped counts) for ROUGE-1/2, the longest common subsequence for ROUGE-L; precision
/// over the prediction's count, recall over the reference's, F = 2PR / (P + R) (0 when both are 0).
RougeScores Rouge(absl::string_view reference, absl::string_view prediction, bool use_stemmer = true);
/// score_multi: per type, the score against the reference with the highest F (the first of equals).
/// No references: all zero.
RougeScores RougeMulti(const std::vector<std::string>& references, absl::string_view prediction,
                       bool use_stemmer = true);

/// sacrebleu's "13a" tokenization (mteval-v13a.pl): drops "<skipped>" and "-\n", newlines become
/// spaces, four HTML entities are unescaped, punctuation and symbols are split off, periods and
/// commas are split unless between digits, a hyphen after a digit is split; whitespace runs are
/// then single spaces (CorpusBleu first removes trailing whitespace, as sacrebleu's BLEU does).
std::string Tokenize13a(absl::string_view line);

struct BleuScore {
  double score = 0;                   ///< 0–100
  std::array<int64_t, 4> counts{};    ///< matched n-grams, n = 1…4 (clipped by the references)
  std::array<int64_t, 4> totals{};    ///< the predictions' n-grams
  std::array<double, 4> precisions{}; ///< 0–100, after smoothing
  double bp = 1;                      ///< brevity penalty
  int64_t sys_len = 0, ref_len = 0;   ///< tokens of the predictions, and of each one's closest reference
};

/// sacrebleu.corpus_bleu(predictions, reference streams) with its defaults: `references[i]` holds
/// the references of predictions[i] (any number, none read as one empty reference; merged by the
/// maximum count of each n-gram; the
/// length used is the closest reference's, the shorter of two equally close). Exponential
/// smoothing of zero precisions (mteval's), geometric mean of the 4 precisions times
/// BP = exp(1 − ref_len / sys_len) when sys_len < ref_len; 0 when no unigram matches.
BleuScore CorpusBleu(const std::vector<std::string>& predictions,
                     const std::vector<std::vector<std::string>>& references);

/// One prediction's share of corpus BLEU: its n-gram matches and totals and its length and the
/// closest reference's. Corpus BLEU is BleuFromStats of the sum over predictions, so a resample of
/// the predictions (the bootstrap of eval/compare.h) is scored from sums without tokenizing again.
struct BleuStats {
  std::array<int64_t, 4> counts{}, totals{};
  int64_t sys_len = 0, ref_len = 0;
  BleuStats& operator+=(const BleuStats& other);
};
BleuStats SentenceBleuStats(absl::string_view prediction, const std::vector<std::string>& references);
BleuScore BleuFromStats(const BleuStats& summed);

/// One prediction's share of corpus chrF (the statistics of its best reference); empty values
/// score 0.
struct ChrfStats {
  std::vector<int64_t> values;
  ChrfStats& operator+=(const ChrfStats& other);
};
ChrfStats SentenceChrfStats(absl::string_view prediction, const std::vector<std::string>& references);
double ChrfFromStats(const ChrfStats& summed);

/// sacrebleu.corpus_chrf with its defaults (chrF2: character n-grams of orders 1…6 with
/// whitespace removed, no word n-grams, beta 2): per prediction the statistics of its best
/// reference by sentence chrF, summed over the corpus; then the precision and recall averaged
/// over the orders both sides have n-grams of, F_beta on those, times 100.
double CorpusChrf(const std::vector<std::string>& predictions, const std::vector<std::vector<std::string>>& references);

/// Whether the prediction equals one of the references once leading and trailing whitespace
/// (Python's str.strip) is removed from both.
bool ExactMatch(absl::string_view prediction, const std::vector<std::string>& references);

}  // namespace llmtrain::eval
