"""The plugin's markers: the compat features, the model families, ``vllm_server`` and ``vllm_feature``, and
what an item's markers say (its feature, its server marker, its server group)."""

from __future__ import annotations

import json
from collections.abc import Iterable

import pytest

from .scheduling import GroupKey, xdist_scope
from .session import Target

FEATURES = {
    "config": "config loading: a server starts for the model and answers with the asked engine config",
    "kv_cache": "KV-cache capacity, scaling and max-model-len errors",
    "guided_decoding": "structured outputs per backend (xgrammar, lm-format-enforcer, outlines, guidance)",
    "stability": "many concurrent, streaming, cancelled and mixed requests; the server stays healthy",
    "tensor_parallel": "tensor-parallel sizes give identical greedy output; bad sizes fail cleanly",
    "attention": "attention backends: selected as the version expects, confirmed in the log",
    "drift": "greedy outputs and top-k logprobs of a fixed prompt set, compared across versions and golden files",
    "performance": "a fixed serving workload (vllm bench serve): tokens/s, TTFT, ITL, server start time",
}
DEFAULT_FAMILIES = ("mistral", "llama", "qwen", "gemma", "phi", "mixtral", "deepseek")


def register_markers(config: pytest.Config, families: Iterable[str]) -> None:
    """Declare the feature markers, ``vllm_server``, ``vllm_feature`` and a marker per model family."""
    for name, desc in FEATURES.items():
        config.addinivalue_line("markers", f"{name}: compat feature -- {desc}")
    config.addinivalue_line("markers", "vllm_server(args=(), env={}, label='', builder=None, same_worker_as=None, "
                            "eager_ok=False): extra serve args/env for this test's server; builder(caps, target) -> "
                            "(args, env) computes them per version; same_worker_as=LABEL runs the test on the xdist "
                            "worker of the server labelled LABEL ('' = the default), whose outputs it compares with; "
                            "eager_ok: the server only turns a knob compilation does not touch, so "
                            "--vllm-eager-knob-servers may start it with --enforce-eager on CPU")
    config.addinivalue_line("markers", "vllm_one_off: the test starts only one-off servers of its own "
                            "(vllm_server_factory.try_start), never its group's: under xdist it runs on any worker")
    config.addinivalue_line("markers", "vllm_feature(name): the precise feature id recorded for this test, "
                            "e.g. guided_decoding:xgrammar")
    for fam in sorted(set(DEFAULT_FAMILIES) | set(families)):
        config.addinivalue_line("markers", f"{fam}: model family (from the model registry)")


def feature_of(item: pytest.Item) -> str:
    """The feature recorded for a test: its ``vllm_feature`` marker, else its feature marker, else "other"."""
    m = item.get_closest_marker("vllm_feature")
    if m and m.args:
        return str(m.args[0])
    for name in FEATURES:
        if item.get_closest_marker(name):
            return name
    return "other"


def server_marker(item: pytest.Item) -> tuple[str, pytest.Mark | None]:
    """The item's ``vllm_server`` marker and its label (the marker's args and env as JSON when unlabelled)."""
    m = item.get_closest_marker("vllm_server")
    if m is None:
        return "", None
    label = m.kwargs.get("label") or ""
    if not label:
        label = json.dumps([list(m.kwargs.get("args", ())), m.kwargs.get("env", {})], sort_keys=True)
    return label, m


def target_of(item: pytest.Item) -> Target | None:
    """The model x version an item was parametrized with, or None (no target, or a test no model runs)."""
    callspec = getattr(item, "callspec", None)
    if callspec is None or "vllm_target" not in callspec.params:
        return None
    target = callspec.params["vllm_target"]
    return target if isinstance(target, Target) else None


def group_of(item: pytest.Item) -> GroupKey | None:
    """The server group of an item: the tests that share one server spec (line x model x server label)."""
    target = target_of(item)
    if target is None:
        return None
    label, _ = server_marker(item)
    return GroupKey(target.line, target.model.name, label)


def scope_of(item: pytest.Item, group: GroupKey) -> str:
    """The xdist scope of an item in server ``group`` (:func:`pytest_vllm_compat.scheduling.xdist_scope`), from
    its ``vllm_server(same_worker_as=...)`` and ``vllm_one_off`` markers."""
    _, marker = server_marker(item)
    after = marker.kwargs.get("same_worker_as") if marker is not None else None
    one_off = item.get_closest_marker("vllm_one_off") is not None
    if one_off and "vllm_server" in getattr(item, "fixturenames", ()):
        raise pytest.UsageError(f"{item.nodeid}: marked vllm_one_off (only one-off servers of its own) but it asks "
                                "for vllm_server; drop the marker, or start its servers with "
                                "vllm_server_factory.try_start")
    return xdist_scope(group, same_worker_as=None if after is None else str(after), one_off=one_off,
                       test_name=getattr(item, "originalname", item.name))
