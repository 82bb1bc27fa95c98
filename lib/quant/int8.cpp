#include "llmtrain/quant/int8.h"

#include <ATen/ATen.h>

#include <cmath>
#include <vector>

#include "absl/strings/str_cat.h"

namespace llmtrain::quant {

absl::StatusOr<Int8Quantized> QuantizeInt8(const at::Tensor& weight, double threshold) {
  const c10::ScalarType dtype = weight.scalar_type();
  if (dtype != at::kFloat && dtype != at::kHalf && dtype != at::kBFloat16) {
    return absl::InvalidArgumentError(
        absl::StrCat("int8 quantization takes float32, float16 or bfloat16, not ", c10::toString(dtype)));
  }
  if (weight.dim() != 2) {
    return absl::InvalidArgumentError(absl::StrCat("int8 quantization takes a 2-D tensor, not ", weight.dim(), "-D"));
  }
  if (!weight.device().is_cpu()) return absl::InvalidArgumentError("QuantizeInt8: the tensor must be on the CPU");
  if (threshold < 0) return absl::InvalidArgumentError("threshold: must be ≥ 0");
  const int64_t rows = weight.size(0), cols = weight.size(1);
  const at::Tensor x = weight.contiguous().to(at::kFloat);  // exact
  const float* v = x.data_ptr<float>();
  // Outliers: |x| ≥ threshold, compared in the weight's dtype (the threshold rounds to it first).
  std::vector<bool> outlier(static_cast<size_t>(rows * cols), false), outlier_col(static_cast<size_t>(cols), false);
  if (threshold > 0) {
    const float t = at::scalar_tensor(threshold, at::TensorOptions().dtype(dtype)).to(at::kFloat).item<float>();
    for (int64_t i = 0; i < rows * cols; ++i) {
      if (std::fabs(v[i]) >= t) {
        outlier[i] = true;
        outlier_col[i % cols] = true;
      }
    }
  }
  Int8Quantized out;
  out.q = at::empty({rows, cols}, at::kChar);
  out.row_stats = at::empty({rows}, at::kFloat);
  int8_t* q = out.q.data_ptr<int8_t>();
  float* stats = out.row_stats.data_ptr<float>();
  for (int64_t r = 0; r < rows; ++r) {
    float m = 0.0f;
    for (int64_t c = 0; c < cols; ++c) {
      const float a = outlier[r * cols + c] ? 0.0f : std::fabs(v[r * cols + c]);
      if (std::isnan(a)) {
        m = a;
        break;
      }
      m = std::max(m, a);
    }
    stats[r] = m;
    const float scale = (1.0f / m) * 127.0f;  // 127 / m as bitsandbytes rounds it: reciprocal, then × 127
    for (int64_t c = 0; c < cols; ++c) {
      const float value = outlier[r * cols + c] ? 0.0f : v[r * cols + c];
      const float y = std::nearbyint(value * scale);  // round half to even
      q[r * cols + c] = std::isnan(y) ? int8_t{0} : static_cast<int8_t>(y);
    }
  }
  if (threshold > 0) {
    std::vector<int64_t> cols_list;
    for (int64_t c = 0; c < cols; ++c) {
      if (outlier_col[c]) cols_list.push_back(c);
    }
    out.outlier_cols = at::tensor(cols_list, at::kLong);
    // bitsandbytes zeroes the outlier columns of q (when there is more than one row); the
    // outliers themselves are already 0 above.
    if (rows > 1) {
      for (int64_t c : cols_list) {
        for (int64_t r = 0; r < rows; ++r) q[r * cols + c] = 0;
      }
    }
  }
  return out;
}

at::Tensor DequantizeInt8(const Int8Quantized& quantized) {
  const int64_t rows = quantized.q.size(0), cols = quantized.q.size(1);
  const at::Tensor q = quantized.q.contiguous();
  const at::Tensor stats = quantized.row_stats.to(at::kFloat).contiguous();
  at::Tensor out = at::empty({rows, cols}, at::kFloat);
  const int8_t* qp = q.data_ptr<int8_t>();
  const float* sp = stats.data_ptr<float>();
  float* op = out.data_ptr<float>();
  constexpr float kInv127 = 7.874015718698502e-3f;
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) op[r * cols + c] = (static_cast<float>(qp[r * cols + c]) * sp[r]) * kInv127;
  }
  return out;
}

}  // namespace llmtrain::quant
