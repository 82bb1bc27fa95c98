// From records to training batches: tokenization with the chat template and the loss mask,
// truncation, right padding or packing, batches by example count or by token budget, and a loader
// whose position can be saved and restored exactly.
//
// Labels follow the HF convention: labels[t] is input_ids[t] where the loss is taken and -100
// elsewhere; the loss shifts them (position t predicts token t + 1). By default the loss is on
// the assistant tokens only (the reply and its end-of-turn marker), as the chat template marks
// them; plain text is trained on in full.
//
//   data::Collator collator(*tok, chat.get(), options);
//   data::DataLoader loader(*dataset, collator, {.seed = 42});
//   LLMTRAIN_ASSIGN_OR_RETURN(data::Batch batch, loader.Next());
//   auto position = loader.position();  // store in the checkpoint; loader.Seek(position) resumes
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "llmtrain/data/dataset.h"
#include "llmtrain/tokenizer/chat_template.h"
#include "llmtrain/tokenizer/tokenizer.h"

namespace llmtrain::data {

constexpr int64_t kIgnoreIndex = -100;

struct CollatorOptions {
  int64_t max_length = 2048;  ///< tokens per sequence
  /// Over-long examples: keep the first max_length tokens, or drop the example (reported).
  enum class Truncation { kRight, kDrop };
  Truncation truncation = Truncation::kRight;
  bool train_on_prompt = false;  ///< loss on every token, not only the assistant's
  bool add_eos_to_text = true;   ///< plain-text records end with the EOS id
  /// Several examples per sequence, position ids restarting at each, segment ids telling them
  /// apart (the model lets no token attend across segments), and no loss on an example's first
  /// token (it would be predicted from the previous example).
  bool packing = false;
  int64_t batch_size = 1;    ///< sequences per batch
  int64_t token_budget = 0;  ///< > 0: as many sequences as fit in B × T ≤ token_budget instead
};

/// InvalidArgument naming the field: max_length < 2, batch_size < 1, a negative token_budget.
absl::Status Validate(const CollatorOptions& options);

/// One tokenized example.
struct TokenizedExample {
  std::vector<int32_t> ids;
  std::vector<int32_t> labels;  ///< ids, or kIgnoreIndex where no loss is taken
  std::string where;
};

/// A batch, row-major (B, T), right-padded.
struct Batch {
  int64_t batch_size = 0;  ///< B
  int64_t seq_len = 0;     ///< T
  std::vector<int64_t> input_ids;       ///< pad id on padding
  std::vector<int64_t> attention_mask;  ///< 1 on tokens, 0 on padding
  std::vector<int64_t> position_ids;    ///< 0, 1, … per example (restarting within packed rows)
  /// 1, 2, … per example in a row, 0 on padding: pass it as the model's attention_mask (with
  /// position_ids) so that no token attends across examples
  std::vector<int64_t> segment_ids;
  std::vector<int64_t> labels;          ///< kIgnoreIndex where no loss is taken
  int64_t target_tokens = 0;            ///< labels that are not kIgnoreIndex (after the shift)
  std::vector<std::string> sources;     ///< "file:line" of each example in the batch
};

class Collator {
 public:
  /// `chat` renders conversations; it may be null only for plain-text data.
  Collator(const tokenizer::Tokenizer& tokenizer, const tokenizer::ChatTemplate* chat, CollatorOptions options);
  /// Tokens and labels of one example, truncated. An error says why the example cannot be used
  /// (no chat template, a template error, no target token left after truncation, dropped as too
  /// long); the loader reports it with the example's file:line and skips it.
  absl::StatusOr<TokenizedExample> Tokenize(const Example& example) const;
  /// One sequence per row: a row holds one example, or several when packing. Pads every row to
  /// the longest (packing: to max_length).
  Batch Collate(const std::vector<std::vector<TokenizedExample>>& rows) const;
  const CollatorOptions& options() const { return options_; }
  int64_t pad_id() const { return pad_id_; }

 private:
  const tokenizer::Tokenizer& tokenizer_;
  const tokenizer::ChatTemplate* chat_;
  CollatorOptions options_;
  int64_t pad_id_ = 0;
};

/// A DataLoader's order is its Sampler's, so its options are the sampler's (seed, shuffle, rank,
/// world_size), checked by Validate(const SamplerOptions&).
using LoaderOptions = SamplerOptions;

/// Batches in a deterministic order. position() after a batch, given to Seek() in a new loader
/// over the same data, continues with exactly the batches an uninterrupted run would produce.
class DataLoader {
 public:
  DataLoader(const Dataset& dataset, const Collator& collator, const LoaderOptions& options);
  /// The next batch (epochs follow each other). Errors only when no example at all can be used.
  absl::StatusOr<Batch> Next();
  Sampler::Position position() const { return sampler_.position(); }
  void Seek(const Sampler::Position& position) { sampler_.Seek(position); }
  /// Examples skipped so far ("file:line: reason"), e.g. no target left after truncation.
  const std::vector<std::string>& skipped() const { return skipped_; }
  int64_t epoch() const { return sampler_.position().epoch; }

 private:
  const Dataset& dataset_;
  const Collator& collator_;
  Sampler sampler_;
  std::vector<std::string> skipped_;
  std::vector<bool> skipped_index_;
};

}  // namespace llmtrain::data
