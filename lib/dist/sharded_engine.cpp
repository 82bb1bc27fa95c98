// The sharded engine (dist/sharded_engine.h).
#include "llmtrain/dist/sharded_engine.h"

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "llmtrain/core/log.h"
#include "llmtrain/core/status.h"
#include "llmtrain/dist/process_group.h"

namespace llmtrain::dist {
namespace {
std::string Mib(int64_t bytes) { return absl::StrFormat("%.3f", static_cast<double>(bytes) / (1 << 20)); }
}  // namespace

ShardedEngine::ShardedEngine(std::shared_ptr<ProcessGroup> group, ShardedUnitOptions unit_options)
    : ReplicatedEngine(std::move(group)), unit_options_(unit_options) {}

absl::Status ShardedEngine::OnLayerLoaded(int64_t layer, const std::vector<at::Tensor>& frozen) {
  if (layer != static_cast<int64_t>(units_.size())) {
    return absl::FailedPreconditionError(absl::StrCat("ShardedEngine: layer ", layer, " loaded after ", units_.size(),
                                                      " layers; they must come in order from 0"));
  }
  absl::StatusOr<std::unique_ptr<ShardedUnit>> unit =
      ShardedUnit::Create(absl::StrCat("model.layers.", layer), frozen, rank(), world_size(), unit_options_);
  if (!unit.ok()) return unit.status();
  units_.push_back(*std::move(unit));
  return absl::OkStatus();
}

std::function<absl::Status(int64_t, const std::vector<at::Tensor>&)> ShardedEngine::LayerLoadedHook() {
  std::shared_ptr<ShardedEngine> self = shared_from_this();
  return [self](int64_t layer, const std::vector<at::Tensor>& frozen) { return self->OnLayerLoaded(layer, frozen); };
}

absl::StatusOr<std::vector<model::TensorShare>> ShardedEngine::PlanLayerShares(
    int64_t layer, const std::vector<at::Tensor>& frozen) const {
  return ShardedUnit::Shares(absl::StrCat("model.layers.", layer), frozen, rank(), world_size(), unit_options_);
}

void ShardedEngine::ConfigureLoading(model::DecoderOptions* options) {
  std::shared_ptr<ShardedEngine> self = shared_from_this();
  options->on_layer_loaded = LayerLoadedHook();
  options->plan_layer_shares = [self](int64_t layer, const std::vector<at::Tensor>& frozen) {
    return self->PlanLayerShares(layer, frozen);
  };
  // Loading runs on the CPU; NCCL sums on the rank's GPU.
  options->sum_over_processes = [self](at::Tensor& values) -> absl::Status {
    const c10::Device device = self->group().device();
    if (values.device() == device) return self->group().AllReduce(values);
    at::Tensor there = values.to(device);
    LLMTRAIN_RETURN_IF_ERROR(self->group().AllReduce(there));
    values.copy_(there);
    return absl::OkStatus();
  };
}

absl::Status ShardedEngine::MoveTo(c10::Device device) {
  for (auto& unit : units_) LLMTRAIN_RETURN_IF_ERROR(unit->MoveTo(device));
  return absl::OkStatus();
}

absl::Status ShardedEngine::PrepareModel(model::Decoder& model) {
  if (!holds_.empty()) return absl::FailedPreconditionError("ShardedEngine: PrepareModel was called already");
  if (weak_from_this().expired()) return absl::FailedPreconditionError("ShardedEngine: create it with std::make_shared");
  const int64_t n = model.num_layers();
  const bool as_loaded = static_cast<int64_t>(units_.size()) == n;
  // Layers the loader did not hand over (no on_layer_loaded hook) are sharded now.
  for (int64_t i = static_cast<int64_t>(units_.size()); i < n; ++i) {
    LLMTRAIN_RETURN_IF_ERROR(OnLayerLoaded(i, model.LayerFrozenTensors(i)));
  }
  in_flight_.resize(static_cast<size_t>(n));
  holds_.assign(static_cast<size_t>(n), 0);
  model.set_activation_checkpointing(true);
  std::shared_ptr<ShardedEngine> self = weak_from_this().lock();
  if (self == nullptr) return absl::FailedPreconditionError("ShardedEngine: create it with std::make_shared");
  model.set_layer_residency(std::shared_ptr<model::LayerResidency>(self, static_cast<model::LayerResidency*>(this)));
  if (rank() == 0) {
    LogInfo(absl::StrCat("zero3: ", n, " layers sharded over ", world_size(), " processes",
                         as_loaded ? " as they loaded: " : " after loading: ", Mib(unit_bytes()),
                         " MiB of frozen weights, ", Mib(shard_bytes()), " MiB held per process"));
  }
  return absl::OkStatus();
}

int64_t ShardedEngine::unit_bytes() const {
  int64_t total = 0;
  for (const auto& u : units_) total += u->bytes();
  return total;
}

int64_t ShardedEngine::shard_bytes() const {
  int64_t total = 0;
  for (const auto& u : units_) total += u->shard_bytes();
  return total;
}

void ShardedEngine::Issue(int64_t layer) {
  const size_t i = static_cast<size_t>(layer);
  if (units_[i]->gathered() || in_flight_[i].has_value()) return;
  absl::StatusOr<Pending> pending = units_[i]->GatherAsync(group());
  TORCH_CHECK(pending.ok(), "gathering ", units_[i]->name(), ": ", std::string(pending.status().message()));
  in_flight_[i] = *std::move(pending);
  gathered_bytes_ += units_[i]->bytes();
}

void ShardedEngine::Acquire(int64_t layer) {
  TORCH_CHECK(layer >= 0 && layer < static_cast<int64_t>(units_.size()), "ShardedEngine: layer ", layer);
  const size_t i = static_cast<size_t>(layer);
  // Direction of travel: forward runs layers up, the backward recompute runs them down.
  const int64_t step = layer < last_acquired_ ? -1 : 1;
  last_acquired_ = layer;
  Issue(layer);
  const int64_t next = layer + step;
  if (next >= 0 && next < static_cast<int64_t>(units_.size())) Issue(next);
  if (in_flight_[i].has_value()) {
    const absl::Status status = in_flight_[i]->Wait();
    in_flight_[i].reset();
    TORCH_CHECK(status.ok(), "gathering ", units_[i]->name(), ": ", std::string(status.message()));
  }
  ++holds_[i];
}

void ShardedEngine::Release(int64_t layer) {
  const size_t i = static_cast<size_t>(layer);
  TORCH_CHECK(holds_[i] > 0, "ShardedEngine: ", units_[i]->name(), " released more often than acquired");
  if (--holds_[i] == 0) units_[i]->Release();
}

}  // namespace llmtrain::dist
