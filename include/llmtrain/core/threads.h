// Data-parallel loops over a range, on all cores.
//
//   ParallelFor(n_blocks, /*min_chunk=*/1024, [&](int64_t begin, int64_t end) {
//     for (int64_t b = begin; b < end; ++b) DequantizeBlock(b);
//   });
#pragma once

#include <cstdint>
#include <functional>

namespace llmtrain {

/// The cores this process may run on (its CPU affinity mask; the online CPUs if that is unknown).
int CpuCount();

/// Threads used by ParallelFor: LLMTRAIN_NUM_THREADS if set, else the hardware concurrency.
int NumThreads();

/// Calls `fn(begin, end)` on disjoint chunks covering [0, n), on up to NumThreads() threads,
/// each chunk at least `min_chunk` items (so small inputs stay on the calling thread). Returns
/// when every chunk is done. `fn` must not throw.
void ParallelFor(int64_t n, int64_t min_chunk, const std::function<void(int64_t, int64_t)>& fn);

}  // namespace llmtrain
