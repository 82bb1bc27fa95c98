// The only file that includes ProcessGroupGloo.hpp: the torch wheel ships Gloo's compiled code
// but not its headers, which come from Debian's libgloo-dev (scripts/bootstrap). Their layout
// is compatible because ProcessGroupGloo holds Gloo objects only behind shared_ptr, and we use
// no inline code of Gloo's own (docs/building.md).
#include <cstdlib>

#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>

#include "absl/strings/str_cat.h"
#include "dist/backends.h"

namespace llmtrain::dist::detail {

absl::StatusOr<c10::intrusive_ptr<c10d::Backend>> MakeGlooBackend(
    const c10::intrusive_ptr<c10d::Store>& store, const BackendOptions& options) {
  try {
    auto gloo_options = c10d::ProcessGroupGloo::Options::create(options.timeout);
    // GLOO_SOCKET_IFNAME (torch's variable) picks the network interface; on one machine the
    // loopback device, so that a host name that resolves to nothing reachable cannot matter.
    const char* ifname = std::getenv("GLOO_SOCKET_IFNAME");
    if (ifname != nullptr && *ifname != '\0') {
      gloo_options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(ifname));
    } else if (options.single_node) {
      gloo_options->devices.push_back(
          c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
    } else {
      gloo_options->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
    }
    gloo_options->threads = options.gloo_threads;
    return c10::intrusive_ptr<c10d::Backend>(c10::make_intrusive<c10d::ProcessGroupGloo>(
        store, options.rank, options.world_size, gloo_options));
  } catch (const std::exception& e) {
    return absl::UnavailableError(absl::StrCat("Gloo process group (rank ", options.rank, " of ",
                                               options.world_size, "): ", ExceptionText(e)));
  }
}

}  // namespace llmtrain::dist::detail
