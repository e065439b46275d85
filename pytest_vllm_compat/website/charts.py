"""The index's trend plots: inline SVG charts (``templates/chart.svg.j2``) of pass rates and metrics per vLLM
version, each with its data table. Python computes the geometry; the template writes the markup and escapes
every label."""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence

from markupsafe import Markup

from pytest_vllm_compat.matrix.cell_types import Cell, Matrix, items, mapping
from pytest_vllm_compat.website.base import PALETTE, fmt, fragment

from . import measures as site_measures

Series = Sequence[tuple[str, Mapping[str, float]]]
Formatter = Callable[[float], str]


def _nice_max(value: float) -> float:
    if value <= 0:
        return 1.0
    exp: float = 10 ** len(str(int(value))) / 10
    for step in (1, 2, 2.5, 5, 10):
        if step * exp >= value:
            return step * exp
    return 10 * exp


class _Axes:
    """A chart's plot area: value gridlines with their labels, the two axes, one slot per version."""

    def __init__(self, versions: Sequence[str], ymax: float, label: Formatter, *, w: int, h: int, left: int,
                 bottom: int, top: int = 14, right: int = 12) -> None:
        self.left, self.top, self.right_x = left, top, w - right
        self.ph = h - top - bottom
        self.ymax = ymax
        self.slot = (w - left - right) / max(len(versions), 1)
        self.grid = [{"y": f"{top + self.ph - self.ph * i / 4:.1f}",
                      "label_y": f"{top + self.ph - self.ph * i / 4 + 4:.1f}",
                      "label": label(ymax * i / 4)} for i in range(5)]
        self.versions = [{"x": f"{self.x_of(i):.1f}", "text": v} for i, v in enumerate(versions)]

    def x_of(self, i: int) -> float:
        return self.left + self.slot * (i + 0.5)

    def y_of(self, v: float) -> float:
        return self.top + self.ph - self.ph * (v / self.ymax if self.ymax else 0)

    def context(self) -> dict[str, object]:
        return {"left": self.left, "top": self.top, "right_x": self.right_x, "bottom_y": self.top + self.ph,
                "grid": self.grid, "versions": self.versions}


def _color(i: int, label: str, colors: Mapping[str, str] | None) -> str:
    return (colors or {}).get(label) or PALETTE[i % len(PALETTE)]


def _legend(labels: Sequence[str], *, x: int, y: int, colors: Mapping[str, str] | None = None) -> list[dict[str, object]]:
    return [{"x": x, "text_x": x + 14, "rect_y": y + 15 * i - 9, "text_y": y + 15 * i,
             "color": _color(i, label, colors), "label": label} for i, label in enumerate(labels)]


def svg_bar_chart(title: str, versions: Sequence[str], series: Series) -> Markup:
    """Grouped bars: one group per version, one bar per series (values in 0..1, shown as %)."""
    w, h, left, bottom = max(420, 90 * len(versions) + 80), 240 + 15 * len(series), 44, 40 + 15 * len(series)
    axes = _Axes(versions, 1.0, lambda v: f"{v:.0%}", w=w, h=h, left=left, bottom=bottom)
    bw = min(28.0, axes.slot * 0.8 / max(len(series), 1))
    bars = []
    for si, (_, values) in enumerate(series):
        for vi, version in enumerate(versions):
            if values.get(version) is None:
                continue
            val = float(values[version])
            x = axes.x_of(vi) - bw * len(series) / 2 + bw * si
            y = axes.y_of(val)
            bars.append({"x": f"{x:.1f}", "y": f"{y:.1f}", "width": f"{bw - 2:.1f}", "height": f"{axes.y_of(0) - y:.1f}",
                         "fill": PALETTE[si % len(PALETTE)], "tip": f"{version}: {val:.0%}",
                         "label_x": f"{x + (bw - 2) / 2:.1f}", "label_y": f"{y - 3:.1f}", "label": f"{val:.0%}"})
    return fragment("chart.svg.j2", title=title, w=w, h=h, axes=axes.context(), bars=bars, lines=[],
                    legend=_legend([s[0] for s in series], x=left, y=h - 15 * len(series) + 8))


Ranges = Mapping[str, Mapping[str, tuple[float, float]]]


def svg_line_chart(title: str, versions: Sequence[str], series: Series, fmt: Formatter = fmt,
                   colors: Mapping[str, str] | None = None, ranges: Ranges | None = None) -> Markup:
    """One line (with points) per series across versions; gaps where a version has no value. ``ranges``:
    per series label and version, (lowest, highest) of the repeats, drawn as a bar through the point."""
    ranges = ranges or {}
    values = [float(v) for _, s in series for v in s.values() if v is not None]
    values += [hi for r in ranges.values() for _, hi in r.values()]
    ymax = _nice_max(max(values, default=1.0))
    w, h, left, bottom = max(420, 90 * len(versions) + 100), 240 + 15 * len(series), 64, 40 + 15 * len(series)
    axes = _Axes(versions, ymax, fmt, w=w, h=h, left=left, bottom=bottom)
    lines = []
    for si, (label, vals) in enumerate(series):
        pts = [(axes.x_of(i), axes.y_of(float(vals[v])), v) for i, v in enumerate(versions) if vals.get(v) is not None]
        lines.append({"color": _color(si, label, colors),
                      "points": " ".join(f"{x:.1f},{y:.1f}" for x, y, _ in pts) if len(pts) > 1 else None,
                      "dots": [{"x": f"{x:.1f}", "y": f"{y:.1f}", "tip": _tip(label, v, float(vals[v]),
                                                                             ranges.get(label, {}).get(v), fmt),
                                "whisker": _whisker(axes, ranges.get(label, {}).get(v))}
                               for x, y, v in pts]})
    return fragment("chart.svg.j2", title=title, w=w, h=h, axes=axes.context(), bars=[], lines=lines,
                    legend=_legend([s[0] for s in series], x=left, y=h - 15 * len(series) + 8, colors=colors))


def _tip(label: str, version: str, value: float, rng: tuple[float, float] | None, fmt: Formatter) -> str:
    spread = f" (repeats {fmt(rng[0])} to {fmt(rng[1])})" if rng else ""
    return f"{label} @ {version}: {fmt(value)}{spread}"


def _whisker(axes: _Axes, rng: tuple[float, float] | None) -> dict[str, str] | None:
    if not rng:
        return None
    return {"y1": f"{axes.y_of(rng[0]):.1f}", "y2": f"{axes.y_of(rng[1]):.1f}"}


def _metric_ranges(cells: Sequence[Cell], metric: str) -> dict[str, dict[str, tuple[float, float]]]:
    """Per (model, platform) and version: the lowest and highest repeat of ``metric`` (``perf_repeats``)."""
    acc: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for c in cells:
        for r in items((c.get("metrics") or {}).get("perf_repeats")):
            value = mapping(r).get(metric)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                acc[f"{c['model']} · {c['platform']}"][c["vllm_version"]].append(float(value))
    return {label: {v: (min(xs), max(xs)) for v, xs in by_v.items()} for label, by_v in acc.items()}


def _metric_series(cells: Sequence[Cell], metric: str) -> list[tuple[str, dict[str, float]]]:
    """Per (model, platform): the median of ``metric`` over the cells of each version."""
    acc: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for c in cells:
        value = (c.get("metrics") or {}).get(metric)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            acc[f"{c['model']} · {c['platform']}"][c["vllm_version"]].append(float(value))
    return [(label, {v: statistics.median(xs) for v, xs in by_v.items()}) for label, by_v in sorted(acc.items())]


def _data_table(versions: Sequence[str], series: Series, fmt: Formatter, ranges: Ranges | None = None) -> dict[str, object]:
    def cell(label: str, vals: Mapping[str, float], v: str) -> str:
        if vals.get(v) is None:
            return ""
        rng = (ranges or {}).get(label, {}).get(v)
        return fmt(vals[v]) + (f" ({fmt(rng[0])} to {fmt(rng[1])})" if rng else "")

    return {"versions": list(versions),
            "rows": [{"label": label, "values": [cell(label, vals, v) for v in versions]} for label, vals in series]}


def _pct(v: float) -> str:
    return f"{v:.0%}"


def plots(matrix: Matrix) -> dict[str, object]:
    """The index's figures (pass rate, start time, KV cache, performance) and its drift/performance lists."""
    versions = matrix["versions"]
    rates: dict[str, dict[str, float]] = defaultdict(dict)
    for row in matrix.get("summary_by_version") or []:
        rate = row["pass_rate"]
        if rate is not None:
            rates[row["platform"]][row["vllm_version"]] = rate
    rate_series = sorted(rates.items())
    figures: list[dict[str, object]] = [{
        "id": "plot-pass-rate", "caption": "Pass rate per vLLM version (applicable cells)", "metric": None,
        "svg": svg_bar_chart("Pass rate per vLLM version", versions, rate_series),
        "table": _data_table(versions, rate_series, _pct)}]
    labels = sorted({f"{c['model']} · {c['platform']}" for c in matrix["cells"]})
    colors = {label: PALETTE[i % len(PALETTE)] for i, label in enumerate(labels)}  # same series, same color
    builtin: tuple[tuple[str, str, str, Formatter], ...] = (
        ("plot-start-time", "server_start_s", "Server start time per vLLM version (seconds, median)",
         lambda v: f"{v:.1f} s"),
        ("plot-kv-cache", "kv_cache_tokens", "KV-cache capacity per vLLM version (tokens)", lambda v: f"{v:,.0f}"),
    )
    for ident, metric, caption, fmt_ in (*builtin, *site_measures.PERF_PLOTS):
        series = _metric_series(matrix["cells"], metric)
        if not series and ident in site_measures.PERF_PLOT_IDS:
            continue  # no run measured performance: no empty plots for it
        ranges = _metric_ranges(matrix["cells"], metric)
        figures.append({"id": ident, "caption": caption, "metric": metric,
                        "svg": svg_line_chart(caption, versions, series, fmt_, colors, ranges) if series else None,
                        "table": _data_table(versions, series, fmt_, ranges)})
    return {"figures": figures, "measures": site_measures.index_section(matrix)}
