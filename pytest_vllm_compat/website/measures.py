"""The site's views of measured columns: output drift (verdicts, the two texts side by side with the
divergence marked) and performance (figures per version with their spread, and each step between consecutive
releases as the interleaved comparison's ratio with its interval, or "not measurable (MDE ...)"). These
functions shape the data;
``templates/_measures.html.j2`` renders it (autoescaped)."""

from __future__ import annotations

from collections.abc import Mapping

from ..matrix.cell_types import Cell, Matrix, items, mapping
from ..perf_compare import MEASURES, describe_measure
from ..record_types import as_float

# Metrics shown in their own sections, not in the cell page's metrics table.
HIDDEN_METRICS = ("drift_outputs", "drift_settings", "perf_repeats", "perf_workload")
DRIFT_HELP = {
    "baseline": "the first tested version of this series: nothing to compare with",
    "identical": "same tokens and logprobs as the previous tested version",
    "drift": "numerical drift within the tolerance (logprobs moved, or a near-tie token flipped)",
    "changed": "the output changed beyond the tolerance",
    "not_comparable": "the two versions served different weights",
}
# Plots of the index, after the built-in ones: (id, metric, caption, format).
PERF_PLOTS = (
    ("plot-tokens-per-s", "tokens_per_s", "Output tokens/s per vLLM version (vllm bench serve: median of repeats, "
     "bar from the slowest to the fastest repeat)",
     lambda v: f"{v:,.1f}"),
    ("plot-ttft", "ttft_p50_ms", "Time to first token p50 per vLLM version (ms)", lambda v: f"{v:,.1f} ms"),
    ("plot-itl", "itl_p50_ms", "Inter-token latency p50 per vLLM version (ms)", lambda v: f"{v:,.2f} ms"),
    ("plot-start-first", "start_first_s", "Server start time, first start of a session (s)", lambda v: f"{v:.1f} s"),
    ("plot-start-second", "start_second_s", "Server start time, second start with the kept compile cache (s)",
     lambda v: f"{v:.1f} s"),
)

PERF_PLOT_IDS = tuple(p[0] for p in PERF_PLOTS)
_FIGURES = (("output tokens/s", "tokens_per_s"), ("TTFT p50 (ms)", "ttft_p50_ms"), ("TTFT p95 (ms)", "ttft_p95_ms"),
            ("ITL p50 (ms)", "itl_p50_ms"), ("ITL p95 (ms)", "itl_p95_ms"))


def grid_note(cell: Cell) -> dict[str, object]:
    """Under a grid cell's status word: the drift verdict, and each measure the interleaved comparison with the
    previous release found slower."""
    d = cell.get("drift")
    step = cell.get("perf_step") or {}
    measures = mapping(step.get("measures"))
    return {"drift": str(d["verdict"]) if d else None,
            "perf": [{"figure": name, "change": f"{as_float(mapping(measures[str(name)])['change']):+.0%}"}
                     for name in items(step.get("regressions"))]}



def step_view(step: Mapping[str, object]) -> dict[str, object]:
    """One step between consecutive releases: per measure, the ratio with its interval and the verdict."""
    measures = {k: mapping(v) for k, v in mapping(step.get("measures")).items()}
    return {"model": step["model"], "from_version": step["from_version"], "to_version": step["to_version"],
            "compared": bool(step.get("compared")), "reason": step.get("reason"), "rounds": step.get("rounds"),
            "host_class": step.get("host_class"), "vs_cell_id": step.get("vs_cell_id"),
            "measures": [{"name": name, "verdict": measures[name]["verdict"], "text": describe_measure(measures[name])}
                         if name in measures else {"name": name, "verdict": None, "text": "–"} for name in MEASURES]}


def drift_section(cell: Cell) -> dict[str, object] | None:
    """The cell page's drift verdict and, per prompt, the two outputs (None: the cell measured no drift)."""
    d = cell.get("drift")
    if not d:
        return None
    verdict = str(d["verdict"])
    prompts = [mapping(p) for p in items(d.get("prompts"))]
    return {
        "verdict": verdict,
        "help": DRIFT_HELP.get(verdict),
        "vs": d.get("vs"),
        "vs_cell_id": d.get("vs_cell_id"),
        "repeatability": d.get("repeatability"),
        "repeat_max_abs_dlogprob": d.get("repeat_max_abs_dlogprob"),
        "reason": d.get("reason"),
        "version": cell["vllm_version"],
        "prompts": [{"prompt": p["prompt"], "verdict": p["verdict"],
                     "first_divergence": p.get("first_divergence"),
                     "max_abs_dlogprob_before": p.get("max_abs_dlogprob_before"),
                     "a": _marked(p.get("text_a"), p.get("offset_a")),
                     "b": _marked(p.get("text_b"), p.get("offset_b"))}
                    for p in prompts],
    }


def _marked(text: object, offset: object) -> dict[str, object] | None:
    """An output split where it diverges (``after`` is marked); None when the text is missing."""
    if not isinstance(text, str):
        return None
    if not isinstance(offset, int):
        return {"before": text, "after": None}
    return {"before": text[:offset], "after": text[offset:]}


def _spread(metrics: Mapping[str, object], key: str) -> str:
    value = metrics.get(f"{key}_spread")
    return "" if value is None else f"{as_float(value):.1%}"


def performance_section(cell: Cell) -> dict[str, object] | None:
    """The cell page's performance figures, server starts and regression flags (None: nothing measured)."""
    m = cell.get("metrics") or {}
    if m.get("tokens_per_s") is None and m.get("start_first_s") is None:
        return None
    workload = mapping(m.get("perf_workload"))
    return {
        "workload": ", ".join(f"{k}={v}" for k, v in workload.items()) if workload else None,
        "host_class": m.get("host_class"),
        "figures": [{"label": label, "median": m.get(key), "spread": _spread(m, key),
                     "repeats": ", ".join(str(mapping(r).get(key)) for r in items(m.get("perf_repeats")))}
                    for label, key in _FIGURES if m.get(key) is not None],
        "starts": [{"label": label, "seconds": m.get(f"start_{which}_s"), "cache": m.get(f"compile_cache_{which}"),
                    "reason": m.get(f"compile_cache_{which}_reason") or ""}
                   for label, which in (("first start", "first"), ("second start", "second"))
                   if m.get(f"start_{which}_s") is not None],
        "step": step_view(cell["perf_step"]) if cell.get("perf_step") else None,
    }


def index_section(matrix: Matrix) -> dict[str, object]:
    """Drift verdicts per series and the performance regressions, for the index's trends section."""
    return {
        "drift": [{"model": r["model"], "platform": r["platform"], "stack": r["stack"] or "default",
                   "steps": [{"version": v, "verdict": str(verdict), "cell_id": cid}
                             for v, verdict, cid in zip(items(r["versions"]), items(r["verdicts"]),
                                                        items(r["cell_ids"]), strict=True)]}
                  for r in matrix.get("drift") or []],
        "measure_names": list(MEASURES),
        "steps": [step_view(st) for st in matrix.get("performance_steps") or []],
    }
