"""--vllm-runtime=docker for real: the official vllm/vllm-openai image serving a model, where a Docker engine and
an NVIDIA GPU exist (the official image is CUDA-only). Elsewhere it is skipped with the reason."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pytest_vllm_compat.gpu import discover
from pytest_vllm_compat.runtime.docker import docker_available

from .conftest import records

pytestmark = pytest.mark.e2e

DOCKER_VERSION = os.environ.get("VLLM_COMPAT_DOCKER_VERSION", "0.26.0")
DOCKER_MODEL = os.environ.get("VLLM_COMPAT_DOCKER_MODEL", "")  # a local model dir (tiny models need transformers)


def test_docker_runtime_serves_a_model(pytester: pytest.Pytester, tmp_path: Path) -> None:
    reason = docker_available()
    if reason:
        pytest.skip(f"not applicable: {reason}")
    if not discover():
        pytest.skip("not applicable: no NVIDIA GPU visible; the official vllm/vllm-openai image needs CUDA")
    if not DOCKER_MODEL:
        pytest.skip("not applicable: set VLLM_COMPAT_DOCKER_MODEL to a local model directory to run this test")
    registry = tmp_path / "models.toml"
    registry.write_text(f'[models.docker-model]\npath = "{DOCKER_MODEL}"\nfamilies = ["llama"]\n'
                        'serve_args = { max_model_len = 512, enforce_eager = true }\n')
    pytester.makepyfile(test_inner="def test_models(vllm_client, vllm_server):\n"
                                   "    assert vllm_client.models() == [vllm_server.served_model_name]\n")
    results = tmp_path / "results"
    result = pytester.runpytest_subprocess(
        f"--vllm={DOCKER_VERSION}", "--vllm-device=cuda", "--vllm-runtime=docker", f"--vllm-models={registry}",
        f"--vllm-results={results}", "-p", "no:cacheprovider", timeout=1800)
    result.assert_outcomes(passed=1)
    (rec,) = records(results)
    assert rec["server"]["argv"][:2] == ["docker", "run"] and "***" in rec["server"]["argv"]
