// Bit-exact conversions between float32 and the 16-bit float formats (internal header).
// f16 is IEEE binary16; bf16 is the upper half of a binary32. Float→16-bit rounds to nearest
// even, as numpy's astype(float16) and torch's .to(bfloat16) do; NaN stays NaN.
#pragma once

#include <cstdint>
#include <cstring>

namespace llmtrain::detail {

inline float BitsToFloat(uint32_t bits) {
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline uint32_t FloatToBits(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  return bits;
}

inline float Bf16ToFloat(uint16_t h) { return BitsToFloat(static_cast<uint32_t>(h) << 16); }

inline uint16_t FloatToBf16(float f) {
  uint32_t bits = FloatToBits(f);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x0040u);
  bits += 0x7fffu + ((bits >> 16) & 1u);  // round to nearest, ties to even
  return static_cast<uint16_t>(bits >> 16);
}

// IEEE binary16 → binary32: exact for every input, subnormals included.
inline float F16ToFloat(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  if (exp == 0x1f) return BitsToFloat(sign | 0x7f800000u | (mant << 13));  // inf / NaN
  if (exp == 0) {
    if (mant == 0) return BitsToFloat(sign);
    // Subnormal: value = mant · 2^-24, exactly representable in binary32.
    float v = static_cast<float>(mant) * 5.9604644775390625e-08f;
    return (sign != 0u) ? -v : v;
  }
  return BitsToFloat(sign | ((exp + 112u) << 23) | (mant << 13));
}

// binary32 → binary16 exactly as numpy's astype(float16): round to nearest even, overflow
// gives inf, NaN stays NaN.
inline uint16_t FloatToF16(float f) {
  const uint32_t bits = FloatToBits(f);
  const uint16_t sign = static_cast<uint16_t>((bits >> 16) & 0x8000u);
  const uint32_t abs = bits & 0x7fffffffu;
  if (abs > 0x7f800000u) {
    // NaN: keep the top payload bits and never turn into inf (numpy's rule: no quiet bit forced).
    const uint16_t payload = static_cast<uint16_t>((abs >> 13) & 0x3ffu);
    return static_cast<uint16_t>(sign | 0x7c00u | (payload == 0 ? 1u : payload));
  }
  if (abs >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // rounds to inf
  if (abs < 0x38800000u) {
    // Result is subnormal or zero: add 0.5 (as a float) so the FPU rounds to the 2^-24 grid.
    const float magnitude = BitsToFloat(abs) + 0.5f;
    return static_cast<uint16_t>(sign | (FloatToBits(magnitude) - 0x3f000000u));
  }
  const uint32_t mant_odd = (abs >> 13) & 1u;
  const uint32_t rounded = abs + 0xc8000fffu + mant_odd;  // rebias exponent (-112 << 23) + rounding
  return static_cast<uint16_t>(sign | (rounded >> 13));
}

}  // namespace llmtrain::detail
