"""The unit tests' stand-in runtime: a fake server script run with this interpreter instead of vLLM.

A ``runtime.Runtime`` like the real ones: only its argv differs (``python SCRIPT PORT [API_KEY] ARGS...``);
the environment is a venv server's (``VenvRuntime``), so the process tests see the plugin's real environment
handling -- marker, API key, dropped variables -- around a process that starts in milliseconds.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pytest_vllm_compat.runtime import VenvRuntime
from pytest_vllm_compat.server_spec import ServerSpec


class FakeRuntime(VenvRuntime):
    """``sys.executable SCRIPT PORT [API_KEY] *ARGS``; ``with_key`` hands the script the server's API key (on
    argv: only a stand-in may, to show the stored log redacts what the script prints)."""

    kind = "fake"

    def __init__(self, script: Path | str, *args: str, with_key: bool = True, cleanup: Sequence[str] = (),
                 **venv: Any) -> None:
        super().__init__(sys.executable, **venv)
        self.script = Path(script)
        self.args = list(args)
        self.with_key = with_key
        self.cleanup = list(cleanup)  # a stand-in for Docker's `docker rm -f NAME`

    def argv(self, spec: ServerSpec, *, port: int, api_key: str) -> list[str]:
        key = [api_key] if self.with_key else []
        return [str(self.python), str(self.script), str(port), *key, *self.args]

    def cleanup_argv(self) -> list[str]:
        return list(self.cleanup)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "script": str(self.script)}
