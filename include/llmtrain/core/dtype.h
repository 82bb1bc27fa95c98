// Element types of stored tensors, with their names in each file format.
//
// Dtype covers every safetensors dtype the library reads or writes (docs/formats.md §1.2). GGUF
// block types are a separate enum (io/gguf.h), since a GGUF tensor is often blocks, not elements.
//
//   LLMTRAIN_ASSIGN_OR_RETURN(Dtype dtype, DtypeFromSafetensorsName("BF16"));
//   int64_t bytes = ElementBits(dtype) / 8 * n_elems;
#pragma once

#include <cstdint>
#include "absl/strings/string_view.h"

#include "absl/status/statusor.h"

namespace llmtrain {

enum class Dtype : uint8_t {
  kBool,
  kU8,
  kI8,
  kI16,
  kU16,
  kF16,
  kBf16,
  kI32,
  kU32,
  kF32,
  kF64,
  kI64,
  kU64,
  kF8E4M3,  ///< "fn" variant: no infinities, 0x7F/0xFF are NaN, max 448
  kF8E5M2,  ///< IEEE-like: has inf and NaN, max 57344
};

/// All dtypes, in enum order (for tests and tables).
inline constexpr Dtype kAllDtypes[] = {
    Dtype::kBool, Dtype::kU8,  Dtype::kI8,  Dtype::kI16, Dtype::kU16,    Dtype::kF16,
    Dtype::kBf16, Dtype::kI32, Dtype::kU32, Dtype::kF32, Dtype::kF64,    Dtype::kI64,
    Dtype::kU64,  Dtype::kF8E4M3, Dtype::kF8E5M2};

/// Bits per element: 8, 16, 32 or 64.
int ElementBits(Dtype dtype);

/// The safetensors JSON spelling: "BOOL", "BF16", "F8_E4M3", ...
absl::string_view SafetensorsName(Dtype dtype);

/// Parses a safetensors dtype string. Unknown strings (including newer dtypes such as "F4" that
/// this library does not read) are InvalidArgument naming the string.
absl::StatusOr<Dtype> DtypeFromSafetensorsName(absl::string_view name);

/// Parses a user-facing dtype name as accepted by `--dtype`: f32, bf16, f16 (also float32,
/// bfloat16, float16). Anything else is InvalidArgument naming the value.
absl::StatusOr<Dtype> DtypeFromUserName(absl::string_view name);

/// True for F16, BF16, F32, F64 and the F8 types.
bool IsFloatingPoint(Dtype dtype);

}  // namespace llmtrain
