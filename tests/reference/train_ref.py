"""Reference side of tests/train. `train_ref.py tb DIR` prints the scalars TensorBoard's
EventAccumulator reads from the event files in DIR as {"tag": [[step, value], ...]}.
Otherwise: torch.optim.AdamW, transformers' schedules (LambdaLR over
get_{linear,cosine,constant}_schedule_with_warmup) and torch.nn.utils.clip_grad_norm_ on the CPU.
Usage: train_ref.py OUT.safetensors
Writes the initial parameters p<i>, the gradients g<i>.<step> fed at each step, and after each step
the parameters p<i>.<step>, plus lr.<kind> (the lr of every step per schedule) and norm.<step>
(the norm clip_grad_norm_ returned). Prints {"steps": S, "params": P}.
"""
import sys

import torch
from safetensors.torch import save_file
from transformers import (get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup,
                          get_linear_schedule_with_warmup)

from common import emit

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
