"""Reading result records and run manifests from results directories (``docs/records.md``).

A truncated or malformed line is skipped with a warning, a record read twice is kept once.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path

from pytest_vllm_compat.outcomes import MANIFEST_SCHEMA, RECORD_SCHEMA
from pytest_vllm_compat.record_types import Record
from pytest_vllm_compat.results import read_record_file

__all__ = ["MANIFEST_SCHEMA", "RECORD_SCHEMA", "load_manifests", "load_records", "probe_dir", "record_files"]

# A bisection's or an attribution's results dir holds its answer here; its records are its probes'
PROBE_SUBDIRS = ("bisect", "attribution")


def probe_dir(directory: Path) -> bool:
    """Whether a results dir is a bisection's or an attribution's: its records are probes (a partial selection,
    often run by an older suite), so reports show its answer but its records never join a release's cells."""
    return any((directory / sub).is_dir() for sub in PROBE_SUBDIRS)


def record_files(directory: Path) -> list[Path]:
    if directory.is_file():
        return [directory]
    return sorted(directory.glob("records/*.jsonl")) + sorted(directory.glob("*.jsonl"))


def load_records(dirs: Sequence[Path | str]) -> list[Record]:
    """Every record in ``<dir>/records/*.jsonl`` and ``<dir>/*.jsonl`` of each directory (a
    ``.jsonl`` file may be given directly). A truncated or malformed line is skipped with a
    warning; the same record read twice (same run, test and start time) is kept once."""
    seen: set[tuple[object, ...]] = set()
    records: list[Record] = []
    for d in dirs:
        for path in record_files(Path(d)):
            root = path.parent.parent if path.parent.name == "records" else path.parent
            for rec in read_record_file(path):
                key = (rec.get("run_id"), rec.get("test_id"), rec.get("started_at"))
                if key in seen:
                    continue
                seen.add(key)
                records.append(_resolve_log_paths(rec, root))
    return records


def _resolve_log_paths(rec: Record, root: Path) -> Record:
    """Published records name their server logs relative to their results dir (publish_paths.py): read here,
    they are resolved against it, so the site finds the logs to copy."""
    lp = rec.get("log_path")
    if _relative(lp):
        rec["log_path"] = str(root / str(lp))
    server = rec.get("server")
    if isinstance(server, dict) and _relative(lp := server.get("log_path")):
        server["log_path"] = str(root / str(lp))
    return rec


def _relative(log_path: object) -> bool:
    return isinstance(log_path, str) and bool(log_path) and not log_path.startswith(("/", "~", "$"))


def load_manifests(dirs: Sequence[Path | str]) -> list[dict[str, object]]:
    """Every run manifest in ``<dir>/manifests/*.json``; unreadable ones are skipped with a warning."""
    manifests: list[dict[str, object]] = []
    for given in dirs:
        d = Path(given)
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
