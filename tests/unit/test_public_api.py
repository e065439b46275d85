"""The package's public API: every name in ``__all__`` resolves to the object its module defines, the package
is marked typed, and importing it (the matrix CLI does) does not import the server machinery."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import pytest_vllm_compat as pkg


@pytest.mark.parametrize("name", sorted(set(pkg.__all__) - {"__version__"}))
def test_every_public_name_is_its_module_object(name: str) -> None:
    module = importlib.import_module(f"pytest_vllm_compat.{pkg._PUBLIC[name]}")
    assert getattr(pkg, name) is getattr(module, name)
    assert name in dir(pkg)


def test_fixture_types_and_outcomes_are_public() -> None:
    for name in ("Target", "VLLMEnvironment", "VersionCaps", "VLLMServer", "VLLMClient", "ServerFactory",
                 "OpenAISDK", "DriftSettings", "RecordExtras", "unsupported", "not_applicable", "RECORD_SCHEMA"):
        assert name in pkg.__all__
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        pkg.nope  # noqa: B018


def test_the_package_is_marked_typed() -> None:
    assert (Path(pkg.__file__).parent / "py.typed").is_file()


def test_importing_the_package_imports_no_server_machinery() -> None:
    code = ("import sys, pytest_vllm_compat as p; p.RECORD_SCHEMA; "
            "print(sorted(m for m in sys.modules if m.startswith('pytest_vllm_compat')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "pytest_vllm_compat.server" not in out and "pytest_vllm_compat.outcomes" in out


def test_all_lists_exactly_the_lazy_names() -> None:
    assert set(pkg.__all__) == {"__version__", *pkg._PUBLIC}
