"""The environments on disk: list them with size and last use, remove them, prune past a size budget.

A sweep over releases, a bisection or a set of dependency stacks leaves one environment per (distribution,
version, Python, stack) under ``<env dir>/envs``, ~3.5 GB each when nothing is shared. uv hard-links files
from its cache into every environment, so "how big is it" has two answers, and both are shown:

  size   bytes of the environment's files, each inode counted once
  frees  bytes that removing it gives back: files with no hard link outside the environment (a file
         linked from uv's cache, or from another environment, stays on disk)

Last use is the mtime of ``LAST_USED`` in the environment, touched by the provisioner whenever a run
takes the environment; an environment never used since it was made falls back to its creation time.
An environment some process is running from (a server, an install) is not removed unless forced.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .environments import LAST_USED, MARKER
from .locks import LockTimeout, file_lock

# Per-environment state kept beside the environments, named after it; removed with it.
DERIVED_DIRS = ("compile-cache", "models")


@dataclass
class EnvInfo:
    name: str
    path: Path
    complete: bool  # the install finished and was marked (a partial one is left by an interrupted install)
    distribution: str | None
    version: str | None
    installer: str | None
    created_at: float | None
    last_used: float | None
    size_bytes: int
    frees_bytes: int
    lock_sha256: str | None
    in_use_by: list[int]

    def to_dict(self) -> dict[str, object]:
        d = dict(self.__dict__)
        d["path"] = str(self.path)
        return d


def disk_usage(paths: Iterable[Path]) -> tuple[int, int]:
    """(size, frees) of the files under ``paths`` together: size counts each inode once; frees counts the
    inodes all of whose hard links are under ``paths``."""
    seen: dict[tuple[int, int], list[int]] = {}  # (dev, ino) -> [links seen here, st_nlink, bytes]
    for root in paths:
        if not root.exists():
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
                try:
                    st = os.lstat(os.path.join(dirpath, name))
                except OSError:
                    continue
                key = (st.st_dev, st.st_ino)
                entry = seen.get(key)
                if entry is None:
                    seen[key] = [1, st.st_nlink, st.st_blocks * 512]
                else:
                    entry[0] += 1
    size = sum(e[2] for e in seen.values())
    frees = sum(e[2] for e in seen.values() if e[0] >= e[1])
    return size, frees


def processes_using(path: Path) -> list[int]:
    """Pids of processes whose executable or command line is under ``path`` (Linux /proc; [] elsewhere)."""
    prefix = str(path.resolve()) + os.sep
    raw = str(path) + os.sep
    out = []
    proc = Path("/proc")
    if not proc.is_dir():
        return []
    for d in proc.iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            cmdline = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        try:
            exe = os.readlink(d / "exe")
        except OSError:
            exe = ""
        if exe.startswith(prefix) or prefix in cmdline or raw in cmdline:
            out.append(int(d.name))
    return sorted(out)


def _read_marker(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((path / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def env_info(path: Path, *, sizes: bool = True) -> EnvInfo:
    marker = _read_marker(path)
    last_used: float | None = None
    try:
        last_used = (path / LAST_USED).stat().st_mtime
    except OSError:
        last_used = (marker or {}).get("created_at")
    if last_used is None:
        try:
            last_used = path.stat().st_mtime
        except OSError:
            last_used = None
    size, frees = disk_usage([path]) if sizes else (0, 0)
    m = marker or {}
    return EnvInfo(name=path.name, path=path, complete=marker is not None and (path / "bin" / "python").exists(),
                   distribution=m.get("distribution"), version=m.get("version"), installer=m.get("installer"),
                   created_at=m.get("created_at"), last_used=last_used, size_bytes=size, frees_bytes=frees,
                   lock_sha256=m.get("lock_sha256"), in_use_by=processes_using(path))


def list_envs(root: Path, *, sizes: bool = True) -> list[EnvInfo]:
    """Every environment directory under ``root/envs``, least recently used first."""
    envs_dir = Path(root) / "envs"
    if not envs_dir.is_dir():
        return []
    infos = [env_info(p, sizes=sizes) for p in sorted(envs_dir.iterdir())
             if p.is_dir() and not p.name.startswith(".")]
    return sorted(infos, key=lambda i: (i.last_used or 0.0, i.name))


class EnvInUse(RuntimeError):
    """The environment is being installed or run from; removing it would break that run."""


def remove_env(root: Path, name: str, *, force: bool = False) -> int:
    """Remove one environment (and its compile cache and generated models); returns the bytes freed.
    Raises FileNotFoundError for an unknown name and EnvInUse while an install holds its lock or a process
    runs from it (unless ``force``)."""
    root = Path(root)
    if not name or "/" in name or name in (".", ".."):
        raise FileNotFoundError(f"no environment named {name!r}")
    path = root / "envs" / name
    if not path.is_dir():
        known = ", ".join(i.name for i in list_envs(root, sizes=False)) or "none"
        raise FileNotFoundError(f"no environment named {name!r} under {root / 'envs'} (there: {known})")
    derived = [root / d / name for d in DERIVED_DIRS]
    _, frees = disk_usage([path, *derived])
    try:
        with file_lock(root / "locks" / f"{name}.lock", timeout=0 if not force else None):
            users = processes_using(path)
            if users and not force:
                raise EnvInUse(f"{name} is in use by process(es) {', '.join(map(str, users))}; "
                               "stop them or pass --force")
            # Out of the provisioner's sight first (a rename is atomic), then delete at leisure.
            trash = root / "envs" / f".removing-{name}-{os.getpid()}-{time.time_ns()}"
            path.rename(trash)
            shutil.rmtree(trash, ignore_errors=True)
            for d in derived:
                shutil.rmtree(d, ignore_errors=True)
    except LockTimeout:
        raise EnvInUse(f"{name} is being installed by another process (its lock is held)") from None
    return frees


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?B?)?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """'20G', '20GB', '20GiB', '500M', '0', '1048576' -> bytes (K/M/G/T are powers of 1024)."""
    m = _SIZE.match(text)
    if not m:
        raise ValueError(f"not a size: {text!r} (write e.g. 20G, 500M or a number of bytes)")
    unit = m.group(2).upper()
    return int(float(m.group(1)) * 1024 ** " KMGT".index(unit or " "))


def plan_prune(infos: list[EnvInfo], total_bytes: int, max_bytes: int | None,
               unused_s: float | None = None, now: float | None = None) -> list[EnvInfo]:
    """Which environments to remove, in order: partial ones (an interrupted install) first, those unused for
    longer than ``unused_s``, then complete ones least recently used first until the total is within
    ``max_bytes``. Environments in use are never chosen. Pure: sizes and times come from ``infos``."""
    now = time.time() if now is None else now
    idle = sorted((i for i in infos if not i.in_use_by), key=lambda i: (i.last_used or 0.0, i.name))
    chosen = [i for i in idle if not i.complete]
    if unused_s is not None:
        chosen += [i for i in idle if i.complete and (i.last_used or 0.0) < now - unused_s]
    remaining = total_bytes - sum(i.frees_bytes for i in chosen)
    if max_bytes is not None:
        for i in idle:
            if remaining <= max_bytes:
                break
            if i in chosen:
                continue
            chosen.append(i)
            remaining -= i.frees_bytes
    return chosen


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"

