"""No module of the package shadows a standard-library module: tiny_model.py runs as a script from the package
directory (its directory is then first on sys.path), and a module there named like a stdlib one (a `bisect.py`
did) replaces it for everything that script imports: transformers' `import random` then fails."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest_vllm_compat


def test_no_package_module_is_named_like_a_stdlib_module() -> None:
    pkg = Path(pytest_vllm_compat.__file__).parent
    # modules, and subpackages (a directory with an __init__.py is importable by its name too)
    names = ({p.stem for p in pkg.glob("*.py")} | {p.parent.name for p in pkg.glob("*/__init__.py")}) - {"__init__"}
    # `site` too: the interpreter imports it before a script's directory joins sys.path, but under `python -S` a
    # script's later `import site` would find ours, and the name misleads readers
    shadowing = sorted(names & set(sys.stdlib_module_names))
    assert shadowing == [], f"rename {shadowing}: they shadow the standard library for scripts run from {pkg}"


def test_no_two_test_files_share_a_basename() -> None:
    """pytest's default import mode imports a test file by its basename: two files of one name (suites/ and
    tests/unit/ both had test_drift.py) make `pytest` from the repo root exit with "import file mismatch"."""
    root = Path(__file__).resolve().parents[2]
    seen: dict[str, Path] = {}
    clashes = []
    for path in sorted([*root.glob("suites/**/test_*.py"), *root.glob("tests/**/test_*.py")]):
        if "__init__.py" in {p.name for p in path.parent.iterdir()}:
            continue  # a package's module is imported by its dotted name
        if path.name in seen:
            clashes.append(f"{seen[path.name].relative_to(root)} and {path.relative_to(root)}")
        seen[path.name] = path
    assert not clashes, clashes
