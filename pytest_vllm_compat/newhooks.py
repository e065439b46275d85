"""Hooks the plugin calls, for other plugins to implement (``pytest_addhooks`` registers them).

The allure integration (allure_support.AllureHooks) is one implementation; a plugin that pushes records to a
dashboard would be another.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:  # the types only: hookspecs are read by name
    from .record_types import Manifest, Record
    from .session import Target


def pytest_vllm_compat_target(item: pytest.Item, target: Target, platform: str, feature: str) -> None:
    """A test's target (``session.Target``: model x version x stack) is set up and applicable; ``platform`` is
    "cpu" or "cuda:<gpu name>", ``feature`` the feature it records."""


def pytest_vllm_compat_record(item: pytest.Item, record: Record) -> None:
    """A test's result record was written (docs/records.md)."""


def pytest_vllm_compat_run_finished(config: pytest.Config, manifest: Manifest) -> None:
    """The controller wrote the run manifest (docs/records.md); called once per run, not on xdist workers."""
