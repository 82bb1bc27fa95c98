"""Reference side of tests/quant: bitsandbytes' own 4-bit quantization on its CPU path.

  quant_ref.py make OUT_DIR

Random tensors of every shape class (2-D weights, 1-D, 3-D, sizes that are not a multiple of the
blocksize, odd sizes, a partial block of zeros), float32/float16/bfloat16, NF4 and FP4, with and
without double quantization, blocksizes 64 and 128. For each case OUT_DIR/cases.safetensors holds
the input, bitsandbytes.functional.quantize_4bit's packed bytes and quant state, and
dequantize_4bit's result. Where bitsandbytes 0.50.2's AVX512 dequantization kernel indexes the
block scales per row (last dimension a multiple of 16 but not of the blocksize, which gives wrong
values), the dequantization reference is its plain torch path instead, and the case says so.
Prints one JSON line: the case list.
"""
import itertools
import os
import sys

# bitsandbytes wraps its torch dequantization path in torch.compile; the eager path computes the
# same and needs no compiler at test time.
os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")

import torch  # noqa: E402
import bitsandbytes.functional as F  # noqa: E402
from bitsandbytes.backends.default.ops import _dequantize_4bit_compute  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from common import emit  # noqa: E402


def main():
    out_dir = sys.argv[2]
    os.makedirs(out_dir, exist_ok=True)
    torch.set_num_threads(2)
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    shapes = [(64, 64), (128, 192), (3, 100), (3, 33), (7,), (130,), (999,), (257, 3), (2, 3, 64), (3, 96), (4, 48)]
    tensors, cases = {}, []
    for i, (shape, dtype, qt, dq, bs) in enumerate(itertools.product(
            shapes, (torch.float32, torch.float16, torch.bfloat16), ("nf4", "fp4"), (False, True), (64, 128))):
        kind = i % 3
        x = torch.randn(shape, generator=gen)
        if kind == 1:
            x = x * torch.rand(shape, generator=gen) ** 4  # many values near zero
        if kind == 2:
            x = torch.distributions.StudentT(2.0).sample(shape)  # heavy tails
            flat = x.reshape(-1)
            if flat.numel() > bs:
                flat[-(flat.numel() % bs or bs):] = 0.0  # an all-zero last block
        x = x.to(dtype)
        packed, state = F.quantize_4bit(x, blocksize=bs, compress_statistics=dq, quant_type=qt)
        last = shape[-1]
        buggy = last % 2 == 0 and last % 16 == 0 and last % bs != 0
        if buggy:
            deq = _dequantize_4bit_compute(packed.reshape(-1), F.dequantize_blockwise(state.absmax, state.state2) +
                                           state.offset if dq else state.absmax,
                                           state.code, bs, shape, dtype)
        else:
            deq = F.dequantize_4bit(packed, state)
        name = f"c{i}"
        tensors[f"{name}.input"] = x.contiguous()
        tensors[f"{name}.packed"] = packed.contiguous()
        tensors[f"{name}.absmax"] = state.absmax.contiguous()
        tensors[f"{name}.code"] = state.code.contiguous()
        tensors[f"{name}.dequant"] = deq.reshape(shape).contiguous()
        case = {"name": name, "shape": list(shape), "dtype": str(dtype).replace("torch.", ""), "quant_type": qt,
                "double_quant": dq, "blocksize": bs, "bnb_avx512_row_indexing": buggy}
        if dq:
            tensors[f"{name}.nested_absmax"] = state.state2.absmax.contiguous()
            tensors[f"{name}.nested_code"] = state.state2.code.contiguous()
            case["offset"] = float(state.offset)
        cases.append(case)
    # LLM.int8 row-wise: 2-D weights, a zero row, outliers over a threshold (one not representable
    # in float16/bfloat16).
    int8_cases = []
    for j, (shape, dtype, threshold) in enumerate(itertools.product(
            ((16, 64), (5, 33), (1, 40), (64, 128)), (torch.float32, torch.float16, torch.bfloat16), (0.0, 2.0, 2.3))):
        x = (torch.randn(shape, generator=gen) * (1 + 3 * (j % 2))).to(dtype)
        if shape[0] > 2:
            x[1] = 0
        q, stats, outlier_cols = F.int8_vectorwise_quant(x.clone(), threshold=threshold)
        name = f"i{j}"
        tensors[f"{name}.input"] = x.contiguous()
        tensors[f"{name}.q"] = q.contiguous()
        tensors[f"{name}.row_stats"] = stats.contiguous()
        tensors[f"{name}.dequant"] = F.int8_vectorwise_dequant(q, stats).contiguous()
        if outlier_cols is not None:
            tensors[f"{name}.outlier_cols"] = outlier_cols.to(torch.int64).contiguous()
        int8_cases.append({"name": name, "threshold": threshold, "has_outlier_cols": outlier_cols is not None})
    save_file(tensors, os.path.join(out_dir, "cases.safetensors"))
    emit({"cases": cases, "int8_cases": int8_cases})


if __name__ == "__main__":
    main()
