"""Reference side of the collator's labels (tests/data): the tokens TRL's SFTTrainer trains on.

  collator_ref.py make OUT_DIR GGUF

Builds records in the four conversation formats llmtrain reads, from real text on this machine,
and hands each file to TRL's own SFT data preparation (SFTTrainer(...).train_dataset, then its
data collator), with the Gemma 3, Qwen2.5 and Qwen3 tokenizers and their real chat templates:

  - Dolly and Alpaca records are prompt/completion pairs: prompt = [the user turn llmtrain makes
    of the record: instruction, and "\\n\\n" + context/input when it is not blank], completion =
    [the assistant turn: response/output]. TRL trains on the completion (completion_only_loss,
    its default for prompt/completion data): every token after the common prefix of the rendered
    prompt (with the generation prompt) and the rendered prompt + completion.
  - "messages" records go in as they are, ShareGPT records through TRL's maybe_convert_to_chatml
    (from/value -> role/content) after mapping the speakers as llmtrain does (human -> user,
    gpt -> assistant; TRL renames the keys only). TRL trains on the assistant tokens
    (assistant_only_loss=True): apply_chat_template(return_assistant_tokens_mask=True) with the
    {% generation %}-marked training template that get_training_chat_template swaps in.

writes into OUT_DIR:
  dolly.jsonl, alpaca.jsonl, messages.jsonl, sharegpt.jsonl   the records, one per line;
  qwen2.5/, qwen3/      the Qwen tokenizers (tokenizer_ref.py's), saved with save_pretrained; the
                        Gemma 3 tokenizer is the one transformers builds from GGUF;
  <tokenizer>.<format>.trl   one JSON line per record: TRL's input_ids and labels (-100 where no
                        loss is taken), or the error TRL raised;
  <tokenizer>.<format>.template   the chat template TRL rendered with.
Prints one JSON line: per tokenizer and format, the records and TRL's trained tokens.
"""
import glob
import gettext
import json
import logging
import os
import random
import sys
import tempfile
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from common import emit  # noqa: E402
import tokenizer_ref  # noqa: E402

N_RECORDS = 150
SPEAKERS = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


def texts(rng):
    """Real text: Debian package descriptions (English, multi-line) and gettext translations
    (many languages and scripts)."""
    descriptions, block = [], []
    with open("/var/lib/dpkg/status", encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith("Description:"):
                block = [line[len("Description:"):].strip()]
            elif line.startswith(" ") and block:
                block.append(line.strip())
            elif block:
                descriptions.append("\n".join(b for b in block if b != "."))
                block = []
    translations = []
    for mo in sorted(glob.glob("/usr/share/locale/*/LC_MESSAGES/*.mo"))[:400]:
        try:
            with open(mo, "rb") as f:
                catalog = gettext.GNUTranslations(f)._catalog
        except Exception:
            continue
        translations.extend(v for k, v in catalog.items() if k and isinstance(v, str) and v.strip())
    pool = sorted(set(descriptions)) + rng.sample(sorted(set(translations)), min(3000, len(set(translations))))
    pool = [t[: rng.randint(20, 400)].strip() for t in pool]
    return [t for t in pool if t]


def make_records(rng):
    pool = texts(rng)

    def text():
        # Stray whitespace around the text (Gemma's template trims it, Qwen's keeps it), sometimes a
        # leading newline (Qwen merges it with the newline after "assistant").
        return rng.choice(["", "", " ", "\n", "\n\n"]) + rng.choice(pool) + rng.choice(["", "", " ", "\n"])

    def reply():
        r = text()
        if rng.random() < 0.15:  # reasoning in the reply, as Qwen3 writes it
            r = f"<think>\n{rng.choice(pool)}\n</think>\n\n{r.strip()}"
        return r

    records = {"dolly": [], "alpaca": [], "messages": [], "sharegpt": []}
    for _ in range(N_RECORDS):
        context = text() if rng.random() < 0.5 else rng.choice(["", " "])
        records["dolly"].append({"instruction": text(), "context": context, "response": reply(),
                                 "category": rng.choice(["open_qa", "summarization", "closed_qa"])})
        records["alpaca"].append({"instruction": text(), "input": text() if rng.random() < 0.5 else "",
                                  "output": reply()})
        turns = []
        if rng.random() < 0.4:
            turns.append(("system", text()))
        for _ in range(rng.randint(1, 3)):
            turns += [("user", text()), ("assistant", reply())]
        records["messages"].append({"messages": [{"role": r, "content": c} for r, c in turns]})
        spelling = rng.choice([{"user": "human", "assistant": "gpt"}, {"user": "user", "assistant": "assistant"}])
        records["sharegpt"].append({"conversations": [{"from": spelling.get(r, r), "value": c} for r, c in turns]})
    return records


def user_turn(instruction, extra):
    """The user turn llmtrain makes of a Dolly or Alpaca record (lib/data/dataset.cpp)."""
    return instruction + "\n\n" + extra if extra.strip() else instruction


def trl_rows(fmt, records):
    """The records in the form TRL's SFTTrainer takes, and its SFTConfig options."""
    from trl.data_utils import maybe_convert_to_chatml
    if fmt in ("dolly", "alpaca"):
        keys = ("instruction", "context", "response") if fmt == "dolly" else ("instruction", "input", "output")
        rows = [{"prompt": [{"role": "user", "content": user_turn(r[keys[0]], r[keys[1]])}],
                 "completion": [{"role": "assistant", "content": r[keys[2]]}]} for r in records]
        return rows, {}  # completion_only_loss: TRL's default for prompt/completion data
    if fmt == "messages":
        return [{"messages": r["messages"]} for r in records], {"assistant_only_loss": True}
    rows = []
    for r in records:
        example = {"conversations": [{"from": SPEAKERS[t["from"]], "value": t["value"]} for t in r["conversations"]]}
        rows.append(maybe_convert_to_chatml(example))
    return rows, {"assistant_only_loss": True}


def trl_labels(tok, rows, options):
    """TRL's SFT data preparation of `rows`: each example's input_ids and labels as its data
    collator hands them to the model (a batch of one, so no padding)."""
    from datasets import Dataset
    from transformers import Qwen2Config, Qwen2ForCausalLM
    from trl import SFTConfig, SFTTrainer
    # The model is never run: SFTTrainer needs one to be built. A tiny one over the vocabulary.
    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tok), hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                                         num_attention_heads=1, num_key_value_heads=1))
    with tempfile.TemporaryDirectory() as out:
        args = SFTConfig(output_dir=out, report_to="none", use_cpu=True, save_strategy="no", max_length=None,
                         dataset_num_proc=None, shuffle_dataset=False, **options)
        trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok)
        template = trainer.chat_template or tok.chat_template
        out_rows = []
        for example in trainer.train_dataset:
            batch = trainer.data_collator([example])
            out_rows.append({"ids": batch["input_ids"][0].tolist(), "labels": batch["labels"][0].tolist()})
        assert len(out_rows) == len(rows), (len(out_rows), len(rows))
        return out_rows, template


def main():
    if sys.argv[1] != "make":
        raise SystemExit(f"unknown command {sys.argv[1]}")
    out_dir, gguf = sys.argv[2], sys.argv[3]
    os.makedirs(out_dir, exist_ok=True)
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    import datasets
    datasets.disable_progress_bars()
    import transformers
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()

    rng = random.Random(4321)
    records = make_records(rng)
    for fmt, rs in records.items():
        with open(os.path.join(out_dir, fmt + ".jsonl"), "w", encoding="utf-8") as f:
            for r in rs:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
    tokenizers = {"gemma3": tokenizer_ref.gemma_tokenizer(gguf), "qwen2.5": tokenizer_ref.qwen_tokenizer("2.5"),
                  "qwen3": tokenizer_ref.qwen_tokenizer("3")}
    result = {"records": {fmt: len(rs) for fmt, rs in records.items()}}
    for name, tok in tokenizers.items():
        if name != "gemma3":
            tok.save_pretrained(os.path.join(out_dir, name))
        for fmt, rs in records.items():
            rows, options = trl_rows(fmt, rs)
            labelled, template = trl_labels(tok, rows, options)
            with open(os.path.join(out_dir, f"{name}.{fmt}.trl"), "w", encoding="utf-8") as f:
                for row in labelled:
                    f.write(json.dumps(row) + "\n")
            with open(os.path.join(out_dir, f"{name}.{fmt}.template"), "w", encoding="utf-8") as f:
                f.write(template)
            trained = sum(sum(1 for label in row["labels"] if label != -100) for row in labelled)
            result[f"{name}.{fmt}"] = {
                "rule": "assistant_only_loss" if options else "completion_only_loss",
                "template": "trl training template" if template != tok.chat_template else "the tokenizer's",
                "tokens": sum(len(row["ids"]) for row in labelled), "trained": trained}
    emit(result)


if __name__ == "__main__":
    main()
