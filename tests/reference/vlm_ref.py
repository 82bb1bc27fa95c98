"""Gemma 3 image+text reference side: tiny random Gemma3ForConditionalGeneration checkpoints saved
by transformers in each of the three key layouts it loads, and their eager float32 logits,
gradients and greedy generation with an image. Usage:
  vlm_ref.py tiny CASE DIR SEED
      Writes DIR/model (config.json + safetensors in the case's layout), DIR/inputs.safetensors
      (input_ids, attention_mask, position_ids, token_type_ids, pixel_values, loss_weights) and
      DIR/ref.safetensors (logits, image_features, grad.<param>, greedy: up to 16 tokens of
      generate() after the prompt `prompt` with its image `prompt_pixels`), where the loss is
      sum(logits * loss_weights * mask). Prints {"params": n, "images": N, ...}.
  vlm_ref.py check MODEL_DIR INPUTS.safetensors OUT.safetensors
      Logits of MODEL_DIR loaded by Gemma3ForConditionalGeneration.from_pretrained (float32, eager)
      on INPUTS (input_ids, attention_mask, pixel_values, token_type_ids; positions from the mask).
Layouts: "hub" (language_model.model.*, vision_tower.vision_model.*: google/gemma-3-*), "saved"
(what transformers 5.23's save_pretrained writes: vision_tower.* without vision_model.), "memory"
(the in-memory names model.language_model.*, model.vision_tower.*).
"""
import json
import os
import sys

import torch
from safetensors.torch import load_file, save_file

from common import emit

# Each case covers other corners: image and patch sizes, pooling kernels (2 and 1), a sliding
# window shorter than an image, an image token inside or outside the vocabulary, tying, padding
# side, rows with 0, 1 and 2 images, every key layout and a sharded save.
CASES = {
    "w8_in_vocab": dict(
        vision=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                    image_size=56, patch_size=7),
        text=dict(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=16, sliding_window=8,
                  layer_types=["sliding_attention", "full_attention"], query_pre_attn_scalar=16),
        top=dict(mm_tokens_per_image=16, boi_token_index=297, eoi_token_index=298, image_token_index=299,
                 tie_word_embeddings=True),
        images=[1, 2, 0], padding="right", layout="hub", shard=False),
    "oov_left": dict(
        vision=dict(hidden_size=24, intermediate_size=48, num_hidden_layers=3, num_attention_heads=2,
                    image_size=32, patch_size=8, layer_norm_eps=1e-5),
        text=dict(vocab_size=300, hidden_size=48, intermediate_size=96, num_hidden_layers=3,
                  num_attention_heads=4, num_key_value_heads=1, head_dim=16, sliding_window=3,
                  layer_types=["sliding_attention", "full_attention", "sliding_attention"],
                  query_pre_attn_scalar=24),
        top=dict(mm_tokens_per_image=4, boi_token_index=297, eoi_token_index=298, image_token_index=300,
                 tie_word_embeddings=False),
        images=[2, 0, 1], padding="left", layout="saved", shard=True),
    "kernel1_memory": dict(
        vision=dict(hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=2,
                    image_size=28, patch_size=14),
        text=dict(vocab_size=260, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=2, num_key_value_heads=2, head_dim=16, sliding_window=16,
                  layer_types=["full_attention", "sliding_attention"], query_pre_attn_scalar=16),
        top=dict(mm_tokens_per_image=4, boi_token_index=255, eoi_token_index=256, image_token_index=257,
                 tie_word_embeddings=True),
        images=[1, 1], padding="left", layout="memory", shard=False),
}


def build(case, seed):
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3TextConfig, SiglipVisionConfig
    spec = CASES[case]
    torch.manual_seed(seed)
    vision = SiglipVisionConfig(vision_use_head=False, **spec["vision"])
    text = Gemma3TextConfig(max_position_embeddings=512, **spec["text"])
    config = Gemma3Config(text_config=text.to_dict(), vision_config=vision.to_dict(), **spec["top"])
    config._attn_implementation = "eager"
    model = Gemma3ForConditionalGeneration(config).to(torch.float32)
    with torch.no_grad():  # non-trivial norms, biases and projector (it starts at 0)
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model, config


def rename(name, layout):
    """A name as 5.23's save_pretrained writes it, in the given layout."""
    if layout == "saved":
        return name
    if layout == "hub":
        return name.replace("vision_tower.", "vision_tower.vision_model.", 1) if name.startswith("vision_tower.") else name
    # memory
    if name.startswith("language_model.model."):
        return "model.language_model." + name[len("language_model.model."):]
    if name.startswith("language_model.lm_head."):
        return name[len("language_model."):]
    if name.startswith(("vision_tower.", "multi_modal_projector.")):
        return "model." + name
    return name


def save(model, out, layout, shard):
    model.save_pretrained(out, max_shard_size="60KB" if shard else "1GB")
    files = [f for f in os.listdir(out) if f.endswith(".safetensors")]
    mapping = {}
    for f in files:
        tensors = load_file(os.path.join(out, f))
        renamed = {rename(k, layout): v.contiguous() for k, v in tensors.items()}
        save_file(renamed, os.path.join(out, f), metadata={"format": "pt"})
        for k in renamed:
            mapping[k] = f
    index = os.path.join(out, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as fh:
            data = json.load(fh)
        data["weight_map"] = mapping
        with open(index, "w") as fh:
            json.dump(data, fh)
    return sorted(mapping)


def batch(config, spec, gen):
    """Rows with spec["images"] images each: text, then per image boi + soft tokens + eoi, text."""
    m = config.mm_tokens_per_image
    rows = []
    vocab = config.text_config.vocab_size
    text_ids = lambda n: torch.randint(3, min(vocab, 250), (n,), generator=gen).tolist()
    for n in spec["images"]:
        row = [2] + text_ids(3)
        for _ in range(n):
            row += [config.boi_token_index] + [config.image_token_index] * m + [config.eoi_token_index] + text_ids(2)
        rows.append(row + text_ids(3))
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.int64)
    mask = torch.zeros(len(rows), width, dtype=torch.int64)
    for i, r in enumerate(rows):
        if spec["padding"] == "left":
            ids[i, width - len(r):] = torch.tensor(r)
            mask[i, width - len(r):] = 1
        else:
            ids[i, :len(r)] = torch.tensor(r)
            mask[i, :len(r)] = 1
    size = config.vision_config.image_size
    pixels = torch.rand(sum(spec["images"]), 3, size, size, generator=gen) * 2 - 1
    return ids, mask, pixels


def tiny(case, out_dir, seed):
    spec = CASES[case]
    model, config = build(case, seed)
    model_dir = os.path.join(out_dir, "model")
    names = save(model, model_dir, spec["layout"], spec["shard"])
    # transformers itself loads the layout back to the same weights.
    from transformers import Gemma3ForConditionalGeneration
    loaded = Gemma3ForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32)
    reloaded = dict(loaded.named_parameters())
    same = all(torch.equal(p, reloaded[n]) for n, p in model.named_parameters())
    assert same and len(reloaded) == sum(1 for _ in model.named_parameters()), "layout did not reload"
    del loaded, reloaded

    gen = torch.Generator().manual_seed(seed + 1)
    ids, mask, pixels = batch(config, spec, gen)
    token_type_ids = (ids == config.image_token_index).long()
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    loss_weights = torch.randn(ids.shape[0], ids.shape[1], config.text_config.vocab_size, generator=gen)

    model.eval()
    out = model(input_ids=ids, attention_mask=mask, position_ids=position_ids, pixel_values=pixels,
                token_type_ids=token_type_ids)
    logits = out.logits
    loss = (logits * loss_weights * mask[..., None]).sum()
    loss.backward()
    ref = {"logits": logits.detach().contiguous(),
           "image_features": out.image_hidden_states.detach().reshape(-1, config.text_config.hidden_size).contiguous()}
    grads = 0
    for name, p in model.named_parameters():
        if p.grad is not None:
            ref["grad." + name] = p.grad.detach().contiguous()
            grads += 1
    # Greedy generation after a prompt with one image (the first row that has one, unpadded).
    row = next(i for i, n in enumerate(spec["images"]) if n > 0)
    first = sum(spec["images"][:row])
    prompt = ids[row][mask[row].bool()][None]
    prompt_pixels = pixels[first:first + spec["images"][row]]
    with torch.no_grad():
        generated = model.generate(prompt, attention_mask=torch.ones_like(prompt), pixel_values=prompt_pixels,
                                   token_type_ids=(prompt == config.image_token_index).long(),
                                   max_new_tokens=16, do_sample=False)
    ref["greedy"] = generated[0, prompt.shape[1]:].contiguous()
    save_file({"input_ids": ids, "attention_mask": mask, "position_ids": position_ids,
               "token_type_ids": token_type_ids, "pixel_values": pixels.clone(),
               "loss_weights": loss_weights, "prompt": prompt.contiguous(),
               "prompt_pixels": prompt_pixels.clone()},
              os.path.join(out_dir, "inputs.safetensors"))
    save_file(ref, os.path.join(out_dir, "ref.safetensors"))
    eos = model.generation_config.eos_token_id
    emit({"params": sum(1 for _ in model.named_parameters()), "grads": grads, "images": int(pixels.shape[0]),
          "saved_names": names, "loss": loss.item(),
          "eos": [] if eos is None else (eos if isinstance(eos, list) else [eos])})


def check(model_dir, inputs_path, out):
    from transformers import Gemma3ForConditionalGeneration
    model = Gemma3ForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32,
                                                           attn_implementation="eager").eval()
    i = load_file(inputs_path)
    positions = (i["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = model(input_ids=i["input_ids"], attention_mask=i["attention_mask"], position_ids=positions,
                       pixel_values=i["pixel_values"], token_type_ids=i["token_type_ids"]).logits
    save_file({"logits": logits.contiguous()}, out)
    emit({"vocab": logits.shape[-1]})


if __name__ == "__main__":
    if sys.argv[1] == "tiny":
        tiny(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    elif sys.argv[1] == "check":
        check(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        raise SystemExit(f"unknown command {sys.argv[1]}")
