"""pytest-vllm-compat: run real vLLM servers per model x version and record classified results.

The public API, importable from the package: the types the fixtures hand to a test, the outcomes a compat test
may declare besides pass/fail, and the record schema. Names are imported on first use, so reading records (the
matrix CLI) does not import the server machinery.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# name -> the module that defines it
_PUBLIC = {
    # the fixtures' types
    "Target": "session",  # vllm_target
    "VLLMEnvironment": "environments",  # vllm_env
    "VersionCaps": "capabilities",  # vllm_caps
    "VLLMServer": "server",  # vllm_server
    "ServerSpec": "server_spec",
    "ServerError": "server",
    "VLLMClient": "client",  # vllm_client
    "ServerFactory": "fixture_types",  # vllm_server_factory
    "OpenAISDK": "fixture_types",  # vllm_openai
    "DriftSettings": "fixture_types",  # vllm_drift
    "RecordExtras": "fixture_types",  # vllm_record
    # outcomes a test may declare (they skip with a reason the matrix reads)
    "unsupported": "outcomes",
    "not_applicable": "outcomes",
    # the record schema (docs/records.md)
    "RECORD_SCHEMA": "outcomes",
    "MANIFEST_SCHEMA": "outcomes",
    "MATRIX_SCHEMA": "outcomes",
    "STATUSES": "outcomes",
}

__all__ = [
    "MANIFEST_SCHEMA", "MATRIX_SCHEMA", "RECORD_SCHEMA", "STATUSES", "DriftSettings", "OpenAISDK", "RecordExtras",
    "ServerError", "ServerFactory", "ServerSpec", "Target", "VLLMClient", "VLLMEnvironment", "VLLMServer",
    "VersionCaps", "__version__", "not_applicable", "unsupported",
]

if TYPE_CHECKING:
    from .capabilities import VersionCaps
    from .client import VLLMClient
    from .environments import VLLMEnvironment
    from .fixture_types import DriftSettings, OpenAISDK, RecordExtras, ServerFactory
    from .outcomes import MANIFEST_SCHEMA, MATRIX_SCHEMA, RECORD_SCHEMA, STATUSES, not_applicable, unsupported
    from .server import ServerError, VLLMServer
    from .server_spec import ServerSpec
    from .session import Target


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'pytest_vllm_compat' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
