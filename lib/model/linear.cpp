// DenseLinear: at::linear over stored tensors (model/linear.h).
#include "llmtrain/model/linear.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <vector>

namespace llmtrain::model {

DenseLinear::DenseLinear(at::Tensor weight, at::Tensor bias)
    : weight_(std::move(weight)), bias_(std::move(bias)) {
  TORCH_CHECK(weight_.dim() == 2, "DenseLinear: weight must be 2-D (out, in)");
  TORCH_CHECK(!bias_.defined() || (bias_.dim() == 1 && bias_.size(0) == weight_.size(0)),
              "DenseLinear: bias must have ", weight_.size(0), " elements");
}

int64_t StoredBytes(const Linear& layer) {
  std::vector<at::Tensor> tensors;
  layer.AppendFrozen(&tensors);
  layer.AppendTrainable(&tensors);
  std::vector<const void*> seen;
  int64_t bytes = 0;
  for (const at::Tensor& t : tensors) {
    if (!t.defined()) continue;
    const void* impl = t.unsafeGetTensorImpl();
    if (std::find(seen.begin(), seen.end(), impl) != seen.end()) continue;
    seen.push_back(impl);
    bytes += static_cast<int64_t>(t.nbytes());
  }
  return bytes;
}

at::Tensor DenseLinear::Forward(const at::Tensor& x) const { return at::linear(x, weight_, bias_); }
int64_t DenseLinear::in_features() const { return weight_.size(1); }
int64_t DenseLinear::out_features() const { return weight_.size(0); }

at::Tensor DenseLinear::DenseWeight(c10::ScalarType dtype) const { return weight_.detach().to(dtype); }

void DenseLinear::AppendTrainable(std::vector<at::Tensor>* out) const {
  if (weight_.requires_grad()) out->push_back(weight_);
  if (bias_.defined() && bias_.requires_grad()) out->push_back(bias_);
}

void DenseLinear::AppendFrozen(std::vector<at::Tensor>* out) const {
  if (!weight_.requires_grad()) out->push_back(weight_);
  if (bias_.defined() && !bias_.requires_grad()) out->push_back(bias_);
}

absl::StatusOr<std::shared_ptr<Linear>> MakeDenseLinear(const ProjectionSource& source) {
  // A sharded load's layout pass reads nothing; its second pass loads the whole weight, of which
  // the engine keeps its share.
  if (source.layout_only) return std::make_shared<DenseLinear>(at::empty(source.shape, source.dtype), source.bias);
  auto weight = source.dense_weight();
  if (!weight.ok()) return weight.status();
  return std::make_shared<DenseLinear>(*std::move(weight), source.bias);
}

}  // namespace llmtrain::model
