"""Decoder reference side: tiny random models saved by transformers, and their eager float32
logits and gradients; the real Gemma 3 270M GGUF through transformers. Usage:
  model_ref.py tiny FAMILY DIR SEED
      Writes DIR/model (save_pretrained), DIR/inputs.safetensors (input_ids, attention_mask,
      position_ids, loss_weights) and DIR/ref.safetensors (logits, grad.<param>, greedy: 32
      tokens of generate() after row 0), where the loss is sum(logits * loss_weights * mask).
      Prints {"params": n, "padding": side, "eos": [...], ...}.
  model_ref.py bf16 MODEL_DIR INPUTS.safetensors OUT.safetensors
      Logits of the saved model loaded with from_pretrained(dtype=bfloat16), eager.
  model_ref.py gguf FILE.gguf OUT.safetensors PROMPT
      Tokenizes PROMPT with the GGUF's tokenizer, runs transformers (gguf_file=, float32, eager)
      and writes input_ids, logits and greedy (32 tokens of generate()).
"""
import json
import os
import sys

import torch
from safetensors.torch import save_file

from common import emit

# One tiny config per family, each covering different cases (GQA ratio, windows, tying, padding).
TINY = {
    "gemma2": dict(cls="Gemma2", padding="left", shard=False, config=dict(
        vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=16,
        sliding_window=4, max_position_embeddings=64, tie_word_embeddings=True)),
    "gemma3_text": dict(cls="Gemma3", padding="right", shard=False, config=dict(
        vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=1, head_dim=16, query_pre_attn_scalar=24,
        sliding_window=3, sliding_window_pattern=2, max_position_embeddings=64,
        rope_scaling={"rope_type": "linear", "factor": 2.0}, rope_theta=1000000.0,
        rope_local_base_freq=10000.0, tie_word_embeddings=False)),
    "qwen2": dict(cls="Qwen2", padding="right", shard=True, config=dict(
        vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64,
        use_sliding_window=True, sliding_window=4, max_window_layers=1, rope_theta=10000.0,
        tie_word_embeddings=True)),
    "qwen3": dict(cls="Qwen3", padding="left", shard=False, config=dict(
        vocab_size=128, hidden_size=48, intermediate_size=96, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=64,
        rope_theta=1000000.0, tie_word_embeddings=False)),
}

B, T = 2, 10


def tiny(family, out_dir, seed):
    import transformers
    spec = TINY[family]
    torch.manual_seed(seed)
    config_cls = getattr(transformers, spec["cls"] + ("TextConfig" if family == "gemma3_text" else "Config"))
    model_cls = getattr(transformers, spec["cls"] + "ForCausalLM")
    config = config_cls(**spec["config"])
    config._attn_implementation = "eager"
    model = model_cls(config).to(torch.float32)
    with torch.no_grad():  # non-trivial norms and biases: the defaults are all 0 or 1
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    model_dir = os.path.join(out_dir, "model")
    model.save_pretrained(model_dir, max_shard_size="40KB" if spec["shard"] else "1GB")

    gen = torch.Generator().manual_seed(seed + 1)
    input_ids = torch.randint(0, config.vocab_size, (B, T), generator=gen)
    mask = torch.ones(B, T, dtype=torch.int64)
    if spec["padding"] == "left":
        mask[1, :3] = 0
    else:
        mask[1, -3:] = 0
    input_ids = torch.where(mask.bool(), input_ids, torch.zeros_like(input_ids))  # pad id 0
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    loss_weights = torch.randn(B, T, config.vocab_size, generator=gen)

    model.eval()
    logits = model(input_ids=input_ids, attention_mask=mask, position_ids=position_ids).logits
    loss = (logits * loss_weights * mask[..., None]).sum()
    loss.backward()
    ref = {"logits": logits.detach().contiguous()}
    for name, p in model.named_parameters():
        ref["grad." + name] = p.grad.detach().contiguous()
    # 32 greedy tokens after the unpadded row, with transformers' KV-cached generate().
    with torch.no_grad():
        prompt = input_ids[:1]
        out = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=32,
                             do_sample=False)
    ref["greedy"] = out[0, prompt.shape[1]:].contiguous()
    eos = model.generation_config.eos_token_id
    save_file({"input_ids": input_ids, "attention_mask": mask, "position_ids": position_ids,
               "loss_weights": loss_weights}, os.path.join(out_dir, "inputs.safetensors"))
    save_file(ref, os.path.join(out_dir, "ref.safetensors"))
    shards = [f for f in os.listdir(model_dir) if f.endswith(".safetensors")]
    emit({"params": sum(1 for _ in model.named_parameters()), "padding": spec["padding"],
          "shards": len(shards), "loss": loss.item(),
          "eos": [] if eos is None else (eos if isinstance(eos, list) else [eos])})


def bf16(model_dir, inputs_path, out):
    """Logits of a saved model loaded by from_pretrained in bfloat16 (eager)."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16,
                                                 attn_implementation="eager")
    model.eval()
    inputs = load_file(inputs_path)
    with torch.no_grad():
        logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                       position_ids=inputs["position_ids"]).logits
    save_file({"logits": logits.contiguous()}, out)
    emit({"dtype": str(logits.dtype)})


def gguf(path, out, prompt):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    folder, name = os.path.dirname(os.path.abspath(path)), os.path.basename(path)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32,
                                                 attn_implementation="eager")
    model.eval()
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(input_ids=ids).logits
        greedy = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=32,
                                do_sample=False)[0, ids.shape[1]:]
    save_file({"input_ids": ids.contiguous(), "logits": logits.contiguous(),
               "greedy": greedy.contiguous()}, out)
    eos = model.generation_config.eos_token_id
    emit({"tokens": ids.shape[1], "vocab": logits.shape[-1],
          "eos": [] if eos is None else (eos if isinstance(eos, list) else [eos])})


if __name__ == "__main__":
    if sys.argv[1] == "tiny":
        tiny(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    elif sys.argv[1] == "bf16":
        bf16(sys.argv[2], sys.argv[3], sys.argv[4])
    elif sys.argv[1] == "gguf":
        gguf(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        raise SystemExit(f"unknown command {sys.argv[1]}")
