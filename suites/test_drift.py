"""drift: what a fixed prompt set generates on this version (greedy token ids, top-k logprobs), checked for
repeatability within the version, kept in the record for the matrix to compare with the previous tested
version, and compared with golden outputs when --vllm-golden names them (a ``changed`` output fails)."""

from __future__ import annotations

import pytest
from suite_helpers import client_for

from pytest_vllm_compat import drift
from pytest_vllm_compat.environments import VLLMEnvironment
from pytest_vllm_compat.fixture_types import DriftSettings, RecordExtras
from pytest_vllm_compat.session import Target

pytestmark = pytest.mark.drift


def test_greedy_outputs_and_logprobs(request: pytest.FixtureRequest, vllm_target: Target,
                                     vllm_env: VLLMEnvironment, vllm_model_path: str,
                                     vllm_record: RecordExtras, vllm_drift: DriftSettings) -> None:
    # A missing or unusable golden file is an error before any server starts.
    golden = (drift.load_golden(vllm_drift.golden_dir, vllm_target.model.name)
              if vllm_drift.golden_dir is not None else None)
    vllm_server = request.getfixturevalue("vllm_server")
    client = client_for(vllm_server)
    try:
        first = drift.generate(client)
        second = drift.generate(client)  # the same requests again: within-version noise
    finally:
        client.close()
    repeat = drift.compare(first, second, vllm_drift.tolerance)
    sha = drift.weights_sha256(vllm_model_path)
    vllm_record.metrics.update(
        drift_outputs=[o.to_dict() for o in first], drift_settings=drift.settings(), weights_sha256=sha,
        drift_repeatability=repeat["verdict"], drift_repeat_max_abs_dlogprob=repeat["max_abs_dlogprob"])
    if vllm_drift.save_dir is not None:
        drift.save_golden(vllm_drift.save_dir, vllm_target.model.name, first, vllm_version=vllm_env.vllm_version,
                          stack=vllm_target.stack.name, weights_sha256=sha)
    bad = [p for p in repeat["prompts"] if p["verdict"] == "changed"]
    assert not bad, (f"outputs are not repeatable within one version: the same request twice gave different "
                     f"tokens for {bad[0]['prompt']!r} at position {bad[0]['first_divergence']} "
                     f"({bad[0]['text_a']!r} then {bad[0]['text_b']!r})")
    if golden is None:
        return
    against = drift.compare(golden["outputs"], first, vllm_drift.tolerance)
    vllm_record.metrics["golden"] = {"vllm_version": golden.get("vllm_version"), "stack": golden.get("stack"),
                                     "verdict": against["verdict"], "max_abs_dlogprob": against["max_abs_dlogprob"],
                                     "weights_match": golden.get("weights_sha256") in (None, sha)}
    changed = [p for p in against["prompts"] if p["verdict"] == "changed"]
    assert not changed, (
        f"outputs changed against the golden outputs saved from vLLM {golden.get('vllm_version')}: "
        f"{changed[0]['prompt']!r} diverges at token {changed[0]['first_divergence']} "
        f"(golden {changed[0]['text_a']!r}, now {changed[0]['text_b']!r}; |delta logprob| before it up to "
        f"{changed[0]['max_abs_dlogprob_before']}, tolerance {vllm_drift.tolerance})")
