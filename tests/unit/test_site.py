"""The static site: structure of the index, detail pages, diff and unclassified pages, and safety
(every record string escaped, only http(s) links, no external fetches)."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from pytest_vllm_compat import site

S = Path(__file__).with_name("test_matrix.py")


@pytest.fixture(scope="module")
def scenario() -> Any:
    from importlib.util import module_from_spec, spec_from_file_location

    spec = spec_from_file_location("_vllm_compat_matrix_scenario_site", S)
    assert spec is not None and spec.loader is not None
    module = module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def rendered(scenario: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    m = scenario.sample_matrix()
    out = tmp_path_factory.mktemp("site")
    index = site.render_site(m, out, title="Compat <matrix>")
    assert index == out / "index.html"
    return m, out


class Tree(HTMLParser):
    """Collects start tags (with attributes), script bodies and text, and checks nesting."""

    VOID = {"meta", "br", "input", "img", "link", "hr", "rect", "circle", "line", "polyline", "path"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.scripts: list[str] = []
        self.text: list[str] = []
        self.stack: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_endtag(self, tag: str) -> None:
        if tag in self.VOID:
            return
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes <{self.stack[-1:]}>"
        self.stack.pop()
        self._in_script = False

    def handle_data(self, data: str) -> None:
        (self.scripts if self._in_script else self.text).append(data)

    def find(self, tag: str, **attrs: str) -> list[dict[str, str | None]]:
        return [a for t, a in self.tags if t == tag and all(a.get(k.replace("_", "-")) == v for k, v in attrs.items())]


def parse(path: Path) -> Tree:
    tree = Tree()
    tree.feed(path.read_text(encoding="utf-8"))
    tree.close()
    assert tree.stack == [], f"unclosed tags in {path.name}: {tree.stack}"
    return tree


def test_index_grid_has_a_linked_cell_per_matrix_cell(rendered: tuple[dict[str, Any], Path]) -> None:
    m, out = rendered
    tree = parse(out / "index.html")
    tds = [a for t, a in tree.tags if t == "td" and a.get("data-cell-id")]
    assert sorted(a["data-cell-id"] or "" for a in tds) == sorted(c["cell_id"] for c in m["cells"])
    by_id = {c["cell_id"]: c for c in m["cells"]}
    for a in tds:
        assert a["data-status"] == by_id[a["data-cell-id"] or ""]["status"]
    html_text = (out / "index.html").read_text()
    for c in m["cells"]:
        # each cell is a link to its detail page showing the status word (not color alone)
        link = re.search(rf'data-cell-id="{re.escape(c["cell_id"])}"[^>]*><a href="cells/{re.escape(c["cell_id"])}'
                         rf'\.html"[^>]*><span class="word">([^<]+)</span>', html_text)
        assert link and link.group(1) == c["status"].replace("_", " ")
        assert (out / "cells" / f"{c['cell_id']}.html").is_file()
    # failures show their category in the cell
    reg = next(c for c in m["cells"] if c["regression"])
    assert re.search(rf'data-cell-id="{reg["cell_id"]}".*?<span class="cat">kv_cache_capacity_mismatch</span>',
                     html_text)
    # rows carry what the filters need; versions are columns in numeric order
    rows = tree.find("tr")
    assert {r.get("data-platform") for r in rows if r.get("data-platform")} == {"cpu", "cuda:NVIDIA H100 80GB HBM3"}
    assert any(r.get("data-families") == "mistral" for r in rows)
    assert {s["data-feature"] for s in tree.find("section") if s.get("data-feature")} == set(m["features"])
    assert re.findall(r'<th class="ver" scope="col">vLLM ([^<]+)</th>', html_text)[:2] == ["0.28.0", "0.32.0"]


def test_index_regression_banner_legend_filters_split_and_plots(rendered: tuple[dict[str, Any], Path]) -> None:
    m, out = rendered
    tree = parse(out / "index.html")
    html_text = (out / "index.html").read_text()
    reg = m["regressions"][0]
    banner = re.search(r'<section class="banner" id="regressions">(.*?)</section>', html_text, re.S)
    assert banner and "1 regression" in banner.group(1) and reg["to_cell_id"] in banner.group(1)
    assert "0.28.0" in banner.group(1) and "0.32.0" in banner.group(1)
    regression_tds = [a for a in tree.find("td") if "regression" in (a.get("class") or "").split()]
    assert [a["data-cell-id"] for a in regression_tds] == [reg["to_cell_id"]]
    legend = re.search(r'<ul class="legend" id="legend">(.*?)</ul>', html_text, re.S)
    assert legend and all(s.replace("_", " ") in legend.group(1) for s in site.STATUS_ORDER)
    # filters: four selects, hidden until the script shows them (the page reads fine without JS)
    form = tree.find("form", id="filters")[0]
    assert "hidden" in form
    assert {s["id"] for s in tree.find("select")} == {"f-family", "f-feature", "f-platform", "f-status"}
    assert {o["value"] for o in tree.find("option")} >= {"llama", "mistral", "kv_cache", "cpu", "flaky", "regression"}
    # one inline style, one inline script, no external resources
    assert len(tree.find("style")) == 1 and len(tree.scripts) == 1
    assert all(not a.get("src") for a in tree.find("script"))
    assert not tree.find("link") and not tree.find("img") and not tree.find("iframe")
    # vLLM broken vs infrastructure failed
    kinds = {d["data-kind"] for d in tree.find("div") if d.get("data-kind")}
    assert kinds == {"vllm", "infrastructure", "unknown"}
    infra = re.search(r'data-kind="infrastructure"><h3>(.*?)</h3>(.*?)</div>', html_text, re.S)
    assert infra and "Test infrastructure failed" in infra.group(1) and "startup_timeout" in infra.group(2)
    vllm = re.search(r'data-kind="vllm"><h3>(.*?)</h3>(.*?)</div>', html_text, re.S)
    assert vllm and "vLLM is broken here" in vllm.group(1) and "kv_cache_capacity_mismatch" in vllm.group(2)
    # inline SVG plots; KV-cache capacity and start time from the cells' metrics
    assert len(tree.find("svg")) == 3
    assert {f["id"] for f in tree.find("figure")} == {"plot-pass-rate", "plot-start-time", "plot-kv-cache"}
    kv = re.search(r'<figure id="plot-kv-cache">(.*?)</figure>', html_text, re.S)
    assert kv and "10,000" in kv.group(1) and "8,000" in kv.group(1)
    # links to the diff and unclassified pages are relative
    assert tree.find("a", href="diff-0.28.0-0.32.0.html") and tree.find("a", href="unclassified.html")


def test_all_links_are_relative_and_resolve(rendered: tuple[dict[str, Any], Path]) -> None:
    _, out = rendered
    pages = [out / "index.html", out / "unclassified.html", *out.glob("diff-*.html"), *(out / "cells").glob("*.html")]
    external = set()
    for page in pages:
        for a in parse(page).find("a"):
            href = a.get("href") or ""
            if href.startswith(("http://", "https://")):
                external.add(href)
                assert a.get("rel") == "noopener noreferrer"
                continue
            assert not href.startswith(("/", "javascript:", "file:")), href
            target = href.split("#")[0]
            if target and target != "matrix.json":  # matrix.json is written by write_matrix
                assert (page.parent / target).resolve().is_file(), (page.name, href)
    # the refs of the classifications, only http(s); javascript: is shown as text
    assert "https://github.com/vllm-project/vllm/issues/1" in external
    assert 'https://example.org/a?b=1&c="x"' in external


def test_detail_page(rendered: tuple[dict[str, Any], Path], scenario: Any) -> None:
    m, out = rendered
    c = next(c for c in m["cells"] if c["regression"])
    page = out / "cells" / f"{c['cell_id']}.html"
    tree = parse(page)
    text = " ".join(tree.text)
    for expected in ("fail", "kv_cache_capacity_mismatch", "kv_cache_capacity_mismatch explained",
                     "pin an older version", "vLLM is broken here", "AssertionError: kv_cache broke",
                     "ERROR something went wrong", "max_model_len", "VLLM_LOGGING_LEVEL", "torch", "2.5.0",
                     "kv_cache_tokens", "8,000"):
        assert expected in text, expected
    assert tree.find("a", href="../index.html")
    assert re.search(r'<pre id="log-excerpt">ERROR something went wrong</pre>', page.read_text())
    assert re.search(r"<td class=\"num\">1\.50 s</td>", page.read_text())  # test durations
    flaky = scenario.cell(m, "tiny-llama", "0.32.0", "config")
    ftext = " ".join(parse(out / "cells" / f"{flaky['cell_id']}.html").text)
    assert "run-a" in ftext and "run-b" in ftext and "flaky" in ftext


def test_unclassified_and_diff_pages(rendered: tuple[dict[str, Any], Path]) -> None:
    m, out = rendered
    unc = (out / "unclassified.html").read_text()
    assert f'href="cells/{m["unclassified"][0]}.html"' in unc
    diff = out / "diff-0.28.0-0.32.0.html"
    tree = parse(diff)
    rows = {r["class"] for r in tree.find("tr") if r.get("class")}
    assert {"change-regression", "change-changed", "change-added", "change-removed"} <= rows


def test_hostile_strings_render_inert(rendered: tuple[dict[str, Any], Path], scenario: Any) -> None:
    m, out = rendered
    evil = scenario.cell(m, scenario.EVIL_MODEL, "0.32.0", "config")
    pages = [out / "index.html", out / "cells" / f"{evil['cell_id']}.html", out / "unclassified.html",
             out / "diff-0.28.0-0.32.0.html"]
    for page in pages:
        raw = page.read_text()
        tree = parse(page)
        # the only <script> is ours (index) and it contains no data
        assert len(re.findall(r"<script", raw, re.I)) == (1 if page.name == "index.html" else 0), page.name
        assert all("alert" not in s and "pwned" not in s for s in tree.scripts)
        assert "<img" not in raw
        # the injected attribute never became an attribute
        assert all("onmouseover" not in attrs for _, attrs in tree.tags)
        assert all(not k.startswith("on") for _, attrs in tree.tags for k in attrs), page.name
        # ...and the text is still there for people to read, escaped (the evil cell is classified)
        if page.name != "unclassified.html":
            assert "&lt;script&gt;alert(1)&lt;/script&gt;&quot; onmouseover=&quot;x" in raw, page.name
    detail = (out / "cells" / f"{evil['cell_id']}.html").read_text()
    assert "document.title=&#x27;pwned&#x27;" in detail  # the log line, in <pre>
    assert 'href="javascript:' not in detail and "<code>javascript:alert(1)</code>" in detail
    assert 'href="https://example.org/a?b=1&amp;c=&quot;x&quot;"' in detail
    assert "&lt;b&gt;bold&lt;/b&gt;" in detail  # a serve arg key
    assert "<title>" in detail and "<script>" not in detail.split("<title>")[1].split("</title>")[0]


def test_esc_and_safe_url() -> None:
    assert site.esc('<a href="x">\'&') == "&lt;a href=&quot;x&quot;&gt;&#x27;&amp;"
    assert site.esc(None) == ""
    assert site.safe_url("https://x.org/a") == "https://x.org/a"
    assert site.safe_url("HTTP://x.org") == "HTTP://x.org"
    for bad in ("javascript:alert(1)", " javascript:x", "data:text/html,x", "file:///etc/passwd", "//x.org", "x", 3):
        assert site.safe_url(bad) is None


def test_csp_allows_only_our_style_and_script(rendered: tuple[dict[str, Any], Path]) -> None:
    _, out = rendered
    tree = parse(out / "index.html")
    (meta,) = tree.find("meta", http_equiv="Content-Security-Policy")
    csp = meta["content"] or ""
    assert "default-src 'none'" in csp and "'unsafe-inline'" not in csp
    assert site._csp_hash(site.SCRIPT) in csp and site._csp_hash(site.CSS) in csp
    cell_page = next((out / "cells").glob("*.html"))
    (meta,) = parse(cell_page).find("meta", http_equiv="Content-Security-Policy")
    assert "script-src 'none'" in (meta["content"] or "")


def test_single_version_and_empty_metrics(tmp_path: Path, scenario: Any) -> None:
    from pytest_vllm_compat.matrix import build_matrix

    m = build_matrix([scenario.record("m", "1.0.0", "f", "pass", server=None)], classifier=None)
    site.render_site(m, tmp_path)
    html_text = (tmp_path / "index.html").read_text()
    assert "No regressions" in html_text and "Only one vLLM version tested" in html_text
    assert "No cell reported <code>kv_cache_tokens</code>" in html_text
    assert not list(tmp_path.glob("diff-*.html"))
