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


def step_micro_batches(batches, step):
    """The keys "STEP.K" of a step's micro-batches in batches.safetensors (ids/mask/pos/labels.STEP.K),
    in order, and the step's target count (labels after the shift that are not -100)."""
    keys = sorted((k[len("ids."):] for k in batches if k.startswith(f"ids.{step}.")), key=lambda k: int(k.split(".")[1]))
    total = sum(int((batches[f"labels.{k}"][:, 1:] != -100).sum()) for k in keys)
    return keys, total


def causal_lm_loss_sum(model, batches, key):
    """Σ of the token losses of micro-batch `key` (position t predicts t + 1), float32."""
    import torch
    logits = model(input_ids=batches[f"ids.{key}"], attention_mask=batches[f"mask.{key}"],
                   position_ids=batches[f"pos.{key}"]).logits
    return torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                                             batches[f"labels.{key}"][:, 1:].reshape(-1), ignore_index=-100,
                                             reduction="sum")
