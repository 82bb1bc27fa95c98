#include "llmtrain/eval/evaluate.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <cmath>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "llmtrain/core/status.h"
#include "llmtrain/data/image.h"
#include "llmtrain/eval/text_metrics.h"
#include "llmtrain/kernels/cross_entropy.h"

namespace llmtrain::eval {
namespace {

at::Tensor ToTensor(const std::vector<int64_t>& v, int64_t b, int64_t t, c10::Device device) {
  const at::Tensor cpu = at::tensor(at::ArrayRef<int64_t>(v), at::kLong).view({b, t});
  return device.is_cpu() ? cpu : cpu.to(device);
}

}  // namespace

BatchInputs ToInputs(const data::Batch& b, c10::Device device) {
  BatchInputs in;
  in.input_ids = ToTensor(b.input_ids, b.batch_size, b.seq_len, device);
  in.attention_mask = ToTensor(b.segment_ids.empty() ? b.attention_mask : b.segment_ids, b.batch_size, b.seq_len, device);
  in.position_ids = ToTensor(b.position_ids, b.batch_size, b.seq_len, device);
  in.labels = ToTensor(b.labels, b.batch_size, b.seq_len, device);
  if (!b.token_type_ids.empty()) in.images.token_type_ids = ToTensor(b.token_type_ids, b.batch_size, b.seq_len, device);
  if (b.num_images > 0) {
    in.images.pixel_values = at::tensor(at::ArrayRef<float>(b.pixel_values), at::kFloat)
                                 .view({b.num_images, 3, b.image_height, b.image_width})
                                 .to(device);
  }
  return in;
}

at::Tensor BatchHidden(const model::Decoder& model, const BatchInputs& in) {
  return in.images.empty() ? model.Hidden(in.input_ids, in.attention_mask, in.position_ids)
                           : model.Hidden(in.input_ids, in.attention_mask, in.position_ids, in.images);
}

absl::StatusOr<LossResult> EvaluateLoss(const model::Decoder& model, const data::Dataset& data,
                                        const data::Collator& collator, const LossOptions& options) {
  if (options.batch_size < 1) {
    return absl::InvalidArgumentError(absl::StrCat("LossOptions.batch_size: expected ≥ 1, found ", options.batch_size));
  }
  if (options.max_records < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("LossOptions.max_records: expected ≥ 0, found ", options.max_records));
  }
  const int64_t total = options.max_records > 0 ? std::min(options.max_records, data.size()) : data.size();
  LossResult result;
  double nll = 0;
  try {
    at::NoGradGuard no_grad;
    kernels::CrossEntropyOptions ce_options;
    ce_options.final_softcap = model.spec().final_softcap;
    std::vector<std::vector<data::TokenizedExample>> rows;
    const auto run = [&]() -> absl::Status {
      if (rows.empty()) return absl::OkStatus();
      const data::Batch batch = collator.Collate(rows);
      const BatchInputs in = ToInputs(batch, model.device());
      const at::Tensor hidden = BatchHidden(model, in);  // (B, T, C)
      const int64_t T = batch.seq_len;
      for (int64_t r = 0; r < batch.batch_size; ++r) {
        const kernels::CrossEntropyResult ce = kernels::ChunkedCrossEntropy(
            hidden.select(0, r).narrow(0, 0, T - 1), model.lm_head(), in.labels.select(0, r).narrow(0, 1, T - 1),
            ce_options);
        RecordLoss record;
        record.where = rows[static_cast<size_t>(r)].front().where;
        record.nll_sum = ce.loss_sum.item<double>();
        record.n_tokens = ce.n_tokens;
        nll += record.nll_sum;
        result.n_tokens += record.n_tokens;
        result.records.push_back(std::move(record));
      }
      rows.clear();
      return absl::OkStatus();
    };
    for (int64_t i = 0; i < total; ++i) {
      LLMTRAIN_ASSIGN_OR_RETURN(const data::Example example, data.Get(i));
      absl::StatusOr<data::TokenizedExample> tokenized = collator.Tokenize(example);
      if (!tokenized.ok()) {
        result.skipped.emplace_back(example.where, std::string(tokenized.status().message()));
        continue;
      }
      rows.push_back({*std::move(tokenized)});
      if (static_cast<int64_t>(rows.size()) == options.batch_size) {
        LLMTRAIN_RETURN_IF_ERROR(run());
        if (options.on_progress) options.on_progress(i + 1, total);
      }
    }
    LLMTRAIN_RETURN_IF_ERROR(run());
    if (options.on_progress) options.on_progress(total, total);
  } catch (...) {
    return StatusFromCurrentException("evaluating the loss");
  }
  result.loss = result.n_tokens > 0 ? nll / static_cast<double>(result.n_tokens) : 0.0;
  result.perplexity = std::exp(result.loss);
  return result;
}

namespace {

// A message's text: its content, or the text parts of a list.
std::string MessageText(const tokenizer::Message& m) {
  if (!m.content_is_list) return m.content;
  std::string out;
  for (const tokenizer::ContentPart& part : m.parts) {
    if (part.type == "text") absl::StrAppend(&out, part.text);
  }
  return out;
}

}  // namespace

absl::StatusOr<std::vector<GenerationItem>> MakeGenerationItems(
    const data::Dataset& data, const data::Collator& collator, const tokenizer::Tokenizer& tokenizer,
    const tokenizer::ChatTemplate& chat, int64_t max_records,
    std::vector<std::pair<std::string, std::string>>* skipped) {
  const int64_t total = max_records > 0 ? std::min(max_records, data.size()) : data.size();
  const data::ImageOptions& im = collator.options().images;
  std::vector<GenerationItem> items;
  absl::flat_hash_map<std::string, size_t> by_prompt;  // prompt ids and image paths → item
  const auto skip = [&](const std::string& where, std::string why) {
    if (skipped != nullptr) skipped->emplace_back(where, std::move(why));
  };
  for (int64_t i = 0; i < total; ++i) {
    LLMTRAIN_ASSIGN_OR_RETURN(const data::Example example, data.Get(i));
    size_t last = example.messages.size();
    for (size_t k = 0; k < example.messages.size(); ++k) {
      if (example.messages[k].role == "assistant") last = k;
    }
    if (last == example.messages.size() || last == 0) {
      skip(example.where, "no assistant reply after a prompt to compare a generation with");
      continue;
    }
    const std::vector<tokenizer::Message> prompt(example.messages.begin(),
                                                 example.messages.begin() + static_cast<std::ptrdiff_t>(last));
    absl::StatusOr<tokenizer::RenderedChat> rendered = chat.Render(prompt, /*add_generation_prompt=*/true);
    if (!rendered.ok()) {
      skip(example.where, std::string(rendered.status().message()));
      continue;
    }
    GenerationItem item;
    if (im.tokens_per_image > 0) {
      const int placeholders = data::ExpandImagePlaceholders(im, &*rendered);
      if (placeholders != static_cast<int>(example.images.size())) {
        skip(example.where, absl::StrCat("the prompt has ", placeholders, " image placeholder(s) but the record ",
                                         example.images.size(), " image(s)"));
        continue;
      }
      bool bad = false;
      for (const std::string& path : example.images) {
        absl::StatusOr<data::RgbImage> image = data::LoadImage(path, im.limits);
        if (!image.ok()) {
          skip(example.where, std::string(image.status().message()));
          bad = true;
          break;
        }
        const std::vector<float> pixels = data::PreprocessImage(*image, im.processor);
        item.pixel_values.insert(item.pixel_values.end(), pixels.begin(), pixels.end());
        ++item.num_images;
      }
      if (bad) continue;
      item.image_height = im.processor.height;
      item.image_width = im.processor.width;
    } else if (!example.images.empty()) {
      skip(example.where, "the record has images, the model none");
      continue;
    }
    const std::vector<int32_t> ids = tokenizer::EncodeRendered(tokenizer, *rendered).ids;
    item.prompt_ids.assign(ids.begin(), ids.end());
    const std::string key = absl::StrCat(absl::StrJoin(item.prompt_ids, ","), "|", absl::StrJoin(example.images, "|"));
    const std::string reference = MessageText(example.messages[last]);
    if (const auto it = by_prompt.find(key); it != by_prompt.end()) {
      items[it->second].where.push_back(example.where);
      items[it->second].references.push_back(reference);
      continue;
    }
    item.where.push_back(example.where);
    item.references.push_back(reference);
    by_prompt[key] = items.size();
    items.push_back(std::move(item));
  }
  return items;
}

absl::Status GeneratePredictions(const model::Decoder& model, const tokenizer::Tokenizer& tokenizer,
                                 const model::GenerationOptions& options, std::vector<GenerationItem>* items,
                                 const std::function<void(int64_t done, int64_t total)>& on_progress,
                                 int64_t batch_size) {
  if (batch_size < 1) return absl::InvalidArgumentError(absl::StrCat("batch_size: expected ≥ 1, found ", batch_size));
  const int64_t total = static_cast<int64_t>(items->size());
  const auto name = [](const GenerationItem& item) {
    return item.where.empty() ? std::string("a generation item") : item.where.front();
  };
  for (const GenerationItem& item : *items) {  // named here: a batch's error would name the batch
    const std::string where = name(item);
    if (item.prompt_ids.empty()) return absl::InvalidArgumentError(absl::StrCat(where, ": empty prompt"));
    if (static_cast<int64_t>(item.pixel_values.size()) != item.num_images * 3 * item.image_height * item.image_width) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": pixel_values do not hold num_images images"));
    }
  }
  // Longest prompts first, so that a batch's rows have similar lengths (little padding).
  std::vector<size_t> order(items->size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return (*items)[a].prompt_ids.size() > (*items)[b].prompt_ids.size();
  });
  int64_t done = 0;
  for (size_t begin = 0; begin < order.size(); begin += static_cast<size_t>(batch_size)) {
    const size_t end = std::min(order.size(), begin + static_cast<size_t>(batch_size));
    std::vector<std::vector<int64_t>> prompts;
    std::vector<at::Tensor> pixels;
    bool any_images = false;
    for (size_t k = begin; k < end; ++k) {
      const GenerationItem& item = (*items)[order[k]];
      prompts.push_back(item.prompt_ids);
      at::Tensor p;
      if (item.num_images > 0) {
        try {
          p = at::tensor(at::ArrayRef<float>(item.pixel_values), at::kFloat)
                  .view({item.num_images, 3, item.image_height, item.image_width});
        } catch (...) {
          return StatusFromCurrentException(name(item));
        }
        any_images = true;
      }
      pixels.push_back(p);
    }
    absl::StatusOr<std::vector<std::vector<int64_t>>> out =
        model::GenerateBatch(model, prompts, options, any_images ? pixels : std::vector<at::Tensor>());
    if (!out.ok()) {
      std::vector<std::string> where;
      for (size_t k = begin; k < end; ++k) where.push_back(name((*items)[order[k]]));
      return Annotate(out.status(), absl::StrJoin(where, ", "));
    }
    for (size_t k = begin; k < end; ++k) {
      const std::vector<int64_t>& ids64 = (*out)[k - begin];
      const std::vector<int32_t> ids(ids64.begin(), ids64.end());
      (*items)[order[k]].prediction = tokenizer.Decode(ids, /*skip_special_tokens=*/true);
    }
    done += static_cast<int64_t>(end - begin);
    if (on_progress) on_progress(done, total);
  }
  return absl::OkStatus();
}

GenerationScores ScoreGenerations(const std::vector<GenerationItem>& items) {
  GenerationScores s;
  s.items = static_cast<int64_t>(items.size());
  if (items.empty()) return s;
  std::vector<std::string> predictions;
  std::vector<std::vector<std::string>> references;
  for (const GenerationItem& item : items) {
    s.exact_match += ExactMatch(item.prediction, item.references) ? 1.0 : 0.0;
    const RougeScores r = RougeMulti(item.references, item.prediction);
    s.rouge1 += r.rouge1.fmeasure;
    s.rouge2 += r.rouge2.fmeasure;
    s.rougeL += r.rougeL.fmeasure;
    predictions.push_back(item.prediction);
    references.push_back(item.references);
  }
  const double n = static_cast<double>(items.size());
  s.exact_match /= n;
  s.rouge1 /= n;
  s.rouge2 /= n;
  s.rougeL /= n;
  s.bleu = CorpusBleu(predictions, references).score;
  s.chrf = CorpusChrf(predictions, references);
  return s;
}

}  // namespace llmtrain::eval
