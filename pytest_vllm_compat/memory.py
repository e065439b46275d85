"""How much GPU memory a model needs, from its config.json fields, before anything is downloaded.

Weights: the parameter count of a decoder-only transformer with grouped-query attention and a gated MLP
(Llama, Mistral, Qwen2, Gemma, Phi-3, Mixtral-style experts), times the dtype's bytes. KV cache: 2 (K and V)
x layers x KV heads x head_dim x dtype bytes per token. The count matches the published sizes of the models
in ``suites/models-hub.toml`` within 0.1 % (tests/unit/test_memory.py). A model is split over its
tensor-parallel ranks; each GPU also needs room for activations, CUDA graphs and the CUDA context
(``OVERHEAD_GIB``), and vLLM only uses ``--gpu-memory-utilization`` (0.9) of the card.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

GIB = 1024**3
OVERHEAD_GIB = 2.0
GPU_MEMORY_UTILIZATION = 0.9
DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "half": 2, "auto": 2, "float32": 4, "float": 4, "fp8": 1}
REQUIRED = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size")


class ConfigError(ValueError):
    """A config lacks the fields an estimate needs."""


@dataclass(frozen=True)
class Estimate:
    parameters: int
    weights_gib: float
    kv_bytes_per_token: int
    kv_gib: float  # one sequence of max_model_len tokens
    per_gpu_gib: float  # (weights + KV) / TP + overhead
    card_gib: float  # the smallest card that holds it at GPU_MEMORY_UTILIZATION

    def to_dict(self) -> dict[str, int | float]:
        return {"parameters": self.parameters, "weights_gib": round(self.weights_gib, 2),
                "kv_bytes_per_token": self.kv_bytes_per_token, "kv_gib": round(self.kv_gib, 3),
                "per_gpu_gib": round(self.per_gpu_gib, 2), "card_gib": round(self.card_gib, 2)}


def _int(config: Mapping[str, Any], key: str, default: int | None = None) -> int:
    value = config.get(key, default)
    if value is None:
        raise ConfigError(f"config has no {key!r}")
    return int(value)


def parameter_count(config: Mapping[str, Any]) -> int:
    missing = [k for k in REQUIRED if config.get(k) is None]
    if missing:
        raise ConfigError(f"config lacks {', '.join(missing)} (needed for a memory estimate)")
    h, layers = _int(config, "hidden_size"), _int(config, "num_hidden_layers")
    heads = _int(config, "num_attention_heads")
    kv_heads = _int(config, "num_key_value_heads", heads)
    head_dim = int(config.get("head_dim") or h // heads)
    inter, vocab = _int(config, "intermediate_size"), _int(config, "vocab_size")
    experts = int(config.get("num_local_experts") or 1)
    attn = h * heads * head_dim + 2 * h * kv_heads * head_dim + heads * head_dim * h
    if config.get("attention_bias") or config.get("qkv_bias"):
        attn += (heads + 2 * kv_heads) * head_dim
    mlp = 3 * h * inter * experts + (h * experts if experts > 1 else 0)  # gate, up, down (+ the router)
    embeddings = vocab * h * (1 if config.get("tie_word_embeddings") else 2)
    return embeddings + layers * (attn + mlp + 2 * h) + h


def kv_bytes_per_token(config: Mapping[str, Any], dtype_bytes: int = 2) -> int:
    heads = _int(config, "num_attention_heads")
    head_dim = int(config.get("head_dim") or _int(config, "hidden_size") // heads)
    return 2 * _int(config, "num_hidden_layers") * _int(config, "num_key_value_heads", heads) * head_dim * dtype_bytes


def estimate(config: Mapping[str, Any], *, dtype: str = "bfloat16", max_model_len: int | None = None,
             tensor_parallel: int = 1) -> Estimate:
    """The estimate for serving ``config`` with ``dtype`` weights and KV cache, room for one sequence of
    ``max_model_len`` tokens (default: the config's ``max_position_embeddings``), split over TP ranks."""
    nbytes = DTYPE_BYTES.get(str(dtype).lower(), 2)
    params = parameter_count(config)
    length = int(max_model_len or config.get("max_position_embeddings") or 4096)
    per_token = kv_bytes_per_token(config, nbytes)
    weights = params * nbytes / GIB
    kv = per_token * length / GIB
    per_gpu = (weights + kv) / max(tensor_parallel, 1) + OVERHEAD_GIB
    return Estimate(parameters=params, weights_gib=weights, kv_bytes_per_token=per_token, kv_gib=kv,
                    per_gpu_gib=per_gpu, card_gib=math.ceil(per_gpu / GPU_MEMORY_UTILIZATION * 10) / 10)
