"""References for GGUF export (serve_test): transformers' logits of a model folder or of a GGUF
(`from_pretrained(..., gguf_file=...)`), the gguf package's reading of every tensor, and its
quantizers on the values of an f32 export.

  export_ref.py logits MODEL_DIR GGUF_NAME|- IDS_JSON OUT.safetensors
  export_ref.py compare IDS_JSON REF_DIR REF_GGUF|- F32_GGUF [GGUF...]
      transformers' logits of the reference (a folder, or a GGUF in it) and of each exported GGUF
      on the same ids: the worst |difference| / max |reference logit| per file; each file's
      tensors read and dequantized by the gguf package; Q8_0/Q4_0/Q5_0 tensors re-quantized from
      the f32 export's values by gguf, Q4_K/Q6_K by llama.cpp's quantizer (libggml-base); with a
      REF_GGUF, the tensors whose type differs from the reference file's ("mix_differs")
  export_ref.py tokens REF_DIR REF_GGUF|- FILE.gguf TEXT
      AutoTokenizer's ids of TEXT from the reference and from the exported file's vocabulary
  export_ref.py read FILE.gguf
  export_ref.py requant F32.gguf QUANTIZED.gguf
  export_ref.py adapter MODEL_DIR OUT_DIR SEED [RSLORA]  (a random PEFT LoRA adapter, B non-zero)
  export_ref.py lora ADAPTER_DIR FILE.gguf ARCH N_LAYERS
      an adapter GGUF against the PEFT adapter it came from: its metadata, and each lora_A/lora_B
      at the GGUF name gguf's own tensor name map gives (the converter's), values compared in the
      file's type
  export_ref.py tiny FAMILY OUT_DIR [ROPE_FACTOR|"" [QUERY_PRE_ATTN_SCALAR]]     (a tiny random model and a byte-level BPE
                                                      tokenizer; Gemma with head_dim 256 =
                                                      query_pre_attn_scalar, which a GGUF implies)
"""
import json
import os
import sys

import numpy as np
import torch
from gguf import GGUFReader
from gguf.quants import dequantize, quantize
from safetensors.torch import save_file

from common import emit
import gguf_ref


def logits(model_dir, gguf_name, ids_json, out):
    import transformers
    kwargs = dict(dtype=torch.float32, attn_implementation="eager")
    if gguf_name != "-":
        kwargs["gguf_file"] = gguf_name
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)
    model.eval()
    ids = torch.tensor(json.loads(ids_json), dtype=torch.long)
    with torch.no_grad():
        out_logits = model(input_ids=ids).logits.float().contiguous()
    save_file({"logits": out_logits}, out)
    emit({"shape": list(out_logits.shape), "config": {k: v for k, v in model.config.to_dict().items()
                                                      if isinstance(v, (int, float, str, bool)) or v is None}})


def read(path):
    reader = GGUFReader(path)
    tensors = {}
    for t in reader.tensors:
        values = dequantize(t.data, t.tensor_type)
        tensors[t.name] = [t.tensor_type.name, [int(d) for d in reversed(t.shape.tolist())],
                           bool(np.isfinite(values).all()), int(values.size)]
    meta = {}
    for field in reader.fields.values():
        if field.name.startswith("tokenizer.ggml.") and field.name not in ("tokenizer.ggml.model", "tokenizer.ggml.pre"):
            meta[field.name] = len(field.data)
            continue
        if len(field.types) == 1 and field.types[0].name == "STRING":
            meta[field.name] = bytes(field.parts[field.data[0]]).decode("utf-8", "replace")
        elif len(field.data) == 1:
            meta[field.name] = field.parts[field.data[0]].tolist()[0]
    emit({"tensors": tensors, "metadata": meta})


def model_logits(model_dir, gguf_name, ids):
    import transformers
    kwargs = dict(dtype=torch.float32, attn_implementation="eager")
    if gguf_name != "-":
        kwargs["gguf_file"] = gguf_name
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)
    model.eval()
    with torch.no_grad():
        out = model(input_ids=ids).logits.float()
    del model
    return out


def compare(ids_json, ref_dir, ref_gguf, f32_gguf, others):
    ids = torch.tensor(json.loads(ids_json), dtype=torch.long)
    ref = model_logits(ref_dir, ref_gguf, ids)
    scale = ref.abs().max().item()
    f32_tensors = {t.name: t for t in GGUFReader(f32_gguf).tensors}
    # The reference file's type of each tensor (a llama-quantize output such as the real 270M's
    # Q4_K_M): what an export of the same mix must choose.
    ref_types = {}
    if ref_gguf != "-":
        ref_types = {t.name: t.tensor_type.name for t in GGUFReader(os.path.join(ref_dir, ref_gguf)).tensors}
    files = {}
    for path in [f32_gguf] + others:
        reader = GGUFReader(path)
        types, finite, requantized, requant_problems, mix_differs = {}, True, 0, [], []
        for t in reader.tensors:
            types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + 1
            finite = finite and bool(np.isfinite(dequantize(t.data, t.tensor_type)).all())
            if ref_types and ref_types.get(t.name) != t.tensor_type.name:
                mix_differs.append(f"{t.name}: {t.tensor_type.name}, reference {ref_types.get(t.name)}")
            problem = requantize_problem(f32_tensors[t.name], t)
            if problem is not None:
                requantized += 1
                if problem:
                    requant_problems.append(problem)
        got = model_logits(os.path.dirname(path), os.path.basename(path), ids)
        same_argmax = bool((got.argmax(-1) == ref.argmax(-1)).all())
        files[os.path.basename(path)] = {
            "rel": (got - ref).abs().max().item() / scale, "types": types, "finite": finite,
            "tensors": len(reader.tensors), "requantized": requantized, "requant_problems": requant_problems,
            "same_argmax": same_argmax, "mix_differs": mix_differs,
            "architecture": bytes(reader.fields["general.architecture"].parts[-1]).decode()}
    emit({"files": files, "scale": scale})


def requantize_problem(source, t):
    """None when `t` is not a quantized type; else "" when its bytes equal the reference quantizer's
    on the f32 export's values (`source`), or a line naming the tensor. Q8_0, Q4_0, Q5_0: gguf's
    quantize; Q4_K, Q6_K: llama.cpp's (ggml_quantize_chunk of libggml-base, gguf_ref.ggml_library)."""
    name = t.tensor_type.name
    if name not in ("Q8_0", "Q4_0", "Q5_0", "Q4_K", "Q6_K"):
        return None
    values = np.asarray(source.data, dtype=np.float32).reshape(np.asarray(t.data).shape[0], -1)
    if name in ("Q4_K", "Q6_K"):
        lib = gguf_ref.ggml_library()
        if lib is None:
            return f"{t.name}: no libggml-base to quantize {name} with (scripts/build-ggml-reference)"
        want = gguf_ref.ggml_quantize(lib, values, t.tensor_type)
    else:
        want = quantize(values, t.tensor_type)
    return "" if want.tobytes() == np.asarray(t.data).tobytes() else f"{t.name}: {name} bytes differ"


def tokens(ref_dir, ref_gguf, path, text):
    import transformers
    kwargs = {} if ref_gguf == "-" else {"gguf_file": ref_gguf}
    ref = transformers.AutoTokenizer.from_pretrained(ref_dir, **kwargs)
    ours = transformers.AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))
    emit({"ref": ref(text).input_ids, "gguf": ours(text).input_ids})


def requant(f32_path, quantized_path):
    f32 = {t.name: t for t in GGUFReader(f32_path).tensors}
    compared, problems = 0, []
    for t in GGUFReader(quantized_path).tensors:
        problem = requantize_problem(f32[t.name], t)
        if problem is None:
            continue
        compared += 1
        if problem:
            problems.append(problem)
    emit({"compared": compared, "problems": problems})


def adapter(model_dir, out, seed, rslora=False):
    import transformers
    from peft import LoraConfig, get_peft_model
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM",
                                                  use_rslora=rslora))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn_like(p) * 0.05)
    peft_model.save_pretrained(out)
    emit({"adapter": out})


def lora(adapter_dir, path, arch, n_layers):
    import gguf
    from safetensors.torch import load_file
    with open(os.path.join(adapter_dir, "adapter_config.json")) as f:
        config = json.load(f)
    r, alpha = config["r"], config["lora_alpha"]
    # llama.cpp scales by alpha / r: rsLoRA's alpha / sqrt(r) needs alpha * sqrt(r) there.
    want_alpha = alpha * (r ** 0.5) if config.get("use_rslora") else alpha
    reader = GGUFReader(path)
    meta = {}
    for field in reader.fields.values():
        if len(field.types) == 1 and field.types[0].name == "STRING":
            meta[field.name] = bytes(field.parts[field.data[0]]).decode("utf-8", "replace")
        elif len(field.data) == 1:
            meta[field.name] = field.parts[field.data[0]].tolist()[0]
    problems = []
    for key, want in (("general.architecture", arch), ("general.type", "adapter"), ("adapter.type", "lora")):
        if meta.get(key) != want:
            problems.append(f"{key}: {meta.get(key)!r}, want {want!r}")
    if abs(float(meta.get("adapter.lora.alpha", -1)) - want_alpha) > 1e-5 * want_alpha:
        problems.append(f"adapter.lora.alpha: {meta.get('adapter.lora.alpha')}, want {want_alpha}")
    arch_id = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch)
    names = gguf.get_tensor_name_map(arch_id, int(n_layers))
    tensors = {t.name: t for t in reader.tensors}
    compared = 0
    for key, value in load_file(os.path.join(adapter_dir, "adapter_model.safetensors")).items():
        hf = key.replace("base_model.model.", "")
        part = "lora_a" if ".lora_A.weight" in hf else "lora_b"
        hf = hf.replace(".lora_A.weight", "").replace(".lora_B.weight", "")
        base = names.get_name(hf + ".weight", try_suffixes=(".weight",))
        t = tensors.get(f"{base}.{part}")
        if t is None:
            problems.append(f"{key}: no tensor {base}.{part}")
            continue
        got = dequantize(t.data, t.tensor_type).reshape(value.shape)
        want = value.float().numpy()
        if t.tensor_type.name == "F16":
            want = want.astype(np.float16).astype(np.float32)
        elif t.tensor_type.name == "F32":
            pass
        else:
            problems.append(f"{t.name}: type {t.tensor_type.name} not compared")
            continue
        compared += 1
        if got.tobytes() != np.ascontiguousarray(want).tobytes():
            problems.append(f"{t.name}: values differ (max {float(np.abs(got - want).max())})")
    emit({"compared": compared, "tensors": len(tensors), "problems": problems, "alpha": meta.get("adapter.lora.alpha")})


def tiny(family, out, rope_factor, qpas):
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    lines = [f"The {w} of {n} is {n * 3 % 17} and it {v} the {w}s." for n, (w, v) in
             enumerate([("cat", "likes"), ("dog", "sees"), ("bird", "hears"), ("fish", "eats")] * 8)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(lines, trainers.BpeTrainer(vocab_size=320,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    torch.manual_seed(5)
    common = dict(vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=256)
    gemma = dict(common, head_dim=256, query_pre_attn_scalar=256, sliding_window=8)
    if qpas:
        gemma["query_pre_attn_scalar"] = int(qpas)
    if rope_factor:  # as Gemma 3 4B and larger have it on their global layers (every 6th)
        gemma["rope_scaling"] = {"rope_type": "linear", "factor": float(rope_factor)}
        gemma["num_hidden_layers"] = 6
    config = {
        "qwen2": lambda: transformers.Qwen2Config(tie_word_embeddings=False, **common),
        # transformers reads no head_dim from a qwen3 GGUF (it keeps 128): the tiny model has that.
        "qwen3": lambda: transformers.Qwen3Config(head_dim=128, tie_word_embeddings=True, **common),
        "gemma2": lambda: transformers.Gemma2Config(**gemma),
        "gemma3_text": lambda: transformers.Gemma3TextConfig(**gemma),
    }[family]()
    model = transformers.AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(out)
    tok.save(os.path.join(out, "tokenizer.json"))
    emit({"model": out})


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "logits":
        logits(*sys.argv[2:6])
    elif cmd == "compare":
        compare(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6:])
    elif cmd == "tokens":
        tokens(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5])
    elif cmd == "read":
        read(sys.argv[2])
    elif cmd == "requant":
        requant(sys.argv[2], sys.argv[3])
    elif cmd == "tiny":
        tiny(sys.argv[2], sys.argv[3], sys.argv[4] if len(sys.argv) > 4 else "", sys.argv[5] if len(sys.argv) > 5 else "")
    elif cmd == "adapter":
        adapter(sys.argv[2], sys.argv[3], int(sys.argv[4]), len(sys.argv) > 5 and sys.argv[5] == "rslora")
    elif cmd == "lora":
        lora(*sys.argv[2:6])
    else:
        sys.exit(f"unknown command {cmd}")
