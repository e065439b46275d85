"""GPU memory a model needs under tensor parallelism (from its HF config), and a preflight against the GPUs.

The counts (parameters, KV cache bytes per token) are ``pytest_vllm_compat.memory``'s, the one estimator.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pytest_vllm_compat.gpu.discovery import GPU, MIB_PER_GIB, gib_text
from pytest_vllm_compat.memory import GIB, kv_bytes_per_token, parameter_count, shape


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
    s = shape(config)
    tp = max(1, tensor_parallel_size)
    params = parameter_count(config)
    tokens = max_model_len * num_seqs
    weights = params * dtype_bytes / GIB
    kv = kv_bytes_per_token(config, dtype_bytes) * tokens / GIB
    kv_per_gpu = kv_bytes_per_token(config, dtype_bytes, kv_heads=math.ceil(s.kv_heads / tp)) * tokens / GIB
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
