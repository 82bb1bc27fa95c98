"""Reference side of tests/train. `train_ref.py peft …` loads a trained adapter in PEFT and a merged
folder in transformers (see that mode below). `train_ref.py tb DIR` prints the scalars TensorBoard's
EventAccumulator reads from the event files in DIR as {"tag": [[step, value], ...]}.
Otherwise: torch.optim.AdamW, transformers' schedules (LambdaLR over
get_{linear,cosine,constant}_schedule_with_warmup) and torch.nn.utils.clip_grad_norm_ on the CPU.
Usage: train_ref.py OUT.safetensors
Writes the initial parameters p<i>, the gradients g<i>.<step> fed at each step, and after each step
the parameters p<i>.<step>, plus lr.<kind> (the lr of every step per schedule) and norm.<step>
(the norm clip_grad_norm_ returned). Prints {"steps": S, "params": P}.
"""
import json
import sys

import torch
from safetensors.torch import save_file
from transformers import (get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup,
                          get_linear_schedule_with_warmup)

from common import causal_lm_loss_sum, emit, step_micro_batches

if sys.argv[1] == "tiny":
    # A tiny Qwen2 with a byte-level BPE tokenizer of 320 tokens trained here, and text records.
    import os
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers
    out = sys.argv[2]
    lines = [f"The {w} of {n} is {n * 3 % 17} and it {v} the {w}s." for n, (w, v) in
             enumerate([("cat", "likes"), ("dog", "sees"), ("bird", "hears"), ("fish", "eats")] * 8)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(lines, trainers.BpeTrainer(vocab_size=320, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    family = sys.argv[3] if len(sys.argv) > 3 else "qwen2"
    torch.manual_seed(3)
    common = dict(vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=True)
    config = {
        "qwen2": lambda: transformers.Qwen2Config(**common),
        "qwen3": lambda: transformers.Qwen3Config(head_dim=16, **common),
        "gemma2": lambda: transformers.Gemma2Config(head_dim=16, query_pre_attn_scalar=16, sliding_window=8, **common),
        "gemma3_text": lambda: transformers.Gemma3TextConfig(head_dim=16, query_pre_attn_scalar=16, sliding_window=8,
                                                             **common),
    }[family]()
    config._attn_implementation = "eager"
    model = transformers.AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(os.path.join(out, "model"))
    tok.save(os.path.join(out, "model", "tokenizer.json"))
    with open(os.path.join(out, "train.jsonl"), "w") as f:
        for line in lines:
            f.write(json.dumps({"text": line}) + "\n")
    emit({"records": len(lines)})
    sys.exit(0)

if sys.argv[1] == "replay":
    # transformers + PEFT + torch AdamW + transformers' schedule on the batches our trainer used.
    import os
    import transformers
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file
    out = sys.argv[2]
    cfg = json.loads(sys.argv[3])
    b = load_file(os.path.join(out, "batches.safetensors"))
    model = transformers.AutoModelForCausalLM.from_pretrained(os.path.join(out, "model"), dtype=torch.float32,
                                                              attn_implementation="eager")
    torch.manual_seed(cfg["seed"])
    peft_model = get_peft_model(model, LoraConfig(r=cfg["r"], lora_alpha=cfg["alpha"], lora_dropout=0.0,
                                                  target_modules="all-linear", task_type="CAUSAL_LM"))
    peft_model.train()
    params = [p for n, p in peft_model.named_parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg["lr"], betas=(0.9, 0.999), eps=1e-8, weight_decay=cfg["wd"])
    sched = get_linear_schedule_with_warmup(opt, cfg["warmup"], cfg["steps"])
    losses = []
    for step in range(cfg["steps"]):
        micro, total = step_micro_batches(b, step)
        loss_sum = 0.0
        for k in micro:
            # training.autocast "bf16": forward and loss under torch.autocast, backward outside.
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.get("autocast", False)):
                ce = causal_lm_loss_sum(peft_model, b, k)
            (ce / total).backward()
            loss_sum += ce.item()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss_sum / total)
    weights = {n.replace(".default", ""): p.detach().contiguous() for n, p in peft_model.named_parameters()
               if p.requires_grad}
    from safetensors.torch import save_file as save
    save(weights, os.path.join(out, "replay_weights.safetensors"))
    emit({"losses": losses})
    sys.exit(0)

if sys.argv[1] == "peft":
    # train_ref.py peft FILE.gguf ADAPTER_DIR MERGED_DIR OUT.safetensors: the trained adapter on the
    # GGUF's weights loaded by transformers, through PeftModel.from_pretrained, and the merged
    # folder loaded by AutoModelForCausalLM, on the same tokens. Writes both logits.
    import os
    from peft import PeftModel
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM
    gguf, adapter, merged, out = sys.argv[2:6]
    ids = torch.tensor([[2, 818, 5279, 529, 7001, 563, 9079, 236761, 107, 4368]])
    base = AutoModelForCausalLM.from_pretrained(os.path.dirname(gguf), gguf_file=os.path.basename(gguf),
                                                dtype=torch.float32)
    model = PeftModel.from_pretrained(base, adapter).eval()
    n_lora = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    with torch.no_grad():
        peft_logits = model(input_ids=ids).logits
    del model, base
    merged_model = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval()
    with torch.no_grad():
        merged_logits = merged_model(input_ids=ids).logits
    save_file({"input_ids": ids, "peft_logits": peft_logits.contiguous(), "merged_logits": merged_logits.contiguous()},
              out)
    emit({"lora_params": n_lora, "merged_class": type(merged_model).__name__})
    sys.exit(0)

if sys.argv[1] == "tb":
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(sys.argv[2])
    acc.Reload()
    emit({tag: [[e.step, e.value] for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]})
    sys.exit(0)

STEPS, WARMUP = 12, 3
gen = torch.Generator().manual_seed(5)
shapes = [(7, 5), (16,), (3, 4, 2)]
params = [torch.randn(s, generator=gen).requires_grad_(True) for s in shapes]
out = {f"p{i}": p.detach().clone() for i, p in enumerate(params)}
opt = torch.optim.AdamW(params, lr=1e-2, betas=(0.9, 0.95), eps=1e-6, weight_decay=0.1)
sched = get_cosine_schedule_with_warmup(opt, WARMUP, STEPS)
for step in range(STEPS):
    for i, p in enumerate(params):
        g = torch.randn(p.shape, generator=gen) * (5.0 if step == 4 else 0.3)  # step 4 clips
        out[f"g{i}.{step}"] = g
        p.grad = g.clone()
    out[f"norm.{step}"] = torch.nn.utils.clip_grad_norm_(params, 1.0).reshape(1)
    opt.step()
    sched.step()
    for i, p in enumerate(params):
        out[f"p{i}.{step}"] = p.detach().clone()

dummy = [torch.zeros(1, requires_grad=True)]
for kind, make in (("linear", lambda o: get_linear_schedule_with_warmup(o, WARMUP, STEPS)),
                   ("cosine", lambda o: get_cosine_schedule_with_warmup(o, WARMUP, STEPS)),
                   ("constant", lambda o: get_constant_schedule_with_warmup(o, WARMUP))):
    o = torch.optim.SGD(dummy, lr=1.0)
    s = make(o)
    lrs = []
    for _ in range(STEPS + 2):
        lrs.append(o.param_groups[0]["lr"])
        o.step()
        s.step()
    out[f"lr.{kind}"] = torch.tensor(lrs, dtype=torch.float64)
save_file(out, sys.argv[1])
emit({"steps": STEPS, "params": len(params), "warmup": WARMUP})
