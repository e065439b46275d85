#!/usr/bin/env python3
"""The main job's wall time on a fresh machine: `python3 dev.py main` in a fresh clone of this checkout's HEAD,
with an empty HOME (no vLLM environment, no converted model, no compile cache, no pip or uv cache), once per mode.

    python3 benchmarks/bench_main_job.py                       # both modes, one after the other (~26 min here)
    python3 benchmarks/bench_main_job.py --modes eager         # the main job as it runs by default only

Modes: ``eager`` is `dev.py main` as is (on CPU the knob-only servers start with --enforce-eager,
--vllm-eager-knob-servers); ``compiled`` sets VLLM_COMPAT_EAGER_KNOB_SERVERS=0, so every server starts as vLLM
starts it (what `publish` runs). Writes reports/bench/main_job.json and main_job.md:

  wall_s                 the whole `dev.py main`: bootstrap, both pytest passes, the matrix
  passes[i].wall_s       each pytest pass, from its run manifest (started_at .. finished_at)
  provision              the vLLM environment (created in), the packaged model's download + conversion
  starts                 every server start: spec, seconds, and whether it started with --enforce-eager
  outcomes               passed/failed/skipped/error counts
  same_verdicts          with both modes: every test id's outcome and failure class, compared between them

Nothing here is asserted: the figures are what this machine did. The clone and its HOME are removed afterwards
(--keep keeps them).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import TypedDict

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pytest_vllm_compat.record_types import Record  # noqa: E402
from pytest_vllm_compat.results import read_records  # noqa: E402

OUT = ROOT / "reports" / "bench"
MODES = {"eager": "1", "compiled": "0"}


def _seconds(a: str, b: str) -> float:
    fmt = "%Y-%m-%dT%H:%M:%SZ"
    return (datetime.strptime(b, fmt) - datetime.strptime(a, fmt)).total_seconds()


def _verdicts(records: list[Record]) -> dict[str, list[str | None]]:
    """Each test id's outcome and failure class (the classification's id)."""
    out: dict[str, list[str | None]] = {}
    for r in records:
        c = r.get("classification")
        out[r["test_id"]] = [r.get("outcome"), c.get("id") if isinstance(c, dict) else None]
    return out


class Pass(TypedDict):
    argv_markers: list[str]
    wall_s: float
    counts: object
    suite_version: object


class Start(TypedDict):
    spec: str
    start_s: list[float]
    worker: str
    eager: bool


class ModeRun(TypedDict):
    """One mode's `dev.py main` (main_job.json's ``runs[i]``)."""

    mode: str
    commit: str
    rc: int
    wall_s: float
    passes: list[Pass]
    provision: dict[str, object]
    starts: list[Start]
    one_off_starts: list[str]
    outcomes: dict[str, int]


def summarize(results: Path, records: list[Record], mode: str, commit: str, wall_s: float, rc: int,
              log: str) -> ModeRun:
    passes: list[Pass] = []
    for m in sorted((results / "manifests").glob("*.json")):
        d = json.loads(m.read_text())
        passes.append({"argv_markers": [a for a in d.get("argv", []) if a not in ("suites",)][-2:],
                       "wall_s": _seconds(d["started_at"], d["finished_at"]), "counts": d.get("counts"),
                       "suite_version": d.get("suite_version")})
    eager_logs: dict[str, bool] = {}  # log file name -> started with --enforce-eager
    outcomes: dict[str, int] = {}
    provision: dict[str, object] = {}
    for r in records:
        outcomes[r["outcome"]] = outcomes.get(r["outcome"], 0) + 1
        server = r.get("server") or {}
        if server.get("log_path"):
            eager_logs[Path(str(server["log_path"])).name] = "--enforce-eager" in (server.get("serve_args") or [])
        pm = r.get("packaged_model")
        if isinstance(pm, dict) and "model_prepare_s" not in provision:
            provision.update(model_prepare_s=pm.get("prepare_s"), model_convert_s=pm.get("convert_s"))
    for line in log.splitlines():
        if "created in" in line and "vllm-compat]" in line:
            provision["vllm_env_created"] = line.split("]", 1)[1].strip().split(" (")[0]
    starts: list[Start] = []
    for s in sorted((results / "servers").glob("*.json")):
        for srv in json.loads(s.read_text()).get("servers", []):
            logs = [Path(str(p)).name for p in srv.get("log_paths", [])]
            starts.append({"spec": srv["spec_key"], "start_s": srv["start_times_s"], "worker": s.stem.split("-")[-1],
                           "eager": any(eager_logs.get(n, False) for n in logs)})
    one_offs = sorted(p.name for p in (results / "logs").rglob("*.oneoff.*.log"))
    return {"mode": mode, "commit": commit, "rc": rc, "wall_s": round(wall_s, 1), "passes": passes,
            "provision": provision, "starts": starts, "one_off_starts": one_offs, "outcomes": outcomes}


def run_mode(mode: str, keep: bool) -> tuple[ModeRun, dict[str, list[str | None]]]:
    base = Path(tempfile.mkdtemp(prefix=f"bench-main-{mode}-"))
    clone, home = base / "clone", base / "home"
    home.mkdir()
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=clone, capture_output=True, text=True,
                          check=True).stdout.strip()
    # The plugin's own settings are dropped; the machine's index, proxy and certificate settings (PIP_*, UV_*) stay.
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLLM_COMPAT_") and k != "XDG_CACHE_HOME"}
    env.update(HOME=str(home), VLLM_COMPAT_EAGER_KNOB_SERVERS=MODES[mode])
    print(f"[bench] {mode}: python3 dev.py main in a fresh clone of {head}, HOME empty ...", flush=True)
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "dev.py", "main"], cwd=clone, env=env, capture_output=True, text=True,
                          check=False)
    wall = time.monotonic() - t0
    results = clone / "reports" / "results"
    records = read_records(results)
    summary = summarize(results, records, mode, head, wall, proc.returncode, proc.stdout + proc.stderr)
    verdicts = _verdicts(records)
    print(f"[bench] {mode}: rc {proc.returncode}, {wall:.0f} s", flush=True)
    if proc.returncode != 0:
        print((proc.stdout + proc.stderr)[-3000:], file=sys.stderr)
    if not keep:
        shutil.rmtree(base, ignore_errors=True)
    else:
        print(f"[bench] kept {base}", flush=True)
    return summary, verdicts


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--modes", default="eager,compiled", help="comma-separated: eager, compiled")
    ap.add_argument("--keep", action="store_true", help="keep the clones and their HOMEs")
    ap.add_argument("--out", default=str(OUT))
    ns = ap.parse_args()
    modes = [m.strip() for m in ns.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        ap.error(f"unknown mode(s) {', '.join(unknown)}; choose from {', '.join(MODES)}")
    runs: list[ModeRun] = []
    verdicts: dict[str, dict[str, list[str | None]]] = {}
    for mode in modes:
        summary, v = run_mode(mode, ns.keep)
        runs.append(summary)
        verdicts[mode] = v
    report: dict[str, object] = {"machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
                                 "runs": runs}
    same = ""
    if len(verdicts) == 2:
        a, b = (verdicts[m] for m in modes)
        tests = sorted(set(a) | set(b))
        differ = {t: {modes[0]: a.get(t), modes[1]: b.get(t)} for t in tests if a.get(t) != b.get(t)}
        report["same_verdicts"] = {"tests": len(tests), "differ": differ}
        same = (f"Outcome and failure class per test, {modes[0]} vs {modes[1]}: "
                f"{len(tests) - len(differ)} of {len(tests)} the same.")
    out = Path(ns.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "main_job.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = ["# The main job on a fresh machine", "",
             f"`python3 benchmarks/bench_main_job.py`: `python3 dev.py main` in a fresh clone, HOME empty; "
             f"{os.cpu_count()} CPUs, no GPU.", "",
             "| mode | commit | wall | pytest passes | server starts (one-offs; shared servers eager) | outcomes |",
             "|---|---|---|---|---|---|"]
    for r in runs:
        passes = " + ".join(f"{p['wall_s']:.0f} s" for p in r["passes"])
        n_starts = len(r["starts"]) + len(r["one_off_starts"])
        n_eager = sum(1 for st in r["starts"] if st["eager"])
        outcomes = ", ".join(f"{k} {v}" for k, v in sorted(r["outcomes"].items()))
        lines.append(f"| {r['mode']} | {r['commit']} | {r['wall_s']:.0f} s ({r['wall_s'] / 60:.1f} min) "
                     f"| {passes} | {n_starts} ({len(r['one_off_starts'])}; {n_eager}) | {outcomes} |")
    if same:
        lines += ["", same]
    (out / "main_job.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    broken = [r["mode"] for r in runs if not r["outcomes"].get("passed")]
    if broken:
        print(f"[bench] no test passed in {', '.join(broken)}: the run itself is broken (see above)",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
