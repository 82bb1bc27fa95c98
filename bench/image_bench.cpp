// image_bench: the two costs images add to fine-tuning, each against transformers in one run.
//
// Part "preprocess": images/s of decoding + Gemma 3's preprocessing (resize to 896 x 896,
// rescale, normalize) against transformers' Gemma3ImageProcessorPil on the same files. The
// reference (bench/image_bench_ref.py, a resident child process) runs on one thread; ours is timed
// on one thread (the like-for-like ratio) and on all cores (what the collator's loader uses: one
// image per core). That both sides compute the same pixel_values, bit for bit, is
// tests/data/image_test.cpp's.
//
// Part "step": QLoRA training steps of the example's image+text model (examples/specs/
// gemma3_vlm_cpu.textproto: `llmtrain make-vlm` of the real Gemma 3 270M decoder with a new SigLIP
// tower of 2 layers × 128, 224 px in 14 px patches, 16 tokens per image), NF4 with double
// quantization for the decoder's and the tower's projections, LoRA r=16 on the decoder's q/k/v/o
// and the tower's q/k/v/out (so the backward goes through the tower too), AdamW, float32 compute,
// one image per row; against transformers + PEFT + bitsandbytes (bench/vlm_step_ref.py) on the
// same folder, batch, targets and threads. That both compute the same steps is
// tests/train/vlm_train_test.cpp's.
//
//   build/bin/image_bench [--part=all|preprocess|step] [--rounds=5] [--batch=4] [--seq=96] [--rank=16]
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "llmtrain/core/threads.h"
#include "llmtrain/data/collator.h"
#include "llmtrain/data/image.h"
#include "llmtrain/io/safetensors.h"
#include "llmtrain/kernels/cross_entropy.h"
#include "llmtrain/lora/lora.h"
#include "llmtrain/model/decoder.h"
#include "llmtrain/quant/quantized_linear.h"
#include "llmtrain/train/optimizer.h"
#include "nlohmann/json.hpp"
#include "reference_process.h"

namespace llmtrain {
namespace {

// This program's folder (build/bin).
std::filesystem::path BinaryDir() {
  std::error_code ec;
  return std::filesystem::read_symlink("/proc/self/exe", ec).parent_path();
}

// Generated inputs live in the build tree (git-ignored): build/bench_data/<part>.
std::string BenchDataDir(const char* part) { return (BinaryDir().parent_path() / "bench_data" / part).string(); }

int PreprocessPart(int rounds) {
  const std::string dir = BenchDataDir("image_bench");
  bench::ReferenceProcess reference;
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
  const data::ImageProcessorConfig config = data::DefaultImageProcessor(896);
  const auto one = [&](const std::string& path) {
    auto image = data::LoadImage(path);
    if (!image.ok()) {
      std::fprintf(stderr, "%s\n", std::string(image.status().message()).c_str());
      std::exit(1);
    }
    return data::PreprocessImage(*image, config);
  };
  const auto serial = [&] {
    for (const std::string& f : files) (void)one(f);
  };
  const auto parallel = [&] {
    ParallelFor(static_cast<int64_t>(files.size()), 1, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) (void)one(files[static_cast<size_t>(i)]);
    });
  };
  const auto [ours_1, theirs] = bench::TimeAgainstReference(rounds, serial, &reference, "run");
  const auto [ours_all, unused] = bench::TimeAgainstReference(rounds, parallel, nullptr, "");
  const double n = static_cast<double>(files.size());
  const double o1 = bench::Median(ours_1), oa = bench::Median(ours_all);
  const double t = bench::Median(theirs);
  std::printf("images: %zu (12 JPEG 4:2:0 500x375, 2 JPEG 4:4:4 1024x768, 2 PNG 640x480) -> 896x896 pixel_values; "
              "median of %d rounds\n", files.size(), rounds);
  std::printf("transformers Gemma3ImageProcessorPil (1 thread):  %7.1f images/s\n", n / t);
  std::printf("ours, 1 thread:                                   %7.1f images/s   ratio %.2fx\n", n / o1, t / o1);
  std::printf("ours, %d threads (ParallelFor over images):         %7.1f images/s   ratio %.2fx\n",
              NumThreads(), n / oa, t / oa);
  return 0;
}

int StepPart(int64_t rounds, int64_t batch, int64_t seq, int64_t rank) {
  const std::string dir = BenchDataDir("vlm_step");
  const std::string model_dir = dir + "/model";
  const std::string gguf = std::string(LLMTRAIN_SOURCE_DIR) + "/.venv/models/gemma-3-270m-q4_k_m.gguf";
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (!std::filesystem::exists(model_dir + "/config.json")) {
    const std::string cli = (BinaryDir() / "llmtrain").string();
    const std::string command = cli + " make-vlm --text " + gguf + " --output " + model_dir + " > " + dir + "/make_vlm.log";
    if (std::system(command.c_str()) != 0) {
      std::fprintf(stderr, "image_bench: %s failed (see %s/make_vlm.log)\n", command.c_str(), dir.c_str());
      return 1;
    }
  }
  model::DecoderOptions options;
  quant::Quant4Options q4;  // QLoRA's base: NF4, blocks of 64, double quantization
  q4.blocksize = 64;
  q4.double_quant = true;
  options.linear_factory = quant::QuantizedLinearFactory(q4);
  auto loaded = model::Decoder::Load(model_dir, options);
  if (!loaded.ok()) {
    std::fprintf(stderr, "%s\n", std::string(loaded.status().message()).c_str());
    return 1;
  }
  model::Decoder& model = **loaded;
  const int64_t n = model.tokens_per_image(), side = model.image_size();
  if (seq < n + 8) {
    std::fprintf(stderr, "--seq must be at least %lld (an image's %lld tokens and some text)\n",
                 static_cast<long long>(n + 8), static_cast<long long>(n));
    return 2;
  }
  // Rows: <bos> <start_of_image> n × soft token <end_of_image>, then caption-like random text;
  // the loss is on the text only (the collator's assistant-only labels).
  const auto& cfg = *model.config().vision;
  at::manual_seed(0);
  at::Tensor ids = at::randint(10, model.config().text.vocab_size - 10, {batch, seq}, at::kLong);
  ids.select(1, 0).fill_(model.config().text.bos_token_id.value_or(2));
  ids.select(1, 1).fill_(model.config().boi_token_index);
  ids.narrow(1, 2, n).fill_(model.image_token_id());
  ids.select(1, 2 + n).fill_(model.config().eoi_token_index);
  const at::Tensor types = ids.eq(model.image_token_id()).to(at::kLong);
  at::Tensor labels = ids.clone();
  labels.narrow(1, 0, 3 + n).fill_(data::kIgnoreIndex);
  const at::Tensor pixels = at::rand({batch, 3, side, side}, at::kFloat) * 2 - 1;
  {
    std::vector<io::TensorToWrite> out;
    const auto add = [&](const char* name, const at::Tensor& t, Dtype dtype) {
      out.push_back({name, dtype, t.sizes().vec(),
                     absl::Span<const uint8_t>(static_cast<const uint8_t*>(t.data_ptr()), t.nbytes())});
    };
    add("input_ids", ids, Dtype::kI64);
    add("token_type_ids", types, Dtype::kI64);
    add("labels", labels, Dtype::kI64);
    add("pixel_values", pixels, Dtype::kF32);
    if (auto s = io::WriteSafetensors(dir + "/batch.safetensors", out); !s.ok()) {
      std::fprintf(stderr, "%s\n", std::string(s.message()).c_str());
      return 1;
    }
  }
  const std::string target = R"(.*(language_model\.layers\.\d+\.self_attn\.(q|k|v|o)_proj|vision_tower.*self_attn\.(q|k|v|out)_proj))";
  const int threads = NumThreads();
  at::set_num_threads(threads);
  bench::ReferenceProcess reference;
  const nlohmann::json ready =
      reference.Start({LLMTRAIN_PYTHON, std::string(LLMTRAIN_SOURCE_DIR) + "/bench/vlm_step_ref.py", model_dir,
                       dir + "/batch.safetensors", std::to_string(rank), target, std::to_string(threads)})
          ? reference.Ask("")
          : nlohmann::json();
  const bool have_reference = ready.is_object() && ready.value("ready", false);
  if (!have_reference) std::fprintf(stderr, "reference not run: %s\n", ready.dump().c_str());

  lora::LoraConfig config;
  config.r = rank;
  config.alpha = 2.0 * static_cast<double>(rank);
  config.dropout = 0.0;
  config.target_regex = target;
  auto adapted = lora::InjectLora(&model, config);
  if (!adapted.ok()) {
    std::fprintf(stderr, "%s\n", std::string(adapted.status().message()).c_str());
    return 1;
  }
  int64_t tower_adapters = 0;
  for (const std::string& name : *adapted) tower_adapters += name.find("vision_tower") != std::string::npos;
  lora::SetTraining(&model, true);
  std::vector<at::Tensor> params;
  for (const auto& [key, t] : lora::TrainableParameters(model, config)) params.push_back(t);
  train::AdamW adam(params, {.lr = 1e-4, .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8, .weight_decay = 0.0});
  model::ImageInputs images;
  images.pixel_values = pixels;
  images.token_type_ids = types;
  const auto step = [&] {
    const at::Tensor hidden = model.Hidden(ids, {}, {}, images);
    const int64_t c = hidden.size(-1);
    const kernels::CrossEntropyResult ce = kernels::ChunkedCrossEntropy(
        hidden.narrow(1, 0, seq - 1).reshape({-1, c}), model.lm_head(), labels.narrow(1, 1, seq - 1).reshape({-1}), {});
    (ce.loss_sum / static_cast<double>(ce.n_tokens)).backward();
    adam.Step(1e-4);
    for (at::Tensor& p : params) p.mutable_grad() = at::Tensor();
  };
  const auto [ours, theirs] = bench::TimeAgainstReference(rounds, step, have_reference ? &reference : nullptr, "step");
  const double tokens = static_cast<double>(batch * seq);
  const double o = bench::Median(ours);
  std::printf("VLM step: %s (SigLIP %lld layers × %lld, %lld px / %lld px patches, %lld tokens per image), NF4 + double "
              "quant, LoRA r=%lld on %zu projections (%lld in the tower), AdamW, f32; batch %lld × %lld tokens, one image "
              "per row; median of %lld rounds\n",
              model_dir.c_str(), static_cast<long long>(cfg.num_hidden_layers), static_cast<long long>(cfg.hidden_size),
              static_cast<long long>(side), static_cast<long long>(cfg.patch_size), static_cast<long long>(n),
              static_cast<long long>(rank), adapted->size(), static_cast<long long>(tower_adapters),
              static_cast<long long>(batch), static_cast<long long>(seq), static_cast<long long>(rounds));
  if (!have_reference) {
    std::printf("ours (%d threads): %.1f tokens/s; reference not run\n", at::get_num_threads(), tokens / o);
    return 0;
  }
  const double t = bench::Median(theirs);
  std::printf("threads: ours %d (at::get_num_threads()), reference %d (torch.get_num_threads())\n", at::get_num_threads(),
              ready.value("torch_threads", 0));
  std::printf("transformers + PEFT + bitsandbytes: %7.1f tokens/s (%.2f s per step, %zu adapters)\n", tokens / t, t,
              ready.value("adapters", size_t{0}));
  std::printf("ours:                               %7.1f tokens/s (%.2f s per step)   ratio %.2fx\n", tokens / o, o, t / o);
  return 0;
}

}  // namespace
}  // namespace llmtrain

int main(int argc, char** argv) {
  int64_t rounds = 5, batch = 4, seq = 96, rank = 16;
  std::string part = "all";
  for (int i = 1; i < argc; ++i) {
    const auto arg = [&](const char* name, int64_t* v) {
      if (std::strncmp(argv[i], name, std::strlen(name)) == 0) *v = std::max<int64_t>(1, std::atoll(argv[i] + std::strlen(name)));
    };
    arg("--rounds=", &rounds);
    arg("--batch=", &batch);
    arg("--seq=", &seq);
    arg("--rank=", &rank);
    if (std::strncmp(argv[i], "--part=", 7) == 0) part = argv[i] + 7;
  }
  if (part != "all" && part != "preprocess" && part != "step") {
    std::fprintf(stderr, "--part: all, preprocess or step\n");
    return 2;
  }
  if (part != "step") {
    if (const int rc = llmtrain::PreprocessPart(static_cast<int>(rounds)); rc != 0) return rc;
  }
  if (part != "preprocess") return llmtrain::StepPart(rounds, batch, seq, rank);
  return 0;
}
