// Serving many requests from one loaded model: continuous batching over a decoder, each request
// with its own sampling options and its own LoRA adapter (or none), the adapters applied beside
// the shared base in the same batch (rows routed to their adapter's A and B), never merged.
//
// A request joins the running batch at the next step (its prompt is prefilled, then its cache
// rows are appended to the batch's), gets one token per step, and leaves when it ends: an end
// token, its max_new_tokens, the context limit, its callback returning false (a stop string, a
// client gone) or Cancel. One thread runs the model; callbacks run on it, so they must be quick.
//
//   serve::EngineOptions options;
//   LLMTRAIN_ASSIGN_OR_RETURN(auto engine, serve::Engine::Create(std::move(model),
//                                                                {{"sql", "runs/sql/adapter"}}, options));
//   serve::Request request;
//   request.model = "sql";                      // "default": the base alone
//   request.prompt = ids;
//   request.on_token = [&](const serve::TokenEvent& t) { /* stream t.id */ return true; };
//   request.on_finish = [&](serve::FinishReason why, const absl::Status& error) { /* done */ };
//   LLMTRAIN_ASSIGN_OR_RETURN(uint64_t id, engine->Submit(std::move(request)));
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "llmtrain/model/decoder.h"

namespace llmtrain::serve {

/// An adapter the engine serves: requests name it by `name`; `dir` is a PEFT adapter folder
/// (lora::SaveAdapter's or PEFT's save_pretrained).
struct AdapterSpec {
  std::string name;
  std::string dir;
};

struct EngineOptions {
  /// The most sequences decoded together; more requests wait in order of arrival.
  int64_t max_batch = 16;
  /// The prompt plus the new tokens of one request may not exceed this (0: the model config's
  /// max_position_embeddings). Submit refuses a request that cannot fit.
  int64_t max_context = 0;
  /// The KV cache's dtype (model::KvCache::dtype): unset = the model's.
  std::optional<c10::ScalarType> kv_cache_dtype;
};

/// One generated token as a callback sees it.
struct TokenEvent {
  int64_t id = 0;
  /// log softmax of the model's logits (float32, before temperature and top-p) at `id`.
  float logprob = 0.0f;
  /// The Request::top_logprobs most likely tokens and their log probabilities, most likely first.
  std::vector<std::pair<int64_t, float>> top;
};

enum class FinishReason {
  kStop,       ///< an end token, or on_token returned false
  kLength,     ///< max_new_tokens or the context limit
  kCancelled,  ///< Cancel, or the engine shut down first
  kError,      ///< the model failed (the status says why)
};

/// "stop", "length", "cancelled", "error".
const char* FinishReasonName(FinishReason reason);

struct Request {
  std::string model = "default";  ///< "default" (the base) or an adapter's name
  std::vector<int64_t> prompt;    ///< token ids, at least one
  int64_t max_new_tokens = 16;
  double temperature = 0.0;       ///< 0: greedy
  double top_p = 1.0;
  uint64_t seed = 0;              ///< the request's own generator (same seed, same tokens)
  int64_t top_logprobs = 0;       ///< how many alternatives each TokenEvent lists (0–20)
  std::vector<int64_t> eos_token_ids;  ///< empty: the model's
  /// Each new token, on the engine's thread, as soon as it is chosen; false ends the request
  /// after this token with kStop. Null: no callback.
  std::function<bool(const TokenEvent&)> on_token;
  /// Called once, last, on the engine's thread, for every request Submit accepted (a refused one
  /// gets Submit's error instead).
  std::function<void(FinishReason, const absl::Status&)> on_finish;
};

/// Counters for a health check.
struct EngineStats {
  int64_t running = 0;    ///< sequences in the batch
  int64_t waiting = 0;    ///< submitted, not yet prefilled
  int64_t finished = 0;   ///< ended with kStop or kLength
  int64_t cancelled = 0;  ///< ended with kCancelled
  int64_t failed = 0;     ///< ended with kError
  int64_t steps = 0;      ///< decode steps run
  int64_t largest_batch = 0;  ///< the most rows one decode step has had
};

class Engine {
 public:
  /// Takes the model (eval only: no training after this), loads each adapter and wraps the
  /// projections they target so that every row of a batch uses its own. InvalidArgument for a
  /// name used twice or "default", a DoRA adapter or one with modules_to_save (they change the
  /// base itself, which all rows share), bad options; the adapter loader's errors name the file.
  static absl::StatusOr<std::unique_ptr<Engine>> Create(std::unique_ptr<model::Decoder> model,
                                                        const std::vector<AdapterSpec>& adapters,
                                                        const EngineOptions& options);
  /// Shutdown().
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  /// Queues a request and returns its id. Refused before queuing: InvalidArgument for an empty
  /// prompt, ids outside the vocabulary, bad options, or a prompt plus max_new_tokens beyond
  /// max_context (the message gives both numbers); NotFound for a model name not served.
  absl::StatusOr<uint64_t> Submit(Request request);
  /// Ends request `id` at the next step with kCancelled and frees its row (thread-safe; an id that
  /// has ended already is ignored).
  void Cancel(uint64_t id);

  /// Cancels what is still running or waiting (each gets on_finish with kCancelled), stops the
  /// engine's thread and refuses later Submits (Unavailable). Idempotent; the destructor calls it.
  void Shutdown();

  /// "default", then the adapters in the order given.
  std::vector<std::string> model_names() const;
  int64_t max_context() const;
  const model::Decoder& model() const;
  EngineStats stats() const;

 private:
  struct Impl;
  explicit Engine(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace llmtrain::serve
