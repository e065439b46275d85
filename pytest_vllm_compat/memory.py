"""How much GPU memory a model needs, from its config.json fields, before anything is downloaded.

The one memory estimator: the registry (``estimate``: the card a hub entry needs) and the server preflight
(``gpu.memory_estimate``: weights and KV cache per GPU under tensor parallelism, checked against the GPUs) both
count with ``parameter_count`` and ``kv_bytes_per_token`` below.

Weights: the parameter count of a decoder-only transformer with grouped-query attention (Llama, Mistral, Qwen2,
Gemma, Phi-3, Mixtral-style experts), with the q/k/v biases a config declares (``attention_bias``, ``qkv_bias``,
or Qwen2's model type), a gated MLP (gate, up, down) unless the activation says a plain one, and MoE experts of
``moe_intermediate_size`` when given; times the dtype's bytes. KV cache: 2 (K and V) x layers x KV heads x
head_dim x dtype bytes per token. The count matches the published sizes of the models in
``suites/models-hub.toml`` within 0.2 % (tests/unit/test_memory.py). A model is split over its tensor-parallel
ranks; each GPU also needs room for activations, CUDA graphs and the CUDA context (``OVERHEAD_GIB``), and vLLM
only uses ``--gpu-memory-utilization`` (0.9) of the card.
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
# Architectures whose MLP is gated (gate, up, down) whatever their activation is called.
_GATED_TYPES = {"llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "gemma", "gemma2", "phi3"}
# Architectures with a bias on the q/k/v projections that their config.json does not declare.
_QKV_BIAS_TYPES = {"qwen2", "qwen2_moe"}


class ConfigError(ValueError):
    """A config lacks the fields an estimate needs."""


def _first(cfg: Mapping[str, Any], *keys: str) -> Any:
    for k in keys:
        if cfg.get(k) is not None:
            return cfg[k]
    return None


@dataclass(frozen=True)
class Shape:
    """The fields of a config.json the estimate reads, under their usual names (and their GPT-2/OPT aliases)."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    inter: int
    experts: int
    expert_inter: int
    mlp_mats: int
    tied: bool
    qkv_bias: bool


def shape(config: Mapping[str, Any]) -> Shape:
    if _first(config, "hidden_size", "n_embd", "d_model") is None and isinstance(config.get("text_config"), dict):
        config = config["text_config"]  # multimodal configs nest the language model
    fields = {"hidden_size": ("hidden_size", "n_embd", "d_model"),
              "num_hidden_layers": ("num_hidden_layers", "n_layer", "num_layers"),
              "num_attention_heads": ("num_attention_heads", "n_head"), "vocab_size": ("vocab_size",)}
    missing = [name for name, keys in fields.items() if _first(config, *keys) is None]
    if missing:
        raise ConfigError(f"config lacks {', '.join(missing)} (needed for a memory estimate)")
    hidden, layers, heads, vocab = (int(_first(config, *keys)) for keys in fields.values())
    kv_heads = int(_first(config, "num_key_value_heads", "num_kv_heads") or heads)
    # transformers >= 4.52 writes "head_dim": null for Mistral (vllm#18573, failures.toml id head_dim_none)
    head_dim = int(_first(config, "head_dim") or hidden // heads)
    inter = int(_first(config, "intermediate_size", "n_inner", "ffn_dim") or 4 * hidden)
    experts = int(_first(config, "num_local_experts", "num_experts", "n_routed_experts") or 1)
    act = str(_first(config, "hidden_act", "activation_function") or "silu")
    gated = config.get("model_type") in _GATED_TYPES or act not in ("gelu", "gelu_new", "relu")
    bias = bool(config.get("attention_bias") or config.get("qkv_bias") or config.get("model_type") in _QKV_BIAS_TYPES)
    return Shape(hidden=hidden, layers=layers, heads=heads, kv_heads=kv_heads, head_dim=head_dim, vocab=vocab,
                 inter=inter, experts=experts, expert_inter=int(_first(config, "moe_intermediate_size") or inter),
                 mlp_mats=3 if gated else 2, tied=bool(config.get("tie_word_embeddings", False)), qkv_bias=bias)


def parameter_count(config: Mapping[str, Any]) -> int:
    """Parameter count of a decoder-only transformer from its HF ``config.json`` (dense or MoE)."""
    s = shape(config)
    attn = s.hidden * s.heads * s.head_dim + 2 * s.hidden * s.kv_heads * s.head_dim + s.heads * s.head_dim * s.hidden
    if s.qkv_bias:
        attn += (s.heads + 2 * s.kv_heads) * s.head_dim
    if s.experts > 1:
        mlp = s.experts * s.mlp_mats * s.hidden * s.expert_inter + s.hidden * s.experts  # experts + router
    else:
        mlp = s.mlp_mats * s.hidden * s.inter
    embeddings = s.vocab * s.hidden * (1 if s.tied else 2)
    return embeddings + s.layers * (attn + mlp + 2 * s.hidden) + s.hidden  # two norms per layer, a final one


def kv_bytes_per_token(config: Mapping[str, Any], dtype_bytes: int = 2, *, kv_heads: int | None = None) -> int:
    """2 (K and V) x layers x KV heads x head_dim x dtype_bytes (``kv_heads``: the heads one GPU holds)."""
    s = shape(config)
    return 2 * s.layers * (s.kv_heads if kv_heads is None else kv_heads) * s.head_dim * dtype_bytes


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
