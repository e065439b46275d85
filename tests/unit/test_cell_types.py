"""matrix/cell_types.py says what the matrix holds: the matrix built from the committed records (reports/runs) has
exactly the declared keys, cell by cell and part by part; mapping/items narrow JSON values."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pytest

from pytest_vllm_compat.lockfiles import load_locks
from pytest_vllm_compat.matrix import build_matrix, load_manifests, load_records
from pytest_vllm_compat.matrix.cell_types import (
    Cell,
    CellRun,
    CellTest,
    InsightRow,
    LockChange,
    LockEntry,
    Matrix,
    Regression,
    RunSummary,
    StatusChange,
    VersionDiff,
    VersionSummary,
    WorkaroundCheck,
    WorkaroundCheckCell,
    items,
    mapping,
)
from pytest_vllm_compat.perf_campaign import load_comparisons

RUNS = Path(__file__).resolve().parents[2] / "reports" / "runs"


def conforms(obj: Mapping[str, object], shape: type) -> bool:
    """Every key of ``obj`` is declared by the TypedDict ``shape``, and every key it requires is there."""
    keys = set(obj)
    return keys <= set(shape.__annotations__) and set(shape.__required_keys__) <= keys  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def matrix() -> Matrix:
    dirs = [d for d in sorted(RUNS.iterdir()) if d.is_dir() and (d / "records").is_dir()]
    assert dirs, f"no committed results under {RUNS}"
    return build_matrix(load_records(dirs), load_manifests(dirs), locks=load_locks(dirs),
                        perf_comparisons=load_comparisons([RUNS / "perf"]), generated_at="2026-01-01T00:00:00Z")


def test_mapping_and_items_narrow_json_values() -> None:
    assert mapping({"a": 1}) == {"a": 1}
    assert mapping(None) == {} and mapping([1]) == {} and mapping("text") == {}
    assert items([1, "x"]) == [1, "x"]
    assert items(None) == [] and items({"a": 1}) == [] and items("text") == []


def test_conforms_refuses_an_undeclared_or_a_missing_key() -> None:
    run: CellRun = {"run_id": "r", "status": "pass", "counts": {"pass": 1}, "started_at": ""}
    assert conforms(run, CellRun)
    assert not conforms({**run, "extra": 1}, CellRun)
    assert not conforms({k: v for k, v in run.items() if k != "status"}, CellRun)


def test_the_matrix_of_the_committed_records_has_the_declared_shape(matrix: Matrix) -> None:
    assert conforms(matrix, Matrix), set(matrix) ^ set(Matrix.__annotations__)
    assert matrix["cells"] and matrix["runs"] and matrix["insights"] and matrix["summary_by_version"]
    for run in matrix["runs"]:
        assert conforms(run, RunSummary), set(run)
    for row in matrix["insights"]:
        assert conforms(row, InsightRow), set(row)
        for reg in row["regressions"]:
            assert conforms(reg, Regression), set(reg)
    for s in matrix["summary_by_version"]:
        assert conforms(s, VersionSummary), set(s)
    for d in [*matrix["diffs"], *matrix["stack_diffs"]]:
        assert conforms(d, VersionDiff), set(d)
        for ch in d["changes"]:
            assert conforms(ch, StatusChange), set(ch)
    assert matrix["stack_diffs"] and all("release" in d and "stack" in d for d in matrix["stack_diffs"])


def test_every_committed_cell_has_the_declared_shape(matrix: Matrix) -> None:
    optional: set[str] = set()
    for cell in matrix["cells"]:
        assert conforms(cell, Cell), (cell["cell_id"], set(cell) ^ set(Cell.__annotations__))
        optional |= set(cell) & Cell.__optional_keys__
        for t in cell["tests"]:
            assert conforms(t, CellTest), set(t)
        for r in cell["runs"]:
            assert conforms(r, CellRun), set(r)
        for lk in cell["locks"]:
            assert conforms(lk, LockEntry), set(lk)
        for ch in cell["lock_changes"]:
            assert conforms(ch, LockChange), set(ch)
        if "workaround_check" in cell:
            check: WorkaroundCheck = cell["workaround_check"]
            assert conforms(check, WorkaroundCheck)
            assert all(conforms(c, WorkaroundCheckCell) for c in check["cells"])
    # the annotators' keys occur in the committed data, so the loop above checked them too
    assert {"drift", "perf_step"} <= optional, optional
