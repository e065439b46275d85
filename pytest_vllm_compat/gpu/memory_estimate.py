"""GPU memory a model needs under tensor parallelism (from its HF config), and a preflight against the GPUs."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pytest_vllm_compat.gpu.discovery import GPU, MIB_PER_GIB, gib_text


def _first(cfg: Mapping[str, Any], *keys: str) -> Any:
    for k in keys:
        if cfg.get(k) is not None:
            return cfg[k]
    return None


# Architectures whose MLP is gated (gate, up, down) whatever their activation is called.
_GATED_TYPES = {"llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "gemma", "gemma2", "phi3"}


@dataclass(frozen=True)
class _Shape:
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


def _shape(config: Mapping[str, Any]) -> _Shape:
    if _first(config, "hidden_size", "n_embd", "d_model") is None and isinstance(config.get("text_config"), dict):
        config = config["text_config"]  # multimodal configs nest the language model
    try:
        hidden = int(_first(config, "hidden_size", "n_embd", "d_model"))
        layers = int(_first(config, "num_hidden_layers", "n_layer", "num_layers"))
        heads = int(_first(config, "num_attention_heads", "n_head"))
        vocab = int(config["vocab_size"])
    except (KeyError, TypeError) as e:
        raise ValueError(f"config lacks a field needed for a memory estimate: {e}") from None
    kv_heads = int(_first(config, "num_key_value_heads", "num_kv_heads") or heads)
    # transformers >= 4.52 writes "head_dim": null for Mistral (vllm#18573, failures.toml id head_dim_none)
    head_dim = int(_first(config, "head_dim") or hidden // heads)
    inter = int(_first(config, "intermediate_size", "n_inner", "ffn_dim") or 4 * hidden)
    experts = int(_first(config, "num_local_experts", "num_experts", "n_routed_experts") or 1)
    act = str(_first(config, "hidden_act", "activation_function") or "silu")
    gated = config.get("model_type") in _GATED_TYPES or act not in ("gelu", "gelu_new", "relu")
    return _Shape(hidden=hidden, layers=layers, heads=heads, kv_heads=kv_heads, head_dim=head_dim, vocab=vocab,
                  inter=inter, experts=experts, expert_inter=int(_first(config, "moe_intermediate_size") or inter),
                  mlp_mats=3 if gated else 2, tied=bool(config.get("tie_word_embeddings", False)))


def estimate_params(config: Mapping[str, Any]) -> int:
    """Parameter count of a decoder-only transformer from its HF ``config.json`` (dense or MoE).

    Biases are left out; a rough figure for the preflight, not an exact count for every architecture.
    """
    s = _shape(config)
    attn = s.hidden * s.heads * s.head_dim + 2 * s.hidden * s.kv_heads * s.head_dim + s.heads * s.head_dim * s.hidden
    if s.experts > 1:
        mlp = s.experts * s.mlp_mats * s.hidden * s.expert_inter + s.hidden * s.experts  # experts + router
    else:
        mlp = s.mlp_mats * s.hidden * s.inter
    per_layer = attn + mlp + 2 * s.hidden  # + two norms
    embed = s.vocab * s.hidden
    lm_head = 0 if s.tied else s.vocab * s.hidden
    return s.layers * per_layer + embed + lm_head + s.hidden  # + final norm


def kv_bytes_per_token(config: Mapping[str, Any], dtype_bytes: int = 2) -> int:
    """2 (K and V) x layers x kv_heads x head_dim x dtype_bytes."""
    s = _shape(config)
    return 2 * s.layers * s.kv_heads * s.head_dim * dtype_bytes


@dataclass(frozen=True)
class MemoryEstimate:
    weights_gib: float  # all weights
    kv_cache_gib: float  # KV cache for kv_tokens, all GPUs together
    per_gpu_gib: float  # weights and KV cache one GPU holds under tensor parallelism
    total_gib: float  # weights_gib + kv_cache_gib
    params: int = 0
    kv_tokens: int = 0
    tensor_parallel_size: int = 1


def estimate_memory(config: Mapping[str, Any], *, max_model_len: int, dtype_bytes: int = 2,
                    tensor_parallel_size: int = 1, num_seqs: int = 1) -> MemoryEstimate:
    """Weights plus a KV cache for ``num_seqs`` sequences of ``max_model_len`` tokens.

    Under tensor parallelism weights are split evenly; KV heads too, but never fewer than one per
    GPU (vLLM replicates KV heads when there are fewer than GPUs). Activations, the CUDA context
    and CUDA graphs are not included (see ``memory_preflight``'s ``overhead_gib``).
    """
    s = _shape(config)
    tp = max(1, tensor_parallel_size)
    params = estimate_params(config)
    tokens = max_model_len * num_seqs
    gib = float(1 << 30)
    weights = params * dtype_bytes / gib
    kv = 2 * s.layers * s.kv_heads * s.head_dim * dtype_bytes * tokens / gib
    kv_per_gpu = 2 * s.layers * math.ceil(s.kv_heads / tp) * s.head_dim * dtype_bytes * tokens / gib
    return MemoryEstimate(weights_gib=weights, kv_cache_gib=kv, per_gpu_gib=weights / tp + kv_per_gpu,
                          total_gib=weights + kv, params=params, kv_tokens=tokens, tensor_parallel_size=tp)


def memory_preflight(estimate: MemoryEstimate, gpus: list[GPU], gpu_memory_utilization: float = 0.9,
                     overhead_gib: float = 1.0) -> str | None:
    """A warning sentence when the model cannot fit on ``gpus`` (the ones it will run on), else ``None``.

    vLLM may use ``gpu_memory_utilization`` x total memory of each GPU; ``overhead_gib`` stands for
    the CUDA context and activations. V1 also refuses to start when a GPU has less free memory
    than that budget, so busy GPUs are reported too.
    """
    if not gpus:
        return None
    problems: list[str] = []
    smallest = min(gpus, key=lambda g: g.memory_total_mib)
    budget = smallest.memory_total_mib / MIB_PER_GIB * gpu_memory_utilization
    need = estimate.per_gpu_gib + overhead_gib
    if need > budget:
        tp = estimate.tensor_parallel_size
        suggestion = ""
        if budget > overhead_gib:
            min_tp = math.ceil(estimate.total_gib / (budget - overhead_gib))
            min_tp = 1 << max(0, min_tp - 1).bit_length()  # TP sizes are powers of two in practice
            if min_tp > tp:
                suggestion = f"; try tensor parallel size {min_tp}"
        problems.append(
            f"model needs about {need:.1f} GiB per GPU at tensor parallel size {tp} "
            f"(weights {estimate.weights_gib / tp:.1f} GiB + KV cache for {estimate.kv_tokens} tokens + "
            f"{overhead_gib:g} GiB overhead) but {smallest.label()} allows {budget:.1f} GiB "
            f"({gpu_memory_utilization:g} x {gib_text(smallest.memory_total_mib)} GiB){suggestion}")
    for g in gpus:
        want = g.memory_total_mib * gpu_memory_utilization
        if g.memory_free_mib and g.memory_free_mib < want:
            problems.append(f"{g.label()} has {gib_text(g.memory_free_mib)} GiB free, less than the "
                            f"{gib_text(want)} GiB vLLM asks for at gpu_memory_utilization {gpu_memory_utilization:g}")
    return "; ".join(problems) or None
