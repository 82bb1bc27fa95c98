"""Reference side of bench/model_bench: transformers on the same GGUF, threads and dtype.
Usage: model_bench_ref.py FILE.gguf TOKENS THREADS

Loads the model, prints {"ready": true, "torch_threads": torch.get_num_threads()}, then answers one
command per stdin line with one JSON line, so the benchmark can alternate ours and the reference
round by round (the machine's speed drifts between minutes; alternating exposes both sides to the
same drift):
  fwd_bwd     -> {"s": seconds of one forward+backward of TOKENS tokens}
  decode N    -> {"s": seconds, "n": new tokens} of greedy generate() of N tokens after 16
  rss         -> {"peak_rss_mib": max RSS of this process}
"""
import json
import os
import resource
import sys
import time

import torch
from transformers import AutoModelForCausalLM

path, tokens, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(threads)
model = AutoModelForCausalLM.from_pretrained(os.path.dirname(os.path.abspath(path)),
                                             gguf_file=os.path.basename(path), dtype=torch.float32,
                                             attn_implementation="eager")
gen = torch.Generator().manual_seed(0)
ids = torch.randint(0, model.config.vocab_size, (1, tokens), generator=gen)
prompt = ids[:, :16]


def fwd_bwd():
    model.zero_grad(set_to_none=True)
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()


def decode(n):
    with torch.no_grad():
        return model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=n,
                              min_new_tokens=n, do_sample=False)


fwd_bwd()  # warm-up
model.zero_grad(set_to_none=True)
decode(4)
print(json.dumps({"ready": True, "torch_threads": torch.get_num_threads()}), flush=True)
for line in sys.stdin:
    cmd = line.split()
    if not cmd:
        continue
    if cmd[0] == "fwd_bwd":
        start = time.perf_counter()
        fwd_bwd()
        out = {"s": time.perf_counter() - start}
        model.zero_grad(set_to_none=True)
    elif cmd[0] == "decode":
        start = time.perf_counter()
        generated = decode(int(cmd[1]))
        out = {"s": time.perf_counter() - start, "n": generated.shape[1] - prompt.shape[1]}
    elif cmd[0] == "rss":
        out = {"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}
    else:
        out = {"error": f"unknown command {cmd[0]}"}
    print(json.dumps(out), flush=True)
