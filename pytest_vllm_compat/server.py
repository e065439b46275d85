"""Start, watch and stop one real vLLM OpenAI-compatible server process (and its whole process group).

Security defaults: bind 127.0.0.1, a fresh random API key per server, argv lists (never a shell),
secrets redacted from the stored log. The server runs in a session (process group) of its own so
teardown reaches the API server, EngineCore and workers alike; it also gets PR_SET_PDEATHSIG so it
dies with the pytest process even if that is SIGKILLed, and a marker in its environment so a later
session can find and reap any survivor (`reap_stale`).
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
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
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import requests

from .reaper import GUARDIAN, MARKER_ENV, processes_with_marker
from .redact import redact, redact_argv, redact_env

HOST = "127.0.0.1"
DEFAULT_ENTRY_POINT = ("-m", "vllm.entrypoints.openai.api_server")
# Offline and quiet by default; a spec's env (and the user's environment) can override.
BASE_ENV = {
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
    "PYTHONUNBUFFERED": "1",
    "TOKENIZERS_PARALLELISM": "false",
}
# vLLM's API server reads its key from here when --api-key is not given (api_server.py, every release in
# the capability table; the table's `api_key_env` names it per version).
API_KEY_ENV = "VLLM_API_KEY"
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
# Variables that choose vLLM behaviour per test; inherited from the shell they would apply to every server.
INHERITED_SELECTORS = ("VLLM_ATTENTION_BACKEND",)


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


@dataclass(frozen=True)
class ServerSpec:
    """Everything that makes two servers different. Tests with equal specs share one server."""

    model: str  # registry name
    model_path: str  # local directory or hub id handed to --model
    version: str
    distribution: str
    device: str  # "cpu" | "cuda"
    serve_args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    trust_remote_code: bool = False
    gpus: int = 0  # devices to lease (cuda)
    label: str = ""  # human hint for the key, e.g. "xgrammar"

    @property
    def key(self) -> str:
        payload = json.dumps([self.model, self.model_path, self.version, self.distribution, self.device,
                              list(self.serve_args), list(self.env), self.trust_remote_code, self.gpus])
        digest = hashlib.sha256(payload.encode()).hexdigest()[:8]
        label = f"-{self.label}" if self.label else ""
        return f"{self.model}-{self.distribution}-{self.version}{label}-{digest}"

    def env_dict(self) -> dict[str, str]:
        return dict(self.env)


def port_is_free(port: int, host: str = HOST) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = HOST) -> int:
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


class VLLMServer:
    """One vLLM server process. ``start()`` returns once ``/health`` answers 200."""

    def __init__(self, spec: ServerSpec, python: Path | str, log_path: Path, *, port: int = 0,
                 startup_timeout: float = 900.0, entry_point: Sequence[str] = DEFAULT_ENTRY_POINT,
                 extra_env: Mapping[str, str] | None = None, offline: bool = True,
                 pid_dir: Path | None = None, argv_override: Sequence[str] | None = None,
                 argv_builder: Callable[[VLLMServer], list[str]] | None = None,
                 cleanup_argv: Sequence[str] | None = None, keep_pythonpath: bool = False,
                 default_env: Mapping[str, str] | None = None, extra_args: Sequence[str] = (),
                 phase_guard: Callable[[], AbstractContextManager[Any]] | None = None,
                 api_key_env: str | None = API_KEY_ENV) -> None:
        self.spec = spec
        self.python = str(python)
        self.log_path = Path(log_path)
        self.requested_port = port
        self.startup_timeout = startup_timeout
        self.entry_point = tuple(entry_point)
        self.extra_env = dict(extra_env or {})  # wins over the spec's env (e.g. CUDA_VISIBLE_DEVICES of the lease)
        self.default_env = dict(default_env or {})  # the spec's env wins over these (e.g. compile-cache dirs)
        self.extra_args = list(extra_args)  # appended after the spec's serve args (e.g. a packed GPU's share)
        # Held while the server starts and while it stops (e.g. a lock per shared GPU, so that a
        # neighbour's start or exit does not change free memory during vLLM's memory profiling).
        self.phase_guard = phase_guard
        self._guard_depth = 0
        self.compile_cache: Any = None  # compile_cache.ServerCache, cleaned up by the session on stop
        self.offline = offline
        self.pid_dir = pid_dir
        self.argv_override = list(argv_override) if argv_override else None
        self.argv_builder = argv_builder  # e.g. the docker runtime: needs the chosen port and API key
        self.cleanup_argv = list(cleanup_argv) if cleanup_argv else None  # e.g. `docker rm -f NAME`
        self.lease: Any = None  # GPUs held for this server (cuda), released by the session on stop
        self.cpu_share: dict[str, Any] | None = None  # -n N on a CPU: the worker's cores (cpu_cores.py)
        self.keep_pythonpath = keep_pythonpath  # an external interpreter (--vllm-python) may need it
        # Hex only: a urlsafe token can start with "-", which argparse then reads as an option (1 in 64 starts).
        self.api_key = secrets.token_hex(24)
        # The key reaches the server through this environment variable (off the command line, which every
        # user of the machine can read in ps); None: as --api-key, for a version that reads no such variable.
        self.api_key_env = api_key_env
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
        return f"http://{HOST}:{self.port}"

    @property
    def served_model_name(self) -> str:
        return self.spec.model

    @property
    def start_time_s(self) -> float | None:
        if self.started_at is None or self.ready_at is None:
            return None
        return round(self.ready_at - self.started_at, 2)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def secrets(self) -> list[str]:
        return [self.api_key] + [v for k, v in self.env.items() if any(s in k.upper() for s in
                                                                        ("TOKEN", "KEY", "SECRET", "PASSWORD"))]

    def redacted_argv(self) -> list[str]:
        return redact_argv(self.argv, self.secrets())

    def redacted_env(self) -> dict[str, str]:
        offline = dict(OFFLINE_ENV) if self.offline else {}  # shown: a local model is served without the hub
        env = redact_env(offline | self.default_env | dict(self.spec.env) | self.extra_env)
        if self.api_key_env:  # shown, so a record says how the key travelled; never its value
            env[self.api_key_env] = "***"
        return env

    # --- lifecycle ------------------------------------------------------------------------
    def build_argv(self) -> list[str]:
        if self.argv_override is not None:
            return list(self.argv_override)
        if self.argv_builder is not None:
            return self.argv_builder(self)
        argv = [self.python, *self.entry_point, "--model", self.spec.model_path,
                "--served-model-name", self.spec.model, "--host", HOST, "--port", str(self.port)]
        if not self.api_key_env:
            argv += ["--api-key", self.api_key]
        if self.spec.trust_remote_code:
            argv.append("--trust-remote-code")
        argv += list(self.spec.serve_args) + self.extra_args
        return argv

    def build_env(self) -> dict[str, str]:
        """The server's environment: the user's, less what must not leak into vLLM (see ``INHERITED_SELECTORS``),
        plus the plugin's defaults, the registry entry's env, the test's env, the marker and the API key."""
        env = dict(os.environ)
        # The pytest process's own venv must not leak into a provisioned environment's interpreter; an
        # external one (--vllm-python, e.g. vLLM installed with --target and PYTHONPATH) keeps PYTHONPATH.
        drop = ["PYTHONHOME", "VIRTUAL_ENV", "PYTEST_ADDOPTS", "PYTEST_XDIST_WORKER", "PYTEST_CURRENT_TEST"]
        if not self.keep_pythonpath:
            drop.append("PYTHONPATH")
        # The plugin's own settings are not vLLM's: releases with --fail-on-environ-validation (0.26+) make
        # any unknown VLLM_* variable fatal, and older ones warn about each.
        drop += [k for k in env if k.startswith("VLLM_COMPAT_")]
        # A backend selector left in the shell would silently pick the backend of every server on releases that
        # honour it (and is an unknown variable, fatal with --fail-on-environ-validation, where it is gone,
        # vllm#50292): only a registry entry's env or a test sets it.
        drop += [k for k in INHERITED_SELECTORS if k in env]
        for k in drop:
            env.pop(k, None)
        env.update(BASE_ENV)
        if self.offline:
            env.update(OFFLINE_ENV)
        env.update(self.default_env)
        env.update(self.spec.env_dict())
        env.update(self.extra_env)
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
        log = open(self.log_path, "a", encoding="utf-8", errors="replace")  # noqa: SIM115 - closed by reader
        log.write(f"# pytest-vllm-compat: starting {self.spec.key}\n# argv: {json.dumps(self.redacted_argv())}\n"
                  f"# env: {json.dumps(self.redacted_env(), sort_keys=True)}\n")
        log.flush()
        self.started_at = time.monotonic()
        self.started_unix = time.time()
        self.proc = subprocess.Popen(  # noqa: S603 - argv list, no shell
            self.argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=self.env, start_new_session=True, preexec_fn=_pdeathsig_preexec(),  # noqa: PLW1509
        )
        self._write_pidfile()
        # If this process dies without stopping the server, the guardian kills the whole tree (reaper.py).
        GUARDIAN.watch(self.marker, self.cleanup_argv)
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
        if self.cleanup_argv:
            with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                subprocess.run(self.cleanup_argv, capture_output=True, timeout=60, check=False)  # noqa: S603
        self._remove_pidfile()
        if not self.leftover_processes():
            GUARDIAN.unwatch(self.marker)
        return killed

    def leftover_processes(self) -> list[int]:
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
