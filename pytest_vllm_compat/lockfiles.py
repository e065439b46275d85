"""Lock files: the exact set of packages an environment resolved to, kept with the results.

Every provisioned environment writes ``requirements.lock.txt`` (``uv pip freeze`` / ``pip freeze --all``)
beside itself, and its sha256 goes into every record's provenance (``lock_sha256``). At the end of a run
the lock texts are copied into the results directory, content-addressed (``locks/<sha256>.txt``), so a
matrix built on another machine can show them and compare two runs of the same release: the same sha256
means the same packages; a different one lists what changed (a transitive dependency that moved between
two installs of the same vLLM release is visible there).
"""

from __future__ import annotations

import hashlib
import re
import shutil
from collections.abc import Mapping, Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any, TypedDict

from .stacks import canonical_name  # PEP 503, by packaging: Lm_Format.Enforcer is lm-format-enforcer

LOCKS_DIR = "locks"
_SHA = re.compile(r"^[0-9a-f]{64}$")
_PIN = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*(==|===|@)\s*(.+?)\s*$")


def parse_lock(text: str) -> dict[str, str]:
    """``name==version`` (or ``name @ url``) lines -> {canonical name: version or url}; comments, options
    and blank lines ignored."""
    out: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith(("#", "-")):
            continue
        m = _PIN.match(line)
        if m:
            out[canonical_name(m.group(1))] = m.group(3)
    return out


# One package that differs between two locks; "from" is a keyword, hence the functional form.
LockDiff = TypedDict("LockDiff", {"package": str, "from": str | None, "to": str | None})


def diff_locks(old: str, new: str) -> list[LockDiff]:
    """What changed from lock text ``old`` to ``new``, by package: [{"package", "from", "to"}], ``from`` None
    for an added package and ``to`` None for a removed one; sorted by package name."""
    a, b = parse_lock(old), parse_lock(new)
    return [{"package": n, "from": a.get(n), "to": b.get(n)}
            for n in sorted(set(a) | set(b)) if a.get(n) != b.get(n)]


def store_lock(results_dir: Path, lock_file: Path | str | None, sha256: str | None) -> str | None:
    """Copy an environment's lock file into ``results_dir/locks/<sha256>.txt`` (once per content) and return
    that path relative to ``results_dir``; None when there is no lock to keep or it changed since it was
    hashed (the stored copy must be the set the records name)."""
    if not lock_file or not sha256 or not _SHA.match(sha256):
        return None
    src = Path(lock_file)
    try:
        data = src.read_bytes()
    except OSError:
        return None
    if hashlib.sha256(data).hexdigest() != sha256:
        return None
    rel = f"{LOCKS_DIR}/{sha256}.txt"
    dest = Path(results_dir) / rel
    if not dest.exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_suffix(".tmp")
        shutil.copyfile(src, tmp)
        tmp.replace(dest)
    return rel


def load_locks(dirs: Sequence[Path | str]) -> dict[str, str]:
    """{sha256: lock text} from ``<dir>/locks/*.txt`` of every results directory; a file whose content does
    not hash to its name is not trusted and left out."""
    out: dict[str, str] = {}
    for d in dirs:
        for path in sorted(Path(d).glob(f"{LOCKS_DIR}/*.txt")):
            sha = path.stem
            if sha in out or not _SHA.match(sha):
                continue
            data = path.read_bytes()
            if hashlib.sha256(data).hexdigest() == sha:
                out[sha] = data.decode("utf-8", errors="replace")
    return out


def cell_locks(recs: Sequence[Mapping[str, object]], locks: Mapping[str, str]) -> dict[str, Any]:
    """The lock files behind a cell's records (oldest first): each distinct sha256 with the runs that used it
    and its package count, and for each change from one to the next, the packages that changed (None when a
    lock text is not in the results directories)."""
    order: list[str] = []
    runs: dict[str, list[str]] = {}
    for r in recs:  # chronological
        provenance = r.get("provenance")
        sha = provenance.get("lock_sha256") if isinstance(provenance, dict) else None
        if not sha or not isinstance(sha, str):
            continue
        if sha not in runs:
            order.append(sha)
            runs[sha] = []
        run = str(r.get("run_id") or "")
        if run not in runs[sha]:
            runs[sha].append(run)
    entries = [{"sha256": s, "runs": runs[s], "packages": len(parse_lock(locks[s])) if s in locks else None,
                "stored": s in locks} for s in order]
    changes = [{"from": a, "to": b,
                "changed": diff_locks(locks[a], locks[b]) if a in locks and b in locks else None}
               for a, b in pairwise(order)]
    return {"locks": entries, "lock_changes": changes}
