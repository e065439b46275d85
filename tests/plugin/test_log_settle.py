"""A failure's log evidence is complete before it is classified (log_settle.py), through the plugin as users run it.

The server is the stand-in of tests/standin, launched as the plugin launches vLLM (``--vllm=current
--vllm-python``, ``python -m vllm.entrypoints.openai.api_server``): it answers a structured-output request with
HTTP 500 at once and writes the engine's error line to its log 200-500 ms later, as vLLM's EngineCore line can
reach the log file after the client has its 500. Before the log was settled, that record read "the server log
shows no error" and was classified as infrastructure; the same failure now gets the knowledge base's verdict
whatever the delay.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from pytest_vllm_compat.log_settle import http_error_status, settle

STANDIN = Path(__file__).resolve().parents[1] / "standin"

TESTS = """
import pytest

@pytest.mark.guided_decoding
def test_choice(vllm_client):
    vllm_client.chat("yes or no?", structured_outputs={"choice": ["yes", "no"]})

@pytest.mark.stability
def test_plain_chat(vllm_client):
    assert "Paris" in vllm_client.chat("What is the capital of France?")["choices"][0]["message"]["content"]
"""


def _model_dir(root: Path) -> Path:
    d = root / "standin-model"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama"}))
    (d / "tokenizer.json").write_text("{}")
    (d / "tokenizer_config.json").write_text("{}")
    (d / "model.safetensors").write_bytes(b"")
    return d


def _records(results: Path) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for f in sorted((results / "records").glob("*.jsonl")):
        out += [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
    return out


@pytest.mark.parametrize("delay_ms", [200, 500])
def test_a_late_log_line_still_classifies_the_500(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch,
                                                  delay_ms: int) -> None:
    for k in list(os.environ):
        if k.startswith("VLLM_COMPAT_"):
            monkeypatch.delenv(k)
    monkeypatch.setenv("PYTHONPATH", str(STANDIN))
    model = _model_dir(pytester.path)
    (pytester.path / "models.toml").write_text(
        f'[models.standin]\npath = "{model}"\nfamilies = ["llama"]\n'
        f'env = {{ STANDIN_MUTANTS = "late_error_log", STANDIN_LOG_DELAY_MS = "{delay_ms}" }}\n')
    pytester.makepyfile(test_standin=TESTS)
    results = pytester.path / "results"
    t0 = time.monotonic()
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--vllm=current", f"--vllm-python={sys.executable}", "--vllm-device=cpu",
        "--vllm-models=models.toml", f"--vllm-env-dir={pytester.path / 'env'}", f"--vllm-results={results}",
        "--vllm-startup-timeout=60")
    elapsed = time.monotonic() - t0
    result.assert_outcomes(passed=1, failed=1)
    recs = {r["test_name"]: r for r in _records(results)}
    choice = recs["test_choice"]
    c = choice["classification"]
    assert c["id"] == "grammar_rejected_sampled_token", c
    assert choice["status"] == "fail"
    assert "shows no error" not in c["explanation"]
    assert "grammar rejected tokens [2]" in (choice["log_excerpt"] or "")
    settled = choice["error"]["log_settled"]
    assert settled["complete"] and settled["want_error"], settled
    assert delay_ms / 1000 <= settled["waited_s"] < 3.0
    plain = recs["test_plain_chat"]
    assert plain["status"] == "pass" and plain["error"] is None  # a passing test never waits
    assert elapsed < 60


def test_settle_waits_for_the_error_line_then_for_quiet(tmp_path: Path) -> None:
    import threading

    log = tmp_path / "server.log"
    log.write_text("(APIServer pid=1) INFO 12-05 10:00:00 [api_server.py:1] earlier test's line\n")
    offset = log.stat().st_size

    def late() -> None:
        time.sleep(0.4)
        with open(log, "a") as f:
            f.write("(EngineCore_DP0 pid=2) ERROR 12-05 10:00:01 [scheduler.py:1911] Unexpected: grammar rejected "
                    "tokens [2] for request chatcmpl-1. Terminating request.\n")

    threading.Thread(target=late).start()
    s = settle(log, offset, want_error=True)
    assert s.complete and s.waited_s >= 0.4
    assert "grammar rejected" in s.text and "earlier test" not in s.text


def test_settle_is_bounded_and_says_so(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    log.write_text("")
    t0 = time.monotonic()
    s = settle(log, 0, want_error=True, timeout_s=0.5)
    assert not s.complete and 0.5 <= time.monotonic() - t0 < 1.5
    quiet = settle(log, 0, want_error=False)  # no error wanted: quiet is enough
    assert quiet.complete and quiet.waited_s < 1.0


@pytest.mark.parametrize(("text", "status"), [
    ("E   pytest_vllm_compat.client.APIError: HTTP 500 from http://127.0.0.1:1/v1/chat/completions: {}", 500),
    ("E   openai.InternalServerError: Error code: 503 - {'error': 'x'}", 503),
    ("E   requests.exceptions.HTTPError: 400 Client Error: Bad Request for url", 400),
    ("E   AssertionError: expected 500 tokens", None),
])
def test_http_error_status(text: str, status: int | None) -> None:
    assert http_error_status(text) == status
