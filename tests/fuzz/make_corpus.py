"""Writes the seed corpora of the fuzz targets (tests/fuzz/corpus/<target>/) with the reference
packages: small valid safetensors and GGUF files of several shapes, and config.json variants.
Run with .venv/bin/python from the repo root; the files are committed."""
import json
import os

import numpy as np
import torch
from gguf import GGUFWriter, GGMLQuantizationType as T
from safetensors.torch import save_file

root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")
for d in ("safetensors_fuzz", "gguf_fuzz", "json_config_fuzz", "tokenizer_json_fuzz", "data_jsonl_fuzz",
          "data_json_array_fuzz", "data_captions_fuzz"):
    os.makedirs(os.path.join(root, d), exist_ok=True)

save_file({"a": torch.arange(4, dtype=torch.float32)}, f"{root}/safetensors_fuzz/one.safetensors")
save_file({"w": torch.zeros(2, 3, dtype=torch.bfloat16), "b": torch.ones(3, dtype=torch.int64),
           "s": torch.tensor(1.5, dtype=torch.float16), "e": torch.zeros(0, 2, dtype=torch.uint8)},
          f"{root}/safetensors_fuzz/mixed.safetensors", metadata={"format": "pt"})

rng = np.random.default_rng(0)
for name, arch in (("gemma3", "gemma3"), ("qwen2", "qwen2")):
    w = GGUFWriter(f"{root}/gguf_fuzz/{name}.gguf", arch=arch)
    w.add_uint32(f"{arch}.block_count", 2)
    w.add_uint32(f"{arch}.context_length", 128)
    w.add_uint32(f"{arch}.embedding_length", 64)
    w.add_uint32(f"{arch}.feed_forward_length", 128)
    w.add_uint32(f"{arch}.attention.head_count", 4)
    w.add_uint32(f"{arch}.attention.head_count_kv", 2)
    w.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", 1e-6)
    w.add_array("tokenizer.ggml.tokens", ["<pad>", "<eos>", "a", "b"])
    w.add_tensor("f32", rng.standard_normal((2, 32)).astype(np.float32))
    q = rng.integers(0, 256, size=(1, 144), dtype=np.uint8)
    q[:, 0:4] = np.array([0, 0x20, 0, 0x20], dtype=np.uint8)
    w.add_tensor("q4_k", q, raw_dtype=T.Q4_K)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

configs = {
    "qwen2": {"model_type": "qwen2", "hidden_size": 64, "num_key_value_heads": None},
    "gemma3": {"model_type": "gemma3", "text_config": {"hidden_size": 640, "rope_scaling": {"rope_type": "linear", "factor": 8.0}},
               "vision_config": {"image_size": [896, 896]}},
    "gemma2": {"model_type": "gemma2", "layer_types": ["sliding_attention", "full_attention"], "num_hidden_layers": 2},
    "qwen3": {"model_type": "qwen3", "rope_scaling": {"type": "yarn", "factor": 4.0}, "use_sliding_window": True},
}
for name, config in configs.items():
    with open(f"{root}/json_config_fuzz/{name}.json", "w") as f:
        json.dump(config, f)


# tokenizer.json seeds: a byte-level BPE with the Qwen split regex, NFC and added tokens, and a
# SentencePiece-style BPE with byte fallback; each with a text to encode after a NUL byte.
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from tokenizers import AddedToken

byte_level = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate("abcdefghĠ")} | {"ab": 9, "Ġa": 10},
                                  merges=[("a", "b"), ("Ġ", "a")]))
byte_level.normalizer = normalizers.NFC()
byte_level.pre_tokenizer = pre_tokenizers.Sequence([
    pre_tokenizers.Split(Regex(r"(?i:'s|'t)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"),
                         behavior="isolated"),
    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
byte_level.decoder = decoders.ByteLevel()
byte_level.add_special_tokens([AddedToken("<|im_start|>", normalized=False, special=True)])
with open(f"{root}/tokenizer_json_fuzz/byte_level.json", "wb") as f:
    f.write(byte_level.to_str().encode() + b"\0ab a<|im_start|>ba 's")

spm = Tokenizer(models.BPE(vocab={"<unk>": 0, "<0x41>": 1, "\u2581": 2, "a": 3, "\u2581a": 4, "<bos>": 5},
                           merges=[("\u2581", "a")], unk_token="<unk>", byte_fallback=True, fuse_unk=True))
spm.normalizer = normalizers.Replace(" ", "\u2581")
spm.pre_tokenizer = pre_tokenizers.Split(" ", behavior="merged_with_previous")
spm.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
spm.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 5)])
spm.add_special_tokens([AddedToken("<bos>", normalized=False, special=True)])
with open(f"{root}/tokenizer_json_fuzz/sentencepiece.json", "wb") as f:
    f.write(spm.to_str().encode() + b"\0a aA\xc3\xa9 <bos>")


# Data files: one of each format, with a bad record among good ones.
dolly = {"instruction": "What is 2+2?", "context": "", "response": "4", "category": "open_qa"}
chat = {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": [{"type": "image", "image": "a.jpg"},
        {"type": "text", "text": "What is this?"}]}, {"role": "assistant", "content": "A cat."}]}
share = {"conversations": [{"from": "human", "value": "<image>Q"}, {"from": "gpt", "value": "R"}], "image": "b.jpg"}
with open(f"{root}/data_jsonl_fuzz/dolly.jsonl", "w") as f:
    f.write(json.dumps(dolly) + "\n{broken\n" + json.dumps(dolly) + "\n")
with open(f"{root}/data_jsonl_fuzz/mixed.jsonl", "w") as f:
    f.write(json.dumps(chat) + "\n" + json.dumps(share) + "\n" + json.dumps({"text": "t"}) + "\n")
with open(f"{root}/data_json_array_fuzz/alpaca.json", "w") as f:
    f.write(json.dumps({"instruction": "Add", "input": "2 and 3", "output": "5"}) + ",\n"
            + json.dumps({"instruction": "Hi \\\" ] [", "input": "", "output": "Hello"}) + "]")
with open(f"{root}/data_captions_fuzz/Flickr8k.token.txt", "w") as f:
    f.write("1000268201_693b08cb0e.jpg#0\tA child in a pink dress is climbing up stairs .\r\n"
            "1000268201_693b08cb0e.jpg#1\tA girl going into a wooden building .\n"
            "bad line without a tab\n")

# adapter_config.json as PEFT writes it, for the variants the LoRA tests use.
from peft import LoraConfig  # noqa: E402
import tempfile  # noqa: E402
os.makedirs(f"{root}/adapter_config_fuzz", exist_ok=True)
for name, kwargs in {
        "all_linear_rslora": dict(r=4, lora_alpha=8, target_modules="all-linear", use_rslora=True),
        "dora_list": dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], use_dora=True),
        "patterns": dict(r=4, lora_alpha=8, target_modules=["q_proj", "o_proj"], rank_pattern={"o_proj": 2},
                         alpha_pattern={"layers.1.self_attn.q_proj": 3}, modules_to_save=["lm_head"]),
        "regex_layers": dict(r=4, lora_alpha=16, target_modules=r".*\.(q|v)_proj"),
        "layers_to_transform": dict(r=8, lora_alpha=8, target_modules=["gate_proj"], layers_to_transform=[0, 2],
                                    layers_pattern="layers", lora_dropout=0.05, init_lora_weights="gaussian"),
}.items():
    with tempfile.TemporaryDirectory() as tmp:
        LoraConfig(task_type="CAUSAL_LM", **kwargs).save_pretrained(tmp)
        with open(os.path.join(tmp, "adapter_config.json")) as src, \
                open(f"{root}/adapter_config_fuzz/{name}.json", "w") as dst:
            dst.write(src.read())

# sweep_fuzz: two spaces written by hand and the sweep.json of an 8-trial asha sweep of a tiny model.
# run_spec_fuzz: its seeds (defaults.textproto from `llmtrain spec --print-defaults`, a small JSON
# spec and an invalid one) are written by hand, not by this script.
