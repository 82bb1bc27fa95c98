// The replicated ("ddp") engine (dist/engine.h).
#include "llmtrain/dist/engine.h"

#include <ATen/ops/cat.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/tensor.h>
#include <ATen/ops/zeros.h>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "llmtrain/core/status.h"
#include "llmtrain/dist/process_group.h"

namespace llmtrain::dist {

absl::Status SingleProcessEngine::ReduceScatterSum(at::Tensor& shard, const at::Tensor& flat) {
  TORCH_CHECK(shard.numel() == flat.numel(), "ReduceScatterSum: one process holds the whole buffer");
  shard.copy_(flat);
  return absl::OkStatus();
}

absl::Status SingleProcessEngine::AllGather(at::Tensor& flat, const at::Tensor& shard) {
  TORCH_CHECK(shard.numel() == flat.numel(), "AllGather: one process holds the whole buffer");
  flat.copy_(shard);
  return absl::OkStatus();
}

ReplicatedEngine::ReplicatedEngine(std::shared_ptr<ProcessGroup> group) : group_(std::move(group)) {
  TORCH_CHECK(group_ != nullptr, "ReplicatedEngine: no process group");
}

int ReplicatedEngine::rank() const { return group_->rank(); }
int ReplicatedEngine::world_size() const { return group_->world_size(); }

absl::Status ReplicatedEngine::SynchronizeGradients(const std::vector<at::Tensor>& params) {
  if (params.empty()) return absl::OkStatus();
  // One flat float32 buffer in the parameters' order: one collective per step, and a sum in
  // float32 whatever the gradients' dtype.
  int64_t total = 0;
  for (const at::Tensor& p : params) total += p.numel();
  const at::Device device = group_->device();
  at::Tensor flat = at::zeros({total}, at::TensorOptions().dtype(at::kFloat).device(device));
  int64_t offset = 0;
  for (const at::Tensor& p : params) {
    const at::Tensor& g = p.grad();
    if (g.defined()) flat.narrow(0, offset, p.numel()).copy_(g.reshape({-1}));
    offset += p.numel();
  }
  LLMTRAIN_RETURN_IF_ERROR(Annotate(group_->AllReduce(flat, ReduceOp::kSum), "synchronizing the adapter's gradients"));
  gradient_bytes_ += total * 4;
  offset = 0;
  for (const at::Tensor& p : params) {
    at::Tensor slice = flat.narrow(0, offset, p.numel()).view(p.sizes());
    at::Tensor& g = const_cast<at::Tensor&>(p).mutable_grad();
    if (g.defined()) {
      g.copy_(slice);
    } else {
      g = slice.to(p.options()).clone();
    }
    offset += p.numel();
  }
  return absl::OkStatus();
}

absl::Status ReplicatedEngine::ReduceScatterSum(at::Tensor& shard, const at::Tensor& flat) {
  LLMTRAIN_RETURN_IF_ERROR(
      Annotate(group_->ReduceScatterSum(shard, flat), "reduce-scattering the adapter's gradients"));
  gradient_bytes_ += flat.numel() * flat.element_size();
  return absl::OkStatus();
}

absl::Status ReplicatedEngine::AllGather(at::Tensor& flat, const at::Tensor& shard) {
  LLMTRAIN_RETURN_IF_ERROR(Annotate(group_->AllGatherInto(flat, shard), "all-gathering the adapter's values"));
  parameter_gather_bytes_ += flat.numel() * flat.element_size();
  return absl::OkStatus();
}

absl::StatusOr<int64_t> ReplicatedEngine::SumCounts(int64_t value) { return group_->SumInt(value); }

absl::StatusOr<std::vector<int64_t>> ReplicatedEngine::GatherCounts(const std::vector<int64_t>& mine) {
  at::Tensor local =
      at::tensor(at::ArrayRef<int64_t>(mine.data(), mine.size()), at::kLong).to(group_->device());
  at::Tensor all = at::empty({group_->world_size() * local.numel()}, local.options());
  LLMTRAIN_RETURN_IF_ERROR(group_->AllGatherInto(all, local));
  const at::Tensor host = all.cpu();
  return std::vector<int64_t>(host.data_ptr<int64_t>(), host.data_ptr<int64_t>() + host.numel());
}

absl::StatusOr<double> ReplicatedEngine::SumValues(double value) {
  // An all-gather, then the sum in rank order: the same float64 on every rank, and the same
  // whatever order the backend reduces in.
  at::Tensor mine = at::tensor({value}, at::kDouble).to(group_->device());
  at::Tensor all = at::empty({group_->world_size()}, mine.options());
  LLMTRAIN_RETURN_IF_ERROR(group_->AllGatherInto(all, mine));
  at::Tensor host = all.cpu();
  double sum = 0;
  for (int r = 0; r < group_->world_size(); ++r) sum += host.data_ptr<double>()[r];
  return sum;
}

absl::StatusOr<bool> ReplicatedEngine::AnyProcess(bool flag) {
  LLMTRAIN_ASSIGN_OR_RETURN(int64_t any, group_->MaxInt(flag ? 1 : 0));
  return any != 0;
}

absl::Status ReplicatedEngine::Barrier() { return group_->Barrier(); }

}  // namespace llmtrain::dist
