"""GPU leases across processes: disjoint GPUs (or slots of packed GPUs) per server, and waiting for memory back.

A lease hands a server ``CUDA_VISIBLE_DEVICES`` with nvidia-smi indices and ``CUDA_DEVICE_ORDER=PCI_BUS_ID``
so that CUDA numbers the devices the same way nvidia-smi does (``discovery``).
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pytest_vllm_compat.gpu.discovery import GPU, discover
from pytest_vllm_compat.locks import file_lock, release, try_lock


class LeaseError(RuntimeError):
    """A lease can never be granted (more GPUs asked for than the machine has)."""


class LeaseTimeout(TimeoutError):
    """Enough GPUs did not become free in time."""


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
    def leased(self, count: int, *, min_free_mib: int = 0, timeout: float = 600.0,
               where: Callable[[GPU], bool] | None = None) -> Iterator[Lease]:
        lease = self.lease(count, min_free_mib=min_free_mib, timeout=timeout, where=where)
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
