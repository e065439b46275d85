"""Ordering vLLM versions (numerically: 0.9.2 < 0.10.2), shared by the plugin, the matrix and the site."""

from __future__ import annotations

import re
from collections.abc import Iterable


def version_key(version: str) -> tuple[object, ...]:
    """Sort key comparing versions numerically (``0.9.2 < 0.10.2``); PEP 440 when it parses,
    otherwise a natural sort of the dotted parts, after every PEP 440 version."""
    from packaging.version import InvalidVersion, Version

    try:
        return (0, Version(version))
    except InvalidVersion:
        parts = re.split(r"[.\-+_]", version)
        return (1, tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in parts))


def sort_versions(versions: Iterable[str]) -> list[str]:
    return sorted(set(versions), key=version_key)
