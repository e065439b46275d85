"""One line of a vLLM server log: its logging level and its message without the head.

The head is what vLLM, uvicorn, c10/glog, docker compose and worker processes put before the message:
"vllm-1  | " (docker compose), "(EngineCore_DP0 pid=123) ", "INFO 11-22 10:00:00 [file.py:12] ".
Pure functions; nothing here imports vLLM.
"""

from __future__ import annotations

import re

# Levels below ERROR: lines logged at them never name a failure.
QUIET_LEVELS: tuple[str, ...] = ("DEBUG", "INFO", "WARNING")
FAILURE_LEVELS: tuple[str, ...] = ("ERROR", "CRITICAL")

# "vllm-1  | " (docker compose), "(EngineCore_DP0 pid=123) ", "(VllmWorker rank=0 pid=7) "
_PREFIX = r"(?:[\w.-]+\s+\|\s+)?(?:\([^()]*pid=\d+\)\s+)?"
_LEVEL_RE = re.compile(
    "^" + _PREFIX + r"(?:"
    r"(?P<level>DEBUG|INFO|WARNING|WARN|ERROR|CRITICAL)(?=[\s:])"  # vLLM "INFO 11-22 ...", uvicorn "INFO:"
    r"|\[(?P<c10>[DIWEF])\d{4} "  # c10 / glog "[W1122 11:28:02.464 utils.cpp:68]"
    r"|\d{4}-\d\d-\d\d[ T][\d:,.]+\s+(?:-\s+)?(?:[\w.]+\s+-\s+)?(?P<dated>DEBUG|INFO|WARNING|ERROR|CRITICAL)\b"
    r")"
)
_C10_LEVELS = {"D": "DEBUG", "I": "INFO", "W": "WARNING", "E": "ERROR", "F": "CRITICAL"}
# The head of a vLLM log line: prefix, level, timestamp, [file.py:123]
_HEAD_RE = re.compile(
    "^" + _PREFIX + r"(?:(?:DEBUG|INFO|WARNING|WARN|ERROR|CRITICAL)\s+\d\d-\d\d\s+[\d:.]+\s+\[?[\w./-]+:\d+\]\s?"
    r"|(?:DEBUG|INFO|WARNING|WARN|ERROR|CRITICAL):\s+)?"
)


def line_level(line: str) -> str | None:
    """The logging level of a log line (``"INFO"``, ``"ERROR"``, ...), ``None`` when it has none."""
    m = _LEVEL_RE.match(line)
    if not m:
        return None
    if m.group("c10"):
        return _C10_LEVELS[m.group("c10")]
    level = m.group("level") or m.group("dated")
    return "WARNING" if level == "WARN" else level


def strip_head(line: str) -> str:
    """The message of a log line: without the process prefix, level, timestamp and source location."""
    return _HEAD_RE.sub("", line, count=1)
