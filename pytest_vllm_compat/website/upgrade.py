"""The site's upgrade pages: ``upgrade.html`` (a from/to selector: a table of links, one per pair of published
releases, no script) and ``upgrade-<X>-<Y>.html`` per pair, with the sections of ``vllm-compat upgrade``
(:mod:`pytest_vllm_compat.upgrade`), each verdict linked to the two cells and each interface change to the
upstream source file its evidence was read from."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from itertools import combinations
from pathlib import Path

from pytest_vllm_compat import upgrade as up
from pytest_vllm_compat.matrix.cell_types import Matrix
from pytest_vllm_compat.versions import sort_versions
from pytest_vllm_compat.website.base import file_slug, page

INDEX_PAGE = "upgrade.html"
# a verdict's colour: the cell status it reads like
VERDICT_STATUS = {"still works": "pass", "works": "pass", "newly fixed": "pass", "newly broken": "fail",
                  "still broken": "fail", "broken": "fail", "outputs changed": "flaky", "flaky": "flaky",
                  "unsupported": "unsupported", "untested": "not_applicable"}
_SOURCE = re.compile(r"(vllm/[\w/]+\.py)")
_AT = re.compile(r"(vllm/[\w/]+\.py)@v(\d[\w.]*)")


def page_name(x: str, y: str) -> str:
    return f"upgrade-{file_slug(x)}-{file_slug(y)}.html"


def published_releases(matrix: Matrix) -> list[str]:
    """The releases with cells of the default stack (no ``+stack`` lines)."""
    return sort_versions(c["release"] for c in matrix.get("cells") or [] if not c.get("stack"))


def _evidence_url(e: up.Evidence) -> str | None:
    """The upstream source file the evidence was read from, at its release (GitHub), when it names one."""
    m = _AT.search(e.fact)
    if m:
        return f"https://github.com/vllm-project/vllm/blob/v{m.group(2)}/{m.group(1)}"
    version = re.match(r"[\w-]+ (\d[\w.]*):", e.fact)
    src = _SOURCE.search(e.fact.split(":", 1)[1] if ":" in e.fact else "")
    if version and src:
        return f"https://github.com/vllm-project/vllm/blob/v{version.group(1)}/{src.group(1)}"
    return None


def _perf_from_matrix(matrix: Matrix) -> list[dict[str, object]]:
    """The matrix's interleaved performance steps (``performance_steps``), in the perf-compare shape."""
    out = []
    for s in matrix.get("performance_steps") or []:
        if s.get("compared"):
            out.append({"model": s["model"], "a": {"vllm_version": s["from_version"]},
                        "b": {"vllm_version": s["to_version"]}, "measures": s.get("measures") or {},
                        "_file": "interleaved comparison"})
    return out


def _context(r: up.UpgradeReport) -> dict[str, object]:
    models = []
    for sec in r.models:
        rows = []
        for fv in sec.features:
            rows.append({"feature": fv.feature, "platform": fv.platform, "verdict": fv.verdict,
                         "status": VERDICT_STATUS.get(fv.verdict, "not_applicable"), "detail": fv.detail,
                         "from_cell": fv.from_cell_id, "from_status": fv.from_status,
                         "to_cell": fv.to_cell_id, "to_status": fv.to_status,
                         "cause": fv.category, "kb": fv.kb_entry, "refs": fv.refs,
                         "tests": [{"test": tc.test, "change": tc.change, "first": tc.first_changed,
                                    "cause": tc.category, "kb": tc.kb_entry, "note": tc.summary} for tc in fv.tests]})
        order = list(up.VERDICT_ORDER)
        rows.sort(key=lambda row: (order.index(row["verdict"]) if row["verdict"] in order else 99, row["feature"]))
        models.append({"model": sec.model, "rows": rows, "speed": sec.speed})
    interface = [{"release": c.release, "url": c.url, "area": c.area, "silent": c.silent, "old": c.old, "new": c.new,
                  "effect": c.effect, "read_at": ", ".join(c.read_at),
                  "evidence": [{"file": e.file, "fact": e.fact, "url": _evidence_url(e)} for e in c.evidence]}
                 for c in r.interface]
    return {"x": r.from_version, "y": r.to_version, "notes": r.notes, "models": models, "interface": interface,
            "dependencies": r.dependencies, "dependency_notes": r.dependency_notes,
            "untested_releases": r.untested_releases, "untested_features": r.untested_features,
            "from_run": r.from_run, "to_run": r.to_run}


def selector(releases: Sequence[str], current: tuple[str, str] | None = None) -> dict[str, object]:
    """The from/to table: one row per "from" release, one column per "to" release, a link where from < to."""
    return {"releases": list(releases), "current": list(current) if current else None,
            "rows": [{"x": x, "cells": [{"y": y, "page": page_name(x, y) if i < j else None}
                                        for j, y in enumerate(releases)]}
                     for i, x in enumerate(releases)]}


def write_pages(matrix: Matrix, out: Path, title: str,
                records: Sequence[Mapping[str, object]] = (), locks: Mapping[str, str] | None = None,
                check_report: Path | None = None) -> list[Path]:
    """Write ``upgrade.html`` and one page per pair of published releases; returns the pages written."""
    releases = published_releases(matrix)
    check = check_report if check_report is not None else up.default_check_report()
    perf = _perf_from_matrix(matrix)
    written = []
    for x, y in combinations(releases, 2):
        report = up.build_report(x, y, matrix=matrix, records=records, locks=locks, perf=perf, check_report=check)
        heading = f"Upgrade vLLM {x} → {y}"
        path = out / page_name(x, y)
        path.write_text(page("upgrade.html.j2", title=f"{heading} — {title}", heading=heading,
                             sel=selector(releases, (x, y)), r=_context(report)), encoding="utf-8")
        written.append(path)
    index = out / INDEX_PAGE
    index.write_text(page("upgrade_index.html.j2", title=f"Upgrade reports — {title}", heading="Upgrade reports",
                          sel=selector(releases), n_pairs=len(written)), encoding="utf-8")
    return [index, *written]
