// llmtrain serve --model PATH [--adapter NAME=DIR ...] [--host 127.0.0.1] [--port 8000]
//                [--max-batch 16] [--max-context N] [--kv-cache f32|bf16|f16] [--threads N]
//                [--dtype D] [--load-in-4bit] [--packed] [--tokenizer PATH]
// An OpenAI-compatible HTTP server over serve::Engine (continuous batching, one LoRA adapter per
// request): /v1/completions, /v1/chat/completions (server-sent events with "stream": true),
// /v1/models and /health. docs/serving.md documents the fields and the errors.
#include <httplib.h>
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <ATen/ATen.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <ctime>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "llmtrain/commands.h"
#include "llmtrain/serve/engine.h"
#include "llmtrain/tokenizer/chat_template.h"
#include "llmtrain/tokenizer/tokenizer.h"
#include "nlohmann/json.hpp"

namespace llmtrain::cli {
namespace {

using nlohmann::json;

constexpr char kHelp[] =
    "usage: llmtrain serve --model PATH [--adapter NAME=DIR ...] [--host 127.0.0.1] [--port 8000]\n"
    "                      [--max-batch 16] [--max-context N] [--kv-cache f32|bf16|f16] [--threads N]\n"
    "                      [--dtype f32] [--load-in-4bit] [--packed] [--tokenizer PATH]\n"
    "  An OpenAI-compatible server: POST /v1/completions, POST /v1/chat/completions (\"stream\": true\n"
    "  for server-sent events), GET /v1/models, GET /health. The base model answers to the name\n"
    "  \"default\", each --adapter to its NAME (a PEFT LoRA folder, applied beside the base, never\n"
    "  merged); concurrent requests are decoded together, up to --max-batch at a time.\n"
    "  --port 0 picks a free port. The first line on stderr says where it listens.\n"
    "  --max-context: prompt + max_tokens allowed per request (default: the model's\n"
    "  max_position_embeddings). --threads: HTTP connections served at once (default 2·max-batch+8).\n"
    "  Ctrl-C (SIGINT) or SIGTERM stops it: running requests are cancelled.\n";

constexpr int64_t kMaxStops = 4;
constexpr size_t kMaxBodyBytes = 32u << 20;

// A request's error as OpenAI's API gives it: {"error": {"message", "type", "param", "code"}}.
struct ApiError {
  int status = 400;
  std::string message, param, code;
  std::string type = "invalid_request_error";
};

void SendError(httplib::Response& res, const ApiError& e) {
  const json body = {{"error",
                      {{"message", e.message},
                       {"type", e.type},
                       {"param", e.param.empty() ? json(nullptr) : json(e.param)},
                       {"code", e.code.empty() ? json(nullptr) : json(e.code)}}}};
  res.status = e.status;
  res.set_content(body.dump(-1, ' ', false, json::error_handler_t::replace), "application/json");
}

std::string Dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

// One token's log probability as the response lists it.
struct TokenLogprob {
  std::string token;
  float logprob = 0.0f;
  int64_t text_offset = 0;  // completions: where the token's text starts in the generated text
  std::vector<std::pair<std::string, float>> top;
};

// What the engine's thread hands to the HTTP thread of one request.
struct Exchange {
  std::mutex mu;
  std::condition_variable ready;
  std::string text;                    // guarded by mu: generated text not yet taken
  std::vector<TokenLogprob> logprobs;  // guarded by mu: entries not yet taken
  int64_t completion_tokens = 0;       // guarded by mu
  bool done = false;                   // guarded by mu
  serve::FinishReason reason = serve::FinishReason::kStop;
  absl::Status error;
  uint64_t id = 0;

  // The engine's thread only: text decoding and stop strings.
  std::unique_ptr<tokenizer::StreamDecoder> stream;
  std::string all;       // all text decoded so far
  size_t sent = 0;       // bytes of `all` handed over (a possible stop string's start is held back)
  bool stopped = false;  // a stop string ended it
  std::vector<std::string> stops;
  bool want_logprobs = false;
};

// What both endpoints take from a request body.
struct Parsed {
  std::string model;
  std::vector<int64_t> prompt;
  int64_t max_tokens = -1;  // -1: the endpoint's default
  double temperature = 1.0, top_p = 1.0;
  std::optional<uint64_t> seed;
  std::vector<std::string> stops;
  bool stream = false, include_usage = false;
  bool logprobs = false;
  int64_t top_logprobs = 0;
};

class Server {
 public:
  Server(std::unique_ptr<serve::Engine> engine, std::unique_ptr<tokenizer::Tokenizer> tok)
      : engine_(std::move(engine)), tok_(std::move(tok)) {
    auto chat = tokenizer::ChatTemplate::ForTokenizer(*tok_);
    if (chat.ok()) {
      chat_ = std::move(*chat);
    } else {
      chat_error_ = std::string(chat.status().message());
    }
  }

  /// Ends every request (cancelled) so that no HTTP thread waits on the engine any more.
  void Shutdown() { engine_->Shutdown(); }

  void Install(httplib::Server* http) {
    http->Get("/health", [this](const httplib::Request&, httplib::Response& res) { Health(res); });
    http->Get("/v1/models", [this](const httplib::Request&, httplib::Response& res) { Models(res); });
    http->Post("/v1/completions",
               [this](const httplib::Request& req, httplib::Response& res) { Complete(req, res, /*chat=*/false); });
    http->Post("/v1/chat/completions",
               [this](const httplib::Request& req, httplib::Response& res) { Complete(req, res, /*chat=*/true); });
    http->set_error_handler([](const httplib::Request& req, httplib::Response& res) {
      if (!res.body.empty()) return;
      ApiError e;
      e.status = res.status;
      e.message = res.status == 404 ? absl::StrCat("no route for ", req.method, " ", req.path)
                                    : absl::StrCat("HTTP ", res.status);
      if (res.status == 413) e.message = absl::StrCat("the request body exceeds ", kMaxBodyBytes, " bytes");
      SendError(res, e);
    });
    http->set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
      ApiError e;
      e.status = 500;
      e.type = "server_error";
      try {
        std::rethrow_exception(ep);
      } catch (const std::exception& x) {
        e.message = x.what();
      } catch (...) {
        e.message = "unknown error";
      }
      SendError(res, e);
    });
  }

 private:
  void Health(httplib::Response& res) {
    const serve::EngineStats s = engine_->stats();
    res.set_content(Dump({{"status", "ok"},
                          {"running", s.running},
                          {"waiting", s.waiting},
                          {"finished", s.finished},
                          {"cancelled", s.cancelled},
                          {"failed", s.failed},
                          {"steps", s.steps},
                          {"largest_batch", s.largest_batch}}),
                    "application/json");
  }

  void Models(httplib::Response& res) {
    json data = json::array();
    for (const std::string& name : engine_->model_names()) {
      data.push_back({{"id", name}, {"object", "model"}, {"created", started_}, {"owned_by", "llmtrain"}});
    }
    res.set_content(Dump({{"object", "list"}, {"data", data}}), "application/json");
  }

  // Reads the fields both endpoints share and the endpoint's prompt; an ApiError on bad input.
  std::optional<ApiError> Parse(const json& body, bool chat, Parsed* p) {
    auto bad = [](std::string param, std::string message) {
      ApiError e;
      e.param = std::move(param);
      e.message = absl::StrCat(e.param, ": ", message);
      return e;
    };
    if (!body.is_object()) return bad("body", "expected a JSON object");
    // A field given as null is a field not given (OpenAI's API accepts null for the optional ones).
    auto given = [&](const char* key) { return body.contains(key) && !body[key].is_null(); };
    auto number = [&](const char* key, double* out) -> std::optional<ApiError> {
      if (!body.contains(key) || body[key].is_null()) return std::nullopt;
      if (!body[key].is_number()) return bad(key, "expected a number");
      *out = body[key].get<double>();
      return std::nullopt;
    };
    auto integer = [&](const char* key, int64_t* out) -> std::optional<ApiError> {
      if (!body.contains(key) || body[key].is_null()) return std::nullopt;
      if (!body[key].is_number_integer()) return bad(key, "expected an integer");
      *out = body[key].get<int64_t>();
      return std::nullopt;
    };
    if (!body.contains("model") || !body["model"].is_string()) return bad("model", "expected a string");
    p->model = body["model"].get<std::string>();
    if (auto e = integer("max_tokens", &p->max_tokens)) return e;
    if (chat) {
      if (auto e = integer("max_completion_tokens", &p->max_tokens)) return e;
    }
    if (given("max_tokens") || (chat && given("max_completion_tokens"))) {
      if (p->max_tokens < 1) {
        return bad(given("max_tokens") ? "max_tokens" : "max_completion_tokens",
                   absl::StrCat("expected an integer ≥ 1, found ", p->max_tokens));
      }
    }
    if (auto e = number("temperature", &p->temperature)) return e;
    if (p->temperature < 0.0 || p->temperature > 2.0) return bad("temperature", "expected a number from 0 to 2");
    if (auto e = number("top_p", &p->top_p)) return e;
    if (!(p->top_p > 0.0 && p->top_p <= 1.0)) return bad("top_p", "expected a number in (0, 1]");
    if (body.contains("seed") && !body["seed"].is_null()) {
      if (!body["seed"].is_number_integer()) return bad("seed", "expected an integer");
      p->seed = static_cast<uint64_t>(body["seed"].get<int64_t>());
    }
    if (body.contains("stop") && !body["stop"].is_null()) {
      const json& stop = body["stop"];
      if (stop.is_string()) {
        p->stops.push_back(stop.get<std::string>());
      } else if (stop.is_array() && static_cast<int64_t>(stop.size()) <= kMaxStops) {
        for (const json& s : stop) {
          if (!s.is_string()) return bad("stop", "expected a string or an array of up to 4 strings");
          p->stops.push_back(s.get<std::string>());
        }
      } else {
        return bad("stop", "expected a string or an array of up to 4 strings");
      }
      for (const std::string& s : p->stops) {
        if (s.empty()) return bad("stop", "an empty stop string");
      }
    }
    if (body.contains("stream") && !body["stream"].is_null()) {
      if (!body["stream"].is_boolean()) return bad("stream", "expected true or false");
      p->stream = body["stream"].get<bool>();
    }
    if (body.contains("stream_options") && body["stream_options"].is_object()) {
      const json& o = body["stream_options"];
      p->include_usage = o.contains("include_usage") && o["include_usage"].is_boolean() && o["include_usage"].get<bool>();
    }
    if (chat) {
      if (body.contains("logprobs") && !body["logprobs"].is_null()) {
        if (!body["logprobs"].is_boolean()) return bad("logprobs", "expected true or false");
        p->logprobs = body["logprobs"].get<bool>();
      }
      if (auto e = integer("top_logprobs", &p->top_logprobs)) return e;
      if (p->top_logprobs < 0 || p->top_logprobs > 20) return bad("top_logprobs", "expected an integer from 0 to 20");
      if (p->top_logprobs > 0 && !p->logprobs) return bad("top_logprobs", "needs \"logprobs\": true");
    } else {
      int64_t n = -1;
      if (auto e = integer("logprobs", &n)) return e;
      if (body.contains("logprobs") && !body["logprobs"].is_null()) {
        if (n < 0 || n > 5) return bad("logprobs", "expected an integer from 0 to 5");
        p->logprobs = true;
        p->top_logprobs = n;
      }
    }
    // What the engine cannot do is refused rather than ignored.
    if (given("n") && !(body["n"].is_number_integer() && body["n"].get<int64_t>() == 1)) {
      return bad("n", "only n = 1 is served; send several requests (they are batched together)");
    }
    if (given("best_of") && !(body["best_of"].is_number_integer() && body["best_of"].get<int64_t>() == 1)) {
      return bad("best_of", "only best_of = 1 is served");
    }
    if (given("echo") && !(body["echo"].is_boolean() && !body["echo"].get<bool>())) {
      return bad("echo", "echo is not served");
    }
    for (const char* key : {"presence_penalty", "frequency_penalty"}) {
      if (given(key) && !(body[key].is_number() && body[key].get<double>() == 0.0)) {
        return bad(key, "not served (only 0)");
      }
    }
    if (given("logit_bias") && !body["logit_bias"].empty()) return bad("logit_bias", "not served");
    if (given("tools") && !body["tools"].empty()) return bad("tools", "tool calls are not served");
    // The prompt, tokenized as `llmtrain generate` does (--prompt, or --chat for messages).
    std::lock_guard<std::mutex> lock(tok_mu_);
    if (chat) {
      if (!body.contains("messages") || !body["messages"].is_array() || body["messages"].empty()) {
        return bad("messages", "expected a non-empty array of messages");
      }
      if (chat_ == nullptr) return bad("messages", absl::StrCat("the model has no chat template: ", chat_error_));
      auto messages = tokenizer::ParseMessages(Dump(body["messages"]));
      if (!messages.ok()) return bad("messages", std::string(messages.status().message()));
      for (size_t i = 0; i < messages->size(); ++i) {
        for (const tokenizer::ContentPart& part : (*messages)[i].parts) {
          if (part.type != "text") {
            return bad(absl::StrCat("messages[", i, "].content"),
                       absl::StrCat("a \"", part.type, "\" part: this server takes text only"));
          }
        }
      }
      auto encoded = tokenizer::EncodeChat(*tok_, *chat_, *messages, /*add_generation_prompt=*/true);
      if (!encoded.ok()) return bad("messages", std::string(encoded.status().message()));
      p->prompt.assign(encoded->ids.begin(), encoded->ids.end());
    } else {
      if (!body.contains("prompt")) return bad("prompt", "missing");
      const json& prompt = body["prompt"];
      const json* one = &prompt;
      if (prompt.is_array() && !prompt.empty() && (prompt[0].is_string() || prompt[0].is_array())) {
        if (prompt.size() != 1) {
          return bad("prompt", "one prompt per request is served; send several requests (they are batched together)");
        }
        one = &prompt[0];
      }
      if (one->is_string()) {
        const std::vector<int32_t> ids = tok_->Encode(one->get<std::string>());
        p->prompt.assign(ids.begin(), ids.end());
      } else if (one->is_array()) {
        for (const json& id : *one) {
          if (!id.is_number_integer()) return bad("prompt", "expected a string or an array of token ids");
          p->prompt.push_back(id.get<int64_t>());
        }
      } else {
        return bad("prompt", "expected a string or an array of token ids");
      }
      if (p->prompt.empty()) return bad("prompt", "the prompt has no tokens");
    }
    return std::nullopt;
  }

  // A token's text for logprobs (special tokens spelled out).
  std::string TokenText(int64_t id) {
    return tok_->Decode(std::vector<int32_t>{static_cast<int32_t>(id)}, /*skip_special_tokens=*/false);
  }

  // On the engine's thread: decodes the token, holds back what could begin a stop string, and
  // hands the rest over. False when a stop string has appeared (the request ends there).
  bool OnToken(Exchange& ex, const serve::TokenEvent& event) {
    TokenLogprob entry;
    {
      std::lock_guard<std::mutex> lock(tok_mu_);
      entry.text_offset = static_cast<int64_t>(ex.all.size());
      ex.all += ex.stream->Push(static_cast<int32_t>(event.id));
      if (ex.want_logprobs) {
        entry.token = TokenText(event.id);
        entry.logprob = event.logprob;
        for (const auto& [id, lp] : event.top) entry.top.emplace_back(TokenText(id), lp);
      }
    }
    size_t end = ex.all.size();
    bool go = true;
    size_t found = std::string::npos;
    for (const std::string& stop : ex.stops) found = std::min(found, ex.all.find(stop, ex.sent));
    if (found != std::string::npos) {
      end = found;
      go = false;
      ex.stopped = true;
    } else {
      // Hold back the longest tail that is the start of a stop string.
      size_t hold = 0;
      for (const std::string& stop : ex.stops) {
        for (size_t k = std::min(stop.size() - 1, ex.all.size() - ex.sent); k > hold; --k) {
          if (ex.all.compare(ex.all.size() - k, k, stop, 0, k) == 0) {
            hold = k;
            break;
          }
        }
      }
      end = ex.all.size() - hold;
    }
    {
      std::lock_guard<std::mutex> lock(ex.mu);
      ex.text += ex.all.substr(ex.sent, end - ex.sent);
      if (ex.want_logprobs) ex.logprobs.push_back(std::move(entry));
      ++ex.completion_tokens;
    }
    ex.sent = end;
    ex.ready.notify_all();
    return go;
  }

  void OnFinish(Exchange& ex, serve::FinishReason reason, const absl::Status& status) {
    std::string rest;
    if (!ex.stopped) {
      std::lock_guard<std::mutex> lock(tok_mu_);
      ex.all += ex.stream->Finish();
      rest = ex.all.substr(ex.sent);
    }
    {
      std::lock_guard<std::mutex> lock(ex.mu);
      ex.text += rest;
      ex.done = true;
      ex.reason = reason;
      ex.error = status;
    }
    ex.ready.notify_all();
  }

  void Complete(const httplib::Request& req, httplib::Response& res, bool chat) {
    const json body = json::parse(req.body, nullptr, /*allow_exceptions=*/false);
    if (body.is_discarded()) {
      ApiError e;
      e.message = "the request body is not valid JSON";
      e.code = "invalid_json";
      return SendError(res, e);
    }
    Parsed p;
    if (auto e = Parse(body, chat, &p)) return SendError(res, *e);
    const std::vector<std::string> names = engine_->model_names();
    if (std::find(names.begin(), names.end(), p.model) == names.end()) {
      ApiError e;
      e.status = 404;
      e.param = "model";
      e.code = "model_not_found";
      e.message = absl::StrCat("The model `", p.model, "` does not exist; served: ", absl::StrJoin(names, ", "));
      return SendError(res, e);
    }
    const int64_t prompt_tokens = static_cast<int64_t>(p.prompt.size());
    const int64_t context = engine_->max_context();
    if (p.max_tokens < 0) p.max_tokens = chat ? context - prompt_tokens : 16;
    if (p.max_tokens > context || prompt_tokens > context - std::max<int64_t>(p.max_tokens, 1)) {
      ApiError e;
      e.param = chat ? "messages" : "prompt";
      e.code = "context_length_exceeded";
      e.message = absl::StrCat("This model's maximum context length is ", context, " tokens. However, you requested ",
                               prompt_tokens + p.max_tokens, " tokens (", prompt_tokens, " in the ",
                               chat ? "messages" : "prompt", ", ", p.max_tokens, " in the completion).");
      return SendError(res, e);
    }
    auto ex = std::make_shared<Exchange>();
    ex->stops = p.stops;
    ex->want_logprobs = p.logprobs;
    ex->stream = std::make_unique<tokenizer::StreamDecoder>(*tok_, /*skip_special_tokens=*/true);
    serve::Request r;
    r.model = p.model;
    r.prompt = p.prompt;
    r.max_new_tokens = p.max_tokens;
    r.temperature = p.temperature;
    r.top_p = p.top_p;
    r.seed = p.seed ? *p.seed : std::random_device()();
    r.top_logprobs = p.logprobs ? p.top_logprobs : 0;
    r.on_token = [this, ex](const serve::TokenEvent& event) { return OnToken(*ex, event); };
    r.on_finish = [this, ex](serve::FinishReason reason, const absl::Status& status) { OnFinish(*ex, reason, status); };
    auto id = engine_->Submit(std::move(r));
    if (!id.ok()) {
      ApiError e;
      e.status = id.status().code() == absl::StatusCode::kNotFound ? 404 : id.status().code() == absl::StatusCode::kUnavailable ? 503 : 400;
      e.message = std::string(id.status().message());
      return SendError(res, e);
    }
    ex->id = *id;
    const std::string rid = absl::StrCat(chat ? "chatcmpl-" : "cmpl-", next_id_.fetch_add(1));
    const int64_t created = static_cast<int64_t>(std::time(nullptr));
    const json usage_base = {{"prompt_tokens", prompt_tokens}};
    if (!p.stream) {
      std::unique_lock<std::mutex> lock(ex->mu);
      ex->ready.wait(lock, [&] { return ex->done; });
      if (ex->reason == serve::FinishReason::kError || ex->reason == serve::FinishReason::kCancelled) {
        ApiError e;
        e.status = ex->reason == serve::FinishReason::kError ? 500 : 503;
        e.type = "server_error";
        e.message = ex->reason == serve::FinishReason::kError ? std::string(ex->error.message())
                                                               : "the server is shutting down";
        return SendError(res, e);
      }
      json choice = {{"index", 0}, {"finish_reason", serve::FinishReasonName(ex->reason)}};
      json logprobs = p.logprobs ? Logprobs(ex->logprobs, chat) : json(nullptr);
      if (chat) {
        choice["message"] = {{"role", "assistant"}, {"content", ex->text}};
      } else {
        choice["text"] = ex->text;
      }
      choice["logprobs"] = logprobs;
      const json out = {{"id", rid},
                        {"object", chat ? "chat.completion" : "text_completion"},
                        {"created", created},
                        {"model", p.model},
                        {"choices", json::array({choice})},
                        {"usage", Usage(prompt_tokens, ex->completion_tokens)}};
      res.set_content(Dump(out), "application/json");
      return;
    }
    // Streaming: one event per handed-over piece, then the finish reason, [DONE]. A write that
    // fails (the client has gone) ends the provider; the releaser then cancels the request, which
    // frees its row at the engine's next step.
    auto sent_role = std::make_shared<bool>(false);
    serve::Engine* engine = engine_.get();
    res.set_header("Cache-Control", "no-cache");
    res.set_chunked_content_provider(
        "text/event-stream",
        [this, ex, p, rid, created, chat, sent_role, prompt_tokens](size_t, httplib::DataSink& sink) {
          std::string text;
          std::vector<TokenLogprob> logprobs;
          bool done = false;
          serve::FinishReason reason = serve::FinishReason::kStop;
          absl::Status error;
          int64_t completion_tokens = 0;
          {
            std::unique_lock<std::mutex> lock(ex->mu);
            ex->ready.wait(lock, [&] { return ex->done || !ex->text.empty() || !ex->logprobs.empty(); });
            text.swap(ex->text);
            logprobs.swap(ex->logprobs);
            done = ex->done;
            reason = ex->reason;
            error = ex->error;
            completion_tokens = ex->completion_tokens;
          }
          auto event = [&](const json& data) {
            const std::string line = absl::StrCat("data: ", Dump(data), "\n\n");
            return sink.write(line.data(), line.size());
          };
          auto chunk = [&](json choice) {
            return json{{"id", rid},
                        {"object", chat ? "chat.completion.chunk" : "text_completion"},
                        {"created", created},
                        {"model", p.model},
                        {"choices", json::array({std::move(choice)})}};
          };
          if (chat && !*sent_role) {
            *sent_role = true;
            if (!event(chunk({{"index", 0}, {"delta", {{"role", "assistant"}, {"content", ""}}},
                              {"logprobs", nullptr}, {"finish_reason", nullptr}}))) {
              return false;
            }
          }
          if (!text.empty() || !logprobs.empty()) {
            json choice = {{"index", 0}, {"finish_reason", nullptr},
                           {"logprobs", p.logprobs ? Logprobs(logprobs, chat) : json(nullptr)}};
            if (chat) {
              choice["delta"] = {{"content", text}};
            } else {
              choice["text"] = text;
            }
            if (!event(chunk(std::move(choice)))) return false;
          }
          if (!done) return true;
          if (reason == serve::FinishReason::kError || reason == serve::FinishReason::kCancelled) {
            // The headers are gone: the error travels as an event, then the stream ends.
            const json err = {{"error",
                               {{"message", reason == serve::FinishReason::kError ? std::string(error.message())
                                                                                   : "the server is shutting down"},
                                {"type", "server_error"},
                                {"param", nullptr},
                                {"code", nullptr}}}};
            event(err);
            sink.done();
            return true;
          }
          json last = {{"index", 0}, {"finish_reason", serve::FinishReasonName(reason)}, {"logprobs", nullptr}};
          if (chat) {
            last["delta"] = json::object();
          } else {
            last["text"] = "";
          }
          if (!event(chunk(std::move(last)))) return false;
          if (p.include_usage) {
            json u = chunk(json());
            u["choices"] = json::array();
            u["usage"] = Usage(prompt_tokens, completion_tokens);
            if (!event(u)) return false;
          }
          const std::string done_line = "data: [DONE]\n\n";
          if (!sink.write(done_line.data(), done_line.size())) return false;
          sink.done();
          return true;
        },
        [engine, ex](bool success) {
          bool done = false;
          {
            std::lock_guard<std::mutex> lock(ex->mu);
            done = ex->done;
          }
          if (!success || !done) engine->Cancel(ex->id);
        });
  }

  static json Usage(int64_t prompt_tokens, int64_t completion_tokens) {
    return {{"prompt_tokens", prompt_tokens},
            {"completion_tokens", completion_tokens},
            {"total_tokens", prompt_tokens + completion_tokens}};
  }

  // OpenAI's two logprobs layouts: completions' parallel arrays, chat's list of entries.
  static json Logprobs(const std::vector<TokenLogprob>& entries, bool chat) {
    auto bytes = [](const std::string& s) {
      json b = json::array();
      for (unsigned char c : s) b.push_back(static_cast<int>(c));
      return b;
    };
    if (chat) {
      json content = json::array();
      for (const TokenLogprob& e : entries) {
        json top = json::array();
        for (const auto& [t, lp] : e.top) top.push_back({{"token", t}, {"logprob", lp}, {"bytes", bytes(t)}});
        content.push_back({{"token", e.token}, {"logprob", e.logprob}, {"bytes", bytes(e.token)}, {"top_logprobs", top}});
      }
      return {{"content", content}};
    }
    json tokens = json::array(), token_logprobs = json::array(), top_logprobs = json::array(), offsets = json::array();
    for (const TokenLogprob& e : entries) {
      tokens.push_back(e.token);
      token_logprobs.push_back(e.logprob);
      json top = json::object();
      for (const auto& [t, lp] : e.top) {
        if (!top.contains(t)) top[t] = lp;
      }
      top_logprobs.push_back(top);
      offsets.push_back(e.text_offset);
    }
    return {{"tokens", tokens}, {"token_logprobs", token_logprobs}, {"top_logprobs", top_logprobs},
            {"text_offset", offsets}};
  }

  std::unique_ptr<serve::Engine> engine_;
  std::unique_ptr<tokenizer::Tokenizer> tok_;
  std::unique_ptr<tokenizer::ChatTemplate> chat_;
  std::string chat_error_;
  std::mutex tok_mu_;  // the tokenizer is used from the HTTP threads and the engine's thread
  std::atomic<uint64_t> next_id_{1};
  int64_t started_ = static_cast<int64_t>(std::time(nullptr));
};

}  // namespace

int RunServe(const std::vector<std::string>& args) {
  std::string model_path, tokenizer_path, host = "127.0.0.1";
  int port = 8000;
  int64_t threads = 0;
  std::vector<serve::AdapterSpec> adapters;
  serve::EngineOptions options;
  Dtype dtype = Dtype::kF32;
  ModelFlags flags;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "--help" || a == "-h") {
      std::fputs(kHelp, stdout);
      std::fputs(kModelFlagsHelp, stdout);
      return 0;
    }
    std::string flag_error;
    if (a != "--adapter" && flags.Parse(a, args, &i, &flag_error)) {
      if (!flag_error.empty()) return Fail("serve", flag_error, 2);
      continue;
    }
    if (i + 1 >= args.size()) return Fail("serve", absl::StrCat(a, " needs a value\n", kHelp), 2);
    const std::string& v = args[++i];
    bool ok = true;
    if (a == "--model") {
      model_path = v;
    } else if (a == "--tokenizer") {
      tokenizer_path = v;
    } else if (a == "--adapter") {
      const size_t eq = v.find('=');
      if (eq == std::string::npos || eq == 0 || eq + 1 == v.size()) {
        return Fail("serve", absl::StrCat("--adapter: expected NAME=DIR, found \"", v, "\""), 2);
      }
      adapters.push_back({v.substr(0, eq), v.substr(eq + 1)});
    } else if (a == "--host") {
      host = v;
    } else if (a == "--port") {
      ok = absl::SimpleAtoi(v, &port) && port >= 0 && port <= 65535;
    } else if (a == "--max-batch") {
      ok = absl::SimpleAtoi(v, &options.max_batch) && options.max_batch >= 1;
    } else if (a == "--max-context") {
      ok = absl::SimpleAtoi(v, &options.max_context) && options.max_context >= 1;
    } else if (a == "--threads") {
      ok = absl::SimpleAtoi(v, &threads) && threads >= 1;
    } else if (a == "--kv-cache") {
      auto parsed = ParseKvCacheDtype(v);
      if (!parsed.ok()) return Fail("serve", std::string(parsed.status().message()), 2);
      options.kv_cache_dtype = *parsed;
    } else if (a == "--dtype") {
      auto parsed = DtypeFromUserName(v);
      if (!parsed.ok()) return Fail("serve", std::string(parsed.status().message()), 2);
      dtype = *parsed;
    } else {
      return Fail("serve", absl::StrCat("unknown option ", a, "\n", kHelp), 2);
    }
    if (!ok) return Fail("serve", absl::StrCat(a, ": not a valid value: \"", v, "\""), 2);
  }
  if (model_path.empty()) return Fail("serve", absl::StrCat("--model is required\n", kHelp), 2);
  // SIGINT and SIGTERM are taken by one thread, which stops the server. They are blocked before
  // any other thread starts (the engine's, the HTTP pool, ATen's), as each inherits the mask; a
  // client gone mid-write (SIGPIPE) must not end the process.
  ::signal(SIGPIPE, SIG_IGN);
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  auto tok = tokenizer::Tokenizer::Load(tokenizer_path.empty() ? model_path : tokenizer_path);
  if (!tok.ok()) return Fail("serve", std::string(tok.status().message()));
  auto model = flags.Load(model_path, dtype);
  if (!model.ok()) return Fail("serve", std::string(model.status().message()));
  auto engine = serve::Engine::Create(std::move(*model), adapters, options);
  if (!engine.ok()) return Fail("serve", std::string(engine.status().message()));
  const std::vector<std::string> names = (*engine)->model_names();
  const int64_t context = (*engine)->max_context();
  Server server(std::move(*engine), std::move(*tok));


  httplib::Server http;
  const size_t n_threads = static_cast<size_t>(threads > 0 ? threads : 2 * options.max_batch + 8);
  http.new_task_queue = [n_threads] { return new httplib::ThreadPool(n_threads); };
  http.set_payload_max_length(kMaxBodyBytes);
  server.Install(&http);
  int bound = port;
  if (port == 0) {
    bound = http.bind_to_any_port(host);
    if (bound < 0) return Fail("serve", absl::StrCat("cannot bind to ", host));
  } else if (!http.bind_to_port(host, port)) {
    return Fail("serve", absl::StrCat("cannot bind to ", host, ":", port, " (in use?)"));
  }
  std::fprintf(stderr, "llmtrain serve: listening on http://%s:%d (models: %s; batch ≤ %lld, context ≤ %lld)\n",
               host.c_str(), bound, absl::StrJoin(names, ", ").c_str(), static_cast<long long>(options.max_batch),
               static_cast<long long>(context));
  std::fflush(stderr);
  std::atomic<bool> signalled{false}, listen_returned{false};
  std::thread signal_thread([&] {
    int sig = 0;
    sigwait(&stop_signals, &sig);
    if (listen_returned) return;  // the wake-up below, not a user's signal
    signalled = true;
    std::fprintf(stderr, "llmtrain serve: %s, stopping\n", sig == SIGINT ? "SIGINT" : "SIGTERM");
    server.Shutdown();  // the HTTP threads waiting on requests return first, then the pool stops
    // httplib's stop() does nothing before listen has started: a signal that came during the
    // start-up is repeated until listen returns.
    while (!listen_returned) {
      http.stop();
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  });
  const bool served = http.listen_after_bind();
  listen_returned = true;
  // Stopped otherwise than by a signal: wake the signal thread (SIGTERM is blocked everywhere, so
  // it is taken by sigwait) so that it can end.
  if (!signalled) kill(getpid(), SIGTERM);
  signal_thread.join();
  server.Shutdown();
  return served || signalled ? 0 : Fail("serve", "the server stopped with an error");
}

}  // namespace llmtrain::cli
