"""Servers shared by spec: started lazily, started once per session, restarted after a crash.

Tests are ordered by spec (scheduling.py), so a spec's server is started once and stopped as soon
as no remaining test needs it. A server that dies is replaced for the next test of its spec
(restarts counted); a spec whose server keeps dying is given up and its remaining tests error with a
pointer to the first crash. A spec whose server cannot start at all is not retried: every test of
that spec reports the same, classified startup failure.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .progress import Progress, ticking
from .server import ServerError, ServerRecord, VLLMServer
from .server_spec import ServerSpec

ServerFactory = Callable[[ServerSpec, Path], VLLMServer]


class SpecGivenUp(ServerError):
    """The spec's server crashed more often than --vllm-max-restarts allows."""


@dataclass
class Live:
    server: VLLMServer
    group: str
    last_used: float


# The defaults of --vllm-max-servers and --vllm-max-restarts (options.py) and of CompatSession.
MAX_SERVERS = 2  # alive at once per process: a test's side server must not evict the shared one
MAX_RESTARTS = 2  # per server spec, after crashes, before its remaining tests error


class ServerPool:
    def __init__(self, factory: ServerFactory, log_dir: Path, *, max_restarts: int = MAX_RESTARTS, max_live: int = MAX_SERVERS,
                 on_stop: Callable[[VLLMServer], None] | None = None, progress: Progress | None = None,
                 progress_every_s: float = 15.0) -> None:
        self.factory = factory
        self.progress = progress or (lambda msg: None)
        self.progress_every_s = progress_every_s
        self.log_dir = Path(log_dir)
        self.max_restarts = max_restarts
        self.max_live = max(1, max_live)
        self.on_stop = on_stop
        self.records: dict[str, ServerRecord] = {}
        self.live: dict[str, Live] = {}
        self.leftovers: list[int] = []

    def record(self, spec: ServerSpec) -> ServerRecord:
        return self.records.setdefault(spec.key, ServerRecord(spec=spec))

    def get(self, spec: ServerSpec, group: str = "") -> VLLMServer:
        rec = self.record(spec)
        if rec.startup_error is not None:
            raise rec.startup_error
        if len(rec.crashes) > self.max_restarts:
            first = rec.crashes[0]
            raise SpecGivenUp(
                f"vLLM server for this spec crashed {len(rec.crashes)} times; not restarted again "
                f"(--vllm-max-restarts={self.max_restarts}). First crash: during {first['test_id']}: "
                f"{first['summary']} (log: {first['log_path']})",
                log_path=Path(first["log_path"]) if first.get("log_path") else None,
                log_excerpt=str(first.get("log_excerpt", "")))
        live = self.live.get(spec.key)
        if live is not None:
            if live.server.alive():
                live.last_used = time.monotonic()
                return live.server
            # Died outside a test (between tests): count it as a crash, then replace the server.
            if not any(c.get("server_pid") == live.server.pid for c in rec.crashes):
                self.note_crash(spec, live.server, test_id="(between tests)",
                                summary=f"server exited with code {live.server.exit_code} between tests")
            self._stop(spec.key)
            if len(rec.crashes) > self.max_restarts:
                return self.get(spec, group)
        while len(self.live) >= self.max_live:
            lru = min(self.live, key=lambda k: self.live[k].last_used)
            self._stop(lru)
        n = rec.starts + 1
        log_path = self.log_dir / f"{spec.key}.{n}.log"
        server = self.factory(spec, log_path)
        rec.starts = n
        rec.log_paths.append(str(log_path))
        rec.markers.append(server.marker)
        label = f" [{spec.label}]" if spec.label else ""
        why = f", restart {len(rec.crashes)} after a crash" if rec.crashes else (f", start {n}" if n > 1 else "")
        what = f"[vllm-compat] vLLM {spec.version} server for {spec.model}{label}{why}"
        t0 = time.monotonic()
        try:
            with ticking(self.progress, f"{what}: starting", self.progress_every_s, t0):
                server.start()
        except ServerError as e:
            self.progress(f"{what}: FAILED after {time.monotonic() - t0:.0f} s: {e}")
            rec.startup_error = e
            self.leftovers += server.leftover_processes()
            if self.on_stop is not None:
                self.on_stop(server)  # release what the server held (GPU lease)
            raise
        assert server.start_time_s is not None
        self.progress(f"{what}: ready in {server.start_time_s:.1f} s on port {server.port}")
        rec.start_times_s.append(server.start_time_s)
        if server.started_unix is not None and server.ready_unix is not None:
            rec.start_windows.append((round(server.started_unix, 3), round(server.ready_unix, 3)))
        self.live[spec.key] = Live(server=server, group=group, last_used=time.monotonic())
        return server

    def note_crash(self, spec: ServerSpec, server: VLLMServer, *, test_id: str, summary: str,
                   log_excerpt: str = "") -> None:
        rec = self.record(spec)
        if any(c.get("server_pid") == server.pid for c in rec.crashes):
            return
        rec.crashes.append({"test_id": test_id, "summary": summary, "log_path": str(server.log_path),
                            "server_pid": server.pid, "exit_code": server.exit_code,
                            "log_excerpt": log_excerpt[-4000:], "at": time.time()})

    def restarts(self, spec: ServerSpec) -> int:
        """Starts caused by a crash (an eviction to make room for another spec is not a restart)."""
        rec = self.records.get(spec.key)
        return min(len(rec.crashes), max(0, rec.starts - 1)) if rec else 0

    def release_groups_not_needed(self, needed_groups: set[str]) -> None:
        for key in [k for k, lv in self.live.items() if lv.group not in needed_groups]:
            self._stop(key)

    def _stop(self, key: str) -> None:
        live = self.live.pop(key, None)
        if live is None:
            return
        live.server.stop()
        self.leftovers += live.server.leftover_processes()
        if self.on_stop is not None:
            self.on_stop(live.server)

    def stop_all(self) -> None:
        for key in list(self.live):
            self._stop(key)

    def summary(self) -> list[dict[str, Any]]:
        return [{"spec_key": k, "starts": r.starts, "markers": r.markers, "start_times_s": r.start_times_s,
                 "start_windows": r.start_windows, "log_paths": r.log_paths,
                 "crashes": [{kk: vv for kk, vv in c.items() if kk != "log_excerpt"} for c in r.crashes],
                 "startup_error": str(r.startup_error) if r.startup_error else None}
                for k, r in self.records.items()]
