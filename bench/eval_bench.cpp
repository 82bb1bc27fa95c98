// eval_bench: the generation half of `llmtrain eval` on the real Gemma 3 270M (GGUF, float32):
// greedy replies to chat prompts (one question per installed Debian package, rendered with the
// model's template), records per second one prompt at a time and in left-padded batches, against
// transformers' generate() on the same prompts, threads and end tokens, one batch size of each
// side alternating round by round. Also prints how many replies of each side are the same ids.
//
//   build/bin/eval_bench [--prompts=16] [--max-new-tokens=24] [--batch=8] [--rounds=2]
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "llmtrain/core/atomic_file.h"
#include "llmtrain/core/threads.h"
#include "llmtrain/data/builtin.h"
#include "llmtrain/eval/evaluate.h"
#include "llmtrain/model/decoder.h"
#include "llmtrain/model/generate.h"
#include "llmtrain/tokenizer/chat_template.h"
#include "llmtrain/tokenizer/tokenizer.h"
#include "nlohmann/json.hpp"
#include "reference_process.h"

namespace {

using namespace llmtrain;
using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point start) { return std::chrono::duration<double>(Clock::now() - start).count(); }

}  // namespace

int main(int argc, char** argv) {
  int64_t n_prompts = 16, max_new = 24, batch = 8, rounds = 2;
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], "--prompts=", 10) == 0) n_prompts = std::max<int64_t>(1, std::atoll(argv[i] + 10));
    if (std::strncmp(argv[i], "--max-new-tokens=", 17) == 0) max_new = std::max<int64_t>(1, std::atoll(argv[i] + 17));
    if (std::strncmp(argv[i], "--batch=", 8) == 0) batch = std::max<int64_t>(2, std::atoll(argv[i] + 8));
    if (std::strncmp(argv[i], "--rounds=", 9) == 0) rounds = std::max<int64_t>(1, std::atoll(argv[i] + 9));
  }
  const int threads = NumThreads();
  at::set_num_threads(threads);
  const std::string gguf = std::string(LLMTRAIN_SOURCE_DIR) + "/.venv/models/gemma-3-270m-q4_k_m.gguf";
  auto model = model::Decoder::Load(gguf, {});
  auto tok = tokenizer::Tokenizer::Load(gguf);
  if (!model.ok() || !tok.ok()) {
    std::fprintf(stderr, "cannot load %s\n", gguf.c_str());
    return 1;
  }
  auto chat = tokenizer::ChatTemplate::ForTokenizer(**tok);
  auto packages = data::ReadDpkgStatus(data::kDpkgStatusPath);
  if (!chat.ok() || !packages.ok()) {
    std::fprintf(stderr, "no chat template or no dpkg database\n");
    return 1;
  }
  // Every k-th package, so that names (and prompt lengths) vary.
  std::vector<eval::GenerationItem> items;
  nlohmann::json prompts = nlohmann::json::array();
  const size_t stride = std::max<size_t>(1, packages->size() / static_cast<size_t>(n_prompts));
  for (size_t i = 0; i < packages->size() && static_cast<int64_t>(items.size()) < n_prompts; i += stride) {
    tokenizer::Message m;
    m.role = "user";
    m.content = absl::StrCat("What does the Debian package ", (*packages)[i].name, " do? Answer in one sentence.");
    auto rendered = (*chat)->Render({m}, /*add_generation_prompt=*/true);
    if (!rendered.ok()) continue;
    const std::vector<int32_t> ids = tokenizer::EncodeRendered(**tok, *rendered).ids;
    eval::GenerationItem item;
    item.where = {(*packages)[i].name};
    item.prompt_ids.assign(ids.begin(), ids.end());
    prompts.push_back(item.prompt_ids);
    items.push_back(std::move(item));
  }
  const std::string prompts_path = "/tmp/llmtrain_eval_bench_prompts.json";
  const nlohmann::json spec = {{"prompts", prompts}, {"pad", tok->get()->pad_id().value_or(0)}, {"eos", (*model)->eos_token_ids()}};
  if (!WriteFileAtomically(prompts_path, spec.dump()).ok()) return 1;
  bench::ReferenceProcess reference;
  const bool started = reference.Start({LLMTRAIN_PYTHON, std::string(LLMTRAIN_SOURCE_DIR) + "/bench/eval_bench_ref.py",
                                        gguf, prompts_path, std::to_string(max_new), std::to_string(threads)});
  model::GenerationOptions greedy;
  greedy.max_new_tokens = max_new;
  auto ours = [&](int64_t b, std::vector<eval::GenerationItem>* out) {
    *out = items;
    const auto start = Clock::now();
    const absl::Status s = eval::GeneratePredictions(**model, **tok, greedy, out, {}, b);
    const double t = Seconds(start);
    if (!s.ok()) std::fprintf(stderr, "%s\n", std::string(s.message()).c_str());
    return t;
  };
  std::vector<eval::GenerationItem> warm;
  ours(batch, &warm);  // warm-up while the reference loads
  const nlohmann::json ready = started ? reference.Ask("") : nlohmann::json();
  if (!ready.is_object() || !ready.value("ready", false)) {
    std::printf("reference run failed to start (%s)\n", ready.dump().c_str());
    return 1;
  }
  std::vector<double> ours_one, ours_batched, ref_one, ref_batched;
  std::vector<eval::GenerationItem> one_out, batched_out;
  nlohmann::json ref_batched_reply;
  for (int64_t r = 0; r < rounds; ++r) {
    ours_one.push_back(ours(1, &one_out));
    ref_one.push_back(reference.Ask("generate 1").value("s", 0.0));
    ours_batched.push_back(ours(batch, &batched_out));
    ref_batched_reply = reference.Ask(absl::StrCat("generate ", batch));
    ref_batched.push_back(ref_batched_reply.value("s", 0.0));
  }
  // Replies compared as ids: ours re-encoded is not exact, so generate once more to get ids.
  int64_t same_as_ref = 0, same_batched = 0;
  std::vector<std::vector<int64_t>> prompt_ids;
  for (const eval::GenerationItem& item : items) prompt_ids.push_back(item.prompt_ids);
  auto ids = model::GenerateBatch(**model, prompt_ids, greedy);
  for (size_t i = 0; i < items.size(); ++i) {
    same_batched += one_out[i].prediction == batched_out[i].prediction;
    if (ids.ok() && ref_batched_reply.contains("outputs")) {
      same_as_ref += (*ids)[i] == ref_batched_reply["outputs"][i].get<std::vector<int64_t>>();
    }
  }
  const double n = static_cast<double>(items.size());
  const double o1 = n / bench::Median(ours_one), ob = n / bench::Median(ours_batched);
  const double r1 = n / bench::Median(ref_one), rb = n / bench::Median(ref_batched);
  std::printf("eval_bench: real Gemma 3 270M (float32), %zu chat prompts, greedy, up to %lld new tokens, %lld rounds\n",
              items.size(), static_cast<long long>(max_new), static_cast<long long>(rounds));
  std::printf("threads: ours %d (at::get_num_threads()), reference %d (torch.get_num_threads())\n",
              at::get_num_threads(), ready.value("torch_threads", 0));
  std::printf("  ours, one prompt at a time:         %7.3f records/s\n", o1);
  std::printf("  ours, batches of %-3lld (left-padded):  %7.3f records/s  (%.2fx one at a time)\n",
              static_cast<long long>(batch), ob, ob / o1);
  std::printf("  transformers generate(), batch 1:   %7.3f records/s\n", r1);
  std::printf("  transformers generate(), batch %-3lld: %7.3f records/s\n", static_cast<long long>(batch), rb);
  std::printf("  ratio ours / transformers: %.2fx at batch 1, %.2fx at batch %lld\n", o1 / r1, ob / rb,
              static_cast<long long>(batch));
  std::printf("  replies: %lld of %zu the same batched as one at a time; %lld of %zu the same ids as transformers' "
              "batched generate()\n",
              static_cast<long long>(same_batched), items.size(), static_cast<long long>(same_as_ref), items.size());
  return 0;
}
