"""The outcome vocabulary: what a test's record, a matrix cell and a classification may say, and the schema
ids of the files that say it. One place for these; the modules that write or read records take them from here.

Also the outcomes a compat test can declare besides pass/fail (:func:`unsupported`, :func:`not_applicable`).
Both skip, with a reason the matrix reads. Use them only for what the version or the platform cannot do; a
feature that is broken in the vLLM under test must fail, never skip.
"""

from __future__ import annotations

from typing import NoReturn

# --- schema ids of the files the plugin writes (docs/records.md, docs/matrix.md) ----------------------------
RECORD_SCHEMA = "pytest-vllm-compat/record@1"
MANIFEST_SCHEMA = "pytest-vllm-compat/manifest@1"
MATRIX_SCHEMA = "pytest-vllm-compat/matrix@1"
GOLDEN_SCHEMA = "pytest-vllm-compat/golden@1"
# bisect@2 adds the ``attribution`` field (attribution.py) and each probe's ``logs``; @1 files are still read
BISECT_SCHEMA = "pytest-vllm-compat/bisect@2"
BISECT_SCHEMAS: tuple[str, ...] = ("pytest-vllm-compat/bisect@1", BISECT_SCHEMA)
ATTRIBUTE_SCHEMA = "pytest-vllm-compat/attribute@1"

# --- statuses -----------------------------------------------------------------------------------------------
# A test's record. conflict: the stack (--vllm-with) and the release cannot be installed together.
STATUSES: tuple[str, ...] = ("pass", "fail", "error", "conflict", "unsupported", "not_applicable")
# A matrix cell's: a record's, or flaky when runs disagree between pass and fail.
CELL_STATUSES: tuple[str, ...] = (*STATUSES, "flaky")
FAILING: tuple[str, ...] = ("fail", "error", "conflict")
SKIPPED: tuple[str, ...] = ("unsupported", "not_applicable")
# Worst first: the status a group of statuses shows is the first of these any of them has.
SEVERITY: tuple[str, ...] = ("fail", "error", "conflict", "flaky", "pass", "unsupported", "not_applicable")

# A skipped test's reason starts with one of these; the record's status follows from it.
UNSUPPORTED_PREFIX = "unsupported: "
NOT_APPLICABLE_PREFIX = "not applicable: "

# --- classification kinds (data/failures.toml ``kind``) -----------------------------------------------------
# vllm: the vLLM under test is broken; infrastructure: the test machinery failed (status error); platform: the
# platform cannot do it; stack: the pinned dependency stack cannot be installed with the release (conflict).
KINDS: tuple[str, ...] = ("vllm", "infrastructure", "platform", "stack")


def unsupported(reason: str) -> NoReturn:
    """The vLLM version under test does not offer this feature (capability table): status `unsupported`."""
    import pytest  # here, not above: modules that run without pytest (the matrix CLI) read the vocabulary

    pytest.skip(UNSUPPORTED_PREFIX + reason)


def not_applicable(reason: str) -> NoReturn:
    """This platform cannot run the test (too few GPUs, a CUDA-only backend on CPU): `not_applicable`."""
    import pytest

    pytest.skip(NOT_APPLICABLE_PREFIX + reason)
