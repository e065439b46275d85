"""What the fixtures hand to tests: ServerFactory's handling of a server that the platform cannot host."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from pytest_vllm_compat import fixture_types
from pytest_vllm_compat.fixture_types import ItemState, ServerFactory
from pytest_vllm_compat.gpu.leasing import LeaseError


class _Pool:
    def record(self, spec: Any) -> Any:
        return SimpleNamespace(starts=0)

    def get(self, spec: Any, group: str = "") -> Any:
        raise LeaseError("cannot lease 8 GPUs: this machine has 2 (GPU 0, GPU 1)")


def test_more_gpus_than_the_machine_has_is_not_applicable(monkeypatch: pytest.MonkeyPatch) -> None:
    """TP=8 on a 2-GPU runner: the lease can never be granted; the test is "not applicable" with the reason
    (as the CPU path says when it lacks cores), not an error of the test infrastructure."""
    monkeypatch.setattr(fixture_types, "group_of", lambda node: None)
    monkeypatch.setattr(fixture_types, "server_marker", lambda node: ("", None))
    session = SimpleNamespace(pool=_Pool(), spec_for=lambda *a, **k: "spec",
                              knob_server_args=lambda target, args, eager_ok: list(args))
    factory = ServerFactory(SimpleNamespace(node=None), session, SimpleNamespace(), "/m", ItemState())  # type: ignore[arg-type]
    with pytest.raises(pytest.skip.Exception, match=r"^not applicable: cannot lease 8 GPUs: this machine has 2"):
        factory(["--tensor-parallel-size", "8"])
