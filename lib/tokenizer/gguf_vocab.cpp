// A GGUF file's `tokenizer.ggml.*` metadata → the tokenizer transformers builds from it
// (transformers/integrations/gguf/gguf_tokenizer_mapping.py, v5). Supported: SentencePiece
// vocabularies ("llama") of the Gemma architectures, whose merges are recovered from the order of
// the tokens in the file.
#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "llmtrain/core/status.h"
#include "llmtrain/io/families.h"
#include "llmtrain/io/gguf.h"
#include "llmtrain/tokenizer/tokenizer.h"
#include "tokenizer/pipeline.h"

namespace llmtrain::tokenizer {
namespace {

constexpr int kTokenTypeControl = 3;      // llama.cpp LLAMA_TOKEN_TYPE_CONTROL
constexpr int kTokenTypeUserDefined = 4;  // LLAMA_TOKEN_TYPE_USER_DEFINED
const char* kMetaspace = "\xE2\x96\x81";  // ▁

size_t CodePoints(absl::string_view s) {
  size_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}

// transformers' `generate_merges(vocab, vocab_scores)` with scores given: every split of a token
// into two vocabulary entries is a merge; merges sort by the merged token's score (higher first),
// then by the longer left part, then the longer right part. Python's sort is stable, and the
// candidates of one token are ordered by the ids of their parts first.
std::vector<std::pair<std::string, std::string>> GenerateMerges(
    const std::vector<std::string>& order, const absl::flat_hash_map<std::string, int32_t>& vocab,
    const absl::flat_hash_map<std::string, double>& scores) {
  struct Candidate {
    const std::string* merged;
    size_t split;
    double score;
    size_t left_len, right_len;
  };
  std::vector<Candidate> all;
  for (const std::string& token : order) {
    std::vector<Candidate> local;
    // Python slices by code point.
    std::vector<size_t> boundaries;
    for (size_t i = 1; i < token.size(); ++i) {
      if ((static_cast<unsigned char>(token[i]) & 0xC0) != 0x80) boundaries.push_back(i);
    }
    for (size_t split : boundaries) {
      const absl::string_view left(token.data(), split), right(token.data() + split, token.size() - split);
      if (vocab.contains(left) && vocab.contains(right)) {
        local.push_back({&token, split, scores.at(token), CodePoints(left), CodePoints(right)});
      }
    }
    std::stable_sort(local.begin(), local.end(), [&](const Candidate& a, const Candidate& b) {
      const int32_t al = vocab.at(absl::string_view(a.merged->data(), a.split));
      const int32_t bl = vocab.at(absl::string_view(b.merged->data(), b.split));
      if (al != bl) return al < bl;
      return vocab.at(absl::string_view(a.merged->data() + a.split)) <
             vocab.at(absl::string_view(b.merged->data() + b.split));
    });
    all.insert(all.end(), local.begin(), local.end());
  }
  // sorted(key=(score, len(left), len(right)), reverse=True): descending and stable.
  std::stable_sort(all.begin(), all.end(), [](const Candidate& a, const Candidate& b) {
    if (a.score != b.score) return a.score > b.score;
    if (a.left_len != b.left_len) return a.left_len > b.left_len;
    return a.right_len > b.right_len;
  });
  std::vector<std::pair<std::string, std::string>> merges;
  merges.reserve(all.size());
  for (const Candidate& c : all) merges.emplace_back(c.merged->substr(0, c.split), c.merged->substr(c.split));
  return merges;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromGguf(const io::GgufFile& file) {
  const std::string where = absl::StrCat(file.path(), ": tokenizer metadata");
  auto get_string = [&](const char* key) -> const std::string* {
    const io::GgufValue* v = file.FindMetadata(key);
    return v == nullptr ? nullptr : v->AsString();
  };
  const std::string* model = get_string("tokenizer.ggml.model");
  const std::string* arch = get_string("general.architecture");
  if (model == nullptr) return absl::InvalidArgumentError(absl::StrCat(where, ": tokenizer.ggml.model is missing"));
  const std::string architecture = arch != nullptr ? *arch : "";
  const io::FamilyInfo* family = io::FindFamilyForGguf(architecture);
  if (*model != "llama" || family == nullptr || !family->gguf_vocabulary) {
    std::vector<std::string> loadable;
    for (const io::FamilyInfo* f : io::Families()) {
      if (f->gguf_vocabulary) loadable.push_back(f->gguf_architecture);
    }
    return absl::UnimplementedError(absl::StrCat(
        where, ": a \"", *model, "\" vocabulary of architecture \"", architecture,
        "\" cannot be loaded from GGUF (supported: the \"llama\" SentencePiece vocabulary of ",
        absl::StrJoin(loadable, ", "), "); use the model's tokenizer.json instead"));
  }
  const io::GgufValue* tokens_value = file.FindMetadata("tokenizer.ggml.tokens");
  if (tokens_value == nullptr || tokens_value->type != io::GgufValueType::kArray ||
      tokens_value->array_type != io::GgufValueType::kString || tokens_value->strings.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": tokenizer.ggml.tokens must be a non-empty string array"));
  }
  const std::vector<std::string>& original = tokens_value->strings;
  const io::GgufValue* types_value = file.FindMetadata("tokenizer.ggml.token_type");
  std::vector<int64_t> types;
  if (types_value != nullptr) {
    if (types_value->type != io::GgufValueType::kArray || types_value->array_size() != original.size()) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": tokenizer.ggml.token_type must be an array of ", original.size(), " integers"));
    }
    for (size_t i = 0; i < original.size(); ++i) {
      types.push_back(!types_value->ints.empty() ? types_value->ints[i] : static_cast<int64_t>(types_value->uints[i]));
    }
  }
  auto token_id = [&](const char* key) -> absl::StatusOr<std::optional<int32_t>> {
    const io::GgufValue* v = file.FindMetadata(key);
    if (v == nullptr) return std::optional<int32_t>();
    const auto id = v->AsInt();
    if (!id || *id < 0 || *id >= static_cast<int64_t>(original.size())) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": ", key, " is not a token id below ", original.size()));
    }
    return std::optional<int32_t>(static_cast<int32_t>(*id));
  };
  LLMTRAIN_ASSIGN_OR_RETURN(const auto bos, token_id("tokenizer.ggml.bos_token_id"));
  LLMTRAIN_ASSIGN_OR_RETURN(const auto eos, token_id("tokenizer.ggml.eos_token_id"));
  LLMTRAIN_ASSIGN_OR_RETURN(const auto unk, token_id("tokenizer.ggml.unknown_token_id"));
  LLMTRAIN_ASSIGN_OR_RETURN(const auto pad, token_id("tokenizer.ggml.padding_token_id"));
  bool add_bos = true, add_eos = false;  // llama.cpp's defaults for a SentencePiece vocabulary
  if (const io::GgufValue* v = file.FindMetadata("tokenizer.ggml.add_bos_token"); v && v->AsBool()) add_bos = *v->AsBool();
  if (const io::GgufValue* v = file.FindMetadata("tokenizer.ggml.add_eos_token"); v && v->AsBool()) add_eos = *v->AsBool();

  // Gemma files store tokens of two or more spaces as spaces; the tokenizer spells them "▁▁".
  std::vector<std::string> tokens = original;
  for (std::string& t : tokens) {
    if (t.find(' ') == std::string::npos || !detail::PythonStrip(t).empty()) continue;
    std::string respelled;
    for (size_t i = 0, n = CodePoints(t); i < n; ++i) respelled += kMetaspace;
    t = respelled;
  }

  detail::Pipeline p;
  detail::BpeModel& m = p.model;
  // dict(token → index): a repeated token keeps its first position in the order, the last index.
  std::vector<std::string> order;
  absl::flat_hash_map<std::string, double> scores;
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (!m.vocab.contains(tokens[i])) order.push_back(tokens[i]);
    m.vocab[tokens[i]] = static_cast<int32_t>(i);
    scores[tokens[i]] = -static_cast<double>(i);  // Gemma's merge order is the file order
  }
  m.id_to_token.assign(tokens.size(), std::string());
  for (const auto& [token, id] : m.vocab) m.id_to_token[id] = token;
  const auto merges = GenerateMerges(order, m.vocab, scores);
  m.merges.reserve(merges.size());
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const auto& [left, right] = merges[rank];
    const uint64_t key = (static_cast<uint64_t>(static_cast<uint32_t>(m.vocab.at(left))) << 32) |
                         static_cast<uint32_t>(m.vocab.at(right));
    m.merges.emplace(key, std::make_pair(static_cast<int32_t>(rank), m.vocab.at(left + right)));
  }
  m.byte_fallback = true;
  m.fuse_unk = true;
  // GemmaTokenizer's unk_token is the file's unknown token ("<unk>" when the file names none).
  const std::string unk_token = unk ? original[*unk] : "<unk>";
  if (const auto it = m.vocab.find(unk_token); it != m.vocab.end()) m.unk_id = it->second;

  // GemmaTokenizer: spaces → ▁, a Split on " " that the normalizer leaves nothing to split, and
  // the decoder back.
  detail::NormalizerStep replace;
  replace.kind = detail::NormalizerStep::Kind::kReplace;
  replace.pattern = " ";
  replace.content = kMetaspace;
  p.normalizer.push_back(replace);
  detail::PreTokenizerStep split;
  split.kind = detail::PreTokenizerStep::Kind::kSplit;
  split.literal = " ";
  split.behavior = detail::SplitBehavior::kMergedWithPrevious;
  p.pre_tokenizer.push_back(split);
  detail::DecoderStep d_replace;
  d_replace.kind = detail::DecoderStep::Kind::kReplace;
  d_replace.pattern = kMetaspace;
  d_replace.content = " ";
  detail::DecoderStep d_bytes;
  d_bytes.kind = detail::DecoderStep::Kind::kByteFallback;
  detail::DecoderStep d_fuse;
  d_fuse.kind = detail::DecoderStep::Kind::kFuse;
  p.decoder = {d_replace, d_bytes, d_fuse};

  // Added tokens: the named special tokens, then every CONTROL token (special) and every
  // USER_DEFINED one that is in the vocabulary (not special), all matched unnormalized.
  absl::flat_hash_map<int32_t, size_t> added_index;
  auto add = [&](const std::string& content, bool special) {
    const auto it = m.vocab.find(content);
    if (it == m.vocab.end()) return;
    if (added_index.contains(it->second)) return;
    AddedToken t;
    t.content = content;
    t.id = it->second;
    t.special = special;
    t.normalized = false;
    added_index[t.id] = p.added.size();
    p.added.push_back(std::move(t));
  };
  if (pad) add(original[*pad], true);
  if (eos) add(original[*eos], true);
  if (bos) add(original[*bos], true);
  add(unk_token, true);
  add("<mask>", true);  // GemmaTokenizer's default mask token
  for (size_t i = 0; i < types.size(); ++i) {
    if (types[i] == kTokenTypeControl) add(original[i], true);
  }
  for (size_t i = 0; i < types.size(); ++i) {
    if (types[i] == kTokenTypeUserDefined) add(original[i], false);
  }
  std::sort(p.added.begin(), p.added.end(), [](const AddedToken& a, const AddedToken& b) { return a.id < b.id; });

  if (bos) p.bos_id = m.vocab.at(original[*bos]);
  if (eos) p.eos_id = m.vocab.at(original[*eos]);
  if (pad) p.pad_id = m.vocab.at(original[*pad]);
  if (add_bos && p.bos_id) p.post_single.push_back({false, {*p.bos_id}});
  if (add_bos || add_eos) p.post_single.push_back({true, {}});
  if (add_eos && p.eos_id) p.post_single.push_back({false, {*p.eos_id}});
  p.kind = "sentencepiece";
  if (const std::string* tmpl = get_string("tokenizer.chat_template")) p.chat_template = *tmpl;
  return detail::Build(where, std::move(p));
}

}  // namespace llmtrain::tokenizer
