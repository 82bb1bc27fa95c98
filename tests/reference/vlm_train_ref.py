"""Reference side of the VLM training test (tests/train): a tiny Gemma 3 image+text model with a
small Gemma-style tokenizer, a Flickr8K-format caption set, and transformers + PEFT + bitsandbytes
(QLoRA: NF4, double quantization, float32 compute) replaying the batches our trainer used. Usage:
  vlm_train_ref.py tiny DIR
      DIR/model (config.json, model.safetensors, tokenizer.json: byte-level BPE with Gemma's special
      tokens), DIR/Images/*.png and DIR/captions.txt (name#k<TAB>caption). Prints {"records": n}.
  vlm_train_ref.py replay DIR CONFIG_JSON
      Loads DIR/model 4-bit, adds LoRA (CONFIG_JSON: seed, r, alpha, target regex, lr, wd, warmup,
      steps, and optionally save: modules_to_save), and runs the steps on DIR/batches.safetensors (ids/mask/pos/labels/types.STEP.K and
      pixels.STEP.K), with torch AdamW, the linear schedule and clip_grad_norm_(1.0). Writes
      DIR/replay_weights.safetensors; prints {"losses": [...], "quantized": [module names]}.
"""
import json
import os
import sys

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from common import emit  # noqa: E402

SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>", "<start_of_image>",
            "<end_of_image>", "<image_soft_token>"]
COLORS = {"red": (220, 30, 30), "green": (30, 180, 60), "blue": (40, 60, 220), "yellow": (230, 210, 40)}


def shapes(out, n):
    """Images of a coloured shape on a grey field, and captions that name them."""
    rng = np.random.default_rng(0)
    os.makedirs(os.path.join(out, "Images"), exist_ok=True)
    lines = []
    for i in range(n):
        color = list(COLORS)[i % 4]
        shape = ["circle", "square"][(i // 4) % 2]
        side = ["left", "right"][(i // 8) % 2]
        img = Image.new("RGB", (48, 40), (128, 128, 128))
        d = ImageDraw.Draw(img)
        x0 = 4 if side == "left" else 26
        box = (x0, 10, x0 + 18, 28)
        (d.ellipse if shape == "circle" else d.rectangle)(box, fill=COLORS[color])
        name = f"img{i:03d}.png"
        img.save(os.path.join(out, "Images", name))
        lines.append(f"{name}#0\tA {color} {shape} on the {side} .")
        lines.append(f"{name}#1\tThe {shape} is {color} .")
    with open(os.path.join(out, "captions.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return lines


def tiny(out):
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3TextConfig, SiglipVisionConfig
    lines = shapes(out, 16)
    texts = [l.split("\t")[1] for l in lines] + ["user", "model", "Describe this image."]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts * 4, trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIALS,
                                                           initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIALS])
    ids = {s: tok.token_to_id(s) for s in SPECIALS}
    torch.manual_seed(3)
    # Tower widths are multiples of bitsandbytes' block of 64: its CPU dequantization gives blocks
    # other scales when they are not always (e.g. 32 x 32, and SigLIP's 1152 x 4304 fc2), while the
    # flattened blocks its quant state defines (and its CUDA kernels and ours use) are right.
    vision = SiglipVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                image_size=28, patch_size=7, vision_use_head=False)
    text = Gemma3TextConfig(vocab_size=tok.get_vocab_size(), hidden_size=64, intermediate_size=128,
                            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                            sliding_window=8, layer_types=["sliding_attention", "full_attention"],
                            query_pre_attn_scalar=16, max_position_embeddings=256, pad_token_id=ids["<pad>"],
                            bos_token_id=ids["<bos>"], eos_token_id=ids["<eos>"])
    config = Gemma3Config(text_config=text.to_dict(), vision_config=vision.to_dict(), mm_tokens_per_image=4,
                          boi_token_index=ids["<start_of_image>"], eoi_token_index=ids["<end_of_image>"],
                          image_token_index=ids["<image_soft_token>"])
    config._attn_implementation = "eager"
    model = Gemma3ForConditionalGeneration(config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(os.path.join(out, "model"))
    tok.save(os.path.join(out, "model", "tokenizer.json"))
    emit({"records": len(lines), "vocab": tok.get_vocab_size(), "ids": ids})


def replay(out, cfg):
    from peft import LoraConfig, get_peft_model
    from transformers import BitsAndBytesConfig, Gemma3ForConditionalGeneration, get_linear_schedule_with_warmup
    b = load_file(os.path.join(out, "batches.safetensors"))
    bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                             bnb_4bit_compute_dtype=torch.float32)
    model = Gemma3ForConditionalGeneration.from_pretrained(os.path.join(out, "model"), quantization_config=bnb,
                                                           dtype=torch.float32, attn_implementation="eager")
    quantized = sorted(n for n, m in model.named_modules() if type(m).__name__ == "Linear4bit")
    torch.manual_seed(cfg["seed"])
    peft_model = get_peft_model(model, LoraConfig(r=cfg["r"], lora_alpha=cfg["alpha"], lora_dropout=0.0,
                                                  target_modules=cfg["target"], modules_to_save=cfg.get("save")))
    peft_model.train()
    params = [p for n, p in peft_model.named_parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg["lr"], betas=(0.9, 0.999), eps=1e-8, weight_decay=cfg["wd"])
    sched = get_linear_schedule_with_warmup(opt, cfg["warmup"], cfg["steps"])
    losses = []
    for step in range(cfg["steps"]):
        keys = sorted((k[len("ids."):] for k in b if k.startswith(f"ids.{step}.")), key=lambda k: int(k.split(".")[1]))
        total = sum(int((b[f"labels.{k}"][:, 1:] != -100).sum()) for k in keys)
        loss_sum = 0.0
        for k in keys:
            pixels = b.get(f"pixels.{k}")
            logits = peft_model(input_ids=b[f"ids.{k}"], attention_mask=b[f"mask.{k}"], position_ids=b[f"pos.{k}"],
                                pixel_values=pixels, token_type_ids=b[f"types.{k}"]).logits
            ce = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                                                   b[f"labels.{k}"][:, 1:].reshape(-1), ignore_index=-100,
                                                   reduction="sum")
            (ce / total).backward()
            loss_sum += ce.item()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss_sum / total)
    weights = {n.replace(".modules_to_save.default", "").replace(".default", ""): p.detach().contiguous()
               for n, p in peft_model.named_parameters() if p.requires_grad}
    save_file(weights, os.path.join(out, "replay_weights.safetensors"))
    emit({"losses": losses, "quantized": quantized})


if __name__ == "__main__":
    if sys.argv[1] == "tiny":
        tiny(sys.argv[2])
    elif sys.argv[1] == "replay":
        replay(sys.argv[2], json.loads(sys.argv[3]))
    else:
        raise SystemExit(f"unknown command {sys.argv[1]}")
