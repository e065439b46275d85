"""What a model requires of the GPUs (count, memory per GPU, compute capability) and whether this machine has it."""

from __future__ import annotations

import re

from pytest_vllm_compat.gpu.discovery import GPU, MIB_PER_GIB, gib_text
from pytest_vllm_compat.registry import Requirements

# Requirements are written in round numbers ("80 GiB") but GPUs report a little less:
# an H100 80GB has 81559 MiB = 79.6 GiB. A GPU within this fraction of the figure counts.
MEMORY_REQUIREMENT_SLACK = 0.02


def _cc_tuple(text: str) -> tuple[int, int]:
    t = text.strip().lower().removeprefix("sm_").removeprefix("sm")
    if m := re.fullmatch(r"(\d+)(?:\.(\d+))?", t):
        if "." not in t and len(t) >= 2:  # "75" / "sm_75" / "100"
            return int(t[:-1]), int(t[-1])
        return int(m.group(1)), int(m.group(2) or 0)
    raise ValueError(f"not a compute capability: {text!r} (expected e.g. '8.0' or 'sm_80')")


def compute_capability_at_least(have: str, need: str) -> bool:
    """``"9.0" >= "8.0"``, compared numerically ("10.0" > "9.0"); also accepts ``sm_80``."""
    return _cc_tuple(have) >= _cc_tuple(need)


def gpu_meets(req: Requirements, gpu: GPU) -> bool:
    """Whether one GPU satisfies the per-GPU parts of ``req`` (memory, compute capability)."""
    if req.gpu_memory_gib and gpu.memory_total_mib < req.gpu_memory_gib * MIB_PER_GIB * (1 - MEMORY_REQUIREMENT_SLACK):
        return False
    # An unknown capability (old driver) does not block: the server itself will tell.
    return not (req.compute_capability and gpu.compute_capability
                and not compute_capability_at_least(gpu.compute_capability, req.compute_capability))


def unmet_requirements(req: Requirements, device_kind: str, gpus: list[GPU], tensor_parallel_size: int = 1) -> str | None:
    """``None`` when this machine can run a model with ``req``, else why not (a skip reason).

    ``gpu_memory_gib`` is per GPU. On a cpu run only ``devices`` and ``gpus`` are checked.
    """
    if device_kind not in req.devices:
        return f"model runs on {' or '.join(req.devices)} only, this run is on {device_kind}"
    if device_kind != "cuda":
        if req.gpus > 0:
            return f"needs {req.gpus} GPU{'s' if req.gpus != 1 else ''}, this run is on {device_kind}"
        return None
    need = max(req.gpus, tensor_parallel_size, 1)
    why = f" (tensor parallel size {tensor_parallel_size})" if tensor_parallel_size > max(req.gpus, 1) else ""
    if len(gpus) < need:
        return f"needs {need} GPU{'s' if need != 1 else ''}{why}, this machine has {len(gpus)}"
    good = [g for g in gpus if gpu_meets(req, g)]
    if len(good) >= need:
        return None
    if req.compute_capability:
        low = [g for g in gpus if g.compute_capability
               and not compute_capability_at_least(g.compute_capability, req.compute_capability)]
        if low:
            g = low[0]
            return f"needs compute capability >= {req.compute_capability}, {g.label()} is {g.compute_capability}"
    largest = max(gpus, key=lambda g: g.memory_total_mib)
    if need == 1:
        return f"needs {req.gpu_memory_gib:g} GiB GPU memory, largest GPU has {gib_text(largest.memory_total_mib)} GiB"
    return (f"needs {need} GPUs with {req.gpu_memory_gib:g} GiB each, this machine has {len(good)} "
            f"(largest has {gib_text(largest.memory_total_mib)} GiB)")
