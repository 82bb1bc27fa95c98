#include "llmtrain/core/threads.h"

#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <thread>
#include <vector>

namespace llmtrain {

int CpuCount() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
  return static_cast<int>(std::max(1L, sysconf(_SC_NPROCESSORS_ONLN)));
}

int NumThreads() {
  if (const char* env = std::getenv("LLMTRAIN_NUM_THREADS")) {
    const int n = std::atoi(env);
    if (n > 0) return n;
  }
  return std::max(1u, std::thread::hardware_concurrency());
}

void ParallelFor(int64_t n, int64_t min_chunk, const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  min_chunk = std::max<int64_t>(1, min_chunk);
  const int64_t n_chunks = std::min<int64_t>(NumThreads(), (n + min_chunk - 1) / min_chunk);
  if (n_chunks <= 1) {
    fn(0, n);
    return;
  }
  const int64_t per_chunk = (n + n_chunks - 1) / n_chunks;
  std::vector<std::thread> workers;
  workers.reserve(n_chunks - 1);
  for (int64_t c = 1; c < n_chunks; ++c) {
    const int64_t begin = c * per_chunk;
    const int64_t end = std::min(n, begin + per_chunk);
    if (begin < end) workers.emplace_back([&fn, begin, end] { fn(begin, end); });
  }
  fn(0, std::min(n, per_chunk));
  for (std::thread& t : workers) t.join();
}

}  // namespace llmtrain
