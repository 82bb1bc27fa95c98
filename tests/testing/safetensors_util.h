// Reads every tensor of a safetensors file the reference scripts wrote (tests that link LibTorch).
#pragma once

#include <ATen/ATen.h>

#include <catch2/catch.hpp>
#include <map>
#include <string>

#include "llmtrain/io/safetensors.h"
#include "llmtrain/io/tensors.h"

namespace llmtrain::testing {

/// name → an owned copy of each tensor of `path`.
inline std::map<std::string, at::Tensor> LoadAll(const std::string& path) {
  auto file = io::SafetensorsFile::Open(path);
  REQUIRE(file.ok());
  std::map<std::string, at::Tensor> out;
  for (const io::TensorInfo& t : (*file)->tensors()) out[t.name] = io::TensorView(**file, t).clone();
  return out;
}

}  // namespace llmtrain::testing
