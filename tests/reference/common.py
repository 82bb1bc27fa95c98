"""Shared helpers of the reference scripts (run with .venv/bin/python by the C++ tests)."""
import json
import sys

import numpy as np


def fnv1a64(data: bytes) -> int:
    """FNV-1a 64 of raw bytes; the C++ tests compute the same to compare tensors byte for byte."""
    h = 0xCBF29CE484222325
    arr = np.frombuffer(data, dtype=np.uint8)
    # Vectorising FNV is not possible; chunk through Python ints for small test tensors only.
    for b in arr.tobytes():
        h ^= b
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def emit(obj) -> None:
    """Prints one JSON object on stdout: the only thing the C++ side parses."""
    sys.stdout.write(json.dumps(obj) + "\n")
