"""The first line against orphans: a small guardian process that kills a session's vLLM servers when the
process that started them dies, whatever killed it (SIGKILL, the OOM killer, a CI runner cancelling a job).

``PR_SET_PDEATHSIG`` only reaches the API server: vLLM's ``EngineCore``, its workers and the
multiprocessing resource tracker are its children, and they are re-parented to pid 1 and keep running
(on a GPU runner they keep the GPU's memory). The guardian is started once per pytest process, in a
session of its own (so a signal to the pytest process group does not reach it first), with a pipe from
the pytest process as its stdin. The pytest process writes one JSON line per server it starts
(``{"add": marker, "cleanup": argv}``) and per server it stopped (``{"remove": marker}``). When the
pipe reaches end-of-file -- the pytest process is gone, or closed it at exit -- the guardian SIGKILLs
every process whose environment carries a watched server's marker (``PYTEST_VLLM_COMPAT_SERVER_ID``,
inherited by every process vLLM starts), runs each server's cleanup argv (``docker rm -f``), and exits.

A later session still reaps what a dead one left (``server.reap_stale``): that is the second line.

This file runs as a script with the standard library only (``python reaper.py``): no import of the
package, so it starts in milliseconds and cannot fail on the plugin's dependencies.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from typing import IO

MARKER_ENV = "PYTEST_VLLM_COMPAT_SERVER_ID"  # not VLLM_*: vLLM warns about unknown VLLM_ vars


def processes_with_marker(marker: str) -> list[int]:
    """PIDs whose environment carries ``PYTEST_VLLM_COMPAT_SERVER_ID=marker``."""
    if not marker:
        return []
    needle = f"{MARKER_ENV}={marker}".encode()
    found: list[int] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if needle in f.read().split(b"\0"):
                    found.append(int(entry))
        except OSError:
            continue
    return found


def kill_marked(markers: list[str], settle_s: float = 2.0) -> list[int]:
    """SIGKILL every process carrying one of ``markers``, again until none is left (or ``settle_s``)."""
    me = os.getpid()
    killed: list[int] = []
    deadline = time.monotonic() + settle_s
    while True:
        found = [p for m in markers for p in processes_with_marker(m) if p != me]
        for pid in found:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
        if not found or time.monotonic() >= deadline:
            return killed
        time.sleep(0.1)


def serve(stream: IO[str]) -> int:
    """The guardian's loop: track servers from ``stream``; at its end kill what is still watched."""
    watched: dict[str, list[str]] = {}
    for line in stream:
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        if not isinstance(msg, dict):
            continue
        if "add" in msg:
            cleanup = msg.get("cleanup") or []
            watched[str(msg["add"])] = [str(a) for a in cleanup] if isinstance(cleanup, list) else []
        elif "remove" in msg:
            watched.pop(str(msg["remove"]), None)
    if watched:
        kill_marked(list(watched))
        for argv in watched.values():
            if argv:
                with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                    subprocess.run(argv, capture_output=True, timeout=60, check=False)  # argv list
    return 0


class Guardian:
    """The pytest side: starts the guardian process on first use and tells it about servers."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[str] | None = None
        self._owner = 0
        self._lock = threading.Lock()

    def _send(self, msg: dict[str, object]) -> None:
        with self._lock:
            if self._proc is None or self._owner != os.getpid():  # first use, or a forked child
                self._proc = subprocess.Popen(  # argv list, no shell
                    [sys.executable, "-I", os.path.abspath(__file__)], stdin=subprocess.PIPE,
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True, start_new_session=True)
                self._owner = os.getpid()
            assert self._proc.stdin is not None
            try:
                self._proc.stdin.write(json.dumps(msg) + "\n")
                self._proc.stdin.flush()
            except (BrokenPipeError, OSError):  # the guardian is gone: start a new one for the next message
                self._proc = None

    def watch(self, marker: str, cleanup_argv: list[str] | None = None) -> None:
        self._send({"add": marker, "cleanup": list(cleanup_argv or [])})

    def unwatch(self, marker: str) -> None:
        if self._proc is not None:
            self._send({"remove": marker})

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def close(self, timeout: float = 10.0) -> None:
        """Close the pipe (what the kernel does when this process dies) and wait for the guardian."""
        with self._lock:
            proc, self._proc = self._proc, None
        if proc is None or self._owner != os.getpid():
            return
        with contextlib.suppress(OSError):
            assert proc.stdin is not None
            proc.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=timeout)


GUARDIAN = Guardian()


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C meant for pytest must not stop the guardian
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # nor a TERM sent to everything, before it has done its job
    sys.exit(serve(sys.stdin))
