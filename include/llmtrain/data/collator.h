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
#include "llmtrain/data/image.h"
#include "llmtrain/tokenizer/chat_template.h"
#include "llmtrain/tokenizer/tokenizer.h"

namespace llmtrain::data {

constexpr int64_t kIgnoreIndex = -100;

/// Images in conversations, for an image+text model (Gemma 3). Each image placeholder the chat
/// template writes ("<start_of_image>") becomes, before tokenizing, "\n\n<start_of_image>" +
/// tokens_per_image × "<image_soft_token>" + "<end_of_image>\n\n", as Gemma3Processor does; the
/// example's images are decoded and preprocessed (data/image.h) into the batch's pixel_values.
struct ImageOptions {
  int64_t tokens_per_image = 0;  ///< 0: a text model (image records keep their placeholder only)
  std::string boi_token = "<start_of_image>";
  std::string image_token = "<image_soft_token>";
  std::string eoi_token = "<end_of_image>";
  int32_t boi_id = -1, image_id = -1, eoi_id = -1;  ///< their ids (MakeImageOptions fills them)
  ImageProcessorConfig processor;
  ImageLimits limits;
  /// Labels as TRL's DataCollatorForVisionLanguageModeling makes them: every token but padding
  /// (prompt and image tokens included; the model does not mask them). Default (false): the loss
  /// is on the assistant's tokens only, and never on <start_of_image>, soft tokens or
  /// <end_of_image>, whatever train_on_prompt says.
  bool trl_labels = false;
};

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
  ImageOptions images;       ///< image+text models
};

/// ImageOptions for a tokenizer and a model with `tokens_per_image` tokens per image of
/// `image_size` pixels: the processor at that size, the three tokens' ids (the soft token is added
/// as a special token when the vocabulary lacks it, as with the 270M GGUF's; its id must then be
/// the model's image_token_id). FailedPrecondition when <start_of_image> or <end_of_image> is not
/// in the vocabulary.
absl::StatusOr<ImageOptions> MakeImageOptions(tokenizer::Tokenizer* tokenizer, int64_t tokens_per_image,
                                              int64_t image_size);

/// Grows each image placeholder (options.boi_token) of a rendered chat into the image's tokens, as
/// Gemma3Processor does before it tokenizes: "\n\n" + boi + tokens_per_image × image_token + eoi +
/// "\n\n" (the newlines then merge with the template's into one token). Returns the number of
/// placeholders expanded.
int ExpandImagePlaceholders(const ImageOptions& options, tokenizer::RenderedChat* rendered);

/// InvalidArgument naming the field: max_length < 2, batch_size < 1, a negative token_budget.
absl::Status Validate(const CollatorOptions& options);

/// One tokenized example.
struct TokenizedExample {
  std::vector<int32_t> ids;
  std::vector<int32_t> labels;  ///< ids, or kIgnoreIndex where no loss is taken
  std::string where;
  /// Image+text: each image's pixel_values (3, H, W), in the order of its tokens.
  std::vector<std::vector<float>> pixels;
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
  // Image+text batches (ImageOptions::tokens_per_image > 0); empty otherwise.
  std::vector<int64_t> token_type_ids;  ///< (B, T): 1 on image soft tokens, 0 elsewhere
  int64_t num_images = 0;               ///< N
  int64_t image_height = 0, image_width = 0;
  std::vector<float> pixel_values;      ///< (N, 3, H, W), the images in the order of their tokens
};

class Collator {
 public:
  /// `chat` renders conversations; it may be null only for plain-text data.
  Collator(const tokenizer::Tokenizer& tokenizer, const tokenizer::ChatTemplate* chat, CollatorOptions options);
  /// Tokens and labels of one example, truncated, with its images decoded and preprocessed. An
  /// error says why the example cannot be used (no chat template, a template error, no target
  /// token left after truncation, dropped as too long, an image that does not decode, cut by
  /// truncation or without its placeholder); the loader reports it with the example's file:line
  /// and skips it.
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
  ~DataLoader();
  /// Makes each next batch on a worker thread while the caller computes (images are decoded
  /// there, ahead of the step). position(), Seek() and skipped() behave as without it.
  void set_prefetch(bool on);
  /// The next batch (epochs follow each other). Errors only when no example at all can be used.
  absl::StatusOr<Batch> Next();
  Sampler::Position position() const { return position_; }
  void Seek(const Sampler::Position& position);
  /// Examples skipped so far ("file:line: reason"), e.g. no target left after truncation.
  const std::vector<std::string>& skipped() const { return skipped_; }
  int64_t epoch() const { return position_.epoch; }

 private:
  // The batch at sampler_'s position; moves sampler_ past it and reports skips into `skipped`.
  absl::StatusOr<Batch> Make(std::vector<std::string>* skipped);
  void Launch();                 // Make() on the worker
  void Join();
  const Dataset& dataset_;
  const Collator& collator_;
  Sampler sampler_;
  Sampler::Position position_;  // after the last batch Next() returned
  std::vector<std::string> skipped_;
  std::vector<bool> skipped_index_;
  bool prefetch_ = false;
  struct Prefetch;
  std::unique_ptr<Prefetch> ahead_;
};

}  // namespace llmtrain::data
