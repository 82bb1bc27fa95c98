"""safetensors reference side: files written by the Python `safetensors` package, and checks of
files written by llmtrain. Usage:
  safetensors_ref.py write OUT.safetensors SEED   -> every dtype, 0-d and empty tensors; prints a
                                                     manifest {name: {dtype, shape, fnv}}
  safetensors_ref.py verify OURS.safetensors ORIG.safetensors -> loads both with safetensors and
                                                     prints {"equal": bool, "problems": [...]}
  safetensors_ref.py sharded DIR SEED               -> a tiny Qwen2 saved by transformers in
                                                     several shards; prints {"n_shards": k}
  safetensors_ref.py compare_models DIR_A DIR_B     -> state dicts of two HF folders, loaded by
                                                     transformers; prints {"equal": bool, ...}
"""
import os
import sys

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from common import emit, fnv1a64

DTYPES = {
    "BOOL": torch.bool, "U8": torch.uint8, "I8": torch.int8, "I16": torch.int16,
    "U16": torch.uint16, "F16": torch.float16, "BF16": torch.bfloat16, "I32": torch.int32,
    "U32": torch.uint32, "F32": torch.float32, "F64": torch.float64, "I64": torch.int64,
    "U64": torch.uint64, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}


def random_tensor(name: str, dtype: torch.dtype, shape, gen: torch.Generator) -> torch.Tensor:
    n = 1
    for d in shape:
        n *= d
    itemsize = torch.empty((), dtype=dtype).element_size()
    raw = torch.randint(0, 256, (n * itemsize,), dtype=torch.uint8, generator=gen)
    if dtype == torch.bool:
        raw = raw % 2
    t = raw.view(dtype).reshape(shape)
    if dtype.is_floating_point:  # keep the values finite: NaN payloads are not the point here
        t = torch.where(torch.isfinite(t.float()), t, torch.zeros_like(t))
    return t.clone()


def write(out: str, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for i, (name, dtype) in enumerate(DTYPES.items()):
        tensors[f"t.{name.lower()}"] = random_tensor(name, dtype, (3, 5 + i), gen)
        tensors[f"scalar.{name.lower()}"] = random_tensor(name, dtype, (), gen)
        tensors[f"empty.{name.lower()}"] = random_tensor(name, dtype, (0, 4), gen)
    tensors["t.f32_4d"] = random_tensor("F32", torch.float32, (2, 3, 1, 4), gen)
    save_file(tensors, out, metadata={"format": "pt", "seed": str(seed), "note": "llmtrain ✓"})
    manifest = {}
    with safe_open(out, framework="pt") as f:
        for name in f.keys():
            t = f.get_tensor(name)
            dtype = [k for k, v in DTYPES.items() if v == t.dtype][0]
            raw = t.contiguous().view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
            manifest[name] = {"dtype": dtype, "shape": list(t.shape), "fnv": str(fnv1a64(raw))}
    emit(manifest)


def load_all(path: str):
    out = {}
    with safe_open(path, framework="pt") as f:
        meta = f.metadata()
        for name in f.keys():
            out[name] = f.get_tensor(name)
    return out, meta


def verify(ours: str, orig: str) -> None:
    a, meta_a = load_all(ours)
    b, meta_b = load_all(orig)
    problems = []
    if set(a) != set(b):
        problems.append(f"names differ: {sorted(set(a) ^ set(b))}")
    for name in sorted(set(a) & set(b)):
        x, y = a[name], b[name]
        if x.dtype != y.dtype or x.shape != y.shape:
            problems.append(f"{name}: {x.dtype}{list(x.shape)} vs {y.dtype}{list(y.shape)}")
        elif x.numel() and not torch.equal(x.reshape(-1).view(torch.uint8), y.reshape(-1).view(torch.uint8)):
            problems.append(f"{name}: bytes differ")
    if meta_a != meta_b:
        problems.append(f"metadata {meta_a} vs {meta_b}")
    emit({"equal": not problems, "problems": problems})


def tiny_qwen2(seed: int):
    from transformers import Qwen2Config, Qwen2ForCausalLM
    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return Qwen2ForCausalLM(config)


def sharded(out_dir: str, seed: int) -> None:
    model = tiny_qwen2(seed).to(torch.bfloat16)
    model.save_pretrained(out_dir, max_shard_size="20KB")
    shards = [f for f in os.listdir(out_dir) if f.endswith(".safetensors")]
    emit({"n_shards": len(shards), "n_tensors": len(model.state_dict())})


def compare_models(dir_a: str, dir_b: str) -> None:
    from transformers import AutoModelForCausalLM
    a = AutoModelForCausalLM.from_pretrained(dir_a, dtype=torch.bfloat16).state_dict()
    b = AutoModelForCausalLM.from_pretrained(dir_b, dtype=torch.bfloat16).state_dict()
    problems = [k for k in a if k not in b or not torch.equal(a[k], b[k])]
    emit({"equal": not problems and len(a) == len(b), "problems": problems, "n_tensors": len(a)})


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "write":
        write(sys.argv[2], int(sys.argv[3]))
    elif cmd == "verify":
        verify(sys.argv[2], sys.argv[3])
    elif cmd == "sharded":
        sharded(sys.argv[2], int(sys.argv[3]))
    elif cmd == "compare_models":
        compare_models(sys.argv[2], sys.argv[3])
    else:
        raise SystemExit(f"unknown command {cmd}")
