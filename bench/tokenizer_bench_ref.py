"""Reference side of bench/tokenizer_bench: HF tokenizers' batch encode (Rust, all threads).
Usage: tokenizer_bench_ref.py OUT_DIR GGUF ROUNDS

Builds the real-text corpus and the two real tokenizers of tests/reference/tokenizer_ref.py into
OUT_DIR (corpus.bin, gemma/, qwen/), then times `Tokenizer.encode_batch` of the whole corpus with
special tokens, ROUNDS times per tokenizer after a warm-up, on all threads (RAYON default).
Prints one JSON line: per tokenizer the median seconds, the token count and the byte count.
"""
import os
import statistics
import struct
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "reference"))
import random  # noqa: E402

import tokenizer_ref  # noqa: E402
from common import emit  # noqa: E402

out_dir, gguf, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
os.makedirs(out_dir, exist_ok=True)
records, _ = tokenizer_ref.build_corpus(random.Random(1234))
with open(os.path.join(out_dir, "corpus.bin"), "wb") as f:
    for r in records:
        f.write(struct.pack("<I", len(r)))
        f.write(r)
texts = [r.decode("utf-8", errors="replace") for r in records]
result = {"records": len(texts), "bytes": sum(len(r) for r in records)}
for name, tok in (("gemma", tokenizer_ref.gemma_tokenizer(gguf)), ("qwen", tokenizer_ref.qwen_tokenizer())):
    tok.save_pretrained(os.path.join(out_dir, name))
    backend = tok.backend_tokenizer
    encodings = backend.encode_batch(texts)  # warm-up
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        encodings = backend.encode_batch(texts)
        times.append(time.perf_counter() - start)
    result[name] = {"seconds": statistics.median(times), "tokens": sum(len(e.ids) for e in encodings)}
emit(result)
