"""Helpers shared by the compat suites (the fixtures come from the plugin; this is a plain module)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pytest_vllm_compat.client import VLLMClient, text_of
from pytest_vllm_compat.cpu_cores import usable_cores
from pytest_vllm_compat.server import VLLMServer

GREEDY_PROMPTS = ("The quick brown fox", "vLLM serves", '{"name": ', "Hello, world")
_REFERENCE = pytest.StashKey[dict[str, list[str]]]()


def server_log(server: VLLMServer) -> str:
    return Path(server.log_path).read_text(encoding="utf-8", errors="replace")


def log_size(server: VLLMServer) -> int:
    """Where the server log ends now (read what a request adds with :func:`log_since`)."""
    try:
        return Path(server.log_path).stat().st_size
    except OSError:
        return 0


def log_since(server: VLLMServer, offset: int) -> str:
    with open(server.log_path, "rb") as f:
        f.seek(offset)
        return f.read().decode("utf-8", errors="replace")


def client_for(server: VLLMServer) -> VLLMClient:
    return VLLMClient(server.base_url, server.api_key, server.served_model_name)


def greedy_outputs(server: VLLMServer, max_tokens: int = 12) -> list[str]:
    client = client_for(server)
    try:
        return [text_of(client.completion(p, max_tokens=max_tokens)) for p in GREEDY_PROMPTS]
    finally:
        client.close()


def reference_outputs(request: pytest.FixtureRequest, target: Any, factory: Any, key: str = "default") -> list[str]:
    """Greedy outputs of the target's default server (TP=1, default attention backend), cached per session.

    Tests that compare against it run after the default server's tests (the plugin orders servers by
    spec), so the cache is usually warm; otherwise the default server is started here.
    """
    cache = request.config.stash.setdefault(_REFERENCE, {})
    k = f"{target.id}|{key}"
    if k not in cache:
        cache[k] = greedy_outputs(factory())
    return cache[k]


def store_reference(request: pytest.FixtureRequest, target: Any, server: VLLMServer, key: str = "default") -> list[str]:
    cache = request.config.stash.setdefault(_REFERENCE, {})
    cache[f"{target.id}|{key}"] = greedy_outputs(server)
    return cache[f"{target.id}|{key}"]


def model_config(model_path: str) -> dict[str, Any]:
    p = Path(model_path) / "config.json"
    return json.loads(p.read_text()) if p.is_file() else {}


def cpu_cores() -> int:
    return len(usable_cores())
