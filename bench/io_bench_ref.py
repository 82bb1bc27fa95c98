"""Reference side of bench/io_bench: Python safetensors loading a file into torch tensors.
Usage: io_bench_ref.py FILE REPEATS
Prints two lines, the median seconds of
  mmap  load_file(FILE)                    (default backend: tensors view the mapped file)
  pread load_file(FILE, backend="pread")   (tensors own their memory, read with pread)"""
import statistics
import sys
import time

from safetensors.torch import load_file

path, repeats = sys.argv[1], int(sys.argv[2])
for backend in ("mmap", "pread"):
    load_file(path, backend=backend)  # warm the page cache, as the C++ side does
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        tensors = load_file(path, backend=backend)
        times.append(time.perf_counter() - start)
        del tensors
    print(backend, statistics.median(times))
