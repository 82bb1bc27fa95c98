// Where gradients are synchronized and what the processes of a run agree on: the trainer calls
// an Engine and nothing else for distribution (train/trainer.h).
//
//   - SingleProcessEngine: one process, nothing to do.
//   - ReplicatedEngine ("ddp"): every rank holds the whole model and adapter and trains on its
//     share of each global batch; after the last micro-batch of a step the adapter's gradients
//     are summed over ranks in one flat float32 all-reduce. LoRA is well under 1% of a model's
//     parameters, so this moves little and keeps every rank's optimizer identical.
//   - ShardedEngine ("zero3", dist/sharded_engine.h): the same for the adapter, and each decoder
//     layer's frozen base split across the ranks, gathered around its use.
//
// Gradients are summed, not averaged: the trainer already divides each token's loss by the
// global target count (SumCounts over ranks), so the sum is the gradient of the global batch.
//
//   auto group = *dist::ProcessGroup::Create(env, {});
//   parts.engine = std::make_shared<dist::ReplicatedEngine>(std::move(group));
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include <ATen/core/Tensor.h>

#include "absl/status/statusor.h"

namespace llmtrain::model {
class Decoder;
}  // namespace llmtrain::model

namespace llmtrain::dist {

class ProcessGroup;

class Engine {
 public:
  virtual ~Engine() = default;
  /// Once, after the adapter is injected and before training: where the engine takes over the
  /// model's storage (the sharded engine splits each layer's frozen weights across processes).
  virtual absl::Status PrepareModel(model::Decoder& model) { return absl::OkStatus(); }
  /// True when every forward runs collectives (sharded layers), so every process must run the
  /// same forwards: the trainer then evaluates, skips empty batches and generates samples on all
  /// of them in step.
  virtual bool collective_forwards() const { return false; }
  /// After the last micro-batch's backward of a step: make every process's gradients of
  /// `params` the global ones. Undefined gradients count as zeros.
  virtual absl::Status SynchronizeGradients(const std::vector<at::Tensor>& params) = 0;
  /// True when the adapter's optimizer state is split across processes (ZeRO's sharded optimizer
  /// state): instead of SynchronizeGradients, the trainer lays the gradients out flat
  /// (float32, N·S elements, the last shard padded with zeros), ReduceScatterSum gives this
  /// process the Σ of its slice [rank·S, (rank + 1)·S), AdamW::StepShard updates that slice,
  /// and AllGather puts every process's updated slice back into every process's parameters.
  virtual bool shards_optimizer_state() const { return false; }
  /// shard (S) = Σ over processes of flat[rank·S, (rank + 1)·S); flat has world_size()·S
  /// float32 elements.
  virtual absl::Status ReduceScatterSum(at::Tensor& shard, const at::Tensor& flat) = 0;
  /// flat (world_size()·S) = every process's shard (S) in rank order.
  virtual absl::Status AllGather(at::Tensor& flat, const at::Tensor& shard) = 0;
  /// Σ over processes (target tokens, evaluated tokens).
  virtual absl::StatusOr<int64_t> SumCounts(int64_t value) = 0;
  /// Σ over processes of a float64 (loss sums), in rank order on every process.
  virtual absl::StatusOr<double> SumValues(double value) = 0;
  /// True on every process when it is true on any (a stop request, a non-finite value).
  virtual absl::StatusOr<bool> AnyProcess(bool flag) = 0;
  /// Every process's `mine` (the same length on each), concatenated in rank order, on every
  /// process (the data positions and RNG states a checkpoint keeps per rank).
  virtual absl::StatusOr<std::vector<int64_t>> GatherCounts(const std::vector<int64_t>& mine) = 0;
  /// Every process has reached this point (around files one process writes).
  virtual absl::Status Barrier() = 0;
  virtual int rank() const = 0;
  virtual int world_size() const = 0;
  /// The process that writes files, metrics and logs (rank 0).
  bool is_main() const { return rank() == 0; }
};

/// One process, one device: everything is already global.
class SingleProcessEngine final : public Engine {
 public:
  absl::Status SynchronizeGradients(const std::vector<at::Tensor>&) override { return absl::OkStatus(); }
  absl::Status ReduceScatterSum(at::Tensor& shard, const at::Tensor& flat) override;
  absl::Status AllGather(at::Tensor& flat, const at::Tensor& shard) override;
  absl::StatusOr<int64_t> SumCounts(int64_t value) override { return value; }
  absl::StatusOr<double> SumValues(double value) override { return value; }
  absl::StatusOr<bool> AnyProcess(bool flag) override { return flag; }
  absl::StatusOr<std::vector<int64_t>> GatherCounts(const std::vector<int64_t>& mine) override { return mine; }
  absl::Status Barrier() override { return absl::OkStatus(); }
  int rank() const override { return 0; }
  int world_size() const override { return 1; }
};

/// Data parallelism with a replicated adapter (see the file comment); ShardedEngine extends it.
class ReplicatedEngine : public Engine {
 public:
  explicit ReplicatedEngine(std::shared_ptr<ProcessGroup> group);
  absl::Status SynchronizeGradients(const std::vector<at::Tensor>& params) override;
  absl::Status ReduceScatterSum(at::Tensor& shard, const at::Tensor& flat) override;
  absl::Status AllGather(at::Tensor& flat, const at::Tensor& shard) override;
  absl::StatusOr<int64_t> SumCounts(int64_t value) override;
  absl::StatusOr<double> SumValues(double value) override;
  absl::StatusOr<bool> AnyProcess(bool flag) override;
  absl::StatusOr<std::vector<int64_t>> GatherCounts(const std::vector<int64_t>& mine) override;
  absl::Status Barrier() override;
  int rank() const override;
  int world_size() const override;
  ProcessGroup& group() { return *group_; }
  const ProcessGroup& group() const { return *group_; }
  /// Bytes this rank has put into the adapter's gradient collectives so far (the flat buffer's
  /// size per step: all-reduce, or reduce-scatter with a sharded optimizer state).
  int64_t gradient_bytes() const { return gradient_bytes_; }
  /// Bytes of updated adapter values this rank has all-gathered so far (sharded optimizer state).
  int64_t parameter_gather_bytes() const { return parameter_gather_bytes_; }

 protected:
  std::shared_ptr<ProcessGroup> group_;
  int64_t gradient_bytes_ = 0;
  int64_t parameter_gather_bytes_ = 0;
};

}  // namespace llmtrain::dist
