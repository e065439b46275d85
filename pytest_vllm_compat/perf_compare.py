"""Interleaved comparison of two servers' performance, and its statistical decision.

Why interleaved: on a shared or thermally drifting machine, the speed of the machine changes over minutes.
Measuring release A for ten minutes and then release B for ten attributes that drift to the release. Here
the workloads alternate, in counterbalanced order (A B, B A, A B, ...), so drift hits both sides alike, and
each round gives a pair measured under the same conditions.

Why both servers stay up: a restart costs 40-110 s here, so alternating restarts would make each round
several minutes long and leave most of the drift between the two sides again. Two idle-waiting servers
cost nothing measurable: each workload records the waiting server's CPU (``idle_cpu_s``) to show it.

The decision, per measure (``MEASURES``): each round gives a ratio B/A measured under the same conditions;
the comparison is the geometric mean of those ratios with a Student t interval on their logarithms, at
``CONFIDENCE`` (99 %: the calibration below found 95 % intervals too narrow for 6 rounds on this machine):

- ``regression`` / ``improvement``: the whole interval lies on one side of 1 and the point estimate moves by
  at least the measure's minimum effect: ``MIN_EFFECT`` (vLLM's own CI fails a change of -3 % throughput) or,
  where larger, what two servers of one release differ by on this machine (``INSTANCE_NOISE``, calibrated);
- ``unchanged``: the whole interval lies within +/- that minimum effect, so a change beyond it is ruled out;
- ``not measurable``: neither; the noise allows neither answer. ``mde`` says what change this comparison
  could have detected (80 % power): never read it as "no regression".

The calibration (benchmarks/bench_perf_calibration.py, reports/bench/calibration.*) measures how often an
A/A comparison flags something (false flags) and whether a known slowdown is flagged.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypedDict

from .record_types import as_float

SCHEMA = "pytest-vllm-compat/perf-compare/1"
CONFIDENCE = 0.99
MIN_EFFECT = 0.03
# Two servers of one release, model and arguments differ by this much per measure even with every round paired
# (memory placement, thread binding, what each compiled): the largest A/A change over the 20 A/A comparisons of
# the two calibration runs on this machine (reports/bench/calibration.md, calibration-run1/), rounded up. A
# comparison of two releases uses one server of each, so a smaller change cannot be told from the servers' own
# difference: it is the measure's minimum effect (and its MDE floor). Recalibrate on another host class.
INSTANCE_NOISE: dict[str, float] = {
    "tokens_per_s": 0.12,
    "cpu_ms_per_token": 0.08,
    "ttft_p50_ms": 0.13,
    "itl_p50_ms": 0.07,
}
# measure -> higher is better
MEASURES: dict[str, bool] = {
    "tokens_per_s": True,
    "cpu_ms_per_token": False,
    "ttft_p50_ms": False,
    "itl_p50_ms": False,
}
VERDICTS = ("regression", "improvement", "unchanged", "not measurable")
DEFAULT_ROUNDS = 6


def schedule(rounds: int) -> list[tuple[str, str]]:
    """The order of each round: ("a", "b"), ("b", "a"), ... (counterbalanced: neither side always goes first)."""
    return [("a", "b") if r % 2 == 0 else ("b", "a") for r in range(rounds)]


def run_interleaved(measure: Callable[[str], Mapping[str, object]], rounds: int = DEFAULT_ROUNDS,
                    progress: Callable[[str], None] | None = None) -> dict[str, list[dict[str, object]]]:
    """Run ``measure("a")`` and ``measure("b")`` alternately for ``rounds`` rounds; each side's runs in round
    order (index i of "a" and of "b" are the same round)."""
    runs: dict[str, list[dict[str, object]]] = {"a": [], "b": []}
    for r, order in enumerate(schedule(rounds)):
        for side in order:
            result = dict(measure(side))
            result["round"] = r
            runs[side].append(result)
            if progress:
                progress(f"[vllm-compat] perf round {r + 1}/{rounds} {side}: "
                         f"{result.get('tokens_per_s')} tok/s, {result.get('cpu_ms_per_token')} cpu ms/token")
    return runs


# Two-sided Student t quantiles t(1 - alpha/2, df) for the confidences offered.
_T_QUANTILES = {
    0.95: (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
           2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045),
    0.99: (63.657, 9.925, 5.841, 4.604, 4.032, 3.707, 3.499, 3.355, 3.250, 3.169, 3.106, 3.055, 3.012, 2.977,
           2.947, 2.921, 2.898, 2.878, 2.861, 2.845, 2.831, 2.819, 2.807, 2.797, 2.787, 2.779, 2.771, 2.763, 2.756),
}
_Z = {0.95: 1.960, 0.99: 2.576}
_Z_POWER = 0.8416  # 80 % power


def t_quantile(confidence: float, df: int) -> float:
    """The two-sided Student t critical value for ``confidence`` (0.95 or 0.99) with ``df`` degrees of freedom."""
    if confidence not in _T_QUANTILES:
        raise ValueError(f"confidence must be one of {sorted(_T_QUANTILES)}, got {confidence}")
    if df < 1:
        raise ValueError("need at least 2 rounds")
    table = _T_QUANTILES[confidence]
    return table[df - 1] if df <= len(table) else _Z[confidence]


class MeasureComparison(TypedDict):
    """One measure of a comparison (:func:`compare_measure`), as comparisons are published."""

    ratio: float  # geometric mean of the per-round ratios B/A
    ci: list[float]  # [lo, hi]
    confidence: float
    change: float
    mde: float
    verdict: str  # one of VERDICTS
    higher_is_better: bool
    ratio_of_medians: float
    median_a: float
    median_b: float
    spread: dict[str, float]
    n: int
    min_effect: float


def compare_measure(a: Sequence[float], b: Sequence[float], *, higher_is_better: bool,
                    confidence: float = CONFIDENCE, min_effect: float = MIN_EFFECT) -> MeasureComparison:
    """B against A over paired rounds: the geometric mean of the per-round ratios B/A with its Student t
    interval (on the log ratios), the minimum detectable change and the verdict."""
    if len(a) != len(b) or len(a) < 2:
        raise ValueError(f"need at least 2 paired rounds, got {len(a)} and {len(b)}")
    if min(a) <= 0 or min(b) <= 0:
        raise ValueError("measures must be positive")
    n = len(a)
    logs = [math.log(y / x) for x, y in zip(a, b, strict=True)]
    mean = statistics.fmean(logs)
    se = statistics.stdev(logs) / math.sqrt(n)
    t = t_quantile(confidence, n - 1)
    ratio, lo, hi = math.exp(mean), math.exp(mean - t * se), math.exp(mean + t * se)
    mde = max(min_effect, math.exp((t + _Z_POWER) * se) - 1)
    change = ratio - 1
    if (hi < 1 if higher_is_better else lo > 1) and abs(change) >= min_effect:
        verdict = "regression"
    elif (lo > 1 if higher_is_better else hi < 1) and abs(change) >= min_effect:
        verdict = "improvement"
    elif lo >= 1 - min_effect and hi <= 1 + min_effect:
        verdict = "unchanged"
    else:
        verdict = "not measurable"
    spread = {side: round((max(v) - min(v)) / statistics.median(v), 4) for side, v in (("a", a), ("b", b))}
    return {"ratio": round(ratio, 4), "ci": [round(lo, 4), round(hi, 4)], "confidence": confidence,
            "change": round(change, 4), "mde": round(mde, 4), "verdict": verdict,
            "higher_is_better": higher_is_better,
            "ratio_of_medians": round(statistics.median(b) / statistics.median(a), 4),
            "median_a": round(statistics.median(a), 4), "median_b": round(statistics.median(b), 4),
            "spread": spread, "n": n, "min_effect": min_effect}


def decide(runs: Mapping[str, Sequence[Mapping[str, object]]], *, confidence: float = CONFIDENCE,
           min_effect: float = MIN_EFFECT,
           instance_noise: Mapping[str, float] = INSTANCE_NOISE) -> dict[str, MeasureComparison]:
    """``compare_measure`` for every measure that both sides report in every round; each measure's minimum
    effect is the larger of ``min_effect`` and its ``instance_noise``."""
    out: dict[str, MeasureComparison] = {}
    for name, higher in MEASURES.items():
        a = [r.get(name) for r in runs["a"]]
        b = [r.get(name) for r in runs["b"]]
        if not a or any(v is None or as_float(v) <= 0 for v in a + b):
            continue
        out[name] = compare_measure([as_float(v) for v in a if v is not None], [as_float(v) for v in b if v is not None],
                                    higher_is_better=higher, confidence=confidence,
                                    min_effect=max(min_effect, instance_noise.get(name, 0.0)))
    return out


@dataclass(frozen=True)
class Side:
    """What one side of a comparison is: a release (with its stack) and the serve arguments that differ."""

    vllm_version: str
    distribution: str
    serve_args: tuple[str, ...] = ()
    label: str = ""

    def describe(self) -> dict[str, object]:
        return {"vllm_version": self.vllm_version, "distribution": self.distribution,
                "serve_args": list(self.serve_args), "label": self.label or self.vllm_version}


def comparison_record(*, model: str, a: Side, b: Side, runs: Mapping[str, Sequence[Mapping[str, object]]],
                      workload: Mapping[str, object], host_class: str, extra: Mapping[str, object] | None = None,
                      confidence: float = CONFIDENCE, min_effect: float = MIN_EFFECT) -> dict[str, object]:
    """The JSON a comparison is published as (``SCHEMA``)."""
    return {"schema": SCHEMA, "model": model, "a": a.describe(), "b": b.describe(), "host_class": host_class,
            "workload": dict(workload), "rounds": len(runs["a"]), "order": [list(o) for o in schedule(len(runs["a"]))],
            "method": {"statistic": "geometric mean of the per-round ratios B/A",
                       "interval": "Student t on the per-round log ratios", "confidence": confidence,
                       "min_effect": {n: max(min_effect, INSTANCE_NOISE.get(n, 0.0)) for n in MEASURES},
                       "mde": "the change detected with 80 % power at this comparison's interval width"},
            "measures": decide(runs, confidence=confidence, min_effect=min_effect),
            "runs": {side: [dict(r) for r in runs[side]] for side in ("a", "b")}, **dict(extra or {})}


def describe_measure(m: Mapping[str, object]) -> str:
    """One line for a measure: ``0.97 [0.95, 0.99] regression`` or ``not measurable (MDE 12 %)``."""
    ci = m["ci"]
    if not isinstance(ci, (list, tuple)):
        raise TypeError(f"a measure's ci is [lo, hi], not {ci!r}")
    lo, hi = ci
    head = f"{as_float(m['ratio']):.3f} [{as_float(lo):.3f}, {as_float(hi):.3f}]"
    if m["verdict"] == "not measurable":
        return f"{head} not measurable (MDE {as_float(m['mde']) * 100:.0f} %)"
    if m["verdict"] == "unchanged":
        return f"{head} unchanged (within ±{as_float(m.get('min_effect', MIN_EFFECT)) * 100:.0f} %)"
    return f"{head} {m['verdict']} ({as_float(m['change']) * 100:+.1f} %)"
