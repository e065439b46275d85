"""dev.py's suites passes: the whole-machine tests alone, then the rest on xdist workers, unless the user chose."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def dev() -> ModuleType:
    spec = importlib.util.spec_from_file_location("dev_script", ROOT / "dev.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_two_passes_serial_markers_first(dev: ModuleType) -> None:
    passes = dev.suite_passes(["-k", "chat"], cores=2)
    assert passes == [["-m", "performance or (tensor_parallel and not vllm_one_off)", "-k", "chat"],
                      ["-n", "2", "-m", "not (performance or (tensor_parallel and not vllm_one_off))", "-k", "chat"]]


@pytest.mark.parametrize("args", [["-n", "4"], ["-n4"], ["--numprocesses=3"], ["-m", "mistral"], ["-mmistral"]])
def test_the_users_workers_or_markers_give_one_pass(dev: ModuleType, args: list[str]) -> None:
    assert dev.suite_passes(args, cores=16) == [args]


def test_one_core_or_serial_gives_one_pass(dev: ModuleType) -> None:
    assert dev.suite_passes([], cores=1) == [[]]
    assert dev.suite_passes([], cores=None) == [[]]
    assert dev.suite_passes(["-x"], cores=8, serial=True) == [["-x"]]


def test_no_tests_in_one_pass_is_not_an_error(dev: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    codes = iter([5, 1])
    seen: list[list[str]] = []

    def fake_run(argv: list[str], check: bool = True, env: dict[str, str] | None = None) -> int:
        seen.append(argv)
        return next(codes)

    monkeypatch.setattr(dev, "run", fake_run)
    monkeypatch.setattr(dev.os, "cpu_count", lambda: 2)
    assert dev.run_suites(["pytest", "suites"], [], serial=False) == 1
    assert [a[2:4] for a in seen] == [["-m", "performance or (tensor_parallel and not vllm_one_off)"], ["-n", "2"]]
    codes = iter([5])
    assert dev.run_suites(["pytest", "suites"], ["-m", "mistral"], serial=False) == 5  # one pass: nothing ran


@pytest.mark.parametrize(("given", "expected"), [(None, "1"), ("0", "0")])
def test_main_asks_for_eager_knob_servers_unless_the_user_said(dev: ModuleType, monkeypatch: pytest.MonkeyPatch,
                                                                given: str | None, expected: str) -> None:
    """`dev.py main` is the quick run: knob-only servers eager (--vllm-eager-knob-servers) unless
    VLLM_COMPAT_EAGER_KNOB_SERVERS says otherwise; `publish` never asks for it."""
    import argparse

    if given is None:
        monkeypatch.delenv("VLLM_COMPAT_EAGER_KNOB_SERVERS", raising=False)
    else:
        monkeypatch.setenv("VLLM_COMPAT_EAGER_KNOB_SERVERS", given)
    envs: list[dict[str, str] | None] = []

    def fake_run(argv: list[str], check: bool = True, env: dict[str, str] | None = None) -> int:
        if "pytest" in argv:
            envs.append(env)
        return 0

    monkeypatch.setattr(dev, "run", fake_run)
    monkeypatch.setattr(dev, "bootstrap", lambda: None)
    monkeypatch.setattr(dev.os, "cpu_count", lambda: 2)
    assert dev.cmd_main(argparse.Namespace(vllm="0.32.0", pytest_args=[], serial=False)) == 0
    assert len(envs) == 2 and all(e is not None and e["VLLM_COMPAT_EAGER_KNOB_SERVERS"] == expected for e in envs)
    assert "VLLM_COMPAT_EAGER_KNOB_SERVERS" not in Path(ROOT / "dev.py").read_text().split("def cmd_publish")[1]
