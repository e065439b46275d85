"""What the plugin's fixtures hand to a test (``vllm_server_factory``, ``vllm_openai``, ``vllm_drift``,
``vllm_record``), and what the plugin keeps per test (:class:`ItemState`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from .gpu.leasing import LeaseError
from .log_settle import Settled
from .markers import group_of, server_marker
from .outcomes import NOT_APPLICABLE_PREFIX
from .results import file_size
from .server import ServerError, VLLMServer
from .server_spec import ServerSpec
from .session import CompatSession, Target

__all__ = ["DriftSettings", "ItemState", "OpenAISDK", "RecordExtras", "ServerFactory"]


@dataclass
class ItemState:
    """One test's servers, reports and measurements, from setup to its record."""

    target: Target | None = None
    nodeid: str = ""  # as collected: xdist's loadgroup may append "@<group>" to item.nodeid on workers
    servers: list[VLLMServer] = field(default_factory=list)
    call_started: float | None = None
    reports: dict[str, pytest.TestReport] = field(default_factory=dict)
    feature: str | None = None
    metrics: dict[str, object] = field(default_factory=dict)
    server_error: ServerError | None = None
    crash_note: str | None = None
    log_offsets: dict[int, int] = field(default_factory=dict)  # id(server) -> log size when handed to the test
    started_at: str = ""
    server_start_s: float = 0.0  # seconds of server starts this test waited for (not part of its duration)
    log_settled: Settled | None = None  # how the failed test's server log was settled before classifying it


@dataclass
class RecordExtras:
    """Handed to a test by the ``vllm_record`` fixture: what it measured and its precise feature."""

    metrics: dict[str, object]
    state: ItemState

    @property
    def feature(self) -> str | None:
        """The record's feature id (``guided_decoding:xgrammar``); set it to override the marker's."""
        return self.state.feature

    @feature.setter
    def feature(self, value: str) -> None:
        self.state.feature = value


class ServerFactory:
    """Start (or reuse) a server for this test's target with extra args/env. ``vllm_server_factory``."""

    def __init__(self, request: pytest.FixtureRequest, session: CompatSession, target: Target, model_path: str,
                 item: ItemState) -> None:
        self.request = request
        self.session = session
        self.target = target
        self.model_path = model_path
        self.item = item

    def spec(self, args: Sequence[str] = (), env: dict[str, str] | None = None, label: str = "",
             gpus: int | None = None, eager_ok: bool = False) -> ServerSpec:
        """The spec a server for this test's target with these extra args and env would have (nothing starts).
        ``eager_ok``: the server only turns a knob compilation does not touch, so it may start with
        ``--enforce-eager`` (:meth:`CompatSession.knob_server_args`)."""
        args = self.session.knob_server_args(self.target, args, eager_ok)
        return self.session.spec_for(self.target, self.model_path, args=args, env=env, label=label, gpus=gpus)

    def __call__(self, args: Sequence[str] = (), env: dict[str, str] | None = None, label: str = "",
                 gpus: int | None = None, eager_ok: bool = False) -> VLLMServer:
        """The server for this spec, started or reused from the pool; a ``label`` other than the marker's starts
        a side server of its own, stopped after the test."""
        spec = self.spec(args, env, label, gpus, eager_ok)
        key = group_of(self.request.node)
        g = key.key if key else ""
        _, marker = server_marker(self.request.node)
        if label and (marker is None or label != marker.kwargs.get("label", "")):
            # A side server started inside one test: its own group, so it is stopped right after the
            # test and never evicts the server the following tests of this group share.
            g = key.side(label) if key else f"|side:{label}"
        pool = self.session.pool
        starts = pool.record(spec).starts
        try:
            server = pool.get(spec, group=g)
        except ServerError as e:
            self.item.server_error = e
            raise
        except LeaseError as e:
            # More GPUs than the machine has (TP=8 on a 2-GPU runner): the platform cannot run it, as on CPU.
            pytest.skip(f"{NOT_APPLICABLE_PREFIX}{e}")
        if pool.record(spec).starts != starts and server.start_time_s:
            self.item.server_start_s += server.start_time_s
        if server not in self.item.servers:
            self.item.servers.append(server)
            self.item.log_offsets[id(server)] = file_size(server.log_path)
        return server

    def try_start(self, args: Sequence[str] = (), env: dict[str, str] | None = None,
                  label: str = "", eager_ok: bool = False) -> tuple[VLLMServer, ServerError | None]:
        """Start a one-off server that may fail (for tests that expect a clean startup failure).

        Returns (server, error); the server is stopped already when it failed, and is stopped at the end
        of the test otherwise.
        """
        spec = self.spec(args, env, label or "oneoff", eager_ok=eager_ok)
        session = self.session
        server = session.one_off_server(spec, "oneoff")
        try:
            server.start()
        except ServerError as e:
            session.stop_one_off(server)
            return server, e
        self.request.addfinalizer(lambda: session.stop_one_off(server))
        self.item.servers.append(server)
        self.item.server_start_s += server.start_time_s or 0.0
        return server, None


@dataclass(frozen=True)
class OpenAISDK:
    """``vllm_openai``: the official ``openai.OpenAI`` client bound to the server (base URL, API key), and the
    served model name; attributes not defined here are the client's (``vllm_openai.chat.completions.create``)."""

    client: object  # openai.OpenAI
    model: str

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)


@dataclass(frozen=True)
class DriftSettings:
    """The drift suite's options: where golden outputs are read from / saved to, and the tolerance."""

    golden_dir: Path | None
    save_dir: Path | None
    tolerance: float
