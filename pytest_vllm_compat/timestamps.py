"""The one clock format of the files the plugin writes: UTC, to the second."""

from __future__ import annotations

import datetime as _dt


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def now_iso() -> str:
    """Now as records, manifests, the matrix and golden files say it: ``2026-12-04T16:38:25Z``."""
    return _now().strftime("%Y-%m-%dT%H:%M:%SZ")


def file_stamp() -> str:
    """Now for a file name (run ids, install and probe logs, bisection reports): ``20261204T163825Z``."""
    return _now().strftime("%Y%m%dT%H%M%SZ")
