"""The compatibility matrix: merge result records from many runs into one cell per
(model, vLLM version, platform, feature), with insights (regressions, first/last passing
version, unclassified failures), and write ``matrix.json`` and shields.io badges.

The record schema is documented in ``docs/records.md``; the matrix schema in ``docs/matrix.md``.
This module knows nothing of pytest: ``vllm-compat matrix RESULTS_DIR... --output DIR``
(``cli.matrix_main``) calls :func:`build_matrix` and :func:`write_matrix`, then renders the site.
Its parts: ``records`` (loading), ``cells`` (statuses, classification, cells) and
``insights`` (regressions, diffs, workaround checks); their public names are importable from here.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Mapping, Sequence
from itertools import pairwise
from pathlib import Path

from pytest_vllm_compat import drift, performance
from pytest_vllm_compat.matrix.cell_types import Cell, Matrix, MatrixCells, RunSummary, items, mapping
from pytest_vllm_compat.matrix.cells import (
    UNKNOWN_CATEGORY,
    Classifier,
    ClassifierCache,
    build_cell,
    classification_of,
    default_classifier,
    merge_run_statuses,
)
from pytest_vllm_compat.matrix.insights import (
    check_workarounds,
    diff_versions,
    release_columns,
    stack_diffs,
    summary_by_version,
    version_insights,
)
from pytest_vllm_compat.matrix.records import load_manifests, load_records, probe_dir, record_files
from pytest_vllm_compat.outcomes import FAILING, MATRIX_SCHEMA, SKIPPED
from pytest_vllm_compat.record_types import Record
from pytest_vllm_compat.results import model_slug
from pytest_vllm_compat.stacks import line_of
from pytest_vllm_compat.timestamps import now_iso
from pytest_vllm_compat.versions import sort_versions, version_key

__all__ = [
    "FAILING",
    "UNKNOWN_CATEGORY",
    "MatrixError",
    "badge",
    "bisection_entry",
    "build_matrix",
    "diff_versions",
    "load_manifests",
    "load_records",
    "merge_run_statuses",
    "probe_dir",
    "record_files",
    "sort_versions",
    "version_key",
    "write_matrix",
]

UNRECORDED_SUITE = "unrecorded"  # runs from before manifests named their suite version


class MatrixError(Exception):
    """A results directory cannot be turned into a matrix (e.g. it holds no records)."""


def _runs(records: Sequence[Record], manifests: Sequence[Mapping[str, object]]) -> list[RunSummary]:
    runs: dict[str, RunSummary] = {}
    versions: dict[str, set[str]] = {}
    for rec in records:
        run_id = str(rec.get("run_id") or "")
        r = runs.setdefault(run_id, {"run_id": run_id, "hosts": [], "records": 0, "versions": [],
                                     "started_at": None, "finished_at": None})
        run_versions = versions.setdefault(run_id, set())
        r["records"] += 1
        if rec.get("vllm_version"):
            run_versions.add(str(rec["vllm_version"]))
        started, finished = rec.get("started_at"), rec.get("finished_at")
        if isinstance(started, str) and started and (r["started_at"] is None or started < str(r["started_at"])):
            r["started_at"] = started
        if isinstance(finished, str) and finished and (r["finished_at"] is None or finished > str(r["finished_at"])):
            r["finished_at"] = finished
    for m in manifests:
        run_id = str(m.get("run_id") or "")
        if run_id not in runs:
            continue  # a manifest of a run whose records were not loaded
        r = runs[run_id]
        host = mapping(m.get("host")).get("hostname")
        if host and host not in r["hosts"]:
            r["hosts"].append(str(host))
        versions[run_id].update(str(v) for v in items(m.get("versions")))
        r["started_at"] = m.get("started_at") or r["started_at"]
        r["finished_at"] = m.get("finished_at") or r["finished_at"]
        r["plugin_version"] = m.get("plugin_version")
        r["suite_version"] = m.get("suite_version")
        r["device"] = m.get("device")
        r["os"] = mapping(m.get("host")).get("os")
        eager = mapping(mapping(m.get("options")).get("vllm_eager_knob_servers")).get("value")
        if str(eager).lower() in ("true", "1"):  # the main job's quick mode; published campaigns never use it
            r["eager_knob_servers"] = True
    for run_id, r in runs.items():
        r["versions"] = sort_versions(versions[run_id])
    return sorted(runs.values(), key=lambda r: (str(r["started_at"] or ""), r["run_id"]))


def _now() -> str:
    return now_iso()


def build_matrix(records: Sequence[Record], manifests: Sequence[Mapping[str, object]] = (),
                 *, generated_at: str | None = None,
                 classifier: Classifier | None = default_classifier,
                 locks: Mapping[str, str] | None = None,
                 perf_comparisons: Sequence[Mapping[str, object]] = ()) -> Matrix:
    """Merge records (from any number of runs) into the matrix object described in docs/matrix.md.

    ``locks``: {sha256: lock text} of the environments (``lockfiles.load_locks``), for each cell's package
    list and the packages that changed between its runs. ``perf_comparisons``: interleaved performance
    comparisons (``perf_compare.SCHEMA``), the only source of performance verdicts between releases. ``classifier`` (re)classifies failing records that carry no classification or an unknown
    category; ``None`` keeps the records' own classifications."""
    groups: dict[tuple[str, str, str, str], list[Record]] = defaultdict(list)
    for rec in records:
        key = (str(rec.get("model") or "?"), line_of(str(rec.get("vllm_version") or "?"), _stack_name(rec)),
               str(rec.get("platform") or "?"), str(rec.get("feature") or "other"))
        groups[key].append(rec.copy())
    cache: ClassifierCache = {}
    manifests_by_run = {str(m.get("run_id")): m for m in manifests}
    cells: list[Cell] = []
    for key, recs in groups.items():
        classifications = [classification_of(r, classifier, cache) for r in recs]
        cells.append(build_cell(key, recs, classifications, manifests_by_run, locks))
    cells.sort(key=lambda c: (c["feature"], c["model"], c["platform"], version_key(c["vllm_version"])))
    versions = sort_versions(c["vllm_version"] for c in cells)
    releases = release_columns(versions, manifests)
    insights = version_insights(cells, releases)  # also flags regression cells
    check_workarounds(cells)
    drift_rows = drift.annotate_cells(cells)
    perf_steps = performance.annotate_cells(cells, perf_comparisons)
    runs = _runs(records, manifests)
    return {
        "schema": MATRIX_SCHEMA,
        "generated_at": generated_at or _now(),
        "runs": runs,
        # the suites that judged these runs (suite_identity.py); more than one means the cells mix suites
        "suite_versions": sorted({str(r.get("suite_version") or UNRECORDED_SUITE) for r in runs}),
        "versions": versions,
        "releases": releases,
        "untested_releases": [r for r in releases if r not in versions],
        "models": sorted({c["model"] for c in cells}),
        "families": sorted({f for c in cells for f in c["families"]}),
        "platforms": sorted({c["platform"] for c in cells}),
        "features": sorted({c["feature"] for c in cells}),
        "cells": cells,
        "insights": insights,
        "regressions": [r for i in insights for r in i["regressions"]],
        "unclassified": [cid for i in insights for cid in i["unclassified"]],
        "summary_by_version": summary_by_version(cells),
        "diffs": [{"a": a, "b": b, "changes": diff_versions({"cells": cells}, a, b)}
                  for a, b in pairwise(versions)],
        "stacks": sorted({c["stack"] for c in cells}),
        "drift": drift_rows,  # per model/platform/dtype/stack: each version's drift verdict against the previous
        # per model, each pair of consecutive releases: the interleaved comparison's verdict per measure, or
        # "not compared" (performance.annotate_cells, perf_compare.py)
        "performance_steps": perf_steps,
        "performance_regressions": [s for s in perf_steps if s.get("regressions")],
        # per release tested with more than one stack: what each pinned stack changes against the default one
        "stack_diffs": stack_diffs(cells),
    }


def _stack_name(rec: Record) -> str:
    stack = rec.get("stack")
    return str(stack.get("name") or "") if isinstance(stack, Mapping) else ""


# --------------------------------------------------------------------------- output


def badge(matrix: MatrixCells, model: str) -> dict[str, object]:
    """A shields.io endpoint badge: the model's cells at its latest tested vLLM version, on the default stack
    (pinned stacks only when the model has no default-stack cell)."""
    cells = [c for c in matrix["cells"] if c["model"] == model]
    cells = [c for c in cells if not c.get("stack")] or cells
    latest = sort_versions(c["vllm_version"] for c in cells)[-1]
    at_latest = [c for c in cells if c["vllm_version"] == latest and c["status"] not in SKIPPED]
    passed = sum(c["status"] == "pass" for c in at_latest)
    total = len(at_latest)
    if total == 0:
        message, color = "not applicable", "lightgrey"
    else:
        message = f"{passed}/{total} pass"
        color = "brightgreen" if passed == total else "red" if passed == 0 else "yellow"
    return {"schemaVersion": 1, "label": f"vLLM {latest}", "message": message, "color": color}


def bisection_entry(b: Mapping[str, object]) -> dict[str, object]:
    """What the matrix keeps of a bisection result: its question, its answer and the tests that flipped."""
    keys = ("good", "bad", "direction", "first_bad", "last_good", "first_fixed", "last_bad", "conclusion",
            "compare_url", "selection", "range_size", "probed", "installed", "wall_s", "interrupted")
    out = {k: b.get(k) for k in keys}
    out["flipped"] = [{k: mapping(f).get(k) for k in ("test", "status", "category", "summary")}
                      for f in items(b.get("flipped"))]
    return out


def _dump(obj: object, path: Path) -> None:
    path.write_text(json.dumps(obj, sort_keys=True, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def write_matrix(matrix: Matrix, out_dir: Path | str) -> Path:
    """Write ``matrix.json`` and ``badges/<model>.json``; returns the matrix.json path."""
    out = Path(out_dir)
    (out / "badges").mkdir(parents=True, exist_ok=True)
    path = out / "matrix.json"
    _dump(matrix, path)
    for model in matrix.get("models") or sorted({c["model"] for c in matrix["cells"]}):
        _dump(badge(matrix, model), out / "badges" / f"{model_slug(model)}.json")
    return path
