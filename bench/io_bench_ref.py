"""Reference side of bench/io_bench: Python safetensors loading a file into torch tensors.
Usage: io_bench_ref.py FILE

Loads FILE once with each backend (warming the page cache, as the C++ side does), prints
{"ready": true, "reader_threads": 1, "torch_threads": N}, then answers one command per stdin line
with one JSON line, so the benchmark can alternate ours and the reference round by round:
  mmap   -> {"s": seconds of load_file(FILE)}                   (tensors view the mapped file)
  pread  -> {"s": seconds of load_file(FILE, backend="pread")}  (tensors own their memory)
Each timing includes dropping the tensors again (unmapping, freeing), as ours includes destroying
its tensors: both sides time the same load-and-release.

reader_threads: on the CPU, safetensors' get_tensors (what load_file calls) is a sequential loop
over get_tensor, each a pread(2) into a new bytearray wrapped by torch.frombuffer, on the calling
thread (safetensors bindings/python/src/lib.rs, `get_tensors` and `get_tensor_pread`; only the MPS
device takes a parallel path). torch's intra-op threads do not take part; torch_threads is stated
so that both sides' thread settings are on record.
"""
import json
import sys
import time

import torch
from safetensors.torch import load_file

path = sys.argv[1]
for backend in ("mmap", "pread"):
    load_file(path, backend=backend)  # warm the page cache
print(json.dumps({"ready": True, "reader_threads": 1, "torch_threads": torch.get_num_threads()}), flush=True)
for line in sys.stdin:
    cmd = line.strip()
    if cmd in ("mmap", "pread"):
        start = time.perf_counter()
        tensors = load_file(path, backend=cmd)
        del tensors
        out = {"s": time.perf_counter() - start}
    else:
        out = {"error": f"unknown command {cmd!r}"}
    print(json.dumps(out), flush=True)
