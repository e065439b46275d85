"""pytest-vllm-compat: run real vLLM servers per model x version and record classified results."""

from __future__ import annotations

__version__ = "0.1.0"
