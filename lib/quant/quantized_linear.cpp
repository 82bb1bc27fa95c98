// QuantizedLinear: a 4-bit frozen weight multiplied tile by tile (quant/quantized_linear.h).
//
// CPU forward: a float32 input of fewer than kLargeRows rows (decoding) goes through
// kernels::BlockMatmul, each weight row decoded a piece at a time beside its dot products. Other
// inputs: the output rows of W are cut into tiles of about 1 MiB once dequantized; each
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

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "llmtrain/core/status.h"
#include "llmtrain/kernels/block_matmul.h"
#include "llmtrain/kernels/dequant4.h"
#include "llmtrain/quant/bnb_format.h"

#if LLMTRAIN_WITH_CUDA
#include <c10/cuda/CUDAStream.h>

#include "kernels/kernels_cuda.h"
#include "quant/quant4_cuda.h"
#endif

#ifndef _OPENMP
#error "at::parallel_for needs -fopenmp here, or it runs on one thread (LLMTRAIN_PARALLEL_SOURCES in CMakeLists.txt)"
#endif

namespace llmtrain::quant {
namespace {

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

// Block scales [first, last] of a double-quantized state from their 8-bit codes, as BlockScales
// computes them, in `buffer` (grown as needed).
const float* NestedBlockScales(const Quant4State& s, int64_t first, int64_t last, std::vector<float>* buffer) {
  float* t = Scratch(buffer, static_cast<size_t>(last - first + 1));
  const uint8_t* q = s.absmax.data_ptr<uint8_t>();
  const float* nested_code = s.nested_code.data_ptr<float>();
  const float* nested = s.nested_absmax.data_ptr<float>();
  for (int64_t b = first; b <= last; ++b) {
    const float scale = nested_code[q[b]] * nested[b / s.nested_blocksize];
    t[b - first] = scale + s.offset;
  }
  return t;
}

// A 4-bit weight's rows decoded a piece at a time (kernels::BlockMatmul): code × block scale in
// float32, the block scales rebuilt from their 8-bit codes under double quantization.
class Quant4RowDecoder final : public kernels::RowDecoder {
 public:
  Quant4RowDecoder(const Quantized4& w, const float* scales, const float* code, int64_t out, int64_t in)
      : w_(w), scales_(scales), code_(code), out_(out), in_(in) {}
  int64_t rows() const override { return out_; }
  int64_t cols() const override { return in_; }
  int64_t granularity() const override { return std::min<int64_t>(w_.state.blocksize, 256); }
  void Decode(int64_t row, int64_t col, int64_t count, float* out) const override {
    const Quant4State& s = w_.state;
    const int64_t begin = row * in_ + col;
    const float* scales = scales_;
    int64_t base = 0;
    thread_local std::vector<float> piece_scales;
    if (s.nested) {
      base = begin / s.blocksize;
      scales = NestedBlockScales(s, base, (begin + count - 1) / s.blocksize, &piece_scales);
    }
    kernels::detail::Dequantize4bitCpu(w_.packed.data_ptr<uint8_t>(), scales - base, code_, s.blocksize, begin, count,
                                       c10::kFloat, c10::kFloat, out);
  }

 private:
  const Quantized4& w_;
  const float* scales_;
  const float* code_;
  int64_t out_, in_;
};

}  // namespace

// The layer's weight and kernels. Held by shared pointer: the autograd node of a forward keeps
// its own reference (ImplHandle below), so backward never reaches through a raw pointer to a
// layer that may have been replaced or freed since.
namespace detail {
struct QuantizedLinearState {
  QuantizedLinearState(Quantized4 weight, int64_t out, int64_t in) : weight_(std::move(weight)), out_(out), in_(in) {}
  void DequantizeRows(int64_t row_begin, int64_t row_end, at::Tensor& out) const;
  // Output rows [r0, r0 + rows) dequantized to `dtype` in `buffer` (grown as needed): a view of it.
  at::Tensor DequantizedTile(int64_t r0, int64_t rows, c10::ScalarType dtype, std::vector<char>* buffer) const;
  // y (…, out) = x (…, in) · Wᵀ, and grad_x (…, in) = grad_y (…, out) · W, without autograd.
  at::Tensor Matmul(const at::Tensor& x) const;
  at::Tensor MatmulTransposed(const at::Tensor& grad_y) const;
  // The CUDA path: tiles dequantized by kernels/dequant4.cu and multiplied by cuBLASLt (or the
  // fused kernel for small M). x2 is (M, in) or, transposed, (M, out).
  at::Tensor CudaMatmul(const at::Tensor& x2, bool transposed) const;
  // The whole weight dequantized on `device` by the same kernel, as Dequantize4bit computes it
  // (state.dtype).
  at::Tensor CudaDense(c10::Device device) const;
  // Makes device_packed_, device_scales_ and device_code_ present on `device`.
  void PrepareDevice(c10::Device device, void* stream) const;

  Quantized4 weight_;
  at::Tensor scales_;  // float32 (n_blocks): without double quantization, the stored absmax
  at::Tensor code_;    // float32 (16)
  int64_t out_ = 0, in_ = 0;
  // Device copies of the packed data, scales and code, made on the first CUDA forward.
  mutable at::Tensor device_packed_, device_scales_, device_code_;
};
}  // namespace detail

namespace {

// An owned reference to a layer's Impl that can ride in an autograd node's saved_data.
struct ImplHandle : torch::CustomClassHolder {
  explicit ImplHandle(std::shared_ptr<const detail::QuantizedLinearState> impl) : impl(std::move(impl)) {}
  std::shared_ptr<const detail::QuantizedLinearState> impl;
};

// grad_x = grad_y · W through the frozen 4-bit weight; W gets no gradient.
class QuantizedMatmul : public torch::autograd::Function<QuantizedMatmul> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                            const std::shared_ptr<const detail::QuantizedLinearState>& impl) {
    ctx->saved_data["impl"] = c10::IValue::make_capsule(c10::make_intrusive<ImplHandle>(impl));
    return impl->Matmul(x);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto handle = c10::static_intrusive_pointer_cast<ImplHandle>(ctx->saved_data["impl"].toCapsule());
    return {handle->impl->MatmulTransposed(grads[0]), at::Tensor()};
  }
};

}  // namespace

QuantizedLinear::QuantizedLinear(Quantized4 weight, at::Tensor bias) : bias_(std::move(bias)) {
  TORCH_CHECK(weight.state.shape.size() == 2, "QuantizedLinear: the quantized weight must be 2-D (out, in)");
  const int64_t out = weight.state.shape[0], in = weight.state.shape[1];
  TORCH_CHECK(!bias_.defined() || (bias_.dim() == 1 && bias_.size(0) == out),
              "QuantizedLinear: bias must have ", out, " elements");
  auto impl = std::make_shared<detail::QuantizedLinearState>(std::move(weight), out, in);
  impl->weight_.packed = impl->weight_.packed.contiguous();
  impl->code_ = impl->weight_.state.code.to(at::kFloat).contiguous();
  // Without double quantization the scales are the stored float32 absmax. With it they stay
  // 8-bit and each tile rebuilds its own from the nested codes (DequantizeRows), so the layer
  // keeps the memory double quantization saves.
  if (!impl->weight_.state.nested) impl->scales_ = impl->weight_.state.absmax.to(at::kFloat).contiguous();
  impl_ = std::move(impl);
}

QuantizedLinear::~QuantizedLinear() = default;

int64_t QuantizedLinear::in_features() const { return impl_->in_; }
int64_t QuantizedLinear::out_features() const { return impl_->out_; }
void QuantizedLinear::AppendFrozen(std::vector<at::Tensor>* out) const {
  // Everything the CPU kernels read (the CUDA copies are made from these on first use).
  const Quant4State& state = impl_->weight_.state;
  for (const at::Tensor* t : {&impl_->weight_.packed, &state.absmax, &state.code, &state.nested_absmax,
                              &state.nested_code, &impl_->scales_, &impl_->code_, &bias_}) {
    if (t->defined()) out->push_back(*t);
  }
}

absl::string_view QuantizedLinear::kind() const { return QuantTypeName(impl_->weight_.state.type); }
const Quantized4& QuantizedLinear::quantized() const { return impl_->weight_; }

void QuantizedLinear::DequantizeRows(int64_t row_begin, int64_t row_end, at::Tensor& out) const {
  TORCH_CHECK(0 <= row_begin && row_begin <= row_end && row_end <= impl_->out_, "DequantizeRows: rows [", row_begin,
              ", ", row_end, ") of ", impl_->out_);
  TORCH_CHECK(out.is_cpu() && out.is_contiguous() && out.numel() == (row_end - row_begin) * impl_->in_,
              "DequantizeRows: out must be a contiguous CPU tensor of ", (row_end - row_begin) * impl_->in_,
              " elements");
  impl_->DequantizeRows(row_begin, row_end, out);
}

int64_t QuantizedLinear::StorageBytes() const {
  const Quant4State& s = impl_->weight_.state;
  int64_t bytes = impl_->weight_.packed.nbytes() + s.absmax.nbytes() + s.code.nbytes() + 4 /*offset*/;
  if (s.nested) bytes += s.nested_absmax.nbytes() + s.nested_code.nbytes();
  return bytes;
}

at::Tensor QuantizedLinear::DenseWeight(c10::ScalarType dtype) const {
  // On the weight's device: a model moved to a GPU dequantizes there (DoRA's norms, merges).
  if (impl_->weight_.packed.is_cuda()) return impl_->CudaDense(impl_->weight_.packed.device()).to(dtype);
  return Dequantize4bit(impl_->weight_).to(dtype);
}

void detail::QuantizedLinearState::DequantizeRows(int64_t row_begin, int64_t row_end, at::Tensor& out) const {
  RECORD_FUNCTION("llmtrain::dequantize_4bit", std::vector<c10::IValue>());
  const Quant4State& s = weight_.state;
  const int64_t begin = row_begin * in_, count = (row_end - row_begin) * in_;
  const float* scales = nullptr;
  static thread_local std::vector<float> tile_scales;
  int64_t scale_base = 0;
  if (s.nested) {
    scale_base = begin / s.blocksize;
    scales = NestedBlockScales(s, scale_base, (begin + count - 1) / s.blocksize, &tile_scales);
  } else {
    scales = scales_.data_ptr<float>();
  }
  // Dequantize4bitCpu indexes scales by absolute block: shift the pointer back by scale_base.
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
    kernels::detail::Dequantize4bitCpu(packed, scales - scale_base, code, s.blocksize, e0, (r1 - r0) * in_, direct,
                       out_dtype, base + (r0 * in_) * elem);
  };
  if (at::in_parallel_region()) {
    run(0, row_end - row_begin);
  } else {
    at::parallel_for(0, row_end - row_begin, std::max<int64_t>(1, 16384 / std::max<int64_t>(1, in_)), run);
  }
}

at::Tensor detail::QuantizedLinearState::DequantizedTile(int64_t r0, int64_t rows, c10::ScalarType dtype,
                                            std::vector<char>* buffer) const {
  char* mem = Scratch(buffer, static_cast<size_t>(rows * in_) * c10::elementSize(dtype));
  at::Tensor w = at::from_blob(mem, {rows, in_}, at::TensorOptions().dtype(dtype));
  DequantizeRows(r0, r0 + rows, w);
  return w;
}

at::Tensor detail::QuantizedLinearState::Matmul(const at::Tensor& x) const {
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
  if (M >= QuantizedLinear::kLargeRows) {
    // Large tiles, each dequantized on all cores and multiplied by one GEMM on all cores.
    const int64_t tile = TileRows(in_, out_, dtype, QuantizedLinear::LargeTileBytes());
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
  if (dtype == at::kFloat) {
    // Decoding: each weight row decoded a piece at a time next to its dot products, so the packed
    // weight is read once and nothing larger than a piece is written.
    RECORD_FUNCTION("llmtrain::quantized_block_matmul", std::vector<c10::IValue>());
    const Quant4RowDecoder w(weight_, scales_.defined() ? scales_.data_ptr<float>() : nullptr,
                             code_.data_ptr<float>(), out_, in_);
    kernels::BlockMatmul(w, x2.data_ptr<float>(), M, y.data_ptr<float>());
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

at::Tensor detail::QuantizedLinearState::MatmulTransposed(const at::Tensor& grad_y) const {
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
  const int64_t tile = M >= QuantizedLinear::kLargeRows ? TileRows(in_, out_, dtype, QuantizedLinear::LargeTileBytes()) : TileRows(in_, out_, dtype);
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
at::Tensor detail::QuantizedLinearState::CudaMatmul(const at::Tensor& x2, bool transposed) const {
  namespace d = ::llmtrain::quant::detail;
  namespace kd = ::llmtrain::kernels::detail;
  const c10::ScalarType dtype = x2.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf,
              "QuantizedLinear: input dtype must be float32, bfloat16 or float16");
  const int cuda_dtype = dtype == at::kFloat ? kd::kCudaF32 : dtype == at::kBFloat16 ? kd::kCudaBf16 : kd::kCudaF16;
  void* stream = c10::cuda::getCurrentCUDAStream(x2.device().index()).stream();
  const auto check = [](const std::string& error) {
    TORCH_CHECK(error.empty(), "QuantizedLinear (CUDA): ", error);
  };
  const Quant4State& s = weight_.state;
  PrepareDevice(x2.device(), stream);
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
      check(kd::Dequantize4bitCuda(packed, scales, code, r0 * in_, rows * in_, s.blocksize, cuda_dtype,
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
    check(kd::Dequantize4bitCuda(packed, scales, code, r0 * in_, rows * in_, s.blocksize, cuda_dtype,
                                buffer.data_ptr(), stream));
    const at::Tensor g = x.narrow(1, r0, rows).contiguous();
    check(d::GemmBf16Cuda(g.data_ptr(), buffer.data_ptr(), gx.data_ptr(), M, in_, rows, /*w_transposed=*/false,
                          cuda_dtype, 1.0f, stream));
  }
  return gx;
}
void detail::QuantizedLinearState::PrepareDevice(c10::Device device, void* stream) const {
  namespace d = ::llmtrain::quant::detail;
  const Quant4State& s = weight_.state;
  // The packed weight, its float32 block scales and the code table, copied once per device (the
  // packed weight is already there when the model was moved: the copy is then the same tensor).
  if (device_packed_.defined() && device_packed_.device() == device && device_scales_.device() == device &&
      device_code_.device() == device) {
    return;
  }
  device_packed_ = weight_.packed.to(device);
  device_code_ = code_.to(device);
  const int64_t n_blocks = s.absmax.numel();
  if (s.nested) {
    device_scales_ = at::empty({n_blocks}, at::TensorOptions().dtype(at::kFloat).device(device));
    const at::Tensor q = s.absmax.to(device), nested_code = s.nested_code.to(device, at::kFloat).contiguous();
    const at::Tensor nested = s.nested_absmax.to(device, at::kFloat).contiguous();
    const std::string error =
        d::DequantizeScalesCuda(q.contiguous().data_ptr<uint8_t>(), nested_code.data_ptr<float>(),
                                nested.data_ptr<float>(), s.offset, n_blocks, s.nested_blocksize,
                                device_scales_.data_ptr<float>(), stream);
    TORCH_CHECK(error.empty(), "QuantizedLinear (CUDA): ", error);
  } else {
    device_scales_ = scales_.to(device);
  }
}

at::Tensor detail::QuantizedLinearState::CudaDense(c10::Device device) const {
  namespace kd = ::llmtrain::kernels::detail;
  const c10::ScalarType dtype = weight_.state.dtype;
  const int cuda_dtype = dtype == at::kFloat      ? kd::kCudaF32
                         : dtype == at::kBFloat16 ? kd::kCudaBf16
                                                  : kd::kCudaF16;
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf,
              "QuantizedLinear (CUDA): the weight's dtype must be float32, bfloat16 or float16");
  void* stream = c10::cuda::getCurrentCUDAStream(device.index()).stream();
  PrepareDevice(device, stream);
  at::Tensor out = at::empty({out_, in_}, at::TensorOptions().dtype(dtype).device(device));
  const std::string error =
      kd::Dequantize4bitCuda(device_packed_.data_ptr<uint8_t>(), device_scales_.data_ptr<float>(),
                             device_code_.data_ptr<float>(), 0, out_ * in_, weight_.state.blocksize, cuda_dtype,
                             out.data_ptr(), stream);
  TORCH_CHECK(error.empty(), "QuantizedLinear (CUDA): ", error);
  return out;
}
#else
at::Tensor detail::QuantizedLinearState::CudaMatmul(const at::Tensor&, bool) const {
  TORCH_CHECK(false, "QuantizedLinear: this llmtrain build has no CUDA support");
}
at::Tensor detail::QuantizedLinearState::CudaDense(c10::Device) const {
  TORCH_CHECK(false, "QuantizedLinear: this llmtrain build has no CUDA support");
}
void detail::QuantizedLinearState::PrepareDevice(c10::Device, void*) const {}
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
                     ? QuantizedMatmul::apply(x, impl_)
                     : impl_->Matmul(x);
  if (bias_.defined()) y = y + bias_.to(y.scalar_type());
  return y;
}

namespace detail {

at::Tensor MatmulNoGrad(const QuantizedLinear& layer, const at::Tensor& x) { return layer.impl_->Matmul(x); }

at::Tensor MatmulTransposedNoGrad(const QuantizedLinear& layer, const at::Tensor& grad_y) {
  return layer.impl_->MatmulTransposed(grad_y);
}

}  // namespace detail

}  // namespace llmtrain::quant

namespace llmtrain::quant {

model::LinearFactory QuantizedLinearFactory(std::optional<Quant4Options> quantize) {
  return [quantize](const model::ProjectionSource& source) -> absl::StatusOr<std::shared_ptr<model::Linear>> {
    if (!source.from_gguf && IsBnbQuantized(source.weight_key, source.has)) {
      // Saved 4-bit by transformers + bitsandbytes: the packed codes and quant state as they are.
      const auto get = [&](const std::string& key) { return source.load(key, at::kByte); };
      LLMTRAIN_ASSIGN_OR_RETURN(Quantized4 q, FromBnbTensors(source.weight_key, get));
      if (q.state.shape != source.shape) {
        return absl::InvalidArgumentError(absl::StrCat(
            "4-bit tensor \"", source.weight_key, "\" has shape [", absl::StrJoin(q.state.shape, ", "),
            "], but the config needs [", absl::StrJoin(source.shape, ", "), "]"));
      }
      return std::make_shared<QuantizedLinear>(std::move(q), source.bias);
    }
    if (!quantize.has_value()) return model::MakeDenseLinear(source);
    if (source.layout_only) {
      return std::make_shared<QuantizedLinear>(Quantize4bitLayout(source.shape, source.dtype, *quantize), source.bias);
    }
    if (!source.shares.empty() && source.defer) {
      // A sharded load: read and quantize only the packed bytes this process keeps (AppendFrozen
      // lists the packed tensor first). The scales of its owned blocks are summed over the
      // processes with the rest of the layer's, then the kept bytes are packed.
      // Every process checks the weight's shape (and marks it used), whether or not it reads it.
      if (auto checked = source.dense_elements(0, 0); !checked.ok()) return checked.status();
      const model::TensorShare& packed = source.shares.front();
      const Quant4Share share{packed.kept_begin, packed.kept_end, packed.owned_begin, packed.owned_end};
      auto work = BeginQuantize4bitShare(source.shape, source.dtype, *quantize, share, source.dense_elements);
      if (!work.ok()) return Annotate(work.status(), source.weight_key);
      auto shared_work = std::make_shared<Quant4ShareWork>(*std::move(work));
      source.defer(shared_work->scales, [shared_work, bias = source.bias,
                                         key = source.weight_key]() -> absl::StatusOr<std::shared_ptr<model::Linear>> {
        auto q = FinishQuantize4bitShare(*shared_work);
        if (!q.ok()) return Annotate(q.status(), key);
        return std::make_shared<QuantizedLinear>(*std::move(q), bias);
      });
      return std::shared_ptr<model::Linear>();
    }
    // Quantized as it loads; the dense weight is dropped here, so the dense weights never coexist.
    LLMTRAIN_ASSIGN_OR_RETURN(at::Tensor dense, source.dense_weight());
    auto q = Quantize4bit(dense.detach(), *quantize);
    if (!q.ok()) return Annotate(q.status(), source.weight_key);
    return std::make_shared<QuantizedLinear>(*std::move(q), source.bias);
  };
}

}  // namespace llmtrain::quant
