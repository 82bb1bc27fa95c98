// tokenizer_bench: batch encode throughput of our tokenizers against HF tokenizers (Rust,
// `encode_batch` on all threads), on the same real-text corpus (tests/reference/tokenizer_ref.py:
// 48k records of translations in many scripts, code, package descriptions, licenses), the same
// real vocabularies (Gemma 3 from the 270M GGUF, Qwen2.5 from qwen.tiktoken) and the same machine,
// in one run. Prints MB/s and tokens/s of both and the ratio.
//
//   build/bin/tokenizer_bench [--rounds=5]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "llmtrain/core/threads.h"
#include "llmtrain/tokenizer/tokenizer.h"
#include "nlohmann/json.hpp"

namespace {

using Clock = std::chrono::steady_clock;

std::vector<std::string> ReadCorpus(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream buffer;
  buffer << in.rdbuf();
  const std::string bytes = buffer.str();
  std::vector<std::string> records;
  for (size_t pos = 0; pos + 4 <= bytes.size();) {
    uint32_t n = 0;
    for (int k = 3; k >= 0; --k) n = (n << 8) | static_cast<unsigned char>(bytes[pos + k]);
    pos += 4;
    records.push_back(bytes.substr(pos, n));
    pos += n;
  }
  return records;
}

}  // namespace

int main(int argc, char** argv) {
  int rounds = 5;
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], "--rounds=", 9) == 0) rounds = std::max(1, std::atoi(argv[i] + 9));
  }
  const std::string dir = "bench_data/tokenizer_bench";
  const std::string gguf = std::string(LLMTRAIN_SOURCE_DIR) + "/.venv/models/gemma-3-270m-q4_k_m.gguf";
  const std::string command = absl::StrCat("mkdir -p ", dir, " && '", LLMTRAIN_PYTHON, "' '", LLMTRAIN_SOURCE_DIR,
                                           "/bench/tokenizer_bench_ref.py' ", dir, " '", gguf, "' ", rounds,
                                           " 2>/dev/null");
  std::string out;
  if (FILE* pipe = ::popen(command.c_str(), "r")) {
    char buf[4096];
    while (std::fgets(buf, sizeof(buf), pipe) != nullptr) out = buf;
    ::pclose(pipe);
  }
  const nlohmann::json ref = nlohmann::json::parse(out, nullptr, false);
  if (!ref.is_object()) {
    std::fprintf(stderr, "reference run failed: %s\n", out.c_str());
    return 1;
  }
  const auto records = ReadCorpus(dir + "/corpus.bin");
  const double mb = ref["bytes"].get<double>() / 1e6;
  std::printf("corpus: %zu records, %.1f MB; %d threads; median of %d rounds\n", records.size(), mb,
              llmtrain::NumThreads(), rounds);
  for (const std::string name : {"gemma", "qwen"}) {
    auto tok = llmtrain::tokenizer::Tokenizer::Load(name == "gemma" ? gguf : dir + "/" + name);
    if (!tok.ok()) {
      std::fprintf(stderr, "%s\n", std::string(tok.status().message()).c_str());
      return 1;
    }
    (void)(*tok)->EncodeBatch(records);  // warm-up
    std::vector<double> times;
    size_t tokens = 0;
    for (int r = 0; r < rounds; ++r) {
      const auto start = Clock::now();
      const auto ids = (*tok)->EncodeBatch(records);
      times.push_back(std::chrono::duration<double>(Clock::now() - start).count());
      tokens = 0;
      for (const auto& v : ids) tokens += v.size();
    }
    std::sort(times.begin(), times.end());
    const double ours = times[times.size() / 2];
    const double theirs = ref[name]["seconds"].get<double>();
    std::printf("%-6s HF tokenizers %6.2f MB/s %9.0f tok/s | llmtrain %6.2f MB/s %9.0f tok/s | ratio %.2fx%s\n",
                name.c_str(), mb / theirs, ref[name]["tokens"].get<double>() / theirs, mb / ours, tokens / ours,
                theirs / ours, tokens == ref[name]["tokens"].get<size_t>() ? "" : " (token counts differ!)");
  }
  return 0;
}
