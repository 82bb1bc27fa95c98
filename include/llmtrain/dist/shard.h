// How a flat buffer is split into one shard per rank, and put back together.
//
// A buffer of `numel` elements gets `world_size` shards of equal size, `shard_numel`, padded with
// zeros at the end of the last ranks' shards so that every collective moves equal sizes. Shard
// edges fall on multiples of `align_elems`: for packed 4-bit weights, one quantization block
// (64 values = 32 bytes), so each rank holds whole blocks and their scales. The bytes are moved
// as they are, whatever their dtype: packed NF4 travels as uint8 and is never viewed as a float
// (bf16 views of NF4 bytes contain NaN patterns that float paths may canonicalize).
//
//   dist::ShardLayout layout = dist::MakeShardLayout(packed.numel(), group.world_size(), 32);
//   at::Tensor mine = dist::TakeShard(packed, layout, group.rank());
//   LLMTRAIN_ASSIGN_OR_RETURN(at::Tensor whole, dist::GatherShards(group, mine, layout));
#pragma once

#include <algorithm>
#include <cstdint>

#include <ATen/core/Tensor.h>

#include "absl/status/statusor.h"

namespace llmtrain::dist {

class ProcessGroup;

struct ShardLayout {
  int64_t numel = 0;        ///< elements of the whole buffer
  int64_t shard_numel = 0;  ///< elements of every rank's shard, padding included
  int world_size = 1;

  int64_t padded_numel() const { return shard_numel * world_size; }
  /// The whole buffer's elements held by `rank`: [Begin(rank), End(rank)); empty for ranks past
  /// the end of a small buffer.
  int64_t Begin(int rank) const { return std::min(numel, rank * shard_numel); }
  int64_t End(int rank) const { return std::min(numel, (rank + 1) * shard_numel); }
};

/// Equal shards whose size is a multiple of align_elems (≥ 1), the smallest that covers numel.
ShardLayout MakeShardLayout(int64_t numel, int world_size, int64_t align_elems = 1);

/// Rank's shard of a contiguous buffer of layout.numel elements (any shape, read flat): a new
/// tensor of shard_numel elements, the buffer's [Begin, End) then zeros.
at::Tensor TakeShard(const at::Tensor& buffer, const ShardLayout& layout, int rank);

/// The whole buffer (layout.numel elements, 1-D, the shard's dtype and device) from every rank's
/// shard, by one all-gather. InvalidArgument when the shard does not match the layout.
absl::StatusOr<at::Tensor> GatherShards(ProcessGroup& group, const at::Tensor& shard,
                                        const ShardLayout& layout);

}  // namespace llmtrain::dist
