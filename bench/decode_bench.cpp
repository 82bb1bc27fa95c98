// decode_bench: greedy decoding of the real Gemma 3 270M GGUF from its packed weights against our
// float32 path and transformers, in one run on the same threads: tokens/s and the weight bytes a
// step reads.
//   float32   the file dequantized to float32 (the default load): 1.07 GB of weights per token
//   packed    quant::PackedLinearFactory: the file's Q4_K/Q5_0/Q6_K/Q8_0 blocks, the Q8_0 head,
//             (llmtrain generate --packed)
//   nf4       the QLoRA base: projections quantized to NF4 as they load, a float32 head
//             (llmtrain generate --load-in-4bit --packed)
//   packed x8 8 prompts decoded together (tokens/s of all rows)
//   packed bf16  packed with a bfloat16 KV cache (--kv-cache bf16)
//   reference transformers on the same GGUF, float32 (bench/model_bench_ref.py's decode)
//   llama.cpp the same GGUF through llama-cpp-python (bench/decode_bench_llama.py), when
//             scripts/build-llama-cpp has built .venv-llama/
// Each round times every side once, in turn, so the machine's drift hits all alike; medians are
// compared.
//
//   build/bin/decode_bench [--decode=32] [--rounds=5] [--trace=FILE] [--model=GGUF] [--device=cuda[:N]]
//
// --model: another GGUF (default: the real 270M from PyPI). --device=cuda moves our sides to the
// GPU (GgufLinear's CUDA kernels, QuantizedLinear's for nf4) and leaves transformers and
// llama.cpp out. Before timing, the packed side follows the float32 side for `decode` steps on
// one prompt (the float32 side's greedy token fed to both): the worst logit difference relative
// to the row's largest, and how many argmaxes differ, are printed.
// --trace writes a Chrome trace (ATen ops, our kernels' RECORD_FUNCTION ranges) of the packed side
// decoding 8 tokens, to see where a step's time goes.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/grad_mode.h>
#include <torch/csrc/autograd/profiler_legacy.h>

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "llmtrain/core/threads.h"
#include "llmtrain/model/decoder.h"
#include "llmtrain/model/generate.h"
#include "llmtrain/quant/gguf_linear.h"
#include "llmtrain/quant/quantized_linear.h"
#include "nlohmann/json.hpp"
#include "reference_process.h"

namespace {

using namespace llmtrain;
using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point start) { return std::chrono::duration<double>(Clock::now() - start).count(); }

// Weight bytes one decoding step reads: every projection's stored bytes and the head's (the
// embedding lookup reads one row per token and is left out).
double WeightBytesPerToken(const model::Decoder& m) {
  double bytes = 0;
  for (const std::string& name : m.LinearNames()) bytes += static_cast<double>(model::StoredBytes(*m.linear(name)));
  bytes += m.head_layer() != nullptr ? static_cast<double>(model::StoredBytes(*m.head_layer()))
                                     : static_cast<double>(m.lm_head().nbytes());
  return bytes;
}

}  // namespace

int main(int argc, char** argv) {
  int64_t decode = 32, rounds = 5;
  std::string trace, device_name = "cpu";
  std::string gguf = std::string(LLMTRAIN_SOURCE_DIR) + "/.venv/models/gemma-3-270m-q4_k_m.gguf";
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], "--trace=", 8) == 0) trace = argv[i] + 8;
    if (std::strncmp(argv[i], "--model=", 8) == 0) gguf = argv[i] + 8;
    if (std::strncmp(argv[i], "--device=", 9) == 0) device_name = argv[i] + 9;
    if (std::strncmp(argv[i], "--decode=", 9) == 0) decode = std::max<int64_t>(1, std::atoll(argv[i] + 9));
    if (std::strncmp(argv[i], "--rounds=", 9) == 0) rounds = std::max<int64_t>(1, std::atoll(argv[i] + 9));
  }
  std::optional<c10::Device> parsed_device;
  try {
    parsed_device.emplace(device_name);
  } catch (const c10::Error&) {
  }
  if (!parsed_device || (!parsed_device->is_cpu() && !parsed_device->is_cuda())) {
    std::fprintf(stderr, "--device=%s: expected cpu, cuda or cuda:N\n", device_name.c_str());
    return 2;
  }
  const c10::Device device = *parsed_device;
  const bool on_cpu = device.is_cpu();
  const int threads = NumThreads();
  at::set_num_threads(threads);
  bench::ReferenceProcess reference;
  const bool ref_started = on_cpu && reference.Start({LLMTRAIN_PYTHON, std::string(LLMTRAIN_SOURCE_DIR) +
                                                      "/bench/model_bench_ref.py", gguf, "16", std::to_string(threads)});
  const std::string llama_python = std::string(LLMTRAIN_SOURCE_DIR) + "/.venv-llama/bin/python";
  bench::ReferenceProcess llama;
  const bool llama_started =
      on_cpu && ::access(llama_python.c_str(), X_OK) == 0 &&
      llama.Start({llama_python, std::string(LLMTRAIN_SOURCE_DIR) + "/bench/decode_bench_llama.py", gguf,
                   std::to_string(threads)});

  struct Side {
    std::string name;
    std::unique_ptr<model::Decoder> model;
    int64_t batch = 1;
    std::optional<c10::ScalarType> cache;
    std::vector<double> tps;
  };
  std::vector<Side> sides;
  const auto load = [&](const std::string& name, model::DecoderOptions options, int64_t batch,
                        std::optional<c10::ScalarType> cache) {
    auto m = model::Decoder::Load(gguf, options);
    absl::Status moved = m.ok() && !on_cpu ? (*m)->MoveTo(device) : absl::OkStatus();
    if (!m.ok() || !moved.ok()) {
      std::fprintf(stderr, "%s: %s\n", name.c_str(),
                   std::string(m.ok() ? moved.message() : m.status().message()).c_str());
      std::exit(1);
    }
    sides.push_back({name, *std::move(m), batch, cache, {}});
  };
  load("float32", {}, 1, std::nullopt);
  model::DecoderOptions packed;
  packed.linear_factory = quant::PackedLinearFactory(std::nullopt);
  packed.head_through_factory = true;
  load("packed", packed, 1, std::nullopt);
  model::DecoderOptions nf4;
  nf4.linear_factory = quant::PackedLinearFactory(quant::Quant4Options{quant::QuantType::kNf4, 64, true});
  load("nf4", nf4, 1, std::nullopt);
  sides.push_back({"packed x8", nullptr, 8, std::nullopt, {}});  // the packed model, 8 rows
  sides.push_back({"packed bf16", nullptr, 1, at::kBFloat16, {}});  // with a bfloat16 KV cache
  const model::Decoder& packed_model = *sides[1].model;

  at::manual_seed(0);
  const int64_t vocab = sides[0].model->config().text.vocab_size;
  std::vector<std::vector<int64_t>> prompts;
  for (int r = 0; r < 8; ++r) {
    const at::Tensor ids = at::randint(0, vocab, {16}, at::kLong);
    prompts.emplace_back(ids.data_ptr<int64_t>(), ids.data_ptr<int64_t>() + 16);
  }
  const auto run = [&](Side& side, int64_t n) {
    const model::Decoder& m = side.model != nullptr ? *side.model : packed_model;
    model::GenerationOptions options;
    options.max_new_tokens = n;
    options.eos_token_ids = {-1};  // exactly n tokens
    options.kv_cache_dtype = side.cache;
    const auto start = Clock::now();
    int64_t tokens = 0;
    if (side.batch == 1) {
      auto out = model::Generate(m, prompts[0], options);
      tokens = out.ok() ? static_cast<int64_t>(out->size()) : 0;
    } else {
      auto out = model::GenerateBatch(m, std::vector<std::vector<int64_t>>(prompts.begin(), prompts.begin() + side.batch),
                                      options);
      if (out.ok()) for (const auto& row : *out) tokens += static_cast<int64_t>(row.size());
    }
    return tokens / Seconds(start);
  };
  for (Side& side : sides) run(side, 4);  // warm-up
  {
    // Lockstep on prompts[0]: both sides get the float32 side's greedy token at every step.
    at::NoGradGuard no_grad;
    const model::Decoder& dense = *sides[0].model;
    model::KvCache dense_cache, packed_cache;
    const at::Tensor ids = at::tensor(prompts[0], at::kLong).view({1, -1}).to(device);
    at::Tensor ld = dense.LastLogits(ids, at::ones_like(ids), &dense_cache).to(at::kCPU, at::kFloat);
    at::Tensor lp = packed_model.LastLogits(ids, at::ones_like(ids), &packed_cache).to(at::kCPU, at::kFloat);
    double worst = 0;
    int64_t differ = 0;
    for (int64_t step = 0; step < decode; ++step) {
      worst = std::max(worst, ((lp - ld).abs().amax(-1) / ld.abs().amax(-1)).max().item<double>());
      const at::Tensor next = ld.argmax(-1);
      differ += lp.argmax(-1).ne(next).sum().item<int64_t>();
      const at::Tensor step_ids = next.view({1, 1}).to(device);
      ld = dense.LastLogits(step_ids, at::ones_like(step_ids), &dense_cache).to(at::kCPU, at::kFloat);
      lp = packed_model.LastLogits(step_ids, at::ones_like(step_ids), &packed_cache).to(at::kCPU, at::kFloat);
    }
    std::printf("packed vs float32 on %s, %lld steps in lockstep: worst logit difference %.3e of the row's largest, "
                "%lld argmaxes differ\n", device.str().c_str(), static_cast<long long>(decode), worst,
                static_cast<long long>(differ));
  }
  if (std::getenv("DECODE_BREAKDOWN") != nullptr) {  // one step's products, layer by layer
    at::NoGradGuard no_grad;
    for (int side : {0, 1, 2}) {
      const model::Decoder& m = *sides[side].model;
      double total = 0;
      for (const std::string& name : m.LinearNames()) {
        const auto layer = m.linear(name);
        const at::Tensor x = at::randn({1, 1, layer->in_features()}).to(device);
        layer->Forward(x).cpu();
        const auto start = Clock::now();
        at::Tensor y;
        for (int k = 0; k < 10; ++k) y = layer->Forward(x);
        y.cpu();  // waits for the device's queue
        total += Seconds(start) / 10;
      }
      const at::Tensor h = at::randn({1, m.config().text.hidden_size}).to(device);
      double head = 0;
      {
        const auto start = Clock::now();
        at::Tensor y;
        for (int k = 0; k < 10; ++k) {
          y = m.head_layer() != nullptr ? m.head_layer()->Forward(h) : at::linear(h, m.lm_head());
        }
        y.cpu();
        head = Seconds(start) / 10;
      }
      std::printf("breakdown %-8s projections %.2f ms  head %.2f ms\n", sides[side].name.c_str(), total * 1e3, head * 1e3);
    }
  }
  if (!trace.empty()) {
    torch::autograd::profiler::RecordProfile profile(trace);
    run(sides[std::getenv("TRACE_SIDE") ? std::atoi(std::getenv("TRACE_SIDE")) : 1], 8);
  }

  const nlohmann::json ready = ref_started ? reference.Ask("") : nlohmann::json();
  const bool have_ref = ready.is_object() && ready.value("ready", false);
  if (!have_ref && on_cpu) std::printf("reference (transformers) failed to start: %s\n", ready.dump().c_str());
  const nlohmann::json llama_ready = llama_started ? llama.Ask("") : nlohmann::json();
  const bool have_llama = llama_ready.is_object() && llama_ready.value("ready", false);
  std::vector<double> ref_tps, llama_tps;
  for (int64_t round = 0; round < rounds; ++round) {
    for (Side& side : sides) side.tps.push_back(run(side, decode));
    if (have_ref) {
      const nlohmann::json r = reference.Ask(absl::StrCat("decode ", decode));
      ref_tps.push_back(r.value("n", 0) / std::max(1e-9, r.value("s", 1.0)));
    }
    if (have_llama) {
      const nlohmann::json r = llama.Ask(absl::StrCat("decode ", decode));
      llama_tps.push_back(r.value("n", 0) / std::max(1e-9, r.value("s", 1.0)));
    }
  }

  std::printf("%s on %s, greedy decode of %lld tokens after a 16-token prompt, median of %lld alternating rounds\n",
              gguf.substr(gguf.find_last_of('/') + 1).c_str(), device.str().c_str(), static_cast<long long>(decode),
              static_cast<long long>(rounds));
  std::printf("threads: ours %d (at::get_num_threads()), reference %d (torch.get_num_threads())\n",
              at::get_num_threads(), ready.value("torch_threads", 0));
  const double f32 = bench::Median(sides[0].tps);
  const double ref = bench::Median(ref_tps);
  for (const Side& side : sides) {
    const model::Decoder& m = side.model != nullptr ? *side.model : packed_model;
    const double tps = bench::Median(side.tps);
    std::printf("%-10s %7.1f tok/s  weights read per step %7.1f MB  vs float32 %.2fx", side.name.c_str(), tps,
                WeightBytesPerToken(m) / 1e6, tps / f32);
    if (have_ref) std::printf("  vs transformers %.2fx", tps / ref);
    std::printf("\n");
  }
  if (have_ref) std::printf("reference  %7.1f tok/s  (transformers float32, eager attention)\n", ref);
  if (have_llama) {
    const double lc = bench::Median(llama_tps);
    std::printf("llama.cpp  %7.1f tok/s  (llama-cpp-python %s, %d threads, the same GGUF); packed / llama.cpp %.2fx\n",
                lc, llama_ready.value("llama_cpp", std::string("?")).c_str(), llama_ready.value("threads", 0),
                bench::Median(sides[1].tps) / lc);
  } else {
    std::printf("llama.cpp: not run (%s)\n", on_cpu ? ".venv-llama is missing: scripts/build-llama-cpp builds it"
                                                  : "the comparison runs on the CPU only");
  }
  return 0;
}
