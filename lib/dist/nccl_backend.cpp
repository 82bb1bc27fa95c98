// The only file that includes ProcessGroupNCCL.hpp. Its Options embed ncclConfig_t, whose size
// changed between NCCL releases, so this file must see the nccl.h of the NCCL that the torch
// wheel was built with (site-packages/nvidia/nccl/include, put first by CMakeLists.txt), not the
// CUDA toolkit's older one.
#include "dist/backends.h"

#include "absl/strings/str_cat.h"

#if LLMTRAIN_WITH_CUDA
#include <c10/cuda/CUDAFunctions.h>
#include <nccl.h>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

namespace llmtrain::dist::detail {

std::string ExceptionText(const std::exception& e) {
  if (const auto* error = dynamic_cast<const c10::Error*>(&e)) {
    return error->what_without_backtrace();
  }
  return e.what();
}

#if LLMTRAIN_WITH_CUDA
// CMake reads the version of the NCCL wheel next to torch (cmake/LlmtrainDist.cmake).
static_assert(NCCL_VERSION_CODE ==
                  NCCL_VERSION(LLMTRAIN_TORCH_NCCL_MAJOR, LLMTRAIN_TORCH_NCCL_MINOR, LLMTRAIN_TORCH_NCCL_PATCH),
              "nccl.h must be the one of torch's NCCL wheel (nvidia/nccl/include), not the CUDA toolkit's");

absl::StatusOr<c10::intrusive_ptr<c10d::Backend>> MakeNcclBackend(
    const c10::intrusive_ptr<c10d::Store>& store, const BackendOptions& options) {
  try {
    const int devices = c10::cuda::device_count();
    if (devices == 0) {
      return absl::FailedPreconditionError(
          "NCCL process group: this machine has no CUDA device (use the Gloo backend on CPU)");
    }
    if (options.cuda_device >= devices) {
      return absl::FailedPreconditionError(absl::StrCat(
          "NCCL process group: LOCAL_RANK ", options.cuda_device, " needs GPU ",
          options.cuda_device, ", and this machine has ", devices));
    }
    c10::cuda::set_device(static_cast<c10::DeviceIndex>(options.cuda_device));
    auto nccl_options = c10d::ProcessGroupNCCL::Options::create();
    nccl_options->timeout = options.timeout;
    return c10::intrusive_ptr<c10d::Backend>(c10::make_intrusive<c10d::ProcessGroupNCCL>(
        store, options.rank, options.world_size, nccl_options));
  } catch (const std::exception& e) {
    return absl::UnavailableError(absl::StrCat("NCCL process group (rank ", options.rank, " of ",
                                               options.world_size, "): ", ExceptionText(e)));
  }
}
#else
absl::StatusOr<c10::intrusive_ptr<c10d::Backend>> MakeNcclBackend(
    const c10::intrusive_ptr<c10d::Store>&, const BackendOptions&) {
  return absl::FailedPreconditionError(
      "NCCL process group: this llmtrain was built without CUDA (nvcc was not found)");
}
#endif

}  // namespace llmtrain::dist::detail
