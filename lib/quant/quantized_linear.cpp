// QuantizedLinear: a 4-bit frozen weight multiplied tile by tile (quant/quantized_linear.h).
//
// CPU forward: the output rows of W are cut into tiles of about 1 MiB once dequantized; each
// thread takes whole tiles, dequantizes one into its own reused buffer (so it stays in cache) and
// runs a single-threaded GEMM of the input by that tile into the output's columns. CPU backward:
// grad_x = Σ over tiles of grad_y[:, tile] · W[tile]; tiles go one after another, each
// dequantized by all threads and accumulated by a multithreaded GEMM (a parallel sum over tiles
// would need one (M, in) accumulator per thread).
#include "llmtrain/quant/quantized_linear.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/autocast_mode.h>
#include <ATen/core/grad_mode.h>
#include <ATen/record_function.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "core/half.h"

#if LLMTRAIN_WITH_CUDA
#include <c10/cuda/CUDAStream.h>

#include "quant/quant4_cuda.h"
#endif

namespace llmtrain::quant {
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

std::atomic<int64_t> g_large_tile_bytes{int64_t{16} << 20};

// Output rows per tile: about `bytes` of dequantized weight (1 MiB unless given), a multiple of 16
// rows.
int64_t TileRows(int64_t in, int64_t out, c10::ScalarType dtype, int64_t bytes = int64_t{1} << 20) {
  const int64_t bytes_per_row = in * static_cast<int64_t>(c10::elementSize(dtype));
  const int64_t rows = std::max<int64_t>(16, (bytes / std::max<int64_t>(1, bytes_per_row)) / 16 * 16);
  return std::min(rows, out);
}

// Reused per-thread scratch memory (a fresh 1 MiB tensor per tile would page-fault every time).
template <typename T>
T* Scratch(std::vector<T>* buffer, size_t n) {
  if (buffer->size() < n) buffer->resize(n);
  return buffer->data();
}

// grad_x = grad_y · W through the frozen 4-bit weight; W gets no gradient.
class QuantizedMatmul : public torch::autograd::Function<QuantizedMatmul> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, int64_t layer) {
    ctx->saved_data["layer"] = layer;
    return reinterpret_cast<const QuantizedLinear*>(layer)->MatmulNoGrad(x);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto* layer = reinterpret_cast<const QuantizedLinear*>(ctx->saved_data["layer"].toInt());
    return {layer->MatmulTransposedNoGrad(grads[0]), at::Tensor()};
  }
};

}  // namespace

void DequantizeElements(const uint8_t* packed, const float* scales, const float* code,
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

QuantizedLinear::QuantizedLinear(Quantized4 weight, at::Tensor bias)
    : weight_(std::move(weight)), bias_(std::move(bias)) {
  TORCH_CHECK(weight_.state.shape.size() == 2, "QuantizedLinear: the quantized weight must be 2-D (out, in)");
  out_ = weight_.state.shape[0];
  in_ = weight_.state.shape[1];
  TORCH_CHECK(!bias_.defined() || (bias_.dim() == 1 && bias_.size(0) == out_),
              "QuantizedLinear: bias must have ", out_, " elements");
  weight_.packed = weight_.packed.contiguous();
  code_ = weight_.state.code.to(at::kFloat).contiguous();
  // Without double quantization the scales are the stored float32 absmax. With it they stay
  // 8-bit and each tile rebuilds its own from the nested codes (DequantizeRows), so the layer
  // keeps the memory double quantization saves.
  if (!weight_.state.nested) scales_ = weight_.state.absmax.to(at::kFloat).contiguous();
}

int64_t QuantizedLinear::StorageBytes() const {
  const Quant4State& s = weight_.state;
  int64_t bytes = weight_.packed.nbytes() + s.absmax.nbytes() + s.code.nbytes() + 4 /*offset*/;
  if (s.nested) bytes += s.nested_absmax.nbytes() + s.nested_code.nbytes();
  return bytes;
}

at::Tensor QuantizedLinear::DenseWeight(c10::ScalarType dtype) const {
  return Dequantize4bit(weight_).to(dtype);
}

void QuantizedLinear::DequantizeRows(int64_t row_begin, int64_t row_end, at::Tensor& out) const {
  RECORD_FUNCTION("llmtrain::dequantize_4bit", std::vector<c10::IValue>());
  const Quant4State& s = weight_.state;
  const int64_t begin = row_begin * in_, count = (row_end - row_begin) * in_;
  const float* scales = nullptr;
  static thread_local std::vector<float> tile_scales;
  int64_t scale_base = 0;
  if (s.nested) {
    // The tile's block scales from their 8-bit codes, as BlockScales computes them.
    const int64_t first = begin / s.blocksize, last = (begin + count - 1) / s.blocksize;
    float* t = Scratch(&tile_scales, static_cast<size_t>(last - first + 1));
    const uint8_t* q = s.absmax.data_ptr<uint8_t>();
    const float* nested_code = s.nested_code.data_ptr<float>();
    const float* nested = s.nested_absmax.data_ptr<float>();
    for (int64_t b = first; b <= last; ++b) {
      const float scale = nested_code[q[b]] * nested[b / s.nested_blocksize];
      t[b - first] = scale + s.offset;
    }
    scales = t;
    scale_base = first;
  } else {
    scales = scales_.data_ptr<float>();
  }
  // DequantizeElements indexes scales by absolute block: shift the pointer back by scale_base.
  // Splitting the rows over threads keeps each block's arithmetic the same.
  const uint8_t* packed = weight_.packed.data_ptr<uint8_t>();
  const float* code = code_.data_ptr<float>();
  const c10::ScalarType out_dtype = out.scalar_type();
  // Straight into the output dtype from the float32 product, as bitsandbytes' 4-bit matmul does
  // (not through the state's dtype, which Dequantize4bit rounds to first).
  const c10::ScalarType direct = c10::kFloat;
  char* base = static_cast<char*>(out.data_ptr());
  const size_t elem = c10::elementSize(out_dtype);
  const auto run = [&](int64_t r0, int64_t r1) {
    const int64_t e0 = (row_begin + r0) * in_;
    DequantizeElements(packed, scales - scale_base, code, s.blocksize, e0, (r1 - r0) * in_, direct,
                       out_dtype, base + (r0 * in_) * elem);
  };
  if (at::in_parallel_region()) {
    run(0, row_end - row_begin);
  } else {
    at::parallel_for(0, row_end - row_begin, std::max<int64_t>(1, 16384 / std::max<int64_t>(1, in_)), run);
  }
}

at::Tensor QuantizedLinear::DequantizedTile(int64_t r0, int64_t rows, c10::ScalarType dtype,
                                            std::vector<char>* buffer) const {
  char* mem = Scratch(buffer, static_cast<size_t>(rows * in_) * c10::elementSize(dtype));
  at::Tensor w = at::from_blob(mem, {rows, in_}, at::TensorOptions().dtype(dtype));
  DequantizeRows(r0, r0 + rows, w);
  return w;
}

at::Tensor QuantizedLinear::MatmulNoGrad(const at::Tensor& x) const {
  TORCH_CHECK(x.size(-1) == in_, "QuantizedLinear: input has ", x.size(-1), " features, the layer ", in_);
  std::vector<int64_t> out_shape(x.sizes().begin(), x.sizes().end());
  out_shape.back() = out_;
  const at::Tensor x2 = x.reshape({-1, in_}).contiguous();
  if (x.is_cuda()) return CudaMatmul(x2, /*transposed=*/false).view(out_shape);
  const int64_t M = x2.size(0);
  const c10::ScalarType dtype = x.scalar_type();
  at::Tensor y = at::empty({M, out_}, x.options());
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf,
              "QuantizedLinear: input dtype must be float32, bfloat16 or float16");
  if (M == 0) return y.view(out_shape);
  if (M >= kLargeRows) {
    // Large tiles, each dequantized on all cores and multiplied by one GEMM on all cores.
    const int64_t tile = TileRows(in_, out_, dtype, LargeTileBytes());
    static thread_local std::vector<char> buffer;
    for (int64_t r0 = 0; r0 < out_; r0 += tile) {
      const int64_t rows = std::min(tile, out_ - r0);
      const at::Tensor w = DequantizedTile(r0, rows, dtype, &buffer);
      if (rows == out_) {
        at::mm_out(y, x2, w.t());
      } else {
        at::Tensor y_cols = y.narrow(1, r0, rows);
        at::mm_out(y_cols, x2, w.t());
      }
    }
    return y.view(out_shape);
  }
  const int64_t tile = TileRows(in_, out_, dtype);
  const int64_t n_tiles = (out_ + tile - 1) / tile;
  // Threads take whole tiles; inside the parallel region the GEMM runs single-threaded.
  at::parallel_for(0, n_tiles, 1, [&](int64_t t0, int64_t t1) {
    static thread_local std::vector<char> buffer;
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t r0 = t * tile, rows = std::min(tile, out_ - r0);
      const at::Tensor w = DequantizedTile(r0, rows, dtype, &buffer);
      at::Tensor y_cols = y.narrow(1, r0, rows);
      at::mm_out(y_cols, x2, w.t());
    }
  });
  return y.view(out_shape);
}

at::Tensor QuantizedLinear::MatmulTransposedNoGrad(const at::Tensor& grad_y) const {
  RECORD_FUNCTION("llmtrain::quantized_linear_backward", std::vector<c10::IValue>());
  TORCH_CHECK(grad_y.size(-1) == out_, "QuantizedLinear: gradient has ", grad_y.size(-1),
              " features, the layer ", out_);
  std::vector<int64_t> in_shape(grad_y.sizes().begin(), grad_y.sizes().end());
  in_shape.back() = in_;
  const at::Tensor g2 = grad_y.reshape({-1, out_}).contiguous();
  if (grad_y.is_cuda()) return CudaMatmul(g2, /*transposed=*/true).view(in_shape);
  const c10::ScalarType dtype = grad_y.scalar_type();
  const int64_t M = g2.size(0);
  at::Tensor gx = at::empty({M, in_}, grad_y.options());
  if (M == 0) return gx.view(in_shape);
  // Tiles of output rows, each dequantized on all cores; the first tile's GEMM writes gx, the
  // others accumulate into it. Large inputs take large tiles (fewer passes over gx).
  const int64_t tile = M >= kLargeRows ? TileRows(in_, out_, dtype, LargeTileBytes()) : TileRows(in_, out_, dtype);
  static thread_local std::vector<char> buffer;
  for (int64_t r0 = 0; r0 < out_; r0 += tile) {
    const int64_t rows = std::min(tile, out_ - r0);
    const at::Tensor w = DequantizedTile(r0, rows, dtype, &buffer);
    if (r0 == 0) {
      at::mm_out(gx, rows == out_ ? g2 : g2.narrow(1, 0, rows), w);
    } else {
      gx.addmm_(g2.narrow(1, r0, rows), w);
    }
  }
  return gx.view(in_shape);
}

#if LLMTRAIN_WITH_CUDA
at::Tensor QuantizedLinear::CudaMatmul(const at::Tensor& x2, bool transposed) const {
  namespace d = ::llmtrain::quant::detail;
  const c10::ScalarType dtype = x2.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf,
              "QuantizedLinear: input dtype must be float32, bfloat16 or float16");
  const int cuda_dtype = dtype == at::kFloat ? d::kCudaF32 : dtype == at::kBFloat16 ? d::kCudaBf16 : d::kCudaF16;
  void* stream = c10::cuda::getCurrentCUDAStream(x2.device().index()).stream();
  const auto check = [](const std::string& error) {
    TORCH_CHECK(error.empty(), "QuantizedLinear (CUDA): ", error);
  };
  const Quant4State& s = weight_.state;
  // The packed weight, its float32 block scales and the code table, copied once per device.
  if (!device_packed_.defined() || device_packed_.device() != x2.device()) {
    device_packed_ = weight_.packed.to(x2.device());
    device_code_ = code_.to(x2.device());
    const int64_t n_blocks = s.absmax.numel();
    if (s.nested) {
      device_scales_ = at::empty({n_blocks}, x2.options().dtype(at::kFloat));
      const at::Tensor q = s.absmax.to(x2.device()), nested_code = s.nested_code.to(x2.device());
      const at::Tensor nested = s.nested_absmax.to(x2.device());
      check(d::DequantizeScalesCuda(q.data_ptr<uint8_t>(), nested_code.data_ptr<float>(), nested.data_ptr<float>(),
                                    s.offset, n_blocks, s.nested_blocksize, device_scales_.data_ptr<float>(), stream));
    } else {
      device_scales_ = scales_.to(x2.device());
    }
  }
  const uint8_t* packed = device_packed_.data_ptr<uint8_t>();
  const float* scales = device_scales_.data_ptr<float>();
  const float* code = device_code_.data_ptr<float>();
  const at::Tensor x = x2.contiguous();
  const int64_t M = x.size(0);
  const int64_t elem = static_cast<int64_t>(c10::elementSize(dtype));
  // Tiles of about 16 MiB of dequantized weight: big enough for cuBLASLt to run at full speed.
  const int64_t tile = std::min(out_, std::max<int64_t>(64, ((int64_t{16} << 20) / (in_ * elem)) / 64 * 64));
  at::Tensor buffer = at::empty({tile, in_}, x.options());
  if (!transposed) {
    at::Tensor y = at::empty({M, out_}, x.options());
    if (M == 0) return y;
    // Small M: the fused kernel reads the 4-bit weight once and never writes it out.
    if (dtype == at::kBFloat16 && M <= 64 &&
        d::FusedNf4GemmCuda(x.data_ptr(), M, in_, packed, scales, code, out_, s.blocksize, y.data_ptr(), stream)
            .empty()) {
      return y;
    }
    const bool one_tile = tile == out_;
    at::Tensor part = one_tile ? y : at::empty({M, tile}, x.options());
    for (int64_t r0 = 0; r0 < out_; r0 += tile) {
      const int64_t rows = std::min(tile, out_ - r0);
      check(d::Dequantize4bitCuda(packed, scales, code, r0 * in_, rows * in_, s.blocksize, cuda_dtype,
                                  buffer.data_ptr(), stream));
      at::Tensor out = one_tile ? y : part.narrow(1, 0, rows).contiguous();
      check(d::GemmBf16Cuda(x.data_ptr(), buffer.data_ptr(), out.data_ptr(), M, rows, in_, /*w_transposed=*/true,
                            cuda_dtype, 0.0f, stream));
      if (!one_tile) y.narrow(1, r0, rows).copy_(out);
    }
    return y;
  }
  at::Tensor gx = at::zeros({M, in_}, x.options());
  if (M == 0) return gx;
  for (int64_t r0 = 0; r0 < out_; r0 += tile) {
    const int64_t rows = std::min(tile, out_ - r0);
    check(d::Dequantize4bitCuda(packed, scales, code, r0 * in_, rows * in_, s.blocksize, cuda_dtype,
                                buffer.data_ptr(), stream));
    const at::Tensor g = x.narrow(1, r0, rows).contiguous();
    check(d::GemmBf16Cuda(g.data_ptr(), buffer.data_ptr(), gx.data_ptr(), M, in_, rows, /*w_transposed=*/false,
                          cuda_dtype, 1.0f, stream));
  }
  return gx;
}
#else
at::Tensor QuantizedLinear::CudaMatmul(const at::Tensor&, bool) const {
  TORCH_CHECK(false, "QuantizedLinear: this llmtrain build has no CUDA support");
}
#endif

void QuantizedLinear::SetLargeTileBytes(int64_t bytes) {
  g_large_tile_bytes.store(std::max<int64_t>(int64_t{64} << 10, bytes));
}

int64_t QuantizedLinear::LargeTileBytes() { return g_large_tile_bytes.load(); }

at::Tensor QuantizedLinear::Forward(const at::Tensor& input) const {
  RECORD_FUNCTION("llmtrain::quantized_linear", std::vector<c10::IValue>());
  // Under autocast (train/autocast.h) a float32 input is multiplied in the autocast dtype, as
  // torch.autocast does with linear: the output is in that dtype too.
  at::Tensor x = input;
  const c10::DeviceType device = input.device().type();
  if (input.scalar_type() == at::kFloat && at::autocast::is_autocast_enabled(device)) {
    x = input.to(at::autocast::get_autocast_dtype(device));
  }
  at::Tensor y = x.requires_grad() && at::GradMode::is_enabled()
                     ? QuantizedMatmul::apply(x, reinterpret_cast<int64_t>(this))
                     : MatmulNoGrad(x);
  if (bias_.defined()) y = y + bias_.to(y.scalar_type());
  return y;
}

}  // namespace llmtrain::quant
