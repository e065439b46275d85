"""GPUs: discovery (NVML or nvidia-smi), requirements, leasing across processes, memory estimates.

One module per concept; this one gathers their public names for the plugin, the session and the suites:

- ``discovery``: the GPUs this process may use, the driver, the record's ``device`` object;
- ``requirements``: whether this machine's GPUs meet a model's requirements;
- ``leasing``: disjoint GPUs (or slots of packed GPUs) per server across processes;
- ``memory_estimate``: the memory a model needs per GPU (counted by ``pytest_vllm_compat.memory``), and a
  preflight against the GPUs.
"""

from __future__ import annotations

from pytest_vllm_compat.gpu.discovery import device_summary, discover, driver_info
from pytest_vllm_compat.gpu.leasing import DEFAULT_GPU_MEMORY_UTILIZATION, DeviceLeaser, wait_memory_released
from pytest_vllm_compat.gpu.memory_estimate import estimate_memory, memory_preflight
from pytest_vllm_compat.gpu.requirements import compute_capability_at_least, unmet_requirements

__all__ = [
    "DEFAULT_GPU_MEMORY_UTILIZATION",
    "DeviceLeaser",
    "compute_capability_at_least",
    "device_summary",
    "discover",
    "driver_info",
    "estimate_memory",
    "memory_preflight",
    "unmet_requirements",
    "wait_memory_released",
]
