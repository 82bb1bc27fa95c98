#include "llmtrain/data/collator.h"

#include <algorithm>
#include <thread>

#include "absl/strings/str_cat.h"
#include "llmtrain/core/status.h"

namespace llmtrain::data {

Collator::Collator(const tokenizer::Tokenizer& tokenizer, const tokenizer::ChatTemplate* chat,
                   CollatorOptions options)
    : tokenizer_(tokenizer), chat_(chat), options_(options) {
  // Padding is masked out; the pad id only has to be a valid token.
  if (tokenizer.pad_id()) {
    pad_id_ = *tokenizer.pad_id();
  } else if (tokenizer.eos_id()) {
    pad_id_ = *tokenizer.eos_id();
  }
  if (options_.max_length < 2) options_.max_length = 2;
  if (options_.batch_size < 1) options_.batch_size = 1;
}

absl::StatusOr<ImageOptions> MakeImageOptions(tokenizer::Tokenizer* tokenizer, int64_t tokens_per_image,
                                              int64_t image_size) {
  ImageOptions o;
  o.tokens_per_image = tokens_per_image;
  o.processor = DefaultImageProcessor(image_size);
  const auto id_of = [&](const std::string& token) -> absl::StatusOr<int32_t> {
    if (const std::optional<int32_t> id = tokenizer->TokenToId(token)) return *id;
    return absl::FailedPreconditionError(absl::StrCat("the tokenizer has no \"", token,
                                                      "\" token: not a Gemma 3 vocabulary?"));
  };
  LLMTRAIN_ASSIGN_OR_RETURN(o.boi_id, id_of(o.boi_token));
  LLMTRAIN_ASSIGN_OR_RETURN(o.eoi_id, id_of(o.eoi_token));
  o.image_id = tokenizer->AddSpecialToken(o.image_token);
  return o;
}

int ExpandImagePlaceholders(const ImageOptions& options, tokenizer::RenderedChat* rendered) {
  std::string expansion = "\n\n" + options.boi_token;
  for (int64_t i = 0; i < options.tokens_per_image; ++i) expansion += options.image_token;
  expansion += options.eoi_token + "\n\n";
  return tokenizer::ExpandPlaceholders(rendered, options.boi_token, expansion);
}

absl::StatusOr<TokenizedExample> Collator::Tokenize(const Example& example) const {
  TokenizedExample out;
  out.where = example.where;
  const ImageOptions& im = options_.images;
  const bool with_images = im.tokens_per_image > 0;
  if (!example.messages.empty()) {
    if (chat_ == nullptr) return absl::InvalidArgumentError("a conversation needs a chat template");
    absl::StatusOr<tokenizer::EncodedChat> encoded;
    if (with_images) {
      // Gemma3Processor: each placeholder grows into the image's tokens before tokenizing.
      LLMTRAIN_ASSIGN_OR_RETURN(tokenizer::RenderedChat rendered, chat_->Render(example.messages, false));
      const int placeholders = ExpandImagePlaceholders(im, &rendered);
      if (placeholders != static_cast<int>(example.images.size())) {
        return absl::InvalidArgumentError(absl::StrCat("the conversation has ", placeholders, " image placeholder(s) but ",
                                                       example.images.size(), " image(s)"));
      }
      encoded = tokenizer::EncodeRendered(tokenizer_, rendered);
    } else {
      encoded = tokenizer::EncodeChat(tokenizer_, *chat_, example.messages, /*add_generation_prompt=*/false);
    }
    if (!encoded.ok()) return encoded.status();
    out.ids = std::move(encoded->ids);
    out.labels.resize(out.ids.size());
    for (size_t i = 0; i < out.ids.size(); ++i) {
      const int32_t id = out.ids[i];
      bool target = options_.train_on_prompt || encoded->assistant_mask[i];
      if (with_images) {
        target = im.trl_labels || (target && id != im.boi_id && id != im.image_id && id != im.eoi_id);
      }
      out.labels[i] = target ? id : static_cast<int32_t>(kIgnoreIndex);
    }
  } else {
    out.ids = tokenizer_.Encode(example.text, /*add_special_tokens=*/true);
    if (options_.add_eos_to_text && tokenizer_.eos_id()) out.ids.push_back(*tokenizer_.eos_id());
    out.labels = out.ids;
  }
  const auto n = static_cast<int64_t>(out.ids.size());
  if (n > options_.max_length) {
    if (options_.truncation == CollatorOptions::Truncation::kDrop) {
      return absl::InvalidArgumentError(
          absl::StrCat("dropped: ", n, " tokens, over max_length ", options_.max_length));
    }
    out.ids.resize(options_.max_length);
    out.labels.resize(options_.max_length);
  }
  // The loss shifts: label t is predicted at t − 1, so a label at position 0 never counts.
  bool any = false;
  for (size_t i = 1; i < out.labels.size() && !any; ++i) any = out.labels[i] != kIgnoreIndex;
  if (!any) {
    return absl::InvalidArgumentError(
        absl::StrCat("no target token within max_length ", options_.max_length, " (", n, " tokens)"));
  }
  if (with_images) {
    // Every example: a text that spells the soft token would give image tokens without pixels.
    const int64_t soft = std::count(out.ids.begin(), out.ids.end(), im.image_id);
    const int64_t images = example.messages.empty() ? 0 : static_cast<int64_t>(example.images.size());
    if (example.messages.empty() && soft > 0) {
      return absl::InvalidArgumentError(absl::StrCat("the text holds ", soft, " ", im.image_token,
                                                     " token(s) but the record has no image"));
    }
    if (soft != im.tokens_per_image * images) {
      return absl::InvalidArgumentError(absl::StrCat("max_length ", options_.max_length, " cuts the tokens of an image (",
                                                     n, " tokens)"));
    }
    for (int64_t k = 0; k < images; ++k) {
      LLMTRAIN_ASSIGN_OR_RETURN(RgbImage image, LoadImage(example.images[static_cast<size_t>(k)], im.limits));
      out.pixels.push_back(PreprocessImage(image, im.processor));
      if (out.pixels.back().size() != static_cast<size_t>(3 * im.processor.height * im.processor.width)) {
        return absl::InvalidArgumentError("the image processor does not resize (do_resize false): images of "
                                          "other sizes cannot batch");
      }
    }
  }
  return out;
}

Batch Collator::Collate(const std::vector<std::vector<TokenizedExample>>& rows) const {
  Batch batch;
  batch.batch_size = static_cast<int64_t>(rows.size());
  int64_t longest = 0;
  for (const auto& row : rows) {
    int64_t len = 0;
    for (const auto& e : row) len += static_cast<int64_t>(e.ids.size());
    longest = std::max(longest, len);
  }
  batch.seq_len = options_.packing ? options_.max_length : longest;
  const size_t cells = static_cast<size_t>(batch.batch_size * batch.seq_len);
  batch.input_ids.assign(cells, pad_id_);
  batch.attention_mask.assign(cells, 0);
  batch.position_ids.assign(cells, 0);
  batch.segment_ids.assign(cells, 0);
  batch.labels.assign(cells, kIgnoreIndex);
  for (size_t r = 0; r < rows.size(); ++r) {
    int64_t t = 0;
    int64_t segment = 0;
    for (const auto& e : rows[r]) {
      ++segment;
      for (size_t i = 0; i < e.ids.size(); ++i, ++t) {
        const size_t cell = r * static_cast<size_t>(batch.seq_len) + static_cast<size_t>(t);
        batch.input_ids[cell] = e.ids[i];
        batch.attention_mask[cell] = 1;
        batch.position_ids[cell] = static_cast<int64_t>(i);
        batch.segment_ids[cell] = segment;
        // An example's first token would be predicted from the one before it: the previous
        // example in a packed row. No loss there.
        batch.labels[cell] = i == 0 ? kIgnoreIndex : e.labels[i];
        batch.target_tokens += i > 0 && e.labels[i] != kIgnoreIndex;
      }
      batch.sources.push_back(e.where);
    }
  }
  const ImageOptions& im = options_.images;
  if (im.tokens_per_image > 0) {
    batch.token_type_ids.assign(cells, 0);
    for (size_t i = 0; i < cells; ++i) batch.token_type_ids[i] = batch.input_ids[i] == im.image_id ? 1 : 0;
    batch.image_height = im.processor.height;
    batch.image_width = im.processor.width;
    for (const auto& row : rows) {  // row by row, left to right: the order of the image tokens
      for (const auto& e : row) {
        for (const std::vector<float>& pixels : e.pixels) {
          batch.pixel_values.insert(batch.pixel_values.end(), pixels.begin(), pixels.end());
          ++batch.num_images;
        }
      }
    }
  }
  return batch;
}

struct DataLoader::Prefetch {
  std::thread worker;
  absl::StatusOr<Batch> batch = absl::UnknownError("no batch made yet");
  std::vector<std::string> skipped;
};

DataLoader::DataLoader(const Dataset& dataset, const Collator& collator, const LoaderOptions& options)
    : dataset_(dataset),
      collator_(collator),
      sampler_(dataset.size(), options),
      position_(sampler_.position()),
      skipped_index_(static_cast<size_t>(dataset.size()), false) {}

DataLoader::~DataLoader() { Join(); }

void DataLoader::Launch() {
  ahead_ = std::make_unique<Prefetch>();
  Prefetch* p = ahead_.get();
  // The worker reports skips into its own list (skipped_ is the caller's to read meanwhile).
  p->worker = std::thread([this, p] {
    try {
      p->batch = Make(&p->skipped);
    } catch (...) {  // out of memory decoding a huge image, …: an error for the caller, not terminate()
      p->batch = StatusFromCurrentException("making the next batch");
    }
  });
}

void DataLoader::Join() {
  if (ahead_ == nullptr || !ahead_->worker.joinable()) return;
  ahead_->worker.join();
}

void DataLoader::set_prefetch(bool on) {
  if (!on && ahead_ != nullptr) Seek(position_);  // drops the batch made ahead
  prefetch_ = on;
}

void DataLoader::Seek(const Sampler::Position& position) {
  if (ahead_ != nullptr) {
    Join();
    skipped_.insert(skipped_.end(), ahead_->skipped.begin(), ahead_->skipped.end());
    ahead_.reset();
  }
  sampler_.Seek(position);
  position_ = position;
}

absl::StatusOr<Batch> DataLoader::Next() {
  if (!prefetch_) {
    absl::StatusOr<Batch> batch = Make(&skipped_);
    position_ = sampler_.position();
    return batch;
  }
  if (ahead_ == nullptr) Launch();
  Join();
  absl::StatusOr<Batch> batch = std::move(ahead_->batch);
  skipped_.insert(skipped_.end(), ahead_->skipped.begin(), ahead_->skipped.end());
  ahead_.reset();
  position_ = sampler_.position();
  if (batch.ok()) Launch();  // the next batch, while the caller computes on this one
  return batch;
}

absl::StatusOr<Batch> DataLoader::Make(std::vector<std::string>* skipped) {
  const CollatorOptions& o = collator_.options();
  std::vector<std::vector<TokenizedExample>> rows;
  int64_t longest = 0, last_row_len = 0, skipped_in_a_row = 0;
  while (true) {
    const Sampler::Position before = sampler_.position();
    const std::optional<int64_t> index = sampler_.Next();
    if (!index) return absl::FailedPreconditionError("the data set has no records for this rank");
    auto example = dataset_.Get(*index);
    absl::StatusOr<TokenizedExample> tokenized =
        example.ok() ? collator_.Tokenize(*example) : absl::StatusOr<TokenizedExample>(example.status());
    if (!tokenized.ok()) {
      if (!skipped_index_[*index]) {
        skipped_index_[*index] = true;
        skipped->push_back(absl::StrCat(example.ok() ? example->where : std::string("record"), ": ",
                                        tokenized.status().message()));
      }
      if (++skipped_in_a_row > sampler_.per_epoch()) {
        return absl::FailedPreconditionError(
            absl::StrCat("no example can be used; the first reason: ", skipped->empty() ? "" : skipped->front()));
      }
      continue;
    }
    skipped_in_a_row = 0;
    const auto len = static_cast<int64_t>(tokenized->ids.size());
    bool fits;
    bool new_row = true;
    if (o.packing) {
      if (!rows.empty() && last_row_len + len <= o.max_length) {
        fits = true;
        new_row = false;
      } else {
        const int64_t max_rows = o.token_budget > 0 ? std::max<int64_t>(1, o.token_budget / o.max_length) : o.batch_size;
        fits = static_cast<int64_t>(rows.size()) + 1 <= max_rows;
      }
    } else if (o.token_budget > 0) {
      fits = rows.empty() ||
             (static_cast<int64_t>(rows.size()) + 1) * std::max(longest, len) <= o.token_budget;
    } else {
      fits = static_cast<int64_t>(rows.size()) < o.batch_size;
    }
    if (!fits) {  // it starts the next batch: give it back
      sampler_.Seek(before);
      break;
    }
    if (new_row) {
      rows.emplace_back();
      last_row_len = 0;
    }
    last_row_len += len;
    longest = std::max(longest, len);
    rows.back().push_back(std::move(*tokenized));
    if (!o.packing && o.token_budget == 0 && static_cast<int64_t>(rows.size()) == o.batch_size) break;
  }
  return collator_.Collate(rows);
}

absl::Status Validate(const CollatorOptions& o) {
  if (o.max_length < 2) return absl::InvalidArgumentError(absl::StrCat("CollatorOptions.max_length: expected ≥ 2, found ", o.max_length));
  if (o.batch_size < 1) return absl::InvalidArgumentError(absl::StrCat("CollatorOptions.batch_size: expected ≥ 1, found ", o.batch_size));
  if (o.token_budget < 0) {
    return absl::InvalidArgumentError(absl::StrCat("CollatorOptions.token_budget: expected ≥ 0, found ", o.token_budget));
  }
  return absl::OkStatus();
}

}  // namespace llmtrain::data
