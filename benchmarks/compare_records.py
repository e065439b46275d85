"""Compare the records of two runs of the same suites (e.g. before and after a refactoring): same tests, same
fields, same values, except what changes between any two runs.

    python3 benchmarks/compare_records.py RESULTS_A RESULTS_B [--json OUT]

Records are matched by test id. Per record, these are normalised before comparing:

* ids and timestamps: ``run_id``, ``started_at``, ``finished_at``; a run id inside a path (``log_path``), and
  the results directory itself (the two runs wrote into different ones);
* measurements: ``duration_s``, ``server_start_s``, ``server.start_time_s`` and every number in ``metrics``
  (they are compared by presence and type, not value: a second run measures other times);
* the per-start port on the server's argv (``--port N``), the per-start number in a one-off server's log file
  name, and, in free text (error text, the matched log line, crash summaries), digits (pids, ports, clock times,
  byte counts in vLLM's log lines), object addresses and request ids;
* a log excerpt is compared by its error lines (normalised as above): the lines around them interleave with
  /health polls and vary from run to run.

Anything else that differs is printed; the exit status is 1 when something does.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

IDS = ("run_id", "started_at", "finished_at")
MEASURED = ("duration_s", "server_start_s")
FREE_TEXT = ("text", "summary", "log_excerpt", "crash", "detail", "evidence", "matched")


def read(results: Path) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for f in sorted((results / "records").glob("*.jsonl")):
        for line in f.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                out[r["test_id"]] = r
    return out


def _numbers(value: Any) -> Any:
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, (int, float)):
        return f"<{type(value).__name__}>"
    if isinstance(value, dict):
        return {k: _numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_numbers(v) for v in value]
    return value


def _text(value: Any) -> Any:
    if isinstance(value, str):
        value = re.sub(r"0x[0-9a-f]+", "0xADDR", value)
        value = re.sub(r"(chatcmpl|cmpl)-[0-9a-f-]+", r"\1-ID", value)
        return re.sub(r"\d+", "N", value)
    if isinstance(value, dict):
        return {k: _text(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_text(v) for v in value]
    return value


def normalise(record: dict[str, Any], results: Path) -> dict[str, Any]:
    r = json.loads(json.dumps(record).replace(str(results.resolve()), "<results>").replace(str(results), "<results>"))
    run_id = r.get("run_id", "")
    for k in IDS:
        r.pop(k, None)
    for k in MEASURED:
        if k in r:
            r[k] = _numbers(r[k])
    r["metrics"] = _numbers(r.get("metrics"))
    text = json.dumps(r)
    if run_id:
        text = text.replace(run_id, "<run>")
    r = json.loads(text)
    server = r.get("server")
    if server:
        server["start_time_s"] = _numbers(server.get("start_time_s"))
        argv = server.get("argv") or []
        for i, a in enumerate(argv[:-1]):
            if a == "--port":
                argv[i + 1] = "<port>"
    if r.get("log_excerpt"):
        r["log_excerpt"] = sorted({_text(line) for line in r["log_excerpt"].splitlines() if "ERROR" in line})
    for holder in (r, r.get("server") or {}):
        if holder.get("log_path"):
            holder["log_path"] = re.sub(r"\.oneoff\.\d+\.", ".oneoff.N.", holder["log_path"])
    if r.get("error"):
        r["error"] = {k: _text(v) if k in FREE_TEXT else v for k, v in r["error"].items()}
    if r.get("classification"):
        r["classification"] = {k: _text(v) if k in FREE_TEXT else v for k, v in r["classification"].items()}
    return r


def diff(a: Any, b: Any, path: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for k in sorted(set(a) | set(b)):
            if k not in a or k not in b:
                out.append(f"{path}.{k}: only in {'B' if k not in a else 'A'}")
            else:
                out += diff(a[k], b[k], f"{path}.{k}")
        return out
    if a != b:
        return [f"{path}: {json.dumps(a)[:200]} != {json.dumps(b)[:200]}"]
    return []


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("a", type=Path)
    ap.add_argument("b", type=Path)
    ap.add_argument("--json", type=Path, help="write the comparison summary here")
    ns = ap.parse_args()
    a, b = read(ns.a), read(ns.b)
    lines: list[str] = []
    for t in sorted(set(a) - set(b)):
        lines.append(f"{t}: only in A")
    for t in sorted(set(b) - set(a)):
        lines.append(f"{t}: only in B")
    differing = 0
    for t in sorted(set(a) & set(b)):
        d = diff(normalise(a[t], ns.a), normalise(b[t], ns.b))
        if d:
            differing += 1
            lines += [f"{t}: {x}" for x in d]
    statuses = {s: sum(1 for r in a.values() if r["status"] == s) for s in sorted({r["status"] for r in a.values()})}
    summary = {"records_a": len(a), "records_b": len(b), "common": len(set(a) & set(b)),
               "differing_records": differing, "statuses_a": statuses, "differences": lines}
    print(f"A: {len(a)} records {statuses}; B: {len(b)} records; {summary['common']} in both; "
          f"{differing} differ after normalising ids, timestamps, measurements and ports")
    for line in lines:
        print("  " + line)
    if ns.json:
        ns.json.parent.mkdir(parents=True, exist_ok=True)
        ns.json.write_text(json.dumps(summary, indent=1) + "\n")
    return 1 if lines else 0


if __name__ == "__main__":
    sys.exit(main())
