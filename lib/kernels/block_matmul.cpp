// Decode-a-piece-and-dot matrix products for weights stored in blocks (kernels/block_matmul.h).
#include "llmtrain/kernels/block_matmul.h"

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <vector>

#ifndef _OPENMP
#error "at::parallel_for needs -fopenmp here, or it runs on one thread (LLMTRAIN_PARALLEL_SOURCES in CMakeLists.txt)"
#endif

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

#include "io/gguf_quants_impl.h"  // UnpackKScales
#define LLMTRAIN_HAVE_X86_DOTS 1
#endif

namespace llmtrain::kernels {
namespace {

// Values decoded per piece: 4 KiB of float32, which stays in L1 next to the inputs' slices.
constexpr int64_t kPieceValues = 1024;

// acc[i] += Σ_j w[j] · x[i · stride + j] for i < m, j < n: the oracle, one float32 sum per
// output in index order (no reassociation: GCC does not vectorize it without -ffast-math).
void DotsPlain(const float* w, int64_t n, const float* x, int64_t stride, int64_t m, float* acc) {
  for (int64_t i = 0; i < m; ++i) {
    const float* xi = x + i * stride;
    float s = 0.0f;
    for (int64_t j = 0; j < n; ++j) s += w[j] * xi[j];
    acc[i] += s;
  }
}

#ifdef LLMTRAIN_HAVE_X86_DOTS
__attribute__((target("avx2,fma"))) inline float Sum8(__m256 v) {
  const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 t = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(t, _mm_shuffle_ps(t, t, 1)));
}

// One input row: four independent accumulators hide the FMA latency.
__attribute__((target("avx2,fma"))) float Dot1Avx2(const float* w, const float* x, int64_t n) {
  __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  int64_t j = 0;
  for (; j + 32 <= n; j += 32) {
    a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w + j), _mm256_loadu_ps(x + j), a0);
    a1 = _mm256_fmadd_ps(_mm256_loadu_ps(w + j + 8), _mm256_loadu_ps(x + j + 8), a1);
    a2 = _mm256_fmadd_ps(_mm256_loadu_ps(w + j + 16), _mm256_loadu_ps(x + j + 16), a2);
    a3 = _mm256_fmadd_ps(_mm256_loadu_ps(w + j + 24), _mm256_loadu_ps(x + j + 24), a3);
  }
  for (; j + 8 <= n; j += 8) a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w + j), _mm256_loadu_ps(x + j), a0);
  float s = Sum8(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
  for (; j < n; ++j) s += w[j] * x[j];
  return s;
}

// Up to four input rows share each load of the decoded weight.
template <int kRows>
__attribute__((target("avx2,fma"))) void DotsNAvx2(const float* w, int64_t n, const float* x, int64_t stride,
                                                   float* acc) {
  __m256 a[kRows];
  for (int r = 0; r < kRows; ++r) a[r] = _mm256_setzero_ps();
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    const __m256 wv = _mm256_loadu_ps(w + j);
    for (int r = 0; r < kRows; ++r) a[r] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + r * stride + j), a[r]);
  }
  for (int r = 0; r < kRows; ++r) {
    float s = Sum8(a[r]);
    for (int64_t t = j; t < n; ++t) s += w[t] * x[r * stride + t];
    acc[r] += s;
  }
}

__attribute__((target("avx2,fma"))) void DotsAvx2(const float* w, int64_t n, const float* x, int64_t stride,
                                                  int64_t m, float* acc) {
  if (m == 1) {
    acc[0] += Dot1Avx2(w, x, n);
    return;
  }
  int64_t i = 0;
  for (; i + 4 <= m; i += 4) DotsNAvx2<4>(w, n, x + i * stride, stride, acc + i);
  switch (m - i) {
    case 3: DotsNAvx2<3>(w, n, x + i * stride, stride, acc + i); break;
    case 2: DotsNAvx2<2>(w, n, x + i * stride, stride, acc + i); break;
    case 1: DotsNAvx2<1>(w, n, x + i * stride, stride, acc + i); break;
    default: break;
  }
}

// GCC 12's AVX-512 headers trip -Wmaybe-uninitialized on their own _mm512_undefined_* values.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
__attribute__((target("avx512f"))) inline float Sum16(__m512 v) { return _mm512_reduce_add_ps(v); }

__attribute__((target("avx512f,avx2,fma"))) float Dot1Avx512(const float* w, const float* x, int64_t n) {
  __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  int64_t j = 0;
  for (; j + 64 <= n; j += 64) {
    a0 = _mm512_fmadd_ps(_mm512_loadu_ps(w + j), _mm512_loadu_ps(x + j), a0);
    a1 = _mm512_fmadd_ps(_mm512_loadu_ps(w + j + 16), _mm512_loadu_ps(x + j + 16), a1);
    a2 = _mm512_fmadd_ps(_mm512_loadu_ps(w + j + 32), _mm512_loadu_ps(x + j + 32), a2);
    a3 = _mm512_fmadd_ps(_mm512_loadu_ps(w + j + 48), _mm512_loadu_ps(x + j + 48), a3);
  }
  for (; j + 16 <= n; j += 16) a0 = _mm512_fmadd_ps(_mm512_loadu_ps(w + j), _mm512_loadu_ps(x + j), a0);
  if (j < n) {
    const __mmask16 k = static_cast<__mmask16>((1u << (n - j)) - 1);
    a1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(k, w + j), _mm512_maskz_loadu_ps(k, x + j), a1);
  }
  return Sum16(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
}

template <int kRows>
__attribute__((target("avx512f,avx2,fma"))) void DotsNAvx512(const float* w, int64_t n, const float* x, int64_t stride,
                                                    float* acc) {
  __m512 a[kRows];
  for (int r = 0; r < kRows; ++r) a[r] = _mm512_setzero_ps();
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) {
    const __m512 wv = _mm512_loadu_ps(w + j);
    for (int r = 0; r < kRows; ++r) a[r] = _mm512_fmadd_ps(wv, _mm512_loadu_ps(x + r * stride + j), a[r]);
  }
  if (j < n) {
    const __mmask16 k = static_cast<__mmask16>((1u << (n - j)) - 1);
    const __m512 wv = _mm512_maskz_loadu_ps(k, w + j);
    for (int r = 0; r < kRows; ++r) a[r] = _mm512_fmadd_ps(wv, _mm512_maskz_loadu_ps(k, x + r * stride + j), a[r]);
  }
  for (int r = 0; r < kRows; ++r) acc[r] += Sum16(a[r]);
}

__attribute__((target("avx512f,avx2,fma"))) void DotsAvx512(const float* w, int64_t n, const float* x, int64_t stride,
                                                   int64_t m, float* acc) {
  if (m == 1) {
    acc[0] += Dot1Avx512(w, x, n);
    return;
  }
  int64_t i = 0;
  for (; i + 4 <= m; i += 4) DotsNAvx512<4>(w, n, x + i * stride, stride, acc + i);
  switch (m - i) {
    case 3: DotsNAvx512<3>(w, n, x + i * stride, stride, acc + i); break;
    case 2: DotsNAvx512<2>(w, n, x + i * stride, stride, acc + i); break;
    case 1: DotsNAvx512<1>(w, n, x + i * stride, stride, acc + i); break;
    default: break;
  }
}
#pragma GCC diagnostic pop

#if !defined(__clang__)
#define LLMTRAIN_HAVE_REGISTER_DOTS 1
// Whole-row products from GGUF blocks with AVX-512: each block's values are decoded into
// registers, 16 at a time, as gguf computes them (d · q, or (d · sc) · q − dmin · m as one fused
// multiply-add), and multiplied by up to four input rows there. Compiled for AVX-512 as a whole
// (#pragma GCC target also covers the functors' inlined bodies); picked only where the CPU has it.
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx2,fma,f16c")
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"

// How far ahead of the block being decoded the packed bytes are prefetched.
constexpr int64_t kPrefetchBytes = 4096;

inline float Half(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return _cvtsh_ss(h);
}
inline __m512i Bytes16(const uint8_t* p) {  // 16 bytes → 16 int32 lanes, zero-extended
  return _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

// Each decoder calls emit(offset, values) for every 16 consecutive values of one block.
struct Q8_0Block {
  static constexpr int64_t kElems = 32, kBytes = 34;
  template <class Emit>
  static void Decode(const uint8_t* b, Emit& emit) {
    const __m512 d = _mm512_set1_ps(Half(b));
#pragma GCC unroll 2
    for (int k = 0; k < 2; ++k) {
      const __m512i q = _mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + 2 + 16 * k)));
      emit(16 * k, _mm512_mul_ps(_mm512_cvtepi32_ps(q), d));
    }
  }
};

struct Q5_0Block {
  static constexpr int64_t kElems = 32, kBytes = 22;
  template <class Emit>
  static void Decode(const uint8_t* b, Emit& emit) {
    const __m512 d = _mm512_set1_ps(Half(b));
    uint32_t qh;
    std::memcpy(&qh, b + 2, 4);
    const __m512i bits = _mm512_set1_epi32(static_cast<int>(qh));
    const __m512i lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512i low4 = _mm512_set1_epi32(0x0f), one = _mm512_set1_epi32(1), sixteen = _mm512_set1_epi32(16);
    const __m512i qs = Bytes16(b + 6);
    const __m512i hi_lo = _mm512_slli_epi32(_mm512_and_si512(_mm512_srlv_epi32(bits, lanes), one), 4);
    const __m512i hi_hi =
        _mm512_slli_epi32(_mm512_and_si512(_mm512_srlv_epi32(bits, _mm512_add_epi32(lanes, sixteen)), one), 4);
    const __m512i q0 = _mm512_sub_epi32(_mm512_or_si512(_mm512_and_si512(qs, low4), hi_lo), sixteen);
    const __m512i q1 = _mm512_sub_epi32(_mm512_or_si512(_mm512_srli_epi32(qs, 4), hi_hi), sixteen);
    emit(0, _mm512_mul_ps(d, _mm512_cvtepi32_ps(q0)));
    emit(16, _mm512_mul_ps(d, _mm512_cvtepi32_ps(q1)));
  }
};

struct Q4_KBlock {
  static constexpr int64_t kElems = 256, kBytes = 144;
  template <class Emit>
  static void Decode(const uint8_t* b, Emit& emit) {
    const float d = Half(b), dmin = Half(b + 2);
    uint8_t sc[8], mn[8];
    io::detail::UnpackKScales(b + 4, sc, mn);
    const __m512i low4 = _mm512_set1_epi32(0x0f);
#pragma GCC unroll 4
    for (int c = 0; c < 4; ++c) {  // 32 bytes: sub-block 2c in the low nibbles, 2c + 1 in the high
      const __m512 s0 = _mm512_set1_ps(d * static_cast<float>(sc[2 * c]));
      const __m512 m0 = _mm512_set1_ps(dmin * static_cast<float>(mn[2 * c]));
      const __m512 s1 = _mm512_set1_ps(d * static_cast<float>(sc[2 * c + 1]));
      const __m512 m1 = _mm512_set1_ps(dmin * static_cast<float>(mn[2 * c + 1]));
#pragma GCC unroll 2
      for (int k = 0; k < 2; ++k) {
        const __m512i q = Bytes16(b + 16 + 32 * c + 16 * k);
        emit(64 * c + 16 * k, _mm512_fmsub_ps(s0, _mm512_cvtepi32_ps(_mm512_and_si512(q, low4)), m0));
        emit(64 * c + 32 + 16 * k, _mm512_fmsub_ps(s1, _mm512_cvtepi32_ps(_mm512_srli_epi32(q, 4)), m1));
      }
    }
  }
};

struct Q6_KBlock {
  static constexpr int64_t kElems = 256, kBytes = 210;
  template <class Emit>
  static void Decode(const uint8_t* b, Emit& emit) {
    const auto* scales = reinterpret_cast<const int8_t*>(b + 192);
    const float d = Half(b + 208);
    const __m512i low4 = _mm512_set1_epi32(0x0f), two = _mm512_set1_epi32(3), bias = _mm512_set1_epi32(32);
    const auto value = [&](const __m512i q, int64_t e) {
      return _mm512_mul_ps(_mm512_set1_ps(d * static_cast<float>(scales[e / 16])),
                           _mm512_cvtepi32_ps(_mm512_sub_epi32(q, bias)));
    };
#pragma GCC unroll 2
    for (int h = 0; h < 2; ++h) {
      const uint8_t* L = b + 64 * h;
      const uint8_t* H = b + 128 + 32 * h;
#pragma GCC unroll 2
      for (int l0 = 0; l0 < 32; l0 += 16) {
        const __m512i lo = Bytes16(L + l0), lo32 = Bytes16(L + 32 + l0), hb = Bytes16(H + l0);
        const int64_t e = 128 * h + l0;
        emit(e, value(_mm512_or_si512(_mm512_and_si512(lo, low4), _mm512_slli_epi32(_mm512_and_si512(hb, two), 4)), e));
        emit(e + 32, value(_mm512_or_si512(_mm512_and_si512(lo32, low4),
                                           _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(hb, 2), two), 4)),
                           e + 32));
        emit(e + 64, value(_mm512_or_si512(_mm512_srli_epi32(lo, 4),
                                           _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(hb, 4), two), 4)),
                           e + 64));
        emit(e + 96, value(_mm512_or_si512(_mm512_srli_epi32(lo32, 4),
                                           _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(hb, 6), two), 4)),
                           e + 96));
      }
    }
  }
};

// kRows input rows (stride `stride`) against one packed row: a register accumulator per input row.
// Four accumulators per input row, chosen by the values' offset (a constant once the decoders'
// loops are unrolled), so consecutive multiply-adds do not wait on each other's latency.
template <class Block, int kRows>
struct RowAccumulator {
  __m512 acc[kRows][4];
  const float* x = nullptr;  // the current block's first column
  int64_t stride = 0;
  void operator()(int64_t offset, __m512 w) {
    const int slot = static_cast<int>(offset >> 4) & 3;
    for (int r = 0; r < kRows; ++r) {
      acc[r][slot] = _mm512_fmadd_ps(w, _mm512_loadu_ps(x + r * stride + offset), acc[r][slot]);
    }
  }
};

template <class Block, int kRows>
void DotRowsAvx512(const uint8_t* row, int64_t n_blocks, const float* x, int64_t stride, float* out) {
  RowAccumulator<Block, kRows> a;
  for (int r = 0; r < kRows; ++r) {
    for (int k = 0; k < 4; ++k) a.acc[r][k] = _mm512_setzero_ps();
  }
  a.stride = stride;
  for (int64_t blk = 0; blk < n_blocks; ++blk) {
    a.x = x + blk * Block::kElems;
    const uint8_t* b = row + blk * Block::kBytes;
    // Rows lie one after another: ask for the bytes kPrefetchBytes ahead (maybe the next row's)
    // now, so the decoding does not wait on memory (the hardware prefetcher alone lags here).
    for (int64_t o = 0; o < Block::kBytes; o += 64) {
      _mm_prefetch(reinterpret_cast<const char*>(b + kPrefetchBytes + o), _MM_HINT_T0);
    }
    Block::Decode(b, a);
  }
  for (int r = 0; r < kRows; ++r) {
    out[r] = _mm512_reduce_add_ps(
        _mm512_add_ps(_mm512_add_ps(a.acc[r][0], a.acc[r][1]), _mm512_add_ps(a.acc[r][2], a.acc[r][3])));
  }
}

// Rows [r0, r1) of a weight with `rows` rows: y (m, rows).
template <class Block>
void DotRowRangeAvx512(const uint8_t* blocks, int64_t rows, int64_t cols, int64_t r0, int64_t r1, const float* x,
                       int64_t m, float* y) {
  const int64_t n_blocks = cols / Block::kElems, row_bytes = n_blocks * Block::kBytes;
  float out[4];
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* row = blocks + r * row_bytes;
    int64_t i = 0;
    for (; i + 4 <= m; i += 4) {
      DotRowsAvx512<Block, 4>(row, n_blocks, x + i * cols, cols, out);
      for (int k = 0; k < 4; ++k) y[(i + k) * rows + r] = out[k];
    }
    const int64_t left = m - i;
    if (left == 3) DotRowsAvx512<Block, 3>(row, n_blocks, x + i * cols, cols, out);
    if (left == 2) DotRowsAvx512<Block, 2>(row, n_blocks, x + i * cols, cols, out);
    if (left == 1) DotRowsAvx512<Block, 1>(row, n_blocks, x + i * cols, cols, out);
    for (int64_t k = 0; k < left; ++k) y[(i + k) * rows + r] = out[k];
  }
}

// ---- kAvx512I16: the input rows rounded to int16 (I16Rows), the blocks' integer codes
// multiplied with them by vpmaddwd (32 products, summed in pairs into 16 int32 lanes, per
// instruction), each 32 columns' int32 sums converted and scaled in float32 once. Each decoder
// calls emit(chunk, slot, codes, scale) for every 32 values of a block: chunk is the 32 values'
// index in the block, codes their integer values in 32 int16 lanes (offset included, so
// value = scale · code), scale the float scale of each int32 lane (lanes 2k and 2k + 1 share it),
// slot the accumulator to use (constant after inlining, so the accumulators stay in registers).
// Q5_0 and Q6_K only: there it makes the products about 1.5x faster than the float32 registers
// path (kernels_bench). Q8_0 is memory-bound either way, and Q4_K's scalar scale work is the
// limit, so they keep float32 inputs, and the rounding they would add (docs/decoding.md).

[[gnu::always_inline]] inline __m512i Codes32(const uint8_t* p) {  // 32 bytes → 32 int16 lanes, zero-extended
  return _mm512_cvtepu8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}

struct Q5_0I16 {
  static constexpr int64_t kElems = 32, kBytes = 22;
  template <class Emit>
  [[gnu::always_inline]] static inline void Decode(const uint8_t* b, Emit& emit, int slot) {
    uint32_t qh;
    std::memcpy(&qh, b + 2, 4);
    // Lanes 0–15 take the 16 bytes' low nibbles (values 0–15), lanes 16–31 their high nibbles.
    const __m512i bytes =
        _mm512_cvtepu8_epi16(_mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + 6))));
    const __m512i shifts = _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi16(4), 1);
    const __m512i low4 = _mm512_and_si512(_mm512_srlv_epi16(bytes, shifts), _mm512_set1_epi16(0x0f));
    // Value i is (nibble | bit i of qh · 16) − 16: lanes whose bit is clear lose 16.
    const __m512i codes = _mm512_mask_sub_epi16(low4, static_cast<__mmask32>(~qh), low4, _mm512_set1_epi16(16));
    emit(0, slot, codes, _mm512_set1_ps(Half(b)));
  }
};

struct Q6_KI16 {
  static constexpr int64_t kElems = 256, kBytes = 210;
  template <class Emit>
  [[gnu::always_inline]] static inline void Decode(const uint8_t* b, Emit& emit, int slot) {
    // d · scale for each of the 16 groups of 16 values; chunk j (32 values) spans groups 2j and
    // 2j + 1, so its int32 lanes 0–7 take the first and lanes 8–15 the second.
    const __m512 group_scale =
        _mm512_mul_ps(_mm512_set1_ps(Half(b + 208)),
                      _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + 192)))));
    const auto scale = [&](int j) {
      const __m512i pick = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_set1_epi32(2 * j)),
                                              _mm256_set1_epi32(2 * j + 1), 1);
      return _mm512_permutexvar_ps(pick, group_scale);
    };
    const __m512i low4 = _mm512_set1_epi16(0x0f), two = _mm512_set1_epi16(3), bias = _mm512_set1_epi16(32);
#pragma GCC unroll 2
    for (int h = 0; h < 2; ++h) {
      const __m512i lo = Codes32(b + 64 * h), lo32 = Codes32(b + 64 * h + 32), hb = Codes32(b + 128 + 32 * h);
      const __m512i q1 = _mm512_or_si512(_mm512_and_si512(lo, low4), _mm512_slli_epi16(_mm512_and_si512(hb, two), 4));
      const __m512i q2 = _mm512_or_si512(_mm512_and_si512(lo32, low4),
                                         _mm512_slli_epi16(_mm512_and_si512(_mm512_srli_epi16(hb, 2), two), 4));
      const __m512i q3 = _mm512_or_si512(_mm512_srli_epi16(lo, 4),
                                         _mm512_slli_epi16(_mm512_and_si512(_mm512_srli_epi16(hb, 4), two), 4));
      const __m512i q4 = _mm512_or_si512(_mm512_srli_epi16(lo32, 4), _mm512_slli_epi16(_mm512_srli_epi16(hb, 6), 4));
      emit(4 * h, slot + 4 * h, _mm512_sub_epi16(q1, bias), scale(4 * h));
      emit(4 * h + 1, slot + 4 * h + 1, _mm512_sub_epi16(q2, bias), scale(4 * h + 1));
      emit(4 * h + 2, slot + 4 * h + 2, _mm512_sub_epi16(q3, bias), scale(4 * h + 2));
      emit(4 * h + 3, slot + 4 * h + 3, _mm512_sub_epi16(q4, bias), scale(4 * h + 3));
    }
  }
};

// kRows rounded input rows against one packed row: four float32 accumulators per input row.
template <int kRows>
struct I16Accumulator {
  __m512 acc[kRows][4];
  const int16_t* q[kRows];    // the current block's first column
  const float* scale[kRows];  // and its first chunk
  [[gnu::always_inline]] inline void operator()(int chunk, int slot, __m512i codes, __m512 w_scale) {
    for (int r = 0; r < kRows; ++r) {
      const __m512i dots = _mm512_madd_epi16(codes, _mm512_loadu_si512(q[r] + 32 * chunk));
      acc[r][slot & 3] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dots), _mm512_mul_ps(w_scale, _mm512_set1_ps(scale[r][chunk])),
                                         acc[r][slot & 3]);
    }
  }
};

template <class Block, int kRows>
void DotRowsI16Avx512(const uint8_t* row, int64_t n_blocks, const I16Rows& x, int64_t i0, float* out) {
  constexpr int64_t kChunks = Block::kElems / 32;
  const int64_t row_chunks = x.cols / 32;
  I16Accumulator<kRows> a;
  for (int r = 0; r < kRows; ++r) {
    for (int k = 0; k < 4; ++k) a.acc[r][k] = _mm512_setzero_ps();
  }
  const auto step = [&](int64_t blk, int slot) __attribute__((always_inline)) {
    for (int r = 0; r < kRows; ++r) {
      a.q[r] = x.q + (i0 + r) * x.cols + blk * Block::kElems;
      a.scale[r] = x.scale + (i0 + r) * row_chunks + blk * kChunks;
    }
    const uint8_t* b = row + blk * Block::kBytes;
    for (int64_t o = 0; o < Block::kBytes; o += 64) {
      _mm_prefetch(reinterpret_cast<const char*>(b + kPrefetchBytes + o), _MM_HINT_T0);
    }
    Block::Decode(b, a, slot);
  };
  int64_t blk = 0;
  for (; blk + 2 <= n_blocks; blk += 2) {  // blocks of one chunk alternate between accumulator pairs
    step(blk, 0);
    step(blk + 1, 2);
  }
  if (blk < n_blocks) step(blk, 0);
  for (int r = 0; r < kRows; ++r) {
    out[r] = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a.acc[r][0], a.acc[r][1]),
                                                _mm512_add_ps(a.acc[r][2], a.acc[r][3])));
  }
}

template <class Block>
void DotRowRangeI16Avx512(const uint8_t* blocks, int64_t rows, int64_t r0, int64_t r1, const I16Rows& x, float* y) {
  const int64_t n_blocks = x.cols / Block::kElems, row_bytes = n_blocks * Block::kBytes;
  float out[4];
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* row = blocks + r * row_bytes;
    int64_t i = 0;
    for (; i + 4 <= x.m; i += 4) {
      DotRowsI16Avx512<Block, 4>(row, n_blocks, x, i, out);
      for (int k = 0; k < 4; ++k) y[(i + k) * rows + r] = out[k];
    }
    const int64_t left = x.m - i;
    if (left == 3) DotRowsI16Avx512<Block, 3>(row, n_blocks, x, i, out);
    if (left == 2) DotRowsI16Avx512<Block, 2>(row, n_blocks, x, i, out);
    if (left == 1) DotRowsI16Avx512<Block, 1>(row, n_blocks, x, i, out);
    for (int64_t k = 0; k < left; ++k) y[(i + k) * rows + r] = out[k];
  }
}

#pragma GCC diagnostic pop
#pragma GCC pop_options

using DotRowsFn = void (*)(const uint8_t*, int64_t, int64_t, int64_t, int64_t, const float*, int64_t, float*);

DotRowsFn FindDotRowsAvx512(io::GgmlType type) {
  switch (type) {
    case io::GgmlType::kQ8_0: return DotRowRangeAvx512<Q8_0Block>;
    case io::GgmlType::kQ5_0: return DotRowRangeAvx512<Q5_0Block>;
    case io::GgmlType::kQ4_K: return DotRowRangeAvx512<Q4_KBlock>;
    case io::GgmlType::kQ6_K: return DotRowRangeAvx512<Q6_KBlock>;
    default: return nullptr;
  }
}

using DotRowsI16Fn = void (*)(const uint8_t*, int64_t, int64_t, int64_t, const I16Rows&, float*);

DotRowsI16Fn FindDotRowsI16Avx512(io::GgmlType type) {
  switch (type) {
    case io::GgmlType::kQ5_0: return DotRowRangeI16Avx512<Q5_0I16>;
    case io::GgmlType::kQ6_K: return DotRowRangeI16Avx512<Q6_KI16>;
    default: return nullptr;
  }
}
#endif  // !__clang__ (its #pragma target differs; clang builds take the pieces path)
#endif

using DotsFn = void (*)(const float*, int64_t, const float*, int64_t, int64_t, float*);

bool CpuHas(DotIsa isa) {
#ifdef LLMTRAIN_HAVE_X86_DOTS
  if (isa == DotIsa::kAvx512I16) {
    return CpuHas(DotIsa::kAvx512) && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("f16c");
  }
  if (isa == DotIsa::kAvx512) return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (isa == DotIsa::kAvx2) return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
  return isa == DotIsa::kPlain;
}

DotsFn FindDots(DotIsa isa) {
  if (isa == DotIsa::kAuto) isa = BestDotIsa();
  TORCH_CHECK(CpuHas(isa), "BlockMatmul: this CPU lacks the requested instruction set");
#ifdef LLMTRAIN_HAVE_X86_DOTS
  if (isa == DotIsa::kAvx512 || isa == DotIsa::kAvx512I16) return DotsAvx512;
  if (isa == DotIsa::kAvx2) return DotsAvx2;
#endif
  return DotsPlain;
}

// Values per piece: whole granules, about kPieceValues.
int64_t PieceValues(const RowDecoder& w) {
  const int64_t g = std::max<int64_t>(1, w.granularity());
  return std::max<int64_t>(1, kPieceValues / g) * g;
}

}  // namespace

DotIsa BestDotIsa() {
  static const DotIsa best = [] {
    if (std::getenv("LLMTRAIN_NO_AVX512") == nullptr) {
      if (CpuHas(DotIsa::kAvx512I16) && std::getenv("LLMTRAIN_FLOAT_DOTS") == nullptr) return DotIsa::kAvx512I16;
      if (CpuHas(DotIsa::kAvx512)) return DotIsa::kAvx512;
    }
    if (CpuHas(DotIsa::kAvx2)) return DotIsa::kAvx2;
    return DotIsa::kPlain;
  }();
  return best;
}

GgufRowDecoder::GgufRowDecoder(io::GgmlType type, const uint8_t* blocks, int64_t rows, int64_t cols)
    : type_(type), decode_(io::FindBlockDecoder(type)), blocks_(blocks), rows_(rows), cols_(cols) {
  TORCH_CHECK(decode_ != nullptr, "GgufRowDecoder: ", io::GgmlTypeName(type), " cannot be decoded");
  const auto traits = io::GetGgmlTypeTraits(static_cast<uint32_t>(type));
  TORCH_CHECK(traits.has_value(), "GgufRowDecoder: unknown type");
  block_elems_ = traits->block_elems;
  block_bytes_ = traits->block_bytes;
  TORCH_CHECK(rows >= 0 && cols > 0 && cols % block_elems_ == 0, "GgufRowDecoder: ", cols, " columns are not whole ",
              io::GgmlTypeName(type), " blocks of ", block_elems_);
}

void GgufRowDecoder::Decode(int64_t row, int64_t col, int64_t count, float* out) const {
  const int64_t first = col / block_elems_;
  decode_(blocks_ + row * row_bytes() + first * block_bytes_, out, (count + block_elems_ - 1) / block_elems_);
}

bool GgufRowDecoder::HasDotRow(DotIsa isa) const {
#ifdef LLMTRAIN_HAVE_REGISTER_DOTS
  if (isa == DotIsa::kAuto) isa = BestDotIsa();
  if (isa == DotIsa::kAvx512I16) isa = DotIsa::kAvx512;
  static const bool cpu = CpuHas(DotIsa::kAvx512) && __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("f16c");
  return isa == DotIsa::kAvx512 && cpu && FindDotRowsAvx512(type_) != nullptr;
#else
  return false;
#endif
}

void GgufRowDecoder::DotRows(int64_t row_begin, int64_t row_end, const float* x, int64_t m, float* y,
                             DotIsa isa) const {
  TORCH_CHECK(HasDotRow(isa), "GgufRowDecoder::DotRows: no path for this type and instruction set");
#ifdef LLMTRAIN_HAVE_REGISTER_DOTS
  FindDotRowsAvx512(type_)(blocks_, rows_, cols_, row_begin, row_end, x, m, y);
#endif
}

bool GgufRowDecoder::HasDotRowI16() const {
#ifdef LLMTRAIN_HAVE_REGISTER_DOTS
  static const bool cpu = CpuHas(DotIsa::kAvx512I16);
  return cpu && FindDotRowsI16Avx512(type_) != nullptr;
#else
  return false;
#endif
}

void GgufRowDecoder::DotRowsI16(int64_t row_begin, int64_t row_end, const I16Rows& x, float* y) const {
  TORCH_CHECK(HasDotRowI16(), "GgufRowDecoder::DotRowsI16: no path for this type on this CPU");
  TORCH_CHECK(x.cols == cols_, "GgufRowDecoder::DotRowsI16: ", x.cols, " input columns for ", cols_);
#ifdef LLMTRAIN_HAVE_REGISTER_DOTS
  FindDotRowsI16Avx512(type_)(blocks_, rows_, row_begin, row_end, x, y);
#endif
}

I16Rows RoundRowsI16(const float* x, int64_t m, int64_t cols, std::vector<int16_t>& q, std::vector<float>& scale) {
  TORCH_CHECK(m >= 0 && cols % 32 == 0, "RoundRowsI16: ", cols, " columns are not whole chunks of 32");
  const int64_t chunks = m * (cols / 32);
  q.resize(static_cast<size_t>(m * cols));
  scale.resize(static_cast<size_t>(chunks));
  for (int64_t c = 0; c < chunks; ++c) {
    const float* v = x + 32 * c;
    float amax = 0.0f;
    bool finite = true;
    for (int k = 0; k < 32; ++k) {
      amax = std::max(amax, std::fabs(v[k]));
      finite = finite && std::isfinite(v[k]);
    }
    int16_t* out = q.data() + 32 * c;
    if (!finite) {  // codes 0 and a NaN scale: every output these 32 reach is NaN
      std::fill_n(out, 32, int16_t{0});
      scale[static_cast<size_t>(c)] = std::numeric_limits<float>::quiet_NaN();
      continue;
    }
    const float inv = amax > 0.0f ? 32767.0f / amax : 0.0f;
    for (int k = 0; k < 32; ++k) {
      out[k] = static_cast<int16_t>(std::clamp(std::nearbyint(v[k] * inv), -32767.0f, 32767.0f));
    }
    scale[static_cast<size_t>(c)] = amax / 32767.0f;
  }
  return I16Rows{q.data(), scale.data(), m, cols};
}

bool RoundsInputI16(const RowDecoder& w, DotIsa isa) {
  if (isa == DotIsa::kAuto) isa = BestDotIsa();
  return isa == DotIsa::kAvx512I16 && w.HasDotRowI16();
}

void RoundedRowsI16(const float* x, int64_t m, int64_t cols, float* out) {
  // Not thread_local as in BlockMatmul: a prefill's m is unbounded, and its rows are not kept.
  std::vector<int16_t> q;
  std::vector<float> scale;
  const I16Rows rounded = RoundRowsI16(x, m, cols, q, scale);
  for (int64_t c = 0; c < m * (cols / 32); ++c) {
    const float s = rounded.scale[c];
    for (int64_t k = 0; k < 32; ++k) out[32 * c + k] = static_cast<float>(rounded.q[32 * c + k]) * s;
  }
}

void BlockMatmul(const RowDecoder& w, const float* x, int64_t m, float* y, DotIsa isa) {
  if (isa == DotIsa::kAuto) isa = BestDotIsa();
  TORCH_CHECK(CpuHas(isa), "BlockMatmul: this CPU lacks the requested instruction set");
  if (RoundsInputI16(w, isa)) {
    if (w.rows() == 0 || m == 0) return;
    thread_local std::vector<int16_t> q;
    thread_local std::vector<float> scale;
    const I16Rows rounded = RoundRowsI16(x, m, w.cols(), q, scale);
    const int64_t grain = std::max<int64_t>(1, 65536 / std::max<int64_t>(1, w.cols()));
    at::parallel_for(0, w.rows(), grain, [&](int64_t r0, int64_t r1) { w.DotRowsI16(r0, r1, rounded, y); });
    return;
  }
  if (isa == DotIsa::kAvx512I16) isa = DotIsa::kAvx512;
  const DotsFn dots = FindDots(isa);
  if (w.HasDotRow(isa)) {  // straight from the packed rows
    const int64_t grain = std::max<int64_t>(1, 65536 / std::max<int64_t>(1, w.cols()));
    at::parallel_for(0, w.rows(), grain, [&](int64_t r0, int64_t r1) { w.DotRows(r0, r1, x, m, y, isa); });
    return;
  }
  const int64_t rows = w.rows(), cols = w.cols(), piece = PieceValues(w);
  if (rows == 0 || m == 0) return;
  // Enough rows per task that a task reads at least ~64 KiB of packed weight.
  const int64_t grain = std::max<int64_t>(1, 65536 / std::max<int64_t>(1, cols));
  at::parallel_for(0, rows, grain, [&](int64_t r0, int64_t r1) {
    thread_local std::vector<float> buffer, acc;
    if (static_cast<int64_t>(buffer.size()) < piece) buffer.resize(piece);
    if (static_cast<int64_t>(acc.size()) < m) acc.resize(m);
    for (int64_t r = r0; r < r1; ++r) {
      std::fill_n(acc.data(), m, 0.0f);
      for (int64_t c = 0; c < cols; c += piece) {
        const int64_t n = std::min(piece, cols - c);
        w.Decode(r, c, n, buffer.data());
        dots(buffer.data(), n, x + c, cols, m, acc.data());
      }
      for (int64_t i = 0; i < m; ++i) y[i * rows + r] = acc[i];
    }
  });
}

void DecodeRows(const RowDecoder& w, int64_t row_begin, int64_t row_end, float* out) {
  const int64_t cols = w.cols();
  at::parallel_for(row_begin, row_end, std::max<int64_t>(1, 16384 / std::max<int64_t>(1, cols)),
                   [&](int64_t r0, int64_t r1) {
                     for (int64_t r = r0; r < r1; ++r) w.Decode(r, 0, cols, out + (r - row_begin) * cols);
                   });
}

}  // namespace llmtrain::kernels
