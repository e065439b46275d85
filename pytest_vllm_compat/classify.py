"""Classify a failure against the failure knowledge base (``data/failures.toml``).

The knowledge base is data; this module loads and validates it and applies the precedence rule
(docs/classification.md):

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
   under test failed in a way the knowledge base does not know yet) or the test failed on an
   ``AssertionError`` (its check of the server's behaviour failed), else ``infrastructure`` (an
   exception in the test machinery with a quiet server).

Log lines logged at DEBUG/INFO/WARNING level are never matched; patterns see the message without
the log prefix (process, level, time, source location), so ``^`` anchors the message.
"""

from __future__ import annotations

import re
import sys
from bisect import bisect_right
from dataclasses import dataclass, replace
from functools import lru_cache
from itertools import accumulate
from pathlib import Path
from typing import Any

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version

from .logparse import first_error, line_level, root_exception, strip_head

if sys.version_info >= (3, 11):
    import re._parser as _sre_parse
    from re._constants import LITERAL as _LITERAL

    import tomllib
else:  # pragma: no cover
    import sre_parse as _sre_parse
    from sre_constants import LITERAL as _LITERAL

    import tomli as tomllib

DEFAULT_KB_PATH = Path(__file__).parent / "data" / "failures.toml"
KINDS = ("vllm", "infrastructure", "platform", "stack")
BLOCK_LINES = 40
DEFAULT_PRIORITY = 50

# Pre-filter for patterns without a literal "needle" (see _needle): such a pattern is only tried on
# lines that contain one of these words. Patterns with a needle are tried only where it occurs.
LINE_HINTS: tuple[str, ...] = (
    "error", "exception", "traceback", "failed", "fatal", "errno", "no module", "cannot", "can't",
    "undefined symbol", "no available memory", "is larger than", "must be divisible", "out of memory",
    "unsupported", "not supported", "has no attribute", "died", "not running", "nccl", "no kernel image",
    "compute capability", "sm_75", "sm75", "resolutionimpossible", "no matching distribution",
    "could not find a version", "no solution found", "pyairports", "did not become ready", "crashed",
    "timed out", "timeout", "address already in use", "connection", "disconnected", "broken pipe",
    "assert", "free memory on device", "model directory", "/health", "no longer supports", "only support",
    "not a string", "does not appear to have", "no such file", "does not exist", "kv cache",
)

_REQUIRED = ("id", "patterns", "category", "kind", "title", "explanation", "affected", "fixed_in", "refs",
             "workaround")
_OPTIONAL = ("priority", "symptom", "versions", "example", "workaround_pin")
_SLUG_RE = re.compile(r"^[a-z0-9][a-z0-9_]*$")
_PLACEHOLDER_RE = re.compile(r"\{(\w+)\}")


class KnowledgeBaseError(ValueError):
    """The failure knowledge base file is missing or malformed."""


@dataclass(frozen=True)
class FailureRule:
    """One ``[[failure]]`` entry of the knowledge base, validated, with compiled patterns."""

    id: str
    patterns: tuple[re.Pattern[str], ...]
    category: str
    kind: str
    title: str
    explanation: str
    affected: str
    fixed_in: str
    refs: tuple[str, ...]
    workaround: str
    priority: int = DEFAULT_PRIORITY
    symptom: bool = False
    versions: SpecifierSet | None = None
    examples: tuple[str, ...] = ()
    order: int = 0  # position in the file
    # a requirement whose stack (--vllm-with) works around the failure; the site checks it against runs
    workaround_pin: str = ""

    needles: tuple[tuple[str, bool], ...] = ()  # per pattern: a literal it requires, and its ignorecase flag

    def search(self, message: str, lowered: str | None = None) -> re.Match[str] | None:
        lowered = message.lower() if lowered is None else lowered
        for i, rx in enumerate(self.patterns):
            if i < len(self.needles):
                needle, icase = self.needles[i]
                if needle and needle not in (lowered if icase else message):
                    continue
            m = rx.search(message)
            if m:
                return m
        return None

    def covers(self, version: str | None) -> bool:
        """Whether ``version`` is inside this rule's ``versions`` (True when either is unknown)."""
        if self.versions is None or not version:
            return True
        try:
            return self.versions.contains(Version(version), prereleases=True)
        except InvalidVersion:
            return True


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

    def to_dict(self) -> dict[str, object]:
        extra: dict[str, object] = {"workaround_pin": self.workaround_pin} if self.workaround_pin else {}
        return {
            "id": self.id,
            "category": self.category,
            "kind": self.kind,
            "title": self.title,
            "explanation": self.explanation,
            "refs": list(self.refs),
            "workaround": self.workaround,
            "fixed_in": self.fixed_in,
            "matched": self.matched,
            **extra,
        }


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------
def _str_field(entry: dict[str, Any], key: str, rid: str, *, allow_empty: bool) -> str:
    value = entry[key]
    if not isinstance(value, str) or (not allow_empty and not value.strip()):
        raise KnowledgeBaseError(f"failure {rid!r}: {key!r} must be a{'' if allow_empty else ' non-empty'} string")
    return value.strip()


def _needle(rx: re.Pattern[str]) -> tuple[str, bool]:
    """The longest literal run at the top level of ``rx`` (a cheap ``in`` check before the regex search).

    Uses the standard library's regex parser; any surprise there just means "no needle".
    """
    try:
        parsed = _sre_parse.parse(rx.pattern, rx.flags)
        icase = bool(parsed.state.flags & re.IGNORECASE)
        best, run = "", []
        for op, arg in parsed:
            if op is _LITERAL:
                run.append(chr(arg))
                continue
            best = max(best, "".join(run), key=len)
            run = []
        best = max(best, "".join(run), key=len)
    except Exception:  # noqa: BLE001 - private parser API: degrade to always searching
        return "", False
    if len(best) < 3:
        return "", False
    return (best.lower(), True) if icase else (best, False)


def _rule(entry: dict[str, Any], order: int) -> FailureRule:
    rid = entry.get("id")
    if not isinstance(rid, str) or not _SLUG_RE.match(rid):
        raise KnowledgeBaseError(f"failure #{order + 1}: 'id' must be a lowercase slug, got {rid!r}")
    missing = [k for k in _REQUIRED if k not in entry]
    if missing:
        raise KnowledgeBaseError(f"failure {rid!r}: missing field(s) {', '.join(missing)}")
    unknown = sorted(set(entry) - set(_REQUIRED) - set(_OPTIONAL))
    if unknown:
        raise KnowledgeBaseError(f"failure {rid!r}: unknown field(s) {', '.join(unknown)}")

    patterns = entry["patterns"]
    if isinstance(patterns, str):
        patterns = [patterns]
    if not isinstance(patterns, list) or not patterns or not all(isinstance(p, str) and p for p in patterns):
        raise KnowledgeBaseError(f"failure {rid!r}: 'patterns' must be a non-empty list of regexes")
    compiled = []
    for p in patterns:
        try:
            compiled.append(re.compile(p))
        except re.error as e:
            raise KnowledgeBaseError(f"failure {rid!r}: bad regex {p!r}: {e}") from e

    category = _str_field(entry, "category", rid, allow_empty=False)
    if not _SLUG_RE.match(category):
        raise KnowledgeBaseError(f"failure {rid!r}: 'category' must be a lowercase slug, got {category!r}")
    kind = _str_field(entry, "kind", rid, allow_empty=False)
    if kind not in KINDS:
        raise KnowledgeBaseError(f"failure {rid!r}: 'kind' must be one of {', '.join(KINDS)}, got {kind!r}")
    texts = {k: _str_field(entry, k, rid, allow_empty=k in ("fixed_in", "workaround", "affected"))
             for k in ("title", "explanation", "affected", "fixed_in", "workaround")}
    for key in ("title", "explanation", "workaround"):
        for name in _PLACEHOLDER_RE.findall(texts[key]):
            lacking = [rx.pattern for rx in compiled if name not in rx.groupindex]
            if lacking:
                raise KnowledgeBaseError(
                    f"failure {rid!r}: {key!r} uses {{{name}}} but pattern(s) {lacking} have no group (?P<{name}>...)")

    refs = entry["refs"]
    if not isinstance(refs, list) or not all(isinstance(r, str) and r.startswith(("https://", "http://"))
                                             for r in refs):
        raise KnowledgeBaseError(f"failure {rid!r}: 'refs' must be a list of URLs")

    priority = entry.get("priority", DEFAULT_PRIORITY)
    if not isinstance(priority, int) or isinstance(priority, bool):
        raise KnowledgeBaseError(f"failure {rid!r}: 'priority' must be an integer")
    symptom = entry.get("symptom", False)
    if not isinstance(symptom, bool):
        raise KnowledgeBaseError(f"failure {rid!r}: 'symptom' must be true or false")
    versions = None
    if entry.get("versions"):
        try:
            versions = SpecifierSet(str(entry["versions"]))
        except InvalidSpecifier as e:
            raise KnowledgeBaseError(f"failure {rid!r}: bad 'versions' specifier {entry['versions']!r}") from e
    pin = entry.get("workaround_pin", "")
    if pin:
        from packaging.requirements import InvalidRequirement, Requirement

        try:
            Requirement(str(pin))
        except InvalidRequirement as e:
            raise KnowledgeBaseError(f"failure {rid!r}: 'workaround_pin' is not a requirement: {e}") from e
    example = entry.get("example", ())
    examples = (example,) if isinstance(example, str) else tuple(example)
    if not all(isinstance(x, str) for x in examples):
        raise KnowledgeBaseError(f"failure {rid!r}: 'example' must be a string or a list of strings")

    return FailureRule(
        id=rid, patterns=tuple(compiled), category=category, kind=kind, title=texts["title"],
        explanation=" ".join(texts["explanation"].split()), affected=texts["affected"],
        fixed_in=texts["fixed_in"], refs=tuple(refs), workaround=texts["workaround"], priority=priority,
        symptom=symptom, versions=versions, examples=examples, order=order, workaround_pin=str(pin),
        needles=tuple(_needle(rx) for rx in compiled),
    )


def load_knowledge_base(path: str | Path | None = None) -> list[FailureRule]:
    """Load and validate a knowledge base file (default: the packaged ``data/failures.toml``).

    Raises :class:`KnowledgeBaseError` naming the entry for a missing field, a bad regex, an unknown
    kind, a duplicate id or a ``{placeholder}`` without a matching named group.
    """
    if path is None:
        return list(_default_kb())
    return _load(Path(path))


@lru_cache(maxsize=1)
def _default_kb() -> tuple[FailureRule, ...]:
    return tuple(_load(DEFAULT_KB_PATH))


def _load(path: Path) -> list[FailureRule]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise KnowledgeBaseError(f"cannot read knowledge base {path}: {e}") from e
    except tomllib.TOMLDecodeError as e:
        raise KnowledgeBaseError(f"knowledge base {path} is not valid TOML: {e}") from e
    entries = data.get("failure")
    if not isinstance(entries, list) or not entries:
        raise KnowledgeBaseError(f"knowledge base {path} has no [[failure]] entries")
    rules: list[FailureRule] = []
    seen: set[str] = set()
    for i, entry in enumerate(entries):
        rule = _rule(entry, i)
        if rule.id in seen:
            raise KnowledgeBaseError(f"knowledge base {path}: duplicate id {rule.id!r}")
        seen.add(rule.id)
        rules.append(rule)
    return rules


# ---------------------------------------------------------------------------------------------
# Matching
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Hit:
    rule: FailureRule
    match: re.Match[str]
    source: int  # 0: error text, 1: server log
    line_no: int
    line: str


def _hinted_lines(text: str, lines: list[str]) -> list[int]:
    """Indices of the lines that contain a LINE_HINTS word (found with str.find over the whole text)."""
    low = text.lower()
    if len(low) != len(text):  # a few Unicode characters change length when lower-cased
        return [i for i, line in enumerate(lines) if any(h in line.lower() for h in LINE_HINTS)]
    starts = list(accumulate((len(line) + 1 for line in lines), initial=0))
    found: set[int] = set()
    for hint in LINE_HINTS:
        pos = low.find(hint)
        while pos != -1:
            i = bisect_right(starts, pos) - 1
            found.add(i)
            pos = low.find(hint, starts[i + 1]) if i + 1 < len(lines) else -1
    return sorted(found)


def candidate_message(line: str) -> str | None:
    """The message of ``line`` (without the log prefix), or ``None`` for DEBUG/INFO/WARNING lines."""
    if line_level(line) in ("DEBUG", "INFO", "WARNING"):
        return None
    message = strip_head(line).strip()
    return message or None


class _Index:
    """All patterns of the rules, flattened with their needles.

    Which lines may match which pattern is found with ``str.find`` of each needle over the whole text
    (C speed); only those lines are split into their message and searched with the regexes, and a
    message seen before (a repeated log line) is not searched again.
    """

    def __init__(self, rules: list[FailureRule]) -> None:
        self.rules = rules
        self.position = {id(rule): k for k, rule in enumerate(rules)}
        # (rule index, regex, needle, ignorecase)
        self.patterns: list[tuple[int, re.Pattern[str], str, bool]] = []
        for k, rule in enumerate(rules):
            needles = rule.needles or tuple(("", False) for _ in rule.patterns)
            for rx, (needle, icase) in zip(rule.patterns, needles, strict=True):
                self.patterns.append((k, rx, needle, icase))
        self.always = [j for j, (_, _, needle, _) in enumerate(self.patterns) if not needle]
        self.cache: dict[str, list[tuple[FailureRule, re.Match[str]]]] = {}

    def candidates(self, text: str, lines: list[str]) -> dict[int, list[int]]:
        """Line index -> indices of the patterns whose needle the line contains."""
        out: dict[int, list[int]] = {}
        low = text.lower()
        if len(low) != len(text):  # a few Unicode characters change length when lower-cased: go line by line
            for i, line in enumerate(lines):
                line_low = line.lower()
                js = [j for j, (_, _, n, ic) in enumerate(self.patterns) if n and n in (line_low if ic else line)]
                if js:
                    out[i] = js
        else:
            starts = list(accumulate((len(line) + 1 for line in lines), initial=0))
            for j, (_, _, needle, icase) in enumerate(self.patterns):
                if not needle:
                    continue
                hay = low if icase else text
                pos = hay.find(needle)
                while pos != -1:
                    i = bisect_right(starts, pos) - 1
                    out.setdefault(i, []).append(j)
                    pos = hay.find(needle, starts[i + 1]) if i + 1 < len(lines) else -1
        if self.always:
            for i in _hinted_lines(text, lines):
                out.setdefault(i, []).extend(self.always)
        return out

    def hits(self, message: str, pattern_ids: list[int]) -> list[tuple[FailureRule, re.Match[str]]]:
        """The rules matching ``message`` (each with its first matching pattern), in file order."""
        cached = self.cache.get(message)
        if cached is not None:
            return cached
        found: dict[int, re.Match[str]] = {}
        for j in sorted(set(pattern_ids)):
            k, rx, _, _ = self.patterns[j]
            if k not in found and (m := rx.search(message)):
                found[k] = m
        hits = [(self.rules[k], found[k]) for k in sorted(found)]
        self.cache[message] = hits
        return hits


def _fill(template: str, match: re.Match[str]) -> str:
    groups = match.groupdict()
    return _PLACEHOLDER_RE.sub(lambda p: groups.get(p.group(1)) or p.group(0), template)


def _result(hit: _Hit) -> Classification:
    r = hit.rule
    return Classification(
        id=r.id, category=r.category, kind=r.kind, title=_fill(r.title, hit.match),
        explanation=_fill(r.explanation, hit.match), refs=r.refs, workaround=_fill(r.workaround, hit.match),
        fixed_in=r.fixed_in, matched=hit.line[:2000], workaround_pin=r.workaround_pin,
    )


def classify(
    error_text: str,
    log_text: str | None = None,
    *,
    version: str | None = None,
    kb: list[FailureRule] | None = None,
) -> Classification:
    """Classify a failure from the test's error text and the server log (precedence: module docstring)."""
    index = _Index(kb if kb is not None else list(_default_kb()))  # caches messages: repeats are matched once
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
    title = "Unclassified failure"
    if root is not None:
        title += f": {root.message[:160]}"
        explanation = f"No known failure matched. The deepest exception in the server log is: {root.describe()}."
    elif err is not None:
        explanation = (f"No known failure matched. The server log's first error (line {err[0] + 1}) is: "
                       f"{err[1].strip()[:500]}")
    elif assertion:
        explanation = ("No known failure matched: the server ran without logging an error, and the test's "
                       "check of its behaviour failed (AssertionError).")
    else:
        explanation = "No known failure matched, and the server log shows no error."
    logged = root is not None or err is not None
    return Classification(
        id="unknown", category="unknown", kind="vllm" if logged or assertion else "infrastructure",
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
