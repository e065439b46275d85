"""Reading result records and run manifests from results directories (``docs/records.md``).

A truncated or malformed line is skipped with a warning, a record read twice is kept once.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pytest_vllm_compat.outcomes import MANIFEST_SCHEMA, RECORD_SCHEMA

__all__ = ["MANIFEST_SCHEMA", "RECORD_SCHEMA", "load_manifests", "load_records", "record_files"]


def record_files(directory: Path) -> list[Path]:
    if directory.is_file():
        return [directory]
    return sorted(directory.glob("records/*.jsonl")) + sorted(directory.glob("*.jsonl"))


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            where = "truncated last line" if lineno == len(lines) else "malformed line"
            warnings.warn(f"{path}:{lineno}: {where} skipped ({exc.msg})", stacklevel=3)
            continue
        if not isinstance(obj, dict) or obj.get("schema", RECORD_SCHEMA) != RECORD_SCHEMA:
            warnings.warn(f"{path}:{lineno}: not a {RECORD_SCHEMA} record, skipped", stacklevel=3)
            continue
        out.append(obj)
    return out


def load_records(dirs: Sequence[Path | str]) -> list[dict[str, Any]]:
    """Every record in ``<dir>/records/*.jsonl`` and ``<dir>/*.jsonl`` of each directory (a
    ``.jsonl`` file may be given directly). A truncated or malformed line is skipped with a
    warning; the same record read twice (same run, test and start time) is kept once."""
    seen: set[tuple[Any, ...]] = set()
    records: list[dict[str, Any]] = []
    for d in dirs:
        for path in record_files(Path(d)):
            for rec in _read_jsonl(path):
                key = (rec.get("run_id"), rec.get("test_id"), rec.get("started_at"))
                if key in seen:
                    continue
                seen.add(key)
                records.append(rec)
    return records


def load_manifests(dirs: Sequence[Path | str]) -> list[dict[str, Any]]:
    """Every run manifest in ``<dir>/manifests/*.json``; unreadable ones are skipped with a warning."""
    manifests: list[dict[str, Any]] = []
    for d in dirs:
        d = Path(d)
        if not d.is_dir():
            continue
        for path in sorted(d.glob("manifests/*.json")):
            try:
                obj = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as exc:
                warnings.warn(f"{path}: unreadable manifest skipped ({exc})", stacklevel=2)
                continue
            if isinstance(obj, dict):
                manifests.append(obj)
    return manifests
