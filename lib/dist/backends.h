// The c10d backends behind dist::ProcessGroup, each in its own translation unit so that Gloo's
// headers (Debian libgloo-dev) and NCCL's (the torch wheel's nvidia-nccl) each reach one file.
#pragma once

#include <chrono>
#include <string>

#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/Store.hpp>

#include "absl/status/statusor.h"

namespace llmtrain::dist::detail {

struct BackendOptions {
  int rank = 0;
  int world_size = 1;
  std::chrono::milliseconds timeout{1800000};
  bool single_node = true;  ///< Gloo: bind to loopback unless GLOO_SOCKET_IFNAME says otherwise
  int gloo_threads = 2;
  int cuda_device = 0;      ///< NCCL: this rank's GPU
};

/// Gloo over the store (lib/dist/gloo_backend.cpp).
absl::StatusOr<c10::intrusive_ptr<c10d::Backend>> MakeGlooBackend(
    const c10::intrusive_ptr<c10d::Store>& store, const BackendOptions& options);

/// NCCL over the store (lib/dist/nccl_backend.cpp); FailedPrecondition in builds without CUDA
/// or on a machine without a GPU.
absl::StatusOr<c10::intrusive_ptr<c10d::Backend>> MakeNcclBackend(
    const c10::intrusive_ptr<c10d::Store>& store, const BackendOptions& options);

/// c10::Error's message without its backtrace; other exceptions' what().
std::string ExceptionText(const std::exception& e);

}  // namespace llmtrain::dist::detail
