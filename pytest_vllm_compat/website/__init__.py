"""The static compatibility site rendered from a matrix (see docs/matrix.md).

No build step, no CDN, no external fetch: every page is one HTML file with one inline ``<style>``
(and, on the index, one small inline ``<script>`` for the filters; the page reads fully without
it). Links are relative, so the site works from ``file://`` and GitHub Pages alike. The pages are
Jinja2 templates (``templates/*.html.j2``) rendered with autoescaping on, so every string that came
from records is escaped; only http(s) URLs become links; a Content-Security-Policy that allows only
the package's own stylesheet and script (``static/``, inlined, allowed by hash) is a second line of
defence should an unescaped string ever slip through.

This module shapes the cell, unclassified and diff pages and writes the site; ``index`` shapes
the index, ``charts`` its SVG plots, ``measures`` the drift and performance views,
``logs`` the server logs, ``base`` what they share.
"""

from __future__ import annotations

import shlex
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from pytest_vllm_compat.matrix import version_key
from pytest_vllm_compat.matrix.cell_types import (
    Cell,
    LockChange,
    Matrix,
    VersionDiff,
    WorkaroundCheck,
    items,
    mapping,
)
from pytest_vllm_compat.website.base import (
    DEFAULT_TITLE,
    STATUS_HELP,
    diff_page_name,
    fmt,
    fmt_duration,
    kind_label,
    page,
    render_page,
)

from . import index as site_index
from . import logs as site_logs
from . import measures as site_measures
from . import upgrade as site_upgrade

__all__ = ["render", "render_site"]


def kv_table(value: object, empty: str) -> dict[str, object]:
    """What ``_macros.kv_table`` shows: ``empty``, an argv list as its command line, or sorted rows."""
    if not value:
        return {"empty": empty, "argv": None, "rows": []}
    if isinstance(value, Mapping):
        return {"empty": None, "argv": None, "rows": [(k, fmt(v)) for k, v in sorted(value.items())]}
    if not isinstance(value, Iterable):
        raise TypeError(f"neither a table nor an argv list: {value!r}")
    # an argv list: show it as the command line it is
    return {"empty": None, "argv": shlex.join(str(a) for a in value), "rows": []}


def _text(value: object) -> str | None:
    return None if value is None else str(value)


def _workaround_check(check: WorkaroundCheck | None) -> dict[str, object] | None:
    """Whether a run with the knowledge base's workaround pin exists for this cell's release, and its result."""
    if not check:
        return None
    return {"pin": check.get("pin"), "verified": bool(check.get("verified")),
            "cells": [{"cell_id": c["cell_id"], "line": c["line"], "installed": c["installed"], "status": c["status"]}
                      for c in check["cells"]]}


def _stack_text(cell: Cell) -> str:
    if not cell.get("stack"):
        return "default (no pins)"
    pins = mapping(mapping(cell.get("provenance")).get("pins"))
    return ", ".join(f"{k}=={v}" for k, v in pins.items()) or str(cell["stack"])


def _cell_context(cell: Cell, siblings: Sequence[Cell],
                  logs: Mapping[str, str]) -> dict[str, object]:
    """Everything ``cell.html.j2`` shows about one cell."""
    status = cell["status"]
    metrics = {k: v for k, v in (cell.get("metrics") or {}).items() if k not in site_measures.HIDDEN_METRICS}
    return {
        "cell_id": cell["cell_id"], "status": status, "status_help": STATUS_HELP.get(status, ""),
        "summary": _text(cell.get("summary")), "regression": bool(cell.get("regression")),
        "category": cell.get("category"), "kind_label": kind_label(cell.get("kind")),
        "title": _text(cell.get("title")), "explanation": _text(cell.get("explanation")),
        "workaround": _text(cell.get("workaround")), "fixed_in": _text(cell.get("fixed_in")),
        "workaround_check": _workaround_check(cell.get("workaround_check")),
        "workaround_attribution": cell.get("workaround_attribution"),  # attribution.apply_verified_pins
        "refs": cell.get("refs") or [],
        "release": cell.get("release") or cell["vllm_version"], "distribution": cell.get("distribution"),
        "stack": _stack_text(cell),
        "platform": _text(cell["platform"]), "families": ", ".join(cell.get("families") or []),
        "model_source": cell.get("model_source"),
        "first_seen": _text(cell.get("first_seen")), "last_seen": _text(cell.get("last_seen")),
        "siblings": [{"cell_id": s["cell_id"], "vllm_version": s["vllm_version"], "status": s["status"]}
                     for s in siblings],
        "runs": [{"run_id": r["run_id"], "status": r["status"], "started_at": r.get("started_at"),
                  "counts": ", ".join(f"{k}: {v}" for k, v in sorted(r["counts"].items()))}
                 for r in cell.get("runs") or []],
        "tests": [{"test_id": t.get("test_id"), "run_id": t.get("run_id"), "outcome": t.get("outcome"),
                   "status": str(t.get("status")), "duration": fmt_duration(t.get("duration_s")),
                   "server_start": fmt_duration(t["server_start_s"]) if t.get("server_start_s") else "",
                   "reason": t.get("error_summary") or t.get("skip_reason") or "",
                   "log": site_logs.log_link(t.get("log_path"), logs)}
                  for t in cell.get("tests") or []],
        "log_excerpt": cell.get("log_excerpt"), "excerpt_href": site_logs.excerpt_href(cell),
        "drift": site_measures.drift_section(cell), "performance": site_measures.performance_section(cell),
        "metrics": kv_table(metrics, "No metrics reported."),
        "provenance": kv_table(cell.get("provenance"), "No provenance recorded."),
        "locks": [{"sha256": lk["sha256"], "packages": lk.get("packages"), "runs": ", ".join(lk.get("runs") or []),
                   "stored": bool(lk.get("stored"))} for lk in cell.get("locks") or []],
        "lock_changes": [_lock_change(ch) for ch in cell.get("lock_changes") or []],
        "serve_args": kv_table(cell.get("serve_args"), "No serve args recorded."),
        "argv": " ".join(str(a) for a in items(cell.get("argv"))),
        "env": kv_table(cell.get("env"), "No environment recorded."),
    }


def _lock_change(ch: LockChange) -> dict[str, object]:
    changed = ch["changed"]
    return {"old": ch["from"], "new": ch["to"],
            "changed": None if changed is None else
            [{"package": c["package"], "old": c["from"] or "absent", "new": c["to"] or "absent"} for c in changed]}


def _cell_page(cell: Cell, siblings: Sequence[Cell], title: str,
               logs: Mapping[str, str] | None = None) -> str:
    heading = f"{cell['model']} · {cell['feature']} · vLLM {cell['vllm_version']} · {cell['platform']}"
    return page("cell.html.j2", title=f"{heading} — {title}", heading=heading,
                c=_cell_context(cell, siblings, logs or {}))


def _index(matrix: Matrix, title: str) -> str:
    return render_page("index.html.j2", site_index.index_context(matrix), title=title, script=True)


def _unclassified_page(matrix: Matrix, title: str) -> str:
    ids = set(matrix.get("unclassified") or [])
    return page("unclassified.html.j2", title=f"Unclassified failures — {title}", heading="Unclassified failures",
                cells=[c for c in matrix["cells"] if c["cell_id"] in ids])


def _diff_page(diff: VersionDiff, title: str) -> str:
    heading = f"vLLM {diff['a']} → {diff['b']}"
    return page("diff.html.j2", title=f"{heading} — {title}", heading=heading, a=diff["a"], b=diff["b"],
                changes=diff["changes"])


def render_site(matrix: Matrix, out_dir: Path | str, title: str = DEFAULT_TITLE,
                locks: Mapping[str, str] | None = None, records: Sequence[Mapping[str, object]] = ()) -> Path:
    """Write ``index.html``, ``cells/<cell_id>.html``, ``unclassified.html``, one ``diff-<a>-<b>.html`` per
    pair of consecutive versions, ``upgrade.html`` with ``upgrade-<x>-<y>.html`` per pair of published releases
    (website/upgrade.py) and ``locks/<sha256>.txt`` for each lock file a cell names (``locks``: {sha256: text});
    returns the index path."""
    out = Path(out_dir)
    (out / "cells").mkdir(parents=True, exist_ok=True)
    wanted = {lk["sha256"] for c in matrix["cells"] for lk in c.get("locks") or [] if lk.get("stored")}
    for sha in sorted(wanted & set(locks or {})):
        (out / "locks").mkdir(exist_ok=True)
        (out / "locks" / f"{sha}.txt").write_text((locks or {})[sha], encoding="utf-8")
    logs = site_logs.copy_logs(matrix, out)
    index = out / "index.html"
    index.write_text(_index(matrix, title), encoding="utf-8")
    groups: dict[tuple[str, str, str], list[Cell]] = defaultdict(list)
    for c in matrix["cells"]:
        groups[(c["model"], c["platform"], c["feature"])].append(c)
    for group in groups.values():
        siblings = sorted(group, key=lambda c: version_key(c["vllm_version"]))
        for c in siblings:
            (out / "cells" / f"{c['cell_id']}.html").write_text(_cell_page(c, siblings, title, logs),
                                                                 encoding="utf-8")
    (out / "unclassified.html").write_text(_unclassified_page(matrix, title), encoding="utf-8")
    for d in site_index.diffs(matrix) + list(matrix.get("stack_diffs") or []):
        (out / diff_page_name(d["a"], d["b"])).write_text(_diff_page(d, title), encoding="utf-8")
    # upgrade.html and one upgrade page per pair of published releases (``records``: knowledge-base entries)
    site_upgrade.write_pages(matrix, out, title, records, locks)
    return index


render = render_site
