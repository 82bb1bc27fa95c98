// ProcessGroup over c10d (dist/process_group.h).
#include "llmtrain/dist/process_group.h"

#include <array>
#include <chrono>
#include <utility>
#include <vector>

#include <ATen/ops/empty.h>
#include <ATen/ops/tensor.h>
#include <torch/csrc/distributed/c10d/FileStore.hpp>
#include <torch/csrc/distributed/c10d/HashStore.hpp>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/csrc/distributed/c10d/Work.hpp>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "dist/backends.h"
#include "llmtrain/core/dtype.h"

namespace llmtrain::dist {

using detail::ExceptionText;

const char* Name(CommBackend backend) {
  switch (backend) {
    case CommBackend::kAuto: return "auto";
    case CommBackend::kGloo: return "gloo";
    case CommBackend::kNccl: return "nccl";
  }
  return "?";
}

absl::Status Validate(const ProcessGroupOptions& options) {
  std::vector<std::string> errors;
  if (options.device != "cpu" && options.device != "cuda") {
    errors.push_back(absl::StrCat("device: expected \"cpu\" or \"cuda\", found \"", options.device, "\""));
  }
  if (!(options.timeout_s > 0)) {
    errors.push_back(absl::StrCat("timeout_s: expected > 0, found ", options.timeout_s));
  }
  if (options.init_method != "env://" &&
      !(absl::StartsWith(options.init_method, "file://") && options.init_method.size() > 7)) {
    errors.push_back(absl::StrCat("init_method: expected \"env://\" or \"file:///path\", found \"",
                                  options.init_method, "\""));
  }
  if (options.gloo_threads < 1) {
    errors.push_back(absl::StrCat("gloo_threads: expected ≥ 1, found ", options.gloo_threads));
  }
  if (options.backend == CommBackend::kNccl && options.device != "cuda") {
    errors.push_back("backend: nccl needs device \"cuda\"");
  }
  if (options.backend == CommBackend::kGloo && options.device == "cuda") {
    errors.push_back("backend: this build gives Gloo CPU tensors only; use nccl (or auto) on cuda");
  }
  if (errors.empty()) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat("ProcessGroupOptions: ", absl::StrJoin(errors, "; ")));
}

// ---------------------------------------------------------------------------------------------
// Pending

struct Pending::State {
  c10::intrusive_ptr<c10d::Work> work;
  std::string what;  // "AllGatherInto (uint8, 512 → 1024 elements)", for errors
  std::chrono::milliseconds timeout;
  int rank = 0;
  bool waited = false;
};

Pending::Pending() = default;
Pending::Pending(std::unique_ptr<State> state) : state_(std::move(state)) {}
Pending::Pending(Pending&&) noexcept = default;
Pending& Pending::operator=(Pending&& other) noexcept {
  if (this != &other) {
    (void)Wait();
    state_ = std::move(other.state_);
  }
  return *this;
}
Pending::~Pending() { (void)Wait(); }

bool Pending::done() const { return state_ == nullptr || state_->waited || state_->work->isCompleted(); }

absl::Status Pending::Wait() {
  if (state_ == nullptr || state_->waited) return absl::OkStatus();
  state_->waited = true;
  try {
    state_->work->wait(state_->timeout);
  } catch (const std::exception& e) {
    return absl::UnavailableError(absl::StrCat(state_->what, " failed on rank ", state_->rank,
                                               ": ", ExceptionText(e)));
  }
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------------------------
// ProcessGroup

namespace {

// c10d renamed Backend::_allgather_base and _reduce_scatter_base to all_gather_single and
// reduce_scatter_single (torch 2.15 keeps the old names as deprecated forwarders; 2.11, the GPU
// machine's torch that scripts/device-bundle builds against, has only them).
template <typename B>
c10::intrusive_ptr<c10d::Work> AllGatherSingle(B& pg, at::Tensor& out, at::Tensor& in,
                                              const c10d::AllgatherOptions& opts = {}) {
  if constexpr (requires { pg.all_gather_single(out, in, opts); }) {
    return pg.all_gather_single(out, in, opts);
  } else {
    return pg._allgather_base(out, in, opts);
  }
}

template <typename B>
c10::intrusive_ptr<c10d::Work> ReduceScatterSingle(B& pg, at::Tensor& out, at::Tensor& in,
                                                  const c10d::ReduceScatterOptions& opts) {
  if constexpr (requires { pg.reduce_scatter_single(out, in, opts); }) {
    return pg.reduce_scatter_single(out, in, opts);
  } else {
    return pg._reduce_scatter_base(out, in, opts);
  }
}


enum class Op : int64_t { kAllReduceSum = 1, kAllReduceMax, kAllGather, kReduceScatter, kBroadcast, kBarrier };

const char* OpName(Op op) {
  switch (op) {
    case Op::kAllReduceSum: return "AllReduce(sum)";
    case Op::kAllReduceMax: return "AllReduce(max)";
    case Op::kAllGather: return "AllGatherInto";
    case Op::kReduceScatter: return "ReduceScatterSum";
    case Op::kBroadcast: return "Broadcast";
    case Op::kBarrier: return "Barrier";
  }
  return "?";
}

// What every rank must agree on before a collective: [sequence, op, dtype, input elements,
// output elements, root].
constexpr int64_t kFingerprint = 6;

std::string DescribeFingerprint(const int64_t* f) {
  std::string text = absl::StrCat("#", f[0], " ");
  // A negative op: the rank refused the call in its own checks (its error says why).
  if (f[1] <= -1 && f[1] >= -static_cast<int64_t>(Op::kBarrier)) {
    return absl::StrCat(text, OpName(static_cast<Op>(-f[1])), " refused by its own checks");
  }
  const Op op = static_cast<Op>(f[1]);
  if (f[1] < 1 || f[1] > static_cast<int64_t>(Op::kBarrier)) return absl::StrCat(text, "op ", f[1]);
  absl::StrAppend(&text, OpName(op));
  if (op == Op::kBarrier) return text;
  absl::StrAppend(&text, "(", c10::toString(static_cast<c10::ScalarType>(f[2])), ", ");
  if (op == Op::kAllGather || op == Op::kReduceScatter) {
    absl::StrAppend(&text, f[3], " → ", f[4], " elements");
  } else {
    absl::StrAppend(&text, f[3], " elements");
  }
  if (op == Op::kBroadcast) absl::StrAppend(&text, ", root ", f[5]);
  return absl::StrCat(text, ")");
}

}  // namespace

struct ProcessGroup::Impl {
  DistEnv env;
  ProcessGroupOptions options;
  CommBackend backend = CommBackend::kGloo;
  at::Device device{at::kCPU};
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::Backend> pg;
  std::chrono::milliseconds timeout{0};
  int64_t sequence = 0;

  std::string What(Op op, const at::Tensor& in, const at::Tensor& out) const {
    std::string text = absl::StrCat(OpName(op));
    if (op == Op::kBarrier) return text;
    if (!in.defined() || !out.defined()) return absl::StrCat(text, " (an undefined tensor)");
    absl::StrAppend(&text, " (", c10::toString(in.scalar_type()), ", ", in.numel());
    if (op == Op::kAllGather || op == Op::kReduceScatter) absl::StrAppend(&text, " → ", out.numel());
    return absl::StrCat(text, " elements)");
  }

  // This rank's own checks: the tensors of one collective on the group's device, contiguous,
  // one dtype, and sizes that fit together.
  absl::Status CheckLocal(Op op, const at::Tensor& in, const at::Tensor& out) const {
    const std::string what = What(op, in, out);
    for (const at::Tensor* t : {&in, &out}) {
      if (!t->defined()) return absl::InvalidArgumentError(absl::StrCat(what, ": undefined tensor"));
      if (!t->is_contiguous()) {
        return absl::InvalidArgumentError(absl::StrCat(what, ": tensors must be contiguous"));
      }
      if (t->device() != device) {
        return absl::InvalidArgumentError(absl::StrCat(what, ": tensor on ", t->device().str(),
                                                       ", the group's collectives run on ",
                                                       device.str()));
      }
    }
    if (in.scalar_type() != out.scalar_type()) {
      return absl::InvalidArgumentError(absl::StrCat(what, ": input ", c10::toString(in.scalar_type()),
                                                     " and output ", c10::toString(out.scalar_type()),
                                                     " differ"));
    }
    const int64_t world = env.world_size;
    if (op == Op::kAllGather && out.numel() != world * in.numel()) {
      return absl::InvalidArgumentError(absl::StrCat(what, ": the output must hold world_size (",
                                                     world, ") × ", in.numel(), " elements"));
    }
    if (op == Op::kReduceScatter && in.numel() != world * out.numel()) {
      return absl::InvalidArgumentError(absl::StrCat(what, ": the input must hold world_size (",
                                                     world, ") × ", out.numel(), " elements"));
    }
    return absl::OkStatus();
  }

  // Every rank's fingerprint of this collective; an error on every rank when any differs. A rank
  // whose own checks refused the call (local_ok false) still takes part, so the others learn it
  // at once instead of waiting out the timeout.
  absl::Status Agree(Op op, const at::Tensor& in, const at::Tensor& out, int64_t root, bool local_ok) {
    ++sequence;
    if (!options.check_collectives || env.world_size == 1) return absl::OkStatus();
    const bool sized = op != Op::kBarrier && local_ok;
    std::array<int64_t, kFingerprint> mine = {sequence, (local_ok ? 1 : -1) * static_cast<int64_t>(op),
                                              sized ? static_cast<int64_t>(in.scalar_type()) : 0,
                                              sized ? in.numel() : 0, sized ? out.numel() : 0, root};
    at::Tensor local = at::tensor(at::ArrayRef<int64_t>(mine.data(), mine.size()), at::kLong).to(device);
    at::Tensor all = at::empty({env.world_size * kFingerprint}, local.options());
    try {
      AllGatherSingle(*pg, all, local)->wait(timeout);
    } catch (const std::exception& e) {
      return absl::UnavailableError(absl::StrCat(
          What(op, in, out), " #", sequence, " failed on rank ", env.rank,
          " before the ranks met (a rank died, or one did not arrive within ", options.timeout_s,
          " s): ", ExceptionText(e)));
    }
    at::Tensor host = all.cpu();
    const int64_t* f = host.data_ptr<int64_t>();
    bool same = true;
    for (int r = 1; r < env.world_size && same; ++r) {
      same = std::equal(f, f + kFingerprint, f + r * kFingerprint);
    }
    if (same) return absl::OkStatus();
    std::vector<std::string> ranks;
    for (int r = 0; r < env.world_size; ++r) {
      ranks.push_back(absl::StrCat("rank ", r, " ", DescribeFingerprint(f + r * kFingerprint)));
    }
    return absl::FailedPreconditionError(absl::StrCat(
        "mismatched collective: the ranks called different collectives or sizes: ",
        absl::StrJoin(ranks, "; ")));
  }

  template <typename Launch>
  absl::StatusOr<Pending> Run(Op op, const at::Tensor& in, const at::Tensor& out, int64_t root,
                              Launch&& launch) {
    const absl::Status local = CheckLocal(op, in, out);
    const absl::Status agreed = Agree(op, in, out, root, local.ok());
    if (!local.ok()) {
      return absl::Status(local.code(), absl::StrCat(local.message(), " (rank ", env.rank, ")"));
    }
    if (!agreed.ok()) return agreed;
    auto state = std::make_unique<Pending::State>();
    state->what = absl::StrCat(What(op, in, out), " #", sequence);
    state->timeout = timeout;
    state->rank = env.rank;
    try {
      state->work = launch();
    } catch (const std::exception& e) {
      return absl::UnavailableError(absl::StrCat(state->what, " failed on rank ", env.rank, ": ",
                                                 ExceptionText(e)));
    }
    return Pending(std::move(state));
  }
};

ProcessGroup::ProcessGroup(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
ProcessGroup::~ProcessGroup() = default;

absl::StatusOr<std::unique_ptr<ProcessGroup>> ProcessGroup::Create(
    const DistEnv& env, const ProcessGroupOptions& options) {
  if (absl::Status status = Validate(options); !status.ok()) return status;
  auto impl = std::make_unique<Impl>();
  impl->env = env;
  impl->options = options;
  impl->timeout = std::chrono::milliseconds(static_cast<int64_t>(options.timeout_s * 1000.0));
  const bool cuda = options.device == "cuda";
  impl->backend = options.backend == CommBackend::kAuto
                      ? (cuda ? CommBackend::kNccl : CommBackend::kGloo)
                      : options.backend;
  impl->device = cuda ? at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(env.local_rank))
                      : at::Device(at::kCPU);

  // The rendezvous store.
  const std::string where =
      absl::StartsWith(options.init_method, "file://")
          ? options.init_method
          : absl::StrCat(env.master_addr, ":", env.master_port);
  try {
    c10::intrusive_ptr<c10d::Store> base;
    if (env.world_size == 1) {
      base = c10::make_intrusive<c10d::HashStore>();
    } else if (absl::StartsWith(options.init_method, "file://")) {
      base = c10::make_intrusive<c10d::FileStore>(options.init_method.substr(7), env.world_size);
    } else {
      c10d::TCPStoreOptions store_options;
      store_options.port = static_cast<uint16_t>(env.master_port);
      store_options.isServer = !env.agent_store && env.rank == 0;
      store_options.numWorkers = env.world_size;
      store_options.waitWorkers = false;
      store_options.timeout = impl->timeout;
      base = c10::make_intrusive<c10d::TCPStore>(env.master_addr, store_options);
    }
    base->setTimeout(impl->timeout);
    impl->store = c10::make_intrusive<c10d::PrefixStore>(absl::StrCat("llmtrain/pg/", env.restart_count), base);
  } catch (const std::exception& e) {
    const bool server = !env.agent_store && env.rank == 0 && env.world_size > 1;
    return absl::UnavailableError(absl::StrCat(
        "rendezvous store at ", where, " (rank ", env.rank, " of ", env.world_size,
        server ? ", hosting it" : ", a client", "): ", ExceptionText(e)));
  }

  detail::BackendOptions backend_options;
  backend_options.rank = env.rank;
  backend_options.world_size = env.world_size;
  backend_options.timeout = impl->timeout;
  backend_options.single_node = env.num_nodes == 1;
  backend_options.gloo_threads = options.gloo_threads;
  backend_options.cuda_device = env.local_rank;
  absl::StatusOr<c10::intrusive_ptr<c10d::Backend>> pg =
      impl->backend == CommBackend::kNccl ? detail::MakeNcclBackend(impl->store, backend_options)
                                          : detail::MakeGlooBackend(impl->store, backend_options);
  if (!pg.ok()) return pg.status();
  impl->pg = *std::move(pg);
  return std::unique_ptr<ProcessGroup>(new ProcessGroup(std::move(impl)));
}

int ProcessGroup::rank() const { return impl_->env.rank; }
int ProcessGroup::world_size() const { return impl_->env.world_size; }
CommBackend ProcessGroup::backend() const { return impl_->backend; }
at::Device ProcessGroup::device() const { return impl_->device; }
int64_t ProcessGroup::collectives() const { return impl_->sequence; }

absl::Status ProcessGroup::AllReduce(at::Tensor& tensor, ReduceOp op) {
  c10d::AllreduceOptions opts;
  opts.reduceOp = op == ReduceOp::kSum ? c10d::ReduceOp::SUM : c10d::ReduceOp::MAX;
  opts.timeout = impl_->timeout;
  absl::StatusOr<Pending> pending = impl_->Run(
      op == ReduceOp::kSum ? Op::kAllReduceSum : Op::kAllReduceMax, tensor, tensor, 0, [&] {
        std::vector<at::Tensor> tensors = {tensor};
        return impl_->pg->allreduce(tensors, opts);
      });
  if (!pending.ok()) return pending.status();
  return pending->Wait();
}

absl::StatusOr<Pending> ProcessGroup::AllGatherIntoAsync(at::Tensor& out, const at::Tensor& shard) {
  c10d::AllgatherOptions opts;
  opts.timeout = impl_->timeout;
  return impl_->Run(Op::kAllGather, shard, out, 0, [&] {
    at::Tensor in = shard;
    return AllGatherSingle(*impl_->pg, out, in, opts);
  });
}

absl::Status ProcessGroup::AllGatherInto(at::Tensor& out, const at::Tensor& shard) {
  absl::StatusOr<Pending> pending = AllGatherIntoAsync(out, shard);
  if (!pending.ok()) return pending.status();
  return pending->Wait();
}

absl::StatusOr<Pending> ProcessGroup::ReduceScatterSumAsync(at::Tensor& out, const at::Tensor& in) {
  c10d::ReduceScatterOptions opts;
  opts.reduceOp = c10d::ReduceOp::SUM;
  opts.timeout = impl_->timeout;
  return impl_->Run(Op::kReduceScatter, in, out, 0, [&] {
    at::Tensor input = in;
    return ReduceScatterSingle(*impl_->pg, out, input, opts);
  });
}

absl::Status ProcessGroup::ReduceScatterSum(at::Tensor& out, const at::Tensor& in) {
  absl::StatusOr<Pending> pending = ReduceScatterSumAsync(out, in);
  if (!pending.ok()) return pending.status();
  return pending->Wait();
}

absl::Status ProcessGroup::Broadcast(at::Tensor& tensor, int root) {
  if (root < 0 || root >= impl_->env.world_size) {
    return absl::InvalidArgumentError(absl::StrCat("Broadcast: root ", root, " is not a rank of ",
                                                   impl_->env.world_size));
  }
  c10d::BroadcastOptions opts;
  opts.rootRank = root;
  opts.timeout = impl_->timeout;
  absl::StatusOr<Pending> pending = impl_->Run(Op::kBroadcast, tensor, tensor, root, [&] {
    std::vector<at::Tensor> tensors = {tensor};
    return impl_->pg->broadcast(tensors, opts);
  });
  if (!pending.ok()) return pending.status();
  return pending->Wait();
}

absl::Status ProcessGroup::Barrier() {
  // A barrier is an all-reduce of one element: Gloo's own barrier has no device, and this one
  // also takes part in the fingerprint check.
  at::Tensor token = at::empty({1}, at::TensorOptions().dtype(at::kLong).device(impl_->device));
  token.fill_(1);
  c10d::AllreduceOptions opts;
  opts.timeout = impl_->timeout;
  absl::StatusOr<Pending> pending = impl_->Run(Op::kBarrier, token, token, 0, [&] {
    std::vector<at::Tensor> tensors = {token};
    return impl_->pg->allreduce(tensors, opts);
  });
  if (!pending.ok()) return pending.status();
  return pending->Wait();
}

namespace {
// One scalar reduced over the group, on the group's device.
template <typename T>
absl::StatusOr<T> ReduceScalar(ProcessGroup& group, T value, ReduceOp op) {
  at::Tensor t = at::tensor({value}).to(group.device());
  if (absl::Status status = group.AllReduce(t, op); !status.ok()) return status;
  return t.cpu().data_ptr<T>()[0];
}
}  // namespace

absl::StatusOr<int64_t> ProcessGroup::SumInt(int64_t value) { return ReduceScalar(*this, value, ReduceOp::kSum); }
absl::StatusOr<int64_t> ProcessGroup::MaxInt(int64_t value) { return ReduceScalar(*this, value, ReduceOp::kMax); }
absl::StatusOr<double> ProcessGroup::SumDouble(double value) { return ReduceScalar(*this, value, ReduceOp::kSum); }

}  // namespace llmtrain::dist
