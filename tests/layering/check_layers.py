"""Fails on any #include that runs up llmtrain's layers (shared/design/ARCHITECTURE.md): a
component may include only itself and the components listed before it.

    check_layers.py ROOT        scans ROOT/lib and ROOT/include/llmtrain; exit 1 on a violation, or
                                on a public header that include/llmtrain/llmtrain.h leaves out
    check_layers.py --self-test plants one violation in a temporary tree and expects it found
"""
import os
import re
import sys
import tempfile

ORDER = ["core", "io", "kernels", "tokenizer", "model", "quant", "lora", "data", "eval", "dist", "train",
         "serve", "spec"]
RANK = {c: i for i, c in enumerate(ORDER)}
# "llmtrain/model/decoder.h" (public) or "model/decoder_state.h" (internal, lib/-relative).
INCLUDE = re.compile(r'\s*#\s*include\s+"(?:llmtrain/)?([a-z_]+)/')
SOURCES = (".h", ".cpp", ".cu", ".cuh")


def violations(root):
    found = []
    for top in ("lib", os.path.join("include", "llmtrain")):
        base = os.path.join(root, top)
        for folder, _, files in os.walk(base):
            rel = os.path.relpath(folder, base)
            me = rel.split(os.sep)[0]
            if me not in RANK:
                continue
            for name in sorted(files):
                if not name.endswith(SOURCES):
                    continue
                path = os.path.join(folder, name)
                with open(path, encoding="utf-8", errors="replace") as f:
                    for number, line in enumerate(f, 1):
                        m = INCLUDE.match(line)
                        if m and m.group(1) in RANK and RANK[m.group(1)] > RANK[me]:
                            found.append(f"{os.path.relpath(path, root)}:{number}: {me}/ includes {m.group(1)}/ "
                                         f"({m.group(1)} is above {me} in {' < '.join(ORDER)})")
    return found


def umbrella_gaps(root):
    """Public headers that include/llmtrain/llmtrain.h does not include."""
    base = os.path.join(root, "include", "llmtrain")
    umbrella = os.path.join(base, "llmtrain.h")
    listed = set(re.findall(r'#include "(llmtrain/[^"]+)"', open(umbrella, encoding="utf-8").read()))
    missing = []
    for folder, _, files in os.walk(base):
        for name in sorted(files):
            rel = os.path.relpath(os.path.join(folder, name), os.path.join(root, "include"))
            if name.endswith(".h") and rel != "llmtrain/llmtrain.h" and rel not in listed:
                missing.append(f"include/llmtrain/llmtrain.h does not include {rel}")
    return missing


def self_test():
    with tempfile.TemporaryDirectory() as root:
        for rel, text in {"lib/model/ok.cpp": '#include "llmtrain/io/gguf.h"\n#include "model/decoder_state.h"\n',
                          "include/llmtrain/model/bad.h": '#pragma once\n#include "llmtrain/quant/quant4.h"\n'}.items():
            os.makedirs(os.path.dirname(os.path.join(root, rel)), exist_ok=True)
            with open(os.path.join(root, rel), "w") as f:
                f.write(text)
        found = violations(root)
        if len(found) != 1 or "model/bad.h:2" not in found[0]:
            print("self-test: expected exactly the planted violation, found:", found)
            return 1
        print("self-test: the planted include of quant/ from model/ was found:", found[0])
        return 0


def main():
    if sys.argv[1:] == ["--self-test"]:
        return self_test()
    root = sys.argv[1]
    found = violations(root) + umbrella_gaps(root)
    for v in found:
        print(v)
    n_files = sum(len([f for f in fs if f.endswith(SOURCES)])
                  for top in ("lib", "include/llmtrain") for _, _, fs in os.walk(os.path.join(root, top)))
    print(f"layering: {len(found)} problem(s) (includes up the layers, public headers missing from "
          f"llmtrain.h) in {n_files} files")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
