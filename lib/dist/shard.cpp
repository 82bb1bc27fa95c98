// Flat-buffer shards (dist/shard.h).
#include "llmtrain/dist/shard.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "llmtrain/dist/process_group.h"

namespace llmtrain::dist {

ShardLayout MakeShardLayout(int64_t numel, int world_size, int64_t align_elems) {
  TORCH_CHECK(numel >= 0 && world_size >= 1 && align_elems >= 1, "MakeShardLayout(", numel, ", ",
              world_size, ", ", align_elems, ")");
  ShardLayout layout;
  layout.numel = numel;
  layout.world_size = world_size;
  const int64_t per_rank = (numel + world_size - 1) / world_size;
  layout.shard_numel = (per_rank + align_elems - 1) / align_elems * align_elems;
  return layout;
}

at::Tensor TakeShard(const at::Tensor& buffer, const ShardLayout& layout, int rank) {
  TORCH_CHECK(buffer.numel() == layout.numel, "TakeShard: the buffer has ", buffer.numel(),
              " elements, the layout ", layout.numel);
  TORCH_CHECK(rank >= 0 && rank < layout.world_size, "TakeShard: rank ", rank, " of ",
              layout.world_size);
  at::Tensor flat = buffer.contiguous().view({-1});
  at::Tensor shard = at::zeros({layout.shard_numel}, flat.options());
  const int64_t begin = layout.Begin(rank), end = layout.End(rank);
  if (end > begin) shard.narrow(0, 0, end - begin).copy_(flat.narrow(0, begin, end - begin));
  return shard;
}

absl::StatusOr<at::Tensor> GatherShards(ProcessGroup& group, const at::Tensor& shard,
                                        const ShardLayout& layout) {
  if (layout.world_size != group.world_size() || shard.numel() != layout.shard_numel) {
    return absl::InvalidArgumentError(absl::StrCat(
        "GatherShards: a shard of ", shard.numel(), " elements at world size ", group.world_size(),
        ", the layout has shards of ", layout.shard_numel, " at world size ", layout.world_size));
  }
  at::Tensor padded = at::empty({layout.padded_numel()}, shard.options());
  at::Tensor input = shard.contiguous().view({-1});
  if (absl::Status status = group.AllGatherInto(padded, input); !status.ok()) return status;
  return padded.narrow(0, 0, layout.numel);
}

}  // namespace llmtrain::dist
