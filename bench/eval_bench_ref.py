"""Reference side of bench/eval_bench: transformers' generate() on the same GGUF, prompts, threads
and greedy settings. Usage: eval_bench_ref.py FILE.gguf PROMPTS.json MAX_NEW_TOKENS THREADS

PROMPTS.json: {"prompts": [[ids...], ...], "pad": id, "eos": [ids...]}. Loads the model, prints
{"ready": true, "torch_threads": n}, then answers one command per stdin line with one JSON line:
  generate B  -> {"s": seconds, "tokens": new tokens kept, "outputs": [[ids] per prompt]}: all
                 prompts, B at a time (left-padded with an attention mask, as batched generate()
                 is used), each output cut after its first end token.
"""
import json
import os
import sys
import time

import torch
from transformers import AutoModelForCausalLM

path, prompts_path, max_new, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(threads)
model = AutoModelForCausalLM.from_pretrained(os.path.dirname(os.path.abspath(path)),
                                             gguf_file=os.path.basename(path), dtype=torch.float32)
model.eval()
spec = json.load(open(prompts_path))
prompts, pad, eos = spec["prompts"], spec["pad"], spec["eos"]


def run(batch):
    outputs, tokens = [], 0
    for begin in range(0, len(prompts), batch):
        part = prompts[begin:begin + batch]
        width = max(len(p) for p in part)
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in part])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in part])
        with torch.no_grad():
            out = model.generate(ids, attention_mask=mask, max_new_tokens=max_new, do_sample=False,
                                 eos_token_id=eos, pad_token_id=pad)
        for row in out[:, width:].tolist():
            cut = next((i + 1 for i, t in enumerate(row) if t in eos), len(row))
            outputs.append(row[:cut])
            tokens += cut
    return outputs, tokens


run(4)  # warm-up
print(json.dumps({"ready": True, "torch_threads": torch.get_num_threads()}), flush=True)
for line in sys.stdin:
    cmd = line.split()
    if not cmd:
        continue
    if cmd[0] == "generate":
        start = time.perf_counter()
        outputs, tokens = run(int(cmd[1]))
        print(json.dumps({"s": time.perf_counter() - start, "tokens": tokens, "outputs": outputs}), flush=True)
    else:
        print(json.dumps({"error": f"unknown command {cmd[0]}"}), flush=True)
