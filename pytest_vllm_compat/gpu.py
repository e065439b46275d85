"""GPUs: discovery (NVML or nvidia-smi), requirements, leasing across processes, memory estimates.

Nothing here imports torch or vLLM. Discovery reads NVML through ``pynvml`` when it is importable
and works, else ``nvidia-smi``, else finds no GPU. Indices follow nvidia-smi (PCI bus order); a
lease hands a server ``CUDA_VISIBLE_DEVICES`` with those indices and ``CUDA_DEVICE_ORDER=PCI_BUS_ID``
so that CUDA numbers the devices the same way nvidia-smi does.
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
import re
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_vllm_compat.locks import file_lock, release, try_lock
from pytest_vllm_compat.registry import Requirements

Runner = Callable[[list[str]], str]

QUERY_FIELDS = ("index", "uuid", "name", "memory.total", "memory.free", "compute_cap")
NVIDIA_SMI_TIMEOUT_S = 15.0
MIB_PER_GIB = 1024
# Requirements are written in round numbers ("80 GiB") but GPUs report a little less:
# an H100 80GB has 81559 MiB = 79.6 GiB. A GPU within this fraction of the figure counts.
MEMORY_REQUIREMENT_SLACK = 0.02


class LeaseError(RuntimeError):
    """A lease can never be granted (more GPUs asked for than the machine has)."""


class LeaseTimeout(TimeoutError):
    """Enough GPUs did not become free in time."""


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


# --------------------------------------------------------------------------------------------
# Discovery


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
    for row in csv.reader(text.splitlines(), skipinitialspace=True):
        row = [c.strip() for c in row]
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


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _discover_nvml() -> list[GPU] | None:
    try:
        import pynvml  # type: ignore[import-not-found]
    except ImportError:
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
    if runner is None:
        try:
            import pynvml  # type: ignore[import-not-found]

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
                   cuda: str | None = None) -> dict[str, Any]:
    """The ``device`` object of a result record. Pass ``**driver_info()`` for driver and CUDA versions."""
    kind = device_kind or ("cuda" if gpus else "cpu")
    if kind == "cpu":
        return {"kind": "cpu", "name": "cpu", "count": 0, "driver": None, "cuda": None}
    return {"kind": kind, "name": gpus[0].name if gpus else "unknown", "count": len(gpus),
            "driver": driver, "cuda": cuda}


# --------------------------------------------------------------------------------------------
# Requirements


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


def _gib(mib: float) -> str:
    return f"{round(mib / MIB_PER_GIB, 1):g}"


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
        return f"needs {req.gpu_memory_gib:g} GiB GPU memory, largest GPU has {_gib(largest.memory_total_mib)} GiB"
    return (f"needs {need} GPUs with {req.gpu_memory_gib:g} GiB each, this machine has {len(good)} "
            f"(largest has {_gib(largest.memory_total_mib)} GiB)")


# --------------------------------------------------------------------------------------------
# Leasing


DEFAULT_GPU_MEMORY_UTILIZATION = 0.9  # vLLM's own default


def memory_share(servers_per_gpu: int) -> float:
    """The ``--gpu-memory-utilization`` each of ``servers_per_gpu`` servers packed on one GPU gets.

    vLLM counts the fraction against the GPU's total memory and subtracts its own non-KV usage
    (weights, CUDA context, activations), so N shares of 0.9/N add up to vLLM's single-server
    default. Rounded down to 3 decimals.
    """
    if servers_per_gpu < 1:
        raise ValueError(f"servers per GPU must be >= 1, not {servers_per_gpu}")
    return math.floor(DEFAULT_GPU_MEMORY_UTILIZATION / servers_per_gpu * 1000) / 1000


@dataclass
class Lease:
    """GPUs held by this process until :meth:`release` (or the end of a ``with`` block, or exit).

    A *shared* lease holds one of several slots of each GPU (``servers_per_gpu`` > 1): other
    servers run on the same GPUs, each with :attr:`share` of their memory. Their starts and stops
    must not overlap (vLLM profiles free memory while it starts and asserts that no other process
    released memory meanwhile), so a shared lease has a :meth:`phase_guard`.
    """

    indices: tuple[int, ...]  # nvidia-smi indices, sorted
    gpus: tuple[GPU, ...] = ()
    baseline_mib: dict[int, int] = field(default_factory=dict)  # used MiB per index when leased
    slots: tuple[int, ...] = ()  # the slot taken on each GPU (0 when not shared)
    share: float | None = None  # --gpu-memory-utilization for a shared lease, None when exclusive
    phase_lock_paths: tuple[Path, ...] = ()
    _fds: list[int] = field(default_factory=list, repr=False)

    @property
    def shared(self) -> bool:
        return self.share is not None

    @contextlib.contextmanager
    def phase_guard(self) -> Iterator[None]:
        """Hold every leased GPU's start/stop lock (in index order, so two guards never deadlock)."""
        with contextlib.ExitStack() as stack:
            for path in self.phase_lock_paths:
                stack.enter_context(file_lock(path))
            yield

    def env(self) -> dict[str, str]:
        """Environment for the server process: ``{"CUDA_VISIBLE_DEVICES": "2,3", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}``.

        Empty for an empty lease (a cpu run). For Docker, pass :attr:`indices` to ``--gpus`` instead.
        """
        if not self.indices:
            return {}
        return {"CUDA_VISIBLE_DEVICES": ",".join(map(str, self.indices)), "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}

    def release(self) -> None:
        fds, self._fds = self._fds, []
        for fd in fds:
            release(fd)

    @property
    def held(self) -> bool:
        return bool(self._fds)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class DeviceLeaser:
    """Hands out disjoint sets of GPUs to processes sharing ``lock_dir`` (xdist workers, sessions, runners).

    One lock file per GPU (``gpu-<index>.lock``, flock: freed when the holder dies). Selection runs
    under one more lock so two processes never split a pair between them and wait on each other.
    Among free GPUs it takes those with the most free memory (``refresh`` re-reads memory each try).
    With ``servers_per_gpu`` = N > 1 each GPU has N slots (``gpu-<index>.slot<k>.lock``) and a lease
    takes one slot on each of its GPUs: N servers packed on one GPU, each with 0.9/N of its memory.
    """

    def __init__(self, lock_dir: Path, gpus: list[GPU], *, refresh: Callable[[], list[GPU]] | None = None,
                 poll: float = 1.0, servers_per_gpu: int = 1) -> None:
        if servers_per_gpu < 1:
            raise ValueError(f"servers per GPU must be >= 1, not {servers_per_gpu}")
        self.lock_dir = Path(lock_dir)
        self.gpus = list(gpus)
        self.refresh = refresh
        self.poll = poll
        # Every process sharing lock_dir must use the same value (xdist workers share the options).
        self.servers_per_gpu = servers_per_gpu

    def lock_path(self, device_id: int, slot: int = 0) -> Path:
        return self.lock_dir / (f"gpu-{device_id}.lock" if slot == 0 else f"gpu-{device_id}.slot{slot}.lock")

    def phase_lock_path(self, device_id: int) -> Path:
        return self.lock_dir / f"gpu-{device_id}.phase.lock"

    def _holder(self, device_id: int) -> str:
        pids = []
        for slot in range(self.servers_per_gpu):
            try:
                pid = self.lock_path(device_id, slot).read_text().strip()
            except OSError:
                pid = ""
            if pid.isdigit():
                pids.append(pid)
        return f"{device_id} (pid {', '.join(pids)})" if pids else str(device_id)

    def _current(self) -> list[GPU]:
        if self.refresh is None:
            return self.gpus
        try:
            fresh = {g.device_id: g for g in self.refresh()}
        except Exception:
            return self.gpus
        return [fresh.get(g.device_id, g) for g in self.gpus]

    def lease(self, count: int, *, min_free_mib: int = 0, timeout: float = 600.0,
              where: Callable[[GPU], bool] | None = None) -> Lease:
        """Hold ``count`` GPUs, waiting up to ``timeout`` s for others to release theirs.

        ``min_free_mib`` skips GPUs with less free memory; ``where`` restricts the candidates
        (e.g. ``lambda g: gpu_meets(req, g)`` on a mixed machine).
        """
        if count <= 0:
            return Lease(indices=())
        eligible = [g for g in self.gpus if where is None or where(g)]
        if count > len(eligible):
            have = ", ".join(g.label() for g in eligible) or "none"
            extra = " matching the model's requirements" if where is not None else ""
            raise LeaseError(f"cannot lease {count} GPU{'s' if count != 1 else ''}: this machine has "
                             f"{len(eligible)}{extra} ({have})")
        deadline = time.monotonic() + timeout
        while True:
            lease, busy, short = self._try(count, min_free_mib, where)
            if lease is not None:
                return lease
            if time.monotonic() >= deadline:
                parts = []
                if busy:
                    parts.append("held by other processes: " + ", ".join(busy))
                if short:
                    parts.append(f"less than {min_free_mib} MiB free: " + ", ".join(short))
                raise LeaseTimeout(f"could not lease {count} GPU{'s' if count != 1 else ''} within {timeout:g} s "
                                   f"(locks in {self.lock_dir}; {'; '.join(parts) or 'no GPU free'})")
            time.sleep(min(self.poll, max(0.0, deadline - time.monotonic())))

    def _try(self, count: int, min_free_mib: int,
             where: Callable[[GPU], bool] | None) -> tuple[Lease | None, list[str], list[str]]:
        gpus = [g for g in self._current() if where is None or where(g)]
        order = sorted(gpus, key=lambda g: (-g.memory_free_mib, g.device_id))
        busy: list[str] = []
        short: list[str] = []
        taken: list[tuple[GPU, int, int]] = []  # (gpu, slot, fd)
        with file_lock(self.lock_dir / "select.lock", timeout=60):
            for g in order:
                if len(taken) == count:
                    break
                if g.memory_free_mib < min_free_mib:
                    short.append(f"GPU {g.device_id} ({g.memory_free_mib} MiB)")
                    continue
                got = self._take_slot(g.device_id)
                if got is None:
                    busy.append(self._holder(g.device_id))
                    continue
                taken.append((g, *got))
            if len(taken) < count:
                for _, _, fd in taken:
                    release(fd)
                return None, busy, short
        taken.sort(key=lambda t: t[0].device_id)
        shared = self.servers_per_gpu > 1
        return (Lease(indices=tuple(g.device_id for g, _, _ in taken), gpus=tuple(g for g, _, _ in taken),
                      baseline_mib={g.device_id: g.memory_used_mib for g, _, _ in taken},
                      slots=tuple(slot for _, slot, _ in taken),
                      share=memory_share(self.servers_per_gpu) if shared else None,
                      phase_lock_paths=tuple(self.phase_lock_path(g.device_id) for g, _, _ in taken) if shared else (),
                      _fds=[fd for _, _, fd in taken]), busy, short)

    def _take_slot(self, device_id: int) -> tuple[int, int] | None:
        """The first free slot of a GPU as ``(slot, fd)``, or None when all its slots are held."""
        for slot in range(self.servers_per_gpu):
            fd = try_lock(self.lock_path(device_id, slot))
            if fd is None:
                continue
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
            return slot, fd
        return None

    @contextlib.contextmanager
    def leased(self, count: int, **kwargs: Any) -> Iterator[Lease]:
        lease = self.lease(count, **kwargs)
        try:
            yield lease
        finally:
            lease.release()


def wait_memory_released(indices: Sequence[int], *, baseline_mib: dict[int, int] | None = None,
                         tolerance_mib: int = 512, timeout: float = 120.0,
                         discover_fn: Callable[[], list[GPU]] = discover, poll: float = 1.0) -> bool:
    """After a server stops, wait until each device's used memory is back to ``baseline_mib`` (+ tolerance).

    ``indices`` are nvidia-smi indices (``Lease.indices``); pass ``Lease.baseline_mib`` as the
    baseline. Returns False on timeout, or at once when no GPU can be observed (caller warns).
    """
    if not indices:
        return True
    base = baseline_mib or {}
    deadline = time.monotonic() + timeout
    while True:
        gpus = discover_fn()
        if not gpus:
            return False
        seen = {g.device_id: g for g in gpus}
        if all(i in seen and seen[i].memory_used_mib <= base.get(i, 0) + tolerance_mib for i in indices):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(min(poll, max(0.0, deadline - time.monotonic())))


# --------------------------------------------------------------------------------------------
# Memory estimate


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
            f"({gpu_memory_utilization:g} x {_gib(smallest.memory_total_mib)} GiB){suggestion}")
    for g in gpus:
        want = g.memory_total_mib * gpu_memory_utilization
        if g.memory_free_mib and g.memory_free_mib < want:
            problems.append(f"{g.label()} has {_gib(g.memory_free_mib)} GiB free, less than the "
                            f"{_gib(want)} GiB vLLM asks for at gpu_memory_utilization {gpu_memory_utilization:g}")
    return "; ".join(problems) or None
