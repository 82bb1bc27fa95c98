// bitsandbytes' saved 4-bit weights (quant/bnb_format.h): the key set and the JSON quant state
// as transformers 5.23 + bitsandbytes 0.50 write them (docs/bitsandbytes-cpu.md §5).
#include "llmtrain/quant/bnb_format.h"

#include <ATen/ATen.h>

#include <charconv>
#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "llmtrain/core/status.h"
#include "nlohmann/json.hpp"

namespace llmtrain::quant {
namespace {

// torch dtype names as str(dtype).strip("torch.") writes them.
const char* TorchDtypeName(c10::ScalarType t) {
  switch (t) {
    case c10::kBFloat16: return "bfloat16";
    case c10::kHalf: return "float16";
    default: return "float32";
  }
}

absl::StatusOr<c10::ScalarType> ParseTorchDtype(const std::string& name, const std::string& key) {
  if (name == "bfloat16") return c10::kBFloat16;
  if (name == "float16") return c10::kHalf;
  if (name == "float32") return c10::kFloat;
  return absl::InvalidArgumentError(absl::StrCat(key, ": dtype \"", name,
                                                 "\" is not float32, bfloat16 or float16"));
}

// repr() of a Python float: the shortest digits that round-trip, in fixed notation when the
// decimal exponent is in [-4, 16), else as d.ddde±XX; a fixed integral value keeps ".0".
std::string PythonFloatRepr(double v) {
  if (v == 0.0) return std::signbit(v) ? "-0.0" : "0.0";
  char buf[64];
  const auto [end, ec] = std::to_chars(buf, buf + sizeof(buf), v, std::chars_format::scientific);
  std::string sci(buf, end);  // e.g. "-2.629085183143616e-01"
  const size_t e = sci.find('e');
  const int exponent = std::stoi(sci.substr(e + 1));
  std::string sign;
  std::string mantissa = sci.substr(0, e);
  if (mantissa[0] == '-') {
    sign = "-";
    mantissa = mantissa.substr(1);
  }
  std::string digits;
  for (char c : mantissa) {
    if (c != '.') digits += c;
  }
  if (exponent < -4 || exponent >= 16) {
    std::string out = sign + digits.substr(0, 1);
    if (digits.size() > 1) out += "." + digits.substr(1);
    const int a = std::abs(exponent);
    return absl::StrCat(out, "e", exponent < 0 ? "-" : "+", a < 10 ? "0" : "", a);
  }
  if (exponent < 0) return absl::StrCat(sign, "0.", std::string(-exponent - 1, '0'), digits);
  if (static_cast<int>(digits.size()) <= exponent + 1) {
    return absl::StrCat(sign, digits, std::string(exponent + 1 - digits.size(), '0'), ".0");
  }
  return absl::StrCat(sign, digits.substr(0, exponent + 1), ".", digits.substr(exponent + 1));
}

bool KnownBlocksize(int64_t b) {
  for (int64_t ok : {32, 64, 128, 256, 512, 1024, 2048, 4096}) {
    if (b == ok) return true;
  }
  return false;
}

}  // namespace

std::string BnbQuantStateKey(absl::string_view prefix, QuantType type) {
  return absl::StrCat(prefix, ".quant_state.bitsandbytes__", QuantTypeName(type));
}

std::vector<std::pair<std::string, at::Tensor>> ToBnbTensors(absl::string_view prefix, const Quantized4& q) {
  const Quant4State& s = q.state;
  std::vector<std::pair<std::string, at::Tensor>> out;
  out.emplace_back(std::string(prefix), q.packed);
  out.emplace_back(absl::StrCat(prefix, ".absmax"), s.absmax);
  out.emplace_back(absl::StrCat(prefix, ".quant_map"), s.code.to(at::kFloat));
  // Byte for byte what QuantState.as_dict + json.dumps write: keys in this order, ", " and ": "
  // separators, the offset as Python's shortest repr of the float32 widened to double.
  std::string text = absl::StrCat("{\"quant_type\": \"", QuantTypeName(s.type), "\", \"blocksize\": ", s.blocksize,
                                  ", \"dtype\": \"", TorchDtypeName(s.dtype), "\", \"shape\": [",
                                  absl::StrJoin(s.shape, ", "), "]");
  if (s.nested) {
    out.emplace_back(absl::StrCat(prefix, ".nested_absmax"), s.nested_absmax.to(at::kFloat));
    out.emplace_back(absl::StrCat(prefix, ".nested_quant_map"), s.nested_code.to(at::kFloat));
    absl::StrAppend(&text, ", \"nested_blocksize\": ", s.nested_blocksize, ", \"nested_dtype\": \"float32\"",
                    ", \"nested_offset\": ", PythonFloatRepr(s.offset));
  }
  text += "}";
  at::Tensor bytes = at::empty({static_cast<int64_t>(text.size())}, at::kByte);
  std::memcpy(bytes.data_ptr(), text.data(), text.size());
  out.emplace_back(BnbQuantStateKey(prefix, s.type), bytes);
  return out;
}

bool IsBnbQuantized(absl::string_view prefix, const std::function<bool(const std::string&)>& has) {
  return has(BnbQuantStateKey(prefix, QuantType::kNf4)) || has(BnbQuantStateKey(prefix, QuantType::kFp4));
}

absl::StatusOr<Quantized4> FromBnbTensors(
    absl::string_view prefix, const std::function<absl::StatusOr<at::Tensor>(const std::string&)>& get) {
  Quantized4 q;
  Quant4State& s = q.state;
  std::string state_key = BnbQuantStateKey(prefix, QuantType::kNf4);
  auto state_tensor = get(state_key);
  s.type = QuantType::kNf4;
  if (!state_tensor.ok()) {
    state_key = BnbQuantStateKey(prefix, QuantType::kFp4);
    state_tensor = get(state_key);
    s.type = QuantType::kFp4;
  }
  if (!state_tensor.ok()) {
    return absl::NotFoundError(absl::StrCat(prefix, ": no quant_state.bitsandbytes__nf4/__fp4 tensor"));
  }
  const at::Tensor raw = state_tensor->contiguous();
  if (raw.scalar_type() != at::kByte || raw.dim() != 1) {
    return absl::InvalidArgumentError(absl::StrCat(state_key, ": expected a 1-D uint8 tensor of JSON bytes"));
  }
  const std::string text(static_cast<const char*>(raw.data_ptr()), static_cast<size_t>(raw.numel()));
  const nlohmann::json state = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (!state.is_object()) return absl::InvalidArgumentError(absl::StrCat(state_key, ": not a JSON object"));
  const auto field = [&](const char* name) -> const nlohmann::json* {
    const auto it = state.find(name);
    return it == state.end() ? nullptr : &*it;
  };
  const nlohmann::json* quant_type = field("quant_type");
  if (quant_type == nullptr || !quant_type->is_string() ||
      quant_type->get<std::string>() != QuantTypeName(s.type)) {
    return absl::InvalidArgumentError(absl::StrCat(state_key, ": quant_type must be \"", QuantTypeName(s.type), "\""));
  }
  const nlohmann::json* blocksize = field("blocksize");
  if (blocksize == nullptr || !blocksize->is_number_integer() || !KnownBlocksize(blocksize->get<int64_t>())) {
    return absl::InvalidArgumentError(absl::StrCat(state_key, ": blocksize must be one of 32 … 4096"));
  }
  s.blocksize = blocksize->get<int64_t>();
  const nlohmann::json* dtype = field("dtype");
  if (dtype == nullptr || !dtype->is_string()) {
    return absl::InvalidArgumentError(absl::StrCat(state_key, ": missing dtype"));
  }
  LLMTRAIN_ASSIGN_OR_RETURN(s.dtype, ParseTorchDtype(dtype->get<std::string>(), state_key));
  const nlohmann::json* shape = field("shape");
  if (shape == nullptr || !shape->is_array() || shape->empty()) {
    return absl::InvalidArgumentError(absl::StrCat(state_key, ": shape must be a list of sizes"));
  }
  int64_t n = 1;
  for (const auto& d : *shape) {
    if (!d.is_number_integer() || d.get<int64_t>() <= 0 || d.get<int64_t>() > (int64_t{1} << 40)) {
      return absl::InvalidArgumentError(absl::StrCat(state_key, ": shape holds a bad size"));
    }
    s.shape.push_back(d.get<int64_t>());
    n *= d.get<int64_t>();
    if (n > (int64_t{1} << 40)) return absl::InvalidArgumentError(absl::StrCat(state_key, ": shape too large"));
  }
  const int64_t n_blocks = (n + s.blocksize - 1) / s.blocksize;

  const std::string p(prefix);
  LLMTRAIN_ASSIGN_OR_RETURN(at::Tensor packed, get(p));
  if (packed.scalar_type() != at::kByte || packed.numel() != (n + 1) / 2) {
    return absl::InvalidArgumentError(absl::StrCat(p, ": expected ", (n + 1) / 2, " uint8 bytes for shape ",
                                                   shape->dump(), ", found ", packed.numel()));
  }
  q.packed = packed.reshape({(n + 1) / 2, 1});
  LLMTRAIN_ASSIGN_OR_RETURN(at::Tensor code, get(p + ".quant_map"));
  if (code.scalar_type() != at::kFloat || code.numel() != 16) {
    return absl::InvalidArgumentError(absl::StrCat(p, ".quant_map: expected 16 float32 codes"));
  }
  s.code = code.reshape({16});
  LLMTRAIN_ASSIGN_OR_RETURN(at::Tensor absmax, get(p + ".absmax"));
  s.nested = field("nested_offset") != nullptr;
  if (absmax.numel() != n_blocks || absmax.scalar_type() != (s.nested ? at::kByte : at::kFloat)) {
    return absl::InvalidArgumentError(absl::StrCat(
        p, ".absmax: expected ", n_blocks, s.nested ? " uint8 codes" : " float32 scales", " (",
        n, " elements in blocks of ", s.blocksize, "), found ", absmax.numel()));
  }
  s.absmax = absmax.reshape({n_blocks});
  if (s.nested) {
    const nlohmann::json* offset = field("nested_offset");
    const nlohmann::json* nested_blocksize = field("nested_blocksize");
    if (!offset->is_number() || nested_blocksize == nullptr || !nested_blocksize->is_number_integer() ||
        !KnownBlocksize(nested_blocksize->get<int64_t>())) {
      return absl::InvalidArgumentError(absl::StrCat(state_key, ": bad nested_offset or nested_blocksize"));
    }
    s.offset = offset->get<float>();
    s.nested_blocksize = nested_blocksize->get<int64_t>();
    LLMTRAIN_ASSIGN_OR_RETURN(at::Tensor nested, get(p + ".nested_absmax"));
    const int64_t n_nested = (n_blocks + s.nested_blocksize - 1) / s.nested_blocksize;
    if (nested.scalar_type() != at::kFloat || nested.numel() != n_nested) {
      return absl::InvalidArgumentError(absl::StrCat(p, ".nested_absmax: expected ", n_nested, " float32 values"));
    }
    s.nested_absmax = nested.reshape({n_nested});
    LLMTRAIN_ASSIGN_OR_RETURN(at::Tensor nested_code, get(p + ".nested_quant_map"));
    if (nested_code.scalar_type() != at::kFloat || nested_code.numel() != 256) {
      return absl::InvalidArgumentError(absl::StrCat(p, ".nested_quant_map: expected 256 float32 codes"));
    }
    s.nested_code = nested_code.reshape({256});
  }
  // Scales must be finite, or every value of their block is garbage.
  const at::Tensor scales = BlockScales(s);
  if (!at::isfinite(scales).all().item<bool>()) {
    return absl::InvalidArgumentError(absl::StrCat(p, ".absmax: block scales are not all finite"));
  }
  if (!at::isfinite(s.code).all().item<bool>()) {
    return absl::InvalidArgumentError(absl::StrCat(p, ".quant_map: codes are not all finite"));
  }
  return q;
}

std::string BnbQuantizationConfigJson(const Quant4Options& options, c10::ScalarType compute_dtype) {
  const nlohmann::json config = {
      {"_load_in_4bit", true},
      {"_load_in_8bit", false},
      {"bnb_4bit_compute_dtype", TorchDtypeName(compute_dtype)},
      {"bnb_4bit_quant_storage", "uint8"},
      {"bnb_4bit_quant_type", std::string(QuantTypeName(options.type))},
      {"bnb_4bit_use_double_quant", options.double_quant},
      {"llm_int8_enable_fp32_cpu_offload", false},
      {"llm_int8_has_fp16_weight", false},
      {"llm_int8_skip_modules", nullptr},
      {"llm_int8_threshold", 6.0},
      {"load_in_4bit", true},
      {"load_in_8bit", false},
      {"quant_method", "bitsandbytes"}};
  return config.dump();
}

}  // namespace llmtrain::quant
