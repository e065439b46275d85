"""Helpers shared by the compat suites (the fixtures come from the plugin)."""

from __future__ import annotations

from pathlib import Path

from pytest_vllm_compat.server import VLLMServer


def server_log(server: VLLMServer) -> str:
    return Path(server.log_path).read_text(encoding="utf-8", errors="replace")
