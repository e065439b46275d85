"""Outcomes a compat test can declare besides pass/fail. Both skip, with a reason the matrix reads.

Use them only for what the version or the platform cannot do; a feature that is broken in the vLLM
under test must fail, never skip.
"""

from __future__ import annotations

from typing import NoReturn

import pytest

from .results import NOT_APPLICABLE_PREFIX, UNSUPPORTED_PREFIX


def unsupported(reason: str) -> NoReturn:
    """The vLLM version under test does not offer this feature (capability table): status `unsupported`."""
    pytest.skip(UNSUPPORTED_PREFIX + reason)


def not_applicable(reason: str) -> NoReturn:
    """This platform cannot run the test (too few GPUs, a CUDA-only backend on CPU): `not_applicable`."""
    pytest.skip(NOT_APPLICABLE_PREFIX + reason)
