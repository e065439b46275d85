"""What users type for ``--vllm``, resolved against the releases the package index offers.

    0.32.0               that release, exactly (checked against the index when provisioning)
    0.27.0..0.32.0       every final release in the closed range, oldest first (``0.30.0..`` up to the
                         newest, ``..0.28.0`` from the oldest; a reversed range is an error)
    latest               the newest final release
    latest~3             the newest four final releases (latest and the three before it)
    0.32                 the newest 0.32.x final release
    current              the vLLM of ``--vllm-python`` (not resolved here)

Terms are comma-separated and may be mixed; a release named twice runs once (the first position wins).
"Final" leaves out pre-releases (``rc``, ``a``, ``b``, ``dev``) and ``.postN`` rebuilds; ``pre=True``
(``--vllm-pre``) takes them in. Exact versions pass through unchanged whatever ``pre`` says. Pure logic:
the caller lists the index (``package_index.available_versions``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from packaging.version import InvalidVersion, Version

_LATEST = re.compile(r"^latest(?:~(\d+))?$")
_MINOR = re.compile(r"^\d+\.\d+$")


class VersionSpecError(ValueError):
    """A ``--vllm`` term cannot be resolved (malformed, or it selects nothing, or no index to resolve it)."""


@dataclass
class Resolution:
    versions: list[str]
    terms: list[tuple[str, list[str]]] = field(default_factory=list)  # each term and what it selected
    duplicates: list[tuple[str, str]] = field(default_factory=list)  # (dropped, kept)

    def describe(self) -> str:
        """One line for the terminal: each dynamic term with what it selected, then the list."""
        parts = [f"{t} -> {', '.join(sel)}" for t, sel in self.terms if is_dynamic(t)]
        return "; ".join(parts)


def is_dynamic(term: str) -> bool:
    """Whether resolving ``term`` needs the list of releases."""
    term = term.strip()
    return ".." in term or bool(_LATEST.match(term)) or bool(_MINOR.match(term))


def _parse(text: str, term: str) -> Version:
    try:
        return Version(text)
    except InvalidVersion:
        raise VersionSpecError(f"--vllm term {term!r}: {text!r} is not a version") from None


def is_final(version: str | Version) -> bool:
    """A final release: a PEP 440 version without pre-release, .postN, dev or local parts."""
    try:
        v = version if isinstance(version, Version) else Version(version)
    except InvalidVersion:
        return False
    return not (v.is_prerelease or v.is_postrelease or v.is_devrelease or v.local)


def _eligible(available: Sequence[str], pre: bool) -> list[tuple[Version, str]]:
    out = []
    for a in available:
        try:
            v = Version(a)
        except InvalidVersion:
            continue
        if not pre and not is_final(v):
            continue
        out.append((v, a))
    return sorted(out)


def expand_term(term: str, available: Sequence[str] | None, *, pre: bool = False) -> list[str]:
    """The releases ``term`` selects, oldest first (an exact version or ``current`` as written)."""
    term = term.strip()
    if not is_dynamic(term):
        return [term]
    if available is None:
        raise VersionSpecError(f"--vllm term {term!r} needs the list of releases, and the package index could "
                               "not be listed (offline?): name the versions exactly, e.g. --vllm=0.28.0,0.32.0")
    releases = _eligible(available, pre)
    what = "release" if not pre else "release or pre-release"
    if ".." in term:
        lo_text, _, hi_text = term.partition("..")
        if ".." in hi_text or (not lo_text.strip() and not hi_text.strip()):
            raise VersionSpecError(f"--vllm term {term!r}: write A..B (A.. and ..B are open ends)")
        lo = _parse(lo_text.strip(), term) if lo_text.strip() else None
        hi = _parse(hi_text.strip(), term) if hi_text.strip() else None
        if lo is not None and hi is not None and lo > hi:
            raise VersionSpecError(f"--vllm term {term!r} is reversed: write {hi_text.strip()}..{lo_text.strip()} "
                                   "(oldest first)")
        chosen = [s for v, s in releases if (lo is None or v >= lo) and (hi is None or v <= hi)]
        if not chosen:
            raise VersionSpecError(f"--vllm term {term!r} selects no {what} the package index offers "
                                   f"({_span(releases)})")
        return chosen
    m = _LATEST.match(term)
    if m:
        n = int(m.group(1) or 0) + 1
        if not releases:
            raise VersionSpecError(f"--vllm term {term!r}: the package index offers no {what}")
        return [s for _, s in releases[-n:]]
    # a minor series: the newest X.Y.z
    series = _parse(term, term)
    chosen = [s for v, s in releases if v.release[:2] == series.release[:2]]
    if not chosen:
        raise VersionSpecError(f"--vllm term {term!r}: no {term}.x {what} on the package index ({_span(releases)})")
    return [chosen[-1]]


def _span(releases: Sequence[tuple[Version, str]]) -> str:
    return f"it has {releases[0][1]} to {releases[-1][1]}" if releases else "it has none"


def resolve_versions(text: str, available: Sequence[str] | None, *, pre: bool = False) -> Resolution:
    """Expand every comma-separated term of ``text`` and drop repeats (equal as PEP 440 versions, else as
    written), keeping the first position. ``available`` is only consulted when a term needs it."""
    res = Resolution(versions=[])
    seen: dict[object, str] = {}
    for raw in str(text).split(","):
        term = raw.strip()
        if not term:
            continue
        selected = expand_term(term, available, pre=pre)
        res.terms.append((term, selected))
        for v in selected:
            key: object
            try:
                key = Version(v)
            except InvalidVersion:
                key = v
            if key in seen:
                res.duplicates.append((v, seen[key]))
                continue
            seen[key] = v
            res.versions.append(v)
    return res
