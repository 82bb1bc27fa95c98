// image_bench: images/s of decoding + Gemma 3's preprocessing (resize to 896 x 896, rescale,
// normalize) against transformers' Gemma3ImageProcessorPil on the same files, in one run. The
// reference (bench/image_bench_ref.py, a resident child process) runs on one thread; ours is timed on
// one thread (the like-for-like ratio) and on all cores (what the collator's loader uses: one image
// per core). That both sides compute the same pixel_values, bit for bit, is tests/data/image_test.cpp's.
//
//   build/bin/image_bench [--rounds=5]
#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "llmtrain/core/threads.h"
#include "llmtrain/data/image.h"
#include "nlohmann/json.hpp"
#include "reference_process.h"

int main(int argc, char** argv) {
  int rounds = 5;
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], "--rounds=", 9) == 0) rounds = std::max(1, std::atoi(argv[i] + 9));
  }
  const std::string dir = "bench_data/image_bench";
  llmtrain::bench::ReferenceProcess reference;
  const bool started =
      reference.Start({LLMTRAIN_PYTHON, std::string(LLMTRAIN_SOURCE_DIR) + "/bench/image_bench_ref.py", dir});
  const nlohmann::json ref = started ? reference.Ask("") : nlohmann::json();
  if (!ref.is_object() || !ref.value("ready", false)) {
    std::fprintf(stderr, "reference run failed: %s\n", ref.dump().c_str());
    return 1;
  }
  std::vector<std::string> files;
  {
    std::ifstream list(dir + "/files.txt");
    for (std::string line; std::getline(list, line);) {
      if (!line.empty()) files.push_back(line);
    }
  }
  const llmtrain::data::ImageProcessorConfig config = llmtrain::data::DefaultImageProcessor(896);
  const auto one = [&](const std::string& path) {
    auto image = llmtrain::data::LoadImage(path);
    if (!image.ok()) {
      std::fprintf(stderr, "%s\n", std::string(image.status().message()).c_str());
      std::exit(1);
    }
    return llmtrain::data::PreprocessImage(*image, config);
  };
  const auto serial = [&] {
    for (const std::string& f : files) (void)one(f);
  };
  const auto parallel = [&] {
    llmtrain::ParallelFor(static_cast<int64_t>(files.size()), 1, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) (void)one(files[static_cast<size_t>(i)]);
    });
  };
  const auto [ours_1, theirs] = llmtrain::bench::TimeAgainstReference(rounds, serial, &reference, "run");
  const auto [ours_all, unused] = llmtrain::bench::TimeAgainstReference(rounds, parallel, nullptr, "");
  const double n = static_cast<double>(files.size());
  const double o1 = llmtrain::bench::Median(ours_1), oa = llmtrain::bench::Median(ours_all);
  const double t = llmtrain::bench::Median(theirs);
  std::printf("images: %zu (12 JPEG 4:2:0 500x375, 2 JPEG 4:4:4 1024x768, 2 PNG 640x480) -> 896x896 pixel_values; "
              "median of %d rounds\n", files.size(), rounds);
  std::printf("transformers Gemma3ImageProcessorPil (1 thread):  %7.1f images/s\n", n / t);
  std::printf("ours, 1 thread:                                   %7.1f images/s   ratio %.2fx\n", n / o1, t / o1);
  std::printf("ours, %d threads (ParallelFor over images):         %7.1f images/s   ratio %.2fx\n",
              llmtrain::NumThreads(), n / oa, t / oa);
  return 0;
}
