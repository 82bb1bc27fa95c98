// io_bench: safetensors loading against Python safetensors, and GGUF K-quant dequantization
// against memcpy, on this machine, in one run. Prints one ratio line per pair at the end.
//
// The loads run against bench/io_bench_ref.py, a resident child process: one load of ours, then
// one of the reference, round by round, and the medians are compared, so the machine's drift hits
// both alike. Both sides load on one thread: safetensors' load_file reads tensor after tensor on
// the calling thread (see io_bench_ref.py), so ours does too. The dequantization and its memcpy
// baseline are Google benchmarks, both on NumThreads() threads.
//
//   build/bin/io_bench [--size_mib=1024] [--rounds=5] [google benchmark flags]
#include <ATen/ATen.h>
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "llmtrain/core/threads.h"
#include "llmtrain/io/gguf.h"
#include "llmtrain/io/safetensors.h"
#include "llmtrain/io/tensors.h"
#include "nlohmann/json.hpp"
#include "reference_process.h"

namespace {

using namespace llmtrain;

int64_t g_size_mib = 1024;
std::string g_file;

// A checkpoint-shaped file: bf16 tensors of 16 MiB each, g_size_mib in all. Written once.
std::string MakeSafetensorsFile() {
  const std::string path = absl::StrCat("bench_data/io_bench_", g_size_mib, "mib.safetensors");
  if (io::SafetensorsFile::Open(path).ok()) return path;
  std::system("mkdir -p bench_data");
  const int64_t tensor_bytes = 16 << 20;
  const int64_t n_tensors = g_size_mib / 16;
  std::vector<uint8_t> data(tensor_bytes);
  std::mt19937 rng(1);
  for (auto& b : data) b = static_cast<uint8_t>(rng());
  std::vector<io::TensorToWrite> tensors;
  for (int64_t i = 0; i < n_tensors; ++i) {
    tensors.push_back({absl::StrCat("model.layers.", i, ".weight"), Dtype::kBf16, {4096, 2048},
                       absl::MakeConstSpan(data)});
  }
  if (!io::WriteSafetensors(path, tensors).ok()) std::abort();
  return path;
}

std::unique_ptr<io::SafetensorsFile> OpenOrDie() {
  auto file = io::SafetensorsFile::Open(g_file);
  if (!file.ok()) {
    std::fprintf(stderr, "%s\n", std::string(file.status().message()).c_str());
    std::exit(1);
  }
  return *std::move(file);
}

// Ours, zero-copy: open (mmap + validate) and a LibTorch view of every tensor, then release them.
// The counterpart of Python's default load_file, whose tensors also view the mapped file.
void LoadViews() {
  const std::unique_ptr<io::SafetensorsFile> file = OpenOrDie();
  std::vector<at::Tensor> tensors;
  for (const io::TensorInfo& t : file->tensors()) tensors.push_back(io::TensorView(*file, t));
  benchmark::DoNotOptimize(tensors.data());
}

// Ours, owned: every tensor copied out of the mapping into its own at::Tensor, then released. The
// counterpart of load_file(backend="pread"), and like it on one thread, tensor after tensor.
void LoadOwned() {
  const std::unique_ptr<io::SafetensorsFile> file = OpenOrDie();
  std::vector<at::Tensor> tensors;
  for (const io::TensorInfo& t : file->tensors()) {
    at::Tensor owned = at::empty(t.shape, at::TensorOptions().dtype(io::ToScalarType(t.dtype)));
    const auto bytes = file->Data(t);
    std::memcpy(owned.data_ptr(), bytes.data(), bytes.size());
    tensors.push_back(std::move(owned));
  }
  benchmark::DoNotOptimize(tensors.data());
}

// Random K-quant blocks with finite f16 scales: n_blocks of `type`.
std::vector<uint8_t> RandomBlocks(io::GgmlType type, int64_t n_blocks) {
  const auto traits = *io::GetGgmlTypeTraits(static_cast<uint32_t>(type));
  std::vector<uint8_t> bytes(n_blocks * traits.block_bytes);
  std::mt19937 rng(7);
  for (auto& b : bytes) b = static_cast<uint8_t>(rng());
  const uint16_t scale = 0x2000;  // a small finite f16
  for (int64_t b = 0; b < n_blocks; ++b) {
    uint8_t* block = bytes.data() + b * traits.block_bytes;
    if (type == io::GgmlType::kQ6_K) {
      std::memcpy(block + 208, &scale, 2);
    } else {
      std::memcpy(block, &scale, 2);
      std::memcpy(block + 2, &scale, 2);
    }
  }
  return bytes;
}

constexpr int64_t kDequantElems = int64_t{64} << 20;  // 64 Mi floats out = 256 MiB

void BM_Dequantize(benchmark::State& state, io::GgmlType type) {
  const auto src = RandomBlocks(type, kDequantElems / 256);
  std::vector<float> dst(kDequantElems);
  for (auto _ : state) {
    if (!io::Dequantize(type, src, absl::MakeSpan(dst)).ok()) state.SkipWithError("dequantize failed");
    benchmark::DoNotOptimize(dst.data());
  }
  state.SetBytesProcessed(state.iterations() * kDequantElems * 4);  // float32 bytes written
}

// The bandwidth reference: copying the same number of output bytes, on all cores.
void BM_Memcpy(benchmark::State& state) {
  std::vector<float> src(kDequantElems, 1.0f), dst(kDequantElems);
  for (auto _ : state) {
    ParallelFor(kDequantElems, 1 << 20, [&](int64_t begin, int64_t end) {
      std::memcpy(dst.data() + begin, src.data() + begin, (end - begin) * 4);
    });
    benchmark::DoNotOptimize(dst.data());
  }
  state.SetBytesProcessed(state.iterations() * kDequantElems * 4);
}

// Collects each benchmark's bytes per second for the ratio lines.
class RatioReporter : public benchmark::ConsoleReporter {
 public:
  void ReportRuns(const std::vector<Run>& runs) override {
    ConsoleReporter::ReportRuns(runs);
    for (const Run& run : runs) {
      if (run.run_type == Run::RT_Iteration && run.counters.count("bytes_per_second")) {
        bytes_per_second[run.run_name.function_name] = run.counters.at("bytes_per_second");
      }
    }
  }
  std::map<std::string, double> bytes_per_second;
};

}  // namespace

int main(int argc, char** argv) {
  int64_t rounds = 5;
  std::vector<char*> args;
  for (int i = 0; i < argc; ++i) {
    if (std::strncmp(argv[i], "--size_mib=", 11) == 0) {
      g_size_mib = std::atoll(argv[i] + 11);
    } else if (std::strncmp(argv[i], "--rounds=", 9) == 0) {
      rounds = std::max<int64_t>(1, std::atoll(argv[i] + 9));
    } else {
      args.push_back(argv[i]);
    }
  }
  int n_args = static_cast<int>(args.size());
  benchmark::Initialize(&n_args, args.data());
  g_file = MakeSafetensorsFile();
  benchmark::RegisterBenchmark("dequant/Q4_K", BM_Dequantize, io::GgmlType::kQ4_K)->Unit(benchmark::kMillisecond)->UseRealTime();
  benchmark::RegisterBenchmark("dequant/Q6_K", BM_Dequantize, io::GgmlType::kQ6_K)->Unit(benchmark::kMillisecond)->UseRealTime();
  benchmark::RegisterBenchmark("memcpy", BM_Memcpy)->Unit(benchmark::kMillisecond)->UseRealTime();
  RatioReporter reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter);

  // Started after the Google benchmarks, so that nothing else runs while they do. It warms the page
  // cache with one load of each kind before it says it is ready; TimeAgainstReference warms ours.
  bench::ReferenceProcess reference;
  const bool started =
      reference.Start({LLMTRAIN_PYTHON, std::string(LLMTRAIN_SOURCE_DIR) + "/bench/io_bench_ref.py", g_file});
  const nlohmann::json ready = started ? reference.Ask("") : nlohmann::json();
  const bool have_reference = ready.is_object() && ready.value("ready", false);
  std::printf("\nfile %s (%lld MiB, %lld tensors); loads: median of %lld rounds, ours and the reference alternating\n",
              g_file.c_str(), static_cast<long long>(g_size_mib), static_cast<long long>(g_size_mib / 16),
              static_cast<long long>(rounds));
  if (have_reference) {
    std::printf("threads: loads ours 1, reference %d (safetensors' sequential reader; torch.get_num_threads() %d); "
                "dequant and memcpy ours %d\n",
                ready.value("reader_threads", 0), ready.value("torch_threads", 0), NumThreads());
  } else {
    std::printf("threads: loads ours 1, reference not run (no .venv with torch + safetensors); dequant and memcpy "
                "ours %d\n", NumThreads());
  }
  for (const auto& [name, command, label, load] :
       {std::tuple{"safetensors_mmap", "mmap", "load_file()", &LoadViews},
        std::tuple{"safetensors_owned", "pread", "load_file(backend=\"pread\")", &LoadOwned}}) {
    const auto [ours, theirs] = bench::TimeAgainstReference(rounds, load, have_reference ? &reference : nullptr, command);
    const double ours_s = bench::Median(ours);
    if (have_reference) {
      const double ref_s = bench::Median(theirs);
      std::printf("%s  reference (python safetensors %s) %.2f ms  llmtrain %.2f ms  ratio %.2fx\n", name, label,
                  ref_s * 1e3, ours_s * 1e3, ref_s / ours_s);
    } else {
      std::printf("%s  reference not run  llmtrain %.2f ms\n", name, ours_s * 1e3);
    }
  }
  const double memcpy_bps = reporter.bytes_per_second["memcpy"];
  for (const char* type : {"Q4_K", "Q6_K"}) {
    const double bps = reporter.bytes_per_second[absl::StrCat("dequant/", type)];
    std::printf("dequant/%s  memcpy %.2f GB/s  llmtrain %.2f GB/s (float32 out)  ratio %.2f of memcpy\n",
                type, memcpy_bps / 1e9, bps / 1e9, bps / memcpy_bps);
  }
  benchmark::Shutdown();
  return 0;
}
