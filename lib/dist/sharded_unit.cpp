// A sharded group of frozen tensors (dist/sharded_unit.h).
#include "llmtrain/dist/sharded_unit.h"

#include <cstring>
#include <unordered_set>

#include <ATen/ops/empty.h>
#include <c10/core/StorageImpl.h>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace llmtrain::dist {

absl::StatusOr<std::unique_ptr<ShardedUnit>> ShardedUnit::Create(std::string name, const std::vector<at::Tensor>& tensors,
                                                                 int rank, int world_size,
                                                                 const ShardedUnitOptions& options) {
  if (world_size < 1 || rank < 0 || rank >= world_size || options.align_bytes < 1) {
    return absl::InvalidArgumentError(absl::StrCat(name, ": rank ", rank, " of ", world_size, ", align ",
                                                   options.align_bytes));
  }
  std::unique_ptr<ShardedUnit> unit(new ShardedUnit());
  unit->name_ = std::move(name);
  // The tensors to move, each once, and where they go.
  std::vector<at::Tensor> moved;
  std::unordered_set<const c10::TensorImpl*> seen;
  int64_t total = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const at::Tensor& t = tensors[i];
    if (!t.defined() || !seen.insert(t.unsafeGetTensorImpl()).second) continue;
    const int64_t nbytes = t.numel() * static_cast<int64_t>(t.element_size());
    if (nbytes < options.persist_below_bytes) {
      unit->persistent_bytes_ += nbytes;
      continue;
    }
    if (!t.device().is_cpu() || !t.is_contiguous() || t.requires_grad() || t.is_sparse()) {
      return absl::InvalidArgumentError(absl::StrCat(
          unit->name_, ": tensor ", i, " (", c10::toString(t.scalar_type()), " [", absl::StrJoin(t.sizes(), ", "),
          "]) must be a contiguous CPU tensor that does not require grad"));
    }
    if (options.align_bytes % static_cast<int64_t>(t.element_size()) != 0) {
      return absl::InvalidArgumentError(absl::StrCat(unit->name_, ": align_bytes ", options.align_bytes,
                                                     " is not a multiple of ", t.element_size()));
    }
    total = (total + options.align_bytes - 1) / options.align_bytes * options.align_bytes;
    unit->offsets_.push_back(total);
    moved.push_back(t);
    total += nbytes;
  }
  unit->layout_ = MakeShardLayout(total, world_size, options.align_bytes);
  unit->full_ = at::empty({unit->layout_.padded_numel()}, at::kByte);
  unit->full_.zero_();
  uint8_t* base = unit->full_.data_ptr<uint8_t>();
  for (size_t i = 0; i < moved.size(); ++i) {
    at::Tensor& t = moved[i];
    const int64_t nbytes = t.numel() * static_cast<int64_t>(t.element_size());
    std::memcpy(base + unit->offsets_[i], t.data_ptr(), static_cast<size_t>(nbytes));
    // The tensor now views the unit's storage: same sizes, strides and dtype.
    const int64_t element_offset = unit->offsets_[i] / static_cast<int64_t>(t.element_size());
    t.set_(unit->full_.storage(), element_offset, t.sizes(), t.strides());
  }
  unit->shard_ = unit->full_.narrow(0, rank * unit->layout_.shard_numel, unit->layout_.shard_numel).clone();
  unit->Release();
  return unit;
}

void ShardedUnit::Release() {
  if (!gathered_) return;
  c10::StorageImpl* storage = full_.storage().unsafeGetStorageImpl();
  storage->set_data_ptr_noswap(at::DataPtr(nullptr, full_.device()));
  storage->set_nbytes(0);
  gathered_ = false;
}

absl::StatusOr<Pending> ShardedUnit::GatherAsync(ProcessGroup& group) {
  if (group.world_size() != layout_.world_size) {
    return absl::InvalidArgumentError(absl::StrCat(name_, ": sharded for world size ", layout_.world_size,
                                                   ", the group has ", group.world_size()));
  }
  if (!gathered_) {
    c10::StorageImpl* storage = full_.storage().unsafeGetStorageImpl();
    const size_t nbytes = static_cast<size_t>(layout_.padded_numel());
    storage->set_data_ptr_noswap(storage->allocator()->allocate(nbytes));
    storage->set_nbytes(nbytes);
    gathered_ = true;
  }
  return group.AllGatherIntoAsync(full_, shard_);
}

absl::Status ShardedUnit::Gather(ProcessGroup& group) {
  absl::StatusOr<Pending> pending = GatherAsync(group);
  if (!pending.ok()) return pending.status();
  return pending->Wait();
}

}  // namespace llmtrain::dist
