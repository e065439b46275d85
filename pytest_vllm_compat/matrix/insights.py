"""What the matrix says across versions and stacks: the release columns, first/last passing version and
regressions per model, platform, feature and stack, per-version summaries, the cells that change between two
versions or between a release's stacks, and whether a knowledge-base workaround pin was verified by a run."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from itertools import pairwise

from pytest_vllm_compat.matrix.cell_types import (
    Cell,
    InsightRow,
    MatrixCells,
    Regression,
    StatusChange,
    VersionDiff,
    VersionSummary,
    WorkaroundCheckCell,
    items,
    mapping,
)
from pytest_vllm_compat.matrix.cells import UNKNOWN_CATEGORY, VERDICT
from pytest_vllm_compat.outcomes import CELL_STATUSES, FAILING
from pytest_vllm_compat.stacks import canonical_name, line_of, split_line
from pytest_vllm_compat.version_spec import is_final
from pytest_vllm_compat.versions import sort_versions, version_key


def release_columns(versions: Sequence[str], manifests: Sequence[Mapping[str, object]]) -> list[str]:
    """The tested versions plus every final release the runs' package index offered between the oldest and
    the newest tested one: the columns of the site, where a release no run tested shows as a gap."""
    tested = [v for v in versions if version_key(v)[0] == 0]
    if not tested:
        return list(versions)
    lo, hi = version_key(tested[0]), version_key(tested[-1])
    known = {str(r) for m in manifests for r in items(m.get("index_versions")) if is_final(str(r))}
    inside = {r for r in known if lo <= version_key(r) <= hi}
    return sort_versions({*versions, *inside})


def _untested_between(releases: Sequence[str], tested: Sequence[str], a: str | None, b: str) -> list[str]:
    """Releases strictly between ``a`` (None: from the first) and ``b`` that have no cell in ``tested``."""
    ka, kb = (version_key(a) if a else None), version_key(b)
    return [r for r in releases if r not in tested and (ka is None or version_key(r) > ka) and version_key(r) < kb]


def version_insights(cells: Sequence[Cell], releases: Sequence[str] = ()) -> list[InsightRow]:
    """First/last passing version and regressions per model, platform, feature and dependency stack: a
    stack's lines are compared with the same stack's lines only."""
    groups: dict[tuple[str, str, str, str], dict[str, Cell]] = defaultdict(dict)
    for c in cells:
        groups[(c["model"], c["platform"], c["feature"], c.get("stack") or "")][c["vllm_version"]] = c
    plain = [r for r in releases if not split_line(r)[1]]
    out: list[InsightRow] = []
    for (model, platform, feature, stack), by_version in sorted(groups.items()):
        versions = sort_versions(by_version)
        line_releases = [line_of(r, stack) for r in plain]  # the releases, on this stack's line
        passing = [v for v in versions if by_version[v]["status"] == "pass"]
        verdicts = [v for v in versions if by_version[v]["status"] in VERDICT]
        regressions: list[Regression] = []
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


def _last_before(verdicts: Sequence[str], by_version: Mapping[str, Cell], version: str) -> str | None:
    before = [v for v in verdicts if version_key(v) < version_key(version) and by_version[v]["status"] == "fail"]
    return before[-1] if before else None


def summary_by_version(cells: Sequence[Cell]) -> list[VersionSummary]:
    groups: dict[tuple[str, str], list[Cell]] = defaultdict(list)
    for c in cells:
        groups[(c["platform"], c["vllm_version"])].append(c)
    out: list[VersionSummary] = []
    for (platform, version), cs in sorted(groups.items(), key=lambda kv: (kv[0][0], version_key(kv[0][1]))):
        counts = {s: 0 for s in CELL_STATUSES}
        counts.update(Counter(c["status"] for c in cs))
        applicable = len(cs) - counts["unsupported"] - counts["not_applicable"]
        out.append({
            "platform": platform, "vllm_version": version, "counts": counts,
            "cells": len(cs), "applicable": applicable,
            "pass_rate": round(counts["pass"] / applicable, 4) if applicable else None,
        })
    return out


def stack_diffs(cells: list[Cell]) -> list[VersionDiff]:
    lines: dict[str, set[str]] = defaultdict(set)
    for c in cells:
        lines[c["release"]].add(c["vllm_version"])
    return [{"release": release, "a": release, "b": other, "stack": split_line(other)[1],
             "changes": diff_versions({"cells": cells}, release, other)}
            for release in sort_versions(lines) if release in lines[release]
            for other in sort_versions(lines[release] - {release})]


def _installed(cell: Cell, package: str) -> str | None:
    prov = mapping(cell.get("provenance"))
    pins = {canonical_name(k): v for k, v in mapping(prov.get("pins")).items()}
    found = pins.get(package) or next((v for k, v in prov.items() if canonical_name(k) == package
                                       and isinstance(v, str)), None)
    return str(found) if found else None


def check_workarounds(cells: Sequence[Cell]) -> None:
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
        checks: list[WorkaroundCheckCell] = []
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


def diff_versions(matrix: MatrixCells | Mapping[str, Sequence[Cell]], a: str, b: str) -> list[StatusChange]:
    """Cells whose status differs between vLLM versions ``a`` and ``b`` for the same model,
    platform and feature; a cell present in only one of them is listed with status ``None``."""
    side: dict[str, dict[tuple[str, str, str], Cell]] = {a: {}, b: {}}
    for c in matrix["cells"]:
        if c["vllm_version"] in side:
            side[c["vllm_version"]][(c["model"], c["platform"], c["feature"])] = c
    out: list[StatusChange] = []
    for key in sorted(set(side[a]) | set(side[b])):
        ca, cb = side[a].get(key), side[b].get(key)
        sa, sb = (ca["status"] if ca else None), (cb["status"] if cb else None)
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
            "a_cell_id": ca["cell_id"] if ca else None, "b_cell_id": cb["cell_id"] if cb else None,
            "category": (cb["category"] if cb else None) or (ca["category"] if ca else None),
            "summary": shown["summary"] if (shown := cb or ca) else None,
        })
    return out


