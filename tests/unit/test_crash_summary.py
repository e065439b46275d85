"""The summary of a test whose server died or hung names the deepest exception of the log written during
the test (issue: every failure names its real cause), and says nothing of the kind when there is none."""

from __future__ import annotations

from pathlib import Path
from typing import cast

import pytest

from pytest_vllm_compat.results import root_cause_suffix

DATA = Path(__file__).parent / "data"


def test_the_engine_cores_exception_is_named_with_its_process() -> None:
    log = (DATA / "vllm-v1-engine-core-death.log").read_text(encoding="utf-8")
    suffix = root_cause_suffix(log)
    assert suffix.startswith("; the log's deepest exception: RuntimeError: ")
    assert suffix.endswith("(in EngineCore_DP0 pid=4242)")


def test_a_log_without_a_traceback_adds_nothing() -> None:
    assert root_cause_suffix("INFO Application startup complete.\nINFO 127.0.0.1 GET /health 200\n") == ""


def test_phase_outcome_from_reports() -> None:
    from types import SimpleNamespace as R

    from pytest_vllm_compat.results import phase_outcome

    # stand-ins for pytest.TestReport: phase_outcome reads only these three attributes
    ok = cast(pytest.TestReport, R(failed=False, skipped=False, longrepr=None))
    bad = cast(pytest.TestReport, R(failed=True, skipped=False, longrepr="boom"))
    skip = cast(pytest.TestReport, R(failed=False, skipped=True,
                                     longrepr=("f.py", 3, "Skipped: not applicable: needs 8 CPUs")))
    assert phase_outcome({"setup": ok, "call": ok, "teardown": ok}) == ("passed", None, None)
    assert phase_outcome({"setup": ok, "call": bad, "teardown": ok}) == ("failed", "call", None)
    assert phase_outcome({"setup": bad}) == ("error", "setup", None)
    assert phase_outcome({"setup": ok, "call": ok, "teardown": bad}) == ("error", "teardown", None)
    assert phase_outcome({"setup": skip, "teardown": ok}) == ("skipped", None, "not applicable: needs 8 CPUs")
