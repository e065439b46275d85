"""The suite version: a digest of what judged a run, independent of where the checkout lives."""

from __future__ import annotations

import shutil
from pathlib import Path

from pytest_vllm_compat.matrix import build_matrix
from pytest_vllm_compat.record_types import Record
from pytest_vllm_compat.suite_identity import argument_roots, suite_digest, suite_version


def _tree(root: Path) -> tuple[Path, Path]:
    pkg, suites = root / "pkg", root / "suites"
    (pkg / "data").mkdir(parents=True)
    suites.mkdir()
    (pkg / "checks.py").write_text("LIMIT = 9\n")
    (pkg / "data" / "kb.toml").write_text("[a]\n")
    (suites / "test_x.py").write_text("def test_x(): pass\n")
    (suites / "models.toml").write_text("[m]\n")
    return pkg, suites


def test_same_content_elsewhere_gives_the_same_version(tmp_path: Path) -> None:
    pkg, suites = _tree(tmp_path / "a")
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    assert suite_version([suites], pkg) == suite_version([tmp_path / "b" / "suites"], tmp_path / "b" / "pkg")


def test_a_changed_check_registry_or_pycache_only(tmp_path: Path) -> None:
    pkg, suites = _tree(tmp_path)
    before = suite_digest([suites], pkg)
    (pkg / "__pycache__").mkdir()
    (pkg / "__pycache__" / "checks.cpython-311.pyc").write_bytes(b"x")
    (suites / "notes.txt").write_text("not judged")
    assert suite_digest([suites], pkg) == before  # compiled files and non-code files do not count
    (suites / "models.toml").write_text("[m]\nmax_model_len = 2048\n")
    after_registry = suite_digest([suites], pkg)
    assert after_registry != before
    (pkg / "checks.py").write_text("LIMIT = 10\n")
    assert suite_digest([suites], pkg) != after_registry


def test_roots_from_pytest_args(tmp_path: Path) -> None:
    _, suites = _tree(tmp_path)
    assert argument_roots(["suites", "-q", "suites/test_x.py::test_x", "missing"], tmp_path) == [suites.resolve()]


def test_the_matrix_lists_the_suite_versions_of_its_runs() -> None:
    recs: list[Record] = [{"run_id": r, "model": "m", "vllm_version": v, "platform": "cpu", "feature": "config",
             "test_id": "t", "status": "passed", "outcome": "passed"} for r, v in (("r1", "0.31.0"), ("r2", "0.32.0"))]
    mans = [{"run_id": "r1", "suite_version": "0.1.0+aaaaaaaaaaaa"}, {"run_id": "r2"}]
    m = build_matrix(recs, mans, classifier=None)
    assert m["suite_versions"] == ["0.1.0+aaaaaaaaaaaa", "unrecorded"]
    assert {r["run_id"]: r["suite_version"] for r in m["runs"]} == {"r1": "0.1.0+aaaaaaaaaaaa", "r2": None}
