"""Settle a server's log after a failure, before the failure is classified.

vLLM logs from several processes (API server, EngineCore, workers) through pipes, and the plugin copies that
output into the log file line by line. The line that explains an HTTP 500 (``Unexpected: grammar rejected
tokens … Terminating request.``, written by the engine) can therefore reach the file *after* the client has
its 500 and the test has failed. Read at once, the test's log slice would lack its cause, and the same
failure would get a different verdict from run to run.

:func:`settle` waits, bounded, until the log written since ``offset`` is complete enough to judge:

* it has been quiet (no growth) for ``quiet_s``;
* and, when the failure was an HTTP error answered by the server (``want_error``), it holds an error line.

Only failed tests wait (a passing test never calls it); the wait is at most ``timeout_s``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

QUIET_S = 0.3  # no new log bytes for this long: the server has said what it had to say about the failure
TIMEOUT_S = 3.0  # never wait longer than this for one failed test
POLL_S = 0.05

# A failure whose error text shows the server answering an HTTP error status: our client's APIError
# ("HTTP 500 from http://…"), the OpenAI SDK's ("Error code: 500"), requests' raise_for_status.
_HTTP_ERROR_RE = re.compile(
    r"\bHTTP (?P<a>[45]\d\d) from \b|\bError code: (?P<b>[45]\d\d)\b|\b(?P<c>[45]\d\d) (?:Server|Client) Error\b")


def http_error_status(error_text: str) -> int | None:
    """The HTTP status the server answered, when the failure's text shows one (4xx/5xx), else None."""
    m = _HTTP_ERROR_RE.search(error_text or "")
    if m is None:
        return None
    return int(m.group("a") or m.group("b") or m.group("c"))


@dataclass(frozen=True)
class Settled:
    """How the log was settled: the slice, whether it met the condition, and how long it took."""

    text: str
    complete: bool  # quiet (and holding an error line when one was wanted) before the timeout
    waited_s: float
    want_error: bool

    def to_dict(self) -> dict[str, object]:
        return {"complete": self.complete, "waited_s": round(self.waited_s, 3), "want_error": self.want_error}


def _read_from(path: Path, offset: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def has_error_line(text: str) -> bool:
    """Whether ``text`` has a line logged at ERROR/CRITICAL level or a traceback (logparse's notion of one)."""
    from .logparse import first_error, root_exception

    return first_error(text) is not None or root_exception(text) is not None


def settle(path: Path, offset: int, *, want_error: bool, quiet_s: float = QUIET_S, timeout_s: float = TIMEOUT_S,
           poll_s: float = POLL_S, clock: Callable[[], float] = time.monotonic,
           sleep: Callable[[float], None] = time.sleep) -> Settled:
    """Wait until the log at ``path`` written since ``offset`` is settled (module docstring); at most
    ``timeout_s``. Returns the slice as it then is."""
    start = clock()
    last_size = -1
    last_change = start
    text = ""
    while True:
        now = clock()
        try:
            size = path.stat().st_size
        except OSError:
            size = 0
        if size != last_size:
            last_size = size
            last_change = now
            text = _read_from(path, offset)
        quiet = now - last_change >= quiet_s
        if quiet and (not want_error or has_error_line(text)):
            return Settled(text, True, now - start, want_error)
        if now - start >= timeout_s:
            return Settled(_read_from(path, offset), False, now - start, want_error)
        sleep(poll_s)
