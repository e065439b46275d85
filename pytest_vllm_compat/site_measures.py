"""The site's views of measured columns: output drift (verdicts, the two texts side by side with the
divergence marked) and performance (figures per version, regression flags). Everything is escaped."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .escaping import esc

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
    ("plot-tokens-per-s", "tokens_per_s", "Output tokens/s per vLLM version (vllm bench serve, median of repeats)",
     lambda v: f"{v:,.1f}"),
    ("plot-ttft", "ttft_p50_ms", "Time to first token p50 per vLLM version (ms)", lambda v: f"{v:,.1f} ms"),
    ("plot-itl", "itl_p50_ms", "Inter-token latency p50 per vLLM version (ms)", lambda v: f"{v:,.2f} ms"),
    ("plot-start-first", "start_first_s", "Server start time, first start of a session (s)", lambda v: f"{v:.1f} s"),
    ("plot-start-second", "start_second_s", "Server start time, second start with the kept compile cache (s)",
     lambda v: f"{v:.1f} s"),
)

PERF_PLOT_IDS = tuple(p[0] for p in PERF_PLOTS)


def grid_note(cell: Mapping[str, Any]) -> str:
    """Under a grid cell's status word: the drift verdict, or a performance regression."""
    out = ""
    d = cell.get("drift")
    if d:
        out += f'<span class="cat drift-{esc(d["verdict"])}">drift: {esc(str(d["verdict"]).replace("_", " "))}</span>'
    for r in cell.get("perf_regressions") or []:
        out += f'<span class="cat">▼ {esc(r["figure"])} {r["change"]:+.0%}</span>'
    return out


def _marked(text: str | None, offset: int | None) -> str:
    if text is None:
        return '<span class="muted">(missing)</span>'
    if offset is None:
        return esc(text)
    return esc(text[:offset]) + "<mark>" + esc(text[offset:]) + "</mark>"


def drift_section(cell: Mapping[str, Any]) -> str:
    d = cell.get("drift")
    if not d:
        return ""
    verdict = str(d["verdict"])
    head = (f'<p><b class="drift-{esc(verdict)}">{esc(verdict.replace("_", " "))}</b>: {esc(DRIFT_HELP.get(verdict))}'
            + (f' (against <a href="{esc(d["vs_cell_id"])}.html">vLLM {esc(d["vs"])}</a>)' if d.get("vs_cell_id")
               else "")
            + f'. Within this version, the same requests twice: <b>{esc(d.get("repeatability"))}</b>'
            + (f' (max |Δlogprob| {esc(d.get("repeat_max_abs_dlogprob"))})' if d.get("repeatability") else "")
            + ".</p>")
    if d.get("reason"):
        head += f'<p class="muted">{esc(d["reason"])}</p>'
    rows = "".join(
        f'<tr><td><code>{esc(p["prompt"])}</code></td><td>{esc(p["verdict"])}</td>'
        f'<td class="num">{esc(p.get("first_divergence")) if p.get("first_divergence") is not None else "–"}</td>'
        f'<td class="num">{esc(p.get("max_abs_dlogprob_before"))}</td>'
        f'<td><pre class="side">{_marked(p.get("text_a"), p.get("offset_a"))}</pre></td>'
        f'<td><pre class="side">{_marked(p.get("text_b"), p.get("offset_b"))}</pre></td></tr>'
        for p in d.get("prompts") or [])
    table = ("<table><thead><tr><th>Prompt</th><th>Verdict</th><th>First diverging token</th>"
             f"<th>max |Δlogprob| before it</th><th>vLLM {esc(d.get('vs'))}</th><th>vLLM {esc(cell['vllm_version'])}"
             f"</th></tr></thead><tbody>{rows}</tbody></table>" if rows else "")
    return "<h2>Output drift</h2>" + head + table


def _spread(metrics: Mapping[str, Any], key: str) -> str:
    value = metrics.get(f"{key}_spread")
    return "" if value is None else f"{float(value):.1%}"


def performance_section(cell: Mapping[str, Any]) -> str:
    m = cell.get("metrics") or {}
    if m.get("tokens_per_s") is None and m.get("start_first_s") is None:
        return ""
    figures = [("output tokens/s", "tokens_per_s"), ("TTFT p50 (ms)", "ttft_p50_ms"), ("TTFT p95 (ms)", "ttft_p95_ms"),
               ("ITL p50 (ms)", "itl_p50_ms"), ("ITL p95 (ms)", "itl_p95_ms")]
    rows = "".join(
        f"<tr><td>{esc(label)}</td><td class=\"num\">{esc(m.get(key))}</td>"
        f'<td class="num">{_spread(m, key)}</td>'
        f"<td>{esc(', '.join(str(r.get(key)) for r in m.get('perf_repeats') or []))}</td></tr>"
        for label, key in figures if m.get(key) is not None)
    starts = "".join(
        f"<tr><td>{esc(label)}</td><td class=\"num\">{esc(m.get(f'start_{which}_s'))}</td>"
        f"<td>{esc(m.get(f'compile_cache_{which}'))}</td><td>{esc(m.get(f'compile_cache_{which}_reason') or '')}</td></tr>"
        for label, which in (("first start", "first"), ("second start", "second")) if m.get(f"start_{which}_s") is not None)
    flags = "".join(
        f'<li><b>{esc(r["figure"])}</b> {r["change"]:+.1%} against <a href="{esc(r["vs_cell_id"])}.html">vLLM '
        f'{esc(r["vs"])}</a> ({esc(r["from"])} → {esc(r["to"])}; threshold {r["threshold"]:.0%})</li>'
        for r in cell.get("perf_regressions") or [])
    out = "<h2>Performance</h2>"
    if m.get("perf_workload"):
        out += f'<p class="muted">Workload: {esc(", ".join(f"{k}={v}" for k, v in m["perf_workload"].items()))}; ' \
               f'host {esc(m.get("host_class"))}.</p>'
    if flags:
        out += f"<p><b>Regression</b> beyond the measured spread:</p><ul>{flags}</ul>"
    if rows:
        out += ("<table><thead><tr><th>Figure</th><th>Median</th><th>Spread</th><th>Repeats</th></tr></thead>"
                f"<tbody>{rows}</tbody></table>")
    if starts:
        out += ("<table><thead><tr><th>Server start</th><th>Seconds</th><th>Compile cache</th><th>Reason</th>"
                f"</tr></thead><tbody>{starts}</tbody></table>")
    return out


def index_section(matrix: Mapping[str, Any]) -> str:
    """Drift verdicts per series and the performance regressions, for the index's trends section."""
    drift_rows = "".join(
        f"<tr><td>{esc(r['model'])}</td><td>{esc(r['platform'])}</td><td>{esc(r['stack'] or 'default')}</td>"
        + "".join(f'<td><a href="cells/{esc(cid)}.html">{esc(v)}</a>: <span class="drift-{esc(verdict)}">'
                  f'{esc(str(verdict).replace("_", " "))}</span></td>'
                  for v, verdict, cid in zip(r["versions"], r["verdicts"], r["cell_ids"], strict=True))
        + "</tr>" for r in matrix.get("drift") or [])
    out = '<h3 id="drift">Output drift between consecutive tested versions</h3>'
    out += ("<table><tbody>" + drift_rows + "</tbody></table>" if drift_rows
            else '<p class="muted">No drift results.</p>')
    regs = "".join(
        f'<li>{esc(r["model"])} · {esc(r["platform"])}: <b>{esc(r["figure"])}</b> {r["change"]:+.1%} from vLLM '
        f'{esc(r["from_version"])} to <a href="cells/{esc(r["cell_id"])}.html">{esc(r["to_version"])}</a> '
        f'(threshold {r["threshold"]:.0%}: the larger of 10 % and the two versions\' measured spread)</li>'
        for r in matrix.get("performance_regressions") or [])
    out += '<h3 id="perf-regressions">Performance regressions</h3>'
    out += (f"<ul>{regs}</ul>" if regs else '<p class="muted">None beyond the measured spread (figures of '
            "different host classes are never compared).</p>")
    return out
