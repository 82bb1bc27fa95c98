// Writes a safetensors file with LibTorch tensors through the installed llmtrain, reads it back,
// and prints what it found: the consumer test checks the output.
#include <ATen/ATen.h>

#include <cstdio>

#include "llmtrain/llmtrain.h"  // the one-include API, so the consumer compiles every public header

int main(int argc, char** argv) {
  if (argc != 2) return 2;
  const at::Tensor w = at::arange(6, at::kFloat).reshape({2, 3});
  if (!llmtrain::io::SaveSafetensors(argv[1], {{"w", w}}).ok()) return 1;
  auto file = llmtrain::io::SafetensorsFile::Open(argv[1]);
  if (!file.ok()) return 1;
  const at::Tensor back = llmtrain::io::TensorView(**file, (*file)->tensors()[0]);
  std::printf("consumer: %s %s sum=%g\n", (*file)->tensors()[0].name.c_str(),
              llmtrain::SafetensorsName((*file)->tensors()[0].dtype).data(), back.sum().item<double>());
  return at::equal(back, w) ? 0 : 1;
}
