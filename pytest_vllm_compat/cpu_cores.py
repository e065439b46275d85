"""CPU servers side by side: with ``-n N`` on a CPU device, each xdist worker owns a disjoint set of cores.

The host's usable cores (the process's affinity) are cut into N contiguous shares, one per worker
(``gw0`` gets the first). The worker process is pinned to its share, so everything it starts inherits it,
and each of its vLLM servers binds its OpenMP threads there explicitly: ``VLLM_CPU_OMP_THREADS_BIND`` lists
one core set per tensor-parallel rank (``0-7|8-15``), each rank at least one core of its own. A server also
gets its share of the KV-cache memory (``VLLM_CPU_KVCACHE_SPACE``: half the host's memory, vLLM's own
default on one NUMA node, divided by N), unless the registry or the test sets its own.

Serial runs (no ``-n``) are left as they were: vLLM binds by itself (``auto``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

BIND_ENV = "VLLM_CPU_OMP_THREADS_BIND"
KV_ENV = "VLLM_CPU_KVCACHE_SPACE"
RESERVED_ENV = "VLLM_CPU_NUM_OF_RESERVED_CPU"


class CoreShareError(ValueError):
    """The worker's share of cores cannot give every tensor-parallel rank a core of its own."""


def usable_cores() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return list(range(os.cpu_count() or 1))


def worker_index(worker: str) -> int | None:
    """``gw3`` -> 3; ``main`` (no xdist) -> None."""
    return int(worker[2:]) if worker.startswith("gw") and worker[2:].isdigit() else None


def share(cores: Sequence[int], index: int, workers: int) -> list[int]:
    """Worker ``index``'s cores out of ``workers`` contiguous, disjoint shares (the first ones get the
    remainder). With more workers than cores, workers share cores round-robin (``index % len(cores)``)."""
    cores = sorted(cores)
    if not cores or workers < 1:
        raise ValueError("no cores to share")
    if workers > len(cores):
        return [cores[index % len(cores)]]
    base, extra = divmod(len(cores), workers)
    start = index * base + min(index, extra)
    return cores[start:start + base + (1 if index < extra else 0)]


def compress(cores: Sequence[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``0-2,5`` (vLLM's core-list syntax)."""
    out: list[str] = []
    run: list[int] = []
    for c in sorted(cores):
        if run and c == run[-1] + 1:
            run.append(c)
            continue
        if run:
            out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [c]
    if run:
        out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(out)


def omp_bind(cores: Sequence[int], ranks: int = 1) -> str:
    """``VLLM_CPU_OMP_THREADS_BIND`` for ``ranks`` TP ranks on ``cores``: one contiguous set per rank."""
    cores = sorted(cores)
    ranks = max(1, ranks)
    if len(cores) < ranks:
        raise CoreShareError(f"{ranks} tensor-parallel ranks need {ranks} cores (one each); this worker's share "
                             f"is {len(cores)} ({compress(cores)})")
    base, extra = divmod(len(cores), ranks)
    groups, start = [], 0
    for r in range(ranks):
        n = base + (1 if r < extra else 0)
        groups.append(compress(cores[start:start + n]))
        start += n
    return "|".join(groups)


def memory_gib() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):  # pragma: no cover
        return 0.0


def kv_share_gib(total_gib: float, workers: int) -> int:
    """Half the host's memory (vLLM's default KV-cache space on one NUMA node) split over the workers, >= 1."""
    return max(1, int(total_gib / 2 / max(1, workers)))


@dataclass(frozen=True)
class CoreShare:
    """One xdist worker's cores and KV-cache memory."""

    worker: str
    workers: int
    cores: tuple[int, ...]
    kv_gib: int

    def env(self, server_env: Mapping[str, str], ranks: int = 1) -> dict[str, str]:
        """What a server of this worker adds to its environment. A core list the registry or the test set
        itself (within this share: the suites compute it from the worker's affinity) is kept."""
        out: dict[str, str] = {}
        if BIND_ENV not in server_env:
            out[BIND_ENV] = omp_bind(self.cores, ranks)
            out[RESERVED_ENV] = "0"  # the share is the server's: nothing to reserve for other processes
        return out

    def defaults(self) -> dict[str, str]:
        """Environment defaults a registry's or a test's own values override."""
        return {KV_ENV: str(self.kv_gib)}

    def describe(self) -> dict[str, object]:
        return {"worker": self.worker, "workers": self.workers, "cores": compress(self.cores), "kv_gib": self.kv_gib}


def worker_share(worker: str, workers: int, cores: Sequence[int] | None = None,
                 total_gib: float | None = None) -> CoreShare | None:
    """This xdist worker's share, or None when the run is serial (one worker, or not under xdist)."""
    index = worker_index(worker)
    if index is None or workers < 2:
        return None
    all_cores = list(cores) if cores is not None else usable_cores()
    mem = memory_gib() if total_gib is None else total_gib
    return CoreShare(worker=worker, workers=workers, cores=tuple(share(all_cores, index, workers)),
                     kv_gib=kv_share_gib(mem, workers))


def pin(share_: CoreShare) -> None:
    """Pin this process (and what it starts) to the share's cores."""
    try:
        os.sched_setaffinity(0, set(share_.cores))
    except (AttributeError, OSError):  # pragma: no cover - not Linux, or the cores vanished
        pass
