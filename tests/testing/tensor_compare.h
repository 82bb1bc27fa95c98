// Comparisons of our tensors with the reference's (tests that link LibTorch).
#pragma once

#include <ATen/ATen.h>

namespace llmtrain::testing {

/// max |a − b| ÷ max |b| in double precision (÷ 1 when b is all zero): the relative error the
/// issues' thresholds are stated in.
inline double RelativeError(const at::Tensor& a, const at::Tensor& b) {
  const double scale = b.abs().max().item<double>();
  return (a.to(at::kDouble) - b.to(at::kDouble)).abs().max().item<double>() / (scale > 0 ? scale : 1.0);
}

}  // namespace llmtrain::testing
