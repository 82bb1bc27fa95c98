// y = x · Wᵀ for a few input rows (decoding) straight from a weight stored in blocks: each thread
// decodes a piece of one weight row at a time (1024 values at most) into its own float32 buffer,
// which stays in L1, and multiplies every input row by it there; with AVX-512, Q8_0, Q5_0, Q4_K
// and Q6_K rows skip the buffer: each block is decoded into registers and multiplied there
// (RowDecoder::DotRows). The weight is read once, in its packed form (a Q4_K row is 0.56 bytes per
// value, against 4 for float32). The dot products accumulate in float32 with AVX-512 or AVX2 FMAs
// (picked at run time; LLMTRAIN_NO_AVX512=1 forces AVX2) or in plain C++ (the oracle the tests
// compare both with). Decoders: GGUF blocks here (GgufRowDecoder); quant/ adds NF4/FP4.
//
//   kernels::GgufRowDecoder w(io::GgmlType::kQ4_K, blocks, rows, cols);
//   kernels::BlockMatmul(w, x, m, y);   // x (m, cols) float32, y (m, rows) float32
#pragma once

#include <cstdint>

#include "llmtrain/io/gguf.h"

namespace llmtrain::kernels {

/// Which dot-product code BlockMatmul runs.
enum class DotIsa { kAuto, kPlain, kAvx2, kAvx512 };

/// A weight (rows, cols) that can decode pieces of its rows into float32.
class RowDecoder {
 public:
  virtual ~RowDecoder() = default;
  virtual int64_t rows() const = 0;
  virtual int64_t cols() const = 0;
  /// Pieces start at multiples of this many columns (a block); cols() is a multiple of it.
  virtual int64_t granularity() const = 0;
  /// Writes elements [col, col + count) of row `row` to `out` as float32. col is a multiple of
  /// granularity(), and so is count unless the piece ends the row. Called from several threads.
  virtual void Decode(int64_t row, int64_t col, int64_t count, float* out) const = 0;
  /// Whether DotRows has a path for `isa` (BlockMatmul then uses it instead of pieces).
  virtual bool HasDotRow(DotIsa /*isa*/) const { return false; }
  /// y[i · rows() + r] = Σ_c x[i · cols() + c] · W[r][c] for i < m and rows r in [row_begin,
  /// row_end), straight from the packed rows: each block decoded into registers (the same values
  /// Decode gives, up to the rounding of a fused multiply-add where a type has a scale and an
  /// offset) and multiplied there. Single-threaded; only where HasDotRow(isa).
  virtual void DotRows(int64_t /*row_begin*/, int64_t /*row_end*/, const float* /*x*/, int64_t /*m*/, float* /*y*/,
                       DotIsa /*isa*/) const {}
};

/// A GGUF weight as stored: `rows` rows of cols / block_elems blocks each, at `blocks`
/// (rows · row_bytes() bytes; the caller keeps them alive). Throws c10::Error for a type
/// io::FindBlockDecoder rejects or cols that are not whole blocks.
class GgufRowDecoder final : public RowDecoder {
 public:
  GgufRowDecoder(io::GgmlType type, const uint8_t* blocks, int64_t rows, int64_t cols);
  int64_t rows() const override { return rows_; }
  int64_t cols() const override { return cols_; }
  int64_t granularity() const override { return block_elems_; }
  void Decode(int64_t row, int64_t col, int64_t count, float* out) const override;
  /// AVX-512 for Q8_0, Q5_0, Q4_K and Q6_K.
  bool HasDotRow(DotIsa isa) const override;
  void DotRows(int64_t row_begin, int64_t row_end, const float* x, int64_t m, float* y, DotIsa isa) const override;
  int64_t row_bytes() const { return cols_ / block_elems_ * block_bytes_; }

 private:
  io::GgmlType type_;
  io::BlockDecoder decode_ = nullptr;
  const uint8_t* blocks_ = nullptr;
  int64_t rows_ = 0, cols_ = 0, block_elems_ = 0, block_bytes_ = 0;
};

/// What kAuto picks on this CPU: AVX-512 (F) when present and LLMTRAIN_NO_AVX512 is unset, else
/// AVX2 when present, else plain.
DotIsa BestDotIsa();

/// y (m, rows) = x (m, cols) · Wᵀ, float32, row-major and contiguous (x_stride = cols,
/// y_stride = rows). Rows of W are split over the intra-op threads (one thread when called
/// inside a parallel region). Each output is Σ over pieces of a float32 dot product: the
/// summation order differs from a GEMM's, so results agree with x · dequantized(W)ᵀ to float32
/// rounding, not bit for bit. Throws c10::Error for an ISA this CPU lacks.
void BlockMatmul(const RowDecoder& w, const float* x, int64_t m, float* y, DotIsa isa = DotIsa::kAuto);

/// Rows [row_begin, row_end) of W decoded to float32 into `out` ((row_end − row_begin) · cols),
/// on the intra-op threads: the tiles a large-M product multiplies by a GEMM.
void DecodeRows(const RowDecoder& w, int64_t row_begin, int64_t row_end, float* out);

}  // namespace llmtrain::kernels
