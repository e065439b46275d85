"""Matrix cells: the statuses of records, runs and cells, the (re)classification of failures, and one cell
per (model, vLLM line, platform, feature) built from its records (``docs/matrix.md``)."""

from __future__ import annotations

import hashlib
import re
import statistics
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence

from pytest_vllm_compat.lockfiles import cell_locks
from pytest_vllm_compat.matrix.cell_types import Cell, CellRun, CellTest, items, mapping
from pytest_vllm_compat.outcomes import (
    FAILING,
    SEVERITY,
    SKIPPED,
    STATUSES,  # a record's statuses; a cell's are CELL_STATUSES
)
from pytest_vllm_compat.record_types import Record
from pytest_vllm_compat.stacks import split_line

# Statuses that say something about vLLM; the others carry no verdict for regressions.
VERDICT = ("pass", "fail")
UNKNOWN_CATEGORY = "unknown"
_UNKNOWN_CATEGORIES = {"", "unknown", "unclassified", "none"}
_OUTCOME_TO_STATUS = {"passed": "pass", "failed": "fail", "error": "error", "skipped": "not_applicable"}
# the statuses that decide a run or a cell (the others are skips), ranked worst first by outcomes.SEVERITY
_DECISIVE = (*FAILING, "pass")
_SUMMARY_MAX = 200


# --------------------------------------------------------------------------- statuses


def _status_of(rec: Mapping[str, object]) -> str:
    status = rec.get("status")
    if status in STATUSES:
        return str(status)
    return _OUTCOME_TO_STATUS.get(str(rec.get("outcome")), "error")


def _worst(statuses: Sequence[str]) -> str:
    """The status of one run of a cell: the worst of its tests (fail > error > pass); a cell
    whose tests were all skipped is ``not_applicable`` if all were so, else ``unsupported``."""
    decisive = [s for s in statuses if s in _DECISIVE]
    if decisive:
        return min(decisive, key=SEVERITY.index)
    if statuses and all(s == "not_applicable" for s in statuses):
        return "not_applicable"
    return "unsupported"


def test_key(rec: Mapping[str, object]) -> str:
    """A test's identity across runs: its node id without xdist's ``@group`` suffix (the name if it has none)."""
    return str(rec.get("test_id") or rec.get("test_name") or "").split("@", 1)[0]


def merge_test_statuses(per_test: Mapping[str, Sequence[str]]) -> tuple[str, dict[str, str]]:
    """The status of a cell from each test's statuses across runs: a test is ``flaky`` when it both passed and
    failed (or errored); the cell is ``flaky`` when one of its tests is, else the worst of its tests' statuses.
    A partial run (a bisection's two tests) merged into a full run's cell counts each test once."""
    merged = {key: merge_run_statuses(statuses) for key, statuses in per_test.items()}
    if any(s == "flaky" for s in merged.values()):
        return "flaky", merged
    return _worst(list(merged.values())), merged


def merge_run_statuses(per_run: Sequence[str]) -> str:
    """The status of a cell across runs: ``flaky`` when runs disagree between pass and
    fail/error; otherwise the runs' common verdict (the worst one, fail over error) -- runs in
    which every test was skipped say nothing when another run has a verdict."""
    decisive = [s for s in per_run if s in _DECISIVE]
    if "pass" in decisive and any(s in FAILING for s in decisive):
        return "flaky"
    return _worst(list(per_run))


# --------------------------------------------------------------------------- classification


def _is_unknown_category(category: object) -> bool:
    return category is None or str(category).strip().lower() in _UNKNOWN_CATEGORIES


ClassificationMap = Mapping[str, object]  # a record's ``classification`` (classify.Classification.to_dict)
Classifier = Callable[[str, str | None, str | None], ClassificationMap | None]
ClassifierCache = dict[tuple[str, object, object], ClassificationMap | None]


def default_classifier(error_text: str, log_text: str | None, version: str | None) -> dict[str, object] | None:
    """Classify with the failure knowledge base (``pytest_vllm_compat.classify``)."""
    from pytest_vllm_compat.classify import classify, exception_lines

    return dict(classify(exception_lines(error_text), log_text, version=version).to_dict())


def current_facts(cls: ClassificationMap) -> ClassificationMap:
    """A stored classification with today's knowledge-base facts of its entry: where it was fixed, its refs,
    workaround and pin (the title and explanation keep the values the run's log filled in). A bisection that
    found the fixed release after the run shows on that run's cells."""
    from pytest_vllm_compat.classify import load_knowledge_base

    rule = next((r for r in load_knowledge_base() if r.id == cls.get("id")), None)
    if rule is None:
        return cls
    return {**cls, "fixed_in": rule.fixed_in, "refs": list(rule.refs), "workaround": rule.workaround,
            "workaround_pin": rule.workaround_pin}


def classification_of(rec: Mapping[str, object], classifier: Classifier | None,
                      cache: ClassifierCache) -> ClassificationMap | None:
    """The record's classification; a failing record without one (or with an unknown category)
    is classified again -- the knowledge base may have learned the failure since the run."""
    cls = rec.get("classification")
    cls = cls if isinstance(cls, Mapping) else None
    if _status_of(rec) not in FAILING or classifier is None:
        return cls
    if cls is not None and not _is_unknown_category(cls.get("category")):
        return current_facts(cls) if classifier is default_classifier else cls
    error = mapping(rec.get("error"))
    error_text = str(error.get("text") or error.get("summary") or "")
    log_text = _text_or_none(rec.get("log_excerpt"))
    version = _text_or_none(rec.get("vllm_version"))
    key = (error_text, log_text, version)
    if key not in cache:
        cache[key] = classifier(error_text, log_text, version)
    new = cache[key]
    if new is not None and not _is_unknown_category(new.get("category")):
        return new
    return cls or new


# --------------------------------------------------------------------------- cells


def _text_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _one_line(text: object, limit: int = _SUMMARY_MAX) -> str:
    line = " ".join(str(text or "").split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def cell_slug(model: str, vllm_version: str, platform: str, feature: str) -> str:
    """A stable, filename-safe id: a readable slug plus a short hash of the exact key, so two
    keys that slug alike (``a:b`` and ``a-b``) never collide."""
    key = "\x1f".join((model, vllm_version, platform, feature))
    readable = re.sub(r"[^a-z0-9._]+", "-", f"{model}--{vllm_version}--{platform}--{feature}".lower())
    readable = re.sub(r"-{3,}", "--", readable).strip("-.")[:96]
    return f"{readable}-{hashlib.sha1(key.encode()).hexdigest()[:8]}"


def _chrono_key(rec: Mapping[str, object]) -> tuple[str, str, str]:
    return (str(rec.get("finished_at") or rec.get("started_at") or ""), str(rec.get("run_id") or ""),
            str(rec.get("test_id") or ""))


def _merge_metrics(recs: Sequence[Mapping[str, object]]) -> dict[str, object]:
    """Numeric metrics: the median of the values the cell's tests reported; anything else: the
    latest value. The server's start time and restarts are folded in as ``server_start_s`` and
    ``server_restarts``."""
    values: dict[str, list[object]] = defaultdict(list)
    for rec in recs:  # chronological
        for k, v in mapping(rec.get("metrics")).items():
            if v is not None:
                values[str(k)].append(v)
        server = mapping(rec.get("server"))
        start, restarts = server.get("start_time_s"), server.get("restarts")
        if isinstance(start, (int, float)):
            values["server_start_s"].append(start)
        if isinstance(restarts, int):
            values["server_restarts"].append(restarts)
    merged: dict[str, object] = {}
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


def _test_entry(rec: Mapping[str, object]) -> CellTest:
    error = mapping(rec.get("error"))
    server = mapping(rec.get("server"))
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


def build_cell(key: tuple[str, str, str, str], recs: Sequence[Record],
               classifications: Sequence[ClassificationMap | None],
               manifests_by_run: Mapping[str, Mapping[str, object]],
               locks: Mapping[str, str] | None = None) -> Cell:
    model, version, platform, feature = key
    release, stack = split_line(version)
    order = sorted(range(len(recs)), key=lambda i: _chrono_key(recs[i]))
    recs = [recs[i] for i in order]
    classifications = [classifications[i] for i in order]
    statuses = [_status_of(r) for r in recs]

    by_run: dict[str, list[int]] = defaultdict(list)
    for i, rec in enumerate(recs):
        by_run[str(rec.get("run_id") or "")].append(i)
    runs: list[CellRun] = []
    for run_id, idx in by_run.items():
        run_statuses = [statuses[i] for i in idx]
        runs.append({
            "run_id": run_id,
            "status": _worst(run_statuses),
            "counts": dict(Counter(run_statuses)),
            "started_at": min((str(recs[i].get("started_at") or "") for i in idx), default=""),
        })
    by_test: dict[str, list[str]] = defaultdict(list)
    for rec, st in zip(recs, statuses, strict=True):
        by_test[test_key(rec)].append(st)
    status, test_statuses = merge_test_statuses(by_test)
    flaky_tests = sorted(k for k, s in test_statuses.items() if s == "flaky")

    # The representative test: the latest of the worst status (the failing one for flaky cells).
    if status == "flaky":
        wanted = min((s for s in statuses if s in FAILING), key=SEVERITY.index)
    elif status in SKIPPED:
        wanted = status if status in statuses else statuses[-1]
    else:
        wanted = status
    rep = max(i for i, s in enumerate(statuses) if s == wanted) if wanted in statuses else len(recs) - 1
    rep_rec, rep_cls = recs[rep], classifications[rep] or {}

    category: str | None = None
    kind = title = explanation = workaround = workaround_pin = fixed_in = None
    refs: list[str] = []
    if wanted in FAILING:
        found = rep_cls.get("category")
        category = UNKNOWN_CATEGORY if _is_unknown_category(found) else str(found)
        kind = rep_cls.get("kind") or ("vllm" if wanted == "fail" else "infrastructure")
        title = rep_cls.get("title")
        explanation = rep_cls.get("explanation")
        workaround = rep_cls.get("workaround")
        workaround_pin = rep_cls.get("workaround_pin") or None
        fixed_in = rep_cls.get("fixed_in")
        refs = [str(r) for r in items(rep_cls.get("refs"))]

    # one count per test: its latest status (a flaky test counts as its failing status, and is named)
    latest_status = {test_key(r): s for r, s in zip(recs, statuses, strict=True)}  # chronological: the last wins
    counts = {s: 0 for s in STATUSES}
    counts.update(Counter(latest_status[k] if test_statuses[k] != "flaky"
                          else min((s for s in by_test[k] if s in FAILING), key=SEVERITY.index)
                          for k in latest_status))
    latest = recs[-1]
    server = mapping(latest.get("server"))
    distribution = ",".join(sorted({str(r.get("distribution")) for r in recs if r.get("distribution")}))
    provenance: object = latest.get("provenance") or {}
    if not provenance:
        envs = mapping(mapping(manifests_by_run.get(str(latest.get("run_id")))).get("environments"))
        provenance = mapping(envs.get(f"{latest.get('distribution')}-{version}")).get("provenance") or {}
    error = mapping(rep_rec.get("error"))

    if status == "pass":
        summary = f"{counts['pass']} of {len(test_statuses)} tests passed" + (
            f" in {len(runs)} runs" if len(runs) > 1 else "")
        if counts["pass"] < len(test_statuses):
            summary += f" ({len(test_statuses) - counts['pass']} skipped)"
    elif status in FAILING:
        summary = f"{title or category}: {error.get('summary') or rep_rec.get('outcome') or status}"
    elif status == "flaky":
        name = flaky_tests[0].rsplit("::", 1)[-1]
        outcomes = by_test[flaky_tests[0]]
        summary = (f"flaky: {name} passed {outcomes.count('pass')} time(s) and {wanted} "
                   f"{sum(s in FAILING for s in outcomes)} time(s)"
                   + (f" ({len(flaky_tests) - 1} more flaky test(s))" if len(flaky_tests) > 1 else "")
                   + f" -- {title or category}: {error.get('summary') or ''}")
    else:
        summary = str(rep_rec.get("skip_reason") or status.replace("_", " "))

    lock_files = cell_locks(recs, locks or {})
    return {
        "cell_id": cell_slug(*key),
        "model": model,
        "families": sorted({str(f) for r in recs for f in items(r.get("families"))}),
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
        "flaky_tests": flaky_tests,
        "runs": sorted(runs, key=lambda r: (r["started_at"], r["run_id"])),
        "provenance": provenance,
        "locks": lock_files["locks"],
        "lock_changes": lock_files["lock_changes"],
        "serve_args": server.get("serve_args") or {},
        "argv": server.get("argv") or [],
        "env": server.get("env") or {},
        "log_excerpt": rep_rec.get("log_excerpt") if wanted in FAILING else None,
        "metrics": _merge_metrics(recs),
        "first_seen": min((str(r.get("started_at")) for r in recs if r.get("started_at")), default=None),
        "last_seen": max((str(r.get("finished_at") or r.get("started_at")) for r in recs
                          if r.get("finished_at") or r.get("started_at")), default=None),
    }

