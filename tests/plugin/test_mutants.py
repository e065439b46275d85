"""The compat suites fail when vLLM misbehaves: a few suite tests against the stand-in of tests/standin, through
the plugin as users run it (``--vllm=current --vllm-python``), un-mutated (they pass) and with a mutant
switched on (``STANDIN_MUTANTS`` in the registry entry's env: the test that should catch it fails, with a
sensible classification). The full kill matrix is ``benchmarks/mutants.py`` (reports/mutants/).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
STANDIN = ROOT / "tests" / "standin"
sys.path.insert(0, str(ROOT / "benchmarks"))
from mutants import MODEL_CONFIG  # noqa: E402

SELECTED = [
    "suites/test_config.py::test_chat_template_applies",
    "suites/test_config.py::test_greedy_completion",
    "suites/test_guided_decoding.py::test_json_schema",
    "suites/test_guided_decoding.py::test_choice",
    "suites/test_tensor_parallel.py::test_tp1_reference",
    "suites/test_tensor_parallel.py::test_tp_size_not_dividing_heads_fails_cleanly",
]


def _run(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, mutant: str, tests: list[str],
         extra: tuple[str, ...] = ()) -> dict[str, dict[str, Any]]:
    for k in list(os.environ):
        if k.startswith(("VLLM_COMPAT_", "STANDIN_")):
            monkeypatch.delenv(k)
    monkeypatch.setenv("PYTHONPATH", str(STANDIN))
    work = pytester.path / (mutant or "unmutated")
    model = work / "standin-model"
    model.mkdir(parents=True)
    (model / "config.json").write_text(json.dumps(MODEL_CONFIG))
    (model / "tokenizer.json").write_text("{}")
    (model / "tokenizer_config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"")
    env = 'VLLM_CPU_KVCACHE_SPACE = "1"' + (f', STANDIN_MUTANTS = "{mutant}"' if mutant else "")
    (work / "models.toml").write_text(
        '[defaults]\nserve_args = { max_model_len = 512, dtype = "bfloat16" }\n\n'
        f'[models.standin]\npath = "{model}"\nfamilies = ["llama"]\nenv = {{ {env} }}\n')
    results = work / "results"
    pytester.runpytest_subprocess(
        *[str(ROOT / t) for t in tests], f"--rootdir={ROOT}", "-p", "no:cacheprovider", "--vllm=current",
        f"--vllm-python={sys.executable}", "--vllm-device=cpu", f"--vllm-models={work / 'models.toml'}",
        f"--vllm-env-dir={work / 'env'}", f"--vllm-results={results}", "--vllm-startup-timeout=30", *extra)
    out: dict[str, dict[str, Any]] = {}
    for f in sorted((results / "records").glob("*.jsonl")):
        for line in f.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                param = r["test_id"].rsplit("current", 1)[-1].strip("-]")
                out[r["test_name"] + (f"[{param}]" if param else "")] = r
    return out


def test_unmutated_standin_passes(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    t0 = time.monotonic()
    recs = _run(pytester, monkeypatch, "", SELECTED)
    statuses = {k: r["status"] for k, r in recs.items()}
    assert statuses == {
        "test_chat_template_applies": "pass", "test_greedy_completion": "pass", "test_tp1_reference": "pass",
        "test_tp_size_not_dividing_heads_fails_cleanly": "pass",
        **{f"{t}[{b}]": "pass" for t in ("test_json_schema", "test_choice")
           for b in ("guidance", "lm-format-enforcer", "outlines", "xgrammar")},
    }, statuses
    assert time.monotonic() - t0 < 40


@pytest.mark.parametrize(("mutant", "tests", "killed", "classification"), [
    # HTTP 200 with unconstrained text: the guided tests see invalid output
    ("guided_unconstrained", ["suites/test_guided_decoding.py::test_json_schema"],
     {f"test_json_schema[{b}]" for b in ("guidance", "lm-format-enforcer", "outlines", "xgrammar")},
     ("guided_output_invalid", "guided_decoding_output")),
    # a TP size that does not divide the heads starts anyway: the refusal test says so
    ("tp_no_refuse", ["suites/test_tensor_parallel.py::test_tp_size_not_dividing_heads_fails_cleanly"],
     {"test_tp_size_not_dividing_heads_fails_cleanly"}, None),
    # temperature 0 is not deterministic
    ("nondeterministic", ["suites/test_config.py::test_greedy_completion"], {"test_greedy_completion"}, None),
])
def test_mutant_is_killed(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, mutant: str,
                          tests: list[str], killed: set[str], classification: tuple[str, str] | None) -> None:
    recs = _run(pytester, monkeypatch, mutant, tests)
    failed = {k for k, r in recs.items() if r["status"] == "fail"}
    assert failed == killed, {k: r["status"] for k, r in recs.items()}
    for k in killed:
        c = recs[k]["classification"]
        assert c is not None and c["kind"] == "vllm", c  # the server's fault, not the harness's
        if classification is not None:
            assert (c["id"], c["category"]) == classification, c
