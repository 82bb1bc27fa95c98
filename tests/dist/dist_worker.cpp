// One rank of dist_test's multi-process scenarios, started by dist::Launch, by torchrun
// --no-python, or by hand. It reads its place from the launcher's variables, joins the group
// (LLMTRAIN_TEST_INIT: "env://" or "file:///path"; LLMTRAIN_TEST_TIMEOUT_S), runs the scenario
// named by argv[1], writes what it found to $LLMTRAIN_TEST_OUT/rank<R>.txt and exits 0 when every
// check held.
//   smoke     every collective on f32, bf16, uint8, int64 (sum, max), against values it computes
//   shard     gather(shard(x)) == x bitwise: packed NF4 bytes with bf16-NaN patterns, f32 quant
//             state, f32 LoRA; odd sizes
//   unit      a ShardedUnit over NF4 (double-quant) and dense projections: released, gathered
//             back, the layers compute bit for bit as before, the bytes held are 1/world; with
//             LLMTRAIN_TEST_DEVICE=cuda the unit moves to the GPU and gathers there over NCCL
//   load      each model of $LLMTRAIN_TEST_MODELS (';'-separated: HF folders, GGUF files) loaded in
//             bf16 with a 4-bit double-quantized base twice under zero3: reading and quantizing
//             only this rank's bytes (ShardedEngine::ConfigureLoading), and whole then sharded
//             (on_layer_loaded alone); every layer's shard, the tensors left whole, the
//             quantization offsets and the logits must be bitwise equal; writes both load times
//   nonfinite the zero3 trainer on $LLMTRAIN_TEST_MODEL_DIR (train_ref.py tiny) with one LoRA weight
//             NaN on rank 1 only: every rank skips the same 3 steps and stops with a checkpoint
//   mismatch  rank 0 gathers 10 elements, the others 12: every rank must get an error naming it;
//             then the last rank passes an output of the wrong size: its own error names it, and
//             every other rank's names that rank, in the same call
//   exit3     rank 1 exits 3 after a barrier; the others wait in a barrier
//   kill      rank 1 SIGKILLs itself after a barrier; the others wait in a barrier
//   sleep     every rank waits for SIGTERM and exits 0 when it comes
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <limits>
#include <set>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "llmtrain/dist/env.h"
#include "llmtrain/dist/process_group.h"
#include "llmtrain/dist/shard.h"
#include "llmtrain/dist/sharded_engine.h"
#include "llmtrain/dist/sharded_unit.h"
#include "llmtrain/model/decoder.h"
#include "llmtrain/model/linear.h"
#include "llmtrain/quant/quantized_linear.h"
#include "llmtrain/spec/build.h"
#include "llmtrain/spec/run_spec.h"
#include "llmtrain/train/trainer.h"

namespace dist = llmtrain::dist;

namespace {

std::string g_out;
std::vector<std::string> g_failures;

void Check(bool ok, const std::string& what) {
  if (!ok) g_failures.push_back(what);
}

void CheckOk(const absl::Status& status, const std::string& what) {
  Check(status.ok(), absl::StrCat(what, ": ", status.ToString()));
}

bool BitEqual(const at::Tensor& a, const at::Tensor& b) {
  if (a.numel() != b.numel() || a.scalar_type() != b.scalar_type()) return false;
  at::Tensor x = a.contiguous().view(at::kByte), y = b.contiguous().view(at::kByte);
  return at::equal(x, y);
}

void Smoke(dist::ProcessGroup& group) {
  const int world = group.world_size(), rank = group.rank();
  // On the group's device: CPU under Gloo, this rank's GPU under NCCL (LLMTRAIN_TEST_DEVICE=cuda).
  const at::Device device = group.device();
  const auto on = [&](const at::Tensor& t) { return t.to(device); };
  for (at::ScalarType dtype : {at::kFloat, at::kBFloat16, at::kByte}) {
    const std::string name = c10::toString(dtype);
    // AllReduce sum: rank r contributes r + 1 in each of 5 elements (small integers: exact in
    // every dtype here).
    at::Tensor t = at::full({5}, rank + 1, at::TensorOptions().dtype(dtype).device(device));
    CheckOk(group.AllReduce(t), "allreduce " + name);
    Check(at::equal(t, at::full({5}, world * (world + 1) / 2, t.options())), "allreduce sum " + name);
    // AllGatherInto: shard r is [r·10, r·10 + 3).
    at::Tensor shard = on((at::arange(3, at::kFloat) + rank * 10).to(dtype));
    at::Tensor full = at::empty({world * 3}, shard.options());
    CheckOk(group.AllGatherInto(full, shard), "allgather " + name);
    at::Tensor want = on((at::arange(3, at::kFloat).repeat({world}) +
                          at::arange(world, at::kFloat).repeat_interleave(3) * 10).to(dtype));
    Check(at::equal(full, want), "allgather values " + name);
    // ReduceScatterSum: every rank sends [0, world·2) + rank; rank r gets Σ_q (r·2 + i + q).
    at::Tensor in = on((at::arange(world * 2, at::kFloat) + rank).to(dtype));
    at::Tensor out = at::empty({2}, in.options());
    CheckOk(group.ReduceScatterSum(out, in), "reduce_scatter " + name);
    at::Tensor expect = on(((at::arange(2, at::kFloat) + rank * 2) * world + world * (world - 1) / 2).to(dtype));
    Check(at::equal(out, expect), "reduce_scatter values " + name);
    // Broadcast from the last rank.
    at::Tensor b = at::full({4}, rank == world - 1 ? 7 : 0, at::TensorOptions().dtype(dtype).device(device));
    CheckOk(group.Broadcast(b, world - 1), "broadcast " + name);
    Check(at::equal(b, at::full({4}, 7, b.options())), "broadcast values " + name);
  }
  // Async: two gathers in flight, then both waited for.
  at::Tensor a = on(at::full({2}, float(rank))), b = on(at::full({3}, float(-rank)));
  at::Tensor fa = on(at::empty({world * 2})), fb = on(at::empty({world * 3}));
  absl::StatusOr<dist::Pending> pa = group.AllGatherIntoAsync(fa, a);
  absl::StatusOr<dist::Pending> pb = group.AllGatherIntoAsync(fb, b);
  Check(pa.ok() && pb.ok(), "async launch");
  if (pa.ok() && pb.ok()) {
    CheckOk(pa->Wait(), "async wait a");
    CheckOk(pb->Wait(), "async wait b");
    Check(at::equal(fa.cpu(), at::arange(world, at::kFloat).repeat_interleave(2)), "async values a");
    Check(at::equal(fb.cpu(), -at::arange(world, at::kFloat).repeat_interleave(3)), "async values b");
  }
  absl::StatusOr<int64_t> mx = group.MaxInt(rank * 3);
  Check(mx.ok() && *mx == (world - 1) * 3, "max int");
  absl::StatusOr<int64_t> sum = group.SumInt(1);
  Check(sum.ok() && *sum == world, "sum int");
  absl::StatusOr<double> dsum = group.SumDouble(0.25 * rank);
  Check(dsum.ok() && *dsum == 0.25 * world * (world - 1) / 2, "sum double");
  CheckOk(group.Barrier(), "barrier");
}

// The same buffers on every rank, from their index alone.
at::Tensor PackedNf4(int64_t bytes) {
  at::Tensor x = (at::arange(bytes, at::kLong) * 37 + 11).remainder(256).to(at::kByte);
  // Words that are NaN as bf16 (0x7FC1, 0xFF81, 0x7F80 is +inf): little-endian byte pairs.
  const uint8_t nan_words[] = {0xC1, 0x7F, 0x81, 0xFF, 0x80, 0x7F, 0x01, 0x7F};
  for (int64_t i = 0; i + 1 < bytes && i < 64; i += 2) {
    x[i] = nan_words[i % 8];
    x[i + 1] = nan_words[(i + 1) % 8];
  }
  return x;
}

at::Tensor Floats(int64_t n, double scale) {
  return at::sin(at::arange(n, at::kDouble) * 0.731 + scale).mul(scale).to(at::kFloat);
}

void Shard(dist::ProcessGroup& group) {
  const int world = group.world_size(), rank = group.rank();
  struct Case {
    std::string name;
    at::Tensor buffer;
    int64_t align;
  };
  std::vector<Case> cases = {
      {"nf4 packed 4099 bytes", PackedNf4(4099), 32},
      {"nf4 packed 32 bytes", PackedNf4(32), 32},
      {"absmax u8 129", PackedNf4(129), 1},
      {"quant state f32 257", Floats(257, 3.0), 1},
      {"lora f32 (7, 13)", Floats(91, 0.02).view({7, 13}), 1},
      {"one element", Floats(1, 1.0), 1},
  };
  // bf16 view of packed bytes must never have been taken: the gather moves bytes.
  for (const Case& c : cases) {
    dist::ShardLayout layout = dist::MakeShardLayout(c.buffer.numel(), world, c.align);
    Check(layout.shard_numel % c.align == 0, c.name + ": aligned shard");
    at::Tensor mine = dist::TakeShard(c.buffer, layout, rank);
    absl::StatusOr<at::Tensor> whole = dist::GatherShards(group, mine, layout);
    CheckOk(whole.status(), c.name);
    if (!whole.ok()) continue;
    Check(BitEqual(*whole, c.buffer.reshape({-1})), c.name + ": gather(shard(x)) differs from x");
    // The padding is zeros and every byte of x is in exactly one shard.
    const int64_t held = layout.End(rank) - layout.Begin(rank);
    if (held < layout.shard_numel) {
      Check(at::equal(mine.narrow(0, held, layout.shard_numel - held).view(at::kByte),
                      at::zeros({(layout.shard_numel - held) * mine.element_size()}, at::kByte)),
            c.name + ": zero padding");
    }
  }
}

void Unit(dist::ProcessGroup& group) {
  // The same layers on every rank (the same seed), as every rank of a run loads the same model.
  at::manual_seed(5);
  std::vector<std::shared_ptr<llmtrain::model::Linear>> layers;
  for (auto [out, in] : {std::pair<int64_t, int64_t>{96, 64}, {64, 200}, {130, 64}}) {
    llmtrain::quant::Quant4Options q;
    q.double_quant = true;
    absl::StatusOr<llmtrain::quant::Quantized4> w = llmtrain::quant::Quantize4bit(at::randn({out, in}), q);
    Check(w.ok(), "quantize");
    if (!w.ok()) return;
    layers.push_back(std::make_shared<llmtrain::quant::QuantizedLinear>(*std::move(w), at::randn({out})));
  }
  layers.push_back(std::make_shared<llmtrain::model::DenseLinear>(at::randn({33, 64}), at::randn({33})));
  std::vector<at::Tensor> frozen;
  for (const auto& layer : layers) layer->AppendFrozen(&frozen);
  std::vector<at::Tensor> before;
  for (const at::Tensor& t : frozen) before.push_back(t.clone());
  at::Tensor x64 = at::randn({5, 64}), x200 = at::randn({40, 200});  // 40 rows: the large-tile path
  auto outputs = [&] {
    std::vector<at::Tensor> y;
    for (const auto& layer : layers) y.push_back(layer->Forward(layer->in_features() == 64 ? x64 : x200));
    return y;
  };
  const std::vector<at::Tensor> want = outputs();
  // A low persistence threshold, so the quant state (scales, nested scales, code tables) and the
  // biases move too, not only the packed weights.
  dist::ShardedUnitOptions options;
  options.persist_below_bytes = 64;
  absl::StatusOr<std::unique_ptr<dist::ShardedUnit>> unit =
      dist::ShardedUnit::Create("test layer", frozen, group.rank(), group.world_size(), options);
  CheckOk(unit.status(), "create");
  if (!unit.ok()) return;
  dist::ShardedUnit& u = **unit;
  Check(!u.gathered(), "a new unit is released");
  // Released: reading a moved tensor is an ATen error, not a read of freed memory.
  bool threw = false;
  try {
    (void)layers[3]->Forward(x64);
  } catch (const c10::Error&) {
    threw = true;
  }
  Check(threw, "a forward over a released unit must throw");
  const int64_t expected_shard = (u.bytes() + group.world_size() - 1) / group.world_size();
  Check(u.shard_bytes() >= expected_shard && u.shard_bytes() < expected_shard + 64, "shard ≈ bytes / world");
  // On a GPU (NCCL) the unit moves there, then the tensors left whole, as ShardedEngine::MoveTo
  // and Decoder::MoveTo do; the layers then compute with our CUDA kernels.
  const bool cuda = group.device().is_cuda();
  if (cuda) {
    CheckOk(u.MoveTo(group.device()), "move to " + group.device().str());
    for (at::Tensor& t : frozen) {
      if (!t.is_cuda()) t.set_data(t.detach().to(group.device()));
    }
    x64 = x64.to(group.device());
    x200 = x200.to(group.device());
  }
  for (int round = 0; round < 2; ++round) {
    CheckOk(u.Gather(group), "gather");
    for (size_t i = 0; i < frozen.size(); ++i) {
      Check(BitEqual(frozen[i].cpu(), before[i]), "tensor " + std::to_string(i) + " bytes");
    }
    const std::vector<at::Tensor> got = outputs();
    for (size_t i = 0; i < got.size(); ++i) {
      if (!cuda) {
        Check(BitEqual(got[i], want[i]), "layer " + std::to_string(i) + " output");
        continue;
      }
      // Another GEMM: float32 rounding apart (quant_test bounds the CUDA layer at 1e-6 relative).
      const double error = (got[i].cpu() - want[i]).abs().max().item<double>() / want[i].abs().max().item<double>();
      Check(error < 1e-4, absl::StrCat("layer ", i, " output on ", group.device().str(), ": relative error ", error));
    }
    u.Release();
  }
  std::ofstream(g_out + "/unit" + std::to_string(group.rank()) + ".txt")
      << "unit of " << u.tensors() << " tensors, " << u.bytes() << " bytes; " << u.shard_bytes()
      << " bytes per rank; " << u.persistent_bytes() << " bytes left whole\n";
}

double Seconds(std::chrono::steady_clock::time_point since) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - since).count();
}

void LoadSharded(const std::shared_ptr<dist::ProcessGroup>& group) {
  namespace model = llmtrain::model;
  namespace quant = llmtrain::quant;
  const char* models = std::getenv("LLMTRAIN_TEST_MODELS");
  Check(models != nullptr && *models != '\0', "LLMTRAIN_TEST_MODELS is set");
  if (models == nullptr) return;
  std::ofstream out(g_out + "/load" + std::to_string(group->rank()) + ".txt");
  for (const std::string& path : std::vector<std::string>(absl::StrSplit(models, ';', absl::SkipEmpty()))) {
    // The default threshold, and one so low that the quant state and norms are sharded too.
    for (const int64_t persist : {int64_t{4096}, int64_t{64}}) {
      const std::string what = absl::StrCat(path, " (persist below ", persist, " B)");
      model::DecoderOptions options;
      options.dtype = llmtrain::Dtype::kBf16;
      options.linear_factory = quant::QuantizedLinearFactory(quant::Quant4Options{quant::QuantType::kNf4, 64, true});
      dist::ShardedUnitOptions unit_options;
      unit_options.persist_below_bytes = persist;
      auto sharded = std::make_shared<dist::ShardedEngine>(group, unit_options);
      auto whole = std::make_shared<dist::ShardedEngine>(group, unit_options);
      model::DecoderOptions sharded_options = options, whole_options = options;
      sharded->ConfigureLoading(&sharded_options);
      whole_options.on_layer_loaded = whole->LayerLoadedHook();
      // Seconds from the first layer's end to the last's: the layers' part of each load.
      std::vector<std::chrono::steady_clock::time_point> sharded_ends, whole_ends;
      const auto timed = [](auto hook, std::vector<std::chrono::steady_clock::time_point>* ends) {
        return [hook, ends](int64_t layer, const std::vector<at::Tensor>& frozen) {
          absl::Status status = hook(layer, frozen);
          ends->push_back(std::chrono::steady_clock::now());
          return status;
        };
      };
      sharded_options.on_layer_loaded = timed(sharded_options.on_layer_loaded, &sharded_ends);
      whole_options.on_layer_loaded = timed(whole_options.on_layer_loaded, &whole_ends);
      const auto layer_seconds = [](const std::vector<std::chrono::steady_clock::time_point>& ends) {
        return ends.size() < 2 ? 0.0 : std::chrono::duration<double>(ends.back() - ends.front()).count() /
                                           static_cast<double>(ends.size() - 1);
      };
      auto start = std::chrono::steady_clock::now();
      auto a = model::Decoder::Load(path, sharded_options);
      const double sharded_s = Seconds(start);
      start = std::chrono::steady_clock::now();
      auto b = model::Decoder::Load(path, whole_options);
      const double whole_s = Seconds(start);
      CheckOk(a.status(), what + ": sharded load");
      CheckOk(b.status(), what + ": whole load");
      if (!a.ok() || !b.ok()) return;
      CheckOk(sharded->PrepareModel(**a), what + ": prepare");
      CheckOk(whole->PrepareModel(**b), what + ": prepare");
      Check(sharded->units() == (*a)->num_layers() && whole->units() == (*b)->num_layers(), what + ": every layer sharded");
      int64_t left_whole = 0;
      for (int64_t l = 0; l < sharded->units(); ++l) {
        Check(BitEqual(sharded->unit(l).shard(), whole->unit(l).shard()), absl::StrCat(what, ": layer ", l, " shard"));
        const std::vector<at::Tensor> x = (*a)->LayerFrozenTensors(l), y = (*b)->LayerFrozenTensors(l);
        Check(x.size() == y.size(), absl::StrCat(what, ": layer ", l, " tensors"));
        for (size_t i = 0; i < x.size() && i < y.size(); ++i) {
          if (x[i].storage().nbytes() == 0) continue;  // moved into the unit (released)
          Check(BitEqual(x[i], y[i]), absl::StrCat(what, ": layer ", l, " tensor ", i, " left whole"));
          ++left_whole;
        }
      }
      for (const std::string& name : (*a)->LinearNames()) {
        auto p = std::dynamic_pointer_cast<quant::QuantizedLinear>((*a)->linear(name));
        auto q = std::dynamic_pointer_cast<quant::QuantizedLinear>((*b)->linear(name));
        Check(p && q, what + ": " + name + " is 4-bit");
        if (!p || !q) continue;
        const float u = p->quantized().state.offset, v = q->quantized().state.offset;
        Check(std::memcmp(&u, &v, sizeof u) == 0, what + ": " + name + " offset");
      }
      at::manual_seed(11);  // the same tokens on every rank
      const at::Tensor ids = at::randint((*a)->config().text.vocab_size, {2, 12}, at::kLong);
      at::NoGradGuard no_grad;
      Check(BitEqual((*a)->Forward(ids), (*b)->Forward(ids)), what + ": logits");
      out << what << ": " << sharded->units() << " layers, " << sharded->shard_bytes() << " of "
          << sharded->unit_bytes() << " bytes held, " << left_whole << " tensors left whole; load " << sharded_s << " s ("
          << layer_seconds(sharded_ends) << " s a layer) reading this rank's part, " << whole_s << " s ("
          << layer_seconds(whole_ends) << " s a layer) reading every layer whole\n";
    }
  }
}

// Runs without a ProcessGroup of its own: the trainer's engine makes one from the same variables.
int NonFinite(const dist::DistEnv& env, std::ofstream& report) {
  const char* dir_env = std::getenv("LLMTRAIN_TEST_MODEL_DIR");
  const std::string dir = dir_env ? dir_env : ".";
  auto run = llmtrain::spec::ParseRunSpec("nonfinite", absl::StrCat(
      "model { path: \"", dir, "/model\" load_in_4bit: true }\n",
      "lora { r: 4 alpha: 8 dropout: 0 target_modules: \"q_proj\" }\n",
      "data { train_files: \"", dir, "/train.jsonl\" format: \"text\" template: \"none\" max_length: 24 }\n",
      "training { max_steps: 20 micro_batch_size: 2 max_nonfinite_steps: 3 }\n",
      "output { dir: \"", g_out, "/run\" report_to: \"jsonl\" }\n",
      "distributed { engine: zero3 timeout_s: 60 }\n"));
  if (!run.ok()) {
    report << "spec: " << run.status().ToString() << std::endl;
    return 3;
  }
  auto trainer = llmtrain::spec::BuildTrainer(*run);
  if (!trainer.ok()) {
    report << "build: " << trainer.status().ToString() << std::endl;
    return 3;
  }
  const auto params = (*trainer)->TrainableParameters();
  if (env.rank == 1) {  // layer 0's q_proj lora_B, on this rank only
    at::NoGradGuard no_grad;
    const_cast<at::Tensor&>(params[1].second).fill_(std::numeric_limits<float>::quiet_NaN());
  }
  int skipped = 0;
  std::set<std::string> where;
  llmtrain::train::RunOptions options;
  options.progress = false;
  options.on_step = [&](const llmtrain::train::StepMetrics& m) {
    skipped += m.skipped;
    where.insert(m.nonfinite_where);
  };
  const absl::Status status = (*trainer)->Run(options);
  Check(!status.ok() && status.message().find("3 non-finite steps in a row") != absl::string_view::npos &&
            status.message().find("checkpoint at step 3") != absl::string_view::npos,
        "the run stops after 3 non-finite steps: " + status.ToString());
  Check(skipped == 3, "3 steps skipped on this rank, found " + std::to_string(skipped));
  for (const std::string& w : where) report << "non-finite in " << w << "\n";
  // Rank 1 finds NaN in its own activations; rank 0's are finite, its gradients (summed with
  // rank 1's) are not.
  Check(env.rank != 1 || where == std::set<std::string>{"activations of model.layers.0.self_attn"}, "rank 1's place");
  Check(env.rank != 0 || (where.size() == 1 && where.begin()->rfind("the gradient of ", 0) == 0), "rank 0's place");
  for (const std::string& f : g_failures) report << "FAIL " << f << "\n";
  report << (g_failures.empty() ? "ok" : "failed") << " nonfinite world " << env.world_size << std::endl;
  return g_failures.empty() ? 0 : 1;
}

void Mismatch(dist::ProcessGroup& group) {
  const int64_t n = group.rank() == 0 ? 10 : 12;
  at::Tensor shard = at::zeros({n}, at::kByte);
  at::Tensor full = at::empty({group.world_size() * n}, at::kByte);
  absl::Status status = group.AllGatherInto(full, shard);
  std::ofstream(g_out + "/message" + std::to_string(group.rank()) + ".txt") << status.ToString();
  Check(!status.ok(), "a mismatched all-gather returned OK");
  Check(status.code() == absl::StatusCode::kFailedPrecondition, "code " + status.ToString());
  Check(status.message().find("AllGatherInto(Byte, 10 → ") != std::string::npos &&
            status.message().find("AllGatherInto(Byte, 12 → ") != std::string::npos,
        "message names the op and both sizes: " + status.ToString());
  // The group still works after the refused call.
  CheckOk(group.Barrier(), "barrier after the mismatch");
  // A call that the last rank refuses in its own checks (an output of the wrong size): every
  // rank learns it in that call, not after the timeout.
  const int last = group.world_size() - 1;
  at::Tensor mine = at::zeros({4}, at::kFloat);
  at::Tensor gathered = at::empty({group.world_size() * 4 + (group.rank() == last ? 1 : 0)}, at::kFloat);
  status = group.AllGatherInto(gathered, mine);
  std::ofstream(g_out + "/local" + std::to_string(group.rank()) + ".txt") << status.ToString();
  Check(!status.ok(), "a locally refused all-gather returned OK");
  const std::string expected = group.rank() == last
                                   ? "the output must hold world_size"
                                   : absl::StrCat("rank ", last, " #3 AllGatherInto refused by its own checks");
  Check(status.message().find(expected) != std::string::npos, "local refusal: " + status.ToString());
  CheckOk(group.Barrier(), "barrier after the local refusal");
}

std::atomic<bool> g_term{false};
void OnTerm(int) { g_term = true; }

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: dist_worker smoke|shard|mismatch|exit3|kill|sleep\n");
    return 2;
  }
  const std::string scenario = argv[1];
  const char* out = std::getenv("LLMTRAIN_TEST_OUT");
  g_out = out ? out : ".";
  absl::StatusOr<dist::DistEnv> env = dist::DistEnvFromEnvironment();
  if (!env.ok()) {
    std::fprintf(stderr, "%s\n", env.status().ToString().c_str());
    return 2;
  }
  std::ofstream report(absl::StrCat(g_out, "/rank", env->rank, ".txt"));
  report << dist::Describe(*env) << "\n";
  if (scenario == "sleep") {
    signal(SIGTERM, OnTerm);
    report << "waiting" << std::endl;
    for (int i = 0; i < 600 && !g_term; ++i) usleep(100 * 1000);
    report << (g_term ? "got SIGTERM" : "no signal") << std::endl;
    return g_term ? 0 : 1;
  }
  if (scenario == "nonfinite") return NonFinite(*env, report);
  dist::ProcessGroupOptions options;
  const char* init = std::getenv("LLMTRAIN_TEST_INIT");
  if (init != nullptr && *init != '\0') options.init_method = init;
  const char* timeout = std::getenv("LLMTRAIN_TEST_TIMEOUT_S");
  options.timeout_s = timeout ? std::atof(timeout) : 60.0;
  const char* device = std::getenv("LLMTRAIN_TEST_DEVICE");  // "cuda": NCCL on this rank's GPU
  if (device != nullptr && *device != '\0') options.device = device;
  absl::StatusOr<std::unique_ptr<dist::ProcessGroup>> group = dist::ProcessGroup::Create(*env, options);
  if (!group.ok()) {
    report << "create: " << group.status().ToString() << std::endl;
    std::fprintf(stderr, "%s\n", group.status().ToString().c_str());
    return 3;
  }
  const std::shared_ptr<dist::ProcessGroup> shared_group = *std::move(group);
  dist::ProcessGroup& g = *shared_group;
  if (scenario == "smoke") {
    Smoke(g);
  } else if (scenario == "shard") {
    Shard(g);
  } else if (scenario == "unit") {
    Unit(g);
  } else if (scenario == "load") {
    LoadSharded(shared_group);
  } else if (scenario == "mismatch") {
    Mismatch(g);
  } else if (scenario == "exit3" || scenario == "kill") {
    CheckOk(g.Barrier(), "first barrier");
    report << "past the first barrier" << std::endl;
    if (env->rank == 1) {
      if (scenario == "exit3") std::exit(3);
      raise(SIGKILL);
    }
    absl::Status status = g.Barrier();  // never completes: rank 1 is gone
    report << "second barrier: " << status.ToString() << std::endl;
    return 4;
  } else {
    std::fprintf(stderr, "unknown scenario %s\n", scenario.c_str());
    return 2;
  }
  for (const std::string& f : g_failures) report << "FAIL " << f << "\n";
  report << (g_failures.empty() ? "ok" : "failed") << " " << scenario << " world " << g.world_size()
         << " collectives " << g.collectives() << " on " << g.device().str() << std::endl;
  std::printf("%s %s at world %d: %zu failures\n", scenario.c_str(),
              g_failures.empty() ? "ok" : "FAILED", g.world_size(), g_failures.size());
  return g_failures.empty() ? 0 : 1;
}
