"""Attribution: does a change between two releases follow vLLM's code, one of its dependencies, or neither
separably?

A bisection names the first release where a selection of tests flips. The environments of the two releases
at that boundary differ in more than vLLM: the resolver installs other versions of transformers, xgrammar and
the rest. Attribution re-runs the selection on the *bad* release with packages pinned to the *good* release's
versions (a stack, as ``--vllm-with`` installs it): first every changed package together, as far as the
resolver allows, then one at a time (the structured-output and tokenizer stack first). Its answer is one of

  follows_code        the bad release stays bad with the good release's packages: the change is vLLM's own
  follows_package     pinning one package (``xgrammar 0.2.9 -> 0.2.7``) flips the result
  follows_set         only the pins together flip it (the set is named; no single pin does)
  not_separable       the resolver forbids a pin with the bad release: the conflict is named, and the
                      package's effect cannot be told apart from vLLM's
  inconclusive        a probe was mixed or errored, or the bad release is not bad here

:func:`attribute_candidates` is the same machinery for one failing release and a list of candidate pins
(``vllm-compat attribute --pin``, or the knowledge base's ``workaround_pin``): which pin flips the cell.

The logic is pure: a *resolver* (can this release be installed with these pins? the environment it made) and
an *oracle* (run the selection on this release and stack: a :class:`~.bisection.Probe`) are passed in, so it
is tested with fakes; :func:`real_resolver` and :func:`real_oracle` wire it to the provisioner and pytest.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .bisection import BAD, EMPTY, ERROR, GOOD, MIXED, UNINSTALLABLE, Probe, judge
from .lockfiles import diff_locks
from .matrix.cell_types import Cell
from .outcomes import ATTRIBUTE_SCHEMA
from .results import read_json_documents
from .stacks import DEFAULT_STACK, VLLM_DISTRIBUTIONS, Stack, canonical_name, line_of, parse_stack
from .timestamps import file_stamp

if TYPE_CHECKING:
    from .environments import Provisioner

FOLLOWS_CODE, FOLLOWS_PACKAGE, FOLLOWS_SET = "follows_code", "follows_package", "follows_set"
NOT_SEPARABLE, INCONCLUSIVE = "not_separable", "inconclusive"
DECISIONS = (FOLLOWS_CODE, FOLLOWS_PACKAGE, FOLLOWS_SET, NOT_SEPARABLE, INCONCLUSIVE)
REFUSED = "refused"  # a probe whose pins the resolver would not install with the release

# The packages a behaviour change of vLLM's serving most often follows, probed alone first (in this order);
# every other changed package after them, by name.
RELEVANCE: tuple[str, ...] = ("outlines", "outlines-core", "xgrammar", "transformers", "tokenizers", "llguidance",
                              "lm-format-enforcer", "torch", "huggingface-hub")


@dataclass(frozen=True)
class Change:
    """One package whose version differs between the bad and the good release's environments."""

    package: str
    bad: str | None  # its version with the bad release; None: the bad release does not install it
    good: str | None  # with the good release; None: the good release does not install it

    @property
    def pin(self) -> str | None:
        """The requirement that gives the bad release the good release's version; None for a package the good
        release does not install (a pin cannot remove a package)."""
        return f"{self.package}=={self.good}" if self.good else None

    def describe(self) -> str:
        return f"{self.package} {self.bad or '(absent)'} → {self.good or '(absent)'}"

    def to_dict(self) -> dict[str, str | None]:
        return {"package": self.package, "bad": self.bad, "good": self.good}


def relevance(package: str) -> tuple[int, str]:
    name = canonical_name(package)
    return (RELEVANCE.index(name) if name in RELEVANCE else len(RELEVANCE), name)


def changed_packages(bad_lock: str, good_lock: str) -> list[Change]:
    """What differs between two locks (or freezes), vLLM itself left out, most relevant first."""
    out = [Change(d["package"], d["from"], d["to"]) for d in diff_locks(bad_lock, good_lock)
           if d["package"] not in VLLM_DISTRIBUTIONS]
    return sorted(out, key=lambda c: relevance(c.package))


@dataclass
class Resolution:
    """What the resolver said to a release with pins: installed (an environment) or refused (the conflict)."""

    ok: bool
    conflict: str = ""  # refused: the requirement(s) that broke, as the installer reported them
    env_name: str | None = None
    lock_sha256: str | None = None
    created: bool = False  # an environment was installed for this probe (not reused)
    install_s: float = 0.0
    log: str | None = None  # the installer's log, relative to the results dir, when one was kept
    lock_text: str | None = None  # the installed set (its lock file), to compare with the bisection's locks


Resolver = Callable[[str, Stack], Resolution]
Oracle = Callable[[str, Stack], Probe]


@dataclass
class AttributionProbe:
    """One run of the selection on the bad release with pins (``kind``: baseline, all, one, candidate)."""

    kind: str
    pins: list[str]
    line: str
    verdict: str  # good | bad | mixed | error | empty | uninstallable | refused
    flips: bool = False  # the bad release's failing tests all pass with these pins
    conflict: str = ""
    reason: str = ""
    failing: list[str] = field(default_factory=list)
    passing: list[str] = field(default_factory=list)
    env_name: str | None = None
    lock_sha256: str | None = None
    installed: bool = False
    install_s: float = 0.0
    run_ids: list[str] = field(default_factory=list)
    logs: list[str] = field(default_factory=list)  # relative to the results dir
    wall_s: float = 0.0

    def to_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


@dataclass
class Attribution:
    """The answer for one boundary (or one release and its candidate pins) and the probes behind it."""

    version: str  # the bad release every probe ran
    against: str | None  # the good release whose packages were pinned (None: candidate pins)
    decision: str
    summary: str
    changes: list[Change] = field(default_factory=list)
    probes: list[AttributionProbe] = field(default_factory=list)
    package: str | None = None  # follows_package: the package; several flipping alone are in ``flipping``
    flipping: list[str] = field(default_factory=list)  # the pins that flip the result alone
    pin_set: list[str] = field(default_factory=list)  # follows_set: the pins that flip it together
    conflicts: list[dict[str, str]] = field(default_factory=list)  # not pinnable: {"pins", "conflict"}
    not_probed: list[str] = field(default_factory=list)  # changes left out, each with why
    notes: list[str] = field(default_factory=list)  # e.g. a baseline whose lock is not the bisection's
    interrupted: bool = False
    wall_s: float = 0.0

    @property
    def installs(self) -> int:
        return sum(p.installed for p in self.probes)

    def to_dict(self) -> dict[str, object]:
        d: dict[str, object] = {k: v for k, v in self.__dict__.items() if k not in ("changes", "probes")}
        d["changes"] = [c.to_dict() for c in self.changes]
        d["probes"] = [p.to_dict() for p in self.probes]
        d["installs"] = self.installs
        d["refused"] = sum(p.verdict == REFUSED for p in self.probes)
        d["probed"] = sum(p.verdict != REFUSED for p in self.probes)
        return d


def stack_of(pins: Sequence[str]) -> Stack:
    return parse_stack(",".join(pins)) if pins else DEFAULT_STACK


def named_in(conflict: str, pins: Sequence[str]) -> list[str]:
    """The pins whose package the resolver's conflict text names (``xgrammar==0.2.7`` when it says
    ``xgrammar``, ``xgrammar>=0.2.9`` or ``xgrammar_0.2.7``)."""
    text = conflict.lower().replace("_", "-")
    out = []
    for pin in pins:
        name = stack_of([pin]).packages[0]
        if re.search(rf"(?<![a-z0-9.-]){re.escape(name)}(?![a-z0-9]|-[a-z])", text):
            out.append(pin)
    return out


def _run(kind: str, version: str, pins: Sequence[str], resolve: Resolver, oracle: Oracle,
         bad_keys: set[str] | None) -> AttributionProbe:
    stack = stack_of(pins)
    t0 = time.monotonic()
    res = resolve(version, stack)
    ap = AttributionProbe(kind=kind, pins=list(stack.requirements), line=line_of(version, stack), verdict=REFUSED,
                          env_name=res.env_name, lock_sha256=res.lock_sha256, installed=res.created,
                          install_s=round(res.install_s, 1), logs=[res.log] if res.log else [])
    if not res.ok:
        ap.conflict = res.conflict or "the resolver refused (no reason given)"
        ap.wall_s = round(time.monotonic() - t0, 1)
        return ap
    p = oracle(version, stack)
    verdict = p.verdict
    if verdict in (GOOD, BAD):
        verdict = judge(p.failing, p.passing, bad_keys)
    if verdict == MIXED and bad_keys is not None and p.failing and not p.reason:
        still = sorted(set(p.failing) & bad_keys)
        other = sorted(set(p.failing) - bad_keys)
        p.reason = (f"{len(still)} of the {len(bad_keys)} failing tests still fail"
                    + (f"; other tests fail: {', '.join(other[:3])}" if other else ""))
    ap.verdict, ap.reason = verdict, p.reason
    ap.failing, ap.passing = sorted(p.failing), list(p.passing)
    ap.flips = verdict == GOOD
    ap.run_ids = list(p.run_ids)
    ap.logs += list(p.logs)
    ap.installed = ap.installed or p.created_env
    ap.wall_s = round(time.monotonic() - t0, 1)
    return ap


def _baseline(version: str, resolve: Resolver, oracle: Oracle, baseline: Probe | None,
              probes: list[AttributionProbe]) -> tuple[set[str] | None, str]:
    """The bad release's failing tests (from the bisection's own probe when given, else a fresh run); the
    reason there is nothing to attribute otherwise."""
    if baseline is not None:
        bp = AttributionProbe(kind="baseline", pins=[], line=version, verdict=baseline.verdict,
                              failing=sorted(baseline.failing), passing=list(baseline.passing),
                              run_ids=list(baseline.run_ids), logs=list(baseline.logs), reason=baseline.reason)
        bp.reason = bp.reason or "the bisection's probe of this release (not run again)"
    else:
        bp = _run("baseline", version, [], resolve, oracle, None)
    probes.append(bp)
    if bp.verdict != BAD or not bp.failing:
        return None, (f"{version} is not bad here ({bp.verdict}{': ' + (bp.reason or bp.conflict) if bp.reason or bp.conflict else ''}): "
                      "nothing to attribute")
    return set(bp.failing), ""


def attribute_boundary(bad: str, good: str, changes: Sequence[Change], resolve: Resolver, oracle: Oracle, *,
                       baseline: Probe | None = None, max_single: int | None = None,
                       on_probe: Callable[[AttributionProbe], None] | None = None) -> Attribution:
    """Attribute the flip between ``bad`` and ``good`` (two adjacent releases of a bisection): ``changes`` are
    their lock differences (:func:`changed_packages`). ``baseline``: the bad release's probe from the
    bisection, reused; None runs it. ``max_single``: at most this many one-at-a-time probes (the most relevant
    first); the rest are named in ``not_probed``."""
    t0 = time.monotonic()
    att = Attribution(version=bad, against=good, decision=INCONCLUSIVE, summary="", changes=list(changes))
    try:
        return _attribute_boundary(att, bad, good, changes, resolve, oracle, t0, baseline=baseline,
                                   max_single=max_single, on_probe=on_probe)
    except KeyboardInterrupt:  # Ctrl-C: what the finished probes show is kept, without a decision
        att.interrupted = True
        att.decision = INCONCLUSIVE
        att.summary = f"interrupted after {len(att.probes)} probe(s): no decision"
        att.wall_s = round(time.monotonic() - t0, 1)
        return att


def _attribute_boundary(att: Attribution, bad: str, good: str, changes: Sequence[Change], resolve: Resolver,
                        oracle: Oracle, t0: float, *, baseline: Probe | None, max_single: int | None,
                        on_probe: Callable[[AttributionProbe], None] | None) -> Attribution:
    probes = att.probes

    def run(kind: str, pins: Sequence[str]) -> AttributionProbe:
        ap = _run(kind, bad, pins, resolve, oracle, bad_keys)
        probes.append(ap)
        if on_probe:
            on_probe(ap)
        return ap

    def finish(decision: str, summary: str) -> Attribution:
        att.decision, att.summary = decision, summary
        att.wall_s = round(time.monotonic() - t0, 1)
        return att

    bad_keys: set[str] | None = None
    bad_keys, why = _baseline(bad, resolve, oracle, baseline, probes)
    if on_probe and baseline is None:
        on_probe(probes[-1])
    if bad_keys is None:
        return finish(INCONCLUSIVE, why)
    changes = sorted(changes, key=lambda c: relevance(c.package))
    att.not_probed = [f"{c.describe()}: a pin cannot remove a package" for c in changes if c.pin is None]
    pinnable = [c.pin for c in changes if c.pin]
    if not pinnable:
        return finish(FOLLOWS_CODE if not changes else INCONCLUSIVE,
                      f"{bad} and {good} install the same packages besides vLLM: the flip follows vLLM's code"
                      if not changes else f"no change between {bad} and {good} can be pinned "
                      f"({'; '.join(att.not_probed)})")

    # Every changed package together, as far as the resolver allows: a refusal drops the pins it names.
    together = list(pinnable)
    dropped: list[str] = []
    all_probe: AttributionProbe | None = None
    while together:
        ap = run("all", together)
        if ap.verdict != REFUSED:
            all_probe = ap
            break
        culprits = named_in(ap.conflict, together)
        att.conflicts.append({"pins": ", ".join(culprits or together), "conflict": ap.conflict})
        if not culprits or len(culprits) == len(together):
            dropped += together
            together = []
            break
        dropped += culprits
        together = [p for p in together if p not in culprits]

    # Then one at a time, the most relevant first.
    singles: list[AttributionProbe] = []
    order = list(pinnable)
    if max_single is not None and len(order) > max_single:
        att.not_probed += [f"{p}: not probed alone (capped at {max_single} single-pin probes)"
                           for p in order[max_single:]]
        order = order[:max_single]
    for pin in order:
        ap = run("one", [pin])
        singles.append(ap)
        if ap.verdict == REFUSED and not any(pin in c["pins"].split(", ") for c in att.conflicts):
            att.conflicts.append({"pins": pin, "conflict": ap.conflict})

    by_pin = {p.pins[0]: p for p in singles if p.pins}
    flipping = [p.pins[0] for p in singles if p.flips]
    change_of = {c.pin: c for c in changes if c.pin}
    att.flipping = flipping
    if flipping:
        first = change_of.get(flipping[0]) or Change(flipping[0], None, None)
        att.package = first.package
        also = [change_of[p].describe() if p in change_of else p for p in flipping[1:]]
        return finish(FOLLOWS_PACKAGE,
                      f"follows {first.describe()}: {bad} with {first.pin} alone flips the result"
                      + (f" (so does each of {', '.join(also)} alone)" if also else "")
                      + _caveat(att, bad))
    mixed = [p for p in probes[1:] if p.verdict in (MIXED, ERROR, EMPTY, UNINSTALLABLE)]
    if all_probe is not None and all_probe.flips:
        att.pin_set = list(all_probe.pins)
        alone = [p for p in all_probe.pins if p not in by_pin]
        return finish(FOLLOWS_SET,
                      f"flips only with these pins together: {', '.join(_by_relevance(all_probe.pins))}; no single one of them "
                      f"flips it alone" + (f" (not probed alone: {', '.join(alone)})" if alone else "")
                      + _caveat(att, bad))
    if mixed:
        return finish(INCONCLUSIVE, "; ".join(f"{', '.join(p.pins) or 'no pins'}: {p.verdict}"
                                              + (f" ({p.reason})" if p.reason else "") for p in mixed))
    refused = sorted({*dropped, *(p.pins[0] for p in singles if p.verdict == REFUSED)},
                     key=lambda p: relevance(p.split("==")[0]))
    if refused:
        named = "; ".join(f"{c['pins']}: {_short(c['conflict'])}" for c in att.conflicts)
        rest = (f"; with {', '.join(all_probe.pins)} pinned it stays bad" if all_probe is not None else "")
        return finish(NOT_SEPARABLE,
                      f"not separable: the resolver will not install {', '.join(refused)} with {bad} ({named}){rest}"
                      + _caveat(att, bad))
    if all_probe is None:  # cannot happen: no pin refused and no probe of them all
        return finish(INCONCLUSIVE, "no probe with the good release's packages ran")
    return finish(FOLLOWS_CODE,
                  f"follows vLLM's code: {bad} stays bad with {good}'s versions of "
                  f"{', '.join(change_of[p].describe() if p in change_of else p for p in _by_relevance(all_probe.pins))}"
                  + _caveat(att, bad))


def _by_relevance(pins: Sequence[str]) -> list[str]:
    return sorted(pins, key=lambda p: relevance(stack_of([p]).packages[0]))


def _caveat(att: Attribution, bad: str) -> str:
    return f" (not probed: {'; '.join(att.not_probed)})" if att.not_probed else ""


def _short(text: str, n: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


def attribute_candidates(version: str, pins: Sequence[str], resolve: Resolver, oracle: Oracle, *,
                         baseline: Probe | None = None,
                         on_probe: Callable[[AttributionProbe], None] | None = None) -> Attribution:
    """For a release where the selection fails, run each candidate pin (a requirement such as the knowledge
    base's ``workaround_pin``; ``a==1,b==2`` is one candidate of two pins) and record which flips it."""
    t0 = time.monotonic()
    att = Attribution(version=version, against=None, decision=INCONCLUSIVE, summary="")
    bad_keys, why = _baseline(version, resolve, oracle, baseline, att.probes)
    if on_probe and baseline is None:
        on_probe(att.probes[-1])
    if bad_keys is None:
        att.summary, att.wall_s = why, round(time.monotonic() - t0, 1)
        return att
    for cand in pins:
        reqs = list(parse_stack(cand).requirements)
        ap = _run("candidate", version, reqs, resolve, oracle, bad_keys)
        att.probes.append(ap)
        if on_probe:
            on_probe(ap)
        if ap.verdict == REFUSED:
            att.conflicts.append({"pins": ", ".join(reqs), "conflict": ap.conflict})
    cands = att.probes[1:]
    att.flipping = [", ".join(p.pins) for p in cands if p.flips]
    if att.flipping:
        att.decision = FOLLOWS_PACKAGE
        att.package = stack_of([att.flipping[0].split(", ")[0]]).packages[0]
        att.summary = f"{' and '.join(att.flipping)} flips {version} (each alone)"
    elif cands and all(p.verdict == REFUSED for p in cands):
        att.decision = NOT_SEPARABLE
        att.summary = "no candidate pin installs with {}: {}".format(
            version, "; ".join(f"{c['pins']}: {_short(c['conflict'])}" for c in att.conflicts))
    elif cands and all(p.verdict in (BAD, REFUSED) for p in cands):
        att.decision = FOLLOWS_CODE
        att.summary = (f"no candidate pin flips {version}: it stays bad with "
                       + ", ".join(", ".join(p.pins) for p in cands if p.verdict == BAD)
                       + (f" (refused: {', '.join(c['pins'] for c in att.conflicts)})" if att.conflicts else ""))
    else:
        att.summary = "; ".join(f"{', '.join(p.pins)}: {p.verdict}" + (f" ({p.reason})" if p.reason else "")
                                for p in cands) or "no candidate pins given"
    att.wall_s = round(time.monotonic() - t0, 1)
    return att


def report_lines(att: Attribution) -> list[str]:
    """The terminal summary of an attribution."""
    head = (f"attribution of {att.version}" + (f" against {att.against}" if att.against else "")
            + f": {len(att.probes)} probe(s), {att.installs} extra install(s), {att.wall_s:.0f} s")
    lines = [head]
    for c in att.changes:
        lines.append(f"  changed: {c.describe()}")
    for p in att.probes:
        what = ", ".join(p.pins) or "(no pins)"
        why = p.conflict or p.reason
        lines.append(f"  {p.kind:<9} {what}: {p.verdict}" + (" (flips)" if p.flips else "")
                     + (f": {_short(why)}" if why else ""))
    lines.append(f"{att.decision}: {att.summary}")
    return lines


# --------------------------------------------------------------------------- real resolver and oracle


def real_resolver(provisioner: Provisioner, distribution: str, results_dir: Path) -> Resolver:
    """Install (or reuse) the environment of a release with pins through ``provisioner``
    (:class:`~.environments.Provisioner`); a refusal keeps the installer's log in
    ``results_dir/attribution/logs`` and reports its one-line conflict."""
    from .environments import ProvisionError

    def resolve(version: str, stack: Stack) -> Resolution:
        t0 = time.monotonic()
        try:
            env = provisioner.ensure(distribution, version, stack)
        except ProvisionError as e:
            rel = None
            if e.log_path is not None and Path(e.log_path).is_file():
                dest = Path(results_dir) / "attribution" / "logs" / Path(e.log_path).name
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(e.log_path, dest)
                rel = str(dest.relative_to(results_dir))
            return Resolution(ok=False, conflict=e.summary, install_s=time.monotonic() - t0, log=rel)
        lock_text = None
        if env.lock_file is not None and Path(env.lock_file).is_file():
            lock_text = Path(env.lock_file).read_text(encoding="utf-8")
        return Resolution(ok=True, env_name=env.name, lock_sha256=env.lock_sha256, created=env.created,
                          install_s=env.provision_s, lock_text=lock_text)

    return resolve


def real_oracle(pytest_args: Sequence[str], results_dir: Path, *, python: str = sys.executable,
                progress: Callable[[str], None] | None = None) -> Oracle:
    """Run the selection with pytest on one release and stack (``--vllm-with``), as a bisection's probe does."""
    from .bisection import pytest_probe

    def oracle(version: str, stack: Stack) -> Probe:
        return pytest_probe(version, pytest_args, results_dir, python=python, stack=stack, progress=progress)

    return oracle


# --------------------------------------------------------------------------- results on disk


def write_attribution(att: Attribution, results_dir: Path, selection: Sequence[str]) -> Path:
    """A standalone attribution (``vllm-compat attribute``): ``results_dir/attribution/attribute-*.json``."""
    out = Path(results_dir) / "attribution" / f"attribute-{att.version}-{file_stamp()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"schema": ATTRIBUTE_SCHEMA, "selection": list(selection), **att.to_dict()},
                              indent=2, default=str))
    return out


def load_attributions(dirs: Sequence[Path | str]) -> list[dict[str, Any]]:
    """Every standalone attribution record of the results directories, oldest first."""
    return [data for _, data in read_json_documents(dirs, "attribution/attribute-*.json", (ATTRIBUTE_SCHEMA,))]


def residual_notes(att: Attribution, bad_lock: str, good_lock: str, installed: Mapping[str, str]) -> list[str]:
    """What the probes' environments still differ in from the bisection's: the baseline against the bad
    release's lock (packages the index moved since), and the all-pins environment against the good release's
    lock besides vLLM (what a pin could not reach). Empty when no lock text is known."""
    notes = []
    for p in att.probes:
        text = installed.get(p.line)
        if text is None:
            continue
        if p.kind == "baseline":
            moved = changed_packages(bad_lock, text)
            if moved:
                notes.append(f"the baseline environment differs from the bisection's {att.version} lock in "
                             f"{len(moved)} package(s): {', '.join(c.describe() for c in moved)}")
        elif p.kind == "all" and p.verdict != REFUSED:
            rest = changed_packages(text, good_lock)
            if rest:
                notes.append(f"with every pin, the environment still differs from {att.against}'s lock besides "
                             f"vLLM in {len(rest)} package(s): {', '.join(c.describe() for c in rest)}")
            else:
                notes.append(f"with every pin, the environment is {att.against}'s lock but for vLLM")
    return notes


def boundary_locks(bisection: Mapping[str, Any], results_dir: Path) -> tuple[str, str, Probe | None]:
    """The lock texts of a bisection result's last bad and first good release (from the probes' run
    manifests and the results dir's stored locks), and the bad release's probe. ValueError when the result
    has no boundary or a lock is missing."""
    if bisection.get("direction") == "fix":
        bad, good = bisection.get("last_bad"), bisection.get("first_fixed")
    else:
        bad, good = bisection.get("first_bad"), bisection.get("last_good")
    if not bad or not good:
        raise ValueError("the bisection found no boundary: nothing to attribute")
    probes = {p["version"]: p for p in bisection.get("probes") or []}
    texts = []
    for v in (bad, good):
        p = probes.get(v)
        if p is None:
            raise ValueError(f"the bisection has no probe of {v}")
        texts.append(lock_text_of_runs(p.get("run_ids") or [], v, Path(results_dir)))
    bp = probes[bad]
    baseline = Probe(version=bad, verdict=bp.get("verdict", BAD), failing=dict(bp.get("failing") or {}),
                     passing=list(bp.get("passing") or []), run_ids=list(bp.get("run_ids") or []),
                     logs=list(bp.get("logs") or []))
    return texts[0], texts[1], baseline


def lock_text_of_runs(run_ids: Sequence[str], version: str, results_dir: Path) -> str:
    """The stored lock (``locks/<sha256>.txt``) of the default-stack environment of ``version`` in one of the
    runs' manifests."""
    for rid in run_ids:
        path = results_dir / "manifests" / f"{rid}.json"
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        for env in (manifest.get("environments") or {}).values():
            stored = Path(str(env.get("lock_stored") or ""))
            if env.get("lock_stored") and (results_dir / stored).is_file() \
                    and f"-{version}-" in str(env.get("name", "")):
                return (results_dir / stored).read_text(encoding="utf-8")
    raise ValueError(f"no stored lock of {version} in the manifests of runs {', '.join(run_ids) or '(none)'} "
                     f"under {results_dir}")


def verified_pins(attributions: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """{(release, canonical pin): {"status": "flips" | "stays bad" | "refused", ...}} from attribution records
    (standalone ones and those inside bisection results): what the site says of a workaround pin."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for a in attributions:
        version = str(a.get("version") or "")
        for p in a.get("probes") or []:
            if p.get("kind") == "baseline" or not p.get("pins"):
                continue
            for pin in p["pins"]:
                key = (version, canonical_pin(pin))
                status = "flips" if p.get("flips") else REFUSED if p.get("verdict") == REFUSED else \
                    "stays bad" if p.get("verdict") == BAD else str(p.get("verdict"))
                if len(p["pins"]) > 1 and key in out:
                    continue  # a single-pin probe says more about one pin than a set
                out[key] = {"status": status, "pins": list(p["pins"]), "line": p.get("line"),
                            "conflict": p.get("conflict") or "", "run_ids": list(p.get("run_ids") or [])}
    return out


def canonical_pin(pin: str) -> str:
    """A requirement as stacks write it (``Transformers < 4.52`` -> ``transformers<4.52``)."""
    try:
        return stack_of([pin]).requirements[0]
    except (ValueError, IndexError):
        return pin


__all__ = [
    "DECISIONS", "FOLLOWS_CODE", "FOLLOWS_PACKAGE", "FOLLOWS_SET", "INCONCLUSIVE", "NOT_SEPARABLE", "REFUSED",
    "Attribution", "AttributionProbe", "Change", "Resolution", "apply_verified_pins", "attribute_bisection",
    "attribute_boundary", "attribute_candidates", "boundary_locks", "canonical_pin", "changed_packages",
    "load_attributions", "matrix_entry", "real_oracle", "real_resolver", "report_lines", "residual_notes",
    "verified_pins",
    "write_attribution",
]


def attribute_bisection(bisection: Mapping[str, Any], results_dir: Path, resolve: Resolver, oracle: Oracle, *,
                        reuse_baseline: bool = True, max_single: int | None = None,
                        on_probe: Callable[[AttributionProbe], None] | None = None) -> Attribution:
    """Attribute a bisection result's boundary: its two releases' stored locks diffed, the bad release
    probed with the good one's packages. ``reuse_baseline``: take the bisection's probe of the bad release as
    the baseline (False: run it again, e.g. when the suites changed since)."""
    bad_lock, good_lock, baseline = boundary_locks(bisection, Path(results_dir))
    if bisection.get("direction") == "fix":
        bad, good = str(bisection["last_bad"]), str(bisection["first_fixed"])
    else:
        bad, good = str(bisection["first_bad"]), str(bisection["last_good"])
    installed: dict[str, str] = {}  # line -> the lock text of the environment the resolver gave it

    def remembering(version: str, stack: Stack) -> Resolution:
        res = resolve(version, stack)
        if res.lock_text is not None:
            installed[line_of(version, stack)] = res.lock_text
        return res

    att = attribute_boundary(bad, good, changed_packages(bad_lock, good_lock), remembering, oracle,
                             baseline=baseline if reuse_baseline else None, max_single=max_single,
                             on_probe=on_probe)
    att.notes += residual_notes(att, bad_lock, good_lock, installed)
    base = att.probes[0] if att.probes else None
    want = hashlib.sha256(bad_lock.encode()).hexdigest()
    if base is not None and base.lock_sha256 and base.lock_sha256 != want:
        att.notes.append(f"the baseline environment of {bad} ({base.lock_sha256[:12]}) is not the bisection's "
                         f"lock ({want[:12]}): the pins were applied to today's resolve")
    elif base is not None and base.lock_sha256:
        att.notes.append(f"the baseline environment of {bad} is the bisection's lock ({want[:12]})")
    return att


_PROBE_KEYS = ("kind", "pins", "line", "verdict", "flips", "conflict", "reason", "env_name", "lock_sha256",
               "installed", "run_ids", "logs", "wall_s")
_ENTRY_KEYS = ("version", "against", "decision", "summary", "package", "flipping", "pin_set", "conflicts",
               "not_probed", "notes", "installs", "refused", "probed", "wall_s", "changes", "selection")


def matrix_entry(att: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """What the matrix keeps of an attribution (a bisection's ``attribution`` field or a standalone record):
    its answer and every probe behind it."""
    if not att:
        return None
    out = {k: att.get(k) for k in _ENTRY_KEYS}
    out["probes"] = [{k: p.get(k) for k in _PROBE_KEYS} for p in att.get("probes") or []]
    return out


def apply_verified_pins(cells: Sequence[Cell], attributions: Sequence[Mapping[str, Any]]) -> int:
    """A failing cell whose knowledge-base entry names a ``workaround_pin`` gets ``workaround_attribution``
    when an attribution probed that pin on its release (its result: flips, stays bad, refused). Returns how
    many cells got one."""
    verified = verified_pins(attributions)
    n = 0
    for c in cells:
        pin = c.get("workaround_pin")
        if not pin or c.get("status") not in ("fail", "error", "conflict", "flaky"):
            continue
        hit = verified.get((str(c.get("release") or c.get("vllm_version")), canonical_pin(str(pin))))
        if hit is not None:
            c["workaround_attribution"] = hit
            n += 1
    return n
