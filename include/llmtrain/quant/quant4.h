// NF4 and FP4 blockwise 4-bit quantization with optional double quantization of the block
// scales, byte for byte what bitsandbytes' quantize_4bit produces (docs/bitsandbytes-cpu.md):
//   - the weight is flattened and cut into blocks of `blocksize`; each block is scaled by its
//     absolute maximum (full blocks multiply by the rounded reciprocal, a partial last block
//     divides) and each value takes the nearest code of the 16-entry table (ties to the lower code);
//   - two codes per byte, the first element in the high nibble;
//   - double quantization stores the block scales as 8-bit codes of the dynamic map, in blocks of
//     256, after subtracting their mean (the `offset`).
// Dequantization is code × block scale in float32, cast to the weight's dtype.
//
//   LLMTRAIN_ASSIGN_OR_RETURN(quant::Quantized4 q, quant::Quantize4bit(weight, {.double_quant = true}));
//   at::Tensor w = quant::Dequantize4bit(q);   // (out, in) in weight's dtype
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include <ATen/core/Tensor.h>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace llmtrain::quant {

enum class QuantType { kNf4, kFp4 };
absl::string_view QuantTypeName(QuantType type);  ///< "nf4" / "fp4"

struct Quant4Options {
  QuantType type = QuantType::kNf4;
  /// Elements per block: one of 32, 64, 128, 256, 512, 1024, 2048, 4096 (what bitsandbytes takes).
  int64_t blocksize = 64;
  bool double_quant = false;  ///< bitsandbytes compress_statistics / bnb_4bit_use_double_quant
};

/// InvalidArgument naming the field: a blocksize bitsandbytes does not take.
absl::Status Validate(const Quant4Options& options);

/// bitsandbytes QuantState of a 4-bit tensor.
struct Quant4State {
  QuantType type = QuantType::kNf4;
  int64_t blocksize = 64;
  std::vector<int64_t> shape;        ///< of the original tensor
  c10::ScalarType dtype = c10::kFloat;  ///< of the original tensor, and of Dequantize4bit's result
  at::Tensor code;                   ///< float32 (16): the code table
  /// Block scales: float32 (n_blocks), or with double quantization uint8 (n_blocks) codes of
  /// nested_code, scaled per 256 blocks by nested_absmax, plus offset.
  at::Tensor absmax;
  bool nested = false;
  float offset = 0.0f;               ///< mean of the float32 block scales
  at::Tensor nested_absmax;          ///< float32 (ceil(n_blocks / 256))
  at::Tensor nested_code;            ///< float32 (256): the dynamic map
  int64_t nested_blocksize = 256;
};

struct Quantized4 {
  at::Tensor packed;  ///< uint8 ((numel + 1) / 2, 1), as bitsandbytes stores it
  Quant4State state;
};

/// Quantizes a float32, float16 or bfloat16 CPU tensor of any shape. Errors name the bad option
/// or dtype.
absl::StatusOr<Quantized4> Quantize4bit(const at::Tensor& weight, const Quant4Options& options = {});

/// The tensors Quantize4bit makes for a weight of `shape` and `dtype`, with their final shapes and
/// dtypes but unfilled (at::empty: no memory is touched): what a sharded load lays out before it
/// reads a weight.
Quantized4 Quantize4bitLayout(const std::vector<int64_t>& shape, c10::ScalarType dtype, const Quant4Options& options);

/// One process's part of a sharded load (dist::ShardedEngine) of a weight quantized as it loads.
/// Byte offsets are into the packed tensor.
struct Quant4Share {
  /// The packed bytes this process keeps.
  int64_t kept_begin = 0, kept_end = 0;
  /// The part of them no other process computes: the scales of the blocks whose first element
  /// lies in these bytes are computed here. The owned ranges of all processes partition the
  /// packed bytes (a tensor every process keeps whole is owned by one of them).
  int64_t owned_begin = 0, owned_end = 0;
};
/// Elements [begin, end) of the flattened weight, in the dtype Quantize4bit would be given.
using WeightElements = std::function<absl::StatusOr<at::Tensor>(int64_t begin, int64_t end)>;
/// Sums a float32 CPU tensor over the processes, in place (a collective: every process calls it).
using SumOverProcesses = std::function<absl::Status(at::Tensor& values)>;

/// Quantize4bit of a weight that no process reads whole: this process reads only the elements
/// of its owned blocks and of its kept bytes, computes those blocks' scales, sums the scales over
/// the processes (so every process has all of them: the state is complete everywhere) and packs
/// its kept bytes. Those bytes and the whole state equal Quantize4bit's; the other packed bytes
/// are left unwritten. Every process calls it with the same shape, dtype and options.
absl::StatusOr<Quantized4> Quantize4bitShare(const std::vector<int64_t>& shape, c10::ScalarType dtype,
                                             const Quant4Options& options, const Quant4Share& share,
                                             const WeightElements& read, const SumOverProcesses& sum);

/// Quantize4bitShare in two steps, for a loader that sums the scales of several weights in one
/// collective (and lets every process do all its reading and computing between collectives):
/// BeginQuantize4bitShare reads the owned blocks and computes their scales (the others stay 0);
/// the caller sums `scales` over the processes; FinishQuantize4bitShare reads the kept bytes'
/// elements and packs them.
struct Quant4ShareWork {
  at::Tensor scales;  ///< float32 (blocks), CPU: to be summed in place over the processes
  std::vector<int64_t> shape;
  c10::ScalarType dtype = c10::kFloat;
  Quant4Options options;
  Quant4Share share;
  WeightElements read;
};
absl::StatusOr<Quant4ShareWork> BeginQuantize4bitShare(const std::vector<int64_t>& shape, c10::ScalarType dtype,
                                                       const Quant4Options& options, const Quant4Share& share,
                                                       WeightElements read);
absl::StatusOr<Quantized4> FinishQuantize4bitShare(const Quant4ShareWork& work);

/// The block scales as float32 (n_blocks) on the CPU: absmax itself, or rebuilt from the nested
/// codes.
at::Tensor BlockScales(const Quant4State& state);

/// Dequantizes to state.dtype and state.shape, on the CPU whatever device the quantized tensors
/// are on: code[nibble] × scale in float32, then cast.
at::Tensor Dequantize4bit(const Quantized4& quantized);

/// The 16-entry float32 code table of `type` (bitsandbytes get_4bit_type).
at::Tensor CodeTable(QuantType type);

/// bitsandbytes create_dynamic_map(signed=True): the 256 float32 codes of the scales in double
/// quantization.
at::Tensor DynamicMap();

}  // namespace llmtrain::quant
