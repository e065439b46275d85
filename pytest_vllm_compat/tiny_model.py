"""Generate a tiny random-weight causal LM (Mistral or Llama shape) with a byte-level BPE tokenizer.

No hub access: the config is built in code, the tokenizer is trained on a small built-in corpus,
weights are random (seeded). This file is also run as a plain script by a vLLM environment's own
interpreter (which has torch/transformers/tokenizers), so it imports nothing from this package and
only the standard library at module level:

    <env-python> tiny_model.py --arch mistral --output DIR [--no-head-dim]

``--no-head-dim`` removes ``head_dim`` from config.json and keeps ``sliding_window: null``: the
Mistral config shape that crashed vLLM < 0.9 with transformers >= 4.52 (vllm#18573).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

HIDDEN = 256
LAYERS = 2
HEADS = 4
KV_HEADS = 2
INTERMEDIATE = 512
VOCAB_TARGET = 320
MAX_POSITIONS = 4096
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'user' %}[INST] {{ message['content'] }} [/INST]"
    "{% elif message['role'] == 'system' %}{{ message['content'] }}\n"
    "{% else %}{{ message['content'] }}{{ eos_token }}{% endif %}{% endfor %}"
)
CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "vLLM serves large language models with paged attention.",
    '{"name": "value", "count": 12, "ok": true, "items": [1, 2, 3]}',
    "Hello, world! How are you today? I am fine, thank you.",
    "0123456789 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ",
    "def main():\n    return {'answer': 42}\n",
    "yes no maybe red green blue alpha beta gamma",
]
SPECIAL = ["<unk>", "<s>", "</s>"]


def build_tokenizer(out: Path) -> int:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_TARGET, special_tokens=SPECIAL, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="</s>",
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(str(out))
    # Make sure the template is in tokenizer_config.json whatever transformers version wrote it.
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["chat_template"] = CHAT_TEMPLATE
    cfg.setdefault("model_max_length", MAX_POSITIONS)
    cfg_path.write_text(json.dumps(cfg, indent=2))
    return int(tok.get_vocab_size())


def build_model(arch: str, out: Path, vocab_size: int, seed: int) -> None:
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig

    torch.manual_seed(seed)
    common = dict(
        vocab_size=vocab_size, hidden_size=HIDDEN, intermediate_size=INTERMEDIATE,
        num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=KV_HEADS,
        max_position_embeddings=MAX_POSITIONS, bos_token_id=1, eos_token_id=2, pad_token_id=2,
        tie_word_embeddings=False, rms_norm_eps=1e-5,
    )
    if arch == "mistral":
        config = MistralConfig(sliding_window=None, **common)
    elif arch == "llama":
        config = LlamaConfig(**common)
    else:
        raise SystemExit(f"unknown arch {arch!r}: use mistral or llama")
    config.torch_dtype = torch.bfloat16
    model = AutoModelForCausalLM.from_config(config).to(torch.bfloat16)
    model.save_pretrained(str(out), safe_serialization=True)


def fix_config(out: Path, arch: str, head_dim: bool) -> None:
    path = out / "config.json"
    cfg = json.loads(path.read_text())
    cfg.pop("dtype", None)
    cfg["torch_dtype"] = "bfloat16"
    if head_dim:
        cfg["head_dim"] = HIDDEN // HEADS
    else:
        cfg.pop("head_dim", None)
    if arch == "mistral":
        cfg["sliding_window"] = None
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True))


def generate(arch: str, output: str | os.PathLike[str], head_dim: bool = True, seed: int = 0) -> Path:
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    vocab = build_tokenizer(out)
    build_model(arch, out, vocab, seed)
    fix_config(out, arch, head_dim)
    (out / "TINY_MODEL.json").write_text(json.dumps(
        {"arch": arch, "head_dim": head_dim, "seed": seed, "hidden": HIDDEN, "layers": LAYERS,
         "heads": HEADS, "kv_heads": KV_HEADS, "vocab": vocab, "generator": "pytest-vllm-compat"}, indent=2))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="vllm-compat make-tiny-model", description=__doc__.splitlines()[0])
    ap.add_argument("--arch", choices=["mistral", "llama"], required=True)
    ap.add_argument("--output", required=True, help="directory to write (created)")
    ap.add_argument("--no-head-dim", action="store_true", help="omit head_dim from config.json "
                    "(the Mistral config shape of vllm#18573)")
    ap.add_argument("--seed", type=int, default=0)
    ns = ap.parse_args(argv)
    out = generate(ns.arch, ns.output, head_dim=not ns.no_head_dim, seed=ns.seed)
    print(f"tiny {ns.arch} model written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
