// Memory planning (spec/memory_plan.h). Letters: B micro-batch, T max_length, M = B·T tokens,
// C hidden, I intermediate, H query heads, K key/value heads, D head_dim, V vocabulary, L layers,
// N processes, p the model dtype's bytes, a the activations' bytes (2 under bf16 autocast).
// A vision tower (Gemma 3 image+text): Cv, Iv, Hv, Lv its widths, heads and layers, Np patches
// per image, Mv = B·Np patch tokens (one image per sequence).
#include "llmtrain/spec/memory_plan.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <system_error>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_replace.h"
#include "llmtrain/core/status.h"
#include "llmtrain/dist/env.h"
#include "llmtrain/io/gguf.h"
#include "llmtrain/lora/adapter_config.h"
#include "llmtrain/model/family.h"

namespace llmtrain::spec {
namespace {

constexpr int64_t kMiB = int64_t{1} << 20;
// kernels::CrossEntropyOptions::chunk_bytes: one chunk of logits in the model dtype; a bf16/fp16
// chunk is reduced in float32 through a buffer of half that.
constexpr int64_t kCrossEntropyChunkBytes = 128 * kMiB;
// quant::QuantizedLinear::LargeTileBytes(): the dequantized tile of a 4-bit weight that training
// forwards and backwards multiply by.
constexpr int64_t kDequantTileBytes = 16 * kMiB;

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

int64_t Numel(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

bool IsProjection(model::Role role) {
  using model::Role;
  return role == Role::kQ || role == Role::kK || role == Role::kV || role == Role::kO || role == Role::kGate ||
         role == Role::kUp || role == Role::kDown;
}

std::string ModuleOf(const std::string& weight_name) {
  return absl::EndsWith(weight_name, ".weight") || absl::EndsWith(weight_name, ".bias")
             ? weight_name.substr(0, weight_name.rfind('.'))
             : weight_name;
}

absl::StatusOr<io::HfConfig> ReadConfig(const std::string& path) {
  if (absl::EndsWith(path, ".gguf")) {
    LLMTRAIN_ASSIGN_OR_RETURN(auto gguf, io::GgufFile::Open(path));
    return io::HfConfigFromGguf(*gguf);
  }
  return io::LoadHfConfig(path + "/config.json");
}

// The bytes loading maps: the GGUF file, or a folder's safetensors files.
int64_t ModelFileBytes(const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code error;
  if (fs::is_regular_file(path, error)) {
    const auto size = fs::file_size(path, error);
    return error ? 0 : static_cast<int64_t>(size);
  }
  int64_t total = 0;
  for (fs::directory_iterator it(path, error), end; !error && it != end; it.increment(error)) {
    if (it->path().extension() != ".safetensors") continue;
    const auto size = fs::file_size(it->path(), error);
    if (!error) total += static_cast<int64_t>(size);
    error.clear();
  }
  return total;
}

std::string Mib(int64_t bytes) { return absl::StrFormat("%.1f", static_cast<double>(bytes) / kMiB); }

std::string Count(int64_t n) {
  if (n >= 1000000000) return absl::StrFormat("%.2f B", n / 1e9);
  if (n >= 1000000) return absl::StrFormat("%.2f M", n / 1e6);
  if (n >= 1000) return absl::StrFormat("%.1f k", n / 1e3);
  return absl::StrCat(n);
}

}  // namespace

int64_t MemoryPhase::item_bytes() const {
  int64_t total = 0;
  for (const MemoryItem& item : items) total += item.bytes;
  return total;
}

int64_t MemoryPlan::resident_bytes() const {
  int64_t total = 0;
  for (const MemoryItem& item : resident) total += item.bytes;
  return total;
}

int64_t MemoryPlan::PhaseBytes(const MemoryPhase& phase) const {
  return phase.item_bytes() + (phase.includes_resident ? resident_bytes() : 0);
}

const MemoryPhase& MemoryPlan::peak_phase() const {
  // Only phases in the device's memory compete (a GPU run loads on the host).
  const MemoryPhase* best = nullptr;
  for (const MemoryPhase& phase : phases) {
    const bool on_device = phase.includes_resident || device == "cpu";
    if (on_device && (best == nullptr || PhaseBytes(phase) > PhaseBytes(*best))) best = &phase;
  }
  return *best;
}

int64_t MemoryPlan::peak_bytes() const { return PhaseBytes(peak_phase()); }

std::string MemoryPlan::ToString() const {
  std::string out = absl::StrCat("model: ", model, "\nrun:   ", run, "\n");
  const std::string where = device == "cpu" ? "host memory" : absl::StrCat(device, " memory");
  const auto line = [&](const MemoryItem& item, int indent) {
    absl::StrAppend(&out, absl::StrFormat("%*s%-52s %10s MiB", indent, "", item.name, Mib(item.bytes)),
                    item.note.empty() ? "" : "  " + item.note, "\n");
  };
  absl::StrAppend(&out, "\nper process (", where, "):\n  resident from loading to the end of the run\n");
  for (const MemoryItem& item : resident) line(item, 4);
  line({"resident", resident_bytes(), ""}, 2);
  for (const MemoryPhase& phase : phases) {
    const bool host = !phase.includes_resident && device != "cpu";
    absl::StrAppend(&out, "  ", phase.name, phase.includes_resident ? ": resident +" : "",
                    host ? " (host memory: the model loads on the CPU, then moves)" : "", "\n");
    for (const MemoryItem& item : phase.items) line(item, 4);
    line({absl::StrCat(phase.name, " total"), PhaseBytes(phase), ""}, 2);
  }
  if (!other_checkpointing.name.empty()) {
    absl::StrAppend(&out, "  for comparison:\n");
    line(other_checkpointing, 4);
  }
  absl::StrAppend(&out, absl::StrFormat("peak per process: %s MiB (%s) = %s", Mib(peak_bytes()), peak_phase().name,
                                        FormatBytes(peak_bytes())),
                  world_size > 1 ? absl::StrCat(", ", world_size, " processes") : "", "\n");
  return out;
}

std::string FormatBytes(int64_t bytes) {
  const double b = static_cast<double>(bytes);
  if (bytes >= (int64_t{1} << 30)) return absl::StrFormat("%.2f GiB", b / (1 << 30));
  if (bytes >= kMiB) return absl::StrFormat("%.1f MiB", b / kMiB);
  if (bytes >= 1024) return absl::StrFormat("%.1f KiB", b / 1024);
  return absl::StrCat(bytes, " B");
}

absl::StatusOr<int64_t> ParseByteSize(absl::string_view text_in) {
  const std::string text(absl::StripAsciiWhitespace(text_in));
  const auto bad = [&]() {
    return absl::InvalidArgumentError(absl::StrCat("\"", text_in, "\": expected a size such as 24GiB, 1.5GB, 512MiB ",
                                                   "or a number of bytes"));
  };
  size_t end = 0;
  while (end < text.size() && (absl::ascii_isdigit(text[end]) || text[end] == '.')) ++end;
  double value = 0;
  if (end == 0 || !absl::SimpleAtod(text.substr(0, end), &value)) return bad();
  std::string unit = absl::AsciiStrToLower(absl::StripAsciiWhitespace(text.substr(end)));
  if (absl::EndsWith(unit, "ib")) unit = unit.substr(0, unit.size() - 2);  // KiB → k (binary)
  double scale = 0;
  static const std::pair<const char*, double> kUnits[] = {
      {"", 1},           {"b", 1},          {"k", 1024.0},     {"m", 1048576.0}, {"g", 1073741824.0},
      {"t", 1099511627776.0}, {"kb", 1e3},  {"mb", 1e6},       {"gb", 1e9},      {"tb", 1e12}};
  for (const auto& [name, factor] : kUnits) {
    if (unit == name) scale = factor;
  }
  // "kib" became "k" above; a plain "kb" is decimal.
  if (scale == 0) return bad();
  const double bytes = value * scale;
  if (!(bytes >= 0) || bytes > 9.0e18) return bad();
  return static_cast<int64_t>(std::llround(bytes));
}

absl::StatusOr<MemoryPlan> PlanMemory(const RunSpec& spec_in, const MemoryPlanOptions& options) {
  RunSpec spec = spec_in;
  FillDefaults(&spec);
  const ModelSpec& ms = spec.model();
  io::HfConfig config;
  if (options.config) {
    config = *options.config;
  } else {
    auto read = ReadConfig(ms.path());
    if (!read.ok()) return Annotate(read.status(), "model.path");
    config = *std::move(read);
  }
  const io::TextConfig& c = config.text;
  auto family_or = model::BuildModelSpec(config);  // an image+text model's decoder names nest
  if (!family_or.ok()) return Annotate(family_or.status(), "model.path");
  const model::FamilySpec& family = *family_or;

  // Processes.
  const DistributedSpec& ds = spec.distributed();
  int world = options.world_size, local_world = options.local_world_size;
  if (world < 0 || local_world < 0) return absl::InvalidArgumentError("world size: must be ≥ 1");
  std::optional<dist::DistEnv> env;
  if (auto e = dist::DistEnvFromEnvironment(); e.ok()) env = *e;
  if (world == 0) {
    world = ds.world_size() > 0 ? static_cast<int>(ds.world_size())
            : ds.engine() == DistributedSpec::single ? 1
            : env ? env->world_size
                  : 1;
  }
  if (ds.engine() == DistributedSpec::single && world != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("world size ", world, ": distributed.engine single runs one process (use ddp or zero3)"));
  }
  if (local_world == 0) local_world = env && env->world_size == world ? env->local_world_size : world;
  local_world = std::min(local_world, world);
  const bool zero3 = ds.engine() == DistributedSpec::zero3;
  const bool sharded = zero3 && world > 1;

  // Sizes.
  const std::string& device_name = options.device.empty() ? ms.device() : options.device;
  const std::string device = device_name == "cuda" ? "cuda:0" : device_name;
  const bool cuda = device != "cpu";
  const int64_t p = ms.dtype() == ModelSpec::bf16 ? 2 : 4;
  const bool autocast = spec.training().autocast() == TrainingSpec::bf16 && p == 4;
  const int64_t a = autocast ? 2 : p;
  const int64_t B = spec.training().micro_batch_size(), T = spec.data().max_length(), M = B * T;
  const int64_t C = c.hidden_size, I = c.intermediate_size, H = c.num_attention_heads, K = c.num_key_value_heads;
  const int64_t D = c.head_dim, V = c.vocab_size, L = c.num_hidden_layers;
  const bool four_bit = ms.load_in_4bit();
  const int64_t blocksize = ms.quant_blocksize();
  const bool nested = ms.double_quant();
  const bool checkpointing = spec.training().activation_checkpointing() || zero3;  // zero3 turns it on
  const LoraSpec& ls = spec.lora();
  const int64_t lp = ls.dtype() == LoraSpec::bf16 ? 2 : 4;

  const lora::LoraConfig lc = ToLoraConfig(spec);
  auto resolved = lora::WithDefaultTargets(lc, config.model_type);
  if (!resolved.ok()) return Annotate(resolved.status(), "lora.target_modules");

  // Walk the name table: frozen bytes per layer, the adapter, the largest projection.
  int64_t packed = 0, quant_state = 0, dense_proj = 0, norms_biases = 0, gpu_scales = 0;
  int64_t base_params = 0, lora_params = 0, saved_params = 0, adapted = 0;
  int64_t largest_proj = 0;
  int64_t lora_act = 0;          // per-layer LoRA activations kept for backward, summed over layers
  int64_t embed_bytes = 0, head_bytes = 0, final_norm_bytes = 0;
  bool head_trains = false;
  const auto saved_param = [&](const std::string& param) {
    return std::any_of(lc.modules_to_save.begin(), lc.modules_to_save.end(),
                       [&](const std::string& m) { return lora::InModuleToSave(param, m); });
  };
  for (const model::WeightName& row : family.weights) {
    const bool per_layer = absl::StrContains(row.hf, "{i}");
    const int64_t numel = Numel(model::WeightShape(row.role, c));
    for (int64_t i = 0; i < (per_layer ? L : 1); ++i) {
      const std::string name = absl::StrReplaceAll(row.hf, {{"{i}", absl::StrCat(i)}});
      const std::string module = ModuleOf(name);
      if (row.role == model::Role::kLmHead && family.tied_embeddings) continue;
      base_params += numel;
      if (saved_param(name)) {
        saved_params += numel;
        if (row.role == model::Role::kLmHead || (row.role == model::Role::kEmbed && family.tied_embeddings)) {
          head_trains = true;
        }
      }
      if (!per_layer) {
        if (row.role == model::Role::kEmbed) embed_bytes += numel * p;
        if (row.role == model::Role::kLmHead) head_bytes += numel * p;
        if (row.role == model::Role::kFinalNorm) final_norm_bytes += numel * p;
        continue;
      }
      if (!IsProjection(row.role)) {
        norms_biases += numel * p;
        continue;
      }
      largest_proj = std::max(largest_proj, numel);
      if (four_bit) {
        const int64_t blocks = CeilDiv(numel, blocksize);
        packed += CeilDiv(numel, 2);
        // The 16-entry float32 code, and the block scales: 8-bit with float32 scales per 256
        // blocks and their 256-entry code (double quantization), or float32.
        quant_state += 16 * 4 + (nested ? blocks + CeilDiv(blocks, 256) * 4 + 256 * 4 : blocks * 4);
        if (cuda) gpu_scales += blocks * 4;  // the CUDA kernel's float32 scales
      } else {
        dense_proj += numel * p;
      }
      if (lora::IsLoraTarget(*resolved, module)) {
        const std::vector<int64_t> shape = model::WeightShape(row.role, c);  // (out, in)
        const int64_t r = lora::RankAndAlpha(*resolved, module).first;
        lora_params += r * (shape[0] + shape[1]) + (lc.use_dora ? shape[0] : 0);
        ++adapted;
        // x·Aᵀ (M, r) for B's gradient; with dropout its own dropped copy of x and the mask.
        lora_act += a * M * r + (ls.dropout() > 0 ? M * shape[1] * (a + 1) : 0);
      }
    }
  }
  const int64_t frozen_layer_bytes = (packed + quant_state + dense_proj + norms_biases) / std::max<int64_t>(1, L);
  const int64_t frozen_bytes = packed + quant_state + dense_proj + norms_biases;

  // The vision tower and projector (model/vision.cpp): its projections through the same linear
  // factory (4-bit when the base is), everything else dense in the model dtype, whole on every
  // process (zero3 shards the decoder's layers only). It runs on the micro-batch's images, taken
  // as one per sequence (the captions format's): without autograd unless something in it trains.
  int64_t tower_frozen = 0, tower_lora = 0, tower_adapted = 0, tower_lora_act = 0, Lv = 0;
  int64_t Np = 0, Mv = 0, Cv = 0, Iv = 0, Hv = 0, tower_layer_act = 0, tower_work = 0, tower_kept_bytes = 0;
  int64_t tower_saved = 0, tower_params = 0;
  bool tower_trains = false;
  if (config.vision.has_value()) {
    const io::VisionConfig& vc = *config.vision;
    Cv = vc.hidden_size;
    Iv = vc.intermediate_size;
    Hv = vc.num_attention_heads;
    Lv = vc.num_hidden_layers;
    Np = (vc.image_size / vc.patch_size) * (vc.image_size / vc.patch_size);
    Mv = B * Np;
    const std::vector<std::string> projections = model::VisionProjectionNames(config);
    for (const std::string& module : projections) {
      const int64_t out = absl::EndsWith(module, "fc1") ? Iv : Cv, in = absl::EndsWith(module, "fc2") ? Iv : Cv;
      const int64_t numel = out * in;
      if (four_bit) {
        const int64_t blocks = CeilDiv(numel, blocksize);
        tower_frozen += CeilDiv(numel, 2) + 16 * 4 + (nested ? blocks + CeilDiv(blocks, 256) * 4 + 256 * 4 : blocks * 4);
      } else {
        tower_frozen += numel * p;
      }
      tower_frozen += out * p;  // the bias
      if (lora::IsLoraTarget(*resolved, module)) {
        const int64_t r = lora::RankAndAlpha(*resolved, module).first;
        tower_lora += r * (out + in) + (lc.use_dora ? out : 0);
        ++tower_adapted;
        tower_lora_act += a * Mv * r + (ls.dropout() > 0 ? Mv * in * (a + 1) : 0);
      }
    }
    // Layer norms (2 per layer, weight and bias), the patch convolution, the positions, the
    // post-LayerNorm, the projector's norm and matrix (Cv, C).
    const int64_t patch = Cv * vc.num_channels * vc.patch_size * vc.patch_size + Cv;
    const int64_t other = Lv * 4 * Cv + patch + Np * Cv + 2 * Cv;
    const int64_t projector = Cv + Cv * C;
    tower_frozen += (other + projector) * p;
    tower_params = other + projector;
    for (const std::string& module : projections) {
      tower_params += (absl::EndsWith(module, "fc1") || absl::EndsWith(module, "fc2") ? Iv * Cv : Cv * Cv) +
                      (absl::EndsWith(module, "fc1") ? Iv : Cv);
    }
    base_params += tower_params;
    if (saved_param("model.multi_modal_projector.mm_input_projection_weight")) tower_saved += Cv * C;
    if (saved_param("model.multi_modal_projector.mm_soft_emb_norm.weight")) tower_saved += Cv;
    saved_params += tower_saved;
    lora_params += tower_lora;
    adapted += tower_adapted;
    tower_trains = tower_adapted > 0;
    // SiglipEncoderLayer's eager math per layer: LN1 and its input, q/k/v, the attention output
    // and o_proj's, the residual, LN2, fc1 and GELU (a·Mv·(8Cv + 2Iv)), the scores and their
    // float32 softmax (B·Hv·Np²·(4 + a)), and LoRA's x·Aᵀ.
    const int64_t t2v = B * Hv * Np * Np;
    tower_layer_act = a * Mv * (8 * Cv + 2 * Iv) + t2v * (4 + a) + tower_lora_act / std::max<int64_t>(1, Lv);
    tower_work = a * Mv * (2 * Iv + 2 * Cv) + t2v * (4 + a);
    // Kept while the decoder runs: the layers' activations (their inputs when checkpointed) when
    // the tower trains; the pixels, the pooled features and the projected image tokens always.
    const int64_t images = B * vc.num_channels * vc.image_size * vc.image_size * 4;
    const int64_t tokens = B * config.mm_tokens_per_image;
    tower_kept_bytes = images + tokens * (Cv + C) * a * 2;
    if (tower_trains) tower_kept_bytes += (checkpointing ? Lv * a * Mv * Cv : Lv * tower_layer_act) + 3 * a * Mv * Cv;
  }

  MemoryPlan plan;
  plan.device = device;
  plan.world_size = world;
  plan.local_world_size = local_world;
  plan.trainable_parameters = lora_params + saved_params;
  const std::string kind = config.vision.has_value() ? config.model_type + " (image+text): decoder" : c.model_type;
  plan.model = absl::StrCat(kind, ", ", L, " layers, hidden ", C, ", intermediate ", I, ", heads ", H, "/", K,
                            " × ", D, ", vocab ", V, ", ", Count(base_params), " parameters",
                            options.config ? " (config given)" : absl::StrCat(" (", ms.path(), ")"));
  if (config.vision.has_value()) {
    absl::StrAppend(&plan.model, "; SigLIP tower: ", Lv, " layers, hidden ", Cv, ", intermediate ", Iv, ", heads ", Hv,
                    ", ", Np, " patches per image, ", config.mm_tokens_per_image, " tokens per image",
                    tower_trains ? absl::StrCat(", LoRA on ", tower_adapted, " of its projections") : ", frozen");
  }
  plan.run = absl::StrCat(
      "engine ", DistributedSpec::Engine_Name(ds.engine()), ", ", world, " process", world > 1 ? "es" : "",
      local_world > 1 && !cuda ? absl::StrCat(" (", local_world, " per machine)") : "", ", device ", device, ", model ",
      p == 2 ? "bf16" : "f32", autocast ? " with bf16 autocast" : "", ", ",
      four_bit ? absl::StrCat(ms.quant_type() == ModelSpec::fp4 ? "FP4" : "NF4", " base (blocks of ", blocksize,
                              nested ? ", double quantization)" : ")")
               : "dense base",
      ", LoRA r ", lc.r, lc.use_dora ? " (DoRA)" : "", " on ", adapted, " projections (", Count(lora_params),
      " parameters", saved_params > 0 ? absl::StrCat(" + ", Count(saved_params), " in modules_to_save") : "",
      "), micro-batch ", B, " × ", T, " tokens", config.vision.has_value() ? absl::StrCat(" (", B, " images)") : "",
      ", activation checkpointing ", checkpointing ? "on" : "off",
      zero3 && !spec.training().activation_checkpointing() ? " (zero3 turns it on)" : "");

  // Runtime.
  const int64_t host_runtime = options.runtime_bytes >= 0 && !cuda ? options.runtime_bytes : kCpuRuntimeBytes;
  const std::string host_runtime_note =
      options.runtime_bytes >= 0 && !cuda ? options.runtime_note : "estimate (libraries, data, tokenizer)";
  if (cuda) {
    plan.resident.push_back({"CUDA context, kernels, cuBLAS workspaces",
                             options.runtime_bytes >= 0 ? options.runtime_bytes : kCudaRuntimeBytes,
                             options.runtime_bytes >= 0 ? options.runtime_note : "estimate"});
  } else {
    plan.resident.push_back({"runtime (code, libraries, data, tokenizer)", host_runtime, host_runtime_note});
  }

  // Weights.
  const int64_t share = sharded ? world : 1;
  const std::string shard_note = sharded ? absl::StrCat("1/", world, " of every layer (zero3)") : "";
  plan.resident.push_back({absl::StrCat("embedding", family.tied_embeddings ? " = tied LM head" : "", " (",
                                        p == 2 ? "bf16" : "f32", ")"),
                           embed_bytes, "whole on every process"});
  if (head_bytes > 0) plan.resident.push_back({"LM head", head_bytes, "whole on every process"});
  if (four_bit) {
    plan.resident.push_back({"base projections, 4-bit packed", CeilDiv(packed, share), shard_note});
    plan.resident.push_back({"quant state (block scales, codes)", CeilDiv(quant_state, share), shard_note});
  }
  if (dense_proj > 0) {
    plan.resident.push_back({absl::StrCat("base projections, ", p == 2 ? "bf16" : "f32"), CeilDiv(dense_proj, share),
                             shard_note});
  }
  plan.resident.push_back({"norms and biases", CeilDiv(norms_biases, share) + final_norm_bytes, shard_note});
  if (config.vision.has_value()) {
    plan.resident.push_back({absl::StrCat("vision tower + projector", four_bit ? " (4-bit projections)" : ""),
                             tower_frozen, "whole on every process"});
  }
  if (sharded) {
    // The layer in use and the one being prefetched, whole (ShardedEngine::Acquire).
    plan.resident.push_back({"gathered layers (in use + prefetch)", 2 * frozen_layer_bytes, "2 whole layers"});
  }
  if (gpu_scales > 0) {
    plan.resident.push_back({"4-bit block scales for the CUDA kernel (f32)", CeilDiv(gpu_scales, share), ""});
  }
  // The adapter: weights, gradients, AdamW's two float32 moments, and float32 masters of
  // bf16 weights; modules_to_save add their gradients and optimizer state (their weights are
  // counted above).
  // Under zero3 the state is sharded: each process keeps AdamW's moments and float32 values of
  // 1/N of the flattened adapter (the weights and gradients stay whole: every forward needs them).
  // distributed.cpu_offload takes the same step with the state in host memory.
  const int64_t trainable = lora_params + saved_params;
  const bool offload = ds.cpu_offload();
  const bool shard_state = zero3 || offload;
  if (shard_state) {
    plan.resident.push_back({"adapter + gradients", lora_params * 2 * lp + saved_params * p, "whole on every process"});
    const std::string slice = world > 1 ? absl::StrCat("1/", world, " of the adapter") : "the whole adapter";
    if (offload && cuda) {
      plan.resident.push_back({"AdamW state: in host memory (cpu_offload)", 0,
                               absl::StrCat(FormatBytes(CeilDiv(trainable, world) * 12), ", ", slice)});
    } else {
      plan.resident.push_back({"AdamW state (moments + float32 values)", CeilDiv(trainable, world) * 12,
                               absl::StrCat(slice, offload ? " (cpu_offload)" : " (zero3)")});
    }
  } else {
    const int64_t per_lora = 2 * lp + 8 + (lp == 4 ? 0 : 4);
    const int64_t per_saved = p + 8 + (p == 4 ? 0 : 4);
    plan.resident.push_back({"adapter + gradients + AdamW state", lora_params * per_lora + saved_params * per_saved,
                             absl::StrCat(per_lora, " B per LoRA parameter", world > 1 ? ", on every process" : "")});
  }

  // Loading (host): the file pages loading reads, the weights built so far, one temporary.
  // Without the files (a config given): a bf16 checkpoint of the model's parameters.
  const bool files_known = options.file_bytes >= 0 || !options.config;
  const int64_t file_bytes = options.file_bytes >= 0 ? options.file_bytes
                             : options.config        ? base_params * 2
                                                     : ModelFileBytes(ms.path());
  MemoryPhase load{"loading", {}, /*includes_resident=*/false};
  load.items.push_back({"runtime", host_runtime, cuda ? "estimate" : host_runtime_note});
  const bool shard_on_load = sharded && !lc.use_dora;  // DoRA's magnitudes need whole weights
  // zero3 with 4-bit loading: each process reads and quantizes only its part of each layer
  // (the rows its bytes come from); the rest of the file (embedding, head) every process reads.
  const bool part_on_load = shard_on_load && four_bit && world > 1;
  // The layers' share of the file, taken as their share of the parameters.
  const int64_t layer_params = base_params - tower_params - (embed_bytes + head_bytes + final_norm_bytes) / p;
  const int64_t layer_file_bytes =
      static_cast<int64_t>(static_cast<double>(file_bytes) * static_cast<double>(layer_params) /
                           static_cast<double>(std::max<int64_t>(1, base_params)));
  load.items.push_back({"model file pages",
                        part_on_load ? file_bytes - layer_file_bytes + CeilDiv(layer_file_bytes, world) : file_bytes,
                        absl::StrCat(files_known ? "" : "estimate: bf16 safetensors; ",
                                     part_on_load ? "mapped; the layers' rows read in part by each process"
                                                  : "mapped and read whole by every process")});
  load.items.push_back({"embedding, head, final norm", embed_bytes + head_bytes + final_norm_bytes, ""});
  if (config.vision.has_value()) load.items.push_back({"vision tower + projector", tower_frozen, ""});
  load.items.push_back(
      {shard_on_load ? "frozen layers: shards + the layer loading" : "frozen layers",
       shard_on_load ? CeilDiv(frozen_bytes, world) + (part_on_load ? CeilDiv(frozen_layer_bytes, world)
                                                                    : frozen_layer_bytes)
                     : frozen_bytes,
       shard_on_load ? (part_on_load ? "sharded as each layer loads; only this process's part is filled"
                                     : "sharded as each layer loads")
                     : ""});
  // A projection dequantized into the model dtype and quantized from float32 (its part, when
  // each process quantizes only its part).
  if (four_bit) {
    load.items.push_back({part_on_load ? "largest projection's part, dense while it quantizes"
                                       : "largest projection, dense while it quantizes",
                          CeilDiv(largest_proj, part_on_load ? world : 1) * (p + 4), ""});
  }
  plan.phases.push_back(load);

  // Activations (docs/distributed.md): per layer a·M·(7C + 3HD + 4KD + 4I) for norms, q/k/v/o,
  // RoPE and the MLP, B·H·T²·(4 + a) for the float32 softmax and its cast (Gemma 2's soft-cap
  // keeps another float32 copy), plus LoRA's x·Aᵀ and dropout copies.
  const int64_t t2 = B * H * T * T;
  const int64_t layer_act = a * M * (7 * C + 3 * H * D + 4 * K * D + 4 * I) + t2 * (4 + a) +
                            (c.attn_logit_softcapping ? t2 * 4 : 0) + lora_act / std::max<int64_t>(1, L);
  // Embedding output and its scaled copy, the final norm's input and output, the masks (full and
  // sliding, (B, 1, T, T)) and the RoPE tables.
  const int64_t globals = 4 * a * M * C + 2 * B * T * T * a + 4 * M * D * a;
  const int64_t kept_off = L * layer_act + globals, kept_on = L * a * M * C + globals;
  // Gradient work inside one layer's backward: the MLP's and attention's largest gradients.
  const int64_t work = a * M * (2 * I + 2 * C) + t2 * (4 + a);
  const int64_t tile = four_bit ? std::min(kDequantTileBytes, largest_proj * a) : 0;
  const int64_t dora_dense = lc.use_dora ? largest_proj * 4 * 2 : 0;  // W + ΔW and its norm's input

  // Cross-entropy over B·(T − 1) target rows, chunk by chunk (kernels/cross_entropy.h).
  const int64_t rows_all = B * (T - 1);
  const int64_t chunk_rows = std::min(rows_all, std::max<int64_t>(1, kCrossEntropyChunkBytes / (V * a)));
  const int64_t sub_rows = std::min(chunk_rows, std::max<int64_t>(1, kCrossEntropyChunkBytes / 2 / (V * 4)));
  int64_t ce = chunk_rows * V * a + rows_all * C * a;
  std::string ce_note = absl::StrCat(chunk_rows, " rows × ", V, " logits");
  if (a != 4) ce += sub_rows * V * 4;
  if (family.final_softcap) ce += sub_rows * V * 4;
  if (autocast) {
    ce += V * C * 2;
    absl::StrAppend(&ce_note, " + the head cast to bf16");
  }
  if (head_trains) {
    ce += V * C * 4;
    absl::StrAppend(&ce_note, " + the head's float32 gradient");
  }

  MemoryPhase forward{"forward and loss", {}, true};
  forward.items.push_back({checkpointing ? "activations kept (each layer's input)" : "activations kept for backward",
                           checkpointing ? kept_on : kept_off, ""});
  // With checkpointing one layer's transient and the loss do not overlap: the larger one counts.
  if (checkpointing && work >= ce) {
    forward.items.push_back({"one layer's forward, not kept", work, ""});
  } else {
    forward.items.push_back({"cross-entropy chunk", ce, ce_note});
  }
  if (tile > 0) forward.items.push_back({"4-bit dequantization tile", tile, ""});
  if (dora_dense > 0) forward.items.push_back({"DoRA: dense weight and norm", dora_dense, ""});
  const std::string tower_kept_name =
      tower_trains ? absl::StrCat("vision tower: images, features, activations kept",
                                  checkpointing ? " (each layer's input)" : "")
                   : "vision tower: images and image features";
  if (config.vision.has_value()) forward.items.push_back({tower_kept_name, tower_kept_bytes, ""});
  plan.phases.push_back(forward);

  MemoryPhase backward{"backward", {}, true};
  backward.items.push_back({checkpointing ? "activations kept (each layer's input)" : "activations kept for backward",
                            checkpointing ? kept_on : kept_off, ""});
  if (checkpointing) backward.items.push_back({"one layer recomputed for its backward", layer_act, ""});
  backward.items.push_back({"gradient work inside a layer", work, ""});
  if (tile > 0) backward.items.push_back({"4-bit dequantization tile", tile, ""});
  if (dora_dense > 0) backward.items.push_back({"DoRA: dense weight and norm", dora_dense, ""});
  if (config.vision.has_value()) backward.items.push_back({tower_kept_name, tower_kept_bytes, ""});
  plan.phases.push_back(backward);

  if (config.vision.has_value()) {
    // The tower runs before the decoder, and its backward (when it trains) after the decoder's:
    // neither overlaps the decoder's activations.
    MemoryPhase tower{"vision tower forward", {}, true};
    tower.items.push_back({tower_kept_name, tower_kept_bytes, ""});
    tower.items.push_back({tower_trains && !checkpointing ? "the layer computing (scores not kept)"
                                                          : "one layer's forward, not kept",
                           tower_trains && !checkpointing ? B * Hv * Np * Np * a : tower_layer_act,
                           absl::StrCat(B * Hv, " attention maps of ", Np, "² scores")});
    if (tile > 0) tower.items.push_back({"4-bit dequantization tile", std::min(tile, std::max(Cv, Iv) * Cv * a), ""});
    plan.phases.push_back(tower);
    if (tower_trains) {
      MemoryPhase back{"vision tower backward", {}, true};
      back.items.push_back({tower_kept_name, tower_kept_bytes, ""});
      if (checkpointing) back.items.push_back({"one tower layer recomputed for its backward", tower_layer_act, ""});
      back.items.push_back({"gradient work inside a tower layer", tower_work, ""});
      plan.phases.push_back(back);
    }
  }

  if (shard_state) {
    MemoryPhase step{"optimizer step", {}, true};
    step.items.push_back({"gradients laid out flat for the reduce-scatter (f32)", CeilDiv(trainable, world) * world * 4, ""});
    step.items.push_back({"this process's summed slice (f32)", CeilDiv(trainable, world) * 4, ""});
    step.items.push_back({"updated values all-gathered (f32)", CeilDiv(trainable, world) * world * 4, ""});
    plan.phases.push_back(step);
    // A checkpoint gathers the state (moments and values) whole, then the main process copies
    // it per parameter for the file.
    MemoryPhase checkpoint{"checkpoint", {}, true};
    if (cuda) {
      checkpoint.items.push_back({"one AdamW state tensor gathered whole (f32)", CeilDiv(trainable, world) * world * 4,
                                  "then copied to host memory"});
    } else {
      checkpoint.items.push_back({"AdamW state gathered whole, and its per-parameter copies",
                                  2 * 3 * trainable * 4, "on the main process"});
    }
    plan.phases.push_back(checkpoint);
  } else if (world > 1) {
    MemoryPhase step{"optimizer step", {}, true};
    step.items.push_back({"gradient all-reduce buffer (f32)", trainable * 4, ""});
    plan.phases.push_back(step);
  }
  plan.other_checkpointing = {
      absl::StrCat("activations kept with checkpointing ", checkpointing ? "off" : "on"),
      checkpointing ? kept_off : kept_on + layer_act,
      checkpointing ? "" : "inputs of every layer + one layer's recompute"};
  return plan;
}

namespace {

// The number after `key` in a file of "key value" lines (/proc/meminfo in kB, cgroup files in
// bytes); -1 when absent.
int64_t ReadField(const std::string& path, absl::string_view key) {
  std::FILE* f = std::fopen(path.c_str(), "r");
  if (f == nullptr) return -1;
  char line[256];
  int64_t value = -1;
  while (std::fgets(line, sizeof(line), f) != nullptr) {
    absl::string_view l(line);
    if (!absl::StartsWith(l, key)) continue;
    l.remove_prefix(key.size());
    l = absl::StripAsciiWhitespace(l);
    if (absl::EndsWith(l, "kB")) l = absl::StripAsciiWhitespace(l.substr(0, l.size() - 2));
    int64_t v = 0;
    if (absl::SimpleAtoi(l, &v)) value = v;
    break;
  }
  std::fclose(f);
  return value;
}

}  // namespace

int64_t HostMemoryAvailable() {
  const int64_t available_kb = ReadField("/proc/meminfo", "MemAvailable:");
  int64_t available = available_kb >= 0 ? available_kb * 1024 : 0;
  // cgroup v2: the limit of this process's group ("max" reads as absent), minus its usage.
  const int64_t max = ReadField("/sys/fs/cgroup/memory.max", "");
  const int64_t current = ReadField("/sys/fs/cgroup/memory.current", "");
  if (max > 0 && current >= 0) {
    const int64_t left = std::max<int64_t>(0, max - current);
    available = available > 0 ? std::min(available, left) : left;
  }
  return available;
}

int64_t CurrentRssBytes() {
  const int64_t kb = ReadField("/proc/self/status", "VmRSS:");
  return kb > 0 ? kb * 1024 : 0;
}

absl::Status CheckPlanFits(const MemoryPlan& plan, int64_t limit_bytes, absl::string_view limit_source) {
  if (plan.peak_bytes() <= limit_bytes) return absl::OkStatus();
  return absl::ResourceExhaustedError(absl::StrCat(
      "the run needs about ", FormatBytes(plan.peak_bytes()), " per process (", plan.peak_phase().name, ") but ",
      limit_source, " allows ", FormatBytes(limit_bytes),
      ". Fewer tokens per micro-batch, activation checkpointing, a bf16 model, 4-bit loading or more processes under ",
      "zero3 lower it; distributed.memory_limit sets the limit (\"off\" skips this check).\n", plan.ToString()));
}

}  // namespace llmtrain::spec
