// The unit a ZeRO-3-style engine shards: a group of frozen tensors (one decoder layer's packed
// 4-bit weights, their quant state, norms, biases) packed into one byte buffer that every rank
// holds only 1/world_size of between uses.
//
// Create() lays the tensors out in the buffer at 64-byte-aligned offsets, copies the bytes of
// this rank's shard from them (the others are never read, so a sharded load fills only those:
// Shares), and makes each tensor a view of the buffer (the same TensorImpl, so the modules that
// hold it see the change and need no other hook), which it leaves released. Gather() all-gathers the shards back into the buffer (raw bytes: packed data is never
// viewed as floats on the way), after which the modules compute exactly as before; Release()
// frees the buffer again. Reading a tensor of a released unit is an error from ATen ("data is not
// allocated"), not a read of freed memory.
//
// Tensors smaller than persist_below_bytes (code tables, nested scales of tiny layers), and
// tensors another unit already holds, stay whole on every rank, as DeepSpeed keeps parameters
// under its persistence threshold.
//
//   std::vector<at::Tensor> frozen;
//   for (auto& proj : layer_projections) proj->AppendFrozen(&frozen);
//   LLMTRAIN_ASSIGN_OR_RETURN(auto unit, dist::ShardedUnit::Create("layer 3", frozen, group.rank(),
//                                                                  group.world_size()));
//   LLMTRAIN_RETURN_IF_ERROR(unit->Gather(group));   // before the layer computes
//   ... forward / recompute + backward of the layer ...
//   unit->Release();
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "absl/status/statusor.h"
#include "llmtrain/dist/process_group.h"
#include "llmtrain/dist/shard.h"
#include "llmtrain/model/linear.h"

namespace llmtrain::dist {

struct ShardedUnitOptions {
  int64_t align_bytes = 64;           ///< every tensor's offset and the shard edges (a 4-bit block is 32 bytes)
  int64_t persist_below_bytes = 4096;  ///< smaller tensors stay whole on every rank
};

class ShardedUnit {
 public:
  /// Packs `tensors` (CPU, contiguous, not requiring grad; repeats are taken once) and keeps
  /// rank's shard; the unit starts released. InvalidArgument names a tensor that cannot be
  /// moved. Every rank must pass the same tensors (shapes, dtypes and order).
  static absl::StatusOr<std::unique_ptr<ShardedUnit>> Create(std::string name, const std::vector<at::Tensor>& tensors,
                                                            int rank, int world_size,
                                                            const ShardedUnitOptions& options = {});

  /// The bytes of each of `tensors` that Create(name, tensors, rank, world_size, options) keeps on
  /// this rank, from their shapes and dtypes alone (values are not read): what a sharded load
  /// fills (DecoderOptions::plan_layer_shares). A tensor kept whole on every rank is owned by
  /// rank 0; a repeat is kept as its first listing and owned nowhere.
  static absl::StatusOr<std::vector<model::TensorShare>> Shares(const std::string& name,
                                                                const std::vector<at::Tensor>& tensors, int rank,
                                                                int world_size,
                                                                const ShardedUnitOptions& options = {});

  /// Materializes the buffer from every rank's shard (one all-gather of bytes).
  absl::Status Gather(ProcessGroup& group);
  /// The same, returning while the bytes travel: Wait() before the tensors are read.
  absl::StatusOr<Pending> GatherAsync(ProcessGroup& group);
  /// Moves the unit (released) to `device`: its shard, and the storage its tensors view, so
  /// later gathers fill a buffer there (NCCL for CUDA). Decoder::MoveTo then finds these tensors
  /// on the device already and leaves them. FailedPrecondition while gathered.
  absl::Status MoveTo(c10::Device device);
  /// Frees the buffer; the tensors must not be read until the next Gather.
  void Release();
  bool gathered() const { return gathered_; }

  const std::string& name() const { return name_; }
  int64_t bytes() const { return layout_.numel; }           ///< the packed tensors, padding included
  int64_t shard_bytes() const { return layout_.shard_numel; }  ///< held by this rank between uses
  int64_t persistent_bytes() const { return persistent_bytes_; }  ///< left whole on every rank
  int64_t tensors() const { return static_cast<int64_t>(offsets_.size()); }
  const at::Tensor& shard() const { return shard_; }

 private:
  ShardedUnit() = default;
  std::string name_;
  ShardLayout layout_;
  at::Tensor full_;   // uint8 (padded_numel): the storage every moved tensor views
  at::Tensor shard_;  // uint8 (shard_numel): this rank's bytes
  std::vector<int64_t> offsets_;
  std::vector<at::Tensor> moved_;  // the tensors viewing full_ (handles: the same TensorImpls)
  int64_t persistent_bytes_ = 0;
  bool gathered_ = true;
};

}  // namespace llmtrain::dist
