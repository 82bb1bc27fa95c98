// RoPE in ATen ops (transformers apply_rotary_pos_emb): the CPU path and the oracle the CUDA
// kernel is compared with (kernels/rope.h).
#include <ATen/ATen.h>

#include "llmtrain/kernels/rope.h"

namespace llmtrain::kernels::detail {

at::Tensor ApplyRopeComposite(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  // rotate_half([x1, x2]) = [−x2, x1] over the last dim.
  const int64_t half = x.size(-1) / 2;
  const at::Tensor rotated = at::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
  return x * cos + rotated * sin;
}

}  // namespace llmtrain::kernels::detail
