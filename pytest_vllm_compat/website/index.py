"""The index page's data: the overview (per platform, one chip per feature group and version), the per-feature
grid, the failure split, the version changes and bisections. ``templates/index.html.j2`` renders it."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from itertools import pairwise

from pytest_vllm_compat.matrix import FAILING, UNKNOWN_CATEGORY, diff_versions, sort_versions, version_key
from pytest_vllm_compat.matrix.cell_types import Cell, Matrix, VersionDiff, items, mapping
from pytest_vllm_compat.outcomes import SEVERITY, SKIPPED
from pytest_vllm_compat.website.base import (
    ABBREV,
    GROUP_ORDER,
    STATUS_ORDER,
    aggregate_status,
    diff_page_name,
    feature_group,
    file_slug,
    kind_label,
    safe_url,
)

from . import charts as site_charts
from . import measures as site_measures


def group_key(group: str) -> tuple[int, str]:
    return (GROUP_ORDER.index(group) if group in GROUP_ORDER else len(GROUP_ORDER), group)


def feature_key(feature: str) -> tuple[int, str, str]:
    return (*group_key(feature_group(feature)), feature)


def families(cells: Iterable[Cell]) -> dict[str, list[str]]:
    found: dict[str, set[str]] = defaultdict(set)
    for c in cells:
        found[c["model"]] |= set(c.get("families") or [])
    return {m: sorted(f) for m, f in found.items()}


def feature_anchor(feature: str) -> str:
    return f"feature-{file_slug(feature)}"


def noun(group: str) -> str:
    return "backends" if group in ("attention", "guided_decoding") else "variants"


def group_title(group: str, version: str, cells: Sequence[Cell], worst: str) -> str:
    """A chip's tooltip: the group's worst status and, per status, which sub-features have it."""
    head = f"{group} · vLLM {version}: {worst.replace('_', ' ')}"
    if len(cells) == 1 and cells[0]["feature"] == group:
        return f"{head} — {cells[0].get('summary') or ''}".rstrip(" —")
    by_status: dict[str, list[str]] = defaultdict(list)
    for c in cells:
        by_status[c["status"]].append(c["feature"].split(":", 1)[-1])
    parts = []
    for status in sorted(by_status, key=lambda s: SEVERITY.index(s) if s in SEVERITY else -1):
        names = sorted(by_status[status])
        label = "n/a" if status == "not_applicable" else status
        detail = f" ({', '.join(names)})" if status not in SKIPPED or len(names) <= 3 else ""
        parts.append(f"{len(names)} {label}{detail}")
    return f"{head} — of {len(cells)} {noun(group)}: {'; '.join(parts)}"


def chip(group: str, version: str, cells: Sequence[Cell]) -> dict[str, object]:
    """One version's chip in a feature group's overview column (``status`` None: not tested)."""
    worst = aggregate_status(c["status"] for c in cells)
    wide = len(version) > 7  # a long version (0.6.4.post2) gets a whole line
    if worst is None:
        return {"status": None, "wide": wide, "version": version, "title": f"{group} · vLLM {version}: not tested"}
    target = sorted((c for c in cells if c["status"] == worst), key=lambda c: c["feature"])[0]
    regression = any(c.get("regression") for c in cells)
    return {"status": worst, "wide": wide, "version": version, "regression": regression,
            "anchor": feature_anchor(target["feature"]), "abbrev": ABBREV.get(worst, worst),
            "title": group_title(group, version, cells, worst) + (" — regression" if regression else "")}


def overview(matrix: Matrix) -> list[dict[str, object]]:
    """Per platform: one row per model, one column per feature group, one chip per vLLM version."""
    cells = matrix["cells"]
    fams = families(cells)
    order = {v: i for i, v in enumerate(matrix["versions"])}
    by_platform: dict[str, dict[str, dict[tuple[str, str], list[Cell]]]] = \
        defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for c in cells:
        by_platform[c["platform"]][c["model"]][(feature_group(c["feature"]), c["vllm_version"])].append(c)
    blocks: list[dict[str, object]] = []
    for platform in sorted(by_platform):
        models = by_platform[platform]
        pcells = [c for c in cells if c["platform"] == platform]
        tested = sorted({c["vllm_version"] for c in pcells}, key=lambda v: order.get(v, len(order)))
        span = {v for v in matrix.get("untested_releases") or []
                if tested and version_key(tested[0]) < version_key(v) < version_key(tested[-1])}
        versions = sorted({*tested, *span}, key=version_key)  # a release no run tested is a "–" chip
        groups = sorted({feature_group(c["feature"]) for c in pcells}, key=group_key)
        features_of = {g: {c["feature"] for c in pcells if feature_group(c["feature"]) == g} for g in groups}
        rows = [{"model": model, "families": fams.get(model, []),
                 "groups": [{"group": g,
                             "chips": [chip(g, v, sorted(models[model].get((g, v), []), key=lambda c: c["feature"]))
                                       for v in versions]
                             if any((g, v) in models[model] for v in tested) else None}
                            for g in groups]}
                for model in sorted(models)]
        blocks.append({
            "platform": platform, "tested": tested, "untested": sorted(span, key=version_key), "rows": rows,
            "groups": [{"group": g, "count": len(features_of[g]) if features_of[g] != {g} else None, "noun": noun(g)}
                       for g in groups]})
    return blocks


def _grid_cell(cell: Cell | None) -> dict[str, object] | None:
    if cell is None:
        return None
    status = cell["status"]
    return {"status": status, "regression": bool(cell.get("regression")), "cell_id": cell["cell_id"],
            "version": cell["vllm_version"], "summary": cell.get("summary"),
            "category": (cell.get("category") or UNKNOWN_CATEGORY) if status in (*FAILING, "flaky") else None,
            "note": site_measures.grid_note(cell)}


def grid(matrix: Matrix) -> dict[str, object]:
    """Per feature: a table of (model, platform) rows and version columns; the features whose every cell is
    unsupported or not applicable apart (``skipped``, shown collapsed)."""
    versions = matrix.get("releases") or matrix["versions"]
    untested = set(matrix.get("untested_releases") or [])
    by_feature: dict[str, dict[tuple[str, str], dict[str, Cell]]] = defaultdict(lambda: defaultdict(dict))
    fams = families(matrix["cells"])
    for c in matrix["cells"]:
        by_feature[c["feature"]][(c["model"], c["platform"])][c["vllm_version"]] = c
    shown: list[dict[str, object]] = []
    skipped: list[dict[str, object]] = []
    for feature in sorted(by_feature, key=feature_key):
        section: dict[str, object] = {"feature": feature, "anchor": feature_anchor(feature),
                   "rows": [{"model": model, "platform": platform, "families": fams.get(model, []),
                             "cells": [_grid_cell(by_version.get(v)) for v in versions]}
                            for (model, platform), by_version in sorted(by_feature[feature].items())]}
        all_skipped = all(c["status"] in SKIPPED for by_v in by_feature[feature].values() for c in by_v.values())
        (skipped if all_skipped else shown).append(section)
    return {"versions": [{"version": v, "untested": v in untested} for v in versions],
            "shown": shown, "skipped": skipped}


def filters(matrix: Matrix) -> list[dict[str, object]]:
    """The filter form's selects: (id, label, [(value, text)])."""
    statuses = [*STATUS_ORDER, "regression"]

    def select(ident: str, label: str, values: Iterable[str], *, words: bool = False) -> dict[str, object]:
        return {"id": ident, "label": label,
                "options": [(v, v.replace("_", " ") if words else v) for v in values]}

    return [select("f-family", "Family", matrix.get("families") or []),
            select("f-feature", "Feature", matrix.get("features") or []),
            select("f-platform", "Platform", matrix.get("platforms") or []),
            select("f-status", "Status", statuses, words=True)]


def failure_split(matrix: Matrix) -> list[dict[str, object]]:
    """Failing cells grouped by who is to blame (classification kind), then by category."""
    groups: dict[str, dict[str, list[Cell]]] = defaultdict(lambda: defaultdict(list))
    for c in matrix["cells"]:
        if c["status"] in (*FAILING, "flaky"):
            kind = c.get("kind") if c.get("category") != UNKNOWN_CATEGORY else "unknown"
            groups[str(kind or "unknown")][str(c.get("category") or UNKNOWN_CATEGORY)].append(c)
    blocks = []
    for kind in [k for k in ("vllm", "platform", "stack", "infrastructure") if k in groups] + \
            sorted(k for k in groups if k not in ("vllm", "platform", "infrastructure")):
        rows = []
        for category, cs in sorted(groups[kind].items(), key=lambda kv: (-len(kv[1]), kv[0])):
            first = cs[0]
            rows.append({"title": first.get("title") or category, "category": category, "cells": cs,
                         "models": ", ".join(sorted({c["model"] for c in cs})),
                         "versions": ", ".join(sort_versions(c["vllm_version"] for c in cs)),
                         "fixed_in": first.get("fixed_in") or "", "workaround": first.get("workaround") or ""})
        blocks.append({"kind": kind, "rows": rows, "total": sum(len(cs) for cs in groups[kind].values()),
                       "label": kind_label(kind) if kind != "unknown" else "Unclassified (add a knowledge-base rule)"})
    return blocks


def diffs(matrix: Matrix) -> list[VersionDiff]:
    if "diffs" in matrix:
        return list(matrix["diffs"])
    versions = matrix["versions"]
    return [{"a": a, "b": b, "changes": diff_versions(matrix, a, b)} for a, b in pairwise(versions)]


def change_counts(changes: Sequence[Mapping[str, object]]) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for ch in changes:
        counts[str(ch["change"])] += 1
    return dict(sorted(counts.items()))


def _change_item(d: VersionDiff) -> dict[str, object]:
    return {"page": diff_page_name(d["a"], d["b"]), "a": d["a"], "b": d["b"], "release": d.get("release"),
            "stack": d.get("stack"), "n": len(d["changes"]), "counts": change_counts(d["changes"])}


def bisections(matrix: Matrix) -> list[dict[str, object]]:
    """``vllm-compat bisect`` results found in the results dirs: which release broke (or fixed) what."""
    found: list[dict[str, object]] = []
    for b in matrix.get("bisections") or []:
        flipped = [mapping(f) for f in items(b.get("flipped"))]
        found.append({
            "tests": ", ".join(sorted({str(f.get("test")) for f in flipped})),
            "categories": ", ".join(sorted({str(f.get("category")) for f in flipped if f.get("category")})),
            "first_bad": b.get("first_bad"), "last_good": b.get("last_good"),
            "first_fixed": b.get("first_fixed"), "last_bad": b.get("last_bad"), "conclusion": b.get("conclusion"),
            "link": safe_url(b.get("compare_url")), "probed": b.get("probed"), "range_size": b.get("range_size"),
            "good": b.get("good"), "bad": b.get("bad"), "selection": " ".join(str(s) for s in items(b.get("selection"))),
            "attribution": attribution_view(mapping(b.get("attribution")))})
    return found


DECISION_LABELS = {"follows_code": "follows vLLM's code", "follows_package": "follows a package",
                   "follows_set": "follows a set of packages together", "not_separable": "not separable",
                   "inconclusive": "inconclusive"}


def attribution_view(att: Mapping[str, object] | None) -> dict[str, object] | None:
    """An attribution (attribution.py) as the Bisections section shows it: the answer, then each probe with
    its pins, environment, lock and result."""
    if not att:
        return None
    probes = []
    for p in map(mapping, items(att.get("probes"))):
        probes.append({"kind": p.get("kind"), "pins": _joined(p.get("pins")) or "(none: the release as is)",
                       "verdict": p.get("verdict"), "flips": bool(p.get("flips")),
                       "why": p.get("conflict") or p.get("reason") or "", "env": p.get("env_name") or "",
                       "lock": str(p.get("lock_sha256") or "")[:16], "installed": bool(p.get("installed")),
                       "runs": _joined(p.get("run_ids")), "logs": _joined(p.get("logs")),
                       "wall_s": p.get("wall_s")})
    label = DECISION_LABELS.get(str(att.get("decision")), str(att.get("decision")))
    summary = str(att.get("summary") or "")
    if summary.startswith(label + ": "):  # "follows vLLM's code: ..." says its label once
        summary = summary[len(label) + 2:]
    return {"decision": label,
            "summary": summary, "version": att.get("version"), "against": att.get("against"),
            "installs": att.get("installs"), "refused": att.get("refused"), "wall_s": att.get("wall_s"),
            "notes": list(items(att.get("notes"))), "probes": probes}


def _joined(values: object) -> str:
    """A JSON list of strings as one line."""
    return ", ".join(str(v) for v in items(values))


def index_context(matrix: Matrix) -> dict[str, object]:
    """Everything ``index.html.j2`` shows."""
    cells = matrix["cells"]
    return {
        "generated_at": matrix.get("generated_at"),
        "n_runs": len(matrix.get("runs") or []), "n_cells": len(cells), "n_models": len(matrix.get("models") or []),
        "versions": ", ".join(matrix["versions"]),
        "n_failing": sum(c["status"] in (*FAILING, "flaky") for c in cells),
        "n_unclassified": len(matrix.get("unclassified") or []),
        "regressions": [{**r, "untested_between": ", ".join(r.get("untested_between") or [])}
                        for r in matrix.get("regressions") or []],
        "filters": filters(matrix),
        "overview": overview(matrix),
        "grid": grid(matrix),
        "failures": failure_split(matrix),
        "plots": site_charts.plots(matrix),
        "summary": [{"platform": r["platform"], "version": r["vllm_version"],
                     "counts": [r["counts"].get(s, 0) for s in STATUS_ORDER],
                     "pass_rate": "" if r["pass_rate"] is None else f"{r['pass_rate']:.0%}"}
                    for r in matrix.get("summary_by_version") or []],
        "diffs": [_change_item(d) for d in diffs(matrix)],
        "stack_diffs": [_change_item(d) for d in matrix.get("stack_diffs") or []],
        "bisections": bisections(matrix),
        "attributions": [v for v in (attribution_view(a) for a in matrix.get("attributions") or []) if v],
        "runs": [{"run_id": r.get("run_id"), "hosts": ", ".join(r.get("hosts") or []),
                  "started_at": r.get("started_at"), "finished_at": r.get("finished_at"),
                  "versions": ", ".join(r.get("versions") or []), "records": r.get("records"),
                  "suite": r.get("suite_version") or "unrecorded", "eager": bool(r.get("eager_knob_servers"))}
                 for r in matrix.get("runs") or []],
        "suite_versions": matrix.get("suite_versions") or [],
    }
