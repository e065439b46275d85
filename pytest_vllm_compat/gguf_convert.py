"""Convert a GGUF file into a safetensors model directory that vLLM serves (run as a script, not imported).

    PYTHONPATH=<converter overlay> <vLLM env python> gguf_convert.py MODEL.gguf OUTPUT_DIR

Run by a vLLM environment's interpreter (its torch, numpy, tokenizers and safetensors) with the converter's
own pinned packages (transformers, gguf, accelerate) first on ``PYTHONPATH``, so every release converts with
the same code and serves the same weights, and nothing is installed into the environment under test
(packaged_model.py). transformers dequantizes the GGUF tensors and rebuilds the tokenizer and chat template
from the file's metadata; a model loaded from GGUF is flagged as quantized and refuses ``save_pretrained``,
so its weights are copied into a plain model built from the same config (without ``quantization_config``).
Prints one JSON line: the converter's versions and the model's shape.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main() -> int:
    src, out = Path(sys.argv[1]), Path(sys.argv[2])
    import accelerate
    import gguf
    import torch
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    folder, name = str(src.parent), src.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.bfloat16)
    state = loaded.state_dict()
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    missing, unexpected = model.load_state_dict(state, strict=False)
    # tied embeddings (lm_head = embed_tokens) are the only keys allowed to be absent from the file
    missing = [k for k in missing if not (k == "lm_head.weight" and getattr(config, "tie_word_embeddings", False))]
    if missing or unexpected:
        print(f"weights do not fit the config: missing {missing[:5]}, unexpected {unexpected[:5]}", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    print(json.dumps({
        "converter": {"transformers": transformers.__version__, "gguf": gguf.__version__ if hasattr(gguf, "__version__")
                      else _dist_version("gguf"), "accelerate": accelerate.__version__,
                      "torch": torch.__version__},
        "architecture": (config.architectures or [type(model).__name__])[0],
        "parameters": sum(p.numel() for p in model.parameters()),
        "layers": config.num_hidden_layers, "heads": config.num_attention_heads,
        "kv_heads": getattr(config, "num_key_value_heads", None), "vocab": config.vocab_size,
        "chat_template": bool(getattr(tokenizer, "chat_template", None)),
    }))
    return 0


def _dist_version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


if __name__ == "__main__":
    sys.exit(main())
