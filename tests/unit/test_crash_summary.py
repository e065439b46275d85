"""The summary of a test whose server died or hung names the deepest exception of the log written during
the test (issue: every failure names its real cause), and says nothing of the kind when there is none."""

from __future__ import annotations

from pathlib import Path

from pytest_vllm_compat.plugin import root_cause_suffix

DATA = Path(__file__).parent / "data"


def test_the_engine_cores_exception_is_named_with_its_process() -> None:
    log = (DATA / "vllm-v1-engine-core-death.log").read_text(encoding="utf-8")
    suffix = root_cause_suffix(log)
    assert suffix.startswith("; the log's deepest exception: RuntimeError: ")
    assert suffix.endswith("(in EngineCore_DP0 pid=4242)")


def test_a_log_without_a_traceback_adds_nothing() -> None:
    assert root_cause_suffix("INFO Application startup complete.\nINFO 127.0.0.1 GET /health 200\n") == ""
