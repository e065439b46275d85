"""Which suite judged a run: the plugin's version plus a digest of the code and knowledge that made the verdicts.

The digest covers the package's source and data files (checks, failure signatures, capability tables,
registries) and the test directories the run was given (the suites and their model registries). Two runs with
the same suite version ran the same checks; the matrix lists the suite versions of the runs it merges, so a
site built from runs of different suites says so instead of comparing them as if they were alike.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

from . import __version__

PACKAGE = Path(__file__).resolve().parent
SUFFIXES = (".py", ".toml", ".json", ".yaml", ".yml")


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*")
                  if p.is_file() and p.suffix in SUFFIXES and "__pycache__" not in p.parts)


def argument_roots(args: Iterable[str], invocation_dir: Path) -> list[Path]:
    """The directories of pytest's path arguments (``suites``, ``suites/test_x.py::test_y`` -> ``suites``)."""
    roots: set[Path] = set()
    for a in args:
        if a.startswith("-"):
            continue
        p = Path(a.split("::", 1)[0])
        p = p if p.is_absolute() else invocation_dir / p
        if p.is_dir():
            roots.add(p.resolve())
        elif p.is_file():
            roots.add(p.resolve().parent)
    return sorted(roots)


def suite_digest(roots: Iterable[Path], package: Path = PACKAGE) -> str:
    """sha256 over (name, content) of the package's files and of the files under ``roots``; names are
    relative to their root, so the digest does not depend on where the checkout lives."""
    h = hashlib.sha256()
    for label, root in [("package", package), *((f"tests:{r.name}", r) for r in sorted(set(roots)))]:
        for f in _files(root):
            h.update(f"{label}/{f.relative_to(root).as_posix()}\0".encode())
            h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()


def suite_version(roots: Iterable[Path], package: Path = PACKAGE) -> str:
    """``0.1.0+<12 hex>``: the plugin version and the digest's first 12 hex digits."""
    return f"{__version__}+{suite_digest(roots, package)[:12]}"
