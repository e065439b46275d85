"""The shapes of the matrix (``docs/matrix.md``): a cell, the matrix object and their parts, as TypedDicts.

Values copied from records unchecked (a record's ``device``, a classification's ``title``, the server's
``serve_args``) are ``object``: a reader narrows them with ``isinstance``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypedDict

__all__ = [
    "Cell",
    "CellRun",
    "CellTest",
    "InsightRow",
    "LockChange",
    "LockEntry",
    "Matrix",
    "MatrixCells",
    "Regression",
    "RunSummary",
    "StatusChange",
    "VersionDiff",
    "VersionSummary",
    "WorkaroundCheck",
    "WorkaroundCheckCell",
    "items",
    "mapping",
]


def mapping(value: object) -> Mapping[str, object]:
    """``value`` when it is a mapping (a JSON object), else an empty one: ``rec.get("error") or {}`` typed."""
    return value if isinstance(value, Mapping) else {}


def items(value: object) -> list[object]:
    """``value`` when it is a list (a JSON array), else an empty one: ``rec.get("refs") or []`` typed."""
    return value if isinstance(value, list) else []


class CellTest(TypedDict):
    """One record of a cell, as the cell lists it (``tests``, oldest first)."""

    test_id: object
    test_name: object
    outcome: object
    status: str
    duration_s: object
    server_start_s: object
    run_id: object
    started_at: object
    error_summary: str | None
    skip_reason: object
    log_path: object


class CellRun(TypedDict):
    """The status of one run of a cell (``runs``): what the merge rule combined."""

    run_id: str
    status: str
    counts: dict[str, int]
    started_at: str


class LockEntry(TypedDict):
    """A distinct lock file behind a cell's records (``lockfiles.cell_locks``)."""

    sha256: str
    runs: list[str]
    packages: int | None
    stored: bool


# A change of lock between a cell's runs; ``changed`` is None when a lock text is missing. "from" is a keyword,
# hence the functional form.
LockChange = TypedDict("LockChange", {"from": str, "to": str, "changed": list[dict[str, str | None]] | None})


class WorkaroundCheckCell(TypedDict):
    """A cell of the same model, platform, feature and release whose installed packages satisfy the pin."""

    cell_id: str
    line: str
    status: str
    installed: str


class WorkaroundCheck(TypedDict):
    """Whether a failing cell's knowledge-base workaround pin was run, and passed (``check_workarounds``)."""

    pin: str
    cells: list[WorkaroundCheckCell]
    verified: bool


class _CellFields(TypedDict):
    cell_id: str
    model: str
    families: list[str]
    model_source: object
    vllm_version: str  # the line: the release, +stack name for a pinned stack (stacks.line_of)
    release: str
    stack: str
    distribution: str
    platform: str
    device: object
    feature: str
    status: str
    category: str | None
    kind: object
    title: object
    summary: str
    explanation: object
    refs: list[str]
    workaround: object
    workaround_pin: object
    fixed_in: object
    regression: bool
    tests: list[CellTest]
    counts: dict[str, int]
    flaky_tests: list[str]
    runs: list[CellRun]
    provenance: object
    locks: list[LockEntry]
    lock_changes: list[LockChange]
    serve_args: object
    argv: object
    env: object
    log_excerpt: object
    metrics: dict[str, object]
    first_seen: str | None
    last_seen: str | None


class Cell(_CellFields, total=False):
    """One (model, vLLM line, platform, feature) of the matrix; the optional keys are set by the annotators."""

    drift: dict[str, object]  # drift.annotate_cells
    perf_step: dict[str, object]  # performance.annotate_cells
    workaround_check: WorkaroundCheck  # insights.check_workarounds
    workaround_attribution: dict[str, object]  # attribution.apply_verified_pins


class _RunRequired(TypedDict):
    run_id: str
    hosts: list[str]
    records: int
    versions: list[str]
    started_at: object
    finished_at: object


class RunSummary(_RunRequired, total=False):
    """A run of the matrix (``runs``); the optional keys come from its manifest."""

    plugin_version: object
    suite_version: object
    device: object
    os: object
    # --vllm-eager-knob-servers: servers that only turn a knob started with --enforce-eager (key absent when not)
    eager_knob_servers: bool


class Regression(TypedDict):
    model: str
    platform: str
    feature: str
    stack: str
    from_version: str
    to_version: str
    from_cell_id: str
    to_cell_id: str
    category: str | None
    summary: str
    untested_between: list[str]


class InsightRow(TypedDict):
    """First/last passing version and regressions of one (model, platform, feature, stack)."""

    model: str
    platform: str
    feature: str
    stack: str
    versions: list[str]
    statuses: list[str]
    first_pass: str | None
    last_pass: str | None
    first_pass_after: str | None
    first_pass_untested_before: list[str]
    regressions: list[Regression]
    unclassified: list[str]


class VersionSummary(TypedDict):
    platform: str
    vllm_version: str
    counts: dict[str, int]
    cells: int
    applicable: int
    pass_rate: float | None


class StatusChange(TypedDict):
    """A cell whose status differs between two versions (``diff_versions``)."""

    model: str
    platform: str
    feature: str
    a_version: str
    b_version: str
    a_status: str | None
    b_status: str | None
    change: str
    a_cell_id: str | None
    b_cell_id: str | None
    category: str | None
    summary: str | None


class _DiffFields(TypedDict):
    a: str
    b: str
    changes: list[StatusChange]


class VersionDiff(_DiffFields, total=False):
    """The cells that change from ``a`` to ``b``: consecutive versions (``diffs``), or a release and its line on
    a pinned stack (``stack_diffs``, which also name the ``release`` and the ``stack``)."""

    release: str
    stack: str


class MatrixCells(TypedDict):
    """What :func:`~pytest_vllm_compat.matrix.diff_versions` reads of a matrix: its cells."""

    cells: list[Cell]


class _MatrixFields(MatrixCells):
    schema: str
    generated_at: str
    runs: list[RunSummary]
    suite_versions: list[str]
    versions: list[str]
    releases: list[str]
    untested_releases: list[str]
    models: list[str]
    families: list[str]
    platforms: list[str]
    features: list[str]
    insights: list[InsightRow]
    regressions: list[Regression]
    unclassified: list[str]
    summary_by_version: list[VersionSummary]
    diffs: list[VersionDiff]
    stacks: list[str]
    drift: list[dict[str, object]]
    performance_steps: list[dict[str, object]]
    performance_regressions: list[dict[str, object]]
    stack_diffs: list[VersionDiff]


class Matrix(_MatrixFields, total=False):
    """The matrix object (``matrix.json``); ``bisections`` and ``attributions`` are added by ``vllm-compat matrix``."""

    bisections: list[dict[str, object]]
    attributions: list[dict[str, object] | None]
    sources: list[str]  # the results dirs read, as the upgrade report names them (upgrade.load_inputs)
