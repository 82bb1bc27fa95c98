// A process group: the collectives of a distributed run, over torch's c10d backends (Gloo for
// CPU tensors, NCCL for CUDA tensors), with the rendezvous store the launcher set up.
//
// It is a thin typed layer that makes c10d safe to call from a trainer:
//   - every collective first checks its tensors on this rank (dtype, contiguity, sizes), then
//     (check_collectives, on by default) exchanges a fingerprint with every rank: op, dtype and
//     sizes. A mismatch across ranks is an error naming the op and each rank's sizes on every
//     rank, where Gloo would terminate the process;
//   - every collective has the timeout of ProcessGroupOptions; a rank that died or never arrives
//     is an error after it, not a hang;
//   - c10d's exceptions come back as absl::Status naming the op.
//
//   LLMTRAIN_ASSIGN_OR_RETURN(dist::DistEnv env, dist::DistEnvFromEnvironment());
//   LLMTRAIN_ASSIGN_OR_RETURN(auto group, dist::ProcessGroup::Create(env, {}));
//   at::Tensor full = at::empty({group->world_size() * shard.numel()}, shard.options());
//   LLMTRAIN_RETURN_IF_ERROR(group->AllGatherInto(full, shard));
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include <ATen/core/Tensor.h>

#include "absl/status/statusor.h"
#include "llmtrain/dist/env.h"

namespace llmtrain::dist {

enum class CommBackend {
  kAuto,  ///< NCCL when device is CUDA, otherwise Gloo
  kGloo,  ///< CPU tensors
  kNccl,  ///< CUDA tensors (builds with CUDA; needs a GPU at run time)
};

struct ProcessGroupOptions {
  CommBackend backend = CommBackend::kAuto;
  std::string device = "cpu";  ///< "cpu" or "cuda" (this rank uses cuda:LOCAL_RANK)
  /// Seconds any one collective, and the rendezvous, may wait for the other ranks. torch's
  /// default is 30 minutes; tests use a few seconds.
  double timeout_s = 1800.0;
  /// "env://": a TCP store at MASTER_ADDR:MASTER_PORT (torchrun, `llmtrain launch`, SLURM);
  /// "file:///path": a FileStore at /path on a file system every rank sees (torch's spelling).
  std::string init_method = "env://";
  /// Exchange every collective's op, dtype and sizes first, so that a mismatch is an error on
  /// every rank instead of an abort inside Gloo. Costs one small all-gather per collective.
  bool check_collectives = true;
  int gloo_threads = 2;  ///< Gloo's worker threads per group
};

/// InvalidArgument naming every bad field.
absl::Status Validate(const ProcessGroupOptions& options);

/// An asynchronous collective. Wait() returns its error (or a timeout); a Pending that is
/// destroyed unwaited is waited for then.
class Pending {
 public:
  Pending();
  ~Pending();
  Pending(Pending&&) noexcept;
  Pending& operator=(Pending&&) noexcept;
  absl::Status Wait();
  bool done() const;

  struct State;
  explicit Pending(std::unique_ptr<State> state);

 private:
  std::unique_ptr<State> state_;
};

enum class ReduceOp { kSum, kMax };

class ProcessGroup {
 public:
  /// Joins the run described by env: one process needs no store; several meet at the store of
  /// options.init_method. Fails with the address and the reason (port in use, nobody there
  /// within the timeout, a backend this build lacks).
  static absl::StatusOr<std::unique_ptr<ProcessGroup>> Create(const DistEnv& env,
                                                              const ProcessGroupOptions& options);
  ~ProcessGroup();
  ProcessGroup(const ProcessGroup&) = delete;
  ProcessGroup& operator=(const ProcessGroup&) = delete;

  int rank() const;
  int world_size() const;
  CommBackend backend() const;    ///< kGloo or kNccl
  at::Device device() const;      ///< where the collectives' tensors live
  int64_t collectives() const;    ///< collectives issued so far (the fingerprint sequence)

  /// In place: tensor = op over ranks of tensor.
  absl::Status AllReduce(at::Tensor& tensor, ReduceOp op = ReduceOp::kSum);
  /// out (world · n elements) = the ranks' shards (n elements each) in rank order.
  absl::Status AllGatherInto(at::Tensor& out, const at::Tensor& shard);
  absl::StatusOr<Pending> AllGatherIntoAsync(at::Tensor& out, const at::Tensor& shard);
  /// out (n elements) = Σ over ranks of in[rank·n, (rank+1)·n).
  absl::Status ReduceScatterSum(at::Tensor& out, const at::Tensor& in);
  absl::StatusOr<Pending> ReduceScatterSumAsync(at::Tensor& out, const at::Tensor& in);
  /// In place: every rank's tensor = root's.
  absl::Status Broadcast(at::Tensor& tensor, int root);
  absl::Status Barrier();

  /// Σ / max of one integer or double over ranks (counts, flags, losses): helpers over AllReduce.
  absl::StatusOr<int64_t> SumInt(int64_t value);
  absl::StatusOr<int64_t> MaxInt(int64_t value);
  absl::StatusOr<double> SumDouble(double value);

  struct Impl;

 private:
  explicit ProcessGroup(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

const char* Name(CommBackend backend);

}  // namespace llmtrain::dist
