"""Server logs next to the site: each failing cell's log excerpt, and each test's server log when the site is
built where the run's logs are, copied under ``logs/`` and linked relatively. The pages then work wherever
the site is opened or published; a page never shows an absolute path of the machine that ran the test. The
cell page template renders the links (``log_link``, ``excerpt_href``)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

from pytest_vllm_compat.matrix.cell_types import Cell, Matrix

MAX_LOG_BYTES = 2_000_000  # a longer log keeps its last 2 MB (the failure is at the end)
LOGS = "logs"


def excerpt_name(cell_id: str) -> str:
    return f"{cell_id}.excerpt.txt"


def copy_logs(matrix: Matrix, out: Path) -> dict[str, str]:
    """Write the excerpts and copy the logs that exist here; returns {log_path: file name under logs/}."""
    links: dict[str, str] = {}
    target = out / LOGS
    for cell in matrix.get("cells") or []:
        if cell.get("log_excerpt"):
            target.mkdir(parents=True, exist_ok=True)
            (target / excerpt_name(cell["cell_id"])).write_text(str(cell["log_excerpt"]), encoding="utf-8")
        for test in cell.get("tests") or []:
            path = test.get("log_path")
            if not isinstance(path, str) or not path or path in links:
                continue
            src = Path(path)
            if not src.is_file():
                continue
            name = f"{hashlib.sha1(str(path).encode()).hexdigest()[:10]}-{src.name}"
            target.mkdir(parents=True, exist_ok=True)
            with src.open("rb") as f:
                size = src.stat().st_size
                if size > MAX_LOG_BYTES:
                    f.seek(size - MAX_LOG_BYTES)
                (target / name).write_bytes(f.read())
            links[str(path)] = name
    return links


def log_link(path: object, links: Mapping[str, str]) -> dict[str, str | None] | None:
    """A test row's log: the file name and a relative link to the copy (``href`` None: not copied here)."""
    if not path:
        return None
    name = links.get(str(path))
    return {"name": Path(str(path)).name, "href": f"../{LOGS}/{name}" if name is not None else None}


def excerpt_href(cell: Cell) -> str | None:
    """The relative link to the cell's log excerpt as a text file; None without an excerpt."""
    if not cell.get("log_excerpt"):
        return None
    return f"../{LOGS}/{excerpt_name(str(cell['cell_id']))}"
