"""The hang watchdog: while a test runs, its servers must keep answering ``/health``.

A vLLM server can stop answering without exiting -- a deadlocked engine, a stuck collective, a process
stopped by a debugger or by SIGSTOP. The test's own request then waits forever (the OpenAI client's
default timeout is 10 minutes, and a CI job's is hours), and every later test of that server waits too.
The watchdog polls ``/health`` of each server the test uses; any HTTP answer counts (a dead engine's
500 is the crash check's business, not a hang). When a server has not answered for ``timeout`` seconds
the watchdog records how long it waited (``server.hung_after_s``) and SIGKILLs the server's whole
process group. The test's pending request then fails at once, the test fails as "stopped responding"
(crash_check.py), and the server pool starts a fresh server for the next test of that spec.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Protocol

import requests

DEFAULT_HANG_TIMEOUT_S = 10.0


class Watched(Protocol):
    stopping: bool
    hung_after_s: float | None

    @property
    def base_url(self) -> str: ...

    @property
    def pid(self) -> int | None: ...

    def alive(self) -> bool: ...

    def leftover_processes(self) -> list[int]: ...


def answers(base_url: str, timeout: float) -> bool:
    """True when ``base_url/health`` gives any HTTP response within ``timeout`` seconds."""
    try:
        requests.get(f"{base_url}/health", timeout=timeout)
    except requests.RequestException:
        return False
    return True


def kill_hung(server: Watched) -> None:
    """SIGKILL the server's process group and every process that carries its marker (a stopped process
    receives SIGKILL too)."""
    pids = set(server.leftover_processes())
    if server.pid is not None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(server.pid, signal.SIGKILL)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


class HangWatchdog:
    """Polls the servers of one test in a background thread; use as a context manager around the call."""

    def __init__(self, servers: Sequence[Watched], timeout: float = DEFAULT_HANG_TIMEOUT_S, *,
                 interval: float = 1.0, probe: Callable[[str, float], bool] = answers,
                 on_hang: Callable[[Watched, float], None] | None = None) -> None:
        self.servers = list(servers)
        self.timeout = float(timeout)
        self.interval = interval
        self.probe = probe
        self.on_hang = on_hang
        self.hung: list[Watched] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> HangWatchdog:
        if self.timeout > 0 and self.servers:
            self._thread = threading.Thread(target=self._run, daemon=True, name="vllm-hang-watchdog")
            self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.timeout + 10)

    def _run(self) -> None:
        last_answer = {id(s): time.monotonic() for s in self.servers}
        while not self._stop.is_set():
            for server in self.servers:
                if id(server) not in last_answer:
                    continue
                if server.stopping or not server.alive():  # gone or going: the crash check's business
                    last_answer.pop(id(server))
                    continue
                # The probe never waits past the deadline, so a hang is called ``timeout`` s after the last
                # answer, not up to a probe's wait later.
                left = last_answer[id(server)] + self.timeout - time.monotonic()
                if self.probe(server.base_url, min(2.0, max(0.2, left))):
                    last_answer[id(server)] = time.monotonic()
                    continue
                silent = time.monotonic() - last_answer[id(server)]
                if silent >= self.timeout and not self._stop.is_set():
                    server.hung_after_s = round(silent, 1)
                    self.hung.append(server)
                    last_answer.pop(id(server))
                    kill_hung(server)
                    if self.on_hang is not None:
                        self.on_hang(server, silent)
            if not last_answer:
                return
            # Poll every ``interval`` s, and once more right at the nearest deadline.
            nearest = min(last_answer.values()) + self.timeout - time.monotonic()
            self._stop.wait(min(self.interval, max(0.05, nearest)))
