"""LoRA reference side: PEFT 0.21 (and bitsandbytes for QLoRA) on the tiny random models of
model_ref.py. Usage:
  lora_ref.py make DIR
      For each case (family × adapter variant) writes DIR/<case>/model (save_pretrained, float32),
      DIR/<case>/peft (PeftModel.save_pretrained), DIR/<case>/ref.safetensors with input_ids,
      attention_mask, loss_weights, logits and grad.<saved key> of one backward of
      sum(logits · loss_weights · mask), and init.<saved key> of the first adapted module as
      get_peft_model drew it after torch.manual_seed(SEED). Prints {"cases": [...]} with each
      case's config.
  lora_ref.py qlora DIR
      The same through transformers' load_in_4bit (NF4, double quantization, float32 compute):
      DIR/<case>/ref.safetensors, DIR/<case>/peft, and DIR/<case>/bnb_model (the 4-bit model as
      save_pretrained writes it).
  lora_ref.py requant DIR CASE
      The re-quantization error of a merged QLoRA model: for each module the case's PEFT adapter
      adapts, bitsandbytes quantizes its merged float32 weight from DIR/<case>/merged_f32
      (written by our library) to NF4 (blocks of 64, double quantization) and dequantizes it;
      prints {"projections": N, "requant_rel_error": ‖dequant(quant(W)) − W‖ / ‖W‖ over all}.
  lora_ref.py generate DIR CASE IDS N
      Greedy generate (N new tokens at most) of PeftModel over transformers' load_in_4bit model
      (NF4, double quantization, float32 compute) with DIR/<case>/peft, from the prompt IDS (a JSON
      list); prints {"ids": [new ids]}.
  lora_ref.py check DIR CASE...
      Loads DIR/<case>/model with the adapter DIR/<case>/ours (written by our library) through
      PeftModel.from_pretrained, and the model folders DIR/<case>/ours_model and ours_int8 if
      present through from_pretrained; writes their logits (and whether transformers loaded them
      4-bit / 8-bit) to DIR/<case>/check.safetensors.
"""
import os
import sys

# bitsandbytes wraps its torch dequantization path in torch.compile; eager computes the same and
# needs no compiler at test time.
os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")

import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from common import emit  # noqa: E402
from model_ref import TINY, B, T  # noqa: E402

SEED = 1234

# Adapter variants per family, between them covering every option we reproduce.
CASES = {
    "gemma2_lora": ("gemma2", dict(r=4, lora_alpha=8, target_modules="all-linear", use_rslora=True)),
    "gemma2_dora": ("gemma2", dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                                   use_dora=True)),
    "gemma3_text_lora": ("gemma3_text", dict(
        r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "o_proj", "up_proj"],
        rank_pattern={"o_proj": 2}, alpha_pattern={"layers.1.self_attn.q_proj": 3},
        modules_to_save=["lm_head"])),
    "gemma3_text_dora": ("gemma3_text", dict(r=2, lora_alpha=4, target_modules="all-linear", use_dora=True)),
    "qwen2_lora": ("qwen2", dict(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj", "gate_proj"],
                                 layers_to_transform=[0, 2])),
    "qwen2_dora": ("qwen2", dict(r=4, lora_alpha=8, target_modules=r".*\.(q|k|v)_proj", use_dora=True)),
    "qwen3_lora": ("qwen3", dict(r=8, lora_alpha=8, target_modules="all-linear",
                                 modules_to_save=["embed_tokens"])),
    "qwen3_dora": ("qwen3", dict(r=4, lora_alpha=8, target_modules=["gate_proj", "up_proj"], use_dora=True)),
}

QLORA_CASES = {
    "qwen2_qlora": ("qwen2", dict(r=4, lora_alpha=8, target_modules="all-linear")),
    "gemma3_text_qlora": ("gemma3_text", dict(r=4, lora_alpha=8, target_modules="all-linear")),
    "gemma2_qdora": ("gemma2", dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"],
                                    use_dora=True)),
    "qwen3_qdora": ("qwen3", dict(r=4, lora_alpha=8, target_modules=["k_proj", "o_proj", "down_proj"],
                                  use_dora=True, use_rslora=True)),
}


def build_model(family, seed, qlora=False):
    import transformers
    spec = TINY[family]
    torch.manual_seed(seed)
    config_cls = getattr(transformers, spec["cls"] + ("TextConfig" if family == "gemma3_text" else "Config"))
    model_cls = getattr(transformers, spec["cls"] + "ForCausalLM")
    overrides = {}
    if qlora:
        # Every in_features a multiple of the blocksize: on other widths bitsandbytes 0.50.2's AVX512
        # dequantize_4bit reads block scales per row (docs/bitsandbytes-cpu.md), and its 4-bit
        # Linear computes with those wrong weights.
        overrides["intermediate_size"] = 128
        if family == "qwen3":
            overrides["hidden_size"] = 64
    config = config_cls(**{**spec["config"], **overrides})
    config._attn_implementation = "eager"
    model = model_cls(config).to(torch.float32)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model, model_cls, config


def plain_cpu_4bit(model):
    """bitsandbytes' Linear4bit repacks its weight for an AVX512-BF16 kernel on CPUs that have one,
    in eval mode without grad, and that kernel needs out_features divisible by 32 (tiny models'
    are not). Keep every CPU on the same exact path: dequantize, then matmul."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
    return model


def inputs(config, padding, seed):
    gen = torch.Generator().manual_seed(seed + 1)
    input_ids = torch.randint(0, config.vocab_size, (B, T), generator=gen)
    mask = torch.ones(B, T, dtype=torch.int64)
    if padding == "left":
        mask[1, :3] = 0
    else:
        mask[1, -3:] = 0
    input_ids = torch.where(mask.bool(), input_ids, torch.zeros_like(input_ids))
    loss_weights = torch.randn(B, T, config.vocab_size, generator=gen)
    return input_ids, mask, loss_weights


def positions(mask):
    """The position ids both sides use: cumsum(mask) − 1 clamped at 0 (padding included)."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


def saved_key(name):
    """PeftModel parameter name → the key save_pretrained writes."""
    name = name.replace(".lora_A.default.", ".lora_A.").replace(".lora_B.default.", ".lora_B.")
    name = name.replace(".lora_magnitude_vector.default.weight", ".lora_magnitude_vector")
    name = name.replace(".modules_to_save.default.", ".")
    return name


def perturb_and_run(peft_model, input_ids, mask, loss_weights):
    """B (and the magnitude) away from their init, so the adapter changes the output; then one
    forward and backward."""
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name or "lora_magnitude_vector" in name:
                p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    peft_model.train()  # dropout is 0; keeps bitsandbytes on its exact (non-packed) CPU path
    logits = peft_model(input_ids=input_ids, attention_mask=mask, position_ids=positions(mask)).logits
    loss = (logits.float() * loss_weights * mask[..., None]).sum()
    loss.backward()
    ref = {"logits": logits.detach().float().contiguous(), "loss": loss.detach().reshape(1)}
    for name, p in peft_model.named_parameters():
        if p.requires_grad and p.grad is not None:
            ref["grad." + saved_key(name)] = p.grad.detach().float().contiguous()
    return ref


def make(out_dir, qlora):
    from peft import LoraConfig, get_peft_model
    from transformers import BitsAndBytesConfig
    cases = QLORA_CASES if qlora else CASES
    summary = []
    for case, (family, kwargs) in cases.items():
        case_dir = os.path.join(out_dir, case)
        os.makedirs(case_dir, exist_ok=True)
        model, model_cls, config = build_model(family, 42, qlora)
        model_dir = os.path.join(case_dir, "model")
        model.save_pretrained(model_dir)
        input_ids, mask, loss_weights = inputs(config, TINY[family]["padding"], 42)
        if qlora:
            bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                     bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.float32)
            model = plain_cpu_4bit(model_cls.from_pretrained(model_dir, quantization_config=bnb, dtype=torch.float32,
                                                             device_map="cpu", attn_implementation="eager"))
            model.save_pretrained(os.path.join(case_dir, "bnb_model"))
        model.eval()
        torch.manual_seed(SEED)
        peft_model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", **kwargs))
        init = {}
        for name, p in peft_model.named_parameters():
            if ".lora_A." in name or ".lora_B." in name:
                key = saved_key(name)
                module = key.rsplit(".lora_", 1)[0]
                if not init or all(k.startswith("init." + module + ".") for k in init):
                    init["init." + key] = p.detach().clone().contiguous()
        ref = perturb_and_run(peft_model, input_ids, mask, loss_weights)
        ref.update(init)
        ref.update({"input_ids": input_ids, "attention_mask": mask, "loss_weights": loss_weights})
        peft_model.save_pretrained(os.path.join(case_dir, "peft"))
        save_file(ref, os.path.join(case_dir, "ref.safetensors"))
        adapted = sorted({saved_key(n).rsplit(".lora_", 1)[0] for n, _ in peft_model.named_parameters()
                          if ".lora_A." in n})
        summary.append({"case": case, "family": family, "seed": SEED, "adapted": adapted,
                        "config": {k: v for k, v in kwargs.items()}})
    emit({"cases": summary})


def check(out_dir, cases):
    from peft import PeftModel
    import transformers
    for case in cases:
        case_dir = os.path.join(out_dir, case)
        family = (CASES.get(case) or QLORA_CASES[case])[0]
        model_cls = getattr(transformers, TINY[family]["cls"] + "ForCausalLM")
        ref = load_file(os.path.join(case_dir, "ref.safetensors"))
        out = {}
        if os.path.isdir(os.path.join(case_dir, "ours")):
            model = model_cls.from_pretrained(os.path.join(case_dir, "model"), dtype=torch.float32,
                                              attn_implementation="eager")
            peft_model = PeftModel.from_pretrained(model, os.path.join(case_dir, "ours"))
            peft_model.eval()
            with torch.no_grad():
                out["adapter_logits"] = peft_model(
                    input_ids=ref["input_ids"], attention_mask=ref["attention_mask"],
                    position_ids=positions(ref["attention_mask"])).logits.float().contiguous()
        for sub, tag in (("ours_model", "model"), ("ours_int8", "int8")):
            if not os.path.isdir(os.path.join(case_dir, sub)):
                continue
            model = model_cls.from_pretrained(os.path.join(case_dir, sub), dtype=torch.float32,
                                              device_map="cpu", attn_implementation="eager")
            model.train()  # bitsandbytes' exact CPU path for 4-bit models
            with torch.no_grad():
                out[tag + "_logits"] = model(
                    input_ids=ref["input_ids"], attention_mask=ref["attention_mask"],
                    position_ids=positions(ref["attention_mask"])).logits.float().contiguous()
            out[tag + "_is_4bit"] = torch.tensor([int(getattr(model, "is_loaded_in_4bit", False))])
            out[tag + "_is_8bit"] = torch.tensor([int(getattr(model, "is_loaded_in_8bit", False))])
        save_file(out, os.path.join(case_dir, "check.safetensors"))
    emit({"checked": cases})


def requant(out_dir, case):
    import bitsandbytes.functional as F
    case_dir = os.path.join(out_dir, case)
    adapter = load_file(os.path.join(case_dir, "peft", "adapter_model.safetensors"))
    modules = sorted({k[len("base_model.model."):].rsplit(".lora_A", 1)[0] for k in adapter if ".lora_A" in k})
    merged = load_file(os.path.join(case_dir, "merged_f32", "model.safetensors"))
    err2 = ref2 = 0.0
    for module in modules:
        w = merged[module + ".weight"].to(torch.float32)
        packed, state = F.quantize_4bit(w, blocksize=64, compress_statistics=True, quant_type="nf4")
        back = F.dequantize_4bit(packed, state).to(torch.float64)
        err2 += (back - w.to(torch.float64)).pow(2).sum().item()
        ref2 += w.to(torch.float64).pow(2).sum().item()
    emit({"projections": len(modules), "requant_rel_error": (err2 / ref2) ** 0.5})


def generate(out_dir, case, ids_json, n):
    import json
    import transformers
    from peft import PeftModel
    from transformers import BitsAndBytesConfig
    family = QLORA_CASES[case][0]
    case_dir = os.path.join(out_dir, case)
    model_cls = getattr(transformers, TINY[family]["cls"] + "ForCausalLM")
    bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                             bnb_4bit_compute_dtype=torch.float32)
    model = model_cls.from_pretrained(os.path.join(case_dir, "model"), quantization_config=bnb, dtype=torch.float32,
                                      device_map="cpu", attn_implementation="eager")
    model.train()  # bitsandbytes' exact CPU path for 4-bit models (as in make)
    peft_model = plain_cpu_4bit(PeftModel.from_pretrained(model, os.path.join(case_dir, "peft")))
    for module in peft_model.modules():  # no dropout while generating
        if isinstance(module, torch.nn.Dropout):
            module.eval()
    prompt = torch.tensor([json.loads(ids_json)], dtype=torch.int64)
    with torch.no_grad():
        out = peft_model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                                  max_new_tokens=int(n))
    emit({"ids": out[0, prompt.shape[1]:].tolist()})


def main():
    mode = sys.argv[1]
    if mode == "make":
        make(sys.argv[2], qlora=False)
    elif mode == "qlora":
        make(sys.argv[2], qlora=True)
    elif mode == "generate":
        generate(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5])
    elif mode == "requant":
        requant(sys.argv[2], sys.argv[3])
    elif mode == "check":
        check(sys.argv[2], sys.argv[3:])
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
