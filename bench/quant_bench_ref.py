"""Reference side of bench/quant_bench: a PEFT LoRA layer on a bitsandbytes 4-bit Linear (NF4,
double quantization, float32 compute) on the CPU, in training mode, on the same shape, threads and
seed as ours. Usage: quant_bench_ref.py TOKENS IN OUT RANK THREADS

Prints {"ready": true, "torch_threads": torch.get_num_threads()}, then answers each stdin line
"lora" with {"s": seconds} of one forward+backward (input, lora_A and lora_B gradients).
"""
import json
import os
import sys

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")  # bitsandbytes' eager path; no compiler needed

import time  # noqa: E402

import torch  # noqa: E402
import bitsandbytes as bnb  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402

tokens, n_in, n_out, rank, threads = (int(a) for a in sys.argv[1:6])
torch.set_num_threads(threads)
torch.manual_seed(0)


class One(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(n_in, n_out, bias=False)

    def forward(self, x):
        return self.proj(x)


dense = One()
layer = bnb.nn.Linear4bit(n_in, n_out, bias=False, compute_dtype=torch.float32, compress_statistics=True,
                          quant_type="nf4")
layer.weight = bnb.nn.Params4bit(dense.proj.weight.data, requires_grad=False, compress_statistics=True,
                                 quant_type="nf4").to("cpu")
dense.proj = layer
model = get_peft_model(dense, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=["proj"]))
model.train()
x = torch.randn(tokens, n_in, requires_grad=True)
g = torch.randn(tokens, n_out)


def step():
    model.zero_grad(set_to_none=True)
    x.grad = None
    model(x).backward(g)


step()
print(json.dumps({"ready": True, "torch_threads": torch.get_num_threads()}), flush=True)
for line in sys.stdin:
    if line.strip() == "lora":
        start = time.perf_counter()
        step()
        print(json.dumps({"s": time.perf_counter() - start}), flush=True)
