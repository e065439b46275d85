"""Start, watch and stop one real vLLM OpenAI-compatible server process (and its whole process group).

What to run and with which environment comes from the server's :class:`~.runtime.Runtime` (a provisioned
venv, an external interpreter, a Docker image). Security defaults: bind 127.0.0.1, a fresh random API key
per server (in the environment, off the command line), argv lists (never a shell), secrets redacted from
the stored log. The server runs in a session (process group) of its own so
teardown reaches the API server, EngineCore and workers alike; it also gets PR_SET_PDEATHSIG so it
dies with the pytest process even if that is SIGKILLed, and a marker in its environment so a later
session can find and reap any survivor (`reap_stale`).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import secrets
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import requests

from .reaper import GUARDIAN, MARKER_ENV, processes_with_marker
from .redact import redact, redact_argv, redact_env
from .runtime import API_KEY_ENV, HOST, Runtime
from .server_spec import ServerSpec

if TYPE_CHECKING:
    from .compile_cache import ServerCache
    from .gpu.leasing import Lease

CLEANUP_TIMEOUT_S = 60.0  # a runtime's cleanup command (e.g. `docker rm -f NAME`)


class ServerError(RuntimeError):
    """Base class: a server could not be started or was lost. ``log_excerpt`` holds the relevant log lines."""

    def __init__(self, message: str, *, log_path: Path | None = None, log_excerpt: str = "") -> None:
        super().__init__(message)
        self.log_path = log_path
        self.log_excerpt = log_excerpt


class ServerStartupError(ServerError):
    """The server process exited before it became ready."""


class ServerStartupTimeout(ServerError):
    """The server did not become ready within the plugin's startup timeout."""


class PortInUseError(ServerError):
    """The requested port is taken on 127.0.0.1."""


def port_is_free(port: int, host: str = HOST) -> bool:
    """Whether ``port`` can be bound on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = HOST) -> int:
    """A port the OS calls free on ``host`` (it may be taken again before the server binds it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _pdeathsig_preexec() -> Any:
    """A preexec_fn that asks the kernel to SIGKILL the child when its parent dies (Linux only)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        return None

    def _preexec() -> None:
        prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG

    return _preexec


def group_members(pgid: int) -> list[int]:
    """PIDs whose process group is ``pgid`` (read from /proc; zombies excluded)."""
    pids: list[int] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as f:
                stat = f.read()
        except OSError:
            continue
        rest = stat.rsplit(")", 1)[-1].split()
        if len(rest) >= 3 and rest[0] != "Z" and int(rest[2]) == pgid:
            pids.append(int(entry))
    return pids


# The default of --vllm-startup-timeout (options.py) and of CompatSession: seconds until /health answers.
STARTUP_TIMEOUT_S = 900.0


class VLLMServer:
    """One vLLM server process. ``start()`` returns once ``/health`` answers 200."""

    def __init__(self, spec: ServerSpec, runtime: Runtime, log_path: Path, *, port: int = 0,
                 startup_timeout: float = STARTUP_TIMEOUT_S, pid_dir: Path | None = None,
                 phase_guard: Callable[[], AbstractContextManager[Any]] | None = None, lease: Lease | None = None,
                 compile_cache: ServerCache | None = None, cpu_share: dict[str, Any] | None = None) -> None:
        self.spec = spec
        self.runtime = runtime  # what to run, with which environment (runtime/)
        self.log_path = Path(log_path)
        self.requested_port = port  # 0: a free one
        self.startup_timeout = startup_timeout
        # Held while the server starts and while it stops (e.g. a lock per shared GPU, so that a
        # neighbour's start or exit does not change free memory during vLLM's memory profiling).
        self.phase_guard = phase_guard
        self._guard_depth = 0
        self.compile_cache = compile_cache  # cleaned up by the session on stop
        self.pid_dir = pid_dir
        self.lease = lease  # GPUs held for this server (cuda), released by the session on stop
        self.cpu_share = cpu_share  # -n N on a CPU: the worker's cores (cpu_cores.py)
        # Hex only: a urlsafe token can start with "-", which argparse then reads as an option (1 in 64 starts).
        self.api_key = secrets.token_hex(24)
        self.marker = uuid.uuid4().hex
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at: float | None = None  # monotonic
        self.ready_at: float | None = None
        self.started_unix: float | None = None  # wall clock, to line up starts of different processes
        self.ready_unix: float | None = None
        self.died_at: float | None = None  # monotonic time the process was seen exiting
        self.exit_code: int | None = None
        self.stopping = False
        self.hung_after_s: float | None = None  # set by the hang watchdog when it killed this server
        self._tail: deque[str] = deque(maxlen=400)
        self._reader: threading.Thread | None = None
        self._watcher: threading.Thread | None = None
        self._died = threading.Event()
        self.argv: list[str] = []
        self.env: dict[str, str] = {}

    # --- properties -----------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://{HOST}:{self.port}"

    @property
    def served_model_name(self) -> str:
        """The name requests address the model by (``--served-model-name``)."""
        return self.spec.model

    @property
    def start_time_s(self) -> float | None:
        """Seconds from launch until the server answered ``/health``; None until it did."""
        if self.started_at is None or self.ready_at is None:
            return None
        return round(self.ready_at - self.started_at, 2)

    @property
    def pid(self) -> int | None:
        """The server process's pid (its process group's id); None before the start."""
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        """Whether the server process is running."""
        return self.proc is not None and self.proc.poll() is None

    def secrets(self) -> list[str]:
        """The values a log or record must not show: the API key and env values whose names look secret."""
        return [self.api_key] + [v for k, v in self.env.items() if any(s in k.upper() for s in
                                                                        ("TOKEN", "KEY", "SECRET", "PASSWORD"))]

    def redacted_argv(self) -> list[str]:
        """The command line with the secrets masked, for logs and records."""
        return redact_argv(self.argv, self.secrets())

    @property
    def api_key_env(self) -> str | None:
        """The variable that carries the key (off the command line, which every user of the machine can read
        in ps); None: ``--api-key``, for a version that reads no such variable."""
        return self.runtime.api_key_env

    def redacted_env(self) -> dict[str, str]:
        """The variables the plugin set, secret-looking values and the API key masked, for logs and records."""
        env = redact_env(self.runtime.shown_env(self.spec))
        if self.api_key_env:  # shown, so a record says how the key travelled; never its value
            env[self.api_key_env] = "***"
        return env

    # --- lifecycle ------------------------------------------------------------------------
    def build_argv(self) -> list[str]:
        """The runtime's argv for this server's port (and key, where it must go on argv)."""
        return self.runtime.argv(self.spec, port=self.port, api_key=self.api_key)

    def build_env(self) -> dict[str, str]:
        """The runtime's environment plus the marker (reaping) and the API key under ``api_key_env``."""
        env = self.runtime.env(self.spec)
        env[MARKER_ENV] = self.marker
        env.pop(API_KEY_ENV, None)  # a user's own key must not override this server's (it wins over argv in old releases)
        if self.api_key_env:
            env[self.api_key_env] = self.api_key
        return env

    @contextlib.contextmanager
    def _guarded(self) -> Iterator[None]:
        """The phase guard, taken once: a failed start stops the server while it already holds it."""
        outermost = self.phase_guard is not None and self._guard_depth == 0
        with self.phase_guard() if outermost else contextlib.nullcontext():  # type: ignore[misc]
            self._guard_depth += 1
            try:
                yield
            finally:
                self._guard_depth -= 1

    def start(self) -> VLLMServer:
        """Launch the server and wait until it is ready; on failure it is stopped and a :class:`ServerError`
        (with a log excerpt) raised."""
        with self._guarded():
            return self._start()

    def _start(self) -> VLLMServer:
        if self.requested_port:
            if not port_is_free(self.requested_port):
                raise PortInUseError(
                    f"port {self.requested_port} on {HOST} is already in use; pick another with --vllm-port "
                    f"or leave it at 0 for a free port")
            self.port = self.requested_port
        else:
            self.port = free_port()
        self.argv = self.build_argv()
        self.env = self.build_env()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "a", encoding="utf-8", errors="replace")  # closed by reader
        log.write(f"# pytest-vllm-compat: starting {self.spec.key}\n# argv: {json.dumps(self.redacted_argv())}\n"
                  f"# env: {json.dumps(self.redacted_env(), sort_keys=True)}\n")
        log.flush()
        self.started_at = time.monotonic()
        self.started_unix = time.time()
        self.proc = subprocess.Popen(  # argv list, no shell
            self.argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=self.env, start_new_session=True, preexec_fn=_pdeathsig_preexec(),  # noqa: PLW1509
        )
        self._write_pidfile()
        # If this process dies without stopping the server, the guardian kills the whole tree (reaper.py).
        GUARDIAN.watch(self.marker, self.runtime.cleanup_argv() or None)
        assert self.proc.stdout is not None
        self._reader = threading.Thread(target=self._pump, args=(self.proc.stdout, log), daemon=True,
                                        name=f"vllm-log-{self.port}")
        self._reader.start()
        self._watcher = threading.Thread(target=self._watch, daemon=True, name=f"vllm-watch-{self.port}")
        self._watcher.start()
        try:
            self._wait_ready()
        except ServerError as e:
            self.stop()
            e.log_excerpt = self.log_excerpt()
            raise
        except BaseException:
            self.stop()
            raise
        return self

    def _write_pidfile(self) -> None:
        if self.pid_dir is None or self.proc is None:
            return
        self.pid_dir.mkdir(parents=True, exist_ok=True)
        (self.pid_dir / f"{self.proc.pid}.json").write_text(json.dumps(
            {"pid": self.proc.pid, "pgid": self.proc.pid, "marker": self.marker, "spec": self.spec.key,
             "owner_pid": os.getpid()}))

    def _remove_pidfile(self) -> None:
        if self.pid_dir is not None and self.proc is not None:
            with contextlib.suppress(OSError):
                (self.pid_dir / f"{self.proc.pid}.json").unlink()

    def _pump(self, stream: IO[bytes], log: IO[str]) -> None:
        secrets_ = self.secrets()
        try:
            for raw in iter(stream.readline, b""):
                line = redact(raw.decode("utf-8", errors="replace"), secrets_)
                self._tail.append(line)
                log.write(line)
                log.flush()
        finally:
            log.close()

    def _watch(self) -> None:
        assert self.proc is not None
        code = self.proc.wait()
        self.died_at = time.monotonic()
        self.exit_code = code
        self._died.set()

    def wait_for_death(self, timeout: float | None = None) -> bool:
        """Wait up to ``timeout`` seconds for the process to exit; whether it has."""
        return self._died.wait(timeout)

    def _wait_ready(self) -> None:
        assert self.proc is not None and self.started_at is not None
        deadline = self.started_at + self.startup_timeout
        session = requests.Session()
        try:
            while True:
                if self._died.wait(0.5) or self.proc.poll() is not None:
                    # The excerpt is filled in by start() once the group is stopped and the log drained
                    # (a surviving child may hold the pipe open; do not wait on it here).
                    raise ServerStartupError(
                        f"vLLM server exited with code {self.proc.returncode} before it became ready "
                        f"({self.spec.key})", log_path=self.log_path)
                try:
                    r = session.get(f"{self.base_url}/health", timeout=2)
                    if r.status_code == 200:
                        self.ready_at = time.monotonic()
                        self.ready_unix = time.time()
                        return
                except requests.RequestException:
                    pass
                if time.monotonic() >= deadline:
                    raise ServerStartupTimeout(
                        f"vLLM server did not become ready within {self.startup_timeout:.0f} s "
                        f"(--vllm-startup-timeout) ({self.spec.key})",
                        log_path=self.log_path, log_excerpt=self.log_excerpt())
        finally:
            session.close()

    def healthy(self, timeout: float = 5.0) -> bool:
        """Whether the process is alive and ``/health`` answers 200."""
        if not self.alive():
            return False
        try:
            return requests.get(f"{self.base_url}/health", timeout=timeout).status_code == 200
        except requests.RequestException:
            return False

    def drain_log(self, timeout: float = 2.0) -> None:
        """Wait (up to ``timeout``) until the log holds everything an exited server wrote."""
        if self._reader is not None:
            self._reader.join(timeout)

    def log_text(self) -> str:
        """The server's log so far (the in-memory tail when the file cannot be read)."""
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "".join(self._tail)

    def log_excerpt(self, before: int = 20, after: int = 40, text: str | None = None) -> str:
        """The lines around the cause in ``text`` (e.g. the part of the log written during one test): centred
        on its root exception, else from its first error (``logparse.error_excerpt``); without either there,
        around the cause in this server's run, or else its tail."""
        from .logparse import error_excerpt

        for candidate in ([text] if text else []) + ["".join(self._tail)]:
            found = error_excerpt(candidate, before, after)
            if found is not None:
                return found
        return "".join(list(self._tail)[-60:])

    def stop(self, term_timeout: float = 20.0) -> list[int]:
        """Stop the whole process group: SIGTERM, wait, SIGKILL. Returns PIDs that had to be killed."""
        self.stopping = True
        if self.proc is None:
            return []
        with self._guarded():
            return self._stop(term_timeout)

    def _stop(self, term_timeout: float) -> list[int]:
        assert self.proc is not None
        killed: list[int] = []
        pgid = self.proc.pid
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=term_timeout)
        except subprocess.TimeoutExpired:
            pass
        deadline = time.monotonic() + term_timeout
        while group_members(pgid) and time.monotonic() < deadline:
            time.sleep(0.2)
        survivors = group_members(pgid) + [p for p in processes_with_marker(self.marker) if p != os.getpid()]
        for pid in set(survivors):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        # A SIGKILLed process is listed for a moment after the signal; wait until the kernel has reaped it.
        settle = time.monotonic() + 10
        while self.leftover_processes() and time.monotonic() < settle:
            time.sleep(0.1)
        if self._reader:
            self._reader.join(timeout=5)
        cleanup = self.runtime.cleanup_argv()
        if cleanup:
            with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                subprocess.run(cleanup, capture_output=True, timeout=CLEANUP_TIMEOUT_S, check=False)
        self._remove_pidfile()
        if not self.leftover_processes():
            GUARDIAN.unwatch(self.marker)
        return killed

    def leftover_processes(self) -> list[int]:
        """Pids still alive from this server: its process group and any process carrying its marker."""
        if self.proc is None:
            return []
        me = os.getpid()
        return sorted({p for p in group_members(self.proc.pid) + processes_with_marker(self.marker) if p != me})


def reap_stale(pid_dir: Path) -> list[int]:
    """Kill servers left behind by an earlier session that died (their owner process is gone)."""
    killed: list[int] = []
    if not pid_dir.is_dir():
        return killed
    for f in pid_dir.glob("*.json"):
        try:
            info = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        owner = int(info.get("owner_pid", 0))
        if owner and owner != os.getpid() and Path(f"/proc/{owner}").exists():
            continue  # its session is still running (another xdist worker or another pytest)
        for pid in processes_with_marker(str(info.get("marker", ""))):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
        with contextlib.suppress(OSError):
            f.unlink()
    return killed


@dataclass
class ServerRecord:
    """What the pool remembers about one spec across restarts."""

    spec: ServerSpec
    starts: int = 0
    start_times_s: list[float] = field(default_factory=list)
    start_windows: list[tuple[float, float]] = field(default_factory=list)  # (launched, ready), unix time
    log_paths: list[str] = field(default_factory=list)
    crashes: list[dict[str, Any]] = field(default_factory=list)
    startup_error: ServerError | None = None
    markers: list[str] = field(default_factory=list)  # PYTEST_VLLM_COMPAT_SERVER_ID of each start
