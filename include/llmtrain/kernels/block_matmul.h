// y = x · Wᵀ for a few input rows (decoding) straight from a weight stored in blocks: each thread
// decodes a piece of one weight row at a time (1024 values at most) into its own float32 buffer,
// which stays in L1, and multiplies every input row by it there; with AVX-512, Q8_0, Q5_0, Q4_K
// and Q6_K rows skip the buffer: each block is decoded into registers and multiplied there
// (RowDecoder::DotRows). The weight is read once, in its packed form (a Q4_K row is 0.56 bytes per
// value, against 4 for float32). The dot products accumulate in float32 with AVX-512 or AVX2 FMAs
// (picked at run time; LLMTRAIN_NO_AVX512=1 forces AVX2) or in plain C++ (the oracle the tests
// compare both with). Where AVX-512 BW is present, kAuto picks kAvx512I16, which for Q5_0 and
// Q6_K rounds the input rows to 16-bit integers (one scale per 32 columns) and multiplies them with
// the blocks' integer codes by vpmaddwd, 32 values per instruction, then scales in float32
// (LLMTRAIN_FLOAT_DOTS=1 keeps float32 inputs for them too). Decoders: GGUF blocks here (GgufRowDecoder); quant/
// adds NF4/FP4.
//
//   kernels::GgufRowDecoder w(io::GgmlType::kQ4_K, blocks, rows, cols);
//   kernels::BlockMatmul(w, x, m, y);   // x (m, cols) float32, y (m, rows) float32
#pragma once

#include <cstdint>
#include <vector>

#include "llmtrain/io/gguf.h"

namespace llmtrain::kernels {

/// Which dot-product code BlockMatmul runs. kAvx512I16 rounds the input rows to int16 first
/// (I16Rows) where the weight has such a path (RowDecoder::HasDotRowI16) and is kAvx512 elsewhere.
enum class DotIsa { kAuto, kPlain, kAvx2, kAvx512, kAvx512I16 };

/// Input rows rounded to 16-bit integers, for the kAvx512I16 products. For each row and each 32
/// columns c: scale = max|x_c| / 32767 and q_c = round(x_c / scale), so |x_c − q_c · scale| ≤
/// scale / 2, about 2⁻¹⁶ of those 32 values' largest magnitude. 32 values holding an infinity or
/// a NaN get codes 0 and a NaN scale, so every output they reach is NaN.
struct I16Rows {
  const int16_t* q = nullptr;    ///< (m, cols)
  const float* scale = nullptr;  ///< (m, cols / 32)
  int64_t m = 0, cols = 0;       ///< cols is a multiple of 32
};

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
  /// Whether DotRowsI16 has a path on this CPU (BlockMatmul's kAvx512I16 then uses it).
  virtual bool HasDotRowI16() const { return false; }
  /// As DotRows, with the input rows rounded (I16Rows): y[i · rows() + r] = Σ over 32-column
  /// chunks of (x's scale · the block's scale) · Σ q · code, the integer sums exact in int32.
  /// Single-threaded; only where HasDotRowI16().
  virtual void DotRowsI16(int64_t /*row_begin*/, int64_t /*row_end*/, const I16Rows& /*x*/, float* /*y*/) const {}
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
  /// AVX-512 BW for Q5_0 and Q6_K.
  bool HasDotRowI16() const override;
  void DotRowsI16(int64_t row_begin, int64_t row_end, const I16Rows& x, float* y) const override;
  int64_t row_bytes() const { return cols_ / block_elems_ * block_bytes_; }

 private:
  io::GgmlType type_;
  io::BlockDecoder decode_ = nullptr;
  const uint8_t* blocks_ = nullptr;
  int64_t rows_ = 0, cols_ = 0, block_elems_ = 0, block_bytes_ = 0;
};

/// What kAuto picks on this CPU: kAvx512I16 when AVX-512 F and BW are present and neither
/// LLMTRAIN_NO_AVX512 nor LLMTRAIN_FLOAT_DOTS is set, kAvx512 when AVX-512 F is present and
/// LLMTRAIN_NO_AVX512 is unset, else AVX2 when present, else plain.
DotIsa BestDotIsa();

/// Rounds x (m, cols), cols a multiple of 32, as I16Rows describes, into the two buffers
/// (resized here) and returns the view of them.
I16Rows RoundRowsI16(const float* x, int64_t m, int64_t cols, std::vector<int16_t>& q, std::vector<float>& scale);

/// Whether BlockMatmul(w, ..., isa) multiplies x rounded to int16 (I16Rows) rather than x itself:
/// isa (kAuto: BestDotIsa()) is kAvx512I16 and w.HasDotRowI16(). A product that multiplies by w
/// some other way (a GEMM over decoded tiles) and must give each row what BlockMatmul gives it
/// multiplies RoundedRowsI16's x instead where this holds.
bool RoundsInputI16(const RowDecoder& w, DotIsa isa = DotIsa::kAuto);

/// out (m, cols) = x rounded as I16Rows describes and taken back to float32 (q · scale, one
/// float32 rounding each): the values BlockMatmul's kAvx512I16 products multiply. cols is a
/// multiple of 32; out may not alias x.
void RoundedRowsI16(const float* x, int64_t m, int64_t cols, float* out);

/// y (m, rows) = x (m, cols) · Wᵀ, float32, row-major and contiguous (x_stride = cols,
/// y_stride = rows). Rows of W are split over the intra-op threads (one thread when called
/// inside a parallel region). Each output is Σ over pieces of a float32 dot product: the
/// summation order differs from a GEMM's, so results agree with x · dequantized(W)ᵀ to float32
/// rounding, not bit for bit; with kAvx512I16 where the weight has that path, to the rounding of
/// x that I16Rows states, plus float32 rounding. Throws c10::Error for an ISA this CPU lacks.
void BlockMatmul(const RowDecoder& w, const float* x, int64_t m, float* y, DotIsa isa = DotIsa::kAuto);

/// Rows [row_begin, row_end) of W decoded to float32 into `out` ((row_end − row_begin) · cols),
/// on the intra-op threads: the tiles a large-M product multiplies by a GEMM.
void DecodeRows(const RowDecoder& w, int64_t row_begin, int64_t row_end, float* out);

}  // namespace llmtrain::kernels
