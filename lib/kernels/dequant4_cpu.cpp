// 4-bit dequantization on the CPU (kernels/dequant4.h): AVX-512 or AVX2 where the CPU has them,
// a scalar loop otherwise and for the ragged ends. Every path computes code[nibble] × scale as one
// float32 product and rounds it the same way, so all of them give identical results (quant_test
// runs the AVX2 path with LLMTRAIN_NO_AVX512=1 and compares).
#include <c10/core/ScalarType.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "core/half.h"
#include "llmtrain/kernels/dequant4.h"

namespace llmtrain::kernels::detail {
namespace {

// Rounds a float32 product to the state's dtype (kept as float32 bits) the way .to(dtype) does.
inline float RoundTo(float v, c10::ScalarType dtype) {
  if (dtype == c10::kBFloat16) return ::llmtrain::detail::Bf16ToFloat(::llmtrain::detail::FloatToBf16(v));
  if (dtype == c10::kHalf) return ::llmtrain::detail::F16ToFloat(::llmtrain::detail::FloatToF16(v));
  return v;
}

inline void Store(float v, c10::ScalarType out_dtype, void* out, int64_t i) {
  switch (out_dtype) {
    case c10::kFloat: static_cast<float*>(out)[i] = v; break;
    case c10::kBFloat16: static_cast<uint16_t*>(out)[i] = ::llmtrain::detail::FloatToBf16(v); break;
    default: static_cast<uint16_t*>(out)[i] = ::llmtrain::detail::FloatToF16(v); break;
  }
}

inline uint8_t Nibble(const uint8_t* packed, int64_t e) {
  const uint8_t byte = packed[e / 2];
  return e % 2 == 0 ? byte >> 4 : byte & 0x0F;
}

#if defined(__x86_64__)
// 16 elements from 8 packed bytes (element 2j is byte j's high nibble), times `scale`, stored as
// float32, or rounded to bfloat16 (to_bf16), or rounded to bfloat16 and kept as float32.
enum class Avx2Out { kF32, kBf16, kBf16AsF32 };

__attribute__((target("avx2"))) void Dequant16Avx2(const uint8_t* bytes, __m256 lo_tab, __m256 hi_tab,
                                                   __m256 scale, Avx2Out mode, void* out) {
  uint64_t raw;
  std::memcpy(&raw, bytes, 8);
  const __m128i b = _mm_cvtsi64_si128(static_cast<long long>(raw));
  const __m128i mask = _mm_set1_epi8(0x0F);
  const __m128i hi = _mm_and_si128(_mm_srli_epi16(b, 4), mask);
  const __m128i lo = _mm_and_si128(b, mask);
  const __m128i nibbles = _mm_unpacklo_epi8(hi, lo);  // element order: hi0, lo0, hi1, lo1, …
  __m256 v[2];
  for (int half = 0; half < 2; ++half) {
    const __m256i idx = _mm256_cvtepu8_epi32(half == 0 ? nibbles : _mm_srli_si128(nibbles, 8));
    // A 16-entry lookup: two 8-entry permutes, picked by bit 3 of the index (moved to the sign).
    const __m256 from_lo = _mm256_permutevar8x32_ps(lo_tab, idx);
    const __m256 from_hi = _mm256_permutevar8x32_ps(hi_tab, idx);
    const __m256 code = _mm256_blendv_ps(from_lo, from_hi, _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)));
    v[half] = _mm256_mul_ps(code, scale);
  }
  if (mode == Avx2Out::kF32) {
    _mm256_storeu_ps(static_cast<float*>(out), v[0]);
    _mm256_storeu_ps(static_cast<float*>(out) + 8, v[1]);
    return;
  }
  // Round to nearest even on the upper 16 bits (the values are finite).
  __m256i r[2];
  for (int half = 0; half < 2; ++half) {
    const __m256i bits = _mm256_castps_si256(v[half]);
    const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
    r[half] = _mm256_add_epi32(bits, _mm256_add_epi32(_mm256_set1_epi32(0x7FFF), odd));
  }
  if (mode == Avx2Out::kBf16AsF32) {
    const __m256i keep = _mm256_set1_epi32(static_cast<int>(0xFFFF0000u));
    _mm256_storeu_si256(static_cast<__m256i*>(out), _mm256_and_si256(r[0], keep));
    _mm256_storeu_si256(static_cast<__m256i*>(out) + 1, _mm256_and_si256(r[1], keep));
    return;
  }
  const __m256i packed = _mm256_packus_epi32(_mm256_srli_epi32(r[0], 16), _mm256_srli_epi32(r[1], 16));
  _mm256_storeu_si256(static_cast<__m256i*>(out), _mm256_permute4x64_epi64(packed, 0xD8));
}

// Elements [e, end) of one block (e even) in groups of 16; returns where the scalar tail starts.
__attribute__((target("avx2"))) int64_t DequantBlockAvx2(const uint8_t* packed, const float* code, float scale,
                                                         int64_t e, int64_t end, int64_t begin, Avx2Out mode,
                                                         size_t out_size, void* out) {
  const __m256 lo_tab = _mm256_loadu_ps(code), hi_tab = _mm256_loadu_ps(code + 8);
  const __m256 scale_v = _mm256_set1_ps(scale);
  for (; e + 16 <= end; e += 16) {
    Dequant16Avx2(packed + e / 2, lo_tab, hi_tab, scale_v, mode, static_cast<char*>(out) + (e - begin) * out_size);
  }
  return e;
}

// GCC 12's AVX-512 headers trip -Wmaybe-uninitialized on their own _mm512_undefined_* values.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
// AVX-512: one 16-entry permute looks up 16 codes at once. Same products and the same
// round-to-nearest-even as the AVX2 path, so the results are identical.
__attribute__((target("avx512f,avx512bw,avx512vl"))) int64_t DequantBlockAvx512(
    const uint8_t* packed, const float* code, float scale, int64_t e, int64_t end, int64_t begin, Avx2Out mode,
    size_t out_size, void* out) {
  const __m512 table = _mm512_loadu_ps(code);
  const __m512 scale_v = _mm512_set1_ps(scale);
  const __m128i mask = _mm_set1_epi8(0x0F);
  // 32 elements (16 bytes) per step while they last: two lookups from one load.
  if (mode == Avx2Out::kBf16) {
    for (; e + 32 <= end; e += 32) {
      const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(packed + e / 2));
      const __m128i hi = _mm_and_si128(_mm_srli_epi16(b, 4), mask), lo = _mm_and_si128(b, mask);
      __m256i half[2];
      for (int k = 0; k < 2; ++k) {
        const __m128i nibbles = k == 0 ? _mm_unpacklo_epi8(hi, lo) : _mm_unpackhi_epi8(hi, lo);
        const __m512 v = _mm512_mul_ps(_mm512_permutexvar_ps(_mm512_cvtepu8_epi32(nibbles), table), scale_v);
        const __m512i bits = _mm512_castps_si512(v);
        const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
        const __m512i rounded = _mm512_add_epi32(bits, _mm512_add_epi32(_mm512_set1_epi32(0x7FFF), odd));
        half[k] = _mm512_cvtepi32_epi16(_mm512_srli_epi32(rounded, 16));
      }
      char* dst = static_cast<char*>(out) + (e - begin) * out_size;
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), half[0]);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst) + 1, half[1]);
    }
  }
  for (; e + 16 <= end; e += 16) {
    uint64_t raw;
    std::memcpy(&raw, packed + e / 2, 8);
    const __m128i b = _mm_cvtsi64_si128(static_cast<long long>(raw));
    const __m128i nibbles = _mm_unpacklo_epi8(_mm_and_si128(_mm_srli_epi16(b, 4), mask), _mm_and_si128(b, mask));
    const __m512 v = _mm512_mul_ps(_mm512_permutexvar_ps(_mm512_cvtepu8_epi32(nibbles), table), scale_v);
    char* dst = static_cast<char*>(out) + (e - begin) * out_size;
    if (mode == Avx2Out::kF32) {
      _mm512_storeu_ps(dst, v);
      continue;
    }
    const __m512i bits = _mm512_castps_si512(v);
    const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
    const __m512i rounded = _mm512_add_epi32(bits, _mm512_add_epi32(_mm512_set1_epi32(0x7FFF), odd));
    if (mode == Avx2Out::kBf16AsF32) {
      _mm512_storeu_si512(dst, _mm512_and_si512(rounded, _mm512_set1_epi32(static_cast<int>(0xFFFF0000u))));
    } else {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), _mm512_cvtepi32_epi16(_mm512_srli_epi32(rounded, 16)));
    }
  }
  return e;
}

#pragma GCC diagnostic pop

bool HasAvx512() {
  static const bool has = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512vl") && std::getenv("LLMTRAIN_NO_AVX512") == nullptr;
  return has;
}

bool HasAvx2() {
  static const bool has = __builtin_cpu_supports("avx2");
  return has;
}
#endif


}  // namespace

void Dequantize4bitCpu(const uint8_t* packed, const float* scales, const float* code,
                        int64_t blocksize, int64_t begin, int64_t count, c10::ScalarType state_dtype,
                        c10::ScalarType out_dtype, void* out) {
  const int64_t end = begin + count;
  const size_t out_size = c10::elementSize(out_dtype);
#if defined(__x86_64__)
  const bool vector = HasAvx2() && (out_dtype == c10::kFloat || out_dtype == c10::kBFloat16) &&
                      (state_dtype == c10::kFloat || state_dtype == c10::kBFloat16);
  const Avx2Out mode = out_dtype == c10::kBFloat16 ? Avx2Out::kBf16
                       : state_dtype == c10::kBFloat16 ? Avx2Out::kBf16AsF32 : Avx2Out::kF32;
#endif
  int64_t e = begin;
  while (e < end) {
    const int64_t block = e / blocksize;
    const int64_t segment_end = std::min(end, (block + 1) * blocksize);
    const float scale = scales[block];
#if defined(__x86_64__)
    if (vector) {
      if (e % 2 != 0) {  // an odd start: one element, so the vector loop starts on a byte
        Store(RoundTo(code[Nibble(packed, e)] * scale, state_dtype), out_dtype, out, e - begin);
        ++e;
      }
      e = HasAvx512() ? DequantBlockAvx512(packed, code, scale, e, segment_end, begin, mode, out_size, out)
                      : DequantBlockAvx2(packed, code, scale, e, segment_end, begin, mode, out_size, out);
    }
#endif
    for (; e < segment_end; ++e) {
      Store(RoundTo(code[Nibble(packed, e)] * scale, state_dtype), out_dtype, out, e - begin);
    }
  }
}

}  // namespace llmtrain::kernels::detail
