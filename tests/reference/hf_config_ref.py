"""transformers' view of config.json files and GGUF metadata. Usage:
  hf_config_ref.py configs DIR [DIR ...]  -> {DIR: AutoConfig.from_pretrained(DIR).to_dict()
                                              or {"__error__": message}}
  hf_config_ref.py gguf FILE.gguf          -> AutoConfig.from_pretrained(dir, gguf_file=name).to_dict()
  hf_config_ref.py peft-targets TYPE [...]  -> {TYPE: sorted PEFT default LoRA targets, or null}
"""
import os
import sys
import warnings

from common import emit


def to_json(config):
    d = config.to_dict()
    return d


def configs(dirs):
    from transformers import AutoConfig
    out = {}
    for d in dirs:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out[d] = to_json(AutoConfig.from_pretrained(d))
        except Exception as e:  # the C++ side checks that both refuse the same configs
            out[d] = {"__error__": f"{type(e).__name__}: {e}"}
    emit(out)


def gguf(path):
    from transformers import AutoConfig
    config = AutoConfig.from_pretrained(os.path.dirname(os.path.abspath(path)),
                                        gguf_file=os.path.basename(path))
    emit(to_json(config))


def peft_targets(types):
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as mapping
    emit({t: sorted(mapping[t]) if t in mapping else None for t in types})


if __name__ == "__main__":
    if sys.argv[1] == "configs":
        configs(sys.argv[2:])
    elif sys.argv[1] == "gguf":
        gguf(sys.argv[2])
    elif sys.argv[1] == "peft-targets":
        peft_targets(sys.argv[2:])
    else:
        raise SystemExit(f"unknown command {sys.argv[1]}")
