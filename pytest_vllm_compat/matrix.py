"""The compatibility matrix: merge result records from many runs into one cell per
(model, vLLM version, platform, feature), with insights (regressions, first/last passing
version, unclassified failures), and write ``matrix.json``, shields.io badges and the static site.

The record schema is documented in ``docs/records.md``; the matrix schema in ``docs/matrix.md``.
This module knows nothing of pytest: ``vllm-compat matrix RESULTS_DIR... --output DIR`` calls
:func:`main`.
"""

from __future__ import annotations

import hashlib
import json
import re
import statistics
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from itertools import pairwise
from pathlib import Path
from typing import Any

from pytest_vllm_compat import drift, performance
from pytest_vllm_compat.lockfiles import cell_locks
from pytest_vllm_compat.results import model_slug
from pytest_vllm_compat.stacks import canonical_name, line_of, split_line
from pytest_vllm_compat.version_spec import is_final
from pytest_vllm_compat.versions import sort_versions, version_key

MATRIX_SCHEMA = "pytest-vllm-compat/matrix@1"
RECORD_SCHEMA = "pytest-vllm-compat/record@1"
MANIFEST_SCHEMA = "pytest-vllm-compat/manifest@1"

STATUSES = ("pass", "fail", "error", "conflict", "unsupported", "not_applicable", "flaky")
RECORD_STATUSES = ("pass", "fail", "error", "conflict", "unsupported", "not_applicable")
# conflict: the stack (--vllm-with) and the release cannot be installed together (stacks.py)
FAILING = ("fail", "error", "conflict")
SKIPPED = ("unsupported", "not_applicable")
# Statuses that say something about vLLM; the others carry no verdict for regressions.
VERDICT = ("pass", "fail")
UNKNOWN_CATEGORY = "unknown"
_UNKNOWN_CATEGORIES = {"", "unknown", "unclassified", "none"}
_OUTCOME_TO_STATUS = {"passed": "pass", "failed": "fail", "error": "error", "skipped": "not_applicable"}
_SEVERITY = {"fail": 4, "error": 3, "conflict": 2, "pass": 1}
_SUMMARY_MAX = 200


class MatrixError(Exception):
    """A results directory cannot be turned into a matrix (e.g. it holds no records)."""


# --------------------------------------------------------------------------- versions


# --------------------------------------------------------------------------- loading


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


# --------------------------------------------------------------------------- classification


def _is_unknown_category(category: Any) -> bool:
    return category is None or str(category).strip().lower() in _UNKNOWN_CATEGORIES


Classifier = Callable[[str, str | None, str | None], Mapping[str, Any] | None]


def default_classifier(error_text: str, log_text: str | None, version: str | None) -> dict[str, Any] | None:
    """Classify with the failure knowledge base (``pytest_vllm_compat.classify``)."""
    from pytest_vllm_compat.classify import classify, exception_lines

    return dict(classify(exception_lines(error_text), log_text, version=version).to_dict())


def _classification_of(rec: Mapping[str, Any], classifier: Classifier | None,
                       cache: dict[tuple[Any, ...], Mapping[str, Any] | None]) -> Mapping[str, Any] | None:
    """The record's classification; a failing record without one (or with an unknown category)
    is classified again -- the knowledge base may have learned the failure since the run."""
    cls = rec.get("classification")
    cls = cls if isinstance(cls, Mapping) else None
    if _status_of(rec) not in FAILING or classifier is None:
        return cls
    if cls is not None and not _is_unknown_category(cls.get("category")):
        return cls
    error = rec.get("error") or {}
    error_text = str(error.get("text") or error.get("summary") or "")
    log_text = rec.get("log_excerpt")
    version = rec.get("vllm_version")
    key = (error_text, log_text, version)
    if key not in cache:
        cache[key] = classifier(error_text, log_text, version)
    new = cache[key]
    if new is not None and not _is_unknown_category(new.get("category")):
        return new
    return cls or new


# --------------------------------------------------------------------------- helpers


def _status_of(rec: Mapping[str, Any]) -> str:
    status = rec.get("status")
    if status in RECORD_STATUSES:
        return str(status)
    return _OUTCOME_TO_STATUS.get(str(rec.get("outcome")), "error")


def _one_line(text: Any, limit: int = _SUMMARY_MAX) -> str:
    line = " ".join(str(text or "").split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def cell_slug(model: str, vllm_version: str, platform: str, feature: str) -> str:
    """A stable, filename-safe id: a readable slug plus a short hash of the exact key, so two
    keys that slug alike (``a:b`` and ``a-b``) never collide."""
    key = "\x1f".join((model, vllm_version, platform, feature))
    readable = re.sub(r"[^a-z0-9._]+", "-", f"{model}--{vllm_version}--{platform}--{feature}".lower())
    readable = re.sub(r"-{3,}", "--", readable).strip("-.")[:96]
    return f"{readable}-{hashlib.sha1(key.encode()).hexdigest()[:8]}"


def _chrono_key(rec: Mapping[str, Any]) -> tuple[str, str, str]:
    return (str(rec.get("finished_at") or rec.get("started_at") or ""), str(rec.get("run_id") or ""),
            str(rec.get("test_id") or ""))


def _worst(statuses: Sequence[str]) -> str:
    """The status of one run of a cell: the worst of its tests (fail > error > pass); a cell
    whose tests were all skipped is ``not_applicable`` if all were so, else ``unsupported``."""
    decisive = [s for s in statuses if s in _SEVERITY]
    if decisive:
        return max(decisive, key=_SEVERITY.__getitem__)
    if statuses and all(s == "not_applicable" for s in statuses):
        return "not_applicable"
    return "unsupported"


def merge_run_statuses(per_run: Sequence[str]) -> str:
    """The status of a cell across runs: ``flaky`` when runs disagree between pass and
    fail/error; otherwise the runs' common verdict (the worst one, fail over error) -- runs in
    which every test was skipped say nothing when another run has a verdict."""
    decisive = [s for s in per_run if s in _SEVERITY]
    if "pass" in decisive and any(s in FAILING for s in decisive):
        return "flaky"
    return _worst(list(per_run))


def _merge_metrics(recs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Numeric metrics: the median of the values the cell's tests reported; anything else: the
    latest value. The server's start time and restarts are folded in as ``server_start_s`` and
    ``server_restarts``."""
    values: dict[str, list[Any]] = defaultdict(list)
    for rec in recs:  # chronological
        for k, v in (rec.get("metrics") or {}).items():
            if v is not None:
                values[str(k)].append(v)
        server = rec.get("server") or {}
        if isinstance(server.get("start_time_s"), (int, float)):
            values["server_start_s"].append(server["start_time_s"])
        if isinstance(server.get("restarts"), int):
            values["server_restarts"].append(server["restarts"])
    merged: dict[str, Any] = {}
    for k, vs in values.items():
        nums = [v for v in vs if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if k == "server_restarts":
            merged[k] = max(nums)
        elif nums and len(nums) == len(vs):
            med = statistics.median(nums)
            merged[k] = int(med) if all(isinstance(v, int) for v in nums) and med == int(med) else med
        else:
            merged[k] = vs[-1]
    return merged


def _test_entry(rec: Mapping[str, Any]) -> dict[str, Any]:
    error = rec.get("error") or {}
    server = rec.get("server") or {}
    return {
        "test_id": rec.get("test_id"),
        "test_name": rec.get("test_name"),
        "outcome": rec.get("outcome"),
        "status": _status_of(rec),
        "duration_s": rec.get("duration_s"),
        "server_start_s": rec.get("server_start_s"),
        "run_id": rec.get("run_id"),
        "started_at": rec.get("started_at"),
        "error_summary": _one_line(error.get("summary")) if error.get("summary") else None,
        "skip_reason": rec.get("skip_reason"),
        "log_path": server.get("log_path"),
    }


# --------------------------------------------------------------------------- cells


def _build_cell(key: tuple[str, str, str, str], recs: list[dict[str, Any]],
                classifications: Sequence[Mapping[str, Any] | None],
                manifests_by_run: Mapping[str, Mapping[str, Any]],
                locks: Mapping[str, str] | None = None) -> dict[str, Any]:
    model, version, platform, feature = key
    release, stack = split_line(version)
    order = sorted(range(len(recs)), key=lambda i: _chrono_key(recs[i]))
    recs = [recs[i] for i in order]
    classifications = [classifications[i] for i in order]
    statuses = [_status_of(r) for r in recs]

    by_run: dict[str, list[int]] = defaultdict(list)
    for i, rec in enumerate(recs):
        by_run[str(rec.get("run_id") or "")].append(i)
    runs: list[dict[str, Any]] = []
    for run_id, idx in by_run.items():
        run_statuses = [statuses[i] for i in idx]
        runs.append({
            "run_id": run_id,
            "status": _worst(run_statuses),
            "counts": dict(Counter(run_statuses)),
            "started_at": min((str(recs[i].get("started_at") or "") for i in idx), default=""),
        })
    status = merge_run_statuses([r["status"] for r in runs])

    # The representative test: the latest of the worst status (the failing one for flaky cells).
    if status == "flaky":
        wanted = max((s for s in statuses if s in FAILING), key=_SEVERITY.__getitem__)
    elif status in SKIPPED:
        wanted = status if status in statuses else statuses[-1]
    else:
        wanted = status
    rep = max(i for i, s in enumerate(statuses) if s == wanted) if wanted in statuses else len(recs) - 1
    rep_rec, rep_cls = recs[rep], classifications[rep] or {}

    category = kind = title = explanation = workaround = workaround_pin = fixed_in = None
    refs: list[str] = []
    if wanted in FAILING:
        category = rep_cls.get("category")
        category = UNKNOWN_CATEGORY if _is_unknown_category(category) else str(category)
        kind = rep_cls.get("kind") or ("vllm" if wanted == "fail" else "infrastructure")
        title = rep_cls.get("title")
        explanation = rep_cls.get("explanation")
        workaround = rep_cls.get("workaround")
        workaround_pin = rep_cls.get("workaround_pin") or None
        fixed_in = rep_cls.get("fixed_in")
        refs = [str(r) for r in rep_cls.get("refs") or []]

    counts = {s: 0 for s in RECORD_STATUSES}
    counts.update(Counter(statuses))
    latest = recs[-1]
    server = latest.get("server") or {}
    distribution = ",".join(sorted({str(r.get("distribution")) for r in recs if r.get("distribution")}))
    provenance = latest.get("provenance") or {}
    if not provenance:
        envs = (manifests_by_run.get(str(latest.get("run_id"))) or {}).get("environments") or {}
        provenance = (envs.get(f"{latest.get('distribution')}-{version}") or {}).get("provenance") or {}
    error = rep_rec.get("error") or {}

    if status == "pass":
        summary = f"{counts['pass']} of {len(recs)} tests passed" + (
            f" in {len(runs)} runs" if len(runs) > 1 else "")
        if counts["pass"] < len(recs):
            summary += f" ({len(recs) - counts['pass']} skipped)"
    elif status in FAILING:
        summary = f"{title or category}: {error.get('summary') or rep_rec.get('outcome') or status}"
    elif status == "flaky":
        passed = [r["run_id"] for r in runs if r["status"] == "pass"]
        failed = [r["run_id"] for r in runs if r["status"] in FAILING]
        summary = (f"flaky: passed in {len(passed)} run(s), {wanted} in {len(failed)} run(s) -- "
                   f"{title or category}: {error.get('summary') or ''}")
    else:
        summary = rep_rec.get("skip_reason") or status.replace("_", " ")

    return {
        "cell_id": cell_slug(*key),
        "model": model,
        "families": sorted({str(f) for r in recs for f in r.get("families") or []}),
        "model_source": latest.get("model_source"),
        "vllm_version": version,  # the column: the release, +stack name for a pinned stack (stacks.line_of)
        "release": release,
        "stack": stack,
        "distribution": distribution,
        "platform": platform,
        "device": latest.get("device"),
        "feature": feature,
        "status": status,
        "category": category,
        "kind": kind,
        "title": title,
        "summary": _one_line(summary),
        "explanation": explanation,
        "refs": refs,
        "workaround": workaround,
        "workaround_pin": workaround_pin,
        "fixed_in": fixed_in,
        "regression": False,
        "tests": [_test_entry(r) for r in recs],
        "counts": counts,
        "runs": sorted(runs, key=lambda r: (r["started_at"], r["run_id"])),
        "provenance": provenance,
        **cell_locks(recs, locks or {}),
        "serve_args": server.get("serve_args") or {},
        "argv": server.get("argv") or [],
        "env": server.get("env") or {},
        "log_excerpt": rep_rec.get("log_excerpt") if wanted in FAILING else None,
        "metrics": _merge_metrics(recs),
        "first_seen": min((str(r.get("started_at")) for r in recs if r.get("started_at")), default=None),
        "last_seen": max((str(r.get("finished_at") or r.get("started_at")) for r in recs
                          if r.get("finished_at") or r.get("started_at")), default=None),
    }


# --------------------------------------------------------------------------- insights


def _releases(versions: Sequence[str], manifests: Sequence[Mapping[str, Any]]) -> list[str]:
    """The tested versions plus every final release the runs' package index offered between the oldest and
    the newest tested one: the columns of the site, where a release no run tested shows as a gap."""
    tested = [v for v in versions if version_key(v)[0] == 0]
    if not tested:
        return list(versions)
    lo, hi = version_key(tested[0]), version_key(tested[-1])
    known = {str(r) for m in manifests for r in m.get("index_versions") or [] if is_final(str(r))}
    inside = {r for r in known if lo <= version_key(r) <= hi}
    return sort_versions({*versions, *inside})


def _untested_between(releases: Sequence[str], tested: Sequence[str], a: str | None, b: str) -> list[str]:
    """Releases strictly between ``a`` (None: from the first) and ``b`` that have no cell in ``tested``."""
    ka, kb = (version_key(a) if a else None), version_key(b)
    return [r for r in releases if r not in tested and (ka is None or version_key(r) > ka) and version_key(r) < kb]


def _insights(cells: Sequence[dict[str, Any]], releases: Sequence[str] = ()) -> list[dict[str, Any]]:
    """First/last passing version and regressions per model, platform, feature and dependency stack: a
    stack's lines are compared with the same stack's lines only."""
    groups: dict[tuple[str, str, str, str], dict[str, dict[str, Any]]] = defaultdict(dict)
    for c in cells:
        groups[(c["model"], c["platform"], c["feature"], c.get("stack") or "")][c["vllm_version"]] = c
    plain = [r for r in releases if not split_line(r)[1]]
    out = []
    for (model, platform, feature, stack), by_version in sorted(groups.items()):
        versions = sort_versions(by_version)
        line_releases = [line_of(r, stack) for r in plain]  # the releases, on this stack's line
        passing = [v for v in versions if by_version[v]["status"] == "pass"]
        verdicts = [v for v in versions if by_version[v]["status"] in VERDICT]
        regressions = []
        for prev, nxt in pairwise(verdicts):
            if by_version[prev]["status"] == "pass" and by_version[nxt]["status"] == "fail":
                to_cell = by_version[nxt]
                to_cell["regression"] = True
                regressions.append({
                    "model": model, "platform": platform, "feature": feature, "stack": stack,
                    "from_version": prev, "to_version": nxt,
                    "from_cell_id": by_version[prev]["cell_id"], "to_cell_id": to_cell["cell_id"],
                    "category": to_cell["category"], "summary": to_cell["summary"],
                    # the change happened in to_version or in one of these releases no run tested
                    "untested_between": _untested_between(line_releases, versions, prev, nxt),
                })
        out.append({
            "model": model, "platform": platform, "feature": feature, "stack": stack,
            "versions": versions,
            "statuses": [by_version[v]["status"] for v in versions],
            "first_pass": passing[0] if passing else None,
            "last_pass": passing[-1] if passing else None,
            # the range around first_pass: the newest tested release before it with a failing verdict, and the
            # releases between the two that no run tested (first_pass may be one of them, or earlier)
            "first_pass_after": _last_before(verdicts, by_version, passing[0]) if passing else None,
            "first_pass_untested_before": _untested_between(
                line_releases, versions, _last_before(verdicts, by_version, passing[0]), passing[0]) if passing else [],
            "regressions": regressions,
            "unclassified": [by_version[v]["cell_id"] for v in versions
                             if by_version[v]["status"] in (*FAILING, "flaky")
                             and by_version[v]["category"] == UNKNOWN_CATEGORY],
        })
    return out


def _last_before(verdicts: Sequence[str], by_version: Mapping[str, Mapping[str, Any]], version: str) -> str | None:
    before = [v for v in verdicts if version_key(v) < version_key(version) and by_version[v]["status"] == "fail"]
    return before[-1] if before else None


def _summary_by_version(cells: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = defaultdict(list)
    for c in cells:
        groups[(c["platform"], c["vllm_version"])].append(c)
    out = []
    for (platform, version), cs in sorted(groups.items(), key=lambda kv: (kv[0][0], version_key(kv[0][1]))):
        counts = {s: 0 for s in STATUSES}
        counts.update(Counter(c["status"] for c in cs))
        applicable = len(cs) - counts["unsupported"] - counts["not_applicable"]
        out.append({
            "platform": platform, "vllm_version": version, "counts": counts,
            "cells": len(cs), "applicable": applicable,
            "pass_rate": round(counts["pass"] / applicable, 4) if applicable else None,
        })
    return out


def _runs(records: Sequence[Mapping[str, Any]], manifests: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    runs: dict[str, dict[str, Any]] = {}
    for rec in records:
        run_id = str(rec.get("run_id") or "")
        r = runs.setdefault(run_id, {"run_id": run_id, "hosts": [], "records": 0, "versions": set(),
                                     "started_at": None, "finished_at": None})
        r["records"] += 1
        if rec.get("vllm_version"):
            r["versions"].add(str(rec["vllm_version"]))
        started, finished = rec.get("started_at"), rec.get("finished_at")
        if started and (r["started_at"] is None or started < r["started_at"]):
            r["started_at"] = started
        if finished and (r["finished_at"] is None or finished > r["finished_at"]):
            r["finished_at"] = finished
    for m in manifests:
        run_id = str(m.get("run_id") or "")
        if run_id not in runs:
            continue  # a manifest of a run whose records were not loaded
        r = runs[run_id]
        host = (m.get("host") or {}).get("hostname")
        if host and host not in r["hosts"]:
            r["hosts"].append(host)
        r["versions"].update(str(v) for v in m.get("versions") or [])
        for k in ("started_at", "finished_at"):
            r[k] = m.get(k) or r[k]
        r["plugin_version"] = m.get("plugin_version")
        r["device"] = m.get("device")
        r["os"] = (m.get("host") or {}).get("os")
    for r in runs.values():
        r["versions"] = sort_versions(r["versions"])
    return sorted(runs.values(), key=lambda r: (str(r["started_at"] or ""), r["run_id"]))


def _now() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def build_matrix(records: Sequence[Mapping[str, Any]], manifests: Sequence[Mapping[str, Any]] = (),
                 *, generated_at: str | None = None,
                 classifier: Classifier | None = default_classifier,
                 locks: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Merge records (from any number of runs) into the matrix object described in docs/matrix.md.

    ``locks``: {sha256: lock text} of the environments (``lockfiles.load_locks``), for each cell's package
    list and the packages that changed between its runs. ``classifier`` (re)classifies failing records that carry no classification or an unknown
    category; ``None`` keeps the records' own classifications."""
    groups: dict[tuple[str, str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for rec in records:
        key = (str(rec.get("model") or "?"), line_of(str(rec.get("vllm_version") or "?"), _stack_name(rec)),
               str(rec.get("platform") or "?"), str(rec.get("feature") or "other"))
        groups[key].append(dict(rec))
    cache: dict[tuple[Any, ...], Mapping[str, Any] | None] = {}
    manifests_by_run = {str(m.get("run_id")): m for m in manifests}
    cells = []
    for key, recs in groups.items():
        classifications = [_classification_of(r, classifier, cache) for r in recs]
        cells.append(_build_cell(key, recs, classifications, manifests_by_run, locks))
    cells.sort(key=lambda c: (c["feature"], c["model"], c["platform"], version_key(c["vllm_version"])))
    versions = sort_versions(c["vllm_version"] for c in cells)
    releases = _releases(versions, manifests)
    insights = _insights(cells, releases)  # also flags regression cells
    _check_workarounds(cells)
    drift_rows = drift.annotate_cells(cells)
    perf_regressions = performance.annotate_cells(cells)
    return {
        "schema": MATRIX_SCHEMA,
        "generated_at": generated_at or _now(),
        "runs": _runs(records, manifests),
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
        "summary_by_version": _summary_by_version(cells),
        "diffs": [{"a": a, "b": b, "changes": diff_versions({"cells": cells}, a, b)}
                  for a, b in pairwise(versions)],
        "stacks": sorted({c["stack"] for c in cells}),
        "drift": drift_rows,  # per model/platform/dtype/stack: each version's drift verdict against the previous
        "performance_regressions": perf_regressions,
        # per release tested with more than one stack: what each pinned stack changes against the default one
        "stack_diffs": _stack_diffs(cells),
    }


def _stack_name(rec: Mapping[str, Any]) -> str:
    stack = rec.get("stack")
    return str(stack.get("name") or "") if isinstance(stack, Mapping) else ""


def _stack_diffs(cells: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    lines: dict[str, set[str]] = defaultdict(set)
    for c in cells:
        lines[c["release"]].add(c["vllm_version"])
    return [{"release": release, "a": release, "b": other, "stack": split_line(other)[1],
             "changes": diff_versions({"cells": cells}, release, other)}
            for release in sort_versions(lines) if release in lines[release]
            for other in sort_versions(lines[release] - {release})]


def _installed(cell: Mapping[str, Any], package: str) -> str | None:
    prov = cell.get("provenance") or {}
    pins = {canonical_name(k): v for k, v in (prov.get("pins") or {}).items()}
    found = pins.get(package) or next((v for k, v in prov.items() if canonical_name(k) == package
                                       and isinstance(v, str)), None)
    return str(found) if found else None


def _check_workarounds(cells: Sequence[dict[str, Any]]) -> None:
    """For a failing cell whose knowledge-base entry names a workaround pin (``workaround_pin``), the cells of
    the same model, platform, feature and release whose installed packages satisfy the pin, with their status:
    "workaround verified on ..." when one passed; an empty list when no run had such a stack."""
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.version import InvalidVersion, Version

    for c in cells:
        pin = c.get("workaround_pin")
        if not pin or c["status"] not in FAILING:
            continue
        try:
            req = Requirement(str(pin))
        except InvalidRequirement:
            continue
        checks = []
        for other in cells:
            if (other is c or other["vllm_version"] == c["vllm_version"]
                    or (other["model"], other["platform"], other["feature"], other["release"])
                    != (c["model"], c["platform"], c["feature"], c["release"])):
                continue
            installed = _installed(other, canonical_name(req.name))
            try:
                ok = installed is not None and req.specifier.contains(Version(installed), prereleases=True)
            except InvalidVersion:
                ok = False
            if ok:
                checks.append({"cell_id": other["cell_id"], "line": other["vllm_version"], "status": other["status"],
                               "installed": f"{canonical_name(req.name)}=={installed}"})
        c["workaround_check"] = {"pin": str(req), "cells": checks,
                                 "verified": any(ch["status"] == "pass" for ch in checks)}


def diff_versions(matrix: Mapping[str, Any], a: str, b: str) -> list[dict[str, Any]]:
    """Cells whose status differs between vLLM versions ``a`` and ``b`` for the same model,
    platform and feature; a cell present in only one of them is listed with status ``None``."""
    side: dict[str, dict[tuple[str, str, str], Mapping[str, Any]]] = {a: {}, b: {}}
    for c in matrix["cells"]:
        if c["vllm_version"] in side:
            side[c["vllm_version"]][(c["model"], c["platform"], c["feature"])] = c
    out = []
    for key in sorted(set(side[a]) | set(side[b])):
        ca, cb = side[a].get(key), side[b].get(key)
        sa, sb = (ca or {}).get("status"), (cb or {}).get("status")
        if sa == sb:
            continue
        if ca is None or cb is None:
            change = "added" if ca is None else "removed"
        elif sa == "pass" and sb in FAILING:
            change = "regression" if sb == "fail" else "broke"
        elif sa in FAILING and sb == "pass":
            change = "fixed"
        else:
            change = "changed"
        out.append({
            "model": key[0], "platform": key[1], "feature": key[2],
            "a_version": a, "b_version": b, "a_status": sa, "b_status": sb, "change": change,
            "a_cell_id": (ca or {}).get("cell_id"), "b_cell_id": (cb or {}).get("cell_id"),
            "category": (cb or {}).get("category") or (ca or {}).get("category"),
            "summary": (cb or ca or {}).get("summary"),
        })
    return out


# --------------------------------------------------------------------------- output


def badge(matrix: Mapping[str, Any], model: str) -> dict[str, Any]:
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


def bisection_entry(b: Mapping[str, Any]) -> dict[str, Any]:
    """What the matrix keeps of a bisection result: its question, its answer and the tests that flipped."""
    keys = ("good", "bad", "direction", "first_bad", "last_good", "first_fixed", "last_bad", "conclusion",
            "compare_url", "selection", "range_size", "probed", "installed", "wall_s", "interrupted")
    out = {k: b.get(k) for k in keys}
    out["flipped"] = [{k: f.get(k) for k in ("test", "status", "category", "summary")} for f in b.get("flipped") or []]
    return out


def _dump(obj: Any, path: Path) -> None:
    path.write_text(json.dumps(obj, sort_keys=True, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def write_matrix(matrix: Mapping[str, Any], out_dir: Path | str) -> Path:
    """Write ``matrix.json`` and ``badges/<model>.json``; returns the matrix.json path."""
    out = Path(out_dir)
    (out / "badges").mkdir(parents=True, exist_ok=True)
    path = out / "matrix.json"
    _dump(matrix, path)
    for model in matrix.get("models") or sorted({c["model"] for c in matrix["cells"]}):
        _dump(badge(matrix, model), out / "badges" / f"{model_slug(model)}.json")
    return path
