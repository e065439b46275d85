"""The static compatibility site rendered from a matrix (see docs/matrix.md).

No build step, no CDN, no external fetch: every page is one HTML file with one inline ``<style>``
(and, on the index, one small inline ``<script>`` for the filters; the page reads fully without
it). Links are relative, so the site works from ``file://`` and GitHub Pages alike. Every string
that came from records goes through :func:`esc`; only http(s) URLs become links; a
Content-Security-Policy that allows only this module's own style and script (by hash) is a second
line of defence should an unescaped string ever slip through.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shlex
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pytest_vllm_compat import site_logs, site_measures
from pytest_vllm_compat.escaping import esc
from pytest_vllm_compat.matrix import FAILING, UNKNOWN_CATEGORY, diff_versions, sort_versions, version_key

DEFAULT_TITLE = "vLLM compatibility matrix"
STATUS_ORDER = ("pass", "fail", "error", "conflict", "flaky", "unsupported", "not_applicable")
STATUS_HELP = {
    "pass": "every test passed",
    "fail": "vLLM is broken here (a test failed or the server could not start)",
    "error": "the test infrastructure failed; says nothing about vLLM",
    "conflict": "the pinned dependency stack cannot be installed together with this vLLM version",
    "flaky": "runs disagree: passed in one, failed in another",
    "unsupported": "this vLLM version does not offer the feature",
    "not_applicable": "this platform cannot run the test",
}
KIND_LABELS = {
    "vllm": "vLLM is broken here",
    "platform": "Platform limitation",
    "infrastructure": "Test infrastructure failed",
    "stack": "Cannot be installed together",
}
# The overview's columns, in this order (any other feature group follows, alphabetically).
GROUP_ORDER = ("config", "kv_cache", "guided_decoding", "stability", "tensor_parallel", "attention", "drift",
               "performance")
# Worst first: the status an overview chip shows for a feature group is the first of these any of
# its sub-features has.
SEVERITY = ("fail", "error", "conflict", "flaky", "pass", "unsupported", "not_applicable")
ABBREV = {"pass": "PASS", "fail": "FAIL", "error": "ERR", "conflict": "CONFL", "flaky": "FLAKY", "unsupported": "UNSUP",
          "not_applicable": "N/A"}
SKIPPED = ("unsupported", "not_applicable")
_PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2")

CSS = """
:root{--fg:#1d2329;--muted:#5f6b76;--line:#d5dbe1;--bg:#fff;--soft:#f5f7f9}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;color:var(--fg);background:var(--bg)}
main{max-width:1360px;margin:0 auto;padding:12px 24px 48px}
header.top{background:#18222d;color:#fff;padding:18px 24px}
header.top h1{margin:0;font-size:22px;max-width:1312px;margin:0 auto}
header.top p{margin:4px auto 0;color:#c5d0da;max-width:1312px}
nav.toc{max-width:1312px;margin:10px auto 0;display:flex;gap:14px;flex-wrap:wrap}
nav.toc a{color:#9fd3ff}
h2{font-size:18px;margin:28px 0 8px;padding-bottom:4px;border-bottom:1px solid var(--line)}
h3{font-size:15px;margin:18px 0 6px}
a{color:#0b5cad}
.muted{color:var(--muted)}
table{border-collapse:collapse;margin:6px 0 12px}
th,td{border:1px solid var(--line);padding:4px 8px;text-align:left;vertical-align:top}
th{background:var(--soft);font-weight:600}
table.grid{table-layout:fixed}
table.grid th.model{width:230px}
table.grid th.fam{width:110px}
table.grid th.plat{width:210px}
table.grid th.ver{text-align:center;width:130px}
table.grid td{overflow-wrap:anywhere}
table.grid td.c{padding:0;text-align:center}
table.grid td.c a,table.grid td.c span.none{display:block;padding:5px 6px;text-decoration:none;color:inherit;min-height:40px}
table.grid td.model{font-weight:600}
table.grid td.fam{color:var(--muted);font-size:12px}
.word{display:block;font-weight:700;text-transform:uppercase;font-size:12px;letter-spacing:.03em}
.cat{display:block;font-size:11px;opacity:.9;max-width:150px;margin:0 auto;overflow-wrap:anywhere}
.st-pass{background:#dcf5e3;color:#14532d}
.st-fail{background:#fde0de;color:#9b1c1c}
.st-error{background:#fff0d1;color:#7a4100}
.st-conflict{background:#fde7f3;color:#86198f}
.st-flaky{background:#efe4fb;color:#55238a}
.st-unsupported{background:#eceff1;color:#455a64}
.st-not_applicable{background:#f8f8f8;color:#6b7280}
.st-untested{color:#9aa4ad}
.drift-changed{color:#9b1c1c;font-weight:700}.drift-drift{color:#7a4100}.drift-identical{color:#14532d}
pre.side{white-space:pre-wrap;margin:0;max-width:420px}mark{background:#ffe08a}
th.ver.untested{color:#9aa4ad;font-weight:400;font-style:italic}
td.regression{outline:3px solid #d50000;outline-offset:-3px}
table.overview{table-layout:fixed;width:100%}
table.overview th.model{width:160px}
table.overview td.g .none{color:#a7b0b8;font-size:12px}
table.overview th .n{display:block;font-weight:400;font-size:11px;color:var(--muted)}
table.overview td.model{font-weight:600;overflow-wrap:anywhere}
table.overview td.model .fam{display:block;font-weight:400;font-size:12px;color:var(--muted)}
table.overview td.g{padding:4px}
.chips{display:grid;grid-template-columns:repeat(auto-fill,minmax(86px,1fr));gap:3px}
.chip{display:flex;justify-content:space-between;align-items:baseline;gap:3px;min-width:0;padding:1px 4px;border-radius:3px;border:1px solid rgba(0,0,0,.12);font-size:11px;line-height:1.5;white-space:nowrap;text-decoration:none;color:inherit}
a.chip:hover{border-color:currentColor}
.chip .cv{overflow:hidden;text-overflow:ellipsis;font-variant-numeric:tabular-nums;opacity:.85}
.chip .cs{font-weight:700;font-size:10px}
.chip.wide{grid-column:1/-1}
.chip.st-untested{border-style:dashed;border-color:#dde2e6;color:#a7b0b8}
.chip.regression{outline:2px solid #d50000;outline-offset:-1px}
.chip.off{opacity:.2}
td.dim{opacity:.35}
.ov-platform h3 code{font-size:14px}
details.skipped{margin:20px 0;border:1px solid var(--line);border-radius:4px;padding:6px 12px;background:var(--soft)}
details.skipped>summary{cursor:pointer;font-weight:600;font-size:15px}
details.skipped[open]{background:var(--bg)}
.pill{display:inline-block;padding:1px 8px;border-radius:10px;font-weight:700;font-size:12px;text-transform:uppercase;border:1px solid rgba(0,0,0,.12)}
.legend{display:flex;flex-wrap:wrap;gap:8px 18px;margin:8px 0;padding:0;list-style:none}
.legend li{display:flex;gap:6px;align-items:center}
.banner{border:1px solid #e0a0a0;background:#fff5f5;border-left:6px solid #d50000;padding:8px 14px;margin:16px 0;border-radius:4px}
.banner h2{border:0;margin:4px 0;color:#9b1c1c}
.banner ul{margin:4px 0 6px;padding-left:20px}
.ok-banner{border-left-color:#2e7d32;background:#f3fbf5;border-color:#b7dfc2}
form.filters{display:flex;flex-wrap:wrap;gap:12px;align-items:center;background:var(--soft);border:1px solid var(--line);padding:8px 12px;border-radius:4px;margin:10px 0}
form.filters label{display:flex;gap:6px;align-items:center;font-weight:600}
form.filters select{font:inherit;padding:2px 4px}
td.filtered>*{visibility:hidden}
[hidden]{display:none!important}
.split .kind{margin-bottom:10px}
.split table{width:100%}
.split td:first-child{width:26%}
.plots{display:flex;flex-wrap:wrap;gap:12px 28px}
figure{margin:6px 0}
figcaption{font-weight:600;margin-bottom:4px}
svg text{font:11px system-ui,sans-serif;fill:#333}
pre{background:#11181f;color:#e6edf3;padding:10px 12px;overflow:auto;max-height:480px;border-radius:4px;font-size:12px;white-space:pre-wrap;overflow-wrap:anywhere}
dl.facts{display:grid;grid-template-columns:max-content 1fr;gap:4px 16px;margin:10px 0}
dl.facts dt{font-weight:600;color:var(--muted)}
dl.facts dd{margin:0}
td.num{text-align:right;font-variant-numeric:tabular-nums}
code{font-size:12px;overflow-wrap:anywhere}
footer{margin-top:36px;color:var(--muted);font-size:12px}
"""

SCRIPT = """
(function(){
var form=document.getElementById('filters');if(!form)return;form.hidden=false;
function v(id){return document.getElementById(id).value;}
function apply(){
var fam=v('f-family'),feat=v('f-feature'),plat=v('f-platform'),st=v('f-status'),grp=feat.split(':')[0];
function rowOk(tr){return (!plat||tr.dataset.platform===plat)&&(!fam||(' '+tr.dataset.families+' ').indexOf(' '+fam+' ')>=0);}
function match(el){var s=el.dataset.status||'';return !st||s===st||(st==='regression'&&el.classList.contains('regression'));}
document.querySelectorAll('section.feature').forEach(function(sec){
var anyRow=false;
sec.querySelectorAll('tbody tr').forEach(function(tr){
var ok=rowOk(tr),hits=0;
tr.querySelectorAll('td.c').forEach(function(td){
var m=match(td);td.classList.toggle('filtered',!m);if(m&&td.dataset.status)hits++;});
if(st&&!hits)ok=false;tr.hidden=!ok;if(ok)anyRow=true;});
sec.hidden=!anyRow||(feat!==''&&sec.dataset.feature!==feat);});
document.querySelectorAll('div.ov-platform').forEach(function(box){
var anyRow=false;
box.querySelectorAll('tbody tr').forEach(function(tr){
var ok=rowOk(tr),hits=0;
tr.querySelectorAll('td.g').forEach(function(td){
var inGroup=!feat||td.dataset.group===grp;td.classList.toggle('dim',!inGroup);
td.querySelectorAll('.chip').forEach(function(ch){
var m=inGroup&&match(ch);ch.classList.toggle('off',!m);if(m&&ch.dataset.status)hits++;});});
if(st&&!hits)ok=false;tr.hidden=!ok;if(ok)anyRow=true;});
box.hidden=!anyRow;});
var d=document.getElementById('features-skipped');
if(d){var shown=d.querySelectorAll('section.feature:not([hidden])').length;d.hidden=!shown;
if(shown&&(feat||st==='unsupported'||st==='not_applicable'))d.open=true;}
}
form.addEventListener('change',apply);
form.addEventListener('reset',function(){setTimeout(apply,0);});
apply();
})();
"""


# --------------------------------------------------------------------------- escaping


def safe_url(url: Any) -> str | None:
    """The URL if its scheme is http or https, else None (so it is shown as text, not linked)."""
    if not isinstance(url, str):
        return None
    url = url.strip()
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    if parts.scheme.lower() in ("http", "https") and parts.netloc:
        return url
    return None


def _ref(url: Any) -> str:
    safe = safe_url(url)
    if safe is None:
        return f"<code>{esc(url)}</code>"
    return f'<a href="{esc(safe)}" rel="noopener noreferrer">{esc(safe)}</a>'


def _file_slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "x"


def diff_page_name(a: str, b: str) -> str:
    return f"diff-{_file_slug(a)}-{_file_slug(b)}.html"


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def _page(title: str, body: str, *, script: bool = False, heading: str = "", sub: str = "", nav: str = "") -> str:
    csp = (f"default-src 'none'; style-src {_csp_hash(CSS)}; "
           f"script-src {_csp_hash(SCRIPT) if script else chr(39) + 'none' + chr(39)}; "
           "img-src 'self' data:; base-uri 'none'; form-action 'none'")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f'<meta http-equiv="Content-Security-Policy" content="{esc(csp)}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        '<meta name="referrer" content="no-referrer">\n'
        f"<title>{esc(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        f'<header class="top"><h1>{esc(heading or title)}</h1>'
        + (f"<p>{sub}</p>" if sub else "") + nav + "</header>\n<main>\n"
        + body
        + "\n<footer>Generated by pytest-vllm-compat. Statuses: "
        + "; ".join(f"<b>{esc(s)}</b> = {esc(h)}" for s, h in STATUS_HELP.items())
        + ".</footer>\n</main>\n"
        + (f"<script>{SCRIPT}</script>\n" if script else "")
        + "</body>\n</html>\n"
    )


def _pill(status: str) -> str:
    return f'<span class="pill st-{esc(status)}">{esc(status.replace("_", " "))}</span>'


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return str(value)


def _kv_table(mapping: Mapping[str, Any] | Sequence[Any] | None, empty: str) -> str:
    if not mapping:
        return f'<p class="muted">{esc(empty)}</p>'
    if not isinstance(mapping, Mapping):  # an argv list: show it as the command line it is
        return f"<pre>{esc(shlex.join(str(a) for a in mapping))}</pre>"
    rows = "".join(f"<tr><th>{esc(k)}</th><td><code>{esc(_fmt(v))}</code></td></tr>"
                   for k, v in sorted(mapping.items()))
    return f"<table>{rows}</table>"


def _kind_label(kind: Any) -> str:
    return KIND_LABELS.get(str(kind), "Unclassified" if kind in (None, "", "unknown") else str(kind))


# --------------------------------------------------------------------------- SVG plots


def _nice_max(value: float) -> float:
    if value <= 0:
        return 1.0
    exp = 10 ** len(str(int(value))) / 10
    for step in (1, 2, 2.5, 5, 10):
        if step * exp >= value:
            return step * exp
    return 10 * exp


def _svg_frame(title: str, width: int, height: int, inner: str) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" role="img" aria-label="{esc(title)}" '
            f'width="{width}" height="{height}" viewBox="0 0 {width} {height}"><title>{esc(title)}</title>'
            f"{inner}</svg>")


def _axes(versions: Sequence[str], ymax: float, fmt: Any, *, w: int, h: int, left: int, bottom: int,
          top: int = 14, right: int = 12) -> tuple[str, Any, Any]:
    pw, ph = w - left - right, h - top - bottom
    parts = []
    for i in range(5):
        val = ymax * i / 4
        y = top + ph - ph * i / 4
        parts.append(f'<line x1="{left}" x2="{w - right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e3e7eb"/>'
                     f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{esc(fmt(val))}</text>')
    parts.append(f'<line x1="{left}" x2="{left}" y1="{top}" y2="{top + ph}" stroke="#8a949e"/>'
                 f'<line x1="{left}" x2="{w - right}" y1="{top + ph}" y2="{top + ph}" stroke="#8a949e"/>')
    n = max(len(versions), 1)
    slot = pw / n

    def x_of(i: int) -> float:
        return left + slot * (i + 0.5)

    def y_of(v: float) -> float:
        return top + ph - ph * (v / ymax if ymax else 0)

    for i, v in enumerate(versions):
        parts.append(f'<text x="{x_of(i):.1f}" y="{top + ph + 16}" text-anchor="middle">{esc(v)}</text>')
    return "".join(parts), x_of, y_of


def _color(i: int, label: str, colors: Mapping[str, str] | None) -> str:
    return (colors or {}).get(label) or _PALETTE[i % len(_PALETTE)]


def _legend(labels: Sequence[str], *, x: int, y: int, colors: Mapping[str, str] | None = None) -> str:
    parts = []
    for i, label in enumerate(labels):
        yy = y + 15 * i
        parts.append(f'<rect x="{x}" y="{yy - 9}" width="10" height="10" fill="{_color(i, label, colors)}"/>'
                     f'<text x="{x + 14}" y="{yy}">{esc(label)}</text>')
    return "".join(parts)


def svg_bar_chart(title: str, versions: Sequence[str], series: Sequence[tuple[str, Mapping[str, float]]]) -> str:
    """Grouped bars: one group per version, one bar per series (values in 0..1, shown as %)."""
    w, h, left, bottom = max(420, 90 * len(versions) + 80), 240 + 15 * len(series), 44, 40 + 15 * len(series)
    axes, x_of, y_of = _axes(versions, 1.0, lambda v: f"{v:.0%}", w=w, h=h, left=left, bottom=bottom)
    slot = (w - left - 12) / max(len(versions), 1)
    bw = min(28.0, slot * 0.8 / max(len(series), 1))
    parts = [axes]
    for si, (_, values) in enumerate(series):
        for vi, version in enumerate(versions):
            if values.get(version) is None:
                continue
            val = float(values[version])
            x = x_of(vi) - bw * len(series) / 2 + bw * si
            y = y_of(val)
            parts.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{bw - 2:.1f}" height="{y_of(0) - y:.1f}" '
                         f'fill="{_PALETTE[si % len(_PALETTE)]}"><title>{esc(version)}: {val:.0%}</title></rect>'
                         f'<text x="{x + (bw - 2) / 2:.1f}" y="{y - 3:.1f}" text-anchor="middle">{val:.0%}</text>')
    parts.append(_legend([s[0] for s in series], x=left, y=h - 15 * len(series) + 8))
    return _svg_frame(title, w, h, "".join(parts))


def svg_line_chart(title: str, versions: Sequence[str], series: Sequence[tuple[str, Mapping[str, float]]],
                   fmt: Any = _fmt, colors: Mapping[str, str] | None = None) -> str:
    """One line (with points) per series across versions; gaps where a version has no value."""
    values = [float(v) for _, s in series for v in s.values() if v is not None]
    ymax = _nice_max(max(values, default=1.0))
    w, h, left, bottom = max(420, 90 * len(versions) + 100), 240 + 15 * len(series), 64, 40 + 15 * len(series)
    axes, x_of, y_of = _axes(versions, ymax, fmt, w=w, h=h, left=left, bottom=bottom)
    parts = [axes]
    for si, (label, vals) in enumerate(series):
        color = _color(si, label, colors)
        pts = [(x_of(i), y_of(float(vals[v])), v) for i, v in enumerate(versions) if vals.get(v) is not None]
        if len(pts) > 1:
            d = " ".join(f"{x:.1f},{y:.1f}" for x, y, _ in pts)
            parts.append(f'<polyline points="{d}" fill="none" stroke="{color}" stroke-width="2"/>')
        for x, y, v in pts:
            parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4" fill="{color}">'
                         f"<title>{esc(label)} @ {esc(v)}: {esc(fmt(float(vals[v])))}</title></circle>")
    parts.append(_legend([s[0] for s in series], x=left, y=h - 15 * len(series) + 8, colors=colors))
    return _svg_frame(title, w, h, "".join(parts))


def _metric_series(cells: Sequence[Mapping[str, Any]], metric: str) -> list[tuple[str, dict[str, float]]]:
    """Per (model, platform): the median of ``metric`` over the cells of each version."""
    acc: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for c in cells:
        value = (c.get("metrics") or {}).get(metric)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            acc[f"{c['model']} · {c['platform']}"][c["vllm_version"]].append(float(value))
    return [(label, {v: statistics.median(xs) for v, xs in by_v.items()}) for label, by_v in sorted(acc.items())]


def _data_table(versions: Sequence[str], series: Sequence[tuple[str, Mapping[str, float]]], fmt: Any) -> str:
    head = "".join(f"<th>{esc(v)}</th>" for v in versions)
    rows = "".join(
        f"<tr><th>{esc(label)}</th>"
        + "".join(f'<td class="num">{esc(fmt(vals[v])) if vals.get(v) is not None else ""}</td>' for v in versions)
        + "</tr>" for label, vals in series)
    return f"<details><summary>data</summary><table><tr><th></th>{head}</tr>{rows}</table></details>"


# --------------------------------------------------------------------------- index


def _grid_cell(cell: Mapping[str, Any] | None, prefix: str = "cells/") -> str:
    if cell is None:
        return '<td class="c st-untested"><span class="none" title="not tested">–</span></td>'
    status = cell["status"]
    classes = f"c st-{esc(status)}" + (" regression" if cell.get("regression") else "")
    extra = ""
    if status in (*FAILING, "flaky"):
        extra = f'<span class="cat">{esc(cell.get("category") or UNKNOWN_CATEGORY)}</span>'
    if cell.get("regression"):
        extra += '<span class="cat">▼ regression</span>'
    extra += site_measures.grid_note(cell)
    return (f'<td class="{classes}" data-status="{esc(status)}" data-cell-id="{esc(cell["cell_id"])}" '
            f'data-version="{esc(cell["vllm_version"])}">'
            f'<a href="{esc(prefix + cell["cell_id"] + ".html")}" title="{esc(cell.get("summary"))}">'
            f'<span class="word">{esc(status.replace("_", " "))}</span>{extra}</a></td>')


def feature_group(feature: str) -> str:
    """``attention:FLASH_ATTN`` -> ``attention``; a feature without ``:`` is its own group."""
    return feature.split(":", 1)[0]


def _group_key(group: str) -> tuple[int, str]:
    return (GROUP_ORDER.index(group) if group in GROUP_ORDER else len(GROUP_ORDER), group)


def _feature_key(feature: str) -> tuple[int, str, str]:
    return (*_group_key(feature_group(feature)), feature)


def aggregate_status(statuses: Iterable[str]) -> str | None:
    """The worst of ``statuses`` (fail > error > flaky > pass > unsupported > not_applicable);
    None when there are none. An unknown status counts as worse than all of them."""
    found = set(statuses)
    if not found:
        return None
    return min(found, key=lambda s: SEVERITY.index(s) if s in SEVERITY else -1)


def _families(cells: Iterable[Mapping[str, Any]]) -> dict[str, list[str]]:
    families: dict[str, set[str]] = defaultdict(set)
    for c in cells:
        families[c["model"]] |= set(c.get("families") or [])
    return {m: sorted(f) for m, f in families.items()}


def _feature_anchor(feature: str) -> str:
    return f"feature-{_file_slug(feature)}"


def _noun(group: str) -> str:
    return "backends" if group in ("attention", "guided_decoding") else "variants"


def _group_title(group: str, version: str, cells: Sequence[Mapping[str, Any]], worst: str) -> str:
    head = f"{group} · vLLM {version}: {worst.replace('_', ' ')}"
    if len(cells) == 1 and cells[0]["feature"] == group:
        return f"{head} — {cells[0].get('summary') or ''}".rstrip(" —")
    noun = _noun(group)
    by_status: dict[str, list[str]] = defaultdict(list)
    for c in cells:
        by_status[c["status"]].append(c["feature"].split(":", 1)[-1])
    parts = []
    for status in sorted(by_status, key=lambda s: SEVERITY.index(s) if s in SEVERITY else -1):
        names = sorted(by_status[status])
        label = "n/a" if status == "not_applicable" else status
        detail = f" ({', '.join(names)})" if status not in SKIPPED or len(names) <= 3 else ""
        parts.append(f"{len(names)} {label}{detail}")
    return f"{head} — of {len(cells)} {noun}: {'; '.join(parts)}"


def _chip(group: str, version: str, cells: Sequence[Mapping[str, Any]]) -> str:
    worst = aggregate_status(c["status"] for c in cells)
    wide = " wide" if len(version) > 7 else ""  # a long version (0.6.4.post2) gets a whole line
    if worst is None:
        return (f'<span class="chip st-untested{wide}" title="{esc(f"{group} · vLLM {version}: not tested")}">'
                f'<span class="cv">{esc(version)}</span><span class="cs">–</span></span>')
    target = sorted((c for c in cells if c["status"] == worst), key=lambda c: c["feature"])[0]
    regression = any(c.get("regression") for c in cells)
    title = _group_title(group, version, cells, worst) + (" — regression" if regression else "")
    return (f'<a class="chip st-{esc(worst)}{wide}{" regression" if regression else ""}" data-status="{esc(worst)}" '
            f'data-version="{esc(version)}" href="#{esc(_feature_anchor(target["feature"]))}" title="{esc(title)}">'
            f'<span class="cv">{esc(version)}</span>'
            f'<span class="cs">{esc(ABBREV.get(worst, worst))}{" ▼" if regression else ""}</span></a>')


def _overview(matrix: Mapping[str, Any]) -> str:
    """Per platform: one row per model, one column per feature group, one chip per vLLM version."""
    cells = matrix["cells"]
    families = _families(cells)
    order = {v: i for i, v in enumerate(matrix["versions"])}
    by_platform: dict[str, dict[str, dict[tuple[str, str], list[Mapping[str, Any]]]]] = \
        defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for c in cells:
        by_platform[c["platform"]][c["model"]][(feature_group(c["feature"]), c["vllm_version"])].append(c)
    blocks = []
    for platform in sorted(by_platform):
        models = by_platform[platform]
        pcells = [c for c in cells if c["platform"] == platform]
        tested = sorted({c["vllm_version"] for c in pcells}, key=lambda v: order.get(v, len(order)))
        span = {v for v in matrix.get("untested_releases") or []
                if tested and version_key(tested[0]) < version_key(v) < version_key(tested[-1])}
        versions = sorted({*tested, *span}, key=version_key)  # a release no run tested is a "–" chip
        groups = sorted({feature_group(c["feature"]) for c in pcells}, key=_group_key)
        features_of = {g: {c["feature"] for c in pcells if feature_group(c["feature"]) == g} for g in groups}
        head = "".join(
            f'<th scope="col" data-group="{esc(g)}">{esc(g)}'
            + (f'<span class="n">{len(features_of[g])} {_noun(g)}</span>' if features_of[g] != {g} else "")
            + "</th>" for g in groups)
        rows = []
        for model in sorted(models):
            fams = families.get(model, [])
            tds = "".join(
                f'<td class="g" data-group="{esc(g)}"><div class="chips">'
                + "".join(_chip(g, v, sorted(models[model].get((g, v), []), key=lambda c: c["feature"]))
                          for v in versions)
                + "</div></td>" if any((g, v) in models[model] for v in tested)
                else f'<td class="g" data-group="{esc(g)}"><span class="none">not tested</span></td>'
                for g in groups)
            rows.append(f'<tr data-model="{esc(model)}" data-platform="{esc(platform)}" '
                        f'data-families="{esc(" ".join(fams))}"><td class="model">{esc(model)}'
                        f'<span class="fam">{esc(", ".join(fams))}</span></td>{tds}</tr>')
        blocks.append(
            f'<div class="ov-platform" data-platform="{esc(platform)}"><h3>Platform: <code>{esc(platform)}</code> '
            f'<span class="muted">· vLLM {esc(", ".join(tested))}'
            + (f"; not tested: {esc(', '.join(sorted(span, key=version_key)))}" if span else "") + "</span></h3>"
            f'<table class="overview"><thead><tr><th class="model" scope="col">Model (families)</th>{head}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table></div>')
    return "".join(blocks)


def _ver_head(version: str, untested: set[str]) -> str:
    if version in untested:
        return (f'<th class="ver untested" scope="col" title="a release no run tested">vLLM {esc(version)}'
                '<span class="n">not tested</span></th>')
    return f'<th class="ver" scope="col">vLLM {esc(version)}</th>'


def _grid(matrix: Mapping[str, Any]) -> str:
    versions = matrix.get("releases") or matrix["versions"]
    untested = set(matrix.get("untested_releases") or [])
    by_feature: dict[str, dict[tuple[str, str], dict[str, Mapping[str, Any]]]] = defaultdict(lambda: defaultdict(dict))
    families = _families(matrix["cells"])
    for c in matrix["cells"]:
        by_feature[c["feature"]][(c["model"], c["platform"])][c["vllm_version"]] = c
    shown: list[str] = []
    skipped: list[str] = []
    head = "".join(_ver_head(v, untested) for v in versions)
    for feature in sorted(by_feature, key=_feature_key):
        rows = []
        for (model, platform), by_version in sorted(by_feature[feature].items()):
            fams = families.get(model, [])
            rows.append(
                f'<tr data-model="{esc(model)}" data-platform="{esc(platform)}" data-families="{esc(" ".join(fams))}">'
                f'<td class="model">{esc(model)}</td><td class="fam">{esc(", ".join(fams))}</td>'
                f"<td>{esc(platform)}</td>"
                + "".join(_grid_cell(by_version.get(v)) for v in versions) + "</tr>")
        section = (
            f'<section class="feature" data-feature="{esc(feature)}" id="{esc(_feature_anchor(feature))}">'
            f"<h3>Feature: <code>{esc(feature)}</code></h3>"
            f'<table class="grid"><thead><tr><th class="model" scope="col">Model</th>'
            f'<th class="fam" scope="col">Families</th><th class="plat" scope="col">Platform</th>{head}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table></section>')
        all_skipped = all(c["status"] in SKIPPED for by_v in by_feature[feature].values() for c in by_v.values())
        (skipped if all_skipped else shown).append(section)
    if skipped:
        n = len(skipped)
        shown.append(
            f'<details class="skipped" id="features-skipped"><summary>Not applicable or unsupported here '
            f'({n} feature{"s" if n != 1 else ""})</summary><p class="muted">Every cell of these features is '
            "<i>not applicable</i> (the platform cannot run the test) or <i>unsupported</i> (the vLLM version "
            f'does not offer it).</p>{"".join(skipped)}</details>')
    return "".join(shown)


def _filters(matrix: Mapping[str, Any]) -> str:
    def select(ident: str, label: str, values: Iterable[str], *, labels: Mapping[str, str] | None = None) -> str:
        opts = "".join(f'<option value="{esc(v)}">{esc((labels or {}).get(v, v))}</option>' for v in values)
        return f'<label for="{ident}">{esc(label)} <select id="{ident}"><option value="">all</option>{opts}</select></label>'

    statuses = [*STATUS_ORDER, "regression"]
    return ('<form class="filters" id="filters" hidden>'
            + select("f-family", "Family", matrix.get("families") or [])
            + select("f-feature", "Feature", matrix.get("features") or [])
            + select("f-platform", "Platform", matrix.get("platforms") or [])
            + select("f-status", "Status", statuses, labels={s: s.replace("_", " ") for s in statuses})
            + '<button type="reset">Reset</button></form>')


def _legend_html() -> str:
    items = "".join(f"<li>{_pill(s)} <span>{esc(STATUS_HELP[s])}</span></li>" for s in STATUS_ORDER)
    return (f'<ul class="legend" id="legend">{items}<li><span class="pill regression-key">▼ regression</span> '
            "<span>passed in the previous tested version, fails in this one (red outline)</span></li></ul>")


def _regression_banner(matrix: Mapping[str, Any]) -> str:
    regs = matrix.get("regressions") or []
    if not regs:
        return ('<section class="banner ok-banner" id="regressions"><h2>No regressions</h2>'
                "<p>No cell that passed in one tested vLLM version fails in the next.</p></section>")
    items = "".join(
        f'<li><a href="cells/{esc(r["to_cell_id"])}.html"><b>{esc(r["model"])}</b> · {esc(r["feature"])} · '
        f'{esc(r["platform"])}</a>: pass in vLLM {esc(r["from_version"])} → <b>fail</b> in vLLM '
        f'{esc(r["to_version"])}'
        + (f' or earlier: {esc(", ".join(r["untested_between"]))} not tested' if r.get("untested_between") else "")
        + f' <span class="muted">({esc(r.get("category"))})</span></li>'
        for r in regs)
    return (f'<section class="banner" id="regressions"><h2>{len(regs)} regression{"s" if len(regs) != 1 else ""}</h2>'
            f"<ul>{items}</ul></section>")


def _failure_split(matrix: Mapping[str, Any]) -> str:
    """Failing cells grouped by who is to blame (classification kind), then by category."""
    groups: dict[str, dict[str, list[Mapping[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for c in matrix["cells"]:
        if c["status"] in (*FAILING, "flaky"):
            kind = c.get("kind") if c.get("category") != UNKNOWN_CATEGORY else "unknown"
            groups[str(kind or "unknown")][str(c.get("category") or UNKNOWN_CATEGORY)].append(c)
    if not groups:
        return '<p id="failures-none">No failing cells.</p>'
    blocks = []
    for kind in [k for k in ("vllm", "platform", "stack", "infrastructure") if k in groups] + \
            sorted(k for k in groups if k not in ("vllm", "platform", "infrastructure")):
        rows = []
        for category, cs in sorted(groups[kind].items(), key=lambda kv: (-len(kv[1]), kv[0])):
            first = cs[0]
            models = sorted({c["model"] for c in cs})
            versions = sort_versions(c["vllm_version"] for c in cs)
            links = " ".join(f'<a href="cells/{esc(c["cell_id"])}.html">{esc(c["model"])} {esc(c["vllm_version"])} '
                             f'{esc(c["feature"])}</a>' for c in cs)
            rows.append(
                f"<tr><td><b>{esc(first.get('title') or category)}</b><br><code>{esc(category)}</code></td>"
                f'<td class="num">{len(cs)}</td><td>{esc(", ".join(models))}</td><td>{esc(", ".join(versions))}</td>'
                f"<td>{esc(first.get('fixed_in') or '')}</td><td>{esc(first.get('workaround') or '')}</td>"
                f"<td><details><summary>{len(cs)} cell{'s' if len(cs) != 1 else ''}</summary>{links}</details></td></tr>")
        total = sum(len(cs) for cs in groups[kind].values())
        label = _kind_label(kind) if kind != "unknown" else "Unclassified (add a knowledge-base rule)"
        blocks.append(
            f'<div class="kind" data-kind="{esc(kind)}"><h3>{esc(label)} — {total} cell{"s" if total != 1 else ""}</h3>'
            "<table><thead><tr><th>Failure category</th><th>Cells</th><th>Models</th><th>Versions</th>"
            f"<th>Fixed in</th><th>Workaround</th><th>Where</th></tr></thead><tbody>{''.join(rows)}</tbody></table></div>")
    return f'<div class="split">{"".join(blocks)}</div>'


def _plots(matrix: Mapping[str, Any]) -> str:
    versions = matrix["versions"]
    rates: dict[str, dict[str, float]] = defaultdict(dict)
    for row in matrix.get("summary_by_version") or []:
        if row.get("pass_rate") is not None:
            rates[row["platform"]][row["vllm_version"]] = row["pass_rate"]
    rate_series = sorted(rates.items())
    figures = [f'<figure id="plot-pass-rate"><figcaption>Pass rate per vLLM version (applicable cells)</figcaption>'
               f'{svg_bar_chart("Pass rate per vLLM version", versions, rate_series)}'
               f'{_data_table(versions, rate_series, lambda v: f"{v:.0%}")}</figure>']
    labels = sorted({f"{c['model']} · {c['platform']}" for c in matrix["cells"]})
    colors = {label: _PALETTE[i % len(_PALETTE)] for i, label in enumerate(labels)}  # same series, same color
    for ident, metric, caption, fmt in (
        ("plot-start-time", "server_start_s", "Server start time per vLLM version (seconds, median)",
         lambda v: f"{v:.1f} s"),
        ("plot-kv-cache", "kv_cache_tokens", "KV-cache capacity per vLLM version (tokens)", lambda v: f"{v:,.0f}"),
        *site_measures.PERF_PLOTS,
    ):
        series = _metric_series(matrix["cells"], metric)
        if not series and ident in site_measures.PERF_PLOT_IDS:
            continue  # no run measured performance: no empty plots for it
        if series:
            figures.append(f'<figure id="{ident}"><figcaption>{esc(caption)}</figcaption>'
                           f"{svg_line_chart(caption, versions, series, fmt, colors)}{_data_table(versions, series, fmt)}</figure>")
        else:
            figures.append(f'<figure id="{ident}"><figcaption>{esc(caption)}</figcaption>'
                           f'<p class="muted">No cell reported <code>{esc(metric)}</code>.</p></figure>')
    return f'<div class="plots">{"".join(figures)}</div>' + site_measures.index_section(matrix)


def _pct(value: Any) -> str:
    return "" if value is None else f"{value:.0%}"


def _summary_table(matrix: Mapping[str, Any]) -> str:
    rows = "".join(
        f"<tr><td>{esc(r['platform'])}</td><td>{esc(r['vllm_version'])}</td>"
        + "".join(f'<td class="num">{r["counts"].get(s, 0)}</td>' for s in STATUS_ORDER)
        + f'<td class="num">{_pct(r["pass_rate"])}</td></tr>'
        for r in matrix.get("summary_by_version") or [])
    head = "".join(f"<th>{esc(s.replace('_', ' '))}</th>" for s in STATUS_ORDER)
    return (f"<table><thead><tr><th>Platform</th><th>vLLM</th>{head}<th>Pass rate</th></tr></thead>"
            f"<tbody>{rows}</tbody></table>")


def _diffs(matrix: Mapping[str, Any]) -> list[dict[str, Any]]:
    if "diffs" in matrix:
        return list(matrix["diffs"])
    versions = matrix["versions"]
    return [{"a": a, "b": b, "changes": diff_versions(matrix, a, b)} for a, b in pairwise(versions)]


def _runs_table(matrix: Mapping[str, Any]) -> str:
    rows = "".join(
        f"<tr><td><code>{esc(r.get('run_id'))}</code></td><td>{esc(', '.join(r.get('hosts') or []))}</td>"
        f"<td>{esc(r.get('started_at'))}</td><td>{esc(r.get('finished_at'))}</td>"
        f"<td>{esc(', '.join(r.get('versions') or []))}</td><td class=\"num\">{esc(r.get('records'))}</td></tr>"
        for r in matrix.get("runs") or [])
    return ("<table><thead><tr><th>Run</th><th>Hosts</th><th>Started</th><th>Finished</th><th>vLLM versions</th>"
            f"<th>Records</th></tr></thead><tbody>{rows}</tbody></table>")


def _index(matrix: Mapping[str, Any], title: str) -> str:
    cells = matrix["cells"]
    n_fail = sum(c["status"] in (*FAILING, "flaky") for c in cells)
    sub = (f"Generated {esc(matrix.get('generated_at'))} from {len(matrix.get('runs') or [])} run(s): "
           f"{len(cells)} cells, {len(matrix.get('models') or [])} models, vLLM "
           f"{esc(', '.join(matrix['versions']))}; {n_fail} failing or flaky.")
    nav = ('<nav class="toc"><a href="#overview">Overview</a><a href="#matrix">Per feature</a><a href="#failures">Failures</a>'
           '<a href="#plots">Plots</a><a href="#changes">Changes</a>'
           f'<a href="unclassified.html">Unclassified ({len(matrix.get("unclassified") or [])})</a>'
           '<a href="matrix.json">matrix.json</a><a href="#runs">Runs</a></nav>')
    diff_items = "".join(
        f'<li><a href="{esc(diff_page_name(d["a"], d["b"]))}">vLLM {esc(d["a"])} → {esc(d["b"])}</a>: '
        f'{len(d["changes"])} change{"s" if len(d["changes"]) != 1 else ""}'
        f'{"".join(f", {n} {esc(k)}" for k, n in _change_counts(d["changes"]).items())}</li>'
        for d in _diffs(matrix))
    stack_items = "".join(
        f'<li><a href="{esc(diff_page_name(d["a"], d["b"]))}">vLLM {esc(d["release"])}: default stack → '
        f'<code>{esc(d["stack"])}</code></a>: {len(d["changes"])} change{"s" if len(d["changes"]) != 1 else ""}'
        f'{"".join(f", {n} {esc(k)}" for k, n in _change_counts(d["changes"]).items())}</li>'
        for d in matrix.get("stack_diffs") or [])
    body = (
        _regression_banner(matrix)
        + '<section id="overview"><h2>Which vLLM versions work for each model</h2>'
        "<p class=\"muted\">Per platform, one row per model and one column per feature group; each chip is one "
        "vLLM version (oldest first) and shows the worst status of the group's sub-features "
        "(fail &gt; error &gt; flaky &gt; pass &gt; unsupported &gt; not applicable). Hover a chip for the detail, "
        "click it for the feature's table. ERR = error, UNSUP = unsupported, N/A = not applicable, "
        "– = not tested.</p>"
        + _legend_html() + _filters(matrix) + _overview(matrix) + "</section>"
        + '<section id="matrix"><h2>Per feature</h2>'
        "<p class=\"muted\">Rows: model on a platform; columns: vLLM versions (oldest left). "
        "Each cell links to its details.</p>"
        + _grid(matrix) + "</section>"
        + '<section id="failures"><h2>Failures: vLLM broken vs. test infrastructure failed</h2>'
        + _failure_split(matrix) + "</section>"
        + '<section id="plots"><h2>Trends by vLLM version</h2>' + _plots(matrix) + _summary_table(matrix) + "</section>"
        + '<section id="changes"><h2>Changes between consecutive versions</h2>'
        + (f"<ul>{diff_items}</ul>" if diff_items else '<p class="muted">Only one vLLM version tested.</p>')
        + ("<h3>What pinning a dependency stack changes</h3><p class=\"muted\">A column "
           "<code>0.32.0+transformers-5.16.1</code> is vLLM 0.32.0 installed in one resolve with "
           "<code>transformers==5.16.1</code> (<code>--vllm-with</code>); each link compares it with the "
           f"release's default stack.</p><ul>{stack_items}</ul>" if stack_items else "")
        + "</section>"
        + _bisections(matrix)
        + '<section id="runs"><h2>Runs</h2>' + _runs_table(matrix) + "</section>"
    )
    return _page(title, body, script=True, sub=sub, nav=nav)


def _bisections(matrix: Mapping[str, Any]) -> str:
    """``vllm-compat bisect`` results found in the results dirs: which release broke (or fixed) what."""
    items = []
    for b in matrix.get("bisections") or []:
        tests = ", ".join(sorted({str(f.get("test")) for f in b.get("flipped") or []}))
        cats = ", ".join(sorted({str(f.get("category")) for f in b.get("flipped") or [] if f.get("category")}))
        if b.get("first_bad"):
            head = f"<b>broken in {esc(b['first_bad'])}</b> (last good {esc(b.get('last_good'))})"
        elif b.get("first_fixed"):
            head = f"<b>fixed in {esc(b['first_fixed'])}</b> (last bad {esc(b.get('last_bad'))})"
        else:
            head = f"<b>no boundary</b>: {esc(b.get('conclusion'))}"
        link = safe_url(b.get("compare_url"))
        items.append(
            f"<li>{esc(tests) or '<i>the selection</i>'}: {head}"
            + (f" — <code>{esc(cats)}</code>" if cats else "")
            + (f' · <a href="{esc(link)}">what changed</a>' if link else "")
            + f' <span class="muted">(probed {esc(b.get("probed"))} of {esc(b.get("range_size"))} releases '
            f"{esc(b.get('good'))} good … {esc(b.get('bad'))} bad; selection "
            f"<code>{esc(' '.join(b.get('selection') or []))}</code>)</span></li>")
    if not items:
        return ""
    return '<section id="bisections"><h2>Bisections</h2><ul>' + "".join(items) + "</ul></section>"


def _change_counts(changes: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for ch in changes:
        counts[str(ch["change"])] += 1
    return dict(sorted(counts.items()))


# --------------------------------------------------------------------------- other pages


def _back(prefix: str = "") -> str:
    return f'<nav class="toc"><a href="{prefix}index.html">← matrix</a><a href="{prefix}unclassified.html">unclassified</a></nav>'


def _workaround_check(check: Mapping[str, Any]) -> str:
    """Whether a run with the knowledge base's workaround pin exists for this cell's release, and its result."""
    pin = f"<code>{esc(check.get('pin'))}</code>"
    cells = check.get("cells") or []
    if not cells:
        return f"no run of this release with {pin} (run it with <code>--vllm-with={esc(check.get('pin'))}</code>)"
    head = f"<b>workaround verified</b> with {pin} on " if check.get("verified") else f"tried {pin}, not verified: "
    return head + ", ".join(f'<a href="{esc(c["cell_id"])}.html">{esc(c["line"])}</a> ({esc(c["installed"])}) '
                            f'{_pill(c["status"])}' for c in cells)


def _cell_page(cell: Mapping[str, Any], siblings: Sequence[Mapping[str, Any]], title: str,
               logs: Mapping[str, str] | None = None) -> str:
    status = cell["status"]
    facts = [
        ("Status", _pill(status) + f' <span class="muted">{esc(STATUS_HELP.get(status, ""))}</span>'),
        ("Summary", esc(cell.get("summary"))),
    ]
    if cell.get("regression"):
        facts.append(("Regression", "<b>yes</b>: passed in the previous tested vLLM version"))
    if cell.get("category"):
        facts += [("Category", f"<code>{esc(cell['category'])}</code>"),
                  ("Who is to blame", esc(_kind_label(cell.get("kind")))),
                  ("Title", esc(cell.get("title"))),
                  ("Explanation", esc(cell.get("explanation"))),
                  ("Workaround", esc(cell.get("workaround"))),
                  ("Fixed in", esc(cell.get("fixed_in")))]
    if cell.get("workaround_check"):
        facts.append(("Workaround checked", _workaround_check(cell["workaround_check"])))
    if cell.get("refs"):
        facts.append(("References", "<br>".join(_ref(r) for r in cell["refs"])))
    stack = cell.get("stack")
    facts += [("vLLM", esc(cell.get("release") or cell["vllm_version"])
               + f' <span class="muted">({esc(cell.get("distribution"))})</span>'),
              ("Dependency stack", "default (no pins)" if not stack else
               esc(", ".join(f"{k}=={v}" for k, v in ((cell.get("provenance") or {}).get("pins") or {}).items())
                   or stack)),
              ("Platform", esc(cell["platform"])),
              ("Families", esc(", ".join(cell.get("families") or []))),
              ("Model source", f"<code>{esc(cell.get('model_source'))}</code>"),
              ("First seen", esc(cell.get("first_seen"))), ("Last seen", esc(cell.get("last_seen")))]
    facts_html = "".join(f"<dt>{esc(k)}</dt><dd>{v}</dd>" for k, v in facts if v)

    other = " · ".join(
        (f"<b>{esc(s['vllm_version'])}</b> {_pill(s['status'])}" if s["cell_id"] == cell["cell_id"] else
         f'<a href="{esc(s["cell_id"])}.html">{esc(s["vllm_version"])}</a> {_pill(s["status"])}')
        for s in siblings)
    runs = "".join(
        f"<tr><td><code>{esc(r['run_id'])}</code></td><td>{_pill(r['status'])}</td><td>{esc(r.get('started_at'))}</td>"
        f"<td>{esc(', '.join(f'{k}: {v}' for k, v in sorted(r['counts'].items())))}</td></tr>"
        for r in cell.get("runs") or [])
    tests = "".join(
        f"<tr><td><code>{esc(t.get('test_id'))}</code></td><td><code>{esc(t.get('run_id'))}</code></td>"
        f"<td>{esc(t.get('outcome'))}</td><td>{_pill(str(t.get('status')))}</td>"
        f'<td class="num">{esc(_fmt_duration(t.get("duration_s")))}'
        + (f'<br><span class="muted">+ {esc(_fmt_duration(t["server_start_s"]))} server start</span>'
           if t.get("server_start_s") else "") + "</td>"
        f"<td>{esc(t.get('error_summary') or t.get('skip_reason') or '')}</td>"
        f"<td>{site_logs.log_cell(t.get('log_path'), logs or {})}</td></tr>"
        for t in cell.get("tests") or [])
    argv = cell.get("argv") or []
    body = (
        f'<dl class="facts">{facts_html}</dl>'
        + (f"<p>Other versions: {other}</p>" if len(siblings) > 1 else "")
        + "<h2>Runs</h2><table><thead><tr><th>Run</th><th>Status</th><th>Started</th><th>Tests</th></tr></thead>"
        f"<tbody>{runs}</tbody></table>"
        + "<h2>Tests</h2><table><thead><tr><th>Test</th><th>Run</th><th>Outcome</th><th>Status</th>"
        f"<th>Duration</th><th>Error / reason</th><th>Server log</th></tr></thead><tbody>{tests}</tbody></table>"
        + "<h2>Server log excerpt</h2>"
        + (f'<pre id="log-excerpt">{esc(cell["log_excerpt"])}</pre>' + site_logs.excerpt_link(cell)
           if cell.get("log_excerpt")
           else '<p class="muted">No log excerpt (only failing cells keep one).</p>')
        + site_measures.drift_section(cell) + site_measures.performance_section(cell)
        + "<h2>Metrics</h2>" + _kv_table({k: v for k, v in (cell.get("metrics") or {}).items()
                                          if k not in site_measures.HIDDEN_METRICS}, "No metrics reported.")
        + "<h2>Provenance</h2>" + _kv_table(cell.get("provenance"), "No provenance recorded.")
        + "<h2>Packages</h2>" + _locks_html(cell)
        + "<h2>Serve args</h2>" + _kv_table(cell.get("serve_args"), "No serve args recorded.")
        + (f"<pre>{esc(' '.join(str(a) for a in argv))}</pre>" if argv else "")
        + "<h2>Server environment</h2>" + _kv_table(cell.get("env"), "No environment recorded.")
    )
    heading = f"{cell['model']} · {cell['feature']} · vLLM {cell['vllm_version']} · {cell['platform']}"
    return _page(f"{heading} — {title}", body, heading=heading, nav=_back("../"))


def _locks_html(cell: Mapping[str, Any]) -> str:
    """The environment's lock file(s): which exact package set each run had, and what changed between them."""
    locks = cell.get("locks") or []
    if not locks:
        return '<p class="muted">No lock file recorded (an environment not provisioned by the plugin).</p>'
    rows = "".join(
        f"<tr><td><code>{esc(lk['sha256'][:16])}</code></td>"
        f"<td>{esc(lk['packages']) if lk.get('packages') is not None else ''}</td>"
        f"<td>{esc(', '.join(lk.get('runs') or []))}</td>"
        + (f'<td><a href="../locks/{esc(lk["sha256"])}.txt">lock file</a></td>' if lk.get("stored")
           else '<td class="muted">not in the results</td>') + "</tr>"
        for lk in locks)
    out = ("<p>The exact packages each run's environment resolved to (sha256 of its lock file): the same hash "
           "means the same set.</p><table><thead><tr><th>Lock</th><th>Packages</th><th>Runs</th><th></th></tr>"
           f"</thead><tbody>{rows}</tbody></table>")
    for ch in cell.get("lock_changes") or []:
        head = f"<h3>Changed from <code>{esc(ch['from'][:16])}</code> to <code>{esc(ch['to'][:16])}</code></h3>"
        if ch.get("changed") is None:
            out += head + '<p class="muted">A lock text is not in the results directories; no package list.</p>'
            continue
        body = "".join(f"<tr><td>{esc(c['package'])}</td><td>{esc(c['from'] or 'absent')}</td>"
                       f"<td>{esc(c['to'] or 'absent')}</td></tr>" for c in ch["changed"])
        out += head + ('<table class="lock-changes"><thead><tr><th>Package</th><th>Before</th><th>After</th></tr>'
                       f"</thead><tbody>{body}</tbody></table>" if body else "<p>No package changed.</p>")
    return out


def _fmt_duration(value: Any) -> str:
    return f"{value:.2f} s" if isinstance(value, (int, float)) and not isinstance(value, bool) else ""


def _unclassified_page(matrix: Mapping[str, Any], title: str) -> str:
    ids = set(matrix.get("unclassified") or [])
    cells = [c for c in matrix["cells"] if c["cell_id"] in ids]
    rows = "".join(
        f'<tr><td><a href="cells/{esc(c["cell_id"])}.html">{esc(c["model"])}</a></td><td>{esc(c["vllm_version"])}</td>'
        f"<td>{esc(c['platform'])}</td><td><code>{esc(c['feature'])}</code></td><td>{_pill(c['status'])}</td>"
        f"<td>{esc(c.get('summary'))}</td></tr>" for c in cells)
    body = ("<p>Failing cells no knowledge-base rule explains. Read the log excerpt on each cell's page and add a "
            "rule to the failure knowledge base so the next matrix says whether vLLM or the test infrastructure "
            "is to blame.</p>"
            + (f"<table><thead><tr><th>Model</th><th>vLLM</th><th>Platform</th><th>Feature</th><th>Status</th>"
               f"<th>Summary</th></tr></thead><tbody>{rows}</tbody></table>" if rows
               else '<p id="none">Every failing cell is classified.</p>'))
    return _page(f"Unclassified failures — {title}", body, heading="Unclassified failures", nav=_back())


def _diff_page(diff: Mapping[str, Any], title: str) -> str:
    a, b = diff["a"], diff["b"]
    rows = "".join(
        f'<tr class="change-{esc(ch["change"])}"><td>{esc(ch["model"])}</td><td>{esc(ch["platform"])}</td>'
        f"<td><code>{esc(ch['feature'])}</code></td>"
        f"<td>{_cell_link(ch.get('a_cell_id'), ch.get('a_status'))}</td>"
        f"<td>{_cell_link(ch.get('b_cell_id'), ch.get('b_status'))}</td>"
        f"<td><b>{esc(ch['change'])}</b></td><td>{esc(ch.get('category') or '')}</td><td>{esc(ch.get('summary'))}</td></tr>"
        for ch in diff["changes"])
    body = (f"<p>Cells (same model, platform and feature) whose status differs between vLLM {esc(a)} and {esc(b)}.</p>"
            + (f"<table><thead><tr><th>Model</th><th>Platform</th><th>Feature</th><th>vLLM {esc(a)}</th>"
               f"<th>vLLM {esc(b)}</th><th>Change</th><th>Category</th><th>Summary</th></tr></thead>"
               f"<tbody>{rows}</tbody></table>" if rows else "<p>No status changed.</p>"))
    heading = f"vLLM {a} → {b}"
    return _page(f"{heading} — {title}", body, heading=heading, nav=_back())


def _cell_link(cell_id: Any, status: Any) -> str:
    if not cell_id:
        return '<span class="muted">not tested</span>'
    return f'<a href="cells/{esc(cell_id)}.html">{_pill(str(status))}</a>'


def render_site(matrix: Mapping[str, Any], out_dir: Path | str, title: str = DEFAULT_TITLE,
                locks: Mapping[str, str] | None = None) -> Path:
    """Write ``index.html``, ``cells/<cell_id>.html``, ``unclassified.html``, one ``diff-<a>-<b>.html`` per
    pair of consecutive versions and ``locks/<sha256>.txt`` for each lock file a cell names (``locks``:
    {sha256: text}); returns the index path."""
    out = Path(out_dir)
    (out / "cells").mkdir(parents=True, exist_ok=True)
    wanted = {lk["sha256"] for c in matrix["cells"] for lk in c.get("locks") or [] if lk.get("stored")}
    for sha in sorted(wanted & set(locks or {})):
        (out / "locks").mkdir(exist_ok=True)
        (out / "locks" / f"{sha}.txt").write_text((locks or {})[sha], encoding="utf-8")
    logs = site_logs.copy_logs(matrix, out)
    index = out / "index.html"
    index.write_text(_index(matrix, title), encoding="utf-8")
    groups: dict[tuple[str, str, str], list[Mapping[str, Any]]] = defaultdict(list)
    for c in matrix["cells"]:
        groups[(c["model"], c["platform"], c["feature"])].append(c)
    for siblings in groups.values():
        siblings = sorted(siblings, key=lambda c: version_key(c["vllm_version"]))
        for c in siblings:
            (out / "cells" / f"{c['cell_id']}.html").write_text(_cell_page(c, siblings, title, logs),
                                                                 encoding="utf-8")
    (out / "unclassified.html").write_text(_unclassified_page(matrix, title), encoding="utf-8")
    for d in _diffs(matrix) + list(matrix.get("stack_diffs") or []):
        (out / diff_page_name(d["a"], d["b"])).write_text(_diff_page(d, title), encoding="utf-8")
    return index


render = render_site
