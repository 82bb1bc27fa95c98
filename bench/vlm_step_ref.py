"""Reference side of bench/image_bench's "step" part: transformers + PEFT + bitsandbytes QLoRA
training steps of a Gemma 3 image+text folder on the CPU (NF4, double quantization, float32
compute, LoRA by a target regex, AdamW), on the batch our side wrote, with the same threads.
Usage: vlm_step_ref.py MODEL_DIR BATCH.safetensors RANK TARGET_REGEX THREADS
BATCH.safetensors holds input_ids, token_type_ids, labels (-100 = no loss) and pixel_values. Prints
{"ready": true, "torch_threads": t, "adapters": n}, then answers each stdin line "step" with
{"s": seconds} of one step (forward with the images, the loss transformers computes from labels,
backward, optimizer).
"""
import json
import os
import sys
import time

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")

import torch  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from transformers import BitsAndBytesConfig, Gemma3ForConditionalGeneration  # noqa: E402

model_dir, batch_file, rank, target, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
torch.set_num_threads(threads)
bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                         bnb_4bit_compute_dtype=torch.float32)
model = Gemma3ForConditionalGeneration.from_pretrained(model_dir, quantization_config=bnb, dtype=torch.float32,
                                                       device_map="cpu", attn_implementation="eager")
model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=target))
adapters = sum(1 for n, _ in model.named_modules() if n.endswith(".lora_A.default"))
model.train()
opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
b = load_file(batch_file)


def step():
    loss = model(input_ids=b["input_ids"], token_type_ids=b["token_type_ids"], pixel_values=b["pixel_values"],
                 labels=b["labels"]).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


step()
print(json.dumps({"ready": True, "torch_threads": torch.get_num_threads(), "adapters": adapters}), flush=True)
for line in sys.stdin:
    if line.strip() == "step":
        start = time.perf_counter()
        step()
        print(json.dumps({"s": time.perf_counter() - start}), flush=True)
