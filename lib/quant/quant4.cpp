// NF4/FP4 quantization as bitsandbytes 0.50.2 computes it on CPU (docs/bitsandbytes-cpu.md). Each
// float operation below is the one bitsandbytes rounds, in the same order, so the bytes agree.
#include "llmtrain/quant/quant4.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <array>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "llmtrain/core/status.h"

namespace llmtrain::quant {
namespace {

constexpr std::array<float, 16> kNf4 = {
    -1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
    -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,
    0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f, 0.33791524171829224f,
    0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f};
// FP4 before the division by 12 (index 8 is +0: the table's "-0" is an integer in bitsandbytes).
constexpr std::array<float, 16> kFp4Times12 = {0.0f,  0.0625f,  8.0f,  12.0f,  4.0f,  6.0f,  2.0f,  3.0f,
                                               0.0f, -0.0625f, -8.0f, -12.0f, -4.0f, -6.0f, -2.0f, -3.0f};
// torch.argsort of the FP4 table: sorted position → nibble.
constexpr std::array<uint8_t, 16> kFp4Order = {11, 10, 13, 12, 15, 14, 9, 0, 8, 1, 6, 7, 4, 5, 2, 3};

std::array<float, 16> Table(QuantType type) {
  if (type == QuantType::kNf4) return kNf4;
  std::array<float, 16> t{};
  for (int i = 0; i < 16; ++i) t[i] = kFp4Times12[i] / 12.0f;
  return t;
}

// The nibble of a scaled value: bucketize over the midpoints of the sorted table (the count of
// midpoints strictly below s, so an exact midpoint goes to the lower code; NaN to the last).
struct Bucketizer {
  std::array<float, 15> bounds;
  std::array<uint8_t, 16> nibble_of_sorted;
  explicit Bucketizer(QuantType type) {
    const auto code = Table(type);
    std::array<float, 16> sorted{};
    for (int i = 0; i < 16; ++i) {
      nibble_of_sorted[i] = type == QuantType::kNf4 ? static_cast<uint8_t>(i) : kFp4Order[i];
      sorted[i] = code[nibble_of_sorted[i]];
    }
    for (int i = 0; i < 15; ++i) bounds[i] = (sorted[i] + sorted[i + 1]) / 2.0f;
  }
  uint8_t operator()(float s) const {
    if (std::isnan(s)) return nibble_of_sorted[15];
    int n = 0;
    while (n < 15 && bounds[n] < s) ++n;
    return nibble_of_sorted[n];
  }
};

float Clamp1(float v) {
  if (std::isnan(v)) return v;
  return std::min(std::max(v, -1.0f), 1.0f);
}

// max |x| over a block, NaN if any element is NaN (torch's max propagates NaN).
float AbsMax(const float* x, int64_t n) {
  float m = 0.0f;
  for (int64_t i = 0; i < n; ++i) {
    const float a = std::fabs(x[i]);
    if (std::isnan(a)) return a;
    m = std::max(m, a);
  }
  return m;
}

// bitsandbytes' 8-bit blockwise quantization on CPU (its C kernel): a 65536-entry table from a
// rounded position in [-1, 1] to the code whose midpoints bracket it.
void QuantizeBlockwise8(const std::vector<float>& x, const at::Tensor& code, int64_t blocksize,
                        std::vector<uint8_t>* q, std::vector<float>* absmax) {
  const float* c = code.data_ptr<float>();
  std::array<float, 255> mid{};
  for (int k = 0; k < 255; ++k) mid[k] = (c[k] + c[k + 1]) * 0.5f;
  // The count of midpoints below each position: a binary search where they are sorted (the
  // dynamic map is), a scan otherwise.
  const bool sorted = std::is_sorted(mid.begin(), mid.end());
  std::vector<uint8_t> lut(65536);
  for (int i = 0; i < 65536; ++i) {
    const float val = static_cast<float>(i + i) / 65535.0f - 1.0f;
    int count = 0;
    if (sorted) {
      count = static_cast<int>(std::lower_bound(mid.begin(), mid.end(), val) - mid.begin());
    } else {
      while (count < 255 && mid[count] < val) ++count;
    }
    lut[i] = static_cast<uint8_t>(count);
  }
  const auto n = static_cast<int64_t>(x.size());
  const int64_t blocks = (n + blocksize - 1) / blocksize;
  q->assign(static_cast<size_t>(n), 0);
  absmax->assign(static_cast<size_t>(blocks), 0.0f);
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t begin = b * blocksize, end = std::min(n, begin + blocksize);
    const float am = std::max(0.0f, AbsMax(x.data() + begin, end - begin));
    (*absmax)[b] = am;
    if (am == 0.0f) continue;
    const float inv = 1.0f / am;
    for (int64_t i = begin; i < end; ++i) {
      const float v = Clamp1(x[i] * inv);
      const float t = (v + 1.0f) * 0.5f;
      if (std::isnan(t)) continue;  // index 0
      const auto idx = static_cast<int64_t>(std::trunc(std::fmaf(t, 65535.0f, 0.5f))) & 0xFFFF;
      (*q)[i] = lut[idx];
    }
  }
}

}  // namespace

absl::string_view QuantTypeName(QuantType type) { return type == QuantType::kNf4 ? "nf4" : "fp4"; }

at::Tensor CodeTable(QuantType type) {
  const auto t = Table(type);
  return at::tensor(at::ArrayRef<float>(t.data(), t.size()), at::kFloat);
}

at::Tensor DynamicMap() {
  // create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8), with the same float32
  // tensor operations (linspace, midpoints, scaling) so every value rounds the same way.
  std::vector<float> data;
  for (int i = 0; i < 7; ++i) {
    const int64_t fraction_items = (int64_t{1} << i) + 1;
    const at::Tensor boundaries = at::linspace(0.1, 1.0, fraction_items, at::TensorOptions().dtype(at::kFloat));
    const at::Tensor means = (boundaries.slice(0, 0, -1) + boundaries.slice(0, 1)) / 2.0;
    const double scale = std::pow(10.0, -6 + i);
    for (const double sign : {1.0, -1.0}) {
      const at::Tensor scaled = (i == 6 ? means * (sign > 0 ? 1 : -1) : means * (sign * scale)).contiguous();
      const float* p = scaled.data_ptr<float>();
      data.insert(data.end(), p, p + scaled.numel());
    }
  }
  data.push_back(0.0f);
  data.push_back(1.0f);
  data.resize(256, 0.0f);
  std::stable_sort(data.begin(), data.end());
  return at::tensor(data, at::kFloat);
}

absl::Status Validate(const Quant4Options& options) {
  static constexpr std::array<int64_t, 8> kBlocksizes = {32, 64, 128, 256, 512, 1024, 2048, 4096};
  if (std::find(kBlocksizes.begin(), kBlocksizes.end(), options.blocksize) == kBlocksizes.end()) {
    return absl::InvalidArgumentError(absl::StrCat("Quant4Options.blocksize: ", options.blocksize,
                                                   " is not one of 32, 64, 128, 256, 512, 1024, 2048, 4096"));
  }
  return absl::OkStatus();
}

namespace {

absl::Status CheckWeightDtype(c10::ScalarType dtype) {
  if (dtype != at::kFloat && dtype != at::kHalf && dtype != at::kBFloat16) {
    return absl::InvalidArgumentError(absl::StrCat("4-bit quantization takes float32, float16 or bfloat16, not ",
                                                   c10::toString(dtype)));
  }
  return absl::OkStatus();
}

// The scale of block b of an n-element weight, from its values v (v[0] is the block's first
// element): full blocks keep their absolute maximum, the partial last block its clamped one.
constexpr float kTiny = 1e-38f;
float BlockScale(const float* v, int64_t b, int64_t n, int64_t bs) {
  const int64_t begin = b * bs, end = std::min(n, begin + bs);
  const float am = AbsMax(v, end - begin);
  return end - begin == bs ? am : std::max(am, kTiny);
}

// Packs bytes [byte_begin, byte_end) of the weight: x holds elements [2 byte_begin, ...) as
// float32, absmax every block's scale. Full blocks multiply by the reciprocal of the scale, the
// partial last block divides; an odd element count pads the last byte with the code of 0.
void PackBytes(const float* x, const float* absmax, int64_t n, const Quant4Options& options, int64_t byte_begin,
               int64_t byte_end, uint8_t* packed) {
  const int64_t bs = options.blocksize, full = n / bs * bs;
  const Bucketizer bucket(options.type);
  int64_t block = -1;
  float reciprocal = 0.0f;
  const auto nibble = [&](int64_t i) -> uint8_t {
    if (i >= n) return bucket(0.0f);
    const float v = x[i - 2 * byte_begin];
    if (i >= full) return bucket(Clamp1(v / absmax[i / bs]));
    if (i / bs != block) {
      block = i / bs;
      reciprocal = 1.0f / std::max(absmax[block], kTiny);
    }
    return bucket(Clamp1(v * reciprocal));
  };
  for (int64_t j = byte_begin; j < byte_end; ++j) {
    const uint8_t high = nibble(2 * j);
    packed[j] = static_cast<uint8_t>((high << 4) | nibble(2 * j + 1));
  }
}

// The tensors of a quantized weight of `shape`, unfilled.
Quantized4 EmptyQuantized(const std::vector<int64_t>& shape, c10::ScalarType dtype, const Quant4Options& options) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  const int64_t blocks = (n + options.blocksize - 1) / options.blocksize;
  Quantized4 out;
  out.packed = at::empty({(n + 1) / 2, 1}, at::kByte);
  Quant4State& s = out.state;
  s.type = options.type;
  s.blocksize = options.blocksize;
  s.shape = shape;
  s.dtype = dtype;
  s.code = CodeTable(options.type);
  if (!options.double_quant) {
    s.absmax = at::empty({blocks}, at::kFloat);
    return out;
  }
  s.nested = true;
  s.absmax = at::empty({blocks}, at::kByte);
  s.nested_code = DynamicMap();
  s.nested_absmax = at::empty({(blocks + s.nested_blocksize - 1) / s.nested_blocksize}, at::kFloat);
  return out;
}

// Fills the state's block scales from the float32 scales of every block: stored as they are, or
// with double quantization minus their mean (ATen's own reduction, as bitsandbytes calls it) as
// 8-bit codes of the dynamic map in blocks of 256.
void FinishState(const std::vector<float>& absmax, Quant4State* s) {
  if (!s->nested) {
    std::copy(absmax.begin(), absmax.end(), s->absmax.data_ptr<float>());
    return;
  }
  const at::Tensor scales = at::tensor(absmax, at::kFloat);
  s->offset = scales.mean().item<float>();
  std::vector<float> centered(absmax.size());
  for (size_t i = 0; i < absmax.size(); ++i) centered[i] = absmax[i] - s->offset;
  std::vector<uint8_t> q;
  std::vector<float> nested_absmax;
  QuantizeBlockwise8(centered, s->nested_code, s->nested_blocksize, &q, &nested_absmax);
  std::copy(q.begin(), q.end(), s->absmax.data_ptr<uint8_t>());
  std::copy(nested_absmax.begin(), nested_absmax.end(), s->nested_absmax.data_ptr<float>());
}

}  // namespace

absl::StatusOr<Quantized4> Quantize4bit(const at::Tensor& weight, const Quant4Options& options) {
  if (absl::Status valid = Validate(options); !valid.ok()) return valid;
  if (absl::Status dtype = CheckWeightDtype(weight.scalar_type()); !dtype.ok()) return dtype;
  if (!weight.device().is_cpu()) return absl::InvalidArgumentError("Quantize4bit: the tensor must be on the CPU");
  const at::Tensor x = weight.contiguous().reshape({-1}).to(at::kFloat);  // exact up-cast
  const float* v = x.data_ptr<float>();
  const int64_t n = x.numel(), bs = options.blocksize;
  Quantized4 out = EmptyQuantized(weight.sizes().vec(), weight.scalar_type(), options);
  std::vector<float> absmax(static_cast<size_t>((n + bs - 1) / bs));
  for (int64_t b = 0; b < static_cast<int64_t>(absmax.size()); ++b) absmax[b] = BlockScale(v + b * bs, b, n, bs);
  PackBytes(v, absmax.data(), n, options, 0, (n + 1) / 2, out.packed.data_ptr<uint8_t>());
  FinishState(absmax, &out.state);
  return out;
}

Quantized4 Quantize4bitLayout(const std::vector<int64_t>& shape, c10::ScalarType dtype, const Quant4Options& options) {
  return EmptyQuantized(shape, dtype, options);
}

namespace {

int64_t Elements(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

// Elements [begin, end) through `read`, as float32 (an exact up-cast), checked for their count.
absl::StatusOr<at::Tensor> ReadFloats(const WeightElements& read, int64_t begin, int64_t end) {
  auto values = read(begin, end);
  if (!values.ok()) return values.status();
  if (values->numel() != end - begin) {
    return absl::InternalError(absl::StrCat("Quantize4bitShare: elements [", begin, ", ", end, ") read as ",
                                            values->numel(), " values"));
  }
  return values->contiguous().reshape({-1}).to(at::kFloat);
}

}  // namespace

absl::StatusOr<Quant4ShareWork> BeginQuantize4bitShare(const std::vector<int64_t>& shape, c10::ScalarType dtype,
                                                       const Quant4Options& options, const Quant4Share& share,
                                                       WeightElements read) {
  if (absl::Status valid = Validate(options); !valid.ok()) return valid;
  if (absl::Status valid = CheckWeightDtype(dtype); !valid.ok()) return valid;
  const int64_t elements = Elements(shape), bs = options.blocksize;
  const int64_t bytes = (elements + 1) / 2, blocks = (elements + bs - 1) / bs;
  if (share.kept_begin < 0 || share.kept_begin > share.kept_end || share.kept_end > bytes ||
      share.owned_begin < share.kept_begin || share.owned_begin > share.owned_end || share.owned_end > share.kept_end) {
    return absl::InvalidArgumentError(absl::StrCat("Quantize4bitShare: bytes [", share.kept_begin, ", ", share.kept_end,
                                                   ") kept and [", share.owned_begin, ", ", share.owned_end,
                                                   ") owned do not fit in ", bytes, " packed bytes"));
  }
  Quant4ShareWork work;
  work.shape = shape;
  work.dtype = dtype;
  work.options = options;
  work.share = share;
  work.read = std::move(read);
  work.scales = at::zeros({blocks}, at::kFloat);
  // The blocks whose first element lies in the owned bytes: their scales are computed here.
  const int64_t first = (2 * share.owned_begin + bs - 1) / bs;
  const int64_t end = std::min(blocks, (2 * share.owned_end + bs - 1) / bs);
  if (first < end) {
    LLMTRAIN_ASSIGN_OR_RETURN(const at::Tensor x, ReadFloats(work.read, first * bs, std::min(elements, end * bs)));
    float* a = work.scales.data_ptr<float>();
    for (int64_t b = first; b < end; ++b) a[b] = BlockScale(x.data_ptr<float>() + (b - first) * bs, b, elements, bs);
  }
  return work;
}

absl::StatusOr<Quantized4> FinishQuantize4bitShare(const Quant4ShareWork& work) {
  const int64_t elements = Elements(work.shape), blocks = work.scales.numel();
  if (!work.scales.is_cpu() || work.scales.scalar_type() != at::kFloat || !work.scales.is_contiguous() ||
      blocks != (elements + work.options.blocksize - 1) / work.options.blocksize) {
    return absl::InvalidArgumentError("FinishQuantize4bitShare: the scales are not Begin's float32 CPU tensor");
  }
  Quantized4 out = EmptyQuantized(work.shape, work.dtype, work.options);
  const Quant4Share& share = work.share;
  if (share.kept_begin < share.kept_end) {  // then 2 kept_begin < elements
    LLMTRAIN_ASSIGN_OR_RETURN(
        const at::Tensor x, ReadFloats(work.read, 2 * share.kept_begin, std::min(elements, 2 * share.kept_end)));
    PackBytes(x.data_ptr<float>(), work.scales.data_ptr<float>(), elements, work.options, share.kept_begin,
              share.kept_end, out.packed.data_ptr<uint8_t>());
  }
  const float* all = work.scales.data_ptr<float>();
  FinishState(std::vector<float>(all, all + blocks), &out.state);
  return out;
}

absl::StatusOr<Quantized4> Quantize4bitShare(const std::vector<int64_t>& shape, c10::ScalarType dtype,
                                             const Quant4Options& options, const Quant4Share& share,
                                             const WeightElements& read, const SumOverProcesses& sum) {
  LLMTRAIN_ASSIGN_OR_RETURN(Quant4ShareWork work, BeginQuantize4bitShare(shape, dtype, options, share, read));
  // Every block's scale is computed by exactly one process (the owned ranges partition the
  // bytes), the others add +0: the sum is exact.
  LLMTRAIN_RETURN_IF_ERROR(sum(work.scales));
  return FinishQuantize4bitShare(work);
}

at::Tensor BlockScales(const Quant4State& state) {
  // On the CPU, wherever the state lives (a model moved to a GPU keeps it there).
  if (!state.nested) return state.absmax.to(at::kCPU, at::kFloat).contiguous();
  const at::Tensor q = state.absmax.cpu().contiguous();
  const at::Tensor code = state.nested_code.to(at::kCPU, at::kFloat).contiguous();
  const at::Tensor nested = state.nested_absmax.to(at::kCPU, at::kFloat).contiguous();
  at::Tensor out = at::empty({q.numel()}, at::kFloat);
  const uint8_t* qp = q.data_ptr<uint8_t>();
  const float* cp = code.data_ptr<float>();
  const float* np = nested.data_ptr<float>();
  float* op = out.data_ptr<float>();
  for (int64_t i = 0; i < q.numel(); ++i) {
    const float scale = cp[qp[i]] * np[i / state.nested_blocksize];
    op[i] = scale + state.offset;
  }
  return out;
}

at::Tensor Dequantize4bit(const Quantized4& quantized) {
  const Quant4State& s = quantized.state;
  int64_t n = 1;
  for (int64_t d : s.shape) n *= d;
  const at::Tensor scales = BlockScales(s);
  const at::Tensor code = s.code.to(at::kCPU, at::kFloat).contiguous();
  const at::Tensor packed = quantized.packed.cpu().contiguous();
  at::Tensor out = at::empty({n}, at::kFloat);
  const uint8_t* p = packed.data_ptr<uint8_t>();
  const float* c = code.data_ptr<float>();
  const float* a = scales.data_ptr<float>();
  float* o = out.data_ptr<float>();
  for (int64_t i = 0; i < n; ++i) {
    const uint8_t byte = p[i / 2];
    const uint8_t nibble = i % 2 == 0 ? byte >> 4 : byte & 0x0F;
    o[i] = c[nibble] * a[i / s.blocksize];
  }
  return out.to(s.dtype).reshape(s.shape);
}

}  // namespace llmtrain::quant
