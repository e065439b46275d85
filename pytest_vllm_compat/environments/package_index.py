"""The releases the package index offers, as ``pip index versions`` lists them (pip's own configuration
applies), cached under the env dir for ``INDEX_CACHE_TTL_S``. The cached list also serves the manifest,
which keeps the releases a run did not test."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

INDEX_CACHE_TTL_S = 6 * 3600

_AVAILABLE_RE = re.compile(r"Available versions:\s*(.+)")


def parse_pip_index_versions(output: str) -> list[str]:
    m = _AVAILABLE_RE.search(output)
    if not m:
        return []
    return [v.strip() for v in m.group(1).split(",") if v.strip()]


def available_versions(distribution: str, cache_dir: Path, *, base_python: str = sys.executable,
                       refresh: bool = False, quick: bool = False) -> list[str] | None:
    """Versions the configured package index offers (pip's own configuration applies). None: unknown.

    ``quick``: one try with a short timeout (for a hint in an error message, not for a decision)."""
    cache = cache_dir / "index" / f"{distribution}.json"
    if not refresh and cache.is_file():
        try:
            data = json.loads(cache.read_text())
            if time.time() - float(data["at"]) < INDEX_CACHE_TTL_S:
                return list(data["versions"])
        except (ValueError, KeyError):
            pass
    try:
        proc = subprocess.run(
            [base_python, "-m", "pip", "index", "versions", distribution, "--disable-pip-version-check",
             *(["--retries", "0", "--timeout", "10"] if quick else [])],
            capture_output=True, text=True, timeout=30 if quick else 120, check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    versions = parse_pip_index_versions(proc.stdout)
    if not versions:
        return None
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({"at": time.time(), "versions": versions}))
    return versions


def cached_index_versions(distribution: str, cache_dir: Path) -> list[str] | None:
    """The versions the index offered when it was last listed (any age; no network): what the manifest keeps
    so the matrix can show the releases a run did not test."""
    try:
        data = json.loads((cache_dir / "index" / f"{distribution}.json").read_text())
        return [str(v) for v in data["versions"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None
