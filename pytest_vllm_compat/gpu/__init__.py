"""GPUs: discovery (NVML or nvidia-smi), requirements, leasing across processes, memory estimates.

One module per concept; this one gathers their public names for the plugin, the session and the suites:

- ``discovery``: the GPUs this process may use, the driver, the record's ``device`` object;
- ``requirements``: whether this machine's GPUs meet a model's requirements;
- ``leasing``: disjoint GPUs (or slots of packed GPUs) per server across processes;
- ``memory_estimate``: the memory a model needs per GPU (counted by ``pytest_vllm_compat.memory``), and a
  preflight against the GPUs.
"""

from __future__ import annotations

from pytest_vllm_compat.gpu.discovery import (
    GPU,
    MIB_PER_GIB,
    NVIDIA_SMI_TIMEOUT_S,
    QUERY_FIELDS,
    Runner,
    apply_cuda_visible_devices,
    device_summary,
    discover,
    driver_info,
    parse_nvidia_smi_csv,
)
from pytest_vllm_compat.gpu.leasing import (
    DEFAULT_GPU_MEMORY_UTILIZATION,
    DeviceLeaser,
    Lease,
    LeaseError,
    LeaseTimeout,
    memory_share,
    wait_memory_released,
)
from pytest_vllm_compat.gpu.memory_estimate import (
    MemoryEstimate,
    estimate_memory,
    memory_preflight,
)
from pytest_vllm_compat.gpu.requirements import (
    MEMORY_REQUIREMENT_SLACK,
    compute_capability_at_least,
    gpu_meets,
    unmet_requirements,
)

__all__ = [
    "DEFAULT_GPU_MEMORY_UTILIZATION",
    "GPU",
    "MEMORY_REQUIREMENT_SLACK",
    "MIB_PER_GIB",
    "NVIDIA_SMI_TIMEOUT_S",
    "QUERY_FIELDS",
    "DeviceLeaser",
    "Lease",
    "LeaseError",
    "LeaseTimeout",
    "MemoryEstimate",
    "Runner",
    "apply_cuda_visible_devices",
    "compute_capability_at_least",
    "device_summary",
    "discover",
    "driver_info",
    "estimate_memory",
    "gpu_meets",
    "memory_preflight",
    "memory_share",
    "parse_nvidia_smi_csv",
    "unmet_requirements",
    "wait_memory_released",
]
