"""GPU discovery: the devices this process may use (NVML or nvidia-smi), the driver, and the record's ``device``.

Nothing here imports torch or vLLM. Discovery reads NVML through ``pynvml`` when it is importable
and works, else ``nvidia-smi``, else finds no GPU. Indices follow nvidia-smi (PCI bus order); a
lease (``leasing``) hands a server ``CUDA_VISIBLE_DEVICES`` with those indices and
``CUDA_DEVICE_ORDER=PCI_BUS_ID`` so that CUDA numbers the devices the same way nvidia-smi does.
"""

from __future__ import annotations

import contextlib
import csv
import importlib
import os
import re
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import ModuleType

Runner = Callable[[list[str]], str]

QUERY_FIELDS = ("index", "uuid", "name", "memory.total", "memory.free", "compute_cap")
NVIDIA_SMI_TIMEOUT_S = 15.0
MIB_PER_GIB = 1024


@dataclass(frozen=True)
class GPU:
    """One GPU as this process sees it.

    ``index`` is the CUDA index in this process (renumbered from 0 when ``CUDA_VISIBLE_DEVICES``
    was set); ``host_index`` is nvidia-smi's index, the one to give a child process or Docker.
    """

    index: int
    uuid: str
    name: str
    memory_total_mib: int
    memory_free_mib: int
    compute_capability: str  # "9.0"; "" when the driver cannot tell
    host_index: int | None = None

    @property
    def device_id(self) -> int:
        """The machine-wide index (nvidia-smi's): for locks, child environments and ``--gpus``."""
        return self.index if self.host_index is None else self.host_index

    @property
    def memory_used_mib(self) -> int:
        return max(0, self.memory_total_mib - self.memory_free_mib)

    def label(self) -> str:
        return f"GPU {self.device_id} ({self.name})"


def gib_text(mib: float) -> str:
    """MiB as GiB for a message: ``81559`` -> ``"79.6"``."""
    return f"{round(mib / MIB_PER_GIB, 1):g}"


def _run(argv: list[str]) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=NVIDIA_SMI_TIMEOUT_S, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[0]} exited with {proc.returncode}: {(proc.stderr or proc.stdout).strip()}")
    return proc.stdout


def _int_or_zero(text: str) -> int:
    try:
        return int(float(text))
    except ValueError:  # "[N/A]" (unified-memory parts, some MIG setups)
        return 0


def parse_nvidia_smi_csv(text: str) -> list[GPU]:
    """Parse ``--query-gpu=index,uuid,name,memory.total,memory.free[,compute_cap] --format=csv,noheader,nounits``."""
    gpus: list[GPU] = []
    for fields in csv.reader(text.splitlines(), skipinitialspace=True):
        row = [c.strip() for c in fields]
        if not row or not row[0]:
            continue
        if len(row) < 5 or not row[0].isdigit():
            raise ValueError(f"unexpected nvidia-smi line: {', '.join(row)!r}")
        cc = row[5] if len(row) > 5 and re.fullmatch(r"\d+\.\d+", row[5]) else ""
        gpus.append(GPU(index=int(row[0]), uuid=row[1], name=row[2], memory_total_mib=_int_or_zero(row[3]),
                        memory_free_mib=_int_or_zero(row[4]), compute_capability=cc))
    return gpus


def _discover_nvidia_smi(nvidia_smi: str, runner: Runner) -> list[GPU] | None:
    fmt = "--format=csv,noheader,nounits"
    try:
        out = runner([nvidia_smi, "--query-gpu=" + ",".join(QUERY_FIELDS), fmt])
    except (OSError, RuntimeError, subprocess.SubprocessError):
        # Drivers older than ~R510 reject the compute_cap field: ask again without it.
        try:
            out = runner([nvidia_smi, "--query-gpu=" + ",".join(QUERY_FIELDS[:-1]), fmt])
        except (OSError, RuntimeError, subprocess.SubprocessError):
            return None
    try:
        return parse_nvidia_smi_csv(out)
    except ValueError:
        return None


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _nvml() -> ModuleType | None:
    """The ``pynvml`` module (untyped), or None when it is not installed."""
    try:
        return importlib.import_module("pynvml")
    except ImportError:
        return None


def _discover_nvml() -> list[GPU] | None:
    pynvml = _nvml()
    if pynvml is None:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:  # NVML library missing or no driver: fall back to nvidia-smi
        return None
    try:
        gpus = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            mem = pynvml.nvmlDeviceGetMemoryInfo(h)
            try:
                major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(h)
                cc = f"{major}.{minor}"
            except Exception:
                cc = ""
            gpus.append(GPU(index=i, uuid=_text(pynvml.nvmlDeviceGetUUID(h)), name=_text(pynvml.nvmlDeviceGetName(h)),
                            memory_total_mib=int(mem.total) // (1024 * 1024),
                            memory_free_mib=int(mem.free) // (1024 * 1024), compute_capability=cc))
        return gpus
    except Exception:
        return None
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()


def apply_cuda_visible_devices(gpus: list[GPU], value: str | None) -> list[GPU]:
    """Keep the devices ``CUDA_VISIBLE_DEVICES`` names, in its order, renumbered 0.. as CUDA does.

    Entries are nvidia-smi indices or (prefixes of) UUIDs. Like CUDA, the list stops at the first
    entry that names no device (or names one twice); an empty value hides every device.
    """
    if value is None:
        return [g if g.host_index is not None else _with_host(g, g.index, g.index) for g in gpus]
    picked: list[GPU] = []
    for raw in value.split(","):
        entry = raw.strip()
        match: GPU | None = None
        if re.fullmatch(r"\d+", entry):
            match = next((g for g in gpus if g.index == int(entry)), None)
        elif entry.startswith("GPU-"):
            hits = [g for g in gpus if g.uuid.startswith(entry)]
            match = hits[0] if len(hits) == 1 else None
        if match is None or any(p.host_index == match.index for p in picked):
            break  # MIG-… entries, unknown devices and repeats end the list, as in CUDA
        picked.append(_with_host(match, len(picked), match.index))
    return picked


def _with_host(g: GPU, index: int, host_index: int) -> GPU:
    return GPU(index=index, uuid=g.uuid, name=g.name, memory_total_mib=g.memory_total_mib,
               memory_free_mib=g.memory_free_mib, compute_capability=g.compute_capability, host_index=host_index)


def discover(nvidia_smi: str = "nvidia-smi", runner: Runner | None = None, *,
             environ: Mapping[str, str] | None = None) -> list[GPU]:
    """The GPUs this process may use: NVML first, else nvidia-smi, else ``[]``.

    ``runner`` (argv -> stdout, raising on failure) replaces the subprocess call in tests; when it is
    given, NVML is not consulted, so tests see only the fake output. ``CUDA_VISIBLE_DEVICES`` in
    ``environ`` (default ``os.environ``) is honoured.
    """
    env = os.environ if environ is None else environ
    found = _discover_nvml() if runner is None else None
    if found is None:
        found = _discover_nvidia_smi(nvidia_smi, runner or _run)
    return apply_cuda_visible_devices(found or [], env.get("CUDA_VISIBLE_DEVICES"))


_DRIVER_RE = re.compile(r"Driver Version:\s*([\w.]+)")
_CUDA_RE = re.compile(r"CUDA Version:\s*([\w.]+)")


def driver_info(nvidia_smi: str = "nvidia-smi", runner: Runner | None = None) -> dict[str, str | None]:
    """``{"driver": "550.54.15", "cuda": "12.4"}`` (the driver's CUDA version), ``None`` where unknown."""
    pynvml = _nvml() if runner is None else None
    if pynvml is not None:
        try:
            pynvml.nvmlInit()
            try:
                v = int(pynvml.nvmlSystemGetCudaDriverVersion())
                return {"driver": _text(pynvml.nvmlSystemGetDriverVersion()), "cuda": f"{v // 1000}.{v % 1000 // 10}"}
            finally:
                pynvml.nvmlShutdown()
        except Exception:
            pass
    try:
        out = (runner or _run)([nvidia_smi])
    except (OSError, RuntimeError, subprocess.SubprocessError):
        return {"driver": None, "cuda": None}
    d, c = _DRIVER_RE.search(out), _CUDA_RE.search(out)
    return {"driver": d.group(1) if d else None, "cuda": c.group(1) if c else None}


def device_summary(gpus: list[GPU], *, device_kind: str | None = None, driver: str | None = None,
                   cuda: str | None = None) -> dict[str, object]:
    """The ``device`` object of a result record. Pass ``**driver_info()`` for driver and CUDA versions."""
    kind = device_kind or ("cuda" if gpus else "cpu")
    if kind == "cpu":
        return {"kind": "cpu", "name": "cpu", "count": 0, "driver": None, "cuda": None}
    return {"kind": kind, "name": gpus[0].name if gpus else "unknown", "count": len(gpus),
            "driver": driver, "cuda": cuda}
