// GGUF export (serve/export.h): the family's names and keys, the vocabulary, the read-back check
// of the metadata, and the tensors written one at a time.
#include "llmtrain/serve/export.h"

#include <sys/stat.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <set>
#include <type_traits>

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "llmtrain/core/status.h"
#include "llmtrain/io/families.h"
#include "llmtrain/io/hf_config.h"
#include "llmtrain/io/mapped_file.h"
#include "llmtrain/lora/lora.h"
#include "llmtrain/model/decoder.h"
#include "llmtrain/model/family.h"
#include "llmtrain/model/linear.h"
#include "llmtrain/tokenizer/tokenizer.h"

namespace llmtrain::serve {
namespace {

using model::Role;

io::GgufValue StringArray(std::vector<std::string> strings) {
  io::GgufValue v;
  v.type = io::GgufValueType::kArray;
  v.array_type = io::GgufValueType::kString;
  v.strings = std::move(strings);
  return v;
}

io::GgufValue Scalar(io::GgufValueType type, std::variant<uint64_t, int64_t, double, bool, std::string> value) {
  io::GgufValue v;
  v.type = type;
  v.scalar = std::move(value);
  return v;
}

// general.file_type (llama_ftype) of each export type.
uint32_t FileType(ExportType type) {
  switch (type) {
    case ExportType::kF32: return 0;
    case ExportType::kF16: return 1;
    case ExportType::kQ4_0: return 2;
    case ExportType::kQ8_0: return 7;
    case ExportType::kQ4_K_M: return 15;
    case ExportType::kBF16: return 32;
  }
  return 0;
}

io::GgmlType WeightType(ExportType type) {
  switch (type) {
    case ExportType::kF32: return io::GgmlType::kF32;
    case ExportType::kF16: return io::GgmlType::kF16;
    case ExportType::kBF16: return io::GgmlType::kBF16;
    case ExportType::kQ8_0: return io::GgmlType::kQ8_0;
    case ExportType::kQ4_0: return io::GgmlType::kQ4_0;
    case ExportType::kQ4_K_M: return io::GgmlType::kQ4_K;
  }
  return io::GgmlType::kF32;
}

// llama.cpp's Q4_K_M mix (llama-quant.cpp, without an importance matrix) for one 2-D weight of
// `n_layers`: Q6_K for the output (or the token embedding when it is tied to the output), and
// for attn_v and ffn_down of the layers use_more_bits picks (the first and last eighth, and every
// third between); Q4_K for the rest. A row that is not whole super-blocks of 256 falls back to
// Q5_0 (for Q4_K) or Q8_0 (for Q6_K), or F16 when not whole blocks of 32 either.
io::GgmlType Q4KMType(const std::string& gguf_name, int64_t row_length, int64_t layer, int64_t n_layers, bool tied) {
  const auto use_more_bits = [](int64_t i, int64_t n) { return i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2; };
  io::GgmlType type = io::GgmlType::kQ4_K;
  if (gguf_name == "output.weight" || (tied && gguf_name == "token_embd.weight")) {
    type = row_length % 256 != 0 ? io::GgmlType::kQ8_0 : io::GgmlType::kQ6_K;
  } else if (gguf_name == "token_embd.weight") {
    type = io::GgmlType::kQ4_K;
  } else if (absl::StrContains(gguf_name, "attn_v.weight") || absl::StrContains(gguf_name, "ffn_down")) {
    if (use_more_bits(layer, n_layers)) type = io::GgmlType::kQ6_K;
  }
  if (row_length % 256 != 0) {
    if (type == io::GgmlType::kQ4_K) type = io::GgmlType::kQ5_0;
    if (type == io::GgmlType::kQ6_K) type = io::GgmlType::kQ8_0;
    if (row_length % 32 != 0) type = io::GgmlType::kF16;
  }
  return type;
}

// The architecture keys of `config`, as llama.cpp's converter writes them (docs/formats.md §2.8).
std::vector<std::pair<std::string, io::GgufValue>> ArchitectureKeys(const std::string& arch, const io::TextConfig& t) {
  using T = io::GgufValueType;
  std::vector<std::pair<std::string, io::GgufValue>> keys;
  const auto u32 = [&](const char* suffix, int64_t v) {
    keys.emplace_back(absl::StrCat(arch, ".", suffix), Scalar(T::kUint32, static_cast<uint64_t>(v)));
  };
  const auto f32 = [&](const char* suffix, double v) {
    keys.emplace_back(absl::StrCat(arch, ".", suffix), Scalar(T::kFloat32, static_cast<double>(static_cast<float>(v))));
  };
  u32("context_length", t.max_position_embeddings);
  u32("embedding_length", t.hidden_size);
  u32("block_count", t.num_hidden_layers);
  u32("feed_forward_length", t.intermediate_size);
  u32("attention.head_count", t.num_attention_heads);
  u32("attention.head_count_kv", t.num_key_value_heads);
  f32("attention.layer_norm_rms_epsilon", t.rms_norm_eps);
  // Qwen2's config has no head_dim: its GGUF states none (hidden / heads).
  if (arch != "qwen2") {
    u32("attention.key_length", t.head_dim);
    u32("attention.value_length", t.head_dim);
  }
  f32("rope.freq_base", t.rope_full.rope_theta);
  if (t.sliding_window && arch != "qwen2") u32("attention.sliding_window", *t.sliding_window);
  if (t.attn_logit_softcapping) f32("attn_logit_softcapping", *t.attn_logit_softcapping);
  if (t.final_logit_softcapping) f32("final_logit_softcapping", *t.final_logit_softcapping);
  u32("vocab_size", t.vocab_size);
  return keys;
}

// What the decoder computes, as a GGUF can state it: the spec's computation and the sizes.
std::vector<std::string> ComputationDifferences(const model::FamilySpec& a, const io::TextConfig& ta,
                                                const model::FamilySpec& b, const io::TextConfig& tb) {
  std::vector<std::string> diffs;
  const auto text = [](const auto& v) -> std::string {
    if constexpr (std::is_same_v<std::decay_t<decltype(v)>, bool>) {
      return v ? "true" : "false";
    } else {
      return absl::StrCat(v);
    }
  };
  const auto eq = [&](const char* what, auto x, auto y) {
    if (!(x == y)) diffs.push_back(absl::StrCat(what, ": ", text(x), " in the model, ", text(y), " as the GGUF reads back"));
  };
  eq("vocab_size", ta.vocab_size, tb.vocab_size);
  eq("hidden_size", ta.hidden_size, tb.hidden_size);
  eq("intermediate_size", ta.intermediate_size, tb.intermediate_size);
  eq("num_hidden_layers", ta.num_hidden_layers, tb.num_hidden_layers);
  eq("num_attention_heads", ta.num_attention_heads, tb.num_attention_heads);
  eq("num_key_value_heads", ta.num_key_value_heads, tb.num_key_value_heads);
  eq("head_dim", ta.head_dim, tb.head_dim);
  // rms_norm_eps is stored as float32 (as llama.cpp does): 1e-6 reads 9.99999997e-07.
  if (std::abs(ta.rms_norm_eps - tb.rms_norm_eps) > 1e-6 * std::abs(ta.rms_norm_eps)) {
    diffs.push_back(absl::StrCat("rms_norm_eps: ", ta.rms_norm_eps, " in the model, ", tb.rms_norm_eps, " read back"));
  }
  eq("norm style", static_cast<int>(a.norm), static_cast<int>(b.norm));
  eq("sandwich norms", a.sandwich_norms, b.sandwich_norms);
  eq("qk_norm", a.qk_norm, b.qk_norm);
  eq("qkv_bias", a.qkv_bias, b.qkv_bias);
  eq("scale_embeddings", a.scale_embeddings, b.scale_embeddings);
  eq("activation", static_cast<int>(a.activation), static_cast<int>(b.activation));
  if (std::abs(a.attn_scale - b.attn_scale) > 1e-12 * std::abs(a.attn_scale)) {
    diffs.push_back(absl::StrCat("attention scale (query_pre_attn_scalar): ", a.attn_scale, " in the model, ",
                                 b.attn_scale, " read back"));
  }
  const auto cap = [](const std::optional<double>& c) { return c ? absl::StrCat(static_cast<float>(*c)) : "none"; };
  eq("attn_logit_softcapping", cap(a.attn_softcap), cap(b.attn_softcap));
  eq("final_logit_softcapping", cap(a.final_softcap), cap(b.final_softcap));
  eq("tie_word_embeddings", a.tied_embeddings, b.tied_embeddings);
  if (a.sliding != b.sliding) diffs.push_back("which layers use sliding-window attention");
  if (std::find(a.sliding.begin(), a.sliding.end(), true) != a.sliding.end()) eq("sliding_window", a.window, b.window);
  for (size_t i = 0; i < a.rope.size() && i < b.rope.size(); ++i) {
    if (a.rope[i].theta != b.rope[i].theta || a.rope[i].linear_factor != b.rope[i].linear_factor) {
      diffs.push_back(absl::StrFormat("RoPE of layer %d: theta %g, linear factor %g in the model; theta %g, factor %g "
                                      "read back (a GGUF states one rope.freq_base and no scaling that transformers reads)",
                                      i, a.rope[i].theta, a.rope[i].linear_factor, b.rope[i].theta, b.rope[i].linear_factor));
      break;
    }
  }
  return diffs;
}

}  // namespace

absl::StatusOr<ExportType> ParseExportType(absl::string_view name) {
  for (ExportType t : {ExportType::kF32, ExportType::kF16, ExportType::kBF16, ExportType::kQ8_0, ExportType::kQ4_0,
                       ExportType::kQ4_K_M}) {
    if (ExportTypeName(t) == name) return t;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("--type: \"", name, "\" is not one of f32, f16, bf16, q8_0, q4_0, q4_k_m"));
}

absl::string_view ExportTypeName(ExportType type) {
  switch (type) {
    case ExportType::kF32: return "f32";
    case ExportType::kF16: return "f16";
    case ExportType::kBF16: return "bf16";
    case ExportType::kQ8_0: return "q8_0";
    case ExportType::kQ4_0: return "q4_0";
    case ExportType::kQ4_K_M: return "q4_k_m";
  }
  return "?";
}

GgufVocabulary GgufVocabularyFromGguf(const io::GgufFile& file) {
  GgufVocabulary v;
  for (const auto& [key, value] : file.metadata()) {
    if (absl::StartsWith(key, "tokenizer.")) v.metadata.emplace_back(key, value);
  }
  return v;
}

absl::StatusOr<GgufVocabulary> GgufVocabularyFromTokenizer(const tokenizer::Tokenizer& tok, absl::string_view pre,
                                                           int64_t vocab_size, std::optional<int64_t> config_bos,
                                                           std::optional<int64_t> config_eos) {
  using T = io::GgufValueType;
  if (tok.kind() != "byte_level") {
    return absl::UnimplementedError(
        "a SentencePiece-style tokenizer.json (Gemma) cannot be exported as a GGUF vocabulary: llama.cpp converts "
        "those from tokenizer.model; export the model from its GGUF, or give a GGUF whose vocabulary to use");
  }
  if (tok.vocab_size() > vocab_size) {
    return absl::InvalidArgumentError(absl::StrCat("the tokenizer has ", tok.vocab_size(), " ids, the model's embedding ",
                                                   vocab_size, " rows"));
  }
  const int64_t n = vocab_size;
  std::set<int32_t> added, added_special;
  for (const tokenizer::AddedToken& a : tok.added_tokens()) {
    added.insert(a.id);
    if (a.special) added_special.insert(a.id);
  }
  std::vector<std::string> tokens;
  io::GgufValue types;
  types.type = T::kArray;
  types.array_type = T::kInt32;
  tokens.reserve(n);
  for (int64_t id = 0; id < n; ++id) {
    std::string token = id < tok.vocab_size() ? tok.IdToToken(static_cast<int32_t>(id)) : "";
    // llama.cpp's converter: ids the tokenizer does not have become "[PAD<id>]", UNUSED (5).
    if (token.empty()) {
      tokens.push_back(absl::StrCat("[PAD", id, "]"));
      types.ints.push_back(5);
      continue;
    }
    tokens.push_back(std::move(token));
    // CONTROL (3) for special added tokens, USER_DEFINED (4) for other added ones, NORMAL (1).
    types.ints.push_back(added_special.count(id) ? 3 : added.count(id) ? 4 : 1);
  }
  GgufVocabulary v;
  v.metadata.emplace_back("tokenizer.ggml.model", Scalar(T::kString, std::string("gpt2")));
  v.metadata.emplace_back("tokenizer.ggml.pre", Scalar(T::kString, std::string(pre.empty() ? "default" : pre)));
  v.metadata.emplace_back("tokenizer.ggml.tokens", StringArray(std::move(tokens)));
  v.metadata.emplace_back("tokenizer.ggml.token_type", std::move(types));
  v.metadata.emplace_back("tokenizer.ggml.merges", StringArray(tok.Merges()));
  const auto id_key = [&](const char* key, std::optional<int64_t> id) {
    if (id && *id >= 0 && *id < n) v.metadata.emplace_back(key, Scalar(T::kUint32, static_cast<uint64_t>(*id)));
  };
  const auto from_tok = [](std::optional<int32_t> id) { return id ? std::optional<int64_t>(*id) : std::nullopt; };
  id_key("tokenizer.ggml.eos_token_id", tok.eos_id() ? from_tok(tok.eos_id()) : config_eos);
  id_key("tokenizer.ggml.padding_token_id", from_tok(tok.pad_id()));
  id_key("tokenizer.ggml.bos_token_id", tok.bos_id() ? from_tok(tok.bos_id()) : config_bos);
  v.metadata.emplace_back("tokenizer.ggml.add_bos_token", Scalar(T::kBool, tok.adds_bos()));
  if (!tok.chat_template_source().empty()) {
    v.metadata.emplace_back("tokenizer.chat_template", Scalar(T::kString, tok.chat_template_source()));
  }
  return v;
}

absl::StatusOr<ExportReport> ExportGguf(const model::Decoder& model, const GgufVocabulary& vocabulary,
                                        absl::string_view path_view, const ExportOptions& options) {
  using T = io::GgufValueType;
  const std::string path(path_view);
  if (!lora::Adapters(model).empty()) {
    return absl::FailedPreconditionError("the model has adapters: merge them first (lora::MergeAdapters)");
  }
  const io::TextConfig& text = model.config().text;
  const io::FamilyInfo* family = io::FindFamily(text.model_type);
  if (family == nullptr || family->gguf_architecture.empty()) {
    return absl::UnimplementedError(absl::StrCat("model_type \"", text.model_type, "\" has no GGUF architecture"));
  }
  const std::string arch = family->gguf_architecture;
  const model::FamilySpec& spec = model.spec();

  io::GgufWriter w;
  w.AddString("general.architecture", arch);
  w.AddString("general.type", "model");
  if (!options.name.empty()) w.AddString("general.name", options.name);
  for (auto& [key, value] : ArchitectureKeys(arch, text)) w.Add(key, value);
  w.AddUint32("general.file_type", FileType(options.type));
  if (options.type == ExportType::kQ8_0 || options.type == ExportType::kQ4_0 || options.type == ExportType::kQ4_K_M) {
    w.AddUint32("general.quantization_version", 2);
  }
  // llama.cpp gives Qwen2's 80-layer models (its 70B type) Q5_K attn_v in Q4_K_M, a type this
  // exporter does not write.
  if (options.type == ExportType::kQ4_K_M && arch == "qwen2" && text.num_hidden_layers == 80) {
    return absl::UnimplementedError(absl::StrCat(path, ": --type q4_k_m of an 80-layer Qwen2 needs Q5_K attn_v "
                                                 "(llama.cpp's 70B rule), which is not written; use q8_0"));
  }
  int64_t n_tokens = -1;
  for (const auto& [key, value] : vocabulary.metadata) {
    w.Add(key, value);
    if (key == "tokenizer.ggml.tokens") n_tokens = static_cast<int64_t>(value.array_size());
  }
  if (n_tokens < 0) return absl::InvalidArgumentError("the vocabulary has no tokenizer.ggml.tokens");
  // llama.cpp sizes the vocabulary from the token list: it must be the embedding's rows.
  if (n_tokens != text.vocab_size) {
    return absl::InvalidArgumentError(absl::StrCat("the vocabulary has ", n_tokens, " tokens, the model's embedding ",
                                                   text.vocab_size, " rows"));
  }
  // What llama.cpp computes differently from the config (transformers' reading is checked below).
  if (arch == "gemma2" || arch == "gemma3") {
    const bool is_27b = text.num_hidden_layers == (arch == "gemma2" ? 46 : 62);
    const double llama_cpp_scale =
        1.0 / std::sqrt(static_cast<double>(is_27b ? text.hidden_size / text.num_attention_heads : text.head_dim));
    if (std::abs(llama_cpp_scale - spec.attn_scale) > 1e-9 * spec.attn_scale) {
      return absl::UnimplementedError(absl::StrCat(
          path, ": llama.cpp scales Gemma's attention by 1/sqrt(", is_27b ? "hidden_size / heads" : "head_dim",
          ") = ", llama_cpp_scale, ", the model by query_pre_attn_scalar^-0.5 = ", spec.attn_scale));
    }
    if (arch == "gemma2" && !spec.tied_embeddings) {
      return absl::UnimplementedError(absl::StrCat(path, ": llama.cpp's gemma2 reads no output.weight (it ties the "
                                                   "output to token_embd); this model's are untied"));
    }
  }

  // The metadata must read back as this model's computation (what a loader of the file runs).
  {
    io::GgufWriter probe;
    probe.Add("general.architecture", Scalar(T::kString, arch));
    for (auto& [key, value] : ArchitectureKeys(arch, text)) probe.Add(key, value);
    for (const auto& [key, value] : vocabulary.metadata) probe.Add(key, value);
    if (!spec.tied_embeddings) LLMTRAIN_RETURN_IF_ERROR(probe.AddTensor("output.weight", io::GgmlType::kF32, {1}, {0.0f}));
    LLMTRAIN_ASSIGN_OR_RETURN(const std::string bytes, probe.Serialize());
    LLMTRAIN_ASSIGN_OR_RETURN(
        auto file, io::GgufFile::Parse(io::MappedFile::FromBytes(
                       path + " (metadata)", absl::Span<const uint8_t>(reinterpret_cast<const uint8_t*>(bytes.data()),
                                                                       bytes.size()))));
    LLMTRAIN_ASSIGN_OR_RETURN(const io::HfConfig back, io::HfConfigFromGguf(*file));
    LLMTRAIN_ASSIGN_OR_RETURN(const model::FamilySpec back_spec, model::BuildFamilySpec(back.text));
    const std::vector<std::string> diffs = ComputationDifferences(spec, text, back_spec, back.text);
    if (!diffs.empty()) {
      return absl::UnimplementedError(absl::StrCat(path, ": the GGUF would not compute what the model computes:\n  ",
                                                   absl::StrJoin(diffs, "\n  ")));
    }
  }

  // The tensors, in the name table's order (model-level rows, then layer by layer).
  ExportReport report;
  std::set<std::string> exported;
  std::set<std::string> projections;
  for (const std::string& name : model.LinearNames()) projections.insert(name + ".weight");
  const io::GgmlType weight_type = WeightType(options.type);
  const auto add = [&](const model::WeightName& row, const std::string& hf, const std::string& gguf,
                       int64_t layer) -> absl::Status {
    std::vector<int64_t> shape;
    std::function<at::Tensor()> get;
    if (projections.count(hf)) {
      std::shared_ptr<model::Linear> layer = model.linear(hf.substr(0, hf.size() - 7));
      if (layer == nullptr) return absl::InternalError(absl::StrCat(hf, ": no such projection"));
      shape = {layer->out_features(), layer->in_features()};
      get = [layer] { return layer->DenseWeight(at::kFloat); };
    } else {
      const int64_t index = model.FindParameter(hf);
      if (index < 0) return absl::InternalError(absl::StrCat(hf, ": not in the model"));
      const at::Tensor t = model.named_parameters()[index].second;
      shape = t.sizes().vec();
      get = [t] { return t; };
    }
    io::GgmlType type = shape.size() >= 2 ? weight_type : io::GgmlType::kF32;
    if (options.type == ExportType::kQ4_K_M && shape.size() >= 2) {
      type = Q4KMType(gguf, shape.back(), layer, text.num_hidden_layers, spec.tied_embeddings);
    }
    // llama.cpp's converter: a quantized type whose blocks do not fit the rows falls back to F16.
    if ((type == io::GgmlType::kQ8_0 || type == io::GgmlType::kQ4_0) && shape.back() % 32 != 0) type = io::GgmlType::kF16;
    const double offset = model::IsNormRole(row.role) ? spec.gguf_norm_offset : 0.0;
    report.by_type[std::string(io::GgmlTypeName(type))] += 1;
    report.tensors += 1;
    exported.insert(hf);
    return w.AddTensorFrom(gguf, type, shape, [get, type, shape, offset]() -> absl::StatusOr<std::vector<uint8_t>> {
      try {
        at::NoGradGuard no_grad;
        at::Tensor t = get().detach().to(at::kCPU).to(at::kFloat).contiguous();
        if (offset != 0.0) t = t + offset;  // llama.cpp stores Gemma's norms as 1 + w
        return io::EncodeGgufTensor(type, shape, absl::MakeConstSpan(t.data_ptr<float>(), t.numel()));
      } catch (...) {
        return StatusFromCurrentException("export");
      }
    });
  };
  for (const model::WeightName& row : spec.weights) {
    if (row.role == Role::kLmHead && spec.tied_embeddings) continue;
    if (absl::StrContains(row.hf, "{i}")) continue;
    LLMTRAIN_RETURN_IF_ERROR(add(row, row.hf, row.gguf, -1));
  }
  for (int64_t i = 0; i < text.num_hidden_layers; ++i) {
    for (const model::WeightName& row : spec.weights) {
      if (!absl::StrContains(row.hf, "{i}")) continue;
      const std::string n = absl::StrCat(i);
      LLMTRAIN_RETURN_IF_ERROR(
          add(row, absl::StrReplaceAll(row.hf, {{"{i}", n}}), absl::StrReplaceAll(row.gguf, {{"{i}", n}}), i));
    }
  }
  // Everything else must be the vision tower's (llama.cpp writes it to a separate mmproj file).
  for (const auto& [name, t] : model.named_parameters()) {
    if (exported.count(name)) continue;
    if (absl::StartsWith(name, "model.vision_tower.") || absl::StartsWith(name, "model.multi_modal_projector.")) {
      ++report.skipped_vision;
      continue;
    }
    return absl::InternalError(absl::StrCat(name, ": a tensor of the model with no GGUF name"));
  }
  for (const std::string& name : projections) {
    if (!exported.count(name) && absl::StartsWith(name, "model.vision_tower.")) ++report.skipped_vision;
  }
  LLMTRAIN_RETURN_IF_ERROR(w.Write(path));
  struct stat st;
  if (stat(path.c_str(), &st) == 0) report.bytes = static_cast<uint64_t>(st.st_size);
  return report;
}

absl::StatusOr<ExportReport> ExportLoraGguf(const model::Decoder& model, absl::string_view path_view,
                                            const ExportOptions& options) {
  const std::string path(path_view);
  const auto adapters = lora::Adapters(model);
  if (adapters.empty()) return absl::FailedPreconditionError("the model has no LoRA adapters to export");
  if (options.type == ExportType::kQ4_0 || options.type == ExportType::kQ4_K_M) {
    return absl::InvalidArgumentError(absl::StrCat("--type ", ExportTypeName(options.type),
                                                   ": an adapter GGUF is f32, f16, bf16 or q8_0 (llama.cpp's converter)"));
  }
  const io::TextConfig& text = model.config().text;
  const io::FamilyInfo* family = io::FindFamily(text.model_type);
  if (family == nullptr || family->gguf_architecture.empty()) {
    return absl::UnimplementedError(absl::StrCat("model_type \"", text.model_type, "\" has no GGUF architecture"));
  }
  const model::FamilySpec& spec = model.spec();
  // HF weight name → GGUF name, from the family's name table.
  std::map<std::string, std::string> gguf_names;
  for (const model::WeightName& row : spec.weights) {
    if (!absl::StrContains(row.hf, "{i}")) continue;
    for (int64_t i = 0; i < text.num_hidden_layers; ++i) {
      const std::string n = absl::StrCat(i);
      gguf_names[absl::StrReplaceAll(row.hf, {{"{i}", n}})] = absl::StrReplaceAll(row.gguf, {{"{i}", n}});
    }
  }
  // llama.cpp scales every adapter tensor by alpha / r (r from its shape): one alpha must give
  // each adapter its own scaling.
  const double alpha = adapters.front().second->scaling() * static_cast<double>(adapters.front().second->r());
  for (const auto& [name, layer] : adapters) {
    if (layer->kind() == "dora") {
      return absl::UnimplementedError(absl::StrCat(name, ": a DoRA adapter (llama.cpp's LoRA has no magnitude vector)"));
    }
    if (layer->merged()) return absl::FailedPreconditionError(absl::StrCat(name, ": the adapter is merged"));
    if (!gguf_names.count(name + ".weight")) {
      return absl::UnimplementedError(absl::StrCat(name, ": an adapter outside the decoder's projections (llama.cpp "
                                                   "loads no adapter for the vision tower)"));
    }
    const double a = layer->scaling() * static_cast<double>(layer->r());
    if (std::abs(a - alpha) > 1e-9 * std::abs(alpha)) {
      return absl::UnimplementedError(absl::StrCat(
          name, ": its scaling × r is ", a, ", another adapter's ", alpha,
          ": llama.cpp applies one alpha to every adapter tensor (alpha / r)"));
    }
  }
  io::GgufWriter w;
  w.AddString("general.architecture", family->gguf_architecture);
  w.AddString("general.type", "adapter");
  if (!options.name.empty()) w.AddString("general.name", options.name);
  w.AddString("adapter.type", "lora");
  w.Add("adapter.lora.alpha", Scalar(io::GgufValueType::kFloat32, alpha));
  for (auto& [key, value] : ArchitectureKeys(family->gguf_architecture, text)) w.Add(key, value);
  w.AddUint32("general.file_type", FileType(options.type));
  if (options.type == ExportType::kQ8_0) w.AddUint32("general.quantization_version", 2);
  ExportReport report;
  const io::GgmlType want = WeightType(options.type);
  for (const auto& [name, layer] : adapters) {
    const std::string base = gguf_names.at(name + ".weight");
    for (const bool is_a : {true, false}) {
      const at::Tensor t = is_a ? layer->lora_A() : layer->lora_B();
      const std::vector<int64_t> shape = t.sizes().vec();
      io::GgmlType type = want;
      if (type == io::GgmlType::kQ8_0 && shape.back() % 32 != 0) type = io::GgmlType::kF16;
      report.by_type[std::string(io::GgmlTypeName(type))] += 1;
      report.tensors += 1;
      LLMTRAIN_RETURN_IF_ERROR(w.AddTensorFrom(
          base + (is_a ? ".lora_a" : ".lora_b"), type, shape, [t, type, shape]() -> absl::StatusOr<std::vector<uint8_t>> {
            try {
              at::NoGradGuard no_grad;
              const at::Tensor v = t.detach().to(at::kCPU).to(at::kFloat).contiguous();
              return io::EncodeGgufTensor(type, shape, absl::MakeConstSpan(v.data_ptr<float>(), v.numel()));
            } catch (...) {
              return StatusFromCurrentException("export");
            }
          }));
    }
  }
  LLMTRAIN_RETURN_IF_ERROR(w.Write(path));
  struct stat st;
  if (stat(path.c_str(), &st) == 0) report.bytes = static_cast<uint64_t>(st.st_size);
  return report;
}

}  // namespace llmtrain::serve
