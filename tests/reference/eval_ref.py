"""Reference side of the generation-metric tests (tests/eval): rouge_score, sacrebleu and NLTK's
Porter stemmer on predictions and references generated here. Usage:
  eval_ref.py metrics OUT.json
      Writes {"pairs": [{"prediction", "references"}], "rouge": [per pair: r1/r2/rL P, R, F of
      RougeScorer(use_stemmer=True).score_multi], "bleu": [per pair corpus_bleu], "chrf": [...],
      "chunks": [{"begin", "end", "bleu", "bleu_counts", "bleu_totals", "bleu_bp", "chrf"}],
      "corpus": {...}, "tokens13a": [[text, tokenized]], "rouge_tokens": [[text, tokens]],
      "stems": [[word, stem]]} and prints {"pairs": n, "stems": m}.
  eval_ref.py loss_data DIR
      DIR/text.jsonl ({"text"}: 12 real descriptions, short to long) and DIR/dolly.jsonl (8 records).
  eval_ref.py loss GGUF DIR
      transformers (float32, eager) on the GGUF, without and with a random PEFT LoRA adapter it
      writes to DIR/adapter (r 8 on q/k/v/o and the MLP, B random so that it changes the model):
      per record of text.jsonl the summed NLL of every token after the first of
      tokenizer(text) (BOS added as the tokenizer does), and per row of DIR/dolly_ids.json
      ({"ids": [[...]], "labels": [[...]]}: our collator's) the summed NLL of the labels after the
      shift. Prints {"text": {"base": [[nll, n]...], "adapter": [...]}, "dolly": {...}}.
  eval_ref.py choice GGUF DIR
      lm-evaluation-harness (the `hf` backend, float32, batch size 1) on every task file
      DIR/tasks/*.jsonl, after writing DIR/tasks/edge.jsonl (contexts with trailing spaces and
      newlines, an empty context, one that starts with "<bos>", Unicode, long contexts cut
      from the left by a small max_length): for three models, "gemma" (the GGUF saved as an HF
      folder), "gemma_adapter" (with a random PEFT LoRA it writes to DIR/gemma_adapter) and "qwen"
      (a random tiny Qwen2 at DIR/qwen with the real Qwen2.5 tokenizer: no BOS; its
      max_position_embeddings 48 is lm-eval's max_length). Writes DIR/lm_eval.json: per model
      {"tasks": {name: {"acc", "acc_norm", "docs": [[[ll, is_greedy] per choice] per doc]}},
      "requests": [[context, continuation, context_ids, continuation_ids]]} (the pairs lm-eval
      encoded, recorded where it scores them). Prints {"models": [...], "tasks": [...]}.
The texts: English from the machine's Debian package descriptions (/var/lib/dpkg/status), edited
into predictions (words dropped, swapped, replaced, repeated), with Unicode (accents, CJK, emoji,
combining marks, İ, the Kelvin sign, no-break and ideographic spaces), numbers and punctuation
13a treats specially, HTML entities, empty strings and long texts; 1 to 5 references each.
"""
import json
import random
import re
import sys

from nltk.stem.porter import PorterStemmer
from rouge_score import rouge_scorer, tokenizers
import sacrebleu
from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

from common import emit


def description_sentences():
    sentences = []
    with open("/var/lib/dpkg/status", encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith(" ") and len(line.strip()) > 20 and line.strip() != ".":
                sentences.append(line.strip())
    return sentences


UNICODE_BITS = ["café", "naïve", "Ünïcödé", "東京タワー", "日本語のテキスト", "emoji 😀🎉", "e\u0301t\u0301e",
                "İstanbul", "\u212aelvin", "5\u212a", "non\u00a0breaking", "ideographic\u3000space",
                "line\u2028sep", "ſtraße", "ΣΊΣΥΦΟΣ", "x\u0085y", "tab\tand\nnewline", "zero\u200bwidth"]
PUNCT_BITS = ["3.14", "1,000", "a,b", "end.", "x-1", "2-3", "(hi)", "\"quoted\"", "it's", "&amp;lt;", "&quot;x&quot;",
              "<skipped>", "hy-\nphen", "e.g.", "U.S.A.", "...", "$5.00", "50%", "a/b", "{x}", "[y]", "~z", "@home",
              "#tag", "x^2", "back`tick", "pipe|bar", "semi;colon", "q?", "wow!", "3.", ".5", ",", "-"]


def edit(words, rng):
    out = list(words)
    for _ in range(rng.randint(0, 4)):
        if not out:
            break
        op = rng.random()
        i = rng.randrange(len(out))
        if op < 0.3:
            del out[i]
        elif op < 0.5 and len(out) > 1:
            j = rng.randrange(len(out))
            out[i], out[j] = out[j], out[i]
        elif op < 0.7:
            out[i] = rng.choice(words) if words else out[i]
        elif op < 0.85:
            out.insert(i, out[i])
        else:
            out.insert(i, rng.choice(UNICODE_BITS + PUNCT_BITS))
    return out


def make_pairs(n, rng):
    sents = description_sentences()
    pairs = []
    for k in range(n):
        kind = k % 10
        ref_words = rng.choice(sents).split()
        if kind == 0:  # long texts
            ref_words = " ".join(rng.choice(sents) for _ in range(rng.randint(20, 60))).split()
        if kind in (1, 2):  # Unicode and 13a's special cases mixed in
            for _ in range(rng.randint(1, 4)):
                ref_words.insert(rng.randrange(len(ref_words) + 1), rng.choice(UNICODE_BITS + PUNCT_BITS))
        pred_words = edit(ref_words, rng)
        if kind == 3:  # unrelated prediction
            pred_words = rng.choice(sents).split()
        prediction = " ".join(pred_words)
        references = [" ".join(ref_words)]
        for _ in range(rng.randint(0, 4)):
            references.append(" ".join(edit(ref_words, rng)))
        if kind == 4 and k % 20 == 4:
            prediction = ""
        if kind == 5 and k % 20 == 5:
            references[0] = ""
        if kind == 6 and k % 30 == 6:
            prediction, references = "", [""]
        if kind == 7:  # the prediction is one of the references, with whitespace around it
            prediction = "  " + rng.choice(references) + "\n"
        if kind == 8:
            prediction = prediction.upper() if rng.random() < 0.5 else prediction + " ."
        pairs.append({"prediction": prediction, "references": references})
    return pairs


def streams(pairs):
    width = max(len(p["references"]) for p in pairs)
    return [[p["references"][i] if i < len(p["references"]) else None for p in pairs] for i in range(width)]


def bleu(pairs):
    b = sacrebleu.corpus_bleu([p["prediction"] for p in pairs], streams(pairs))
    return b


def chrf(pairs):
    return sacrebleu.corpus_chrf([p["prediction"] for p in pairs], streams(pairs)).score


def metrics(out):
    rng = random.Random(16)
    pairs = make_pairs(600, rng)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    rouge = []
    for p in pairs:
        s = scorer.score_multi(p["references"], p["prediction"])
        rouge.append({k: [s[k].precision, s[k].recall, s[k].fmeasure] for k in ("rouge1", "rouge2", "rougeL")})
    per_bleu = [bleu([p]).score for p in pairs]
    per_chrf = [chrf([p]) for p in pairs]
    chunks = []
    for begin in range(0, len(pairs), 10):
        part = pairs[begin:begin + 10]
        b = bleu(part)
        chunks.append({"begin": begin, "end": begin + len(part), "bleu": b.score, "bleu_counts": b.counts,
                       "bleu_totals": b.totals, "bleu_bp": b.bp, "bleu_sys_len": b.sys_len,
                       "bleu_ref_len": b.ref_len, "chrf": chrf(part)})
    whole = bleu(pairs)
    corpus = {"bleu": whole.score, "bleu_counts": whole.counts, "bleu_totals": whole.totals,
              "bleu_sys_len": whole.sys_len, "bleu_ref_len": whole.ref_len, "chrf": chrf(pairs)}
    texts = [p["prediction"] for p in pairs] + [r for p in pairs for r in p["references"]]
    texts += UNICODE_BITS + PUNCT_BITS
    tok13a = Tokenizer13a()
    tokens13a = [[t.rstrip(), tok13a(t.rstrip())] for t in texts]
    rouge_tok = tokenizers.DefaultTokenizer(use_stemmer=True)
    rouge_tokens = [[t, rouge_tok.tokenize(t)] for t in texts]
    # The stemmer on every distinct word of the descriptions, as rouge_score's tokenizer cuts them.
    stemmer = PorterStemmer()
    words = set()
    for s in description_sentences():
        words.update(w for w in re.split(r"[^a-z0-9]+", s.lower()) if w)
    words.update(["sky", "skies", "dying", "lying", "tying", "news", "innings", "outings", "cannings", "howe",
                  "proceed", "exceed", "succeed", "ties", "died", "cried", "agreed", "feed", "hopping", "hoping",
                  "filing", "falling", "fizzed", "rationally", "formally", "hopefully", "analogi", "apologi",
                  "yelling", "sayying", "toy", "fly", "by", "happy", "generalization", "electricity",
                  "controll", "roll", "triplicate", "conformabli", "radicalli", "differentli", "vileli"])
    stems = [[w, stemmer.stem(w)] for w in sorted(words)]
    with open(out, "w", encoding="utf-8") as f:
        json.dump({"pairs": pairs, "rouge": rouge, "bleu": per_bleu, "chrf": per_chrf, "chunks": chunks,
                   "corpus": corpus, "tokens13a": tokens13a, "rouge_tokens": rouge_tokens, "stems": stems,
                   "exact": [p["prediction"].strip() in [r.strip() for r in p["references"]] for p in pairs]},
                  f, ensure_ascii=False)
    emit({"pairs": len(pairs), "stems": len(stems)})


def loss_data(out):
    import os
    os.makedirs(out, exist_ok=True)
    sents = description_sentences()
    rng = random.Random(7)
    with open(os.path.join(out, "text.jsonl"), "w", encoding="utf-8") as f:
        for k in range(12):
            n = [1, 2, 5, 12][k % 4]
            f.write(json.dumps({"text": " ".join(rng.choice(sents) for _ in range(n))}) + "\n")
    with open(os.path.join(out, "dolly.jsonl"), "w", encoding="utf-8") as f:
        for k in range(8):
            f.write(json.dumps({"instruction": "Summarize: " + rng.choice(sents),
                                "context": rng.choice(sents) if k % 2 else "",
                                "response": " ".join(rng.choice(sents) for _ in range(1 + k % 3)),
                                "category": "summarization"}) + "\n")
    emit({"ok": True})


def loss(gguf, out):
    import os
    os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer
    torch.manual_seed(0)
    folder, name = os.path.dirname(os.path.abspath(gguf)), os.path.basename(gguf)
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32,
                                                 attn_implementation="eager")
    model.eval()
    texts = [json.loads(l)["text"] for l in open(os.path.join(out, "text.jsonl"), encoding="utf-8")]
    rows = json.load(open(os.path.join(out, "dolly_ids.json")))

    def nll(m, ids, labels):
        with torch.no_grad():
            logits = m(input_ids=torch.tensor([ids])).logits[0, :-1].float()
        target = torch.tensor(labels[1:])
        ce = torch.nn.functional.cross_entropy(logits, target, ignore_index=-100, reduction="sum")
        return [ce.item(), int((target != -100).sum())]

    def run(m):
        text = []
        for t in texts:
            ids = tok(t).input_ids
            text.append(nll(m, ids, ids))
        dolly = [nll(m, ids, labels) for ids, labels in zip(rows["ids"], rows["labels"])]
        return text, dolly

    base_text, base_dolly = run(model)
    config = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, init_lora_weights=False,
                        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.02)
    peft_model.eval()
    peft_model.save_pretrained(os.path.join(out, "adapter"))
    adapter_text, adapter_dolly = run(peft_model)
    emit({"text": {"base": base_text, "adapter": adapter_text}, "dolly": {"base": base_dolly, "adapter": adapter_dolly},
          "bos_first": all(tok(t).input_ids[0] == tok.bos_token_id for t in texts)})


def edge_docs():
    sents = description_sentences()
    rng = random.Random(23)
    long_context = " ".join(rng.choice(sents) for _ in range(30)) + "\nQuestion: which word came first?\nAnswer:"
    return [
        {"context": "Question: What is the capital of France?\nAnswer: ", "choices": ["Paris", "Lyon", "Marseille"],
         "gold": 0},
        {"context": "Question: Is water wet?\n", "choices": ["yes", "no"], "gold": 0},
        {"context": "", "choices": ["The cat sat on the mat.", "Mat the on sat cat the."], "gold": 0},
        {"context": "  \n Say hello:\n\n", "choices": ["hello world", "world hello", "hi"], "gold": 1},
        {"context": "<bos>Question: 2 + 2 =", "choices": ["4", "5", "22", "four"], "gold": 0},
        {"context": "Quelle est la capitale de l'Allemagne ?\nRéponse :", "choices": ["Berlin", "Zürich", "東京", "😀"],
         "gold": 0},
        {"context": "Pick a number:\t", "choices": ["3.14", "-1", "(a)", "1,000"], "gold": 2},
        {"context": long_context, "choices": [long_context.split()[0], "zebra", "quantum chromodynamics"], "gold": 0},
        {"context": "Translate to German: good morning ->", "choices": ["Guten Morgen", "Gute Nacht", "Hallo",
                                                                     "Auf Wiedersehen, bis morgen früh"], "gold": 0},
        {"context": "The opposite of hot is", "choices": ["cold", "warm", "very very hot indeed"], "gold": 0},
    ]


def choice(gguf, out):
    import glob
    import os
    os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")
    os.environ["HF_DATASETS_CACHE"] = os.path.join(out, "datasets_cache")
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    os.environ["TQDM_DISABLE"] = "1"
    import logging
    logging.disable(logging.WARNING)  # lm-eval's notes on every task's default aggregation
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config, Qwen2ForCausalLM
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    from tokenizer_ref import qwen_tokenizer

    tasks_dir = os.path.join(out, "tasks")
    with open(os.path.join(tasks_dir, "edge.jsonl"), "w", encoding="utf-8") as f:
        for d in edge_docs():
            f.write(json.dumps(d, ensure_ascii=False) + "\n")
    names = []
    for path in sorted(glob.glob(os.path.join(tasks_dir, "*.jsonl"))):
        name = "llmtrain_" + os.path.basename(path)[:-len(".jsonl")].replace("-", "_")
        names.append(name)
        with open(os.path.join(tasks_dir, name + ".yaml"), "w") as f:
            f.write(f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files: {os.path.abspath(path)}\n"
                    "test_split: train\noutput_type: multiple_choice\ndoc_to_text: context\n"
                    "doc_to_choice: choices\ndoc_to_target: gold\nmetric_list:\n  - metric: acc\n"
                    "  - metric: acc_norm\n")

    torch.manual_seed(0)
    folder, name = os.path.dirname(os.path.abspath(gguf)), os.path.basename(gguf)
    gemma_dir = os.path.join(out, "gemma")
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    # The GGUF was dequantized to float32 on load; save it as a plain float32 folder.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(gemma_dir)
    tok.save_pretrained(gemma_dir)
    config = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, init_lora_weights=False,
                        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.02)
    peft_model.save_pretrained(os.path.join(out, "gemma_adapter"))
    del peft_model, model

    qwen_dir = os.path.join(out, "qwen")
    qtok = qwen_tokenizer()
    qwen = Qwen2ForCausalLM(Qwen2Config(vocab_size=len(qtok), hidden_size=64, intermediate_size=128,
                                        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                        max_position_embeddings=48, tie_word_embeddings=True,
                                        bos_token_id=None, eos_token_id=qtok.eos_token_id))
    with torch.no_grad():
        for p in qwen.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    qwen.save_pretrained(qwen_dir)
    qtok.save_pretrained(qwen_dir)

    recorded = []
    original = HFLM._loglikelihood_tokens

    def record(self, requests, *args, **kwargs):
        for (context, continuation), context_enc, continuation_enc in requests:
            recorded.append([context, continuation, list(context_enc), list(continuation_enc)])
        return original(self, requests, *args, **kwargs)

    HFLM._loglikelihood_tokens = record
    manager = TaskManager(include_path=tasks_dir, include_defaults=False)
    runs = {"gemma": f"pretrained={gemma_dir},dtype=float32",
            "gemma_adapter": f"pretrained={gemma_dir},peft={os.path.join(out, 'gemma_adapter')},dtype=float32",
            "qwen": f"pretrained={qwen_dir},dtype=float32"}
    result = {}
    for key, model_args in runs.items():
        recorded.clear()
        r = lm_eval.simple_evaluate(model="hf", model_args=model_args, device="cpu", batch_size=1, tasks=names,
                                    task_manager=manager, log_samples=True)
        entry = {"tasks": {}, "requests": list(recorded)}
        for task in names:
            samples = sorted(r["samples"][task], key=lambda s: s["doc_id"])
            entry["tasks"][task[len("llmtrain_"):]] = {
                "acc": r["results"][task]["acc,none"], "acc_norm": r["results"][task]["acc_norm,none"],
                "docs": [[[float(c[0]), bool(c[1])] for c in s["filtered_resps"]] for s in samples]}
        result[key] = entry
    with open(os.path.join(out, "lm_eval.json"), "w", encoding="utf-8") as f:
        json.dump(result, f, ensure_ascii=False)
    emit({"models": list(runs), "tasks": names})


if __name__ == "__main__":
    if sys.argv[1] == "metrics":
        metrics(sys.argv[2])
    elif sys.argv[1] == "loss_data":
        loss_data(sys.argv[2])
    elif sys.argv[1] == "loss":
        loss(sys.argv[2], sys.argv[3])
    elif sys.argv[1] == "choice":
        choice(sys.argv[2], sys.argv[3])
    else:
        raise SystemExit(f"unknown command {sys.argv[1]}")
