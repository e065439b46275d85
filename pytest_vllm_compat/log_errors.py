"""Errors in a vLLM server log: the root exception of its deepest traceback, its first error line, and the
lines around either (the excerpt a record keeps).

Pure functions over the log text; nothing here imports vLLM. Tracebacks of several processes interleave
(API server, engine core, workers, each with its own line prefix); a traceback is read through the prefix
of its header line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .log_lines import FAILURE_LEVELS, QUIET_LEVELS, line_level, strip_head

_EXCEPTION_LINE_RE = re.compile(r"^(?:E\s+)?(?:[\w.]+\.)?\w*(?:Error|Exception)\b(?::|$)")
_TRACEBACK = "Traceback (most recent call last):"
# Lines that look like errors but are known to be harmless.
HARMLESS_ERROR_LINES: tuple[str, ...] = (
    r"Failed to import from vllm\._C",
    r"Error in cpuinfo",
)
_HARMLESS_RES = tuple(re.compile(p) for p in HARMLESS_ERROR_LINES)
# Exceptions that end a traceback printed during a deliberate shutdown.
_HARMLESS_EXCEPTIONS = re.compile(r"^(?:asyncio\.(?:exceptions\.)?)?(?:CancelledError|KeyboardInterrupt|SystemExit)\b")


def _is_error_line(line: str) -> bool:
    level = line_level(line)
    if level in FAILURE_LEVELS:
        return True
    if level is not None:
        return False
    msg = strip_head(line).strip()  # "(APIServer pid=1) Traceback ...": printed to stderr, no level
    return msg.startswith(_TRACEBACK) or bool(_EXCEPTION_LINE_RE.match(msg))


_CHAIN_MARKERS = ("The above exception was the direct cause of the following exception:",
                  "During handling of the above exception, another exception occurred:")
# A process prefix vLLM puts on its worker/engine lines: "(EngineCore_DP0 pid=4242) ", "(VllmWorker rank=0 pid=7) "
_PROCESS_RE = re.compile(r"\((?P<process>[^()]*\bpid=\d+)\)")
# An exception that only points at another traceback ("See root cause above", EngineDeadError's message).
_POINTER_RE = re.compile(r"(?i)\b(?:root cause|stack trace|see)\b[^.]*\babove\b")


def _foreign(content: str) -> bool:
    """Whether a line read through an empty or process-only prefix belongs to another stream."""
    return _PROCESS_RE.match(content) is not None or line_level(content) is not None


def _traceback_chain(lines: list[str], start: int, limit: int = 400) -> tuple[int, int] | None:
    """(first, last) exception line indices of the traceback whose header is ``lines[start]``, following
    chained tracebacks ("The above exception was the direct cause ..."); ``None`` when it never ends.

    The lines of one traceback share the exact text before ``Traceback`` (a process prefix, a logger
    header, or nothing), so interleaved lines of other processes are skipped and indentation after the
    prefix is kept: frame and source lines are indented, the exception line is not.
    """
    header = lines[start]
    prefix = header[: header.find(_TRACEBACK)] if _TRACEBACK in header else ""
    bare = line_level(prefix + "x") is None  # no logger header: other streams can interleave
    first = last = None
    chained = True
    for j in range(start + 1, min(len(lines), start + limit)):
        line = lines[j]
        if not line.startswith(prefix):
            continue
        content = line[len(prefix):]
        if not content.strip() or content[0].isspace() or content.startswith(_TRACEBACK):
            continue
        if bare and _foreign(content):
            continue
        if content.startswith(_CHAIN_MARKERS):
            chained = True
            continue
        if not chained:  # the first unindented line after the exception that does not chain: done
            break
        first = j if first is None else first
        last = j
        chained = False
    return None if first is None or last is None else (first, last)


def _traceback_end(lines: list[str], start: int, limit: int = 400) -> int:
    """Index of the exception line that ends the traceback starting at ``start`` (or ``start``)."""
    chain = _traceback_chain(lines, start, limit)
    return chain[0] if chain else start


@dataclass(frozen=True)
class RootException:
    """The exception that ends the deepest traceback of a log (see :func:`root_exception`)."""

    line_index: int  # 0-based index of the exception line in the log
    message: str  # "RuntimeError: ...", without the log prefix (plus one continuation line, if any)
    process: str | None  # "EngineCore_DP0 pid=4242"; None for lines without a process prefix
    traceback_index: int  # 0-based index of its "Traceback (most recent call last):" line

    def describe(self, limit: int = 500) -> str:
        """The exception and the process that raised it: ``"RuntimeError: x (in EngineCore_DP0 pid=42)"``."""
        return self.message[:limit] + (f" (in {self.process})" if self.process else "")


def _process_rank(process: str | None) -> int:
    low = (process or "").lower()
    return 2 if "worker" in low else 1 if "engine" in low else 0


def root_exception(log: str) -> RootException | None:
    """The exception line of the deepest traceback in ``log``; ``None`` when it has no traceback.

    Deepest: a traceback printed by a worker process beats one by the engine process, which beats the
    API server's (or an unprefixed one); among those, an exception that names a cause beats one that
    only points at another traceback ("See root cause above", EngineDeadError), then the last one wins
    (an engine dies of its last exception). In a chain ("The above exception was the direct cause ...")
    the first exception is the root. Tracebacks logged below ERROR level, Python's "--- Logging error ---"
    blocks and tracebacks of a deliberate shutdown (CancelledError, KeyboardInterrupt) do not count.
    """
    if _TRACEBACK not in log:
        return None
    lines = log.splitlines()
    best: tuple[tuple[int, bool, int], RootException] | None = None
    done: dict[str, int] = {}  # prefix -> last line of the chains read through it
    skip_to = 0
    for i, line in enumerate(lines):
        if i < skip_to:
            continue
        if line.startswith("--- Logging error ---"):
            skip_to = next((j for j in range(i + 1, min(len(lines), i + 200)) if lines[j].startswith("Arguments:")),
                           i) + 1
            continue
        if not line.rstrip().endswith(_TRACEBACK) or line_level(line) in QUIET_LEVELS:
            continue
        prefix = line[: line.rfind(_TRACEBACK)]
        if done.get(prefix, -1) >= i:  # a later traceback of a chain already read
            continue
        chain = _traceback_chain(lines, i)
        if chain is None:
            continue
        done[prefix] = chain[1]
        message = lines[chain[0]][len(prefix):].strip()
        if _HARMLESS_EXCEPTIONS.match(message):
            continue
        if chain[0] + 1 < len(lines) and lines[chain[0] + 1].startswith(prefix):
            detail = lines[chain[0] + 1][len(prefix):]
            if detail[:1].isspace() and detail.strip() and not detail.lstrip().startswith("File "):
                message += " " + detail.strip()  # e.g. the detail line of pydantic's ValidationError
        m = _PROCESS_RE.search(prefix)
        process = m.group("process") if m else None
        key = (_process_rank(process), _POINTER_RE.search(message) is None, chain[0])
        if best is None or key > best[0]:
            best = (key, RootException(chain[0], message, process, i))
    return best[1] if best else None


def first_error(log: str) -> tuple[int, str] | None:
    """(0-based line index, line) of the first line that looks like an error, or ``None``.

    An error line is one logged at ERROR/CRITICAL level, a ``Traceback`` header, or an exception line
    (``TypeError: ...``) outside a logger prefix. Known-harmless lines, Python's "--- Logging error ---"
    blocks and tracebacks of a deliberate shutdown (CancelledError, KeyboardInterrupt) are skipped.
    """
    lines = log.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("--- Logging error ---"):
            # Python's logging module reports its own formatting errors; the block ends with "Arguments:"
            j = i + 1
            while j < len(lines) and j < i + 200 and not lines[j].startswith("Arguments:"):
                j += 1
            i = j + 1
            continue
        if _is_error_line(line) and not any(rx.search(line) for rx in _HARMLESS_RES):
            if strip_head(line).strip().startswith(_TRACEBACK):
                end = _traceback_end(lines, i)
                if end != i and _HARMLESS_EXCEPTIONS.match(strip_head(lines[end]).strip()):
                    i = end + 1
                    continue
            elif _HARMLESS_EXCEPTIONS.match(strip_head(line).strip()):
                i += 1
                continue
            return i, line
        i += 1
    return None


def excerpt(log: str, line_index: int, before: int = 20, after: int = 30) -> str:
    """The log lines from ``before`` lines above ``line_index`` to ``after`` lines below it."""
    lines = log.splitlines()
    if not lines:
        return ""
    line_index = max(0, min(line_index, len(lines) - 1))
    return "\n".join(lines[max(0, line_index - before) : line_index + after + 1])


def error_excerpt(log: str, before: int = 20, after: int = 40, max_lines: int = 150) -> str | None:
    """The lines around the cause in ``log``; ``None`` when it has no error.

    With a traceback: centred on its root exception (:func:`root_exception`, ``before + after`` lines in
    all), reaching up to the traceback's header and the line above it (e.g. "EngineCore encountered a
    fatal error.") when that is at most ``max_lines`` above, so the excerpt alone still shows whose
    traceback it is. Without one: from ``before`` lines above its first error to ``after`` below it.
    """
    root = root_exception(log)
    if root is None:
        hit = first_error(log)
        return excerpt(log, hit[0], before, after) if hit is not None else None
    half = (before + after) // 2
    header = root.line_index - root.traceback_index + 1
    return excerpt(log, root.line_index, max(half, header) if header <= max_lines else half, before + after - half)
