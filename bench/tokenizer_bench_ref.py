"""Reference side of bench/tokenizer_bench: HF tokenizers' batch encode (Rust, rayon threads).
Usage: tokenizer_bench_ref.py OUT_DIR GGUF THREADS

Builds the real-text corpus and the two real tokenizers of tests/reference/tokenizer_ref.py into
OUT_DIR (corpus.bin, gemma/, qwen/), then stays resident, answering one command per stdin line with
one JSON line, so the benchmark can alternate ours and the reference round by round:
  (start)       -> {"ready": true, "records", "bytes", "tokens": {name: count}, "rayon_threads",
                    "tokenizers_parallelism"}, or {"error": ...}
  encode NAME   -> {"s": seconds of one Tokenizer.encode_batch_fast of the whole corpus, with
                    special tokens, including dropping its result again}

encode_batch_fast is the batch encode of the tokenizers binding that does not compute offsets (ours
returns ids only); it still returns one Encoding per record. Before saying it is ready the script
checks, per tokenizer, that its ids equal encode_batch's on every record, and answers an error
otherwise, so both sides do the work of encode_batch's ids.

Threads: rayon sizes its global pool from RAYON_NUM_THREADS when it first starts it, and tokenizers
runs batches on that pool unless TOKENIZERS_PARALLELISM is off (tokenizers/src/utils/
parallelism.rs). Both are set here, before tokenizers starts any thread, to THREADS (ours) and
"true", whatever the environment said, and reported back.
"""
import os
import struct
import sys
import time

out_dir, gguf, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
os.environ["RAYON_NUM_THREADS"] = str(threads)
os.environ["TOKENIZERS_PARALLELISM"] = "true"

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "reference"))
import random  # noqa: E402

import tokenizer_ref  # noqa: E402
from common import emit  # noqa: E402


def main():
    os.makedirs(out_dir, exist_ok=True)
    records, _ = tokenizer_ref.build_corpus(random.Random(1234))
    with open(os.path.join(out_dir, "corpus.bin"), "wb") as f:
        for r in records:
            f.write(struct.pack("<I", len(r)))
            f.write(r)
    texts = [r.decode("utf-8", errors="replace") for r in records]
    backends = {}
    tokens = {}
    for name, tok in (("gemma", tokenizer_ref.gemma_tokenizer(gguf)), ("qwen", tokenizer_ref.qwen_tokenizer())):
        tok.save_pretrained(os.path.join(out_dir, name))
        backend = tok.backend_tokenizer
        fast = backend.encode_batch_fast(texts)  # also the warm-up
        full = backend.encode_batch(texts)
        if len(fast) != len(texts) or len(full) != len(texts):
            emit({"error": f"{name}: {len(fast)} and {len(full)} encodings for {len(texts)} records"})
            return
        for i, (a, b) in enumerate(zip(fast, full)):
            if a.ids != b.ids:
                emit({"error": f"{name}: encode_batch_fast ids differ from encode_batch on record {i}"})
                return
        backends[name] = backend
        tokens[name] = sum(len(e.ids) for e in fast)
        del fast, full
    emit({"ready": True, "records": len(texts), "bytes": sum(len(r) for r in records), "tokens": tokens,
          "rayon_threads": int(os.environ["RAYON_NUM_THREADS"]),
          "tokenizers_parallelism": os.environ["TOKENIZERS_PARALLELISM"]})
    sys.stdout.flush()
    for line in sys.stdin:
        cmd = line.split()
        if len(cmd) == 2 and cmd[0] == "encode" and cmd[1] in backends:
            start = time.perf_counter()
            encodings = backends[cmd[1]].encode_batch_fast(texts)
            del encodings
            emit({"s": time.perf_counter() - start})
        else:
            emit({"error": f"unknown command {line.strip()!r}"})
        sys.stdout.flush()


main()
