// GGUF block dequantization on the CPU (formats.md §2.5), bit-identical to gguf-py's numpy code
// (gguf/quants.py): every product and sum is done in float32 in the same order, one rounding
// each. This file is compiled with -ffp-contract=off so no multiply-add gets fused.
// It is also the oracle the CUDA kernels (gguf_quants.cu) are tested against.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "core/half.h"
#include "io/gguf_quants_impl.h"
#include "llmtrain/core/threads.h"
#include "llmtrain/io/gguf.h"

namespace llmtrain::io {
namespace {

using ::llmtrain::detail::F16ToFloat;

inline float LoadHalf(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return F16ToFloat(h);
}

void BlockQ8_0(const uint8_t* b, float* y) {
  const float d = LoadHalf(b);
  const auto* qs = reinterpret_cast<const int8_t*>(b + 2);
  for (int j = 0; j < 32; ++j) y[j] = static_cast<float>(qs[j]) * d;
}

void BlockQ4_0(const uint8_t* b, float* y) {
  const float d = LoadHalf(b);
  const uint8_t* qs = b + 2;
  for (int j = 0; j < 16; ++j) {
    y[j] = d * static_cast<float>((qs[j] & 0x0f) - 8);
    y[j + 16] = d * static_cast<float>((qs[j] >> 4) - 8);
  }
}

void BlockQ4_1(const uint8_t* b, float* y) {
  const float d = LoadHalf(b);
  const float m = LoadHalf(b + 2);
  const uint8_t* qs = b + 4;
  for (int j = 0; j < 16; ++j) {
    y[j] = d * static_cast<float>(qs[j] & 0x0f) + m;
    y[j + 16] = d * static_cast<float>(qs[j] >> 4) + m;
  }
}

void BlockQ5_0(const uint8_t* b, float* y) {
  const float d = LoadHalf(b);
  uint32_t qh;
  std::memcpy(&qh, b + 2, 4);
  const uint8_t* qs = b + 6;
  for (int j = 0; j < 16; ++j) {
    const int lo = (qs[j] & 0x0f) | (((qh >> j) & 1) << 4);
    const int hi = (qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4);
    y[j] = d * static_cast<float>(lo - 16);
    y[j + 16] = d * static_cast<float>(hi - 16);
  }
}

void BlockQ5_1(const uint8_t* b, float* y) {
  const float d = LoadHalf(b);
  const float m = LoadHalf(b + 2);
  uint32_t qh;
  std::memcpy(&qh, b + 4, 4);
  const uint8_t* qs = b + 8;
  for (int j = 0; j < 16; ++j) {
    const int lo = (qs[j] & 0x0f) | (((qh >> j) & 1) << 4);
    const int hi = (qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4);
    y[j] = d * static_cast<float>(lo) + m;
    y[j + 16] = d * static_cast<float>(hi) + m;
  }
}

void BlockQ4_K(const uint8_t* b, float* y) {
  const float d = LoadHalf(b);
  const float dmin = LoadHalf(b + 2);
  uint8_t sc[8], mn[8];
  detail::UnpackKScales(b + 4, sc, mn);
  const uint8_t* qs = b + 16;
  for (int c = 0; c < 4; ++c) {
    // gguf-py: d * sc and dmin * m per sub-block first, then (d·sc)·q − dmin·m.
    const float d_lo = d * static_cast<float>(sc[2 * c]), m_lo = dmin * static_cast<float>(mn[2 * c]);
    const float d_hi = d * static_cast<float>(sc[2 * c + 1]);
    const float m_hi = dmin * static_cast<float>(mn[2 * c + 1]);
    for (int l = 0; l < 32; ++l) {
      y[64 * c + l] = d_lo * static_cast<float>(qs[32 * c + l] & 0x0f) - m_lo;
      y[64 * c + 32 + l] = d_hi * static_cast<float>(qs[32 * c + l] >> 4) - m_hi;
    }
  }
}

void BlockQ5_K(const uint8_t* b, float* y) {
  const float d = LoadHalf(b);
  const float dmin = LoadHalf(b + 2);
  uint8_t sc[8], mn[8];
  detail::UnpackKScales(b + 4, sc, mn);
  const uint8_t* qh = b + 16;
  const uint8_t* qs = b + 48;
  for (int c = 0; c < 4; ++c) {
    const float d_lo = d * static_cast<float>(sc[2 * c]), m_lo = dmin * static_cast<float>(mn[2 * c]);
    const float d_hi = d * static_cast<float>(sc[2 * c + 1]);
    const float m_hi = dmin * static_cast<float>(mn[2 * c + 1]);
    for (int l = 0; l < 32; ++l) {
      const int lo = (qs[32 * c + l] & 0x0f) | (((qh[l] >> (2 * c)) & 1) << 4);
      const int hi = (qs[32 * c + l] >> 4) | (((qh[l] >> (2 * c + 1)) & 1) << 4);
      y[64 * c + l] = d_lo * static_cast<float>(lo) - m_lo;
      y[64 * c + 32 + l] = d_hi * static_cast<float>(hi) - m_hi;
    }
  }
}

void BlockQ6_K(const uint8_t* b, float* y) {
  const uint8_t* ql = b;
  const uint8_t* qh = b + 128;
  const auto* scales = reinterpret_cast<const int8_t*>(b + 192);
  const float d = LoadHalf(b + 208);
  for (int h = 0; h < 2; ++h) {
    const uint8_t* L = ql + 64 * h;
    const uint8_t* H = qh + 32 * h;
    const int8_t* S = scales + 8 * h;
    float* Y = y + 128 * h;
    for (int l = 0; l < 32; ++l) {
      const int g = l / 16;
      const int q1 = ((L[l] & 0x0f) | (((H[l] >> 0) & 3) << 4)) - 32;
      const int q2 = ((L[l + 32] & 0x0f) | (((H[l] >> 2) & 3) << 4)) - 32;
      const int q3 = ((L[l] >> 4) | (((H[l] >> 4) & 3) << 4)) - 32;
      const int q4 = ((L[l + 32] >> 4) | (((H[l] >> 6) & 3) << 4)) - 32;
      // gguf-py: (d · scale) first, then · q.
      Y[l] = (d * static_cast<float>(S[g + 0])) * static_cast<float>(q1);
      Y[l + 32] = (d * static_cast<float>(S[g + 2])) * static_cast<float>(q2);
      Y[l + 64] = (d * static_cast<float>(S[g + 4])) * static_cast<float>(q3);
      Y[l + 96] = (d * static_cast<float>(S[g + 6])) * static_cast<float>(q4);
    }
  }
}

void BlockF32(const uint8_t* b, float* y) { std::memcpy(y, b, 4); }
void BlockF16(const uint8_t* b, float* y) { *y = LoadHalf(b); }
void BlockBF16(const uint8_t* b, float* y) {
  uint16_t h;
  std::memcpy(&h, b, 2);
  *y = ::llmtrain::detail::Bf16ToFloat(h);
}
void BlockF64(const uint8_t* b, float* y) {
  double v;
  std::memcpy(&v, b, 8);
  *y = static_cast<float>(v);
}
template <typename T>
void BlockInt(const uint8_t* b, float* y) {
  T v;
  std::memcpy(&v, b, sizeof(T));
  *y = static_cast<float>(v);
}

using BlockFn = void (*)(const uint8_t*, float*);

BlockFn FindBlockFn(GgmlType type) {
  switch (type) {
    case GgmlType::kF32: return BlockF32;
    case GgmlType::kF16: return BlockF16;
    case GgmlType::kBF16: return BlockBF16;
    case GgmlType::kF64: return BlockF64;
    case GgmlType::kI8: return BlockInt<int8_t>;
    case GgmlType::kI16: return BlockInt<int16_t>;
    case GgmlType::kI32: return BlockInt<int32_t>;
    case GgmlType::kI64: return BlockInt<int64_t>;
    case GgmlType::kQ8_0: return BlockQ8_0;
    case GgmlType::kQ4_0: return BlockQ4_0;
    case GgmlType::kQ4_1: return BlockQ4_1;
    case GgmlType::kQ5_0: return BlockQ5_0;
    case GgmlType::kQ5_1: return BlockQ5_1;
    case GgmlType::kQ4_K: return BlockQ4_K;
    case GgmlType::kQ5_K: return BlockQ5_K;
    case GgmlType::kQ6_K: return BlockQ6_K;
    default: return nullptr;
  }
}

}  // namespace

namespace detail {

void UnpackKScales(const uint8_t* s, uint8_t* sc, uint8_t* mn) {
  for (int j = 0; j < 4; ++j) {
    sc[j] = s[j] & 63;
    mn[j] = s[j + 4] & 63;
    sc[j + 4] = (s[j + 8] & 0x0f) | ((s[j] >> 6) << 4);
    mn[j + 4] = (s[j + 8] >> 4) | ((s[j + 4] >> 6) << 4);
  }
}

}  // namespace detail

bool CanDequantize(GgmlType type) { return FindBlockFn(type) != nullptr; }

absl::Status Dequantize(GgmlType type, absl::Span<const uint8_t> src, absl::Span<float> dst) {
  const BlockFn fn = FindBlockFn(type);
  const auto traits = GetGgmlTypeTraits(static_cast<uint32_t>(type));
  if (fn == nullptr || !traits) {
    return absl::UnimplementedError(
        absl::StrCat("dequantizing ", GgmlTypeName(type), " is not supported"));
  }
  const int64_t block_elems = traits->block_elems, block_bytes = traits->block_bytes;
  if (static_cast<int64_t>(dst.size()) % block_elems != 0 ||
      static_cast<int64_t>(src.size()) != static_cast<int64_t>(dst.size()) / block_elems * block_bytes) {
    return absl::InvalidArgumentError(absl::StrCat("dequantize ", traits->name, ": ", src.size(),
                                                   " bytes do not hold ", dst.size(), " elements"));
  }
  const int64_t n_blocks = static_cast<int64_t>(dst.size()) / block_elems;
  // ~64 KiB of output per chunk keeps the threads busy without a start-up cost on small tensors.
  ParallelFor(n_blocks, std::max<int64_t>(1, 16384 / block_elems), [&](int64_t begin, int64_t end) {
    const uint8_t* s = src.data() + begin * block_bytes;
    float* y = dst.data() + begin * block_elems;
    for (int64_t b = begin; b < end; ++b, s += block_bytes, y += block_elems) fn(s, y);
  });
  return absl::OkStatus();
}

absl::Status DequantizeTensor(const GgufFile& file, const GgufTensorInfo& tensor,
                              absl::Span<float> dst) {
  const absl::Status status = Dequantize(tensor.type, file.Data(tensor), dst);
  if (status.ok()) return status;
  return absl::Status(status.code(), absl::StrCat(file.path(), ": tensor \"", tensor.name, "\": ",
                                                  status.message()));
}

absl::StatusOr<std::vector<uint8_t>> QuantizeQ8_0(absl::Span<const float> values) {
  if (values.size() % 32 != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("Q8_0 needs a multiple of 32 values, found ", values.size()));
  }
  std::vector<uint8_t> out(values.size() / 32 * 34);
  for (size_t b = 0; b < values.size() / 32; ++b) {
    const float* x = values.data() + 32 * b;
    uint8_t* o = out.data() + 34 * b;
    float amax = 0.0f;
    for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(x[j]));
    // gguf-py: d = max|x| / 127 and id = 1 / d in float32; q = round-half-away(x · id).
    const float d = amax / 127.0f;
    const float id = d == 0.0f ? 0.0f : 1.0f / d;
    const uint16_t d16 = ::llmtrain::detail::FloatToF16(d);
    std::memcpy(o, &d16, 2);
    for (int j = 0; j < 32; ++j) {
      const float v = x[j] * id;
      const float a = std::fabs(v);
      const float fl = std::floor(a);
      const float r = fl + std::floor(2.0f * (a - fl));  // np_roundf: halves away from zero
      o[2 + j] = static_cast<uint8_t>(static_cast<int8_t>(v < 0 ? -r : r));
    }
  }
  return out;
}

}  // namespace llmtrain::io
