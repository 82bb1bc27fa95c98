"""llama.cpp side of bench/decode_bench (run with .venv-llama/bin/python; scripts/build-llama-cpp
makes it): greedy decoding of the same GGUF through llama-cpp-python.
Usage: decode_bench_llama.py FILE.gguf THREADS

Prints {"ready": true, "threads": THREADS, "llama_cpp": version}, then answers one command per stdin
line with one JSON line:
  decode N  -> {"s": seconds, "n": new tokens} of a 16-token prompt and N greedy tokens (end tokens
               ignored, as the other sides do), the KV cache cleared first
"""
import json
import sys
import time

import llama_cpp
import numpy as np

path, threads = sys.argv[1], int(sys.argv[2])
# logits_all: llama-cpp-python 0.3.36 fills Llama.scores only with it; it costs the
# prompt's logits once, not the timed decode steps (one token each).
llm = llama_cpp.Llama(model_path=path, n_ctx=256, n_batch=64, n_threads=threads, n_threads_batch=threads,
                      logits_all=True, verbose=False)
rng = np.random.default_rng(0)
prompt = [int(t) for t in rng.integers(0, llm.n_vocab(), 16)]


def decode(n):
    llm.reset()
    llm.eval(prompt)
    made = 0
    for _ in range(n):
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))  # greedy, whatever the token is (the last logits)
        llm.eval([token])
        made += 1
    return made


decode(4)  # warm-up
print(json.dumps({"ready": True, "threads": threads, "llama_cpp": llama_cpp.__version__}), flush=True)
for line in sys.stdin:
    cmd = line.split()
    if not cmd:
        continue
    if cmd[0] == "decode":
        start = time.perf_counter()
        made = decode(int(cmd[1]))
        print(json.dumps({"s": time.perf_counter() - start, "n": made}), flush=True)
    else:
        print(json.dumps({"error": f"unknown command {cmd[0]}"}), flush=True)
