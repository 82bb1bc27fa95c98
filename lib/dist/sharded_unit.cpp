// A sharded group of frozen tensors (dist/sharded_unit.h).
#include "llmtrain/dist/sharded_unit.h"

#include <cstring>
#include <algorithm>
#include <unordered_map>

#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/core/StorageImpl.h>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "llmtrain/core/status.h"

namespace llmtrain::dist {

namespace {

// Where each of a unit's tensors goes: the buffer's layout, and per tensor its place in it.
struct UnitPlan {
  enum class Kind { kUndefined, kRepeat, kPersistent, kMoved };
  struct Entry {
    Kind kind = Kind::kUndefined;
    int64_t offset = 0;  // kMoved: byte offset in the buffer
    int64_t nbytes = 0;
    size_t first = 0;    // kRepeat: the entry it repeats
  };
  std::vector<Entry> entries;  // one per tensor given
  int64_t total = 0;           // bytes of the moved tensors, alignment included
  int64_t persistent_bytes = 0;
};

absl::StatusOr<UnitPlan> PlanUnit(const std::string& name, const std::vector<at::Tensor>& tensors, int rank,
                                  int world_size, const ShardedUnitOptions& options) {
  if (world_size < 1 || rank < 0 || rank >= world_size || options.align_bytes < 1) {
    return absl::InvalidArgumentError(absl::StrCat(name, ": rank ", rank, " of ", world_size, ", align ",
                                                   options.align_bytes));
  }
  UnitPlan plan;
  std::unordered_map<const c10::TensorImpl*, size_t> seen;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const at::Tensor& t = tensors[i];
    UnitPlan::Entry& e = plan.entries.emplace_back();
    if (!t.defined()) continue;
    if (const auto [it, fresh] = seen.emplace(t.unsafeGetTensorImpl(), i); !fresh) {
      e.kind = UnitPlan::Kind::kRepeat;
      e.first = it->second;
      continue;
    }
    e.nbytes = t.numel() * static_cast<int64_t>(t.element_size());
    if (e.nbytes < options.persist_below_bytes) {
      e.kind = UnitPlan::Kind::kPersistent;
      plan.persistent_bytes += e.nbytes;
      continue;
    }
    if (!t.device().is_cpu() || !t.is_contiguous() || t.requires_grad() || t.is_sparse()) {
      return absl::InvalidArgumentError(absl::StrCat(
          name, ": tensor ", i, " (", c10::toString(t.scalar_type()), " [", absl::StrJoin(t.sizes(), ", "),
          "]) must be a contiguous CPU tensor that does not require grad"));
    }
    if (options.align_bytes % static_cast<int64_t>(t.element_size()) != 0) {
      return absl::InvalidArgumentError(absl::StrCat(name, ": align_bytes ", options.align_bytes,
                                                     " is not a multiple of ", t.element_size()));
    }
    plan.total = (plan.total + options.align_bytes - 1) / options.align_bytes * options.align_bytes;
    e.kind = UnitPlan::Kind::kMoved;
    e.offset = plan.total;
    plan.total += e.nbytes;
  }
  return plan;
}

}  // namespace

absl::StatusOr<std::vector<model::TensorShare>> ShardedUnit::Shares(const std::string& name,
                                                                    const std::vector<at::Tensor>& tensors, int rank,
                                                                    int world_size, const ShardedUnitOptions& options) {
  LLMTRAIN_ASSIGN_OR_RETURN(const UnitPlan plan, PlanUnit(name, tensors, rank, world_size, options));
  const ShardLayout layout = MakeShardLayout(plan.total, world_size, options.align_bytes);
  std::vector<model::TensorShare> shares(tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    const UnitPlan::Entry& e = plan.entries[i];
    model::TensorShare& share = shares[i];
    switch (e.kind) {
      case UnitPlan::Kind::kUndefined: break;
      case UnitPlan::Kind::kRepeat:  // the same bytes, computed where they were first listed
        share.kept_begin = share.owned_begin = share.owned_end = shares[e.first].kept_begin;
        share.kept_end = shares[e.first].kept_end;
        break;
      case UnitPlan::Kind::kPersistent:  // whole everywhere, computed for the sum by rank 0
        share.kept_end = e.nbytes;
        share.owned_end = rank == 0 ? e.nbytes : 0;
        break;
      case UnitPlan::Kind::kMoved: {
        const auto clamp = [&](int64_t at) { return std::clamp<int64_t>(at - e.offset, 0, e.nbytes); };
        share.kept_begin = share.owned_begin = clamp(layout.Begin(rank));
        share.kept_end = share.owned_end = clamp(layout.End(rank));
        break;
      }
    }
  }
  return shares;
}

absl::StatusOr<std::unique_ptr<ShardedUnit>> ShardedUnit::Create(std::string name, const std::vector<at::Tensor>& tensors,
                                                                 int rank, int world_size,
                                                                 const ShardedUnitOptions& options) {
  LLMTRAIN_ASSIGN_OR_RETURN(const UnitPlan plan, PlanUnit(name, tensors, rank, world_size, options));
  std::unique_ptr<ShardedUnit> unit(new ShardedUnit());
  unit->name_ = std::move(name);
  unit->persistent_bytes_ = plan.persistent_bytes;
  unit->layout_ = MakeShardLayout(plan.total, world_size, options.align_bytes);
  // Only this rank's bytes are read: a sharded load (Shares) filled no others.
  const int64_t begin = rank * unit->layout_.shard_numel, end = begin + unit->layout_.shard_numel;
  unit->shard_ = at::zeros({unit->layout_.shard_numel}, at::kByte);
  uint8_t* shard = unit->shard_.data_ptr<uint8_t>();
  for (size_t i = 0; i < tensors.size(); ++i) {
    const UnitPlan::Entry& e = plan.entries[i];
    if (e.kind != UnitPlan::Kind::kMoved) continue;
    const int64_t from = std::max(begin, e.offset), to = std::min(end, e.offset + e.nbytes);
    if (from < to) {
      std::memcpy(shard + (from - begin), static_cast<const uint8_t*>(tensors[i].data_ptr()) + (from - e.offset),
                  static_cast<size_t>(to - from));
    }
    unit->offsets_.push_back(e.offset);
    unit->moved_.push_back(tensors[i]);
  }
  // Every moved tensor now views the unit's buffer (same sizes, strides and dtype), which is
  // allocated untouched and released at once: it holds bytes only between Gather and Release.
  unit->full_ = at::empty({unit->layout_.padded_numel()}, at::kByte);
  for (size_t i = 0; i < unit->moved_.size(); ++i) {
    at::Tensor& t = unit->moved_[i];
    const int64_t element_offset = unit->offsets_[i] / static_cast<int64_t>(t.element_size());
    t.set_(unit->full_.storage(), element_offset, t.sizes(), t.strides());
  }
  unit->Release();
  return unit;
}

absl::Status ShardedUnit::MoveTo(c10::Device device) {
  if (gathered_) return absl::FailedPreconditionError(absl::StrCat(name_, ": MoveTo while gathered"));
  if (full_.device() == device) return absl::OkStatus();
  try {
    shard_ = shard_.to(device);
    // A buffer on the device for the tensors to view, released at once like Create's. set_data
    // swaps each tensor's storage under the same TensorImpl (so the modules holding it follow),
    // device included.
    full_ = at::empty({layout_.padded_numel()}, at::TensorOptions().dtype(at::kByte).device(device));
    for (size_t i = 0; i < moved_.size(); ++i) {
      at::Tensor& t = moved_[i];
      const int64_t element_offset = offsets_[i] / static_cast<int64_t>(t.element_size());
      at::Tensor view = at::empty({0}, t.options().device(device));
      view.set_(full_.storage(), element_offset, t.sizes(), t.strides());
      t.set_data(view);
    }
    gathered_ = true;  // the new buffer holds memory until:
    Release();
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat(name_, ": MoveTo ", device.str(), ": ", e.what_without_backtrace()));
  }
  return absl::OkStatus();
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
