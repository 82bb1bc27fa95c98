"""Reference side of bench/io_bench: Python safetensors loading a file into torch tensors.
Usage: io_bench_ref.py FILE REPEATS  -> prints the median seconds of load_file(FILE)."""
import statistics
import sys
import time

from safetensors.torch import load_file

path, repeats = sys.argv[1], int(sys.argv[2])
load_file(path)  # warm the page cache, as the C++ side does
times = []
for _ in range(repeats):
    start = time.perf_counter()
    tensors = load_file(path)
    times.append(time.perf_counter() - start)
    del tensors
print(statistics.median(times))
