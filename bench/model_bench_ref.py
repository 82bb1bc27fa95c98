"""Reference side of bench/model_bench: transformers on the same GGUF, threads and dtype.
Usage: model_bench_ref.py FILE.gguf TOKENS DECODE THREADS
Prints one JSON line: fwd_bwd_tokens_per_s, decode_tokens_per_s, peak_rss_mib."""
import json
import os
import resource
import statistics
import sys
import time

import torch
from transformers import AutoModelForCausalLM

path, tokens, decode, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(threads)
model = AutoModelForCausalLM.from_pretrained(os.path.dirname(os.path.abspath(path)),
                                             gguf_file=os.path.basename(path), dtype=torch.float32,
                                             attn_implementation="eager")
gen = torch.Generator().manual_seed(0)
ids = torch.randint(0, model.config.vocab_size, (1, tokens), generator=gen)

def fwd_bwd():
    model.zero_grad(set_to_none=True)
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()

fwd_bwd()  # warm-up
times = []
for _ in range(3):
    start = time.perf_counter()
    fwd_bwd()
    times.append(time.perf_counter() - start)
model.zero_grad(set_to_none=True)

prompt = ids[:, :16]
with torch.no_grad():
    model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=4, do_sample=False)
    start = time.perf_counter()
    out = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=decode,
                         min_new_tokens=decode, do_sample=False)
    decode_s = time.perf_counter() - start
print(json.dumps({"fwd_bwd_tokens_per_s": tokens / statistics.median(times),
                  "decode_tokens_per_s": (out.shape[1] - prompt.shape[1]) / decode_s,
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}))
