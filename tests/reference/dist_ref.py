"""Reference side of tests/dist.
dist_ref.py peft MODEL_DIR ADAPTER_DIR: loads the adapter onto the model with
PeftModel.from_pretrained, checks that every LoRA tensor PEFT holds equals the file's, runs a forward,
and prints {"lora_tensors": N, "equal": bool, "finite": bool}.
"""
import sys

import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from common import emit

if sys.argv[1] == "peft":
    model_dir, adapter_dir = sys.argv[2:4]
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, adapter_dir).eval()
    saved = load_file(adapter_dir + "/adapter_model.safetensors")
    held = {n: p for n, p in model.named_parameters() if "lora_" in n}
    equal = len(held) == len(saved)
    for name, p in held.items():
        key = name.replace(".default", "")
        equal = equal and key in saved and torch.equal(saved[key], p.detach())
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([[1, 2, 3, 4, 5]])).logits
    emit({"lora_tensors": len(held), "equal": bool(equal), "finite": bool(torch.isfinite(logits).all())})
    sys.exit(0)
sys.exit(f"unknown mode {sys.argv[1]}")
