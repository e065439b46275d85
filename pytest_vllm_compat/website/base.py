"""What every page of the static site shares: the status vocabulary, the stylesheet and script (package
data, inlined into each page under a hash-based Content-Security-Policy) and the Jinja2 environment that
renders ``templates/*.j2`` with autoescaping on, so every string that came from records is escaped there."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from importlib import resources
from urllib.parse import urlsplit

import jinja2
from markupsafe import Markup

# Worst first (SEVERITY): the status an overview chip shows for a feature group is the first of these any of its
# sub-features has. STATUS_ORDER below is the order the legend and the filters list the cell statuses in.
from ..outcomes import SEVERITY

DEFAULT_TITLE = "vLLM compatibility matrix"
STATUS_ORDER = ("pass", "fail", "error", "conflict", "flaky", "unsupported", "not_applicable")  # display order
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
ABBREV = {"pass": "PASS", "fail": "FAIL", "error": "ERR", "conflict": "CONFL", "flaky": "FLAKY", "unsupported": "UNSUP",
          "not_applicable": "N/A"}
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2")
PACKAGE = "pytest_vllm_compat.website"  # its templates/ and static/ folders are package data


def static_text(name: str) -> str:
    """A file of the package's ``static/`` folder (package data), as text."""
    return resources.files(PACKAGE).joinpath("static", name).read_text(encoding="utf-8")


CSS = static_text("site.css")
SCRIPT = static_text("site.js")


def csp_hash(text: str) -> str:
    """The CSP source expression (``'sha256-…'``) that allows exactly this inline style or script text."""
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def csp(script: bool) -> str:
    """The page's policy: nothing but our own style (and, with ``script``, our own script), by hash."""
    return (f"default-src 'none'; style-src {csp_hash(CSS)}; "
            f"script-src {csp_hash(SCRIPT) if script else repr('none')}; "
            "img-src 'self' data:; base-uri 'none'; form-action 'none'")


def safe_url(url: object) -> str | None:
    """The URL if its scheme is http or https, else None (so it is shown as text, not linked)."""
    if not isinstance(url, str):
        return None
    text: str = url.strip()
    try:
        parts = urlsplit(text)
    except ValueError:
        return None
    if parts.scheme.lower() in ("http", "https") and parts.netloc:
        return text
    return None


def file_slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "x"


def diff_page_name(a: str, b: str) -> str:
    return f"diff-{file_slug(a)}-{file_slug(b)}.html"


def fmt(value: object) -> str:
    """A metric for people: 3 significant digits, thousands separators, JSON for structures."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return str(value)


def fmt_duration(value: object) -> str:
    return f"{value:.2f} s" if isinstance(value, (int, float)) and not isinstance(value, bool) else ""


def kind_label(kind: object) -> str:
    return KIND_LABELS.get(str(kind), "Unclassified" if kind in (None, "", "unknown") else str(kind))


def feature_group(feature: str) -> str:
    """``attention:FLASH_ATTN`` -> ``attention``; a feature without ``:`` is its own group."""
    return feature.split(":", 1)[0]


def aggregate_status(statuses: Iterable[str]) -> str | None:
    """The worst of ``statuses`` (fail > error > flaky > pass > unsupported > not_applicable);
    None when there are none. An unknown status counts as worse than all of them."""
    found = set(statuses)
    if not found:
        return None
    return min(found, key=lambda s: SEVERITY.index(s) if s in SEVERITY else -1)


def plural(n: int, noun: str) -> str:
    """``1 cell``, ``2 cells``."""
    return f"{n} {noun}{'s' if n != 1 else ''}"


def _finalize(value: object) -> object:
    return "" if value is None else value  # a missing record field shows as nothing, not "None"


ENV = jinja2.Environment(
    loader=jinja2.PackageLoader(PACKAGE, "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
    finalize=_finalize,
)
ENV.globals.update(safe_url=safe_url, STATUS_HELP=STATUS_HELP, STATUS_ORDER=STATUS_ORDER, plural=plural)
ENV.filters.update(fmt=fmt, duration=fmt_duration, kind_label=kind_label)


def render_template(name: str, /, **context: object) -> str:
    return ENV.get_template(name).render(**context)


def fragment(name: str, /, **context: object) -> Markup:
    """A template rendered for inclusion in another (an SVG chart): already escaped, so marked safe."""
    return Markup(render_template(name, **context).rstrip("\n"))  # the template autoescaped every value


def page(name: str, /, *, title: str, heading: str = "", script: bool = False, **context: object) -> str:
    """A whole page: ``templates/<name>`` extends ``_page.html.j2`` (head, CSP, inline style and script)."""
    return render_page(name, context, title=title, heading=heading, script=script)


def render_page(name: str, context: Mapping[str, object], *, title: str, heading: str = "",
                script: bool = False) -> str:
    """:func:`page` with its template's values given as one mapping (a view builder's context)."""
    frame: dict[str, object] = {"title": title, "heading": heading or title, "csp": csp(script),
                                "css": Markup(CSS), "script": Markup(SCRIPT) if script else ""}  # our own files, trusted
    return render_template(name, **frame, **context)  # a key in both is a TypeError, as in a call
