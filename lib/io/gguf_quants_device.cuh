// GGUF block decoding on the device (internal): DeviceBlock<T>::Value(b, e) is value e of the
// block at b. On the device, products and sums use the _rn intrinsics so nvcc fuses nothing:
// every value is bit-identical to the CPU oracle (gguf_quants.cpp) and to gguf-py. Shared by the
// dequantization kernels (gguf_quants.cu) and the fused products of kernels/gguf_matvec.cu.
//
// The same code also compiles for the host without CUDA (plain float operations, one rounding
// each; the includer compiles with -ffp-contract=off), so that io_test checks its indexing
// against the CPU oracle on machines without a GPU.
#pragma once

#include <cstdint>
#include <type_traits>

#include "llmtrain/io/gguf.h"

#if defined(__CUDACC__)
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#define LLMTRAIN_DEVICE_FN __device__ __forceinline__
#else
#include "core/half.h"
#define LLMTRAIN_DEVICE_FN inline
#endif

namespace llmtrain::io::detail {

#if defined(__CUDACC__)
LLMTRAIN_DEVICE_FN float DeviceMul(float a, float b) { return __fmul_rn(a, b); }
LLMTRAIN_DEVICE_FN float DeviceAdd(float a, float b) { return __fadd_rn(a, b); }
LLMTRAIN_DEVICE_FN float DeviceSub(float a, float b) { return __fsub_rn(a, b); }
LLMTRAIN_DEVICE_FN float DeviceHalf(const uint8_t* p) {
  return __half2float(__ushort_as_half(static_cast<unsigned short>(p[0] | (p[1] << 8))));
}
LLMTRAIN_DEVICE_FN float DeviceBf16(const uint8_t* p) {
  return __uint_as_float(static_cast<unsigned>(p[0] | (p[1] << 8)) << 16);
}
#else
inline float DeviceMul(float a, float b) { return a * b; }
inline float DeviceAdd(float a, float b) { return a + b; }
inline float DeviceSub(float a, float b) { return a - b; }
inline float DeviceHalf(const uint8_t* p) {
  return ::llmtrain::detail::F16ToFloat(static_cast<uint16_t>(p[0] | (p[1] << 8)));
}
inline float DeviceBf16(const uint8_t* p) {
  return ::llmtrain::detail::Bf16ToFloat(static_cast<uint16_t>(p[0] | (p[1] << 8)));
}
#endif

// Bit e of the 32-bit little-endian field at p (Q5_0 / Q5_1's fifth bits; unaligned).
LLMTRAIN_DEVICE_FN int DeviceBit(const uint8_t* p, int e) { return (p[e >> 3] >> (e & 7)) & 1; }

// Scale and min of sub-block j of a Q4_K / Q5_K block's 12 packed bytes (UnpackKScales).
LLMTRAIN_DEVICE_FN void DeviceKScale(const uint8_t* s, int j, int* sc, int* mn) {
  if (j < 4) {
    *sc = s[j] & 63;
    *mn = s[j + 4] & 63;
  } else {
    *sc = (s[j + 4] & 0x0f) | ((s[j - 4] >> 6) << 4);
    *mn = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
  }
}

template <GgmlType kType>
struct DeviceBlock;

template <>
struct DeviceBlock<GgmlType::kF16> {
  static constexpr int kElems = 1, kBytes = 2;
  LLMTRAIN_DEVICE_FN static float Value(const uint8_t* b, int) { return DeviceHalf(b); }
};

template <>
struct DeviceBlock<GgmlType::kBF16> {
  static constexpr int kElems = 1, kBytes = 2;
  LLMTRAIN_DEVICE_FN static float Value(const uint8_t* b, int) { return DeviceBf16(b); }
};

template <>
struct DeviceBlock<GgmlType::kQ8_0> {
  static constexpr int kElems = 32, kBytes = 34;
  LLMTRAIN_DEVICE_FN static float Value(const uint8_t* b, int e) {
    return DeviceMul(static_cast<float>(static_cast<int8_t>(b[2 + e])), DeviceHalf(b));
  }
};

template <>
struct DeviceBlock<GgmlType::kQ4_0> {
  static constexpr int kElems = 32, kBytes = 18;
  LLMTRAIN_DEVICE_FN static float Value(const uint8_t* b, int e) {
    const int q = e < 16 ? (b[2 + e] & 0x0f) : (b[2 + e - 16] >> 4);
    return DeviceMul(DeviceHalf(b), static_cast<float>(q - 8));
  }
};

template <>
struct DeviceBlock<GgmlType::kQ4_1> {
  static constexpr int kElems = 32, kBytes = 20;
  LLMTRAIN_DEVICE_FN static float Value(const uint8_t* b, int e) {
    const int q = e < 16 ? (b[4 + e] & 0x0f) : (b[4 + e - 16] >> 4);
    return DeviceAdd(DeviceMul(DeviceHalf(b), static_cast<float>(q)), DeviceHalf(b + 2));
  }
};

template <>
struct DeviceBlock<GgmlType::kQ5_0> {
  static constexpr int kElems = 32, kBytes = 22;
  LLMTRAIN_DEVICE_FN static float Value(const uint8_t* b, int e) {
    const int nib = e < 16 ? (b[6 + e] & 0x0f) : (b[6 + e - 16] >> 4);
    const int q = nib | (DeviceBit(b + 2, e) << 4);
    return DeviceMul(DeviceHalf(b), static_cast<float>(q - 16));
  }
};

template <>
struct DeviceBlock<GgmlType::kQ5_1> {
  static constexpr int kElems = 32, kBytes = 24;
  LLMTRAIN_DEVICE_FN static float Value(const uint8_t* b, int e) {
    const int nib = e < 16 ? (b[8 + e] & 0x0f) : (b[8 + e - 16] >> 4);
    const int q = nib | (DeviceBit(b + 4, e) << 4);
    return DeviceAdd(DeviceMul(DeviceHalf(b), static_cast<float>(q)), DeviceHalf(b + 2));
  }
};

// Q4_K and Q5_K: element e is sub-block e / 32, whose 32 values are the low (even sub-blocks) or
// high (odd) nibbles of qs[32 · (sub / 2) ...]; Q5_K's fifth bit is bit sub of qh[e % 32].
// (d · sc) · q − dmin · m, as gguf-py.
template <bool kFiveBit>
struct DeviceBlockQK {
  static constexpr int kElems = 256, kBytes = kFiveBit ? 176 : 144;
  LLMTRAIN_DEVICE_FN static float Value(const uint8_t* b, int e) {
    const int c = e / 64, l = e % 32, high = (e / 32) % 2, sub = 2 * c + high;
    int sc, mn;
    DeviceKScale(b + 4, sub, &sc, &mn);
    const uint8_t* qs = b + (kFiveBit ? 48 : 16);
    int q = high ? (qs[32 * c + l] >> 4) : (qs[32 * c + l] & 0x0f);
    if (kFiveBit) q |= ((b[16 + l] >> sub) & 1) << 4;
    const float d = DeviceMul(DeviceHalf(b), static_cast<float>(sc));
    const float m = DeviceMul(DeviceHalf(b + 2), static_cast<float>(mn));
    return DeviceSub(DeviceMul(d, static_cast<float>(q)), m);
  }
};
template <>
struct DeviceBlock<GgmlType::kQ4_K> : DeviceBlockQK<false> {};
template <>
struct DeviceBlock<GgmlType::kQ5_K> : DeviceBlockQK<true> {};

// Q6_K: halves of 128 values; in each, quarter q of 32 takes the low (q < 2) or high nibbles of
// ql[64h + 32 (q % 2) + l] and bits 2q of qh[32h + l]; (d · scales[e / 16]) · (code − 32).
template <>
struct DeviceBlock<GgmlType::kQ6_K> {
  static constexpr int kElems = 256, kBytes = 210;
  LLMTRAIN_DEVICE_FN static float Value(const uint8_t* b, int e) {
    const int h = e / 128, r = e % 128, quarter = r / 32, l = r % 32;
    const uint8_t* L = b + 64 * h;
    const uint8_t* H = b + 128 + 32 * h;
    const int8_t* S = reinterpret_cast<const int8_t*>(b + 192) + 8 * h;
    const int lo = (quarter % 2 == 0) ? L[l] : L[l + 32];
    const int nib = quarter < 2 ? (lo & 0x0f) : (lo >> 4);
    const int q = (nib | (((H[l] >> (2 * quarter)) & 3) << 4)) - 32;
    const float d = DeviceMul(DeviceHalf(b + 208), static_cast<float>(S[l / 16 + 2 * quarter]));
    return DeviceMul(d, static_cast<float>(q));
  }
};

/// Calls f(std::integral_constant<GgmlType, T>{}) for a type the device decodes (F16, BF16, Q8_0,
/// Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K) and returns true; false for any other type. Host code.
template <typename F>
bool VisitDeviceType(GgmlType type, F&& f) {
  switch (type) {
#define LLMTRAIN_DEVICE_TYPE(T) \
  case GgmlType::T: f(std::integral_constant<GgmlType, GgmlType::T>{}); return true;
    LLMTRAIN_DEVICE_TYPE(kF16)
    LLMTRAIN_DEVICE_TYPE(kBF16)
    LLMTRAIN_DEVICE_TYPE(kQ8_0)
    LLMTRAIN_DEVICE_TYPE(kQ4_0)
    LLMTRAIN_DEVICE_TYPE(kQ4_1)
    LLMTRAIN_DEVICE_TYPE(kQ5_0)
    LLMTRAIN_DEVICE_TYPE(kQ5_1)
    LLMTRAIN_DEVICE_TYPE(kQ4_K)
    LLMTRAIN_DEVICE_TYPE(kQ5_K)
    LLMTRAIN_DEVICE_TYPE(kQ6_K)
#undef LLMTRAIN_DEVICE_TYPE
    default: return false;
  }
}

}  // namespace llmtrain::io::detail
