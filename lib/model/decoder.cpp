// The shared decoder. Forward reads top to bottom like transformers' eager path: embed, then
// per layer norm → attention → (post-norm) → residual → norm → MLP → (post-norm) → residual,
// then the final norm and the head. Comments cite the transformers class whose math each step
// reproduces; parity tests (tests/model/) compare against it at test time.
#include "llmtrain/model/decoder.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <ATen/record_function.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>
#ifdef __GLIBC__
#include <malloc.h>
#endif
#include <array>
#include <cmath>
#include <limits>
#include <variant>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "llmtrain/core/atomic_file.h"
#include "llmtrain/core/status.h"
#include "llmtrain/io/gguf.h"
#include "llmtrain/io/safetensors.h"
#include "llmtrain/io/tensors.h"
#include "llmtrain/quant/bnb_format.h"
#include "llmtrain/quant/quantized_linear.h"
#include "nlohmann/json.hpp"

namespace llmtrain::model {

struct Decoder::Layer {
  at::Tensor input_norm, post_attn_norm, pre_ffw_norm, post_ffw_norm;  // (C)
  at::Tensor q_bias, k_bias, v_bias;                                    // (H·D), (K·D)
  at::Tensor q_norm, k_norm;                                            // (D)
  // The projections in kLinearRoles order: q, k, v, o (H·D, C) … (C, H·D), gate, up (I, C),
  // down (C, I). Dense, 4-bit, or wrapped by an adapter.
  std::array<std::shared_ptr<Linear>, 7> proj;
  const Linear& q() const { return *proj[0]; }
  const Linear& k() const { return *proj[1]; }
  const Linear& v() const { return *proj[2]; }
  const Linear& o() const { return *proj[3]; }
  const Linear& gate() const { return *proj[4]; }
  const Linear& up() const { return *proj[5]; }
  const Linear& down() const { return *proj[6]; }
};

Decoder::Decoder() = default;
Decoder::~Decoder() = default;

namespace {

constexpr Role kLinearRoles[7] = {Role::kQ, Role::kK, Role::kV, Role::kO, Role::kGate, Role::kUp, Role::kDown};

int LinearSlot(Role role) {
  for (int i = 0; i < 7; ++i) {
    if (kLinearRoles[i] == role) return i;
  }
  return -1;
}

bool IsNormRole(Role role) {
  return role == Role::kInputNorm || role == Role::kPostAttnNorm || role == Role::kPreFfwNorm ||
         role == Role::kPostFfwNorm || role == Role::kFinalNorm || role == Role::kQNorm ||
         role == Role::kKNorm;
}

// The shape the family expects for `role` under `config` (row-major, PyTorch order).
std::vector<int64_t> ExpectedShape(Role role, const io::TextConfig& c) {
  const int64_t q_dim = c.num_attention_heads * c.head_dim;
  const int64_t kv_dim = c.num_key_value_heads * c.head_dim;
  switch (role) {
    case Role::kEmbed: case Role::kLmHead: return {c.vocab_size, c.hidden_size};
    case Role::kFinalNorm: case Role::kInputNorm: case Role::kPostAttnNorm:
    case Role::kPreFfwNorm: case Role::kPostFfwNorm: return {c.hidden_size};
    case Role::kQ: return {q_dim, c.hidden_size};
    case Role::kK: case Role::kV: return {kv_dim, c.hidden_size};
    case Role::kO: return {c.hidden_size, q_dim};
    case Role::kQBias: return {q_dim};
    case Role::kKBias: case Role::kVBias: return {kv_dim};
    case Role::kQNorm: case Role::kKNorm: return {c.head_dim};
    case Role::kGate: case Role::kUp: return {c.intermediate_size, c.hidden_size};
    case Role::kDown: return {c.hidden_size, c.intermediate_size};
  }
  return {};
}

std::string ShapeString(at::IntArrayRef shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) absl::StrAppend(&s, i ? ", " : "", shape[i]);
  return s + "]";
}

// rotate_half([x1, x2]) = [−x2, x1] over the last dim (transformers rotate_half).
at::Tensor RotateHalf(const at::Tensor& x) {
  const int64_t half = x.size(-1) / 2;
  return at::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
}

}  // namespace

absl::StatusOr<std::unique_ptr<Decoder>> Decoder::Load(absl::string_view path_view,
                                                       const DecoderOptions& options) {
  const std::string path(path_view);
  std::unique_ptr<Decoder> model(new Decoder());
  model->options_ = options;
  // Tensors are materialized one at a time when the name table asks for them (GGUF: dequantized
  // then, straight into the model dtype), so peak memory stays near the final weights.
  TensorSource source;
  std::unique_ptr<io::GgufFile> gguf;
  std::unique_ptr<io::Checkpoint> checkpoint;
  const bool from_gguf = absl::EndsWith(path, ".gguf");
  try {
    if (from_gguf) {
      LLMTRAIN_ASSIGN_OR_RETURN(gguf, io::GgufFile::Open(path));
      LLMTRAIN_ASSIGN_OR_RETURN(model->config_, io::HfConfigFromGguf(*gguf));
      for (const io::GgufTensorInfo& t : gguf->tensors()) source.shapes[t.name] = t.shape;
      // Chat models end a turn with a token of their own; generation must stop there too.
      if (const io::GgufValue* tokens = gguf->FindMetadata("tokenizer.ggml.tokens")) {
        for (size_t id = 0; id < tokens->strings.size(); ++id) {
          const std::string& piece = tokens->strings[id];
          if (piece == "<end_of_turn>" || piece == "<|im_end|>" || piece == "<|endoftext|>") {
            model->eos_token_ids_.push_back(static_cast<int64_t>(id));
          }
        }
      }
      source.loads_owned = true;
      source.load = [&gguf](const std::string& name, c10::ScalarType dtype) {
        return io::LoadGgufTensor(*gguf, *gguf->FindTensor(name), dtype);
      };
    } else {
      if (!IsDirectory(path)) {
        return absl::InvalidArgumentError(absl::StrCat(
            path, ": expected a model folder (config.json + safetensors) or a .gguf file"));
      }
      LLMTRAIN_ASSIGN_OR_RETURN(model->config_, io::LoadHfConfig(path + "/config.json"));
      LLMTRAIN_ASSIGN_OR_RETURN(checkpoint, io::Checkpoint::Open(path));
      for (const std::string& name : checkpoint->Names()) {
        LLMTRAIN_ASSIGN_OR_RETURN(auto found, checkpoint->Find(name));
        source.shapes[name] = found.second->shape;
      }
      source.load = [&checkpoint](const std::string& name, c10::ScalarType) {
        return io::LoadTensor(*checkpoint, name);  // a view of the mapping, in the stored dtype
      };
      // generation_config.json may list more end tokens than config.json (Gemma: <end_of_turn>).
      if (auto text = ReadFileToString(path + "/generation_config.json"); text.ok()) {
        const nlohmann::json generation = nlohmann::json::parse(*text, nullptr, /*allow_exceptions=*/false);
        if (generation.is_object() && generation.contains("eos_token_id")) {
          const nlohmann::json& eos = generation["eos_token_id"];
          if (eos.is_number_integer()) model->eos_token_ids_.push_back(eos.get<int64_t>());
          if (eos.is_array()) {
            for (const auto& e : eos) {
              if (e.is_number_integer()) model->eos_token_ids_.push_back(e.get<int64_t>());
            }
          }
        }
      }
    }
    if (model->config_.vision.has_value()) {
      return absl::UnimplementedError(absl::StrCat(
          path, ": model_type gemma3 (image+text) is not supported by the text decoder yet"));
    }
    auto spec = BuildFamilySpec(model->config_.text);
    if (!spec.ok()) return Annotate(spec.status(), path);
    model->spec_ = *std::move(spec);
    if (model->spec_.refuses_fp16 && options.dtype == Dtype::kF16) {
      return absl::InvalidArgumentError(absl::StrCat(
          path, ": dtype f16: ", model->spec_.model_type,
          " overflows float16 in its residual stream (transformers produces inf/NaN); use bf16 or f32"));
    }
    LLMTRAIN_RETURN_IF_ERROR(model->BuildFromTensors(source, from_gguf, path));
#ifdef __GLIBC__
    // Loading frees many dequantized temporaries of a few MiB each. glibc raises its mmap
    // threshold after the first such free, so the later ones come from the heap and stay
    // resident after being freed (434 MiB for the 270M GGUF quantized to NF4). Hand them back.
    malloc_trim(0);
#endif
    std::vector<int64_t>& eos = model->eos_token_ids_;
    eos.insert(eos.end(), model->config_.text.eos_token_ids.begin(), model->config_.text.eos_token_ids.end());
    std::sort(eos.begin(), eos.end());
    eos.erase(std::unique(eos.begin(), eos.end()), eos.end());
  } catch (...) {
    return StatusFromCurrentException(absl::StrCat("loading ", path));
  }
  return model;
}

absl::Status Decoder::BuildFromTensors(const TensorSource& source, bool from_gguf,
                                       absl::string_view where) {
  const io::TextConfig& c = config_.text;
  const c10::ScalarType dtype = io::ToScalarType(options_.dtype);
  std::map<std::string, bool> used;
  for (const auto& [name, unused] : source.shapes) used[name] = false;
  layers_.assign(c.num_hidden_layers, Layer());

  std::map<std::string, std::string> hf_names;  // file name → HF name (GGUF loads)
  const auto hf_name_of = [&](const std::string& name) {
    const auto it = hf_names.find(name);
    return it == hf_names.end() ? name : it->second;
  };
  if (from_gguf) {
    for (const WeightName& row : spec_.weights) {
      for (int64_t i = 0; i < (absl::StrContains(row.gguf, "{i}") ? c.num_hidden_layers : 1); ++i) {
        hf_names[absl::StrReplaceAll(row.gguf, {{"{i}", absl::StrCat(i)}})] =
            absl::StrReplaceAll(row.hf, {{"{i}", absl::StrCat(i)}});
      }
    }
  }
  auto take = [&](const std::string& name, Role role) -> absl::StatusOr<at::Tensor> {
    const auto it = source.shapes.find(name);
    if (it == source.shapes.end()) {
      return absl::NotFoundError(absl::StrCat(where, ": missing tensor \"", name, "\""));
    }
    const std::vector<int64_t> want = ExpectedShape(role, c);
    if (it->second != want) {
      return absl::InvalidArgumentError(absl::StrCat(
          where, ": tensor \"", name, "\" has shape ", ShapeString(it->second),
          ", but the config needs ", ShapeString(want)));
    }
    used[name] = true;
    // Each weight ends as an owned tensor in the model dtype. Views of a mapped file are copied
    // (they stay read-only); a fresh tensor is kept as it is, so loading never holds two copies
    // of a weight and peak memory stays near the final weights.
    const bool shift = from_gguf && IsNormRole(role) && spec_.gguf_norm_offset != 0.0;
    LLMTRAIN_ASSIGN_OR_RETURN(at::Tensor value, source.load(name, shift ? at::kFloat : dtype));
    bool owned = source.loads_owned;
    if (shift) {
      value = value.to(at::kFloat) - spec_.gguf_norm_offset;  // undo llama.cpp's 1 + w
      owned = true;
    }
    if (value.scalar_type() != dtype) {
      value = value.to(dtype);
      owned = true;
    }
    if (!owned) value = value.clone();
    value = value.contiguous();
    value.set_requires_grad(options_.requires_grad);
    // Listed by HF name whatever the file called it (GGUF "blk.0.attn_q.weight" and HF
    // "model.layers.0.self_attn.q_proj.weight" share a row of the name table).
    params_.emplace_back(hf_name_of(name), value);
    return value;
  };

  // A projection's weight: a bitsandbytes 4-bit one as saved by transformers (HF folders), else a
  // dense one, quantized right away when options ask for 4 bits (the dense copy is dropped).
  std::vector<std::array<std::variant<at::Tensor, quant::Quantized4>, 7>> pending(c.num_hidden_layers);
  const auto has = [&](const std::string& key) { return source.shapes.count(key) != 0; };
  auto take_linear = [&](const std::string& name, Role role)
      -> absl::StatusOr<std::variant<at::Tensor, quant::Quantized4>> {
    if (!from_gguf && quant::IsBnbQuantized(name, has)) {
      auto get = [&](const std::string& key) -> absl::StatusOr<at::Tensor> {
        if (!has(key)) return absl::NotFoundError(absl::StrCat(where, ": missing tensor \"", key, "\""));
        used[key] = true;
        LLMTRAIN_ASSIGN_OR_RETURN(at::Tensor t, source.load(key, at::kByte));
        return source.loads_owned ? t : t.clone();
      };
      auto q = quant::FromBnbTensors(name, get);
      if (!q.ok()) return Annotate(q.status(), where);
      const std::vector<int64_t> want = ExpectedShape(role, c);
      if (q->state.shape != want) {
        return absl::InvalidArgumentError(absl::StrCat(
            where, ": 4-bit tensor \"", name, "\" has shape ", ShapeString(q->state.shape),
            ", but the config needs ", ShapeString(want)));
      }
      return *std::move(q);
    }
    if (options_.quantize_4bit.has_value()) {
      LLMTRAIN_ASSIGN_OR_RETURN(at::Tensor dense, take(name, role));
      params_.pop_back();  // take() listed it; the 4-bit weight replaces it
      auto q = quant::Quantize4bit(dense.detach(), *options_.quantize_4bit);
      if (!q.ok()) return Annotate(q.status(), absl::StrCat(where, ": ", name));
      return *std::move(q);
    }
    LLMTRAIN_ASSIGN_OR_RETURN(at::Tensor dense, take(name, role));
    return dense;
  };

  for (const WeightName& row : spec_.weights) {
    const std::string& pattern = from_gguf ? row.gguf : row.hf;
    if (absl::StrContains(pattern, "{i}")) {
      for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
        const std::string name = absl::StrReplaceAll(pattern, {{"{i}", absl::StrCat(i)}});
        if (const int slot = LinearSlot(row.role); slot >= 0) {
          LLMTRAIN_ASSIGN_OR_RETURN(pending[i][slot], take_linear(name, row.role));
          continue;
        }
        LLMTRAIN_ASSIGN_OR_RETURN(at::Tensor t, take(name, row.role));
        Layer& l = layers_[i];
        switch (row.role) {
          case Role::kInputNorm: l.input_norm = t; break;
          case Role::kPostAttnNorm: l.post_attn_norm = t; break;
          case Role::kPreFfwNorm: l.pre_ffw_norm = t; break;
          case Role::kPostFfwNorm: l.post_ffw_norm = t; break;
          case Role::kQBias: l.q_bias = t; break;
          case Role::kKBias: l.k_bias = t; break;
          case Role::kVBias: l.v_bias = t; break;
          case Role::kQNorm: l.q_norm = t; break;
          case Role::kKNorm: l.k_norm = t; break;
          default: break;
        }
      }
      continue;
    }
    if (row.role == Role::kLmHead && spec_.tied_embeddings) {
      // Tied: the head is the embedding. Some checkpoints store a copy; it must be that copy.
      if (source.shapes.count(pattern) != 0) {
        used[pattern] = true;
        const std::string embed_name = from_gguf ? "token_embd.weight" : "model.embed_tokens.weight";
        auto head = source.load(pattern, at::kFloat);
        auto embed = source.shapes.count(embed_name) ? source.load(embed_name, at::kFloat) : head;
        if (!head.ok() || !embed.ok() || !at::equal(*head, *embed) || source.shapes.count(embed_name) == 0) {
          return absl::InvalidArgumentError(absl::StrCat(
              where, ": tensor \"", pattern, "\" differs from the embedding, but the config ties them "
              "(tie_word_embeddings = true)"));
        }
      }
      continue;
    }
    LLMTRAIN_ASSIGN_OR_RETURN(at::Tensor t, take(pattern, row.role));
    if (row.role == Role::kEmbed) embed_ = t;
    if (row.role == Role::kFinalNorm) final_norm_ = t;
    if (row.role == Role::kLmHead) lm_head_ = t;
  }
  if (spec_.tied_embeddings) lm_head_ = embed_;
  // The projections, with q/k/v biases inside their layer (PEFT's LoRA wraps the biased Linear).
  linear_names_.clear();
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    Layer& l = layers_[i];
    for (int slot = 0; slot < 7; ++slot) {
      const at::Tensor bias = slot == 0 ? l.q_bias : slot == 1 ? l.k_bias : slot == 2 ? l.v_bias : at::Tensor();
      auto& w = pending[i][slot];
      if (auto* dense = std::get_if<at::Tensor>(&w)) {
        l.proj[slot] = std::make_shared<DenseLinear>(*dense, bias);
      } else {
        l.proj[slot] = std::make_shared<quant::QuantizedLinear>(std::get<quant::Quantized4>(std::move(w)), bias);
      }
      w = at::Tensor();
    }
    for (const WeightName& row : spec_.weights) {
      const int slot = LinearSlot(row.role);
      if (slot < 0) continue;
      std::string module = absl::StrReplaceAll(row.hf, {{"{i}", absl::StrCat(i)}});
      if (absl::EndsWith(module, ".weight")) module.resize(module.size() - 7);
      linear_names_.emplace_back(module, std::make_pair(i, slot));
    }
  }
  for (const auto& [name, was_used] : used) {
    if (!was_used) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": tensor \"", name, "\" is not a weight of ",
                                                     spec_.model_type, " (no row of its name table maps it)"));
    }
  }
  // RoPE inverse frequencies, one table per distinct (theta, factor) and an index per layer,
  // float32 as transformers computes them: 1 / (theta ^ (arange(0, D, 2) / D)) / factor.
  inv_freq_.clear();
  layer_rope_.clear();
  std::vector<LayerRope> distinct;
  const at::Tensor exponents =
      at::arange(0, c.head_dim, 2, at::kLong).to(at::kFloat) / static_cast<double>(c.head_dim);
  for (const LayerRope& rope : spec_.rope) {
    const auto same = std::find_if(distinct.begin(), distinct.end(), [&](const LayerRope& r) {
      return r.theta == rope.theta && r.linear_factor == rope.linear_factor;
    });
    if (same != distinct.end()) {
      layer_rope_.push_back(same - distinct.begin());
      continue;
    }
    at::Tensor inv = 1.0 / at::pow(rope.theta, exponents);
    if (rope.linear_factor != 1.0) inv = inv / rope.linear_factor;
    layer_rope_.push_back(static_cast<int64_t>(distinct.size()));
    distinct.push_back(rope);
    inv_freq_.push_back(inv);
  }
  return absl::OkStatus();
}

at::Tensor Decoder::Norm(const at::Tensor& x, const at::Tensor& w) const {
  RECORD_FUNCTION("llmtrain::rms_norm", std::vector<c10::IValue>());
  const double eps = config_.text.rms_norm_eps;
  const at::Tensor xf = x.to(at::kFloat);
  const at::Tensor normed = xf * at::rsqrt(xf.pow(2).mean(-1, /*keepdim=*/true) + eps);
  if (spec_.norm == NormStyle::kGemma) {
    // Gemma3RMSNorm: (1 + w) in float32, one cast at the end.
    return (normed * (1.0 + w.to(at::kFloat))).to(x.scalar_type());
  }
  // Qwen2RMSNorm: cast to the input dtype, then times w.
  return w * normed.to(x.scalar_type());
}

at::Tensor Decoder::Attention(const Layer& l, int64_t index, const at::Tensor& x,
                              const at::Tensor& cos, const at::Tensor& sin, const at::Tensor& mask,
                              KvCache* cache) const {
  const io::TextConfig& c = config_.text;
  const int64_t B = x.size(0), T = x.size(1), D = c.head_dim;
  const int64_t H = c.num_attention_heads, K = c.num_key_value_heads;
  // (B, T, C) → (B, H|K, T, D)
  at::Tensor q = l.q().Forward(x).view({B, T, H, D}).transpose(1, 2);
  at::Tensor k = l.k().Forward(x).view({B, T, K, D}).transpose(1, 2);
  at::Tensor v = l.v().Forward(x).view({B, T, K, D}).transpose(1, 2);
  if (spec_.qk_norm) {  // per head, over D, before RoPE
    q = Norm(q, l.q_norm);
    k = Norm(k, l.k_norm);
  }
  q = q * cos + RotateHalf(q) * sin;  // cos, sin: (B, 1, T, D)
  k = k * cos + RotateHalf(k) * sin;
  if (cache != nullptr) {  // keys and values of the tokens so far: (B, K, kept + T, D)
    if (cache->k[index].defined()) {
      k = at::cat({cache->k[index], k}, 2);
      v = at::cat({cache->v[index], v}, 2);
    }
    // A sliding layer keeps only the last W − 1 keys: no later query can see further back (what
    // transformers' sliding-window cache keeps). Full layers keep everything.
    const int64_t keep = spec_.sliding[index] && spec_.window > 0 ? spec_.window - 1 : k.size(2);
    const int64_t drop = std::max<int64_t>(0, k.size(2) - keep);
    cache->k[index] = k.slice(2, drop);
    cache->v[index] = v.slice(2, drop);
  }
  const int64_t S = k.size(2);  // keys
  at::Tensor o;
  {  // scores, softmax and the weighted sum: the projections are timed on their own
    RECORD_FUNCTION("llmtrain::attention_core", std::vector<c10::IValue>());
    if (H != K) {  // GQA: query head h reads kv head h / (H / K) (transformers repeat_kv)
      k = k.unsqueeze(2).expand({B, K, H / K, S, D}).reshape({B, H, S, D});
      v = v.unsqueeze(2).expand({B, K, H / K, S, D}).reshape({B, H, S, D});
    }
    at::Tensor s = at::matmul(q, k.transpose(2, 3)) * spec_.attn_scale;  // (B, H, T, T)
    if (spec_.attn_softcap) {  // Gemma 2: cap · tanh(s / cap), before the mask
      s = at::tanh(s / *spec_.attn_softcap) * *spec_.attn_softcap;
    }
    s = s + mask;
    const at::Tensor p = at::softmax(s, -1, at::kFloat).to(q.scalar_type());
    o = at::matmul(p, v).transpose(1, 2).reshape({B, T, H * D});
  }
  return l.o().Forward(o);
}

absl::Status Decoder::CheckInputs(const at::Tensor& input_ids, const at::Tensor& mask) const {
  if (!input_ids.defined() || input_ids.dim() != 2) {
    return absl::InvalidArgumentError("input_ids: expected an int64 tensor of shape (B, T)");
  }
  if (input_ids.numel() > 0) {
    const int64_t max_id = input_ids.max().item<int64_t>();
    const int64_t min_id = input_ids.min().item<int64_t>();
    if (max_id >= config_.text.vocab_size || min_id < 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "input_ids: token id ", max_id >= config_.text.vocab_size ? max_id : min_id,
          " is outside the vocabulary [0, ", config_.text.vocab_size, ")"));
    }
  }
  if (mask.defined() && mask.sizes() != input_ids.sizes()) {
    return absl::InvalidArgumentError(absl::StrCat("attention_mask: shape ", ShapeString(mask.sizes()),
                                                   " differs from input_ids ", ShapeString(input_ids.sizes())));
  }
  return absl::OkStatus();
}

at::Tensor Decoder::Forward(const at::Tensor& input_ids, const at::Tensor& attention_mask,
                            const at::Tensor& position_ids) const {
  return ForwardImpl(input_ids, attention_mask, position_ids, nullptr);
}

at::Tensor Decoder::Forward(const at::Tensor& input_ids, const at::Tensor& attention_mask,
                            KvCache* cache) const {
  TORCH_CHECK(cache != nullptr, "Forward: cache is null");
  return ForwardImpl(input_ids, attention_mask, {}, cache);
}

at::Tensor Decoder::ForwardImpl(const at::Tensor& input_ids, const at::Tensor& attention_mask,
                                const at::Tensor& position_ids, KvCache* cache) const {
  at::Tensor logits = at::linear(HiddenImpl(input_ids, attention_mask, position_ids, cache), lm_head_);
  if (spec_.final_softcap) logits = at::tanh(logits / *spec_.final_softcap) * *spec_.final_softcap;
  return logits;  // (B, T, V)
}

at::Tensor Decoder::Hidden(const at::Tensor& input_ids, const at::Tensor& attention_mask,
                           const at::Tensor& position_ids) const {
  return HiddenImpl(input_ids, attention_mask, position_ids, nullptr);
}

std::optional<std::string> Decoder::FirstNonFiniteModule(const at::Tensor& input_ids,
                                                         const at::Tensor& attention_mask,
                                                         const at::Tensor& position_ids) const {
  at::NoGradGuard no_grad;
  std::optional<std::string> first;
  const Probe probe = [&first](const std::string& module, const at::Tensor& output) {
    if (!first && !at::isfinite(output).all().item<bool>()) first = module;
  };
  HiddenImpl(input_ids, attention_mask, position_ids, nullptr, &probe);
  return first;
}

at::Tensor Decoder::HiddenImpl(const at::Tensor& input_ids, const at::Tensor& attention_mask,
                               const at::Tensor& position_ids, KvCache* cache, const Probe* probe) const {
  const absl::Status ok = CheckInputs(input_ids, attention_mask);
  TORCH_CHECK(ok.ok(), std::string(ok.message()));
  const io::TextConfig& c = config_.text;
  const c10::ScalarType dtype = io::ToScalarType(options_.dtype);
  const int64_t B = input_ids.size(0), T = input_ids.size(1);
  const at::Tensor new_mask = attention_mask.defined() ? attention_mask.to(at::kLong)
                                                       : at::ones({B, T}, at::kLong);
  const int64_t past = cache != nullptr ? cache->length() : 0;
  TORCH_CHECK(past == 0 || cache->mask.size(0) == B, "Forward: the cache holds ", cache->mask.size(0),
              " rows, the input ", B);
  // Positions: cumsum(mask) − 1, clamped at 0 (what generate() uses under left padding),
  // continuing after the tokens already in the cache.
  at::Tensor positions = position_ids;
  if (!positions.defined()) {
    positions = (new_mask.ne(0).to(at::kLong).cumsum(-1) - 1).clamp_min(0);
    if (past > 0) positions = positions + cache->next_position.unsqueeze(1);
  }
  // The mask over every key: cached tokens first, then the new ones. (B, S)
  const at::Tensor mask = past > 0 ? at::cat({cache->mask, new_mask}, 1) : new_mask;
  const int64_t S = past + T;
  if (cache != nullptr) {
    if (cache->k.empty()) {
      cache->k.resize(layers_.size());
      cache->v.resize(layers_.size());
    }
    cache->mask = mask;
    cache->next_position = mask.sum(-1);  // real tokens so far
  }

  at::Tensor h = at::embedding(embed_, input_ids);  // (B, T, C)
  if (spec_.scale_embeddings) {
    // sqrt(C) as a tensor in the weight dtype: bf16 rounds sqrt(640) = 25.298 to 25.25.
    h = h * at::scalar_tensor(std::sqrt(static_cast<double>(c.hidden_size)), at::TensorOptions().dtype(dtype));
  }
  if (probe != nullptr) (*probe)("model.embed_tokens", h);

  // Masks: key k is visible from query q when k ≤ q, the key is not padding, and on sliding
  // layers q − W < k. Additive: 0 or the dtype's lowest value (transformers masking_utils).
  // Query i is token past + i; keys are tokens 0 … S − 1 (cache indices, not positions).
  const at::Tensor q_idx = at::arange(past, S, at::kLong);
  const at::Tensor k_idx = at::arange(S, at::kLong);
  const at::Tensor causal = q_idx.unsqueeze(1) >= k_idx.unsqueeze(0);       // (T, S) [q, k]
  const at::Tensor keys = mask.to(at::kBool).view({B, 1, 1, S});
  at::Tensor full_allowed = causal.view({1, 1, T, S}) & keys;              // (B, 1, T, S)
  // Packed rows: mask values 1, 2, … name segments, and a token sees only its own segment. A 0/1
  // mask is one segment, so this changes nothing there.
  if (past == 0 && mask.numel() > 0 && mask.max().item<int64_t>() > 1) {
    full_allowed = full_allowed & (mask.view({B, 1, T, 1}) == mask.view({B, 1, 1, S}));
  }
  const double lowest = dtype == at::kFloat ? std::numeric_limits<float>::lowest()
                                            : (dtype == at::kBFloat16 ? -3.3895313892515355e38 : -65504.0);
  const auto additive = [&](const at::Tensor& allowed) {
    return at::where(allowed, at::scalar_tensor(0.0, at::TensorOptions().dtype(dtype)),
                     at::scalar_tensor(lowest, at::TensorOptions().dtype(dtype)));
  };
  const at::Tensor full_mask = additive(full_allowed);
  at::Tensor sliding_mask;
  if (spec_.window > 0) {
    const at::Tensor in_window = (q_idx.unsqueeze(1) - k_idx.unsqueeze(0)) < spec_.window;
    // With a cache, sliding layers hold only the last W − 1 earlier keys (see Attention): their
    // mask covers cache indices past − kept … S − 1.
    const int64_t kept = cache != nullptr ? std::min<int64_t>(past, spec_.window - 1) : past;
    sliding_mask = additive((full_allowed & in_window.view({1, 1, T, S})).slice(3, past - kept));
  }

  // RoPE tables, once per distinct layer RoPE: angle in float32, cos/sin cast to the model dtype.
  const at::Tensor pos_f = positions.to(at::kFloat);  // (B, T)
  std::vector<at::Tensor> cos_tables, sin_tables;
  for (const at::Tensor& inv_freq : inv_freq_) {
    const at::Tensor freqs = pos_f.unsqueeze(-1) * inv_freq.view({1, 1, -1});  // (B, T, D/2)
    const at::Tensor emb = at::cat({freqs, freqs}, -1);
    cos_tables.push_back(emb.cos().to(dtype).unsqueeze(1));  // (B, 1, T, D)
    sin_tables.push_back(emb.sin().to(dtype).unsqueeze(1));
  }
  for (size_t i = 0; i < layers_.size(); ++i) {
    const at::Tensor& cos = cos_tables[layer_rope_[i]];
    const at::Tensor& sin = sin_tables[layer_rope_[i]];
    const at::Tensor& layer_mask = spec_.sliding[i] && sliding_mask.defined() ? sliding_mask : full_mask;
    if (options_.activation_checkpointing && cache == nullptr && at::GradMode::is_enabled()) {
      h = CheckpointedLayer(static_cast<int64_t>(i), h, cos, sin, layer_mask);
    } else {
      h = LayerForward(static_cast<int64_t>(i), h, cos, sin, layer_mask, cache, probe);
    }
  }
  at::Tensor out = Norm(h, final_norm_);
  if (probe != nullptr) (*probe)("model.norm", out);
  return out;
}

at::Tensor Decoder::LayerForward(int64_t i, const at::Tensor& x, const at::Tensor& cos,
                                 const at::Tensor& sin, const at::Tensor& mask, KvCache* cache,
                                 const Probe* probe) const {
  const Layer& l = layers_[i];
  at::Tensor h = x;
  at::Tensor a = Attention(l, i, Norm(h, l.input_norm), cos, sin, mask, cache);
  if (probe != nullptr) (*probe)(absl::StrCat("model.layers.", i, ".self_attn"), a);
  if (spec_.sandwich_norms) a = Norm(a, l.post_attn_norm);
  h = h + a;
  at::Tensor m = Norm(h, spec_.sandwich_norms ? l.pre_ffw_norm : l.post_attn_norm);
  const at::Tensor gate = l.gate().Forward(m);
  const at::Tensor act = spec_.activation == Activation::kGeluTanh ? at::gelu(gate, "tanh")
                                                                    : at::silu(gate);
  m = l.down().Forward(act * l.up().Forward(m));
  if (probe != nullptr) (*probe)(absl::StrCat("model.layers.", i, ".mlp"), m);
  if (spec_.sandwich_norms) m = Norm(m, l.post_ffw_norm);
  return h + m;
}

namespace {

// Activation checkpointing of one decoder layer: forward keeps only the layer's input; backward
// runs the layer again with autograd on and differentiates that (Chen et al. 2016, "Training deep
// nets with sublinear memory cost"). The layer's parameters are inputs of the function, so their
// gradients flow to the model's tensors as without checkpointing.
class CheckpointFunction : public torch::autograd::Function<CheckpointFunction> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                            at::TensorList params, const at::Tensor& cos, const at::Tensor& sin,
                            const at::Tensor& mask, int64_t decoder, int64_t index) {
    ctx->save_for_backward({x, cos, sin, mask});
    ctx->saved_data["decoder"] = decoder;
    ctx->saved_data["index"] = index;
    ctx->saved_data["n_params"] = static_cast<int64_t>(params.size());
    at::NoGradGuard no_grad;
    return reinterpret_cast<const Decoder*>(decoder)->RunLayer(index, x, cos, sin, mask);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto* decoder = reinterpret_cast<const Decoder*>(ctx->saved_data["decoder"].toInt());
    const int64_t index = ctx->saved_data["index"].toInt();
    const int64_t n_params = ctx->saved_data["n_params"].toInt();
    const at::Tensor x = saved[0].detach().requires_grad_(true);
    at::Tensor out;
    {
      at::AutoGradMode enable(true);
      out = decoder->RunLayer(index, x, saved[1], saved[2], saved[3]);
    }
    torch::autograd::variable_list wrt = {x};
    for (const at::Tensor& p : decoder->LayerParameters(index)) wrt.push_back(p);
    TORCH_CHECK(static_cast<int64_t>(wrt.size()) == n_params + 1, "checkpoint: parameter count changed");
    torch::autograd::variable_list g = torch::autograd::grad({out}, wrt, {grads[0]},
                                                            /*retain_graph=*/false,
                                                            /*create_graph=*/false, /*allow_unused=*/true);
    // One gradient per forward input: x, each parameter, then cos, sin, mask, decoder, index.
    for (int i = 0; i < 5; ++i) g.emplace_back();
    return g;
  }
};

}  // namespace

std::vector<at::Tensor> Decoder::LayerParameters(int64_t i) const {
  const Layer& l = layers_[i];
  std::vector<at::Tensor> out;
  for (const at::Tensor* t : {&l.input_norm, &l.post_attn_norm, &l.pre_ffw_norm, &l.post_ffw_norm,
                              &l.q_norm, &l.k_norm}) {
    if (t->defined() && t->requires_grad()) out.push_back(*t);
  }
  for (const auto& p : l.proj) p->AppendTrainable(&out);
  // A bias inside a projection was listed by it; drop repeats (order kept).
  std::vector<at::Tensor> unique;
  for (const at::Tensor& t : out) {
    if (std::none_of(unique.begin(), unique.end(), [&](const at::Tensor& u) { return u.is_same(t); })) {
      unique.push_back(t);
    }
  }
  return unique;
}

at::Tensor Decoder::RunLayer(int64_t i, const at::Tensor& x, const at::Tensor& cos,
                             const at::Tensor& sin, const at::Tensor& mask) const {
  return LayerForward(i, x, cos, sin, mask, nullptr);
}

std::vector<std::string> Decoder::LinearNames() const {
  std::vector<std::string> names;
  names.reserve(linear_names_.size());
  for (const auto& entry : linear_names_) names.push_back(entry.first);
  return names;
}

std::shared_ptr<Linear> Decoder::linear(absl::string_view name) const {
  for (const auto& [module, where] : linear_names_) {
    if (module == name) return layers_[where.first].proj[where.second];
  }
  return nullptr;
}

int64_t Decoder::FindParameter(absl::string_view name) const {
  for (size_t i = 0; i < params_.size(); ++i) {
    if (params_[i].first == name) return static_cast<int64_t>(i);
  }
  return -1;
}

absl::Status Decoder::ReplaceLinear(absl::string_view name, std::shared_ptr<Linear> layer) {
  for (const auto& [module, where] : linear_names_) {
    if (module != name) continue;
    std::shared_ptr<Linear>& slot = layers_[where.first].proj[where.second];
    if (layer == nullptr || layer->in_features() != slot->in_features() ||
        layer->out_features() != slot->out_features()) {
      return absl::InvalidArgumentError(absl::StrCat(
          name, ": the new layer must map ", slot->in_features(), " → ", slot->out_features(), " features"));
    }
    // named_parameters() follows the stored weight: gone for a 4-bit layer, the new tensor for a
    // merged one, unchanged for an adapter around the same base.
    const at::Tensor old_weight = slot->stored_weight();
    slot = std::move(layer);
    const at::Tensor new_weight = slot->stored_weight();
    const std::string key = absl::StrCat(name, ".weight");
    const int64_t index = FindParameter(key);
    if (!new_weight.defined()) {
      if (index >= 0) params_.erase(params_.begin() + index);
    } else if (index >= 0) {
      params_[index].second = new_weight;
    } else {
      params_.emplace_back(key, new_weight);
    }
    return absl::OkStatus();
  }
  return absl::NotFoundError(absl::StrCat("\"", name, "\" is not a projection of this ",
                                          spec_.model_type, " model"));
}

at::Tensor Decoder::CheckpointedLayer(int64_t i, const at::Tensor& x, const at::Tensor& cos,
                                      const at::Tensor& sin, const at::Tensor& mask) const {
  const std::vector<at::Tensor> params = LayerParameters(i);
  return CheckpointFunction::apply(x, at::TensorList(params), cos, sin, mask,
                                   reinterpret_cast<int64_t>(this), i);
}


}  // namespace llmtrain::model
