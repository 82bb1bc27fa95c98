"""Does llama.cpp decode our f16 export as we do? Run with .venv-llama/bin/python (scripts/build-llama-cpp):

  .venv-llama/bin/python bench/llama_cpp_check.py [--tokens 32] [--threads 2] [--lora]

Exports the real Gemma 3 270M (the PyPI GGUF) with `llmtrain export --type f16`, renders 20 chat
prompts with `llmtrain tokenize --chat` (so both sides start from the same ids), then takes each
prompt's greedy continuation from `llmtrain generate --input-ids` on the export and from llama.cpp
(llama-cpp-python) on the same file, stopping at the first end token or after --tokens. Prints,
per prompt, whether the ids are equal and where they first differ, then the totals. A bench, not a
test: llama.cpp computes f16 weights against activations it rounds to f16, so a near tie can go
the other way.

--lora checks `llmtrain export --adapter-only` the same way: a random PEFT adapter (r 8 on every
attention and MLP projection, made here with peft on transformers' load of the same GGUF) is
exported as a LoRA GGUF, loaded by llama.cpp beside the f16 export (its --lora), and its greedy
continuations are compared with `llmtrain generate --adapter` on the f16 export. It also counts
the prompts whose continuation the adapter changes (ours with and without it), so that an
adapter llama.cpp ignored could not pass unseen.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import llama_cpp
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLI = os.path.join(ROOT, "build", "bin", "llmtrain")
SOURCE = os.path.join(ROOT, ".venv", "models", "gemma-3-270m-q4_k_m.gguf")
QUESTIONS = [
    "What is the capital of France?", "Write a haiku about the sea.", "Explain in two sentences why the sky is blue.",
    "2 + 2 =", "List three prime numbers.", "Translate 'good morning' into German.", "What does the bash package do?",
    "Summarize: The fox runs into the forest, where it meets a rabbit, and they talk until night falls.", "Hi",
    "Name a colour.", "Why do cats purr?", "Give me a word that rhymes with 'light'.", "What is a compiler?",
    "Write one sentence about autumn.", "How many legs does a spider have?", "Suggest a name for a small bakery.",
    "What is the boiling point of water at sea level?", "Describe a bicycle to a child.",
    "Which planet is closest to the sun?", "Tell me a fun fact about octopuses.",
]


def run(args, stdin=None):
    return subprocess.run(args, input=stdin, capture_output=True, text=True, check=True).stdout


def make_adapter(out):
    """A random LoRA adapter for the 270M in PEFT's format: r 8, alpha 16, every projection;
    lora_B scaled to 0.05 of PEFT's random init so that the model still writes text."""
    import peft
    import torch
    import transformers
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_pretrained(os.path.dirname(SOURCE), gguf_file=os.path.basename(SOURCE),
                                                              torch_dtype=torch.float32)
    config = peft.LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, init_lora_weights=False, task_type="CAUSAL_LM",
                             target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    model = peft.get_peft_model(model, config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.mul_(0.05)
    model.save_pretrained(out)
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--lora", action="store_true")
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        export = os.path.join(tmp, "gemma-3-270m-f16.gguf")
        print(run([CLI, "export", "--model", SOURCE, "--type", "f16", "--output", export]).strip())
        adapter_args, lora = [], {}
        if opts.lora:
            adapter = make_adapter(os.path.join(tmp, "adapter"))
            lora_gguf = os.path.join(tmp, "lora.gguf")
            print(run([CLI, "export", "--model", SOURCE, "--adapter", adapter, "--adapter-only", "--type", "f16",
                       "--output", lora_gguf]).strip())
            adapter_args, lora = ["--adapter", adapter], {"lora_path": lora_gguf}
        lines = "".join(json.dumps([{"role": "user", "content": q}]) + "\n" for q in QUESTIONS)
        prompts = [json.loads(line) for line in run([CLI, "tokenize", "--tokenizer", export, "--chat",
                                                      "--add-generation-prompt"], lines).splitlines()]
        # logits_all: llama-cpp-python 0.3.36 fills Llama.scores only with it. The last position's
        # row is read from that array: eval_logits copies every position's row to Python lists.
        llm = llama_cpp.Llama(model_path=export, n_ctx=512, n_threads=opts.threads, n_threads_batch=opts.threads,
                              logits_all=True, verbose=False, **lora)
        vocab = llama_cpp.llama_model_get_vocab(llm.model)
        equal = changed = 0
        for question, ids in zip(QUESTIONS, prompts):
            generate = [CLI, "generate", "--model", export, "--input-ids", json.dumps(ids), "--max-new-tokens",
                        str(opts.tokens), "--json"]
            ours = json.loads(run(generate + adapter_args))["ids"]
            if opts.lora:
                changed += json.loads(run(generate))["ids"] != ours
            llm.reset()
            llm.eval(ids)
            theirs = []
            while len(theirs) < opts.tokens:
                token = int(np.argmax(llm.scores[llm.n_tokens - 1]))  # the last position's logits
                theirs.append(token)
                if llama_cpp.llama_vocab_is_eog(vocab, token):
                    break
                llm.eval([token])
            first = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), None)
            if first is None and len(ours) != len(theirs):
                first = min(len(ours), len(theirs))
            equal += first is None
            print(f"{'equal ' if first is None else 'DIFFER'} {len(ours):2d} tokens"
                  f"{'' if first is None else f', first difference at token {first}'}: {question}")
        what = "our f16 export with our --adapter-only LoRA GGUF" if opts.lora else "our f16 export"
        print(f"llama_cpp_check: llama.cpp {llama_cpp.__version__} on {what}, {opts.threads} threads: "
              f"{equal} of {len(QUESTIONS)} greedy continuations equal ours")
        if opts.lora:
            print(f"llama_cpp_check: the adapter changes {changed} of {len(QUESTIONS)} of our continuations")


if __name__ == "__main__":
    sys.exit(main())
