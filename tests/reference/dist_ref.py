"""Reference side of tests/dist.
torchrun --nproc-per-node N dist_ref.py fsdp2 DIR CFG_JSON: the tiny model of DIR/model loaded 4-bit by
transformers + bitsandbytes (NF4, double quantization, float32 compute), a PEFT LoRA on it (seeded as
ours), each decoder layer and the root wrapped by FSDP2's fully_shard over Gloo, trained on the
micro-batches our trainer recorded in DIR/batches.safetensors (ids/mask/pos/labels.STEP.K): rank r
takes micro-batches K ≡ r mod N of each step, the loss is divided by the step's global target count,
and FSDP's averaging is undone by scaling with N, so the gradients are the global sums, as ours.
torch AdamW, transformers' linear schedule and clip_grad_norm_ follow (CFG: seed, r, alpha, lr, wd,
eps, warmup, steps). Rank 0 writes DIR/fsdp2_weights.safetensors and prints {"losses": [...]}.
dist_ref.py peft MODEL_DIR ADAPTER_DIR: loads the adapter onto the model with
PeftModel.from_pretrained, checks that every LoRA tensor PEFT holds equals the file's, runs a forward,
and prints {"lora_tensors": N, "equal": bool, "finite": bool}.
"""
import sys

import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from common import causal_lm_loss_sum, emit, step_micro_batches

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
if sys.argv[1] == "fsdp2":
    import json
    import os
    import torch.distributed as dist
    import transformers
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import save_file
    from torch.distributed.fsdp import fully_shard
    from transformers import BitsAndBytesConfig, get_linear_schedule_with_warmup
    out = sys.argv[2]
    cfg = json.loads(sys.argv[3])
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    b = load_file(os.path.join(out, "batches.safetensors"))
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.float32)
    model = AutoModelForCausalLM.from_pretrained(os.path.join(out, "model"), dtype=torch.float32,
                                                 attn_implementation="eager", quantization_config=quant,
                                                 device_map="cpu")
    torch.manual_seed(cfg["seed"])
    peft_model = get_peft_model(model, LoraConfig(r=cfg["r"], lora_alpha=cfg["alpha"], lora_dropout=0.0,
                                                  target_modules="all-linear", task_type="CAUSAL_LM"))
    for layer in peft_model.base_model.model.model.layers:
        fully_shard(layer)
    fully_shard(peft_model)
    peft_model.train()
    params = [p for n, p in peft_model.named_parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg["lr"], betas=(0.9, 0.999), eps=cfg["eps"], weight_decay=cfg["wd"])
    sched = get_linear_schedule_with_warmup(opt, cfg["warmup"], cfg["steps"])
    losses = []
    for step in range(cfg["steps"]):
        micro, total = step_micro_batches(b, step)
        mine = [k for k in micro if int(k.split(".")[1]) % world == rank]
        loss_sum = torch.zeros((), dtype=torch.float64)
        for k in mine:
            ce = causal_lm_loss_sum(peft_model, b, k)
            (ce * world / total).backward()  # FSDP averages the gradients over the ranks
            loss_sum += ce.item()
        dist.all_reduce(loss_sum)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss_sum.item() / total)
    weights = {}
    for n, p in peft_model.named_parameters():
        if p.requires_grad:
            full = p.full_tensor() if hasattr(p, "full_tensor") else p
            weights[n.replace(".default", "")] = full.detach().contiguous()
    if rank == 0:
        save_file(weights, os.path.join(out, "fsdp2_weights.safetensors"))
        emit({"losses": losses, "world": world})
    dist.destroy_process_group()
    sys.exit(0)

sys.exit(f"unknown mode {sys.argv[1]}")
