"""The rendered site in real headless Chromium, opened from ``file://``: the grid, the regression
banner, the filters (through the DevTools protocol), that injected markup never runs, that the page
reads with JavaScript off, and a screenshot (kept under tmp_path, copied to
``$VLLM_COMPAT_SCREENSHOT_DIR`` when set)."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from importlib.util import module_from_spec, spec_from_file_location
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = os.environ.get("VLLM_COMPAT_CHROMIUM") or next(
    (found for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
     if (found := shutil.which(name))), "")
if not CHROMIUM or not Path(CHROMIUM).is_file():
    why = (f"no Chromium: {CHROMIUM or 'none of chromium, chromium-browser, google-chrome on PATH'} "
           "(set VLLM_COMPAT_CHROMIUM, or apt-get install -y chromium)")
    if os.environ.get("VLLM_COMPAT_REQUIRE_BROWSER") == "1":  # `python3 dev.py test`: never silently skipped
        pytest.fail(why, pytrace=False)
    pytest.skip(why, allow_module_level=True)
websocket = pytest.importorskip("websocket", reason="websocket-client is needed to drive Chromium (pip install websocket-client)")

from pytest_vllm_compat import matrix as mx  # noqa: E402
from pytest_vllm_compat import website  # noqa: E402

TITLE = "Compatibility matrix (browser test)"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--no-default-browser-check",
         "--disable-extensions", "--hide-scrollbars", "--mute-audio"]


def _scenario() -> Any:
    spec = spec_from_file_location("_vllm_compat_matrix_scenario_browser",
                                   Path(__file__).parents[1] / "unit" / "test_matrix.py")
    assert spec is not None and spec.loader is not None
    module = module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class DevTools:
    """A minimal Chrome DevTools protocol client over one page target."""

    def __init__(self, ws_url: str) -> None:
        self.ws = websocket.create_connection(ws_url, timeout=30, suppress_origin=True)
        self.ids = itertools.count(1)
        self.events: list[dict[str, Any]] = []

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        msg_id = next(self.ids)
        self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == msg_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                result: dict[str, Any] = msg.get("result", {})
                return result
            if "method" in msg:
                self.events.append(msg)

    def wait_event(self, method: str, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for ev in self.events:
                if ev["method"] == method:
                    self.events.remove(ev)
                    return ev
            msg = json.loads(self.ws.recv())
            if "method" in msg:
                self.events.append(msg)
        raise TimeoutError(method)

    def navigate(self, url: str) -> None:
        self.events.clear()
        self.send("Page.navigate", url=url)
        self.wait_event("Page.loadEventFired")

    def js(self, expression: str) -> Any:
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, dict[str, Any], Path]:
    scenario = _scenario()
    out = tmp_path_factory.mktemp("site")
    m = scenario.sample_matrix()
    mx.write_matrix(m, out)
    website.render_site(m, out, title=TITLE)
    return scenario, m, out


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevTools]:
    profile = tmp_path_factory.mktemp("chromium-profile")
    proc = subprocess.Popen([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0",
                             "--window-size=1400,1000", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.is_file() and port_file.read_text().strip()):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"chromium did not start its DevTools endpoint (exit code {proc.poll()})")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as resp:
            targets = json.load(resp)
        page = next(t for t in targets if t.get("type") == "page")
        dt = DevTools(page["webSocketDebuggerUrl"])
        for domain in ("Page", "Runtime", "Log"):
            dt.send(f"{domain}.enable")
        dt.send("Emulation.setDeviceMetricsOverride", width=1400, height=1000, deviceScaleFactor=1, mobile=False)
        yield dt
        dt.ws.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture()
def index(browser: DevTools, built: tuple[Any, dict[str, Any], Path]) -> DevTools:
    browser.navigate((built[2] / "index.html").as_uri())
    return browser


def _problems(events: list[dict[str, Any]]) -> list[str]:
    """Dialogs opened, exceptions thrown, CSP violations and failed loads seen by the page."""
    out = []
    for ev in events:
        method, params = ev["method"], ev.get("params", {})
        if method == "Page.javascriptDialogOpening":
            out.append(f"dialog: {params.get('message')}")
        elif method == "Runtime.exceptionThrown":
            out.append(f"exception: {params.get('exceptionDetails', {}).get('text')}")
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            out.append(f"log: {params['entry'].get('text')}")
    return out


def test_grid_shows_every_cell_with_its_status_word(index: DevTools, built: tuple[Any, dict[str, Any], Path]) -> None:
    _, m, _ = built
    # all-n/a/unsupported features are collapsed at the end; one click (here: .open) shows them
    assert index.js("document.getElementById('features-skipped').open") is False
    index.js("document.getElementById('features-skipped').open=true")
    shown = index.js("""Array.from(document.querySelectorAll('td.c[data-cell-id]')).map(function(td){
        return [td.dataset.cellId, td.dataset.status, td.querySelector('.word').innerText.trim(),
                getComputedStyle(td).backgroundColor, td.offsetWidth > 0];})""")
    by_id = {c["cell_id"]: c for c in m["cells"]}
    assert sorted(s[0] for s in shown) == sorted(by_id)
    for cell_id, status, word, _, visible in shown:
        assert status == by_id[cell_id]["status"] and visible
        assert word.lower() == status.replace("_", " ")  # uppercase by CSS only
    # our stylesheet was allowed by the CSP: pass cells are green, fail cells are not
    colors = {s[1]: s[3] for s in shown}
    assert colors["pass"] == "rgb(220, 245, 227)" and colors["fail"] != colors["pass"]
    assert _problems(index.events) == []


def test_regression_banner_lists_the_planted_regression(index: DevTools, built: tuple[Any, dict[str, Any], Path]) -> None:
    _, m, _ = built
    (reg,) = m["regressions"]
    banner = index.js("document.getElementById('regressions').innerText")
    assert "1 regression" in banner and "tiny-mistral" in banner and "kv_cache" in banner
    assert "0.28.0" in banner and "0.32.0" in banner
    assert index.js("Array.from(document.querySelectorAll('td.regression')).map(td => td.dataset.cellId)") == [
        reg["to_cell_id"]]
    href = index.js("document.querySelector('#regressions a').href")
    assert href.endswith(f"/cells/{reg['to_cell_id']}.html") and href.startswith("file://")


def test_injected_markup_did_not_execute(browser: DevTools, built: tuple[Any, dict[str, Any], Path]) -> None:
    scenario, m, out = built
    evil = scenario.cell(m, scenario.EVIL_MODEL, "0.32.0", "config")
    for page in (out / "index.html", out / "cells" / f"{evil['cell_id']}.html"):
        browser.navigate(page.as_uri())
        title = browser.js("document.title")
        assert title == TITLE or title.endswith(f"— {TITLE}"), title
        assert "pwned" not in title
        assert browser.js("document.querySelectorAll('img,[onmouseover],[onerror]').length") == 0
        assert browser.js("document.scripts.length") == (1 if page.name == "index.html" else 0)
        assert _problems(browser.events) == [], page.name
    # the log line is shown as text
    assert "document.title='pwned'" in browser.js("document.getElementById('log-excerpt').innerText")


def test_dump_dom_title_unchanged(built: tuple[Any, dict[str, Any], Path], tmp_path: Path) -> None:
    """The plain command-line route: --dump-dom prints the DOM after scripts ran."""
    scenario, m, out = built
    evil = scenario.cell(m, scenario.EVIL_MODEL, "0.32.0", "config")
    page = out / "cells" / f"{evil['cell_id']}.html"
    proc = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", page.as_uri()],
                          capture_output=True, text=True, timeout=120, check=True)
    dom = proc.stdout
    assert "<title>" in dom and "pwned" not in dom.split("<title>")[1].split("</title>")[0]
    assert "&lt;script&gt;" in dom and "<script>alert" not in dom


def test_filters_hide_rows_and_cells(index: DevTools, built: tuple[Any, dict[str, Any], Path]) -> None:
    _, m, _ = built
    assert index.js("document.getElementById('filters').hidden") is False  # our script ran

    def choose(select: str, value: str) -> None:
        index.js(f"var s=document.getElementById({json.dumps(select)});s.value={json.dumps(value)};"
                 "s.dispatchEvent(new Event('change',{bubbles:true}));")

    # the all-n/a/unsupported features sit in a collapsed <details>: open it so their rows lay out
    assert index.js("document.getElementById('features-skipped').open") is False
    index.js("document.getElementById('features-skipped').open=true")
    visible_rows = """Array.from(document.querySelectorAll('section.feature tbody tr'))
        .filter(tr => tr.offsetParent !== null).map(tr => [tr.closest('section').dataset.feature,
        tr.dataset.model, tr.dataset.platform])"""
    all_rows = index.js(visible_rows)
    assert len(all_rows) == len({(c["feature"], c["model"], c["platform"]) for c in m["cells"]})

    overview_rows = """Array.from(document.querySelectorAll('div.ov-platform tbody tr'))
        .filter(tr => tr.offsetParent !== null).map(tr => [tr.dataset.platform, tr.dataset.model])"""
    lit_chips = """Array.from(document.querySelectorAll('div.ov-platform .chip[data-status]'))
        .filter(ch => ch.offsetParent !== null && !ch.classList.contains('off'))
        .map(ch => [ch.closest('tr').dataset.model, ch.closest('td').dataset.group, ch.dataset.version,
                    ch.dataset.status])"""
    all_overview = index.js(overview_rows)
    assert len(all_overview) == len({(c["model"], c["platform"]) for c in m["cells"]})

    h100 = "cuda:NVIDIA H100 80GB HBM3"
    choose("f-platform", h100)
    assert index.js(visible_rows) == [["config", "tiny-mistral", h100]]
    assert index.js(overview_rows) == [[h100, "tiny-mistral"]]
    assert index.js("document.querySelector('div.ov-platform[data-platform=\"cpu\"]').offsetParent") is None
    choose("f-platform", "")
    choose("f-family", "mistral")
    assert {r[1] for r in index.js(visible_rows)} == {"tiny-mistral"}
    assert {r[1] for r in index.js(overview_rows)} == {"tiny-mistral"}
    choose("f-family", "")
    choose("f-status", "regression")
    assert index.js(visible_rows) == [["kv_cache", "tiny-mistral", "cpu"]]
    unfiltered = index.js("""Array.from(document.querySelectorAll('td.c[data-cell-id]'))
        .filter(td => td.offsetParent !== null && !td.classList.contains('filtered')).map(td => td.dataset.status)""")
    assert unfiltered == ["fail"]
    assert index.js(overview_rows) == [["cpu", "tiny-mistral"]]
    assert index.js(lit_chips) == [["tiny-mistral", "kv_cache", "0.32.0", "fail"]]
    choose("f-status", "not_applicable")  # only in the collapsed section
    assert index.js(visible_rows) == [["tensor_parallel", "tiny-llama", "cpu"]]
    assert index.js(lit_chips) == [["tiny-llama", "tensor_parallel", "0.32.0", "not_applicable"]]
    choose("f-status", "")
    choose("f-feature", "stability")
    assert index.js(visible_rows) == [["stability", "tiny-mistral", "cpu"]]
    index.js("document.getElementById('filters').reset()")
    time.sleep(0.1)
    assert len(index.js(visible_rows)) == len(all_rows)


def test_readable_with_javascript_off(browser: DevTools, built: tuple[Any, dict[str, Any], Path]) -> None:
    _, m, out = built
    browser.send("Emulation.setScriptExecutionDisabled", value=True)
    try:
        browser.navigate((out / "index.html").as_uri())
        assert browser.js("document.getElementById('filters').offsetParent") is None  # hidden without JS
        assert browser.js("document.querySelectorAll('td.c[data-cell-id]').length") == len(m["cells"])
        assert browser.js("document.querySelector('section.feature').offsetParent !== null")
        # the overview reads without JS, and the collapsed features are there (closed, one click away)
        assert browser.js("document.getElementById('overview').offsetParent !== null")
        assert browser.js("document.querySelectorAll('div.ov-platform .chip[data-status]').length") > 0
        assert browser.js("document.querySelectorAll('#features-skipped section.feature').length") == 2
        assert browser.js("document.getElementById('features-skipped').open") is False
    finally:
        browser.send("Emulation.setScriptExecutionDisabled", value=False)


def test_screenshot(index: DevTools, tmp_path: Path) -> None:
    import base64

    shot = index.send("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                      clip={"x": 0, "y": 0, "width": 1400,
                            "height": min(4000, index.js("document.documentElement.scrollHeight")), "scale": 1})
    png = base64.b64decode(shot["data"])
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    path = tmp_path / "site-screenshot.png"
    path.write_bytes(png)
    target = os.environ.get("VLLM_COMPAT_SCREENSHOT_DIR")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(target) / path.name)
