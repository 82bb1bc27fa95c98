// The sharded ("zero3") engine: ZeRO-3-style sharding of the frozen base, the memory that
// dominates QLoRA (a 4-bit 27B base is ~13 GB; its adapter is ~0.1 GB).
//
// PrepareModel turns every decoder layer's frozen tensors (packed 4-bit weights, quant state,
// norms, biases: Decoder::LayerFrozenTensors) into a dist::ShardedUnit, so each rank keeps 1/N of
// the layer's bytes between uses, and makes the engine the decoder's LayerResidency: layer i is
// all-gathered when it is acquired, with layer i±1's gather already issued (prefetch in the
// direction of travel: forward, then the recompute order of backward), and freed on release.
// Training therefore uses activation checkpointing (PrepareModel turns it on). The embedding,
// final norm and LM head stay whole on every rank.
//
// The adapter's values are replicated (every rank's forward needs them), its optimizer state is
// sharded: the gradients are reduce-scattered, each rank's AdamW steps its 1/N of the flattened
// adapter (moments and float32 values), and the updated slices are all-gathered back
// (shards_optimizer_state; the trainer drives it).
//
// Loading (ConfigureLoading): the loader lays each decoder layer out without reading it, asks
// the engine which bytes of each frozen tensor this rank keeps (ShardedUnit::Shares), and reads
// and quantizes only those: each rank reads its part of every weight (the rows its bytes come
// from) and computes the 4-bit blocks of its part; the block scales, which the double
// quantization needs whole, are summed over the ranks (each block computed by one rank). The
// engine then shards the layer at once (on_layer_loaded), so a rank holds its shares plus one
// layer's kept bytes, and PrepareModel only installs the residency. With on_layer_loaded alone
// every rank loads each whole layer and keeps its share; without either, PrepareModel shards the
// loaded model (a DoRA adapter needs that: its magnitudes are computed from the whole base
// weights when it is injected).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <vector>

#include "llmtrain/dist/engine.h"
#include "llmtrain/dist/sharded_unit.h"
#include "llmtrain/model/decoder.h"

namespace llmtrain::dist {

/// Create it with std::make_shared: the decoder holds it as its LayerResidency.
class ShardedEngine final : public ReplicatedEngine,
                            public model::LayerResidency,
                            public std::enable_shared_from_this<ShardedEngine> {
 public:
  explicit ShardedEngine(std::shared_ptr<ProcessGroup> group, ShardedUnitOptions unit_options = {});
  absl::Status PrepareModel(model::Decoder& model) override;
  /// Shards layer `layer` now (layers in order from 0): for DecoderOptions::on_layer_loaded.
  absl::Status OnLayerLoaded(int64_t layer, const std::vector<at::Tensor>& frozen);
  /// on_layer_loaded calling OnLayerLoaded on this engine (which it keeps alive).
  std::function<absl::Status(int64_t, const std::vector<at::Tensor>&)> LayerLoadedHook();
  /// The bytes of layer `layer`'s frozen tensors this rank will keep (ShardedUnit::Shares), for
  /// DecoderOptions::plan_layer_shares.
  absl::StatusOr<std::vector<model::TensorShare>> PlanLayerShares(int64_t layer,
                                                                  const std::vector<at::Tensor>& frozen) const;
  /// Sets options' on_layer_loaded, plan_layer_shares and sum_over_processes to this engine's:
  /// every rank then reads and quantizes only the bytes it keeps of each layer.
  void ConfigureLoading(model::DecoderOptions* options);
  bool collective_forwards() const override { return world_size() > 1; }
  bool shards_optimizer_state() const override { return true; }
  void Acquire(int64_t layer) override;
  void Release(int64_t layer) override;

  /// Moves every unit (released) to `device`, where the group gathers them (NCCL: the rank's
  /// GPU). Call it before Decoder::MoveTo, which then moves the rest of the model.
  absl::Status MoveTo(c10::Device device);
  /// Layer `layer`'s unit (layers sharded so far: 0 ≤ layer < units()).
  int64_t units() const { return static_cast<int64_t>(units_.size()); }
  const ShardedUnit& unit(int64_t layer) const { return *units_.at(static_cast<size_t>(layer)); }
  /// Bytes of the sharded layers in all, and the part this rank holds between uses.
  int64_t unit_bytes() const;
  int64_t shard_bytes() const;
  /// Bytes all-gathered into this rank so far (every gather moves a whole unit).
  int64_t gathered_bytes() const { return gathered_bytes_; }

 private:
  void Issue(int64_t layer);  // starts layer's gather unless it is gathered or in flight
  ShardedUnitOptions unit_options_;
  std::vector<std::unique_ptr<ShardedUnit>> units_;
  std::vector<std::optional<Pending>> in_flight_;
  std::vector<int> holds_;  // Acquire count minus Release count, per layer
  int64_t last_acquired_ = -1;
  int64_t gathered_bytes_ = 0;
};

}  // namespace llmtrain::dist
