#!/usr/bin/env python3
"""What the drift and performance suites cost per version, and how much tokens/s spreads within one version.
Reads result records (the published runs by default) and writes reports/bench/drift_perf.json (+ .md).

    python3 benchmarks/bench_drift_perf.py [RESULTS_DIR ...]

Cost per version = wall time the two suites add to a suites run: their tests' durations (setup + call +
teardown; the drift test shares the model's server with the other suites, the performance test starts a
second server itself, which is inside its duration). Spread = (max - min) / median of output tokens/s over
the repeats of ``vllm bench serve`` in one run.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pytest_vllm_compat.matrix import build_matrix, load_manifests, load_records  # noqa: E402
from pytest_vllm_compat.stacks import line_of  # noqa: E402
from pytest_vllm_compat.versions import version_key  # noqa: E402


def main(argv: list[str]) -> int:
    dirs = [Path(a) for a in argv] or sorted(d for d in (ROOT / "reports" / "runs").iterdir()
                                             if d.is_dir() and (d / "records").is_dir())
    records = load_records(dirs)
    matrix = build_matrix(records, load_manifests(dirs), classifier=None)
    cost: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    total: dict[str, float] = defaultdict(float)
    for r in records:
        line = line_of(r["vllm_version"], (r.get("stack") or {}).get("name") or "")
        total[line] += float(r.get("duration_s") or 0.0)
        feature = str(r.get("feature") or "").split(":")[0]
        if feature in ("drift", "performance"):
            cost[line][feature] += float(r.get("duration_s") or 0.0)
    rows: list[dict[str, Any]] = []
    for c in matrix["cells"]:
        m = c.get("metrics") or {}
        if c["feature"] == "performance" and m.get("tokens_per_s") is not None:
            repeats = [r["tokens_per_s"] for r in m.get("perf_repeats") or [] if r.get("tokens_per_s")]
            rows.append({"line": c["vllm_version"], "model": c["model"], "tokens_per_s": m["tokens_per_s"],
                         "tokens_per_s_repeats": repeats,
                         "spread": m.get("tokens_per_s_spread"), "ttft_p50_ms": m.get("ttft_p50_ms"),
                         "itl_p50_ms": m.get("itl_p50_ms"), "start_first_s": m.get("start_first_s"),
                         "start_second_s": m.get("start_second_s"),
                         "compile_cache_second": m.get("compile_cache_second"),
                         "regressions": c.get("perf_regressions") or []})
    drift_rows = [{"model": r["model"], "stack": r["stack"], "versions": r["versions"], "verdicts": r["verdicts"]}
                  for r in matrix.get("drift") or []]
    lines = sorted(set(cost) | {r["line"] for r in rows}, key=version_key)
    out = {
        "cost_s": {ln: {"drift": round(cost[ln]["drift"], 1), "performance": round(cost[ln]["performance"], 1),
                        "suites_total": round(total[ln], 1)} for ln in lines},
        "performance": sorted(rows, key=lambda r: version_key(r["line"])),
        "median_spread": statistics.median([r["spread"] for r in rows if r["spread"] is not None] or [0.0]),
        "drift": drift_rows,
        "performance_regressions": matrix.get("performance_regressions") or [],
    }
    target = ROOT / "reports" / "bench" / "drift_perf.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(out, indent=1) + "\n")
    md = ["| line | drift s | performance s | whole run s | tokens/s (median of 3) | repeats | spread | TTFT p50 ms "
          "| first start s | second start s | compile cache (2nd) |", "|" + "---|" * 11]
    by_line = {r["line"]: r for r in rows}
    for ln in lines:
        r = by_line.get(ln, {})
        md.append(f"| {ln} | {out['cost_s'][ln]['drift']} | {out['cost_s'][ln]['performance']} | "
                  f"{out['cost_s'][ln]['suites_total']} | {r.get('tokens_per_s', '')} | "
                  f"{', '.join(str(x) for x in r.get('tokens_per_s_repeats', []))} | "
                  f"{'' if r.get('spread') is None else format(r['spread'], '.1%')} | {r.get('ttft_p50_ms', '')} | "
                  f"{r.get('start_first_s', '')} | {r.get('start_second_s', '')} | {r.get('compile_cache_second', '')} |")
    md.append("")
    md += [f"- drift {d['model']} ({d['stack'] or 'default stack'}): "
           + ", ".join(f"{v} {x}" for v, x in zip(d["versions"], d["verdicts"], strict=True)) for d in drift_rows]
    md += [f"- performance regression: {r['model']} {r['figure']} {r['change']:+.1%} from {r['from_version']} to "
           f"{r['to_version']} (threshold {r['threshold']:.0%})" for r in out["performance_regressions"]]
    target.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
