"""Classify a failure against the failure knowledge base (``data/failures.toml``).

The knowledge base is data, loaded, validated and matched line by line in knowledge_base.py; this module
applies the precedence rule (docs/classification.md):

1. Rules are either *causes* or *symptoms* (``symptom = true``: engine died, connection refused,
   the plugin's own "server died" / "startup timeout" messages). A symptom only wins when no cause
   matched anywhere in the error text or the server log.
2. The error text is searched first; the server log only when the error text has no cause. When the
   error text is a pytest report, its failing-source lines (``>   ...``) are ignored: they may quote
   messages the test merely looks for.
3. Within a text the first *error block* wins: the first line that matches a cause, plus the
   ``BLOCK_LINES`` lines after it (one traceback or resolver message). Inside the block the rule
   whose ``versions`` contain the run's vLLM version beats one whose ``versions`` do not, then the
   higher ``priority`` wins, then the earlier line, then the earlier entry in the file.
4. Symptoms: highest priority first, then error text before log, then the earlier line.
5. Nothing matched: ``unknown``, kind ``vllm`` when the server log has an error line (the server
   under test failed in a way the knowledge base does not know yet), the server answered an HTTP error
   status, or the test failed on an ``AssertionError`` (its check of the server's behaviour failed), else
   ``infrastructure`` (an exception in the test machinery with a quiet server). The plugin settles the
   log before it classifies (log_settle.py), so a line that lands after the client's 500 is read.

Log lines logged at DEBUG/INFO/WARNING level are never matched; patterns see the message without
the log prefix (process, level, time, source location), so ``^`` anchors the message.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from .knowledge_base import (
    FailureRule,
    RuleIndex,
    candidate_message,
    fill_placeholders,
    load_knowledge_base,
)
from .log_errors import first_error, root_exception
from .log_settle import http_error_status
from .record_types import Classification as ClassificationRecord

__all__ = [
    "BLOCK_LINES",
    "Classification",
    "classify",
    "exception_lines",
    "load_knowledge_base",
]

BLOCK_LINES = 40  # an error block: the first line that matches a cause and the lines after it (rule 3)


@dataclass(frozen=True)
class Classification:
    """The verdict for one failure: which known failure (or class of failure) it is."""

    id: str
    category: str
    kind: str
    title: str
    explanation: str
    refs: tuple[str, ...]
    workaround: str
    fixed_in: str
    matched: str  # the text line that matched ("" for unknown)
    workaround_pin: str = ""

    def to_dict(self) -> ClassificationRecord:
        out: ClassificationRecord = {
            "id": self.id,
            "category": self.category,
            "kind": self.kind,
            "title": self.title,
            "explanation": self.explanation,
            "refs": list(self.refs),
            "workaround": self.workaround,
            "fixed_in": self.fixed_in,
            "matched": self.matched,
        }
        if self.workaround_pin:
            out["workaround_pin"] = self.workaround_pin
        return out


@dataclass(frozen=True)
class _Hit:
    rule: FailureRule
    match: re.Match[str]
    source: int  # 0: error text, 1: server log
    line_no: int
    line: str


def _result(hit: _Hit) -> Classification:
    r, m = hit.rule, hit.match
    return Classification(
        id=r.id, category=r.category, kind=r.kind, title=fill_placeholders(r.title, m),
        explanation=fill_placeholders(r.explanation, m), refs=r.refs,
        workaround=fill_placeholders(r.workaround, m), fixed_in=r.fixed_in, matched=hit.line[:2000],
        workaround_pin=r.workaround_pin,
    )


def classify(
    error_text: str,
    log_text: str | None = None,
    *,
    version: str | None = None,
    kb: list[FailureRule] | None = None,
) -> Classification:
    """Classify a failure from the test's error text and the server log (precedence: module docstring)."""
    # the index caches messages: a repeated line is matched once
    index = RuleIndex(kb if kb is not None else load_knowledge_base())
    best_symptom: _Hit | None = None
    symptoms_seen: set[int] = set()  # rule indices
    for source, text in enumerate((_exception_text(error_text or ""), log_text or "")):
        block: list[_Hit] = []
        lines = text.split("\n")
        candidates = index.candidates(text, lines)
        for line_no in sorted(candidates):
            if block and line_no > block[0].line_no + BLOCK_LINES:
                break
            # a symptom rule seen on an earlier line cannot rank better later: skip its patterns
            pattern_ids = [j for j in candidates[line_no] if index.patterns[j][0] not in symptoms_seen]
            if not pattern_ids:
                continue
            line = lines[line_no]
            message = candidate_message(line)
            if message is None:
                continue
            for rule, m in index.hits(message, pattern_ids):
                hit = _Hit(rule, m, source, line_no, line.strip())
                if not rule.symptom:
                    block.append(hit)
                elif index.position[id(rule)] not in symptoms_seen:
                    symptoms_seen.add(index.position[id(rule)])
                    if best_symptom is None or _symptom_key(hit) < _symptom_key(best_symptom):
                        best_symptom = hit
        if block:
            return _result(min(block, key=lambda h: (not h.rule.covers(version), -h.rule.priority, h.line_no,
                                                     h.rule.order)))
    if best_symptom is not None:
        return _with_root_exception(_result(best_symptom), log_text)
    return _unknown(error_text, log_text)


_PYTEST_SOURCE_LINE = re.compile(r"^>(?:\s|$)")


def _exception_text(error_text: str) -> str:
    """``error_text`` without pytest's failing-source lines (``>   assert ...``), which may quote
    error messages the test only looks for."""
    if ">" not in error_text:
        return error_text
    return "\n".join(line for line in error_text.split("\n") if not _PYTEST_SOURCE_LINE.match(line))


def _symptom_key(hit: _Hit) -> tuple[int, int, int, int]:
    return (-hit.rule.priority, hit.source, hit.line_no, hit.rule.order)


_ASSERTION_RE = re.compile(r"^(?:E\s+)?(?:[\w.]+\.)?AssertionError\b", re.MULTILINE)


def _with_root_exception(result: Classification, log_text: str | None) -> Classification:
    """A symptom (the engine died, the server stopped answering) names the exception the log ends in."""
    root = root_exception(log_text) if log_text else None
    if root is None:
        return result
    return replace(result, title=f"{result.title}: {root.message[:160]}",
                   explanation=f"{result.explanation} The deepest exception in the server log, which no known "
                               f"failure matches, is: {root.describe()}.")


def _unknown(error_text: str, log_text: str | None) -> Classification:
    root = root_exception(log_text) if log_text else None
    err = first_error(log_text) if log_text else None
    assertion = bool(_ASSERTION_RE.search(error_text or ""))
    http_status = http_error_status(error_text or "")
    title = "Unclassified failure"
    if root is not None:
        title += f": {root.message[:160]}"
        explanation = f"No known failure matched. The deepest exception in the server log is: {root.describe()}."
    elif err is not None:
        explanation = (f"No known failure matched. The server log's first error (line {err[0] + 1}) is: "
                       f"{err[1].strip()[:500]}")
    elif http_status is not None:
        explanation = (f"No known failure matched: the server under test answered HTTP {http_status}, and "
                       + ("its log written during this test shows no error."
                          if log_text is not None else "no server log was given."))
    elif log_text is None:
        explanation = "No known failure matched, and no server log was given to read."
    elif assertion:
        explanation = ("No known failure matched: the server ran without logging an error, and the test's "
                       "check of its behaviour failed (AssertionError).")
    else:
        explanation = "No known failure matched, and the server log written during this test shows no error."
    logged = root is not None or err is not None
    # What the server did (logged an error, answered an HTTP error status, failed a check) is vLLM's result;
    # only an exception in the test machinery next to a quiet server is infrastructure.
    by_server = logged or assertion or http_status is not None
    return Classification(
        id="unknown", category="unknown", kind="vllm" if by_server else "infrastructure",
        title=title, explanation=explanation, refs=(), workaround="", fixed_in="", matched="",
    )


def exception_lines(text: str) -> str:
    """The exception part of a pytest traceback (its ``E   ...`` lines), or the text itself when it has none.

    A traceback also quotes the test's source, and a compat check's own failure message is written in that
    source: matched there, it would classify an unrelated failure of the same test as that check's failure.
    """
    lines = text.splitlines()
    e_lines = [ln[1:].strip() for ln in lines if ln.startswith("E ")]
    if not e_lines:
        return text
    # The plugin's own reports (server died / failed to start) put their verdict on the first line.
    head = [lines[0]] if lines and lines[0].startswith("vLLM server") else []
    return "\n".join(head + e_lines)
