// tokenizer_bench: batch encode throughput of our tokenizers against HF tokenizers (Rust,
// `encode_batch_fast`, ids without offsets, as ours), on the same real-text corpus
// (tests/reference/tokenizer_ref.py: translations in many scripts, code, package descriptions,
// licenses), the same real vocabularies (Gemma 3 from the 270M GGUF, Qwen2.5 from qwen.tiktoken),
// the same machine and the same number of threads, in one run. The reference is a resident child
// process (bench/tokenizer_bench_ref.py) that checks encode_batch_fast's ids against encode_batch's
// first; the sides alternate round by round and the medians are compared. Prints MB/s and tokens/s
// of both and the ratio.
//
//   build/bin/tokenizer_bench [--rounds=5]
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "llmtrain/core/threads.h"
#include "llmtrain/tokenizer/tokenizer.h"
#include "nlohmann/json.hpp"
#include "reference_process.h"

namespace {

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
  const int threads = llmtrain::NumThreads();
  const std::string dir = "bench_data/tokenizer_bench";
  const std::string gguf = std::string(LLMTRAIN_SOURCE_DIR) + "/.venv/models/gemma-3-270m-q4_k_m.gguf";
  // The reference writes the corpus and the tokenizers into `dir`, then says it is ready.
  llmtrain::bench::ReferenceProcess reference;
  const bool started =
      reference.Start({LLMTRAIN_PYTHON, std::string(LLMTRAIN_SOURCE_DIR) + "/bench/tokenizer_bench_ref.py", dir, gguf,
                       std::to_string(threads)});
  const nlohmann::json ref = started ? reference.Ask("") : nlohmann::json();
  if (!ref.is_object() || !ref.value("ready", false)) {
    std::fprintf(stderr, "reference run failed: %s\n", ref.dump().c_str());
    return 1;
  }
  const auto records = ReadCorpus(dir + "/corpus.bin");
  const double mb = ref.value("bytes", 0.0) / 1e6;
  std::printf("corpus: %zu records, %.1f MB; median of %d rounds, ours and the reference alternating\n",
              records.size(), mb, rounds);
  std::printf("threads: ours %d (LLMTRAIN_NUM_THREADS or all cores), HF tokenizers %d (RAYON_NUM_THREADS; "
              "TOKENIZERS_PARALLELISM=%s)\n",
              threads, ref.value("rayon_threads", 0), ref.value("tokenizers_parallelism", std::string()).c_str());
  for (const std::string name : {"gemma", "qwen"}) {
    auto tok = llmtrain::tokenizer::Tokenizer::Load(name == "gemma" ? gguf : dir + "/" + name);
    if (!tok.ok()) {
      std::fprintf(stderr, "%s\n", std::string(tok.status().message()).c_str());
      return 1;
    }
    // Encodes and drops the ids again, as the reference drops its encodings.
    size_t tokens = 0;
    const auto [ours_s, theirs_s] = llmtrain::bench::TimeAgainstReference(
        rounds,
        [&] {
          tokens = 0;
          for (const auto& ids : (*tok)->EncodeBatch(records)) tokens += ids.size();
        },
        &reference, "encode " + name);
    const double ours = llmtrain::bench::Median(ours_s);
    const double theirs = llmtrain::bench::Median(theirs_s);
    const size_t ref_tokens = ref.at("tokens").value(name, size_t{0});
    std::printf("%-6s HF tokenizers %6.2f MB/s %9.0f tok/s | llmtrain %6.2f MB/s %9.0f tok/s | ratio %.2fx%s\n",
                name.c_str(), mb / theirs, ref_tokens / theirs, mb / ours, tokens / ours, theirs / ours,
                tokens == ref_tokens ? "" : " (token counts differ!)");
  }
  return 0;
}
