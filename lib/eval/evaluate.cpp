#include "llmtrain/eval/evaluate.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <cmath>

#include "absl/strings/str_cat.h"
#include "llmtrain/core/status.h"
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

}  // namespace llmtrain::eval
