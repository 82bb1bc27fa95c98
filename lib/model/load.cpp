// Loading the shared decoder (model/decoder.h) from an HF folder or a GGUF file: the family's
// name table says which tensor goes where; every expected tensor must be present with its shape,
// and every tensor in the file must be expected. Tensors are materialized one at a time as the
// table asks for them (GGUF: dequantized then, straight into the model dtype), and projections
// go through DecoderOptions::linear_factory one by one, so peak memory stays near the final
// weights.
#include <ATen/ATen.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <map>
#include <optional>
#ifdef __GLIBC__
#include <malloc.h>
#endif

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "llmtrain/core/atomic_file.h"
#include "llmtrain/core/status.h"
#include "llmtrain/io/gguf.h"
#include "llmtrain/io/safetensors.h"
#include "llmtrain/io/tensors.h"
#include "llmtrain/kernels/rope.h"
#include "model/decoder_state.h"
#include "nlohmann/json.hpp"

namespace llmtrain::model::detail {
namespace {

// Tensors of a checkpoint by name: shapes up front, values materialized on demand.
struct TensorSource {
  std::map<std::string, std::vector<int64_t>> shapes;
  /// The tensor called `name`, converted to `dtype` where the source can do it cheaply.
  std::function<absl::StatusOr<at::Tensor>(const std::string& name, c10::ScalarType dtype)> load;
  bool loads_owned = false;  ///< load() returns fresh tensors (GGUF), not views of a mapping
  /// Rows [begin, end) of a tensor (rows of its last dimension) in `dtype`, owned, reading only
  /// those rows.
  std::function<absl::StatusOr<at::Tensor>(const std::string& name, c10::ScalarType dtype, int64_t row_begin,
                                           int64_t row_end)>
      load_rows;
  /// GGUF: the tensor's blocks as stored (null for other sources).
  std::function<absl::StatusOr<StoredBlocks>(const std::string& name)> load_blocks;
};

int LinearSlot(Role role) {
  for (int i = 0; i < 7; ++i) {
    if (kLinearRoles[i] == role) return i;
  }
  return -1;
}

// The bias role that belongs to a projection role (q/k/v), if any.
std::optional<Role> BiasRoleOf(Role role) {
  switch (role) {
    case Role::kQ: return Role::kQBias;
    case Role::kK: return Role::kKBias;
    case Role::kV: return Role::kVBias;
    default: return std::nullopt;
  }
}

bool IsBiasRole(Role role) { return role == Role::kQBias || role == Role::kKBias || role == Role::kVBias; }

std::string ShapeString(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) absl::StrAppend(&s, i ? ", " : "", shape[i]);
  return s + "]";
}

std::string LayerName(const std::string& pattern, int64_t i) {
  return absl::StrReplaceAll(pattern, {{"{i}", absl::StrCat(i)}});
}

// transformers' in-memory name of an image+text checkpoint's tensor, whichever of the three
// layouts it loads the file was saved in: the Hub's (language_model.model.*,
// vision_tower.vision_model.*), 5.23's save_pretrained (vision_tower.* without vision_model.), or
// the in-memory one (model.language_model.*, model.vision_tower.*).
std::string ImageTextName(const std::string& name) {
  std::string r = absl::StartsWith(name, "model.") ? name.substr(6) : name;
  if (absl::StartsWith(r, "lm_head.")) return r;
  if (absl::StartsWith(r, "language_model.lm_head.")) return r.substr(15);
  if (absl::StartsWith(r, "language_model.model.")) r = "language_model." + r.substr(21);
  if (absl::StartsWith(r, "vision_tower.vision_model.")) r = "vision_tower." + r.substr(26);
  return "model." + r;
}

// The source's tensors by ImageTextName; two file tensors with one name are refused.
absl::Status UseImageTextNames(TensorSource* source, const std::string& where) {
  auto file_names = std::make_shared<std::map<std::string, std::string>>();  // in-memory → file
  std::map<std::string, std::vector<int64_t>> shapes;
  for (const auto& [name, shape] : source->shapes) {
    const std::string memory = ImageTextName(name);
    if (!file_names->emplace(memory, name).second) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": tensors \"", (*file_names)[memory], "\" and \"", name,
                                                     "\" are both ", memory));
    }
    shapes[memory] = shape;
  }
  source->shapes = std::move(shapes);
  source->load = [file_names, load = source->load](const std::string& name, c10::ScalarType dtype) {
    const auto it = file_names->find(name);
    return load(it == file_names->end() ? name : it->second, dtype);
  };
  source->load_rows = [file_names, load_rows = source->load_rows](const std::string& name, c10::ScalarType dtype,
                                                                 int64_t row_begin, int64_t row_end) {
    const auto it = file_names->find(name);
    return load_rows(it == file_names->end() ? name : it->second, dtype, row_begin, row_end);
  };
  return absl::OkStatus();
}

// What Gemma3ForConditionalGeneration's modules require of their config.
absl::Status CheckImageTextConfig(const io::HfConfig& config, const std::string& where) {
  const io::VisionConfig& v = *config.vision;
  const auto bad = [&](const std::string& field, const std::string& why) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": ", field, ": ", why));
  };
  if (v.vision_use_head) {
    return bad("vision_config.vision_use_head", "true, but Gemma 3 never reads the SigLIP head (google/gemma-3-* "
               "configs set it false; transformers' SiglipVisionConfig defaults to true)");
  }
  if (v.hidden_act != "gelu_pytorch_tanh" && v.hidden_act != "gelu") {
    return bad("vision_config.hidden_act", absl::StrCat("\"", v.hidden_act, "\" (gelu_pytorch_tanh and gelu are supported)"));
  }
  if (v.num_attention_heads < 1 || v.hidden_size % v.num_attention_heads != 0) {
    return bad("vision_config.num_attention_heads", absl::StrCat(v.num_attention_heads, " does not divide hidden_size ",
                                                                 v.hidden_size));
  }
  if (v.image_size % v.patch_size != 0) {
    return bad("vision_config.image_size", absl::StrCat(v.image_size, " is not a multiple of patch_size ", v.patch_size));
  }
  const int64_t grid = v.image_size / v.patch_size;
  const int64_t side = static_cast<int64_t>(std::llround(std::sqrt(static_cast<double>(config.mm_tokens_per_image))));
  if (config.mm_tokens_per_image < 1 || side * side != config.mm_tokens_per_image || grid % side != 0) {
    return bad("mm_tokens_per_image", absl::StrCat(config.mm_tokens_per_image, " must be a square whose side divides the ",
                                                   grid, "×", grid, " patch grid"));
  }
  return absl::OkStatus();
}

absl::Status BuildFromTensors(const TensorSource& source, bool from_gguf, const std::string& where,
                              DecoderState* state) {
  const io::TextConfig& c = state->config.text;
  const FamilySpec& spec = state->spec;
  const c10::ScalarType dtype = io::ToScalarType(state->options.dtype);
  std::map<std::string, bool> used;
  for (const auto& [name, unused] : source.shapes) used[name] = false;
  state->layers.assign(c.num_hidden_layers, LayerWeights());

  std::map<std::string, std::string> hf_names;  // file name → HF name (GGUF loads)
  const auto hf_name_of = [&](const std::string& name) {
    const auto it = hf_names.find(name);
    return it == hf_names.end() ? name : it->second;
  };
  if (from_gguf) {
    for (const WeightName& row : spec.weights) {
      for (int64_t i = 0; i < (absl::StrContains(row.gguf, "{i}") ? c.num_hidden_layers : 1); ++i) {
        hf_names[LayerName(row.gguf, i)] = LayerName(row.hf, i);
      }
    }
  }
  // That the source holds tensor `name` in the shape its role needs; marks it used.
  const auto take_checked = [&](const std::string& name, Role role) -> absl::Status {
    const auto it = source.shapes.find(name);
    if (it == source.shapes.end()) return absl::NotFoundError(absl::StrCat(where, ": missing tensor \"", name, "\""));
    const std::vector<int64_t> want = WeightShape(role, c);
    if (it->second != want) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": tensor \"", name, "\" has shape ",
                                                     ShapeString(it->second), ", but the config needs ",
                                                     ShapeString(want)));
    }
    used[name] = true;
    return absl::OkStatus();
  };
  // A tensor with a role, shape-checked, as an owned tensor in the model dtype (not yet listed).
  const auto load_value = [&](const std::string& name, Role role) -> absl::StatusOr<at::Tensor> {
    LLMTRAIN_RETURN_IF_ERROR(take_checked(name, role));
    // Views of a mapped file are copied (they stay read-only); a fresh tensor is kept as it is, so
    // loading never holds two copies of a weight.
    const bool shift = from_gguf && IsNormRole(role) && spec.gguf_norm_offset != 0.0;
    LLMTRAIN_ASSIGN_OR_RETURN(at::Tensor value, source.load(name, shift ? at::kFloat : dtype));
    bool owned = source.loads_owned;
    if (shift) {
      value = value.to(at::kFloat) - spec.gguf_norm_offset;  // undo llama.cpp's 1 + w
      owned = true;
    }
    if (value.scalar_type() != dtype) {
      value = value.to(dtype);
      owned = true;
    }
    if (!owned) value = value.clone();
    value = value.contiguous();
    value.set_requires_grad(state->options.requires_grad);
    return value;
  };
  // A GGUF weight's blocks as stored, shape-checked (its values are not adjusted, so a norm's
  // 1 + w offset would stay: only projections and the head come here).
  const auto load_blocks = [&](const std::string& name, Role role) -> absl::StatusOr<StoredBlocks> {
    LLMTRAIN_RETURN_IF_ERROR(take_checked(name, role));
    return source.load_blocks(name);
  };
  // The same, listed in named_parameters() by HF name whatever the file called it (GGUF
  // "blk.0.attn_q.weight" and HF "model.layers.0.self_attn.q_proj.weight" share a row).
  const auto take = [&](const std::string& name, Role role) -> absl::StatusOr<at::Tensor> {
    LLMTRAIN_ASSIGN_OR_RETURN(at::Tensor value, load_value(name, role));
    state->params.emplace_back(hf_name_of(name), value);
    return value;
  };
  const LinearFactory factory = state->options.linear_factory ? state->options.linear_factory : MakeDenseLinear;
  // Sharded loading (DecoderOptions::plan_layer_shares): each layer's projections are made twice,
  // first laid out without reading, then with this process's shares of their frozen tensors.
  const bool sharded = state->options.plan_layer_shares && state->options.on_layer_loaded &&
                       state->options.sum_over_processes && !state->options.requires_grad;
  struct Pass {
    bool layout_only = false;
    std::vector<TensorShare> shares;
  };
  std::map<std::pair<int64_t, int>, at::Tensor> biases;  // (layer, slot) → bias, taken once
  // Projections of the layer being loaded whose factory deferred them (ProjectionSource::defer).
  struct Deferred {
    int64_t layer = 0;
    int slot = 0;
    std::string module;
    std::vector<int64_t> shape;
    at::Tensor values;
    ProjectionSource::Finish finish;
  };
  std::vector<Deferred> deferred;
  // A projection the factory made: checked, and listed where the decoder lists it.
  const auto install = [&](int64_t i, int slot, const std::string& module, const std::vector<int64_t>& shape,
                          std::shared_ptr<Linear> layer, const Pass& pass) -> absl::Status {
    if (layer == nullptr || layer->in_features() != shape[1] || layer->out_features() != shape[0]) {
      return absl::InternalError(absl::StrCat(where, ": the linear factory made a wrong layer for ", module));
    }
    if (pass.layout_only) {
      state->layers[i].proj[slot] = std::move(layer);
      return absl::OkStatus();
    }
    if (!pass.shares.empty()) {  // the same tensors as laid out, or the shares do not fit them
      std::vector<at::Tensor> laid_out, made_frozen;
      state->layers[i].proj[slot]->AppendFrozen(&laid_out);
      layer->AppendFrozen(&made_frozen);
      bool same = laid_out.size() == made_frozen.size();
      for (size_t k = 0; same && k < laid_out.size(); ++k) {
        same = laid_out[k].sizes() == made_frozen[k].sizes() &&
               laid_out[k].scalar_type() == made_frozen[k].scalar_type();
      }
      if (!same) {
        return absl::InternalError(absl::StrCat(where, ": the linear factory's layout of ", module,
                                                " differs from the layer it made"));
      }
    }
    // Dense weights are listed in named_parameters(); 4-bit ones are not (see Decoder::linear).
    if (const at::Tensor w = layer->stored_weight(); w.defined()) {
      state->params.emplace_back(module + ".weight", w);
    }
    state->layers[i].proj[slot] = std::move(layer);
    state->linear_names.emplace_back(module, LinearRef{false, i, slot});
    return absl::OkStatus();
  };
  // One projection through the factory, with its bias (the family's bias row for q/k/v).
  const auto make_linear = [&](const WeightName& row, int64_t i, const Pass& pass) -> absl::Status {
    const int slot = LinearSlot(row.role);
    ProjectionSource p;
    p.module = LayerName(row.hf, i);
    if (absl::EndsWith(p.module, ".weight")) p.module.resize(p.module.size() - 7);
    p.weight_key = LayerName(from_gguf ? row.gguf : row.hf, i);
    p.shape = WeightShape(row.role, c);
    p.dtype = dtype;
    p.from_gguf = from_gguf;
    if (const auto taken = biases.find({i, slot}); taken != biases.end()) {
      p.bias = taken->second;
    } else if (const std::optional<Role> bias_role = BiasRoleOf(row.role)) {
      for (const WeightName& b : spec.weights) {
        if (b.role == *bias_role) {
          LLMTRAIN_ASSIGN_OR_RETURN(p.bias, take(LayerName(from_gguf ? b.gguf : b.hf, i), b.role));
        }
      }
      biases[{i, slot}] = p.bias;
    }
    p.layout_only = pass.layout_only;
    p.shares = pass.shares;
    p.has = [&](const std::string& key) { return source.shapes.count(key) != 0; };
    p.load = [&](const std::string& key, c10::ScalarType as) -> absl::StatusOr<at::Tensor> {
      if (source.shapes.count(key) == 0) return absl::NotFoundError(absl::StrCat("missing tensor \"", key, "\""));
      used[key] = true;
      LLMTRAIN_ASSIGN_OR_RETURN(at::Tensor t, source.load(key, as));
      return source.loads_owned ? t : t.clone();
    };
    p.dense_weight = [&, weight_key = p.weight_key, role = row.role]() { return load_value(weight_key, role); };
    if (source.load_blocks) p.stored_blocks = [&, weight_key = p.weight_key, role = row.role]() {
      return load_blocks(weight_key, role);
    };
    p.dense_elements = [&, weight_key = p.weight_key, shape = p.shape](int64_t begin,
                                                                        int64_t end) -> absl::StatusOr<at::Tensor> {
      const auto it = source.shapes.find(weight_key);
      if (it == source.shapes.end()) {
        return absl::NotFoundError(absl::StrCat(where, ": missing tensor \"", weight_key, "\""));
      }
      if (it->second != shape) {
        return absl::InvalidArgumentError(absl::StrCat(where, ": tensor \"", weight_key, "\" has shape ",
                                                       ShapeString(it->second), ", but the config needs ",
                                                       ShapeString(shape)));
      }
      const int64_t in = shape[1];
      if (begin < 0 || begin > end || end > shape[0] * in) {
        return absl::InvalidArgumentError(absl::StrCat(where, ": elements [", begin, ", ", end, ") of \"",
                                                       weight_key, "\""));
      }
      used[weight_key] = true;
      const int64_t row_begin = begin / in, row_end = (end + in - 1) / in;
      LLMTRAIN_ASSIGN_OR_RETURN(at::Tensor rows, source.load_rows(weight_key, dtype, row_begin, row_end));
      return rows.reshape({-1}).narrow(0, begin - row_begin * in, end - begin);
    };
    std::optional<Deferred> deferral;
    if (!pass.shares.empty()) {
      p.defer = [&deferral, &p, i, slot](at::Tensor values, ProjectionSource::Finish finish) {
        deferral = Deferred{i, slot, p.module, p.shape, std::move(values), std::move(finish)};
      };
    }
    auto made = factory(p);
    if (!made.ok()) {  // dense_weight's errors name the file already
      return absl::StartsWith(made.status().message(), where) ? made.status() : Annotate(made.status(), where);
    }
    if (*made == nullptr && deferral.has_value()) {
      deferred.push_back(*std::move(deferral));
      return absl::OkStatus();
    }
    return install(i, slot, p.module, p.shape, *std::move(made), pass);
  };

  // Sharded loading, second pass of layer i: its laid-out frozen tensors (norms first, then each
  // projection's AppendFrozen, as LayerFrozen lists them) get this process's shares, and each
  // projection is made again with its slice of them.
  const auto load_shares = [&](int64_t i) -> absl::Status {
    const std::vector<at::Tensor> frozen = state->LayerFrozen(i);
    LLMTRAIN_ASSIGN_OR_RETURN(std::vector<TensorShare> shares, state->options.plan_layer_shares(i, frozen));
    if (shares.size() != frozen.size()) {
      return absl::InternalError(absl::StrCat("plan_layer_shares gave ", shares.size(), " shares for ",
                                              frozen.size(), " tensors"));
    }
    std::array<size_t, 7> first{}, count{};
    size_t listed = 0;
    for (int slot = 0; slot < 7; ++slot) {
      std::vector<at::Tensor> f;
      state->layers[i].proj[slot]->AppendFrozen(&f);
      count[slot] = f.size();
      listed += f.size();
    }
    size_t next = frozen.size() - listed;  // after the norms
    for (int slot = 0; slot < 7; ++slot) {
      first[slot] = next;
      next += count[slot];
    }
    for (const WeightName& row : spec.weights) {
      const int slot = LinearSlot(row.role);
      if (slot < 0 || !absl::StrContains(from_gguf ? row.gguf : row.hf, "{i}")) continue;
      Pass pass;
      pass.shares.assign(shares.begin() + static_cast<std::ptrdiff_t>(first[slot]),
                         shares.begin() + static_cast<std::ptrdiff_t>(first[slot] + count[slot]));
      // A projection with nothing frozen has nothing to share: it is made whole.
      LLMTRAIN_RETURN_IF_ERROR(make_linear(row, i, pass));
    }
    if (deferred.empty()) return absl::OkStatus();
    // One collective for the layer: every deferred projection's values, summed over the
    // processes, then each projection finished.
    std::vector<at::Tensor> flat;
    for (const Deferred& d : deferred) {
      if (!d.values.is_cpu() || d.values.scalar_type() != at::kFloat || !d.values.is_contiguous()) {
        return absl::InternalError(absl::StrCat("the linear factory deferred ", d.module,
                                                " with values that are not a contiguous float32 CPU tensor"));
      }
      flat.push_back(d.values.reshape({-1}));
    }
    at::Tensor sum = at::cat(flat);
    LLMTRAIN_RETURN_IF_ERROR(state->options.sum_over_processes(sum));
    int64_t at = 0;
    for (Deferred& d : deferred) {
      d.values.reshape({-1}).copy_(sum.narrow(0, at, d.values.numel()));
      at += d.values.numel();
    }
    std::vector<Deferred> finishing = std::move(deferred);
    deferred.clear();
    for (Deferred& d : finishing) {
      Pass pass;
      pass.shares.assign(shares.begin() + static_cast<std::ptrdiff_t>(first[d.slot]),
                         shares.begin() + static_cast<std::ptrdiff_t>(first[d.slot] + count[d.slot]));
      auto made = d.finish();
      if (!made.ok()) {
        return absl::StartsWith(made.status().message(), where) ? made.status() : Annotate(made.status(), where);
      }
      LLMTRAIN_RETURN_IF_ERROR(install(d.layer, d.slot, d.module, d.shape, *std::move(made), pass));
    }
    return absl::OkStatus();
  };

  // The decoder layers load one after another, each whole before the next begins (so
  // options.on_layer_loaded can shard it at once), where the family's table lists the first
  // per-layer tensor; the other tensors load in the table's order around them.
  bool layers_loaded = false;
  const auto load_layers = [&]() -> absl::Status {
    for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
      for (const WeightName& row : spec.weights) {
        const std::string& pattern = from_gguf ? row.gguf : row.hf;
        if (IsBiasRole(row.role) || !absl::StrContains(pattern, "{i}")) continue;
        if (LinearSlot(row.role) >= 0) {
          LLMTRAIN_RETURN_IF_ERROR(make_linear(row, i, Pass{.layout_only = sharded, .shares = {}}));
          continue;
        }
        LLMTRAIN_ASSIGN_OR_RETURN(at::Tensor t, take(LayerName(pattern, i), row.role));
        LayerWeights& l = state->layers[i];
        switch (row.role) {
          case Role::kInputNorm: l.input_norm = t; break;
          case Role::kPostAttnNorm: l.post_attn_norm = t; break;
          case Role::kPreFfwNorm: l.pre_ffw_norm = t; break;
          case Role::kPostFfwNorm: l.post_ffw_norm = t; break;
          case Role::kQNorm: l.q_norm = t; break;
          case Role::kKNorm: l.k_norm = t; break;
          default: break;
        }
      }
      if (sharded) LLMTRAIN_RETURN_IF_ERROR(Annotate(load_shares(i), absl::StrCat(where, ": layer ", i)));
      if (state->options.on_layer_loaded) {
        LLMTRAIN_RETURN_IF_ERROR(Annotate(state->options.on_layer_loaded(i, state->LayerFrozen(i)),
                                          absl::StrCat(where, ": layer ", i)));
      }
    }
    return absl::OkStatus();
  };
  // Image+text models: the SigLIP tower and the projector, before the decoder (transformers'
  // order). Their tensors go by transformers' in-memory names (LoadDecoderState maps the file's).
  if (state->config.vision.has_value()) {
    const io::VisionConfig& vc = *state->config.vision;
    auto vision = std::make_unique<VisionState>();
    vision->config = vc;
    vision->tokens_per_image = state->config.mm_tokens_per_image;
    vision->image_token_id = state->config.image_token_index;
    // A tensor of the vision path, shape-checked, owned, in the model dtype; listed unless `list` is false.
    const auto vision_tensor = [&](const std::string& name, const std::vector<int64_t>& want,
                                   bool list = true) -> absl::StatusOr<at::Tensor> {
      const auto it = source.shapes.find(name);
      if (it == source.shapes.end()) return absl::NotFoundError(absl::StrCat(where, ": missing tensor \"", name, "\""));
      if (it->second != want) {
        return absl::InvalidArgumentError(absl::StrCat(where, ": tensor \"", name, "\" has shape ",
                                                       ShapeString(it->second), ", but the config needs ",
                                                       ShapeString(want)));
      }
      used[name] = true;
      LLMTRAIN_ASSIGN_OR_RETURN(at::Tensor value, source.load(name, dtype));
      value = value.scalar_type() != dtype ? value.to(dtype) : (source.loads_owned ? value : value.clone());
      value = value.contiguous();
      value.set_requires_grad(state->options.requires_grad);
      if (list) state->params.emplace_back(name, value);
      return value;
    };
    const int64_t Cv = vc.hidden_size, Iv = vc.intermediate_size, p = vc.patch_size;
    const int64_t patches = (vc.image_size / p) * (vc.image_size / p);
    const std::string tower = "model.vision_tower.";
    LLMTRAIN_ASSIGN_OR_RETURN(vision->patch_weight, vision_tensor(tower + "embeddings.patch_embedding.weight",
                                                                  {Cv, vc.num_channels, p, p}));
    LLMTRAIN_ASSIGN_OR_RETURN(vision->patch_bias, vision_tensor(tower + "embeddings.patch_embedding.bias", {Cv}));
    LLMTRAIN_ASSIGN_OR_RETURN(vision->position,
                              vision_tensor(tower + "embeddings.position_embedding.weight", {patches, Cv}));
    vision->layers.resize(static_cast<size_t>(vc.num_hidden_layers));
    for (int64_t i = 0; i < vc.num_hidden_layers; ++i) {
      VisionLayerWeights& l = vision->layers[static_cast<size_t>(i)];
      const std::string layer = absl::StrCat(tower, "encoder.layers.", i, ".");
      LLMTRAIN_ASSIGN_OR_RETURN(l.ln1_weight, vision_tensor(layer + "layer_norm1.weight", {Cv}));
      LLMTRAIN_ASSIGN_OR_RETURN(l.ln1_bias, vision_tensor(layer + "layer_norm1.bias", {Cv}));
      for (int slot = 0; slot < 6; ++slot) {
        const std::string module = layer + kVisionLinearNames[slot];
        const std::vector<int64_t> shape = slot == 4 ? std::vector<int64_t>{Iv, Cv}
                                           : slot == 5 ? std::vector<int64_t>{Cv, Iv}
                                                       : std::vector<int64_t>{Cv, Cv};
        ProjectionSource ps;
        ps.module = module;
        ps.weight_key = module + ".weight";
        ps.shape = shape;
        ps.dtype = dtype;
        LLMTRAIN_ASSIGN_OR_RETURN(ps.bias, vision_tensor(module + ".bias", {shape[0]}));
        ps.has = [&](const std::string& key) { return source.shapes.count(key) != 0; };
        ps.load = [&](const std::string& key, c10::ScalarType as) -> absl::StatusOr<at::Tensor> {
          if (source.shapes.count(key) == 0) return absl::NotFoundError(absl::StrCat("missing tensor \"", key, "\""));
          used[key] = true;
          LLMTRAIN_ASSIGN_OR_RETURN(at::Tensor t, source.load(key, as));
          return source.loads_owned ? t : t.clone();
        };
        ps.dense_weight = [&, key = ps.weight_key, shape]() { return vision_tensor(key, shape, /*list=*/false); };
        auto made = factory(ps);
        if (!made.ok()) {
          return absl::StartsWith(made.status().message(), where) ? made.status() : Annotate(made.status(), where);
        }
        if (*made == nullptr || (*made)->in_features() != shape[1] || (*made)->out_features() != shape[0]) {
          return absl::InternalError(absl::StrCat(where, ": the linear factory made a wrong layer for ", module));
        }
        if (const at::Tensor w = (*made)->stored_weight(); w.defined()) state->params.emplace_back(ps.weight_key, w);
        l.proj[slot] = *std::move(made);
        state->linear_names.emplace_back(module, LinearRef{true, i, slot});
        if (slot == 3) {
          LLMTRAIN_ASSIGN_OR_RETURN(l.ln2_weight, vision_tensor(layer + "layer_norm2.weight", {Cv}));
          LLMTRAIN_ASSIGN_OR_RETURN(l.ln2_bias, vision_tensor(layer + "layer_norm2.bias", {Cv}));
        }
      }
    }
    LLMTRAIN_ASSIGN_OR_RETURN(vision->post_weight, vision_tensor(tower + "post_layernorm.weight", {Cv}));
    LLMTRAIN_ASSIGN_OR_RETURN(vision->post_bias, vision_tensor(tower + "post_layernorm.bias", {Cv}));
    LLMTRAIN_ASSIGN_OR_RETURN(vision->mm_projection, vision_tensor("model.multi_modal_projector.mm_input_projection_weight",
                                                                   {Cv, c.hidden_size}));
    LLMTRAIN_ASSIGN_OR_RETURN(vision->mm_norm, vision_tensor("model.multi_modal_projector.mm_soft_emb_norm.weight", {Cv}));
    state->vision = std::move(vision);
  }
  for (const WeightName& row : spec.weights) {
    const std::string& pattern = from_gguf ? row.gguf : row.hf;
    if (IsBiasRole(row.role)) continue;  // loaded with their projection
    if (absl::StrContains(pattern, "{i}")) {
      if (!layers_loaded) LLMTRAIN_RETURN_IF_ERROR(load_layers());
      layers_loaded = true;
      continue;
    }
    if (row.role == Role::kLmHead && spec.tied_embeddings) {
      // Tied: the head is the embedding. Some checkpoints store a copy; it must be that copy.
      if (source.shapes.count(pattern) != 0) {
        used[pattern] = true;
        std::string embed_name;
        for (const WeightName& e : spec.weights) {
          if (e.role == Role::kEmbed) embed_name = from_gguf ? e.gguf : e.hf;
        }
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
    if (row.role == Role::kEmbed) state->embed = t;
    if (row.role == Role::kFinalNorm) state->final_norm = t;
    if (row.role == Role::kLmHead) state->lm_head = t;
  }
  if (spec.tied_embeddings) state->lm_head = state->embed;
  if (state->options.head_through_factory) {
    // The head as one more projection: the factory may keep it packed (GGUF blocks, 4-bit).
    std::string head_key;
    for (const WeightName& row : spec.weights) {
      if (row.role == (spec.tied_embeddings ? Role::kEmbed : Role::kLmHead)) head_key = from_gguf ? row.gguf : row.hf;
    }
    ProjectionSource p;
    p.module = "lm_head";
    p.weight_key = head_key;
    p.shape = WeightShape(Role::kLmHead, c);
    p.dtype = dtype;
    p.from_gguf = from_gguf;
    p.has = [&](const std::string& key) { return source.shapes.count(key) != 0; };
    p.load = [&](const std::string& key, c10::ScalarType as) -> absl::StatusOr<at::Tensor> {
      if (source.shapes.count(key) == 0) return absl::NotFoundError(absl::StrCat("missing tensor \"", key, "\""));
      LLMTRAIN_ASSIGN_OR_RETURN(at::Tensor t, source.load(key, as));
      return source.loads_owned ? t : t.clone();
    };
    p.dense_weight = [&]() -> absl::StatusOr<at::Tensor> { return state->lm_head; };
    if (source.load_blocks) {
      p.stored_blocks = [&]() { return load_blocks(head_key, Role::kLmHead); };
    }
    LLMTRAIN_ASSIGN_OR_RETURN(std::shared_ptr<Linear> head, factory(p));
    if (head == nullptr || head->in_features() != c.hidden_size || head->out_features() != c.vocab_size) {
      return absl::InternalError(absl::StrCat(where, ": the linear factory made no (", c.vocab_size, ", ",
                                              c.hidden_size, ") layer for the head"));
    }
    if (head->kind() != "dense") state->head = std::move(head);
  }
  // linear_names in LinearNames() order: layer by layer, q, k, v, o, gate, up, down.
  std::stable_sort(state->linear_names.begin(), state->linear_names.end(),
                   [](const auto& a, const auto& b) { return a.second < b.second; });
  for (const auto& [name, was_used] : used) {
    if (!was_used) {
      return absl::InvalidArgumentError(absl::StrCat(
          where, ": tensor \"", name, "\" is not a weight of ", spec.model_type,
          " (no row of its name table maps it; a checkpoint with 4-bit projections needs "
          "DecoderOptions::linear_factory = quant::QuantizedLinearFactory)"));
    }
  }
  // RoPE inverse frequencies, one table per distinct (theta, factor) and an index per layer.
  std::vector<LayerRope> distinct;
  for (const LayerRope& rope : spec.rope) {
    const auto same = std::find_if(distinct.begin(), distinct.end(), [&](const LayerRope& r) {
      return r.theta == rope.theta && r.linear_factor == rope.linear_factor;
    });
    if (same != distinct.end()) {
      state->layer_rope.push_back(same - distinct.begin());
      continue;
    }
    state->layer_rope.push_back(static_cast<int64_t>(distinct.size()));
    distinct.push_back(rope);
    state->inv_freq.push_back(kernels::RopeInverseFrequencies(c.head_dim, rope.theta, rope.linear_factor));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::shared_ptr<DecoderState>> LoadDecoderState(absl::string_view path_view,
                                                               const DecoderOptions& options) {
  const std::string path(path_view);
  auto state = std::make_shared<DecoderState>();
  state->options = options;
  TensorSource source;
  std::unique_ptr<io::GgufFile> gguf;
  std::unique_ptr<io::Checkpoint> checkpoint;
  const bool from_gguf = absl::EndsWith(path, ".gguf");
  std::vector<std::string> vocabulary;  // GGUF: the token strings, to find the family's end tokens
  try {
    if (from_gguf) {
      LLMTRAIN_ASSIGN_OR_RETURN(gguf, io::GgufFile::Open(path));
      LLMTRAIN_ASSIGN_OR_RETURN(state->config, io::HfConfigFromGguf(*gguf));
      for (const io::GgufTensorInfo& t : gguf->tensors()) source.shapes[t.name] = t.shape;
      if (const io::GgufValue* tokens = gguf->FindMetadata("tokenizer.ggml.tokens")) vocabulary = tokens->strings;
      source.loads_owned = true;
      source.load = [&gguf](const std::string& name, c10::ScalarType dtype) {
        return io::LoadGgufTensor(*gguf, *gguf->FindTensor(name), dtype);
      };
      source.load_rows = [&gguf](const std::string& name, c10::ScalarType dtype, int64_t row_begin,
                                 int64_t row_end) {
        return io::LoadGgufRows(*gguf, *gguf->FindTensor(name), row_begin, row_end, dtype);
      };
      source.load_blocks = [&gguf](const std::string& name) -> absl::StatusOr<StoredBlocks> {
        const io::GgufTensorInfo& t = *gguf->FindTensor(name);
        const absl::Span<const uint8_t> data = gguf->Data(t);
        StoredBlocks blocks;
        blocks.type = t.type;
        blocks.bytes = at::empty({static_cast<int64_t>(data.size())}, at::kByte);
        std::memcpy(blocks.bytes.data_ptr(), data.data(), data.size());
        return blocks;
      };
    } else {
      if (!IsDirectory(path)) {
        return absl::InvalidArgumentError(
            absl::StrCat(path, ": expected a model folder (config.json + safetensors) or a .gguf file"));
      }
      LLMTRAIN_ASSIGN_OR_RETURN(state->config, io::LoadHfConfig(path + "/config.json"));
      LLMTRAIN_ASSIGN_OR_RETURN(checkpoint, io::Checkpoint::Open(path));
      for (const std::string& name : checkpoint->Names()) {
        LLMTRAIN_ASSIGN_OR_RETURN(auto found, checkpoint->Find(name));
        source.shapes[name] = found.second->shape;
      }
      source.load = [&checkpoint](const std::string& name, c10::ScalarType) {
        return io::LoadTensor(*checkpoint, name);  // a view of the mapping, in the stored dtype
      };
      source.load_rows = [&checkpoint](const std::string& name, c10::ScalarType dtype, int64_t row_begin,
                                       int64_t row_end) -> absl::StatusOr<at::Tensor> {
        LLMTRAIN_ASSIGN_OR_RETURN(at::Tensor view, io::LoadTensor(*checkpoint, name));
        const at::Tensor rows = view.reshape({-1, view.size(-1)}).narrow(0, row_begin, row_end - row_begin);
        // Only these rows' pages of the mapping are read; the copy is owned.
        return rows.scalar_type() == dtype ? rows.clone() : rows.to(dtype);
      };
      // generation_config.json may list more end tokens than config.json (Gemma: <end_of_turn>).
      if (auto text = ReadFileToString(path + "/generation_config.json"); text.ok()) {
        const nlohmann::json generation = nlohmann::json::parse(*text, nullptr, /*allow_exceptions=*/false);
        if (generation.is_object() && generation.contains("eos_token_id")) {
          const nlohmann::json& eos = generation["eos_token_id"];
          if (eos.is_number_integer()) state->eos_token_ids.push_back(eos.get<int64_t>());
          if (eos.is_array()) {
            for (const auto& e : eos) {
              if (e.is_number_integer()) state->eos_token_ids.push_back(e.get<int64_t>());
            }
          }
        }
      }
    }
    if (state->config.vision.has_value()) {
      LLMTRAIN_RETURN_IF_ERROR(CheckImageTextConfig(state->config, path));
      LLMTRAIN_RETURN_IF_ERROR(UseImageTextNames(&source, path));
    }
    auto spec = BuildModelSpec(state->config);
    if (!spec.ok()) return Annotate(spec.status(), path);
    state->spec = *std::move(spec);
    if (state->spec.refuses_fp16 && options.dtype == Dtype::kF16) {
      return absl::InvalidArgumentError(absl::StrCat(
          path, ": dtype f16: ", state->spec.model_type,
          " overflows float16 in its residual stream (transformers produces inf/NaN); use bf16 or f32"));
    }
    // Chat models end a turn with a token of their own; generation must stop there too.
    for (size_t id = 0; id < vocabulary.size(); ++id) {
      const auto& ends = state->spec.end_of_turn_tokens;
      if (std::find(ends.begin(), ends.end(), vocabulary[id]) != ends.end()) {
        state->eos_token_ids.push_back(static_cast<int64_t>(id));
      }
    }
    LLMTRAIN_RETURN_IF_ERROR(BuildFromTensors(source, from_gguf, path, state.get()));
#ifdef __GLIBC__
    // Loading frees many dequantized temporaries of a few MiB each. glibc raises its mmap
    // threshold after the first such free, so the later ones come from the heap and stay
    // resident after being freed (434 MiB for the 270M GGUF quantized to NF4). Hand them back.
    malloc_trim(0);
#endif
    std::vector<int64_t>& eos = state->eos_token_ids;
    eos.insert(eos.end(), state->config.text.eos_token_ids.begin(), state->config.text.eos_token_ids.end());
    std::sort(eos.begin(), eos.end());
    eos.erase(std::unique(eos.begin(), eos.end()), eos.end());
  } catch (...) {
    return StatusFromCurrentException(absl::StrCat("loading ", path));
  }
  return state;
}

}  // namespace llmtrain::model::detail
