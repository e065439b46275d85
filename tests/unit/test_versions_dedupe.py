"""--vllm=A,B: each version once, in the order given; the duplicates are reported, not run twice."""

from __future__ import annotations

import pytest

from pytest_vllm_compat.session import split_versions


@pytest.mark.parametrize(("text", "expected"), [
    ("", []),
    (" , ,", []),
    ("0.32.0", ["0.32.0"]),
    ("0.32.0,0.28.0", ["0.32.0", "0.28.0"]),  # the order given, not sorted
    ("0.32.0,0.32.0", ["0.32.0"]),
    (" 0.32.0 , 0.28.0,0.32.0 ", ["0.32.0", "0.28.0"]),
    ("0.32,0.32.0", ["0.32"]),  # one release (PEP 440): the first spelling is kept
    ("0.32.0,0.32", ["0.32.0"]),
    ("0.10.0,0.1.0", ["0.10.0", "0.1.0"]),  # not the same version
    ("0.32.0,0.32.0+cpu", ["0.32.0", "0.32.0+cpu"]),  # a local label is another version
    ("current,0.32.0,current", ["current", "0.32.0"]),
    ("current,Current", ["current", "Current"]),  # not a version: compared as written
])
def test_split_versions_keeps_each_version_once_in_order(text: str, expected: list[str]) -> None:
    assert split_versions(text) == expected


def test_split_versions_reports_each_dropped_entry_with_the_kept_spelling() -> None:
    dropped: list[tuple[str, str]] = []
    assert split_versions("0.32.0, 0.32.0,0.28.0,0.32,current,current", dropped) == ["0.32.0", "0.28.0", "current"]
    assert dropped == [("0.32.0", "0.32.0"), ("0.32", "0.32.0"), ("current", "current")]


def test_split_versions_without_duplicates_reports_nothing() -> None:
    dropped: list[tuple[str, str]] = []
    assert split_versions("0.28.0,0.32.0", dropped) == ["0.28.0", "0.32.0"]
    assert dropped == []
