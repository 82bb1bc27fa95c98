// serve/engine.h: continuous batching over one decoder, rows routed to their own LoRA adapter.
#include "llmtrain/serve/engine.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <random>
#include <thread>
#include <unordered_set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "llmtrain/core/atomic_file.h"
#include "llmtrain/core/status.h"
#include "llmtrain/lora/adapter_config.h"
#include "llmtrain/lora/lora.h"
#include "llmtrain/model/generate.h"
#include "llmtrain/model/linear.h"

namespace llmtrain::serve {
namespace {

constexpr int64_t kBase = -1;   // a row without adapter
constexpr int64_t kMixed = -2;  // rows of several adapters

// Which adapter each row of the batch the model is about to compute uses: set by the engine's
// thread before each forward, read by every MultiLoraLinear during it.
struct Routing {
  int64_t uniform = kBase;       // the one adapter of every row, or kMixed
  std::vector<at::Tensor> rows;  // per adapter: int64 (n) row indices, undefined when none

  void Set(const std::vector<int64_t>& row_adapter, int64_t n_adapters, c10::Device device) {
    rows.assign(static_cast<size_t>(n_adapters), at::Tensor());
    uniform = row_adapter.empty() ? kBase : row_adapter.front();
    for (int64_t a : row_adapter) {
      if (a != uniform) uniform = kMixed;
    }
    if (uniform != kMixed) return;
    std::vector<std::vector<int64_t>> lists(static_cast<size_t>(n_adapters));
    for (size_t r = 0; r < row_adapter.size(); ++r) {
      if (row_adapter[r] >= 0) lists[static_cast<size_t>(row_adapter[r])].push_back(static_cast<int64_t>(r));
    }
    for (size_t a = 0; a < lists.size(); ++a) {
      if (!lists[a].empty()) rows[a] = at::tensor(lists[a], at::kLong).to(device);
    }
  }
};

// One adapter's factors for one projection (PEFT's lora_A, lora_B and scaling).
struct AdapterFactors {
  at::Tensor a, b;  // (r, in), (out, r); undefined: this adapter does not target the projection
  double scaling = 1.0;
};

// A frozen base projection and every served adapter's factors for it; each row of x gets the
// base plus its own adapter's term. A batch of one adapter computes it as lora::LoraLinear does
// (so a request on adapter k alone gives what the model with that adapter loaded gives); a mixed
// batch adds each term in the result's dtype, which is the same for a float32 model and rounds the
// term first for a bf16 one.
class MultiLoraLinear final : public model::Linear {
 public:
  MultiLoraLinear(std::shared_ptr<model::Linear> base, std::shared_ptr<const Routing> routing,
                  std::vector<AdapterFactors> adapters)
      : base_(std::move(base)), routing_(std::move(routing)), adapters_(std::move(adapters)) {
    four_bit_ = !base_->stored_weight().defined();
  }

  // x (B, T, in) → (B, T, out)
  at::Tensor Forward(const at::Tensor& x) const override {
    at::Tensor result = base_->Forward(x);
    const Routing& routing = *routing_;
    if (routing.uniform == kBase) return result;
    if (routing.uniform >= 0) {
      const AdapterFactors& f = adapters_[static_cast<size_t>(routing.uniform)];
      if (!f.a.defined()) return result;
      const at::Tensor lora = Term(f, x);
      // lora::LoraLinear's order: a 4-bit base adds the term cast to the result's dtype; a dense
      // base adds, promoting, then casts once.
      return four_bit_ ? result + lora.to(result.scalar_type()) : (result + lora).to(result.scalar_type());
    }
    for (size_t k = 0; k < adapters_.size(); ++k) {
      const AdapterFactors& f = adapters_[k];
      if (!f.a.defined() || !routing.rows[k].defined()) continue;
      const at::Tensor rows = routing.rows[k];
      result.index_add_(0, rows, Term(f, x.index_select(0, rows)).to(result.scalar_type()));
    }
    return result;
  }
  int64_t in_features() const override { return base_->in_features(); }
  int64_t out_features() const override { return base_->out_features(); }
  at::Tensor DenseWeight(c10::ScalarType dtype) const override { return base_->DenseWeight(dtype); }
  const at::Tensor& bias() const override { return base_->bias(); }
  at::Tensor stored_weight() const override { return base_->stored_weight(); }
  void AppendTrainable(std::vector<at::Tensor>*) const override {}
  void AppendFrozen(std::vector<at::Tensor>* out) const override {
    base_->AppendFrozen(out);
    for (const AdapterFactors& f : adapters_) {
      if (!f.a.defined()) continue;
      out->push_back(f.a);
      out->push_back(f.b);
    }
  }
  absl::string_view kind() const override { return "multi-lora"; }

 private:
  static at::Tensor Term(const AdapterFactors& f, const at::Tensor& x) {
    const at::Tensor xl = x.scalar_type() == f.a.scalar_type() ? x : x.to(f.a.scalar_type());
    return at::linear(at::linear(xl, f.a), f.b) * f.scaling;
  }

  std::shared_ptr<model::Linear> base_;
  std::shared_ptr<const Routing> routing_;
  std::vector<AdapterFactors> adapters_;
  bool four_bit_ = false;
};

// A request in the batch: its row of the KV cache is its index in `live`.
struct Sequence {
  uint64_t id = 0;
  Request request;
  int64_t adapter = kBase;
  std::mt19937_64 rng;
  model::GenerationOptions sampling;  // temperature and top_p as ChooseNextToken reads them
  std::vector<int64_t> history;       // prompt, then the new tokens
  int64_t generated = 0;
};

void Finish(Request& request, FinishReason reason, const absl::Status& status) {
  if (!request.on_finish) return;
  try {
    request.on_finish(reason, status);
  } catch (...) {
    // A failing callback must not stop the engine; its request is over either way.
  }
}

}  // namespace

const char* FinishReasonName(FinishReason reason) {
  switch (reason) {
    case FinishReason::kStop: return "stop";
    case FinishReason::kLength: return "length";
    case FinishReason::kCancelled: return "cancelled";
    case FinishReason::kError: return "error";
  }
  return "error";
}

struct Engine::Impl {
  std::unique_ptr<model::Decoder> model;
  std::vector<std::string> adapter_names;
  std::shared_ptr<Routing> routing = std::make_shared<Routing>();
  EngineOptions options;
  int64_t max_context = 0, vocab = 0;

  mutable std::mutex mu;
  std::condition_variable wake;
  std::deque<Sequence> waiting;            // guarded by mu
  std::vector<Sequence> cancelled_waiting;  // guarded by mu: cancelled before they ran
  std::unordered_set<uint64_t> cancel;      // guarded by mu: ids to end at the next step
  bool stop = false;                        // guarded by mu
  uint64_t next_id = 1;                     // guarded by mu
  EngineStats stats;                        // guarded by mu
  std::thread thread;

  void Run();
  // Prefills `fresh` as one left-padded batch and appends its rows to the running batch.
  void Prefill(std::vector<Sequence>* fresh, std::vector<Sequence>* live, model::KvCache* cache, at::Tensor* logits);
  void SetRouting(const std::vector<Sequence>& rows) {
    std::vector<int64_t> row_adapter;
    row_adapter.reserve(rows.size());
    for (const Sequence& s : rows) row_adapter.push_back(s.adapter);
    routing->Set(row_adapter, static_cast<int64_t>(adapter_names.size()), model->device());
  }
  // Counts the end before on_finish runs, so whoever on_finish wakes sees it in stats().
  void Count(FinishReason reason, bool was_running) {
    std::lock_guard<std::mutex> lock(mu);
    if (was_running) stats.running = std::max<int64_t>(0, stats.running - 1);
    if (reason == FinishReason::kCancelled) {
      ++stats.cancelled;
    } else if (reason == FinishReason::kError) {
      ++stats.failed;
    } else {
      ++stats.finished;
    }
  }
  // Ends a request that has not joined the batch (waiting, or its prefill failed).
  void End(Sequence& s, FinishReason reason, const absl::Status& status = absl::OkStatus()) {
    Count(reason, /*was_running=*/false);
    Finish(s.request, reason, status);
  }
  // Ends a row of the batch.
  void EndRow(Sequence& s, FinishReason reason, const absl::Status& status = absl::OkStatus()) {
    Count(reason, /*was_running=*/true);
    Finish(s.request, reason, status);
  }
};

absl::StatusOr<std::unique_ptr<Engine>> Engine::Create(std::unique_ptr<model::Decoder> model,
                                                       const std::vector<AdapterSpec>& adapters,
                                                       const EngineOptions& options) {
  if (model == nullptr) return absl::InvalidArgumentError("Engine: no model");
  if (options.max_batch < 1) {
    return absl::InvalidArgumentError(absl::StrCat("max_batch: expected ≥ 1, found ", options.max_batch));
  }
  if (options.max_context < 0) {
    return absl::InvalidArgumentError(absl::StrCat("max_context: expected ≥ 0, found ", options.max_context));
  }
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  const int64_t model_limit = model->config().text.max_position_embeddings;
  impl->max_context = options.max_context > 0 ? options.max_context : model_limit;
  if (model_limit > 0 && impl->max_context > model_limit) {
    return absl::InvalidArgumentError(absl::StrCat("max_context: ", options.max_context,
                                                   " exceeds the model's max_position_embeddings (", model_limit, ")"));
  }
  if (impl->max_context <= 0) {
    return absl::InvalidArgumentError("max_context: the model's config gives no max_position_embeddings; set one");
  }
  impl->vocab = model->config().text.vocab_size;
  if (impl->vocab <= 0) impl->vocab = model->lm_head().size(0);

  // Each adapter is loaded into the model as lora::LoadAdapter does (so its checks and errors
  // are the loader's), its factors taken and the model given back its base.
  std::map<std::string, std::vector<AdapterFactors>> by_module;
  const size_t n = adapters.size();
  for (size_t k = 0; k < n; ++k) {
    const AdapterSpec& spec = adapters[k];
    if (spec.name.empty() || spec.name == "default") {
      return absl::InvalidArgumentError(absl::StrCat("adapter ", spec.dir, ": the name \"", spec.name,
                                                     "\" is reserved (\"default\" is the base model)"));
    }
    for (size_t j = 0; j < k; ++j) {
      if (adapters[j].name == spec.name) {
        return absl::InvalidArgumentError(absl::StrCat("adapter name \"", spec.name, "\" is given twice"));
      }
    }
    const std::string config_path = spec.dir + "/adapter_config.json";
    LLMTRAIN_ASSIGN_OR_RETURN(const std::string text, ReadFileToString(config_path));
    LLMTRAIN_ASSIGN_OR_RETURN(const lora::LoraConfig config, lora::ParseAdapterConfig(config_path, text));
    if (config.use_dora) {
      return absl::InvalidArgumentError(absl::StrCat(config_path, ": use_dora: a DoRA adapter rescales the base "
                                                     "weight, which every request shares; merge it (llmtrain merge) "
                                                     "and serve the merged model"));
    }
    if (!config.modules_to_save.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(config_path, ": modules_to_save: the adapter replaces whole "
                                                     "modules, which every request shares; merge it and serve the "
                                                     "merged model"));
    }
    LLMTRAIN_RETURN_IF_ERROR(lora::LoadAdapter(model.get(), spec.dir).status());
    for (const auto& [module, layer] : lora::Adapters(*model)) {
      std::vector<AdapterFactors>& slots = by_module[module];
      slots.resize(n);
      slots[k] = {layer->lora_A().detach(), layer->lora_B().detach(), layer->scaling()};
    }
    lora::RemoveAdapters(model.get());
    impl->adapter_names.push_back(spec.name);
  }
  for (auto& [module, slots] : by_module) {
    slots.resize(n);
    LLMTRAIN_RETURN_IF_ERROR(model->ReplaceLinear(
        module, std::make_shared<MultiLoraLinear>(model->linear(module), impl->routing, std::move(slots))));
  }
  model->set_activation_checkpointing(false);
  impl->model = std::move(model);
  std::unique_ptr<Engine> engine(new Engine(std::move(impl)));
  Impl* raw = engine->impl_.get();
  engine->impl_->thread = std::thread([raw] { raw->Run(); });
  return engine;
}

Engine::Engine(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Engine::~Engine() { Shutdown(); }

void Engine::Shutdown() {
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    impl_->stop = true;
  }
  impl_->wake.notify_all();
  if (impl_->thread.joinable()) impl_->thread.join();
}

absl::StatusOr<uint64_t> Engine::Submit(Request request) {
  Impl& impl = *impl_;
  int64_t adapter = kBase;
  if (request.model != "default") {
    const auto it = std::find(impl.adapter_names.begin(), impl.adapter_names.end(), request.model);
    if (it == impl.adapter_names.end()) {
      return absl::NotFoundError(absl::StrCat("model: \"", request.model, "\" is not served (", "the models are ",
                                              absl::StrJoin(model_names(), ", "), ")"));
    }
    adapter = it - impl.adapter_names.begin();
  }
  if (request.prompt.empty()) return absl::InvalidArgumentError("prompt: expected at least one token");
  for (int64_t id : request.prompt) {
    if (id < 0 || id >= impl.vocab) {
      return absl::InvalidArgumentError(absl::StrCat("prompt: token id ", id, " is outside the vocabulary (", impl.vocab, ")"));
    }
  }
  if (request.max_new_tokens < 1) {
    return absl::InvalidArgumentError(absl::StrCat("max_new_tokens: expected ≥ 1, found ", request.max_new_tokens));
  }
  if (request.top_logprobs < 0 || request.top_logprobs > 20) {
    return absl::InvalidArgumentError(absl::StrCat("top_logprobs: expected 0 to 20, found ", request.top_logprobs));
  }
  const int64_t prompt_tokens = static_cast<int64_t>(request.prompt.size());
  if (request.max_new_tokens > impl.max_context || prompt_tokens > impl.max_context - request.max_new_tokens) {
    return absl::InvalidArgumentError(absl::StrCat("the context is ", impl.max_context, " tokens; the prompt has ",
                                                   prompt_tokens, " and max_new_tokens asks for ",
                                                   request.max_new_tokens, " more"));
  }
  Sequence s;
  s.sampling.temperature = request.temperature;
  s.sampling.top_p = request.top_p;
  s.sampling.max_new_tokens = request.max_new_tokens;
  LLMTRAIN_RETURN_IF_ERROR(model::Validate(s.sampling));
  s.adapter = adapter;
  s.rng.seed(request.seed);
  s.history = request.prompt;
  if (request.eos_token_ids.empty()) request.eos_token_ids = impl.model->eos_token_ids();
  s.request = std::move(request);
  uint64_t id = 0;
  {
    std::lock_guard<std::mutex> lock(impl.mu);
    if (impl.stop) return absl::UnavailableError("the engine is shutting down");
    id = impl.next_id++;
    s.id = id;
    impl.waiting.push_back(std::move(s));
    impl.stats.waiting = static_cast<int64_t>(impl.waiting.size());
  }
  impl.wake.notify_all();
  return id;
}

void Engine::Cancel(uint64_t id) {
  Impl& impl = *impl_;
  {
    std::lock_guard<std::mutex> lock(impl.mu);
    const auto it = std::find_if(impl.waiting.begin(), impl.waiting.end(), [&](const Sequence& s) { return s.id == id; });
    if (it != impl.waiting.end()) {
      impl.cancelled_waiting.push_back(std::move(*it));
      impl.waiting.erase(it);
      impl.stats.waiting = static_cast<int64_t>(impl.waiting.size());
    } else {
      impl.cancel.insert(id);
    }
  }
  impl.wake.notify_all();
}

std::vector<std::string> Engine::model_names() const {
  std::vector<std::string> names = {"default"};
  names.insert(names.end(), impl_->adapter_names.begin(), impl_->adapter_names.end());
  return names;
}

int64_t Engine::max_context() const { return impl_->max_context; }
const model::Decoder& Engine::model() const { return *impl_->model; }

EngineStats Engine::stats() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->stats;
}

void Engine::Impl::Prefill(std::vector<Sequence>* fresh, std::vector<Sequence>* live, model::KvCache* cache,
                           at::Tensor* logits) {
  const int64_t B = static_cast<int64_t>(fresh->size());
  int64_t T = 0;
  for (const Sequence& s : *fresh) T = std::max<int64_t>(T, static_cast<int64_t>(s.history.size()));
  // Left padding (id 0 under mask 0): each row's last prompt token in the last column.
  std::vector<int64_t> ids(static_cast<size_t>(B * T), 0), mask(static_cast<size_t>(B * T), 0);
  for (int64_t r = 0; r < B; ++r) {
    const std::vector<int64_t>& p = (*fresh)[static_cast<size_t>(r)].history;
    const int64_t offset = r * T + (T - static_cast<int64_t>(p.size()));
    std::copy(p.begin(), p.end(), ids.begin() + offset);
    std::fill_n(mask.begin() + offset, p.size(), 1);
  }
  const at::Tensor prompt_ids = at::tensor(ids, at::kLong).view({B, T}).to(model->device());
  const at::Tensor prompt_mask = at::tensor(mask, at::kLong).view({B, T}).to(model->device());
  model::KvCache rows;
  rows.dtype = options.kv_cache_dtype;
  SetRouting(*fresh);
  const at::Tensor fresh_logits = model->LastLogits(prompt_ids, prompt_mask, &rows);  // (B, V)
  // Nothing of the running batch changes until both succeed (AppendRows leaves the cache as it
  // was when it fails).
  at::Tensor all_logits = logits->defined() ? at::cat({*logits, fresh_logits}, 0) : fresh_logits;
  const absl::Status appended = model::AppendRows(cache, std::move(rows));
  TORCH_CHECK(appended.ok(), std::string(appended.message()));
  *logits = std::move(all_logits);
  for (Sequence& s : *fresh) live->push_back(std::move(s));
  fresh->clear();
}

void Engine::Impl::Run() {
  at::NoGradGuard no_grad;
  std::vector<Sequence> live;  // row r of `cache` and `logits` is live[r]
  model::KvCache cache;
  at::Tensor logits;           // (rows, V): the next token's logits of each live row
  // The current exception ends every live row with its error and empties the batch (the engine
  // goes on with the next requests).
  const auto fail_batch = [&](const char* where) {
    const absl::Status status = StatusFromCurrentException(where);
    for (Sequence& s : live) EndRow(s, FinishReason::kError, status);
    live.clear();
    cache = model::KvCache();
    logits = at::Tensor();
  };
  for (;;) {
    std::vector<Sequence> fresh, dropped;
    std::unordered_set<uint64_t> cancels;
    {
      std::unique_lock<std::mutex> lock(mu);
      wake.wait(lock, [&] { return stop || !waiting.empty() || !live.empty() || !cancelled_waiting.empty(); });
      if (stop) break;
      dropped.swap(cancelled_waiting);
      while (!waiting.empty() && static_cast<int64_t>(live.size() + fresh.size()) < options.max_batch) {
        fresh.push_back(std::move(waiting.front()));
        waiting.pop_front();
      }
      stats.waiting = static_cast<int64_t>(waiting.size());
    }
    for (Sequence& s : dropped) End(s, FinishReason::kCancelled);
    try {
      if (!fresh.empty()) Prefill(&fresh, &live, &cache, &logits);
    } catch (...) {
      // The prompts that failed end with the error; the running batch is untouched (a failed
      // prefill appends nothing).
      const absl::Status status = StatusFromCurrentException("serve: prefill");
      for (Sequence& s : fresh) End(s, FinishReason::kError, status);
      fresh.clear();
    }
    {
      std::lock_guard<std::mutex> lock(mu);
      cancels.swap(cancel);
      stats.running = static_cast<int64_t>(live.size());
    }
    if (live.empty()) continue;
    // Choose each row's token on the CPU (V floats per row), with the row's own options. The copy
    // is where an asynchronous device error of the forward surfaces: it ends the batch, not the
    // engine.
    at::Tensor last, log_probs;  // (rows, V)
    try {
      last = logits.to(at::kCPU, at::kFloat).contiguous();
      log_probs = last.log_softmax(-1);
    } catch (...) {
      fail_batch("serve: logits");
      continue;
    }
    std::vector<int64_t> keep, next;
    std::vector<Sequence> still;
    for (size_t row = 0; row < live.size(); ++row) {
      Sequence& s = live[row];
      if (cancels.count(s.id) != 0) {
        EndRow(s, FinishReason::kCancelled);
        continue;
      }
      const int64_t r = static_cast<int64_t>(row);
      TokenEvent event;
      try {
        event.id = model::ChooseNextToken(last[r].clone(), s.history, s.sampling, s.rng);
        event.logprob = log_probs[r][event.id].item<float>();
        if (s.request.top_logprobs > 0) {
          auto [values, indices] = log_probs[r].topk(s.request.top_logprobs);
          for (int64_t j = 0; j < values.size(0); ++j) {
            event.top.emplace_back(indices[j].item<int64_t>(), values[j].item<float>());
          }
        }
      } catch (...) {
        EndRow(s, FinishReason::kError, StatusFromCurrentException("serve: sampling"));  // its row leaves
        continue;
      }
      s.history.push_back(event.id);
      ++s.generated;
      bool go = true;
      if (s.request.on_token) {
        try {
          go = s.request.on_token(event);
        } catch (...) {
          go = false;
        }
      }
      const std::vector<int64_t>& eos = s.request.eos_token_ids;
      if (!go || std::find(eos.begin(), eos.end(), event.id) != eos.end()) {
        EndRow(s, FinishReason::kStop);
        continue;
      }
      if (s.generated >= s.request.max_new_tokens || static_cast<int64_t>(s.history.size()) >= max_context) {
        EndRow(s, FinishReason::kLength);
        continue;
      }
      keep.push_back(r);
      next.push_back(event.id);
      still.push_back(std::move(s));
    }
    live = std::move(still);
    {
      std::lock_guard<std::mutex> lock(mu);
      stats.running = static_cast<int64_t>(live.size());
    }
    if (live.empty()) {
      cache = model::KvCache();
      logits = at::Tensor();
      continue;
    }
    try {
      if (static_cast<int64_t>(keep.size()) != cache.mask.size(0)) {
        model::KeepRows(&cache, at::tensor(keep, at::kLong).to(model->device()));
        model::DropLeadingPadding(&cache);
      }
      SetRouting(live);
      const at::Tensor step = at::tensor(next, at::kLong).view({-1, 1}).to(model->device());
      logits = model->LastLogits(step, at::ones_like(step), &cache);
      std::lock_guard<std::mutex> lock(mu);
      ++stats.steps;
      stats.largest_batch = std::max<int64_t>(stats.largest_batch, static_cast<int64_t>(live.size()));
    } catch (...) {
      fail_batch("serve: decode step");
    }
  }
  // Shutting down: whatever has not ended is cancelled.
  std::deque<Sequence> rest;
  {
    std::lock_guard<std::mutex> lock(mu);
    rest.swap(waiting);
    for (Sequence& s : cancelled_waiting) rest.push_back(std::move(s));
    cancelled_waiting.clear();
  }
  for (Sequence& s : live) EndRow(s, FinishReason::kCancelled);
  for (Sequence& s : rest) End(s, FinishReason::kCancelled);
}

}  // namespace llmtrain::serve
