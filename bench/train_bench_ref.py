"""Reference side of bench/train_bench (on the CPU) and of scripts/device-check's speed part (on a
GPU): transformers + PEFT + bitsandbytes QLoRA training steps (NF4, double quantization, LoRA on
all linear layers, AdamW) on the same model, batch, sequence length, rank and threads as ours.
Usage: train_bench_ref.py MODEL BATCH SEQ RANK THREADS [f32|bf16|autocast] [cpu|cuda] [ckpt]
MODEL is a .gguf file or an HF model folder. LoRA stays float32. On cuda (scripts/device-check)
the model is on GPU 0 with attention "sdpa" (transformers' default there; "eager" on the CPU),
and each step ends with a synchronization. "ckpt" turns on gradient checkpointing.
Prints {"ready": true, "torch_threads": torch.get_num_threads()}, then answers each stdin line
"step" with {"s": seconds} of one training step (forward, backward, optimizer), "profile N" with the
top operators by self time over N steps (torch.profiler), and "rss" with {"peak_rss_mib": ...}.
"""
import json
import os
import resource
import sys

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")

import time  # noqa: E402

import torch  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402
from transformers import AutoModelForCausalLM, BitsAndBytesConfig  # noqa: E402

path = sys.argv[1]
batch, seq, rank, threads = (int(a) for a in sys.argv[2:6])
mode = sys.argv[6] if len(sys.argv) > 6 else "f32"
device = sys.argv[7] if len(sys.argv) > 7 else "cpu"
checkpointing = len(sys.argv) > 8 and sys.argv[8] == "ckpt"
# f32; bf16 (model and 4-bit compute dtype); autocast (float32 model, bf16 4-bit compute dtype,
# forward and loss under torch.autocast).
compute = torch.bfloat16 if mode == "bf16" else torch.float32
torch.set_num_threads(threads)
bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                         bnb_4bit_compute_dtype=torch.bfloat16 if mode == "autocast" else compute)
# transformers refuses quantization_config together with gguf_file: the GGUF is converted to an HF
# folder once (next to it, in the git-ignored .venv/models), then loaded 4-bit from there.
if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "config.json")):
    sys.exit(f"{path}: an HF model folder needs a config.json")
hf_dir = path if os.path.isdir(path) else os.path.join(os.path.dirname(os.path.abspath(path)), "gemma-3-270m-hf-f32")
if not os.path.isfile(os.path.join(hf_dir, "config.json")):
    dense = AutoModelForCausalLM.from_pretrained(os.path.dirname(os.path.abspath(path)),
                                                 gguf_file=os.path.basename(path), dtype=torch.float32)
    # save_pretrained refuses a GGUF-loaded model: write its state dict and config directly.
    from safetensors.torch import save_file
    os.makedirs(hf_dir, exist_ok=True)
    state = {k: v.contiguous() for k, v in dense.state_dict().items()
             if not (k == "lm_head.weight" and dense.config.tie_word_embeddings)}
    save_file(state, os.path.join(hf_dir, "model.safetensors"), metadata={"format": "pt"})
    if hasattr(dense.config, "quantization_config"):
        delattr(dense.config, "quantization_config")
    dense.config.save_pretrained(hf_dir)
    del dense
model = AutoModelForCausalLM.from_pretrained(hf_dir, quantization_config=bnb, dtype=compute,
                                             device_map={"": 0} if device == "cuda" else "cpu",
                                             attn_implementation="sdpa" if device == "cuda" else "eager")
if checkpointing:
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.05, target_modules="all-linear",
                                         task_type="CAUSAL_LM"))
model.train()
opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
gen = torch.Generator().manual_seed(0)
ids = torch.randint(0, model.config.vocab_size, (batch, seq), generator=gen).to(device)


def step():
    with torch.autocast(device, dtype=torch.bfloat16, enabled=mode == "autocast"):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    if device == "cuda":
        torch.cuda.synchronize()


step()
print(json.dumps({"ready": True, "torch_threads": torch.get_num_threads()}), flush=True)
for line in sys.stdin:
    cmd = line.strip()
    if cmd == "step":
        start = time.perf_counter()
        step()
        print(json.dumps({"s": time.perf_counter() - start}), flush=True)
    elif cmd.startswith("profile "):
        n = int(cmd.split()[1])
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(n):
                step()
        events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
        total = sum(e.self_cpu_time_total for e in events) / 1e6
        rows = [{"name": e.key[:80], "calls": e.count / n, "self_s": e.self_cpu_time_total / 1e6 / n,
                 "share": 100.0 * e.self_cpu_time_total / 1e6 / max(total, 1e-12)} for e in events[:25]]
        print(json.dumps({"total_s": total / n, "rows": rows}), flush=True)
    elif cmd == "rss":
        print(json.dumps({"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}), flush=True)
