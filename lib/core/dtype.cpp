#include "llmtrain/core/dtype.h"

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"

namespace llmtrain {
namespace {

struct DtypeRow {
  Dtype dtype;
  absl::string_view safetensors_name;
  int bits;
  bool floating;
};

constexpr DtypeRow kRows[] = {
    {Dtype::kBool, "BOOL", 8, false},     {Dtype::kU8, "U8", 8, false},
    {Dtype::kI8, "I8", 8, false},         {Dtype::kI16, "I16", 16, false},
    {Dtype::kU16, "U16", 16, false},      {Dtype::kF16, "F16", 16, true},
    {Dtype::kBf16, "BF16", 16, true},     {Dtype::kI32, "I32", 32, false},
    {Dtype::kU32, "U32", 32, false},      {Dtype::kF32, "F32", 32, true},
    {Dtype::kF64, "F64", 64, true},       {Dtype::kI64, "I64", 64, false},
    {Dtype::kU64, "U64", 64, false},      {Dtype::kF8E4M3, "F8_E4M3", 8, true},
    {Dtype::kF8E5M2, "F8_E5M2", 8, true},
};

const DtypeRow& Row(Dtype dtype) { return kRows[static_cast<int>(dtype)]; }

}  // namespace

int ElementBits(Dtype dtype) { return Row(dtype).bits; }

absl::string_view SafetensorsName(Dtype dtype) { return Row(dtype).safetensors_name; }

bool IsFloatingPoint(Dtype dtype) { return Row(dtype).floating; }

absl::StatusOr<Dtype> DtypeFromSafetensorsName(absl::string_view name) {
  for (const DtypeRow& row : kRows) {
    if (row.safetensors_name == name) return row.dtype;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "unknown dtype \"", name,
      "\" (expected one of BOOL U8 I8 I16 U16 F16 BF16 I32 U32 F32 F64 I64 U64 F8_E4M3 F8_E5M2)"));
}

absl::StatusOr<Dtype> DtypeFromUserName(absl::string_view name) {
  const std::string lower = absl::AsciiStrToLower(name);
  if (lower == "f32" || lower == "float32" || lower == "fp32") return Dtype::kF32;
  if (lower == "bf16" || lower == "bfloat16") return Dtype::kBf16;
  if (lower == "f16" || lower == "float16" || lower == "fp16") return Dtype::kF16;
  return absl::InvalidArgumentError(
      absl::StrCat("dtype: expected f32, bf16 or f16, found \"", name, "\""));
}

}  // namespace llmtrain
