"""The failure knowledge base (``data/failures.toml``): loading and validating its ``[[failure]]`` entries,
and finding which of their patterns match which lines of a text.

Format: docs/classification.md. Each entry becomes a :class:`FailureRule` with compiled patterns; a missing
field, a bad regex, an unknown kind, a duplicate id or a ``{placeholder}`` without a matching named group
raises :class:`KnowledgeBaseError` naming the entry.

Patterns see a line's message without the log prefix (process, level, time, source location), so ``^``
anchors the message; lines logged at DEBUG/INFO/WARNING level are never matched (:func:`candidate_message`).
Which rule wins among the matches is classify.py's precedence rule.
"""

from __future__ import annotations

import re
import sys
from bisect import bisect_right
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from itertools import accumulate
from pathlib import Path

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version

from .log_lines import QUIET_LEVELS, line_level, strip_head
from .outcomes import KINDS

if sys.version_info >= (3, 11):
    import re._parser as _sre_parse
    from re._constants import LITERAL as _LITERAL

    import tomllib
else:  # pragma: no cover
    import sre_parse as _sre_parse
    from sre_constants import LITERAL as _LITERAL

    import tomli as tomllib

DEFAULT_KB_PATH = Path(__file__).parent / "data" / "failures.toml"
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
_OPTIONAL = ("priority", "symptom", "versions", "example", "workaround_pin", "bisected")
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
    # the committed bisection report (a path from the repository root) that ``fixed_in`` comes from
    bisected: str = ""

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

# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------
def _str_field(entry: Mapping[str, object], key: str, rid: str, *, allow_empty: bool) -> str:
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
    except Exception:  # private parser API: degrade to always searching
        return "", False
    if len(best) < 3:
        return "", False
    return (best.lower(), True) if icase else (best, False)


def _rule(entry: Mapping[str, object], order: int) -> FailureRule:
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
    listed = [example] if isinstance(example, str) else example
    if not isinstance(listed, (list, tuple)) or not all(isinstance(x, str) for x in listed):
        raise KnowledgeBaseError(f"failure {rid!r}: 'example' must be a string or a list of strings")
    examples = tuple(str(x) for x in listed)

    return FailureRule(
        id=rid, patterns=tuple(compiled), category=category, kind=kind, title=texts["title"],
        explanation=" ".join(texts["explanation"].split()), affected=texts["affected"],
        fixed_in=texts["fixed_in"], refs=tuple(refs), workaround=texts["workaround"], priority=priority,
        symptom=symptom, versions=versions, examples=examples, order=order, workaround_pin=str(pin),
        bisected=str(entry.get("bisected", "")),
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
    if line_level(line) in QUIET_LEVELS:
        return None
    message = strip_head(line).strip()
    return message or None


class RuleIndex:
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


def fill_placeholders(template: str, match: re.Match[str]) -> str:
    """``template`` (an entry's title, explanation or workaround) with each ``{name}`` replaced by the named
    group of ``match`` (left as it is when that group matched nothing)."""
    groups = match.groupdict()
    return _PLACEHOLDER_RE.sub(lambda p: groups.get(p.group(1)) or p.group(0), template)
