// GGUF block dequantization on the CPU (docs/formats.md §2.5), bit-identical to gguf-py's numpy
// code (gguf/quants.py): every product and sum is done in float32 in the same order, one
// rounding each. This file is compiled with -ffp-contract=off so no multiply-add gets fused.
// It is also the oracle the CUDA kernels (gguf_quants.cu) are tested against.
#include <algorithm>
#if defined(__x86_64__)
#include <immintrin.h>
#endif
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

// GCC/clang vector extensions: portable code that becomes ymm instructions in the AVX2 clone
// and pairs of xmm instructions in the baseline one. Each lane computes what gguf-py computes.
typedef float Float8 __attribute__((vector_size(32)));
typedef int8_t Int8x8 __attribute__((vector_size(8)));

inline float LoadHalf(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return F16ToFloat(h);
}

inline void BlockQ8_0(const uint8_t* b, float* y) {
  const float d = LoadHalf(b);
  const auto* qs = reinterpret_cast<const int8_t*>(b + 2);
  for (int j = 0; j < 32; ++j) y[j] = static_cast<float>(qs[j]) * d;
}

inline void BlockQ4_0(const uint8_t* b, float* y) {
  const float d = LoadHalf(b);
  const uint8_t* qs = b + 2;
  for (int j = 0; j < 16; ++j) {
    y[j] = d * static_cast<float>((qs[j] & 0x0f) - 8);
    y[j + 16] = d * static_cast<float>((qs[j] >> 4) - 8);
  }
}

inline void BlockQ4_1(const uint8_t* b, float* y) {
  const float d = LoadHalf(b);
  const float m = LoadHalf(b + 2);
  const uint8_t* qs = b + 4;
  for (int j = 0; j < 16; ++j) {
    y[j] = d * static_cast<float>(qs[j] & 0x0f) + m;
    y[j + 16] = d * static_cast<float>(qs[j] >> 4) + m;
  }
}

inline void BlockQ5_0(const uint8_t* b, float* y) {
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

inline void BlockQ5_1(const uint8_t* b, float* y) {
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

// Q4_K and Q5_K: 8 sub-blocks of 32 with 6-bit scales and mins; Q5_K adds a fifth bit per
// value from qh (bit s of qh[l] for sub-block s).
template <bool kFiveBit>
inline void BlockQK(const uint8_t* b, float* y) {
  const float d = LoadHalf(b);
  const float dmin = LoadHalf(b + 2);
  uint8_t sc[8], mn[8];
  detail::UnpackKScales(b + 4, sc, mn);
  const uint8_t* qh = b + 16;
  const uint8_t* qs = b + (kFiveBit ? 48 : 16);
  for (int sub = 0; sub < 8; ++sub) {
    // gguf-py: d * sc and dmin * m per sub-block first, then (d·sc)·q − dmin·m.
    const float scale = d * static_cast<float>(sc[sub]);
    const float offset = dmin * static_cast<float>(mn[sub]);
    const uint8_t* q = qs + 32 * (sub / 2);
    const int shift = 4 * (sub % 2);  // even sub-blocks: low nibbles; odd: high nibbles
    float* out = y + 32 * sub;
    for (int l = 0; l < 32; ++l) {
      int v = (q[l] >> shift) & 0x0f;
      if (kFiveBit) v |= ((qh[l] >> sub) & 1) << 4;
      out[l] = scale * static_cast<float>(v) - offset;
    }
  }
}

inline void BlockQ6_K(const uint8_t* b, float* y) {
  const uint8_t* ql = b;
  const uint8_t* qh = b + 128;
  const auto* scales = reinterpret_cast<const int8_t*>(b + 192);
  const float d = LoadHalf(b + 208);
  // Two passes, each a plain loop the compiler vectorizes: the 6-bit codes as int8 first
  // (byte operations), then (d · scale) · q in float32, as gguf-py computes it.
  int8_t q[256];
  for (int h = 0; h < 2; ++h) {
    const uint8_t* L = ql + 64 * h;
    const uint8_t* H = qh + 32 * h;
    int8_t* Q = q + 128 * h;
    // All in uint8 (v − 32 wraps; the int8 view of the byte is the signed code).
    for (int l = 0; l < 32; ++l) {
      const uint8_t hl = H[l];
      Q[l] = static_cast<int8_t>(static_cast<uint8_t>(((L[l] & 0x0f) | ((hl << 4) & 0x30)) - 32));
      Q[l + 32] = static_cast<int8_t>(static_cast<uint8_t>(((L[l + 32] & 0x0f) | ((hl << 2) & 0x30)) - 32));
      Q[l + 64] = static_cast<int8_t>(static_cast<uint8_t>(((L[l] >> 4) | (hl & 0x30)) - 32));
      Q[l + 96] = static_cast<int8_t>(static_cast<uint8_t>(((L[l + 32] >> 4) | ((hl >> 2) & 0x30)) - 32));
    }
  }
  // Output e belongs to sub-block e / 16: half h = e / 128, quarter, then l / 16 within it,
  // which is scales[8h + 2·quarter + l/16] = scales[e / 16].
  for (int s = 0; s < 16; ++s) {
    const float ds = d * static_cast<float>(scales[s]);
    for (int half = 0; half < 2; ++half) {
      // Eight lanes at a time with GCC/clang vector extensions: ymm in the AVX2 clone.
      Int8x8 q8;
      std::memcpy(&q8, q + 16 * s + 8 * half, sizeof(q8));
      const Float8 out = Float8{ds, ds, ds, ds, ds, ds, ds, ds} * __builtin_convertvector(q8, Float8);
      std::memcpy(y + 16 * s + 8 * half, &out, sizeof(out));
    }
  }
}

inline void BlockF32(const uint8_t* b, float* y) { std::memcpy(y, b, 4); }
inline void BlockF16(const uint8_t* b, float* y) { *y = LoadHalf(b); }
inline void BlockBF16(const uint8_t* b, float* y) {
  uint16_t h;
  std::memcpy(&h, b, 2);
  *y = ::llmtrain::detail::Bf16ToFloat(h);
}
inline void BlockF64(const uint8_t* b, float* y) {
  double v;
  std::memcpy(&v, b, 8);
  *y = static_cast<float>(v);
}
template <typename T>
inline void BlockInt(const uint8_t* b, float* y) {
  T v;
  std::memcpy(&v, b, sizeof(T));
  *y = static_cast<float>(v);
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define LLMTRAIN_HAVE_AVX2_PATH 1
// Q6_K with AVX2 intrinsics: the baseline compiler output shuffles bytes poorly. Same arithmetic
// per lane as BlockQ6_K: 6-bit code − 32 as int8, then (d · scale) · q in float32.
__attribute__((target("avx2"))) void RangeQ6_KAvx2(const uint8_t* src, float* dst, int64_t n_blocks) {
  const __m256i low4 = _mm256_set1_epi8(0x0f), bits45 = _mm256_set1_epi8(0x30);
  const __m256i bias = _mm256_set1_epi8(32);
  alignas(32) int8_t q[256];
  for (int64_t b = 0; b < n_blocks; ++b) {
    const uint8_t* block = src + b * 210;
    float* y = dst + b * 256;
    for (int h = 0; h < 2; ++h) {
      const __m256i l0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(block + 64 * h));
      const __m256i l1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(block + 64 * h + 32));
      const __m256i hb = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(block + 128 + 32 * h));
      // 16-bit shifts move bits across bytes; the masks keep only each byte's own bits.
      const __m256i q0 = _mm256_or_si256(_mm256_and_si256(l0, low4), _mm256_and_si256(_mm256_slli_epi16(hb, 4), bits45));
      const __m256i q1 = _mm256_or_si256(_mm256_and_si256(l1, low4), _mm256_and_si256(_mm256_slli_epi16(hb, 2), bits45));
      const __m256i q2 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), low4), _mm256_and_si256(hb, bits45));
      const __m256i q3 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), low4), _mm256_and_si256(_mm256_srli_epi16(hb, 2), bits45));
      __m256i* out = reinterpret_cast<__m256i*>(q + 128 * h);
      _mm256_store_si256(out + 0, _mm256_sub_epi8(q0, bias));
      _mm256_store_si256(out + 1, _mm256_sub_epi8(q1, bias));
      _mm256_store_si256(out + 2, _mm256_sub_epi8(q2, bias));
      _mm256_store_si256(out + 3, _mm256_sub_epi8(q3, bias));
    }
    const auto* scales = reinterpret_cast<const int8_t*>(block + 192);
    const float d = LoadHalf(block + 208);
    for (int s = 0; s < 16; ++s) {
      const __m256 ds = _mm256_set1_ps(d * static_cast<float>(scales[s]));
      for (int k = 0; k < 2; ++k) {
        const __m128i codes = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(q + 16 * s + 8 * k));
        const __m256 v = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(codes));
        _mm256_storeu_ps(y + 16 * s + 8 * k, _mm256_mul_ps(ds, v));
      }
    }
  }
}

// Q4_K with AVX2 intrinsics: (d · sc) · q − dmin · m per lane, as BlockQK<false>.
__attribute__((target("avx2"))) void RangeQ4_KAvx2(const uint8_t* src, float* dst, int64_t n_blocks) {
  const __m128i low4 = _mm_set1_epi8(0x0f);
  for (int64_t b = 0; b < n_blocks; ++b) {
    const uint8_t* block = src + b * 144;
    float* y = dst + b * 256;
    const float d = LoadHalf(block);
    const float dmin = LoadHalf(block + 2);
    uint8_t sc[8], mn[8];
    detail::UnpackKScales(block + 4, sc, mn);
    for (int c = 0; c < 4; ++c) {
      for (int half = 0; half < 2; ++half) {
        const int sub = 2 * c + half;
        const __m256 scale = _mm256_set1_ps(d * static_cast<float>(sc[sub]));
        const __m256 offset = _mm256_set1_ps(dmin * static_cast<float>(mn[sub]));
        for (int k = 0; k < 2; ++k) {
          __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(block + 16 + 32 * c + 16 * k));
          bytes = half == 0 ? _mm_and_si128(bytes, low4) : _mm_and_si128(_mm_srli_epi16(bytes, 4), low4);
          const __m256 lo = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(bytes));
          const __m256 hi = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(bytes, 8)));
          float* out = y + 64 * c + 32 * half + 16 * k;
          _mm256_storeu_ps(out, _mm256_sub_ps(_mm256_mul_ps(scale, lo), offset));
          _mm256_storeu_ps(out + 8, _mm256_sub_ps(_mm256_mul_ps(scale, hi), offset));
        }
      }
    }
  }
}
#endif

// One function per type that walks a range of blocks, with the block function inlined so the
// compiler vectorizes it. On x86-64 each is also built for AVX2 and picked at load time
// (target_clones); the arithmetic is the same, one rounding per operation, no FMA.
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(__SANITIZE_ADDRESS__)
#define LLMTRAIN_MULTIVERSION __attribute__((target_clones("avx2", "default")))
#else
#define LLMTRAIN_MULTIVERSION
#endif

using RangeFn = void (*)(const uint8_t*, float*, int64_t);

#define LLMTRAIN_DEQUANT_RANGE(NAME, BLOCK, ELEMS, BYTES)                            \
  LLMTRAIN_MULTIVERSION void NAME(const uint8_t* src, float* dst, int64_t n_blocks) { \
    for (int64_t b = 0; b < n_blocks; ++b) BLOCK(src + b * (BYTES), dst + b * (ELEMS)); \
  }

LLMTRAIN_DEQUANT_RANGE(RangeF32, BlockF32, 1, 4)
LLMTRAIN_DEQUANT_RANGE(RangeF16, BlockF16, 1, 2)
LLMTRAIN_DEQUANT_RANGE(RangeBF16, BlockBF16, 1, 2)
LLMTRAIN_DEQUANT_RANGE(RangeF64, BlockF64, 1, 8)
LLMTRAIN_DEQUANT_RANGE(RangeI8, BlockInt<int8_t>, 1, 1)
LLMTRAIN_DEQUANT_RANGE(RangeI16, BlockInt<int16_t>, 1, 2)
LLMTRAIN_DEQUANT_RANGE(RangeI32, BlockInt<int32_t>, 1, 4)
LLMTRAIN_DEQUANT_RANGE(RangeI64, BlockInt<int64_t>, 1, 8)
LLMTRAIN_DEQUANT_RANGE(RangeQ8_0, BlockQ8_0, 32, 34)
LLMTRAIN_DEQUANT_RANGE(RangeQ4_0, BlockQ4_0, 32, 18)
LLMTRAIN_DEQUANT_RANGE(RangeQ4_1, BlockQ4_1, 32, 20)
LLMTRAIN_DEQUANT_RANGE(RangeQ5_0, BlockQ5_0, 32, 22)
LLMTRAIN_DEQUANT_RANGE(RangeQ5_1, BlockQ5_1, 32, 24)
LLMTRAIN_DEQUANT_RANGE(RangeQ4_K, BlockQK<false>, 256, 144)
LLMTRAIN_DEQUANT_RANGE(RangeQ5_K, BlockQK<true>, 256, 176)
LLMTRAIN_DEQUANT_RANGE(RangeQ6_K, BlockQ6_K, 256, 210)

RangeFn FindRangeFn(GgmlType type, bool allow_intrinsics = true) {
  switch (type) {
    case GgmlType::kF32: return RangeF32;
    case GgmlType::kF16: return RangeF16;
    case GgmlType::kBF16: return RangeBF16;
    case GgmlType::kF64: return RangeF64;
    case GgmlType::kI8: return RangeI8;
    case GgmlType::kI16: return RangeI16;
    case GgmlType::kI32: return RangeI32;
    case GgmlType::kI64: return RangeI64;
    case GgmlType::kQ8_0: return RangeQ8_0;
    case GgmlType::kQ4_0: return RangeQ4_0;
    case GgmlType::kQ4_1: return RangeQ4_1;
    case GgmlType::kQ5_0: return RangeQ5_0;
    case GgmlType::kQ5_1: return RangeQ5_1;
    case GgmlType::kQ4_K:
#ifdef LLMTRAIN_HAVE_AVX2_PATH
      if (allow_intrinsics && __builtin_cpu_supports("avx2")) return RangeQ4_KAvx2;
#endif
      return RangeQ4_K;
    case GgmlType::kQ5_K: return RangeQ5_K;
    case GgmlType::kQ6_K:
#ifdef LLMTRAIN_HAVE_AVX2_PATH
      if (allow_intrinsics && __builtin_cpu_supports("avx2")) return RangeQ6_KAvx2;
#endif
      return RangeQ6_K;
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

bool CanDequantize(GgmlType type) { return FindRangeFn(type) != nullptr; }

BlockDecoder FindBlockDecoder(GgmlType type) { return FindRangeFn(type); }

absl::Status Dequantize(GgmlType type, absl::Span<const uint8_t> src, absl::Span<float> dst) {
  return detail::DequantizeWith(type, src, dst, /*allow_intrinsics=*/true);
}

absl::Status detail::DequantizeWith(GgmlType type, absl::Span<const uint8_t> src,
                                    absl::Span<float> dst, bool allow_intrinsics) {
  const RangeFn fn = FindRangeFn(type, allow_intrinsics);
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
    fn(src.data() + begin * block_bytes, dst.data() + begin * block_elems, end - begin);
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

namespace {

// The block scale and quants of Q4_0 (half = 8) and Q5_0 (half = 16), as gguf-py computes them:
// the signed value of largest magnitude (numpy argmax: the first of ties), d = it / -half and
// id = 1 / d in float32; q = trunc(x · id + half + 0.5) clipped to [0, 2 · half − 1]. Writes the
// 32 quants to `q` and returns d as float16 bits.
uint16_t ZeroPointBlock(const float* x, int half, uint8_t q[32]) {
  int imax = 0;
  for (int j = 1; j < 32; ++j) {
    if (std::fabs(x[j]) > std::fabs(x[imax])) imax = j;
  }
  const float d = x[imax] / -static_cast<float>(half);
  const float id = d == 0.0f ? 0.0f : 1.0f / d;
  const float offset = static_cast<float>(half) + 0.5f, top = static_cast<float>(2 * half - 1);
  for (int j = 0; j < 32; ++j) {
    const float t = std::trunc(x[j] * id + offset);
    q[j] = static_cast<uint8_t>(std::min(top, std::max(0.0f, t)));
  }
  return ::llmtrain::detail::FloatToF16(d);
}

}  // namespace

absl::StatusOr<std::vector<uint8_t>> QuantizeQ4_0(absl::Span<const float> values) {
  if (values.size() % 32 != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("Q4_0 needs a multiple of 32 values, found ", values.size()));
  }
  std::vector<uint8_t> out(values.size() / 32 * 18);
  for (size_t b = 0; b < values.size() / 32; ++b) {
    uint8_t* o = out.data() + 18 * b;
    uint8_t q[32];
    const uint16_t d16 = ZeroPointBlock(values.data() + 32 * b, 8, q);
    std::memcpy(o, &d16, 2);
    for (int j = 0; j < 16; ++j) o[2 + j] = static_cast<uint8_t>(q[j] | (q[j + 16] << 4));
  }
  return out;
}

absl::StatusOr<std::vector<uint8_t>> QuantizeQ5_0(absl::Span<const float> values) {
  if (values.size() % 32 != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("Q5_0 needs a multiple of 32 values, found ", values.size()));
  }
  std::vector<uint8_t> out(values.size() / 32 * 22);
  for (size_t b = 0; b < values.size() / 32; ++b) {
    uint8_t* o = out.data() + 22 * b;
    uint8_t q[32];
    const uint16_t d16 = ZeroPointBlock(values.data() + 32 * b, 16, q);
    std::memcpy(o, &d16, 2);
    // The low four bits in pairs as Q4_0; the fifth bits of the 32 values go to qh.
    uint32_t qh = 0;
    for (int j = 0; j < 16; ++j) {
      o[6 + j] = static_cast<uint8_t>((q[j] & 0x0F) | ((q[j + 16] & 0x0F) << 4));
      qh |= static_cast<uint32_t>((q[j] >> 4) & 1) << j;
      qh |= static_cast<uint32_t>((q[j + 16] >> 4) & 1) << (j + 16);
    }
    std::memcpy(o + 2, &qh, 4);
  }
  return out;
}

namespace {

// The k-quants below follow ggml's reference quantizers (quantize_row_q4_K_ref,
// quantize_row_q6_K_ref in ggml-quants.c, which llama.cpp's quantize uses without an importance
// matrix) operation for operation in float32: the same sums in the same order, no fused
// multiply-adds (this file is built with -ffp-contract=off), the same rounding.

constexpr int kQK = 256;  // values per k-quant super-block

// Round to nearest, ties to even, through the float adder: x + 1.5·2^23 puts the integer in the
// low mantissa bits (ggml's nearest_int; |x| < 2^22).
inline int NearestInt(float x) {
  const float v = x + 12582912.0f;
  int32_t i = 0;
  std::memcpy(&i, &v, 4);
  return (i & 0x007fffff) - 0x00400000;
}

// Scale and min of one group of `n` values as levels 0..nmax: the weighted least-squares fit
// over 21 candidate scales (ggml's make_qkx2_quants with rmin -1, rdelta 0.1, 20 steps, squared
// error). Returns the scale; *the_min is −min (≥ 0).
float FitScaleMin(int n, int nmax, const float* x, const float* w, uint8_t* L, float* the_min, uint8_t* aux) {
  float min = x[0], max = x[0];
  float sum_w = w[0];
  float sum_x = sum_w * x[0];
  for (int i = 1; i < n; ++i) {
    if (x[i] < min) min = x[i];
    if (x[i] > max) max = x[i];
    sum_w += w[i];
    sum_x += w[i] * x[i];
  }
  if (min > 0) min = 0;
  if (max == min) {
    for (int i = 0; i < n; ++i) L[i] = 0;
    *the_min = -min;
    return 0.0f;
  }
  float iscale = static_cast<float>(nmax) / (max - min);
  float scale = 1 / iscale;
  float best_error = 0;
  for (int i = 0; i < n; ++i) {
    const int l = NearestInt(iscale * (x[i] - min));
    L[i] = static_cast<uint8_t>(std::max(0, std::min(nmax, l)));
    float diff = scale * L[i] + min - x[i];
    diff = diff * diff;
    best_error += w[i] * diff;
  }
  constexpr float kRmin = -1.0f, kRdelta = 0.1f;
  constexpr int kSteps = 20;
  for (int is = 0; is <= kSteps; ++is) {
    iscale = (kRmin + kRdelta * static_cast<float>(is) + static_cast<float>(nmax)) / (max - min);
    float sum_l = 0, sum_l2 = 0, sum_xl = 0;
    for (int i = 0; i < n; ++i) {
      int l = NearestInt(iscale * (x[i] - min));
      l = std::max(0, std::min(nmax, l));
      aux[i] = static_cast<uint8_t>(l);
      const float fl = static_cast<float>(l);
      sum_l += w[i] * fl;
      sum_l2 += w[i] * fl * fl;
      sum_xl += w[i] * fl * x[i];
    }
    const float D = sum_w * sum_l2 - sum_l * sum_l;
    if (D > 0) {
      float this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
      float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
      if (this_min > 0) {
        this_min = 0;
        this_scale = sum_xl / sum_l2;
      }
      float cur_error = 0;
      for (int i = 0; i < n; ++i) {
        float diff = this_scale * aux[i] + this_min - x[i];
        diff = diff * diff;
        cur_error += w[i] * diff;
      }
      if (cur_error < best_error) {
        for (int i = 0; i < n; ++i) L[i] = aux[i];
        best_error = cur_error;
        scale = this_scale;
        min = this_min;
      }
    }
  }
  *the_min = -min;
  return scale;
}

// A symmetric scale for one group of `n` values as levels −nmax..nmax−1 (stored + nmax): the
// x²-weighted least-squares fit over 19 candidate scales (ggml's make_qx_quants, rmse_type 1).
float FitSymmetricScale(int n, int nmax, const float* x, int8_t* L) {
  float max = 0, amax = 0;
  for (int i = 0; i < n; ++i) {
    const float ax = std::fabs(x[i]);
    if (ax > amax) {
      amax = ax;
      max = x[i];
    }
  }
  if (amax < 1e-15f) {
    for (int i = 0; i < n; ++i) L[i] = 0;
    return 0.0f;
  }
  const float fnmax = static_cast<float>(nmax);
  float iscale = static_cast<float>(-nmax) / max;
  float sumlx = 0, suml2 = 0;
  for (int i = 0; i < n; ++i) {
    int l = NearestInt(iscale * x[i]);
    l = std::max(-nmax, std::min(nmax - 1, l));
    L[i] = static_cast<int8_t>(l + nmax);
    const float w = x[i] * x[i];
    const float fl = static_cast<float>(l);
    sumlx += w * x[i] * fl;
    suml2 += w * fl * fl;
  }
  float scale = suml2 != 0.0f ? sumlx / suml2 : 0.0f;
  float best = scale * sumlx;
  for (int is = -9; is <= 9; ++is) {
    if (is == 0) continue;
    iscale = -(fnmax + 0.1f * static_cast<float>(is)) / max;
    sumlx = suml2 = 0;
    for (int i = 0; i < n; ++i) {
      int l = NearestInt(iscale * x[i]);
      l = std::max(-nmax, std::min(nmax - 1, l));
      const float w = x[i] * x[i];
      const float fl = static_cast<float>(l);
      sumlx += w * x[i] * fl;
      suml2 += w * fl * fl;
    }
    if (suml2 > 0 && sumlx * sumlx > best * suml2) {
      for (int i = 0; i < n; ++i) {
        const int l = NearestInt(iscale * x[i]);
        L[i] = static_cast<int8_t>(nmax + std::max(-nmax, std::min(nmax - 1, l)));
      }
      scale = sumlx / suml2;
      best = scale * sumlx;
    }
  }
  return scale;
}

}  // namespace

absl::StatusOr<std::vector<uint8_t>> QuantizeQ4_K(absl::Span<const float> values) {
  if (values.size() % kQK != 0) {
    return absl::InvalidArgumentError(absl::StrCat("Q4_K needs a multiple of 256 values, found ", values.size()));
  }
  // Block: d, dmin (f16), 12 bytes of 6-bit scales and mins for the 8 groups of 32, 128 bytes of
  // 4-bit levels (group pairs interleaved by nibble).
  std::vector<uint8_t> out(values.size() / kQK * 144);
  uint8_t L[kQK], aux[32];
  float weights[32], mins[8], scales[8];
  for (size_t b = 0; b < values.size() / kQK; ++b) {
    const float* x = values.data() + kQK * b;
    uint8_t* o = out.data() + 144 * b;
    uint8_t* packed_scales = o + 4;
    float max_scale = 0, max_min = 0;
    for (int j = 0; j < 8; ++j) {
      float sum_x2 = 0;
      for (int l = 0; l < 32; ++l) sum_x2 += x[32 * j + l] * x[32 * j + l];
      const float av_x = std::sqrt(sum_x2 / 32);
      for (int l = 0; l < 32; ++l) weights[l] = av_x + std::fabs(x[32 * j + l]);
      scales[j] = FitScaleMin(32, 15, x + 32 * j, weights, L + 32 * j, &mins[j], aux);
      if (scales[j] > max_scale) max_scale = scales[j];
      if (mins[j] > max_min) max_min = mins[j];
    }
    const float inv_scale = max_scale > 0 ? 63.0f / max_scale : 0.0f;
    const float inv_min = max_min > 0 ? 63.0f / max_min : 0.0f;
    std::memset(packed_scales, 0, 12);
    for (int j = 0; j < 8; ++j) {
      const uint8_t ls = std::min<uint8_t>(63, static_cast<uint8_t>(NearestInt(inv_scale * scales[j])));
      const uint8_t lm = std::min<uint8_t>(63, static_cast<uint8_t>(NearestInt(inv_min * mins[j])));
      if (j < 4) {
        packed_scales[j] = ls;
        packed_scales[j + 4] = lm;
      } else {
        packed_scales[j + 4] = static_cast<uint8_t>((ls & 0xF) | ((lm & 0xF) << 4));
        packed_scales[j - 4] |= static_cast<uint8_t>((ls >> 4) << 6);
        packed_scales[j] |= static_cast<uint8_t>((lm >> 4) << 6);
      }
    }
    const uint16_t d16 = ::llmtrain::detail::FloatToF16(max_scale / 63.0f);
    const uint16_t dmin16 = ::llmtrain::detail::FloatToF16(max_min / 63.0f);
    std::memcpy(o, &d16, 2);
    std::memcpy(o + 2, &dmin16, 2);
    // The levels again against the rounded scales (a group whose scale rounds to 0 keeps the fit's).
    for (int j = 0; j < 8; ++j) {
      uint8_t sc = 0, m = 0;
      if (j < 4) {
        sc = packed_scales[j] & 63;
        m = packed_scales[j + 4] & 63;
      } else {
        sc = static_cast<uint8_t>((packed_scales[j + 4] & 0xF) | ((packed_scales[j - 4] >> 6) << 4));
        m = static_cast<uint8_t>((packed_scales[j + 4] >> 4) | ((packed_scales[j] >> 6) << 4));
      }
      const float d = F16ToFloat(d16) * sc;
      if (d == 0.0f) continue;
      const float dm = F16ToFloat(dmin16) * m;
      for (int i = 0; i < 32; ++i) {
        const int l = NearestInt((x[32 * j + i] + dm) / d);
        L[32 * j + i] = static_cast<uint8_t>(std::max(0, std::min(15, l)));
      }
    }
    uint8_t* q = o + 16;
    for (int j = 0; j < kQK; j += 64) {
      for (int l = 0; l < 32; ++l) q[l] = static_cast<uint8_t>(L[j + l] | (L[j + l + 32] << 4));
      q += 32;
    }
  }
  return out;
}

absl::StatusOr<std::vector<uint8_t>> QuantizeQ6_K(absl::Span<const float> values) {
  if (values.size() % kQK != 0) {
    return absl::InvalidArgumentError(absl::StrCat("Q6_K needs a multiple of 256 values, found ", values.size()));
  }
  // Block: 128 bytes of low 4 bits, 64 of high 2 bits, 16 int8 scales (groups of 16), d (f16).
  std::vector<uint8_t> out(values.size() / kQK * 210);
  int8_t L[kQK];
  float scales[16];
  for (size_t b = 0; b < values.size() / kQK; ++b) {
    const float* x = values.data() + kQK * b;
    uint8_t* o = out.data() + 210 * b;
    uint8_t* ql = o;
    uint8_t* qh = o + 128;
    int8_t* sc = reinterpret_cast<int8_t*>(o + 192);
    float max_scale = 0, max_abs_scale = 0;
    for (int ib = 0; ib < 16; ++ib) {
      scales[ib] = FitSymmetricScale(16, 32, x + 16 * ib, L + 16 * ib);
      const float abs_scale = std::fabs(scales[ib]);
      if (abs_scale > max_abs_scale) {
        max_abs_scale = abs_scale;
        max_scale = scales[ib];
      }
    }
    if (max_abs_scale < 1e-15f) continue;  // all zero: the block stays zero bytes (d = 0)
    const float iscale = -128.0f / max_scale;
    const uint16_t d16 = ::llmtrain::detail::FloatToF16(1 / iscale);
    std::memcpy(o + 208, &d16, 2);
    for (int ib = 0; ib < 16; ++ib) sc[ib] = static_cast<int8_t>(std::min(127, NearestInt(iscale * scales[ib])));
    for (int j = 0; j < 16; ++j) {
      const float d = F16ToFloat(d16) * sc[j];
      if (d == 0.0f) continue;
      for (int i = 0; i < 16; ++i) {
        int l = NearestInt(x[16 * j + i] / d);
        l = std::max(-32, std::min(31, l));
        L[16 * j + i] = static_cast<int8_t>(l + 32);
      }
    }
    for (int j = 0; j < kQK; j += 128) {
      for (int l = 0; l < 32; ++l) {
        const uint8_t q1 = L[j + l + 0] & 0xF, q2 = L[j + l + 32] & 0xF;
        const uint8_t q3 = L[j + l + 64] & 0xF, q4 = L[j + l + 96] & 0xF;
        ql[l + 0] = static_cast<uint8_t>(q1 | (q3 << 4));
        ql[l + 32] = static_cast<uint8_t>(q2 | (q4 << 4));
        qh[l] = static_cast<uint8_t>((L[j + l] >> 4) | ((L[j + l + 32] >> 4) << 2) | ((L[j + l + 64] >> 4) << 4) |
                                     ((L[j + l + 96] >> 4) << 6));
      }
      ql += 64;
      qh += 32;
    }
  }
  return out;
}

}  // namespace llmtrain::io
