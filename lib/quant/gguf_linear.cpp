// GgufLinear: products straight from a GGUF weight's blocks (quant/gguf_linear.h).
#include "llmtrain/quant/gguf_linear.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <ATen/record_function.h>
#include <c10/core/DeviceGuard.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>
#include <optional>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "llmtrain/core/status.h"
#include "llmtrain/kernels/block_matmul.h"
#include "llmtrain/quant/quantized_linear.h"

#if LLMTRAIN_WITH_CUDA
#include <c10/cuda/CUDAStream.h>

#include "io/gguf_quants_cuda.h"
#include "kernels/kernels_cuda.h"
#endif

namespace llmtrain::quant {

namespace detail {
struct GgufLinearState {
  GgufLinearState(io::GgmlType type, at::Tensor blocks, int64_t out, int64_t in)
      : type(type), blocks(std::move(blocks)), out(out), in(in), kind(absl::AsciiStrToLower(io::GgmlTypeName(type))) {}

  // A decoder over the blocks' current memory (Decoder::MoveTo and sharded engines may replace
  // the storage under the same tensor, so no pointer into it is kept).
  kernels::GgufRowDecoder Decoder() const {
    TORCH_CHECK(blocks.device().is_cpu(), "GgufLinear: the blocks are on ", blocks.device().str(),
                ": a layer over GGUF blocks computes on the CPU or on CUDA");
    return kernels::GgufRowDecoder(type, blocks.data_ptr<uint8_t>(), out, in);
  }
  // Output rows per GEMM tile: about 16 MiB of float32, whole multiples of 16 rows.
  int64_t TileRows() const {
    const int64_t rows = std::max<int64_t>(16, (int64_t{16} << 20) / (4 * in) / 16 * 16);
    return std::min(rows, out);
  }
  // y (M, out) = x (M, in) · Wᵀ, float32, on the blocks' device.
  at::Tensor Matmul(const at::Tensor& x2) const;
  // grad_x (M, in) = grad_y (M, out) · W, float32, on the blocks' device.
  at::Tensor MatmulTransposed(const at::Tensor& g2) const;
  // Both take, on CUDA, the fused products (MatvecCuda) for fewer than kLargeRows rows, else tiles
  // of rows decoded to float32 on the device (DecodeRowsCuda) and multiplied by cuBLAS.
  void DecodeTile(int64_t r0, int64_t rows, at::Tensor& w) const;
  // The blocks' CUDA device (refusing a type without CUDA kernels), or none on the CPU.
  std::optional<c10::Device> OnDevice() const;
  bool CudaType() const;
  void DecodeRowsCuda(int64_t r0, int64_t rows, at::Tensor& w) const;
  void MatvecCuda(const at::Tensor& x2, at::Tensor& y) const;

  io::GgmlType type;
  at::Tensor blocks;  // uint8, contiguous
  int64_t out, in;
  std::string kind;
};

// Decodes weight rows [r0, r0 + rows) into the float32 tile w, on the blocks' device.
void GgufLinearState::DecodeTile(int64_t r0, int64_t rows, at::Tensor& w) const {
  if (blocks.is_cuda()) {
    DecodeRowsCuda(r0, rows, w);
  } else {
    kernels::DecodeRows(Decoder(), r0, r0 + rows, w.data_ptr<float>());
  }
}

at::Tensor GgufLinearState::Matmul(const at::Tensor& x2) const {
  const c10::OptionalDeviceGuard device_guard(OnDevice());
  const int64_t M = x2.size(0);
  at::Tensor y = at::empty({M, out}, x2.options());
  if (M == 0) return y;
  if (M < GgufLinear::kLargeRows) {
    if (blocks.is_cuda()) {
      RECORD_FUNCTION("llmtrain::gguf_matvec_cuda", std::vector<c10::IValue>());
      MatvecCuda(x2, y);
    } else {
      RECORD_FUNCTION("llmtrain::gguf_block_matmul", std::vector<c10::IValue>());
      kernels::BlockMatmul(Decoder(), x2.data_ptr<float>(), M, y.data_ptr<float>());
    }
    return y;
  }
  RECORD_FUNCTION("llmtrain::gguf_tile_matmul", std::vector<c10::IValue>());
  // Where fewer rows would round x to int16 on this CPU (kernels::I16Rows), the tiles multiply
  // that same rounding of x, so that a row's output does not depend on how many rows share the
  // call (a decoding batch of 16, a prompt prefilled with others) beyond float32 summation order.
  at::Tensor x_used = x2;
  if (!blocks.is_cuda() && kernels::RoundsInputI16(Decoder())) {
    x_used = at::empty({M, in}, x2.options());
    kernels::RoundedRowsI16(x2.data_ptr<float>(), M, in, x_used.data_ptr<float>());
  }
  const int64_t tile = TileRows();
  at::Tensor w = at::empty({tile, in}, x2.options());
  for (int64_t r0 = 0; r0 < out; r0 += tile) {
    const int64_t rows = std::min(tile, out - r0);
    DecodeTile(r0, rows, w);
    if (rows == out) {
      at::mm_out(y, x_used, w.t());
    } else {
      at::Tensor y_cols = y.narrow(1, r0, rows);
      at::mm_out(y_cols, x_used, w.narrow(0, 0, rows).t());
    }
  }
  return y;
}

at::Tensor GgufLinearState::MatmulTransposed(const at::Tensor& g2) const {
  const c10::OptionalDeviceGuard device_guard(OnDevice());
  at::Tensor gx = at::zeros({g2.size(0), in}, g2.options());
  const int64_t tile = TileRows();
  at::Tensor w = at::empty({tile, in}, g2.options());
  for (int64_t r0 = 0; r0 < out; r0 += tile) {
    const int64_t rows = std::min(tile, out - r0);
    DecodeTile(r0, rows, w);
    gx.addmm_(g2.narrow(1, r0, rows), w.narrow(0, 0, rows));
  }
  return gx;
}

std::optional<c10::Device> GgufLinearState::OnDevice() const {
  if (!blocks.is_cuda()) return std::nullopt;
  TORCH_CHECK(CudaType(), "GgufLinear: ", kind,
              " blocks have no CUDA path (F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K and Q6_K have)");
  return blocks.device();
}

#if LLMTRAIN_WITH_CUDA
bool GgufLinearState::CudaType() const { return io::detail::CanDequantizeCuda(type); }

void GgufLinearState::DecodeRowsCuda(int64_t r0, int64_t rows, at::Tensor& w) const {
  const auto traits = io::GetGgmlTypeTraits(static_cast<uint32_t>(type));
  const int64_t row_blocks = in / traits->block_elems;
  const std::string error = io::detail::DequantizeCuda(
      type, blocks.data_ptr<uint8_t>() + r0 * row_blocks * traits->block_bytes, w.data_ptr<float>(),
      rows * row_blocks, c10::cuda::getCurrentCUDAStream(blocks.device().index()).stream());
  TORCH_CHECK(error.empty(), "GgufLinear (CUDA, ", kind, "): ", error);
}

void GgufLinearState::MatvecCuda(const at::Tensor& x2, at::Tensor& y) const {
  TORCH_CHECK(x2.scalar_type() == at::kFloat && x2.is_contiguous() && x2.device() == blocks.device() &&
                  x2.dim() == 2 && x2.size(1) == in && y.scalar_type() == at::kFloat && y.is_contiguous() &&
                  y.device() == blocks.device() && y.sizes() == at::IntArrayRef({x2.size(0), out}),
              "GgufLinear (CUDA): the products take contiguous float32 (M, ", in, ") and (M, ", out, ") on ",
              blocks.device().str());
  const std::string error = kernels::detail::GgufMatvecCuda(
      type, blocks.data_ptr<uint8_t>(), out, in, x2.data_ptr<float>(), x2.size(0), y.data_ptr<float>(),
      c10::cuda::getCurrentCUDAStream(blocks.device().index()).stream());
  TORCH_CHECK(error.empty(), "GgufLinear (CUDA, ", kind, "): ", error);
}
#else
bool GgufLinearState::CudaType() const { return false; }
void GgufLinearState::DecodeRowsCuda(int64_t, int64_t, at::Tensor&) const {
  TORCH_CHECK(false, "GgufLinear: this llmtrain build has no CUDA support");
}
void GgufLinearState::MatvecCuda(const at::Tensor&, at::Tensor&) const {
  TORCH_CHECK(false, "GgufLinear: this llmtrain build has no CUDA support");
}
#endif
}  // namespace detail

namespace {

struct StateHandle : torch::CustomClassHolder {
  explicit StateHandle(std::shared_ptr<const detail::GgufLinearState> impl) : impl(std::move(impl)) {}
  std::shared_ptr<const detail::GgufLinearState> impl;
};

// grad_x = grad_y · W through the frozen blocks; W gets no gradient.
class GgufMatmul : public torch::autograd::Function<GgufMatmul> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x2,
                            const std::shared_ptr<const detail::GgufLinearState>& impl) {
    ctx->saved_data["impl"] = c10::IValue::make_capsule(c10::make_intrusive<StateHandle>(impl));
    return impl->Matmul(x2);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto handle = c10::static_intrusive_pointer_cast<StateHandle>(ctx->saved_data["impl"].toCapsule());
    return {handle->impl->MatmulTransposed(grads[0].to(at::kFloat).contiguous()), at::Tensor()};
  }
};

}  // namespace

GgufLinear::GgufLinear(io::GgmlType type, at::Tensor blocks, int64_t out, int64_t in, at::Tensor bias)
    : bias_(std::move(bias)) {
  TORCH_CHECK(blocks.scalar_type() == at::kByte && blocks.dim() == 1 && blocks.device().is_cpu(),
              "GgufLinear: blocks must be a 1-D uint8 CPU tensor");
  const auto traits = io::GetGgmlTypeTraits(static_cast<uint32_t>(type));
  TORCH_CHECK(traits.has_value() && io::CanDequantize(type), "GgufLinear: ", io::GgmlTypeName(type),
              " cannot be decoded");
  TORCH_CHECK(out > 0 && in > 0 && in % traits->block_elems == 0, "GgufLinear: ", in, " columns are not whole ",
              traits->name, " blocks of ", traits->block_elems);
  TORCH_CHECK(blocks.numel() == out * (in / traits->block_elems) * traits->block_bytes, "GgufLinear: ",
              blocks.numel(), " bytes do not hold (", out, ", ", in, ") ", traits->name, " values");
  TORCH_CHECK(!bias_.defined() || (bias_.dim() == 1 && bias_.size(0) == out), "GgufLinear: bias must have ", out,
              " elements");
  impl_ = std::make_shared<detail::GgufLinearState>(type, blocks.contiguous(), out, in);
}

GgufLinear::~GgufLinear() = default;

at::Tensor GgufLinear::Forward(const at::Tensor& x) const {
  TORCH_CHECK(x.device() == impl_->blocks.device(), "GgufLinear: the input is on ", x.device().str(),
              ", the blocks on ", impl_->blocks.device().str(), " (Decoder::MoveTo moves them)");
  TORCH_CHECK(x.size(-1) == in_features(), "GgufLinear: input has ", x.size(-1), " features, the layer ",
              in_features());
  std::vector<int64_t> out_shape(x.sizes().begin(), x.sizes().end());
  out_shape.back() = out_features();
  const at::Tensor x2 = x.reshape({-1, in_features()}).to(at::kFloat).contiguous();
  at::Tensor y = at::GradMode::is_enabled() && x.requires_grad() ? GgufMatmul::apply(x2, impl_)
                                                                 : impl_->Matmul(x2);
  if (bias_.defined()) y = y + bias_.to(at::kFloat);
  return y.view(out_shape).to(x.scalar_type());
}

int64_t GgufLinear::in_features() const { return impl_->in; }
int64_t GgufLinear::out_features() const { return impl_->out; }

at::Tensor GgufLinear::DenseWeight(c10::ScalarType dtype) const {
  // On the blocks' device (a moved model merges there), decoded there.
  const at::Tensor& blocks = impl_->blocks;
  if (blocks.is_cuda() && impl_->CudaType()) {
    const c10::OptionalDeviceGuard device_guard(impl_->OnDevice());
    at::Tensor w = at::empty({out_features(), in_features()}, blocks.options().dtype(at::kFloat));
    impl_->DecodeRowsCuda(0, out_features(), w);
    return w.to(dtype);
  }
  const at::Tensor cpu_blocks = blocks.device().is_cpu() ? blocks : blocks.cpu();
  const kernels::GgufRowDecoder decoder(impl_->type, cpu_blocks.data_ptr<uint8_t>(), impl_->out, impl_->in);
  at::Tensor w = at::empty({out_features(), in_features()}, at::kFloat);
  kernels::DecodeRows(decoder, 0, out_features(), w.data_ptr<float>());
  return w.to(blocks.device(), dtype);
}

void GgufLinear::AppendFrozen(std::vector<at::Tensor>* out) const {
  out->push_back(impl_->blocks);
  if (bias_.defined()) out->push_back(bias_);
}

absl::string_view GgufLinear::kind() const { return impl_->kind; }
io::GgmlType GgufLinear::type() const { return impl_->type; }
int64_t GgufLinear::StorageBytes() const { return impl_->blocks.numel(); }

model::LinearFactory PackedLinearFactory(std::optional<Quant4Options> quantize) {
  model::LinearFactory fallback = QuantizedLinearFactory(quantize);
  return [quantize, fallback](const model::ProjectionSource& source) -> absl::StatusOr<std::shared_ptr<model::Linear>> {
    if (quantize.has_value() || !source.stored_blocks || source.layout_only || !source.shares.empty()) {
      return fallback(source);
    }
    LLMTRAIN_ASSIGN_OR_RETURN(model::StoredBlocks blocks, source.stored_blocks());
    const auto traits = io::GetGgmlTypeTraits(static_cast<uint32_t>(blocks.type));
    if (blocks.type == io::GgmlType::kF32 || !io::CanDequantize(blocks.type) || !traits ||
        source.shape[1] % traits->block_elems != 0) {
      return fallback(source);  // float32 is read as it is; a type we cannot decode gets the loader's error
    }
    at::Tensor bias = source.bias.defined() ? source.bias.to(at::kFloat) : at::Tensor();
    return std::make_shared<GgufLinear>(blocks.type, std::move(blocks.bytes), source.shape[0], source.shape[1],
                                        std::move(bias));
  };
}

}  // namespace llmtrain::quant
