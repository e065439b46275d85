"""Bisection over vLLM releases: the first release where a selection of tests starts failing (or, when the
good release is the newer one, the first release that fixed it).

The oracle is an ordinary pytest run of the user's selection against one release (``probe``): its records
land in the results directory like any run's, so the matrix shows every probe. A probe is

  good            no selected test fails (skipped tests carry no verdict)
  bad             the tests that fail at the bad end fail here, and no others
  mixed           some of them fail and some pass, or other tests fail, or a retry disagrees: reported as
                  such and never bisected on silently (the search stops and says where)
  uninstallable   the release cannot be installed here: skipped with its reason, the search goes on
  error           the selected tests only errored (the test infrastructure failed: no verdict on vLLM):
                  skipped with the first error, like an uninstallable release
  empty           the selection ran no test against the release (nothing to judge)

The search itself (:func:`search`) is pure: it takes the ordered releases and an oracle function, so it is
tested with fake oracles; :func:`run_bisect` wires it to real pytest runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

from .outcomes import BISECT_SCHEMA, BISECT_SCHEMAS
from .results import read_json_documents
from .stacks import DEFAULT_STACK, Stack, line_of
from .timestamps import file_stamp
from .versions import version_key

GOOD, BAD, MIXED, UNINSTALLABLE, ERROR, EMPTY = "good", "bad", "mixed", "uninstallable", "error", "empty"
NO_VERDICT = (UNINSTALLABLE, ERROR, EMPTY)
COMPARE_URL = "https://github.com/vllm-project/vllm/compare/v{a}...v{b}"


class FailingTest(TypedDict):
    """A test that failed (or errored) in a probe, from its record."""

    status: str | None
    category: str | None  # its classification's
    kind: str | None
    summary: str | None  # its error's


class FlippedTest(FailingTest):
    """A test that flips at the boundary: its key, and how it fails on the bad side."""

    test: str


@dataclass
class Probe:
    version: str
    verdict: str  # good | bad | mixed | uninstallable | empty
    failing: dict[str, FailingTest] = field(default_factory=dict)  # test key -> how it failed
    passing: list[str] = field(default_factory=list)
    reason: str = ""
    run_ids: list[str] = field(default_factory=list)
    created_env: bool = False
    wall_s: float = 0.0
    logs: list[str] = field(default_factory=list)  # the probe's pytest output, relative to the results dir

    def to_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


@dataclass
class BisectResult:
    good: str
    bad: str
    direction: str  # "regression" (good is older) | "fix" (good is newer)
    releases: list[str]  # the range, oldest first
    probes: list[Probe]
    first_bad: str | None = None  # direction "regression": the first failing release
    first_fixed: str | None = None  # direction "fix": the first passing release
    last_good: str | None = None  # direction "regression": the release before the first bad one
    last_bad: str | None = None  # direction "fix": the release before the first fixed one
    conclusion: str = ""
    flipped: list[FlippedTest] = field(default_factory=list)
    compare_url: str | None = None
    interrupted: bool = False
    wall_s: float = 0.0
    selection: list[str] = field(default_factory=list)  # the pytest arguments every probe ran
    attribution: dict[str, object] | None = None  # attribution.py: what the flip follows (None: not attributed)

    @property
    def boundary(self) -> str | None:
        return self.first_bad if self.direction == "regression" else self.first_fixed

    def to_dict(self) -> dict[str, object]:
        d: dict[str, object] = {k: v for k, v in self.__dict__.items() if k != "probes"}
        d["probes"] = [p.to_dict() for p in self.probes]
        d["range_size"] = len(self.releases)
        d["probed"] = len(self.probes)
        d["installed"] = sum(p.created_env for p in self.probes)
        return d


Oracle = Callable[[str], Probe]


def judge(failing: Mapping[str, object], passing: Sequence[str], bad_keys: set[str] | None) -> str:
    """The verdict of one probe's outcome against the tests that fail at the bad end (None: this is an end)."""
    if not failing and not passing:
        return EMPTY
    if not failing:
        return GOOD
    if bad_keys is None or set(failing) == bad_keys:
        return BAD
    return MIXED


def search(releases: Sequence[str], good: str, bad: str, oracle: Oracle, *,
           verify_ends: bool = True, on_probe: Callable[[Probe], None] | None = None) -> BisectResult:
    """Binary search for the boundary between ``good`` and ``bad`` within ``releases`` (any order; sorted
    oldest first here). ``oracle(version)`` runs the selection against one release; its verdict is judged
    against the bad end's failing tests. Stops at the boundary, at a mixed probe, or when the ends are not
    what they were said to be."""
    t0 = time.monotonic()
    order = sorted(dict.fromkeys(releases), key=version_key)
    for end in (good, bad):
        if end not in order:
            raise ValueError(f"{end} is not among the releases of the range ({', '.join(order)})")
    direction = "regression" if version_key(good) < version_key(bad) else "fix"
    lo_v, hi_v = (good, bad) if direction == "regression" else (bad, good)
    span = order[order.index(lo_v): order.index(hi_v) + 1]
    res = BisectResult(good=good, bad=bad, direction=direction, releases=span, probes=[])
    seen: dict[str, Probe] = {}
    bad_keys: set[str] | None = None

    def probe(v: str) -> Probe:
        if v in seen:
            return seen[v]
        p = oracle(v)
        if p.verdict in (GOOD, BAD):  # mixed (a retry disagreed), uninstallable and empty stay what they are
            p.verdict = judge(p.failing, p.passing, bad_keys if v != bad else None)
        seen[v] = p
        res.probes.append(p)
        if on_probe:
            on_probe(p)
        return p

    def finish(conclusion: str) -> BisectResult:
        res.conclusion = conclusion
        res.wall_s = round(time.monotonic() - t0, 1)
        return res

    # The bad end first: its failing tests are what "bad" means for every other probe.
    if verify_ends:
        pb = probe(bad)
        if pb.verdict != BAD:
            return finish(f"the bad release {bad} is not bad ({pb.verdict}{': ' + pb.reason if pb.reason else ''}): "
                          "nothing to bisect")
        bad_keys = set(pb.failing)
        pg = probe(good)
        if pg.verdict != GOOD:
            return finish(f"the good release {good} is not good ({pg.verdict}"
                          f"{': ' + pg.reason if pg.reason else ''}): nothing to bisect")
    # Invariant: state(lo) is the old end's verdict, state(hi) the new end's; the boundary is in (lo, hi].
    old_state, new_state = (GOOD, BAD) if direction == "regression" else (BAD, GOOD)
    cands = list(span)
    lo, hi = 0, len(cands) - 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        # an uninstallable release drops out; look at its nearest neighbour inside (lo, hi)
        p = probe(cands[mid])
        if p.verdict in NO_VERDICT:
            del cands[mid]
            hi -= 1
            continue
        if p.verdict == MIXED:
            return finish(f"{cands[mid]} is mixed: {_mixed_reason(p, bad_keys)}; the search stops here "
                          f"(between {cands[lo]} and {cands[hi]})")
        if p.verdict == old_state:
            lo = mid
        elif p.verdict == new_state:
            hi = mid
    boundary, before = cands[hi], cands[lo]
    if direction == "regression":
        res.first_bad, res.last_good = boundary, before
        src = seen.get(boundary)  # the tests that started failing, with their causes as the boundary shows them
    else:
        res.first_fixed, res.last_bad = boundary, before
        src = seen.get(before)  # the tests the boundary fixed, with their causes as they last failed
    if src is None or not src.failing:
        src = seen.get(bad)
    res.compare_url = COMPARE_URL.format(a=before, b=boundary)
    res.flipped = [{"test": k, **v} for k, v in sorted((src.failing if src else {}).items())]
    skipped = [f"{p.version} ({p.verdict})" for p in res.probes if p.verdict in NO_VERDICT]
    note = f" (skipped: {', '.join(skipped)})" if skipped else ""
    if direction == "regression":
        return finish(f"first bad: {boundary}; last good: {before}{note}")
    return finish(f"first fixed: {boundary}; last bad: {before}{note}")


def _mixed_reason(p: Probe, bad_keys: set[str] | None) -> str:
    if p.reason.startswith("a retry disagrees"):
        return p.reason
    keys = set(p.failing)
    also = sorted(keys - (bad_keys or set()))
    missing = sorted((bad_keys or set()) - keys)
    parts = []
    if missing and keys & (bad_keys or set()):
        parts.append(f"{len(keys & (bad_keys or set()))} of the bad end's failing tests fail, {len(missing)} pass")
    elif missing:
        parts.append(f"{len(missing)} of the bad end's failing tests pass")
    if also:
        parts.append(f"other tests fail: {', '.join(also[:5])}")
    if p.reason:
        parts.append(p.reason)
    return "; ".join(parts) or "outcomes differ"


# --------------------------------------------------------------------------- the real oracle: a pytest run


class BisectError(RuntimeError):
    """A probe could not run at all (pytest refused its arguments, wrote no manifest)."""


RESERVED_ARGS = ("--vllm", "--vllm-results", "--vllm-python")


def check_pytest_args(args: Sequence[str]) -> None:
    for a in args:
        name = a.split("=", 1)[0]
        if name in RESERVED_ARGS:
            raise BisectError(f"{name} is set by bisect itself (each probe runs one release, into --results); "
                              "leave it out of the pytest arguments")


def test_key(test_id: str, version: str) -> str:
    """A test's identity across releases: its id with the release spelled out replaced."""
    return test_id.replace(version, "{version}")


def _manifests(results_dir: Path) -> set[Path]:
    return set((results_dir / "manifests").glob("*.json"))


def _run_pytest(argv: list[str], cwd: Path | None, env: dict[str, str] | None, log: Path) -> int:
    """One probe's pytest run, its output into ``log``. Ctrl-C is passed on as SIGINT and the run gets time to
    write its records and manifest (the plugin treats it like an interrupted session)."""
    import signal

    with open(log, "w", encoding="utf-8") as out:
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            return proc.wait()
        except BaseException:
            try:
                os.killpg(proc.pid, signal.SIGINT)
                proc.wait(timeout=60)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                proc.kill()
                proc.wait()
            raise


def pytest_probe(version: str, pytest_args: Sequence[str], results_dir: Path, *, python: str = sys.executable,
                 retries: int = 0, cwd: Path | None = None, env: dict[str, str] | None = None,
                 progress: Callable[[str], None] | None = None, stack: Stack = DEFAULT_STACK) -> Probe:
    """Run the selection against ``version`` (``1 + retries`` times) and turn the records into a probe.
    Retries that disagree make the probe mixed; an environment that could not be installed makes it
    uninstallable with the installer's reason. ``stack``: pins installed with the release (``--vllm-with``);
    test keys then stand for the line (``0.30.0+xgrammar-0.2.7``), so they compare with the release's own."""
    from .results import read_records

    results_dir = Path(results_dir)
    t0 = time.monotonic()
    probe = Probe(version=version, verdict=EMPTY)
    attempts: list[dict[str, FailingTest]] = []
    logs = results_dir / "bisect" / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    label = line_of(version, stack)
    for attempt in range(retries + 1):
        before = _manifests(results_dir)
        argv = [python, "-m", "pytest", *pytest_args, f"--vllm={version}", f"--vllm-results={results_dir}"]
        if not stack.is_default:
            argv.append(f"--vllm-with={','.join(stack.requirements)}")
        log = logs / f"probe-{label}-{attempt + 1}-{file_stamp()}.log"
        if progress:
            progress(f"[vllm-compat bisect] probing {label}" + (f" (retry {attempt})" if attempt else "") + " ...")
        rc = _run_pytest(argv, cwd, env, log)
        try:
            probe.logs.append(str(log.relative_to(results_dir)))
        except ValueError:
            probe.logs.append(str(log))
        new = sorted(_manifests(results_dir) - before)
        if not new:
            tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-5:]
            raise BisectError(f"pytest against {version} exited {rc} without a run manifest (log {log}): "
                              + " | ".join(tail))
        manifest = json.loads(new[-1].read_text())
        probe.run_ids.append(str(manifest["run_id"]))
        envs = manifest.get("environments") or {}
        probe.created_env = probe.created_env or any(e.get("created") for e in envs.values())
        env_error = (manifest.get("env_errors") or {}).get(label)
        if env_error:
            probe.verdict, probe.reason = UNINSTALLABLE, str(env_error)
            break
        failing: dict[str, FailingTest] = {}
        errors: dict[str, FailingTest] = {}
        passing: list[str] = []
        for rec in read_records(results_dir, str(manifest["run_id"])):
            key = test_key(str(rec.get("test_id")), label)
            cls = rec.get("classification") or {}
            entry: FailingTest = {"status": rec.get("status"), "category": cls.get("category"), "kind": cls.get("kind"),
                     "summary": (rec.get("error") or {}).get("summary")}
            if rec.get("status") == "fail":
                failing[key] = entry
            elif rec.get("status") == "error":  # the infrastructure failed: no verdict on vLLM
                errors[key] = entry
            elif rec.get("status") == "pass":
                passing.append(key)
        attempts.append(failing)
        probe.failing, probe.passing = failing, sorted(passing)
        if probe.failing or probe.passing:
            probe.verdict = GOOD if not failing else BAD  # judged against the bad end by search()
            if errors:
                probe.reason = f"{len(errors)} test(s) errored and carry no verdict"
        elif errors:
            first = next(iter(errors.values()))
            probe.verdict = ERROR
            probe.reason = (f"{len(errors)} test(s) errored, none ran to a verdict: "
                            f"[{first.get('category') or 'unknown'}] {first.get('summary') or ''}")[:400]
            break
    if len({frozenset(a) for a in attempts}) > 1:
        probe.verdict = MIXED
        probe.reason = "a retry disagrees: " + " vs ".join(
            f"{len(a)} failing" + (f" ({', '.join(sorted(a)[:3])})" if a else "") for a in attempts)
    probe.wall_s = round(time.monotonic() - t0, 1)
    return probe


def report_lines(res: BisectResult) -> list[str]:
    """The terminal summary of a bisection."""
    lines = [f"bisect {res.good} (good) .. {res.bad} (bad): {res.direction}, {len(res.releases)} releases in range, "
             f"{len(res.probes)} probed, {sum(p.created_env for p in res.probes)} installed, {res.wall_s:.0f} s"
             + (" -- INTERRUPTED" if res.interrupted else "")]
    for p in res.probes:
        why = f": {p.reason}" if p.reason else (f": {len(p.failing)} failing" if p.failing else "")
        lines.append(f"  {p.version:<12} {p.verdict}{why}")
    lines.append(res.conclusion)
    for f in res.flipped[:20]:
        lines.append(f"  {str(f['status']).upper()} {f['test']}: [{f.get('category') or 'unknown'}] {f.get('summary') or ''}"[:240])
    if res.compare_url:
        lines.append(f"changes: {res.compare_url}")
    return lines


def load_results(dirs: Sequence[Path | str]) -> list[dict[str, Any]]:
    """Every bisection result (``<dir>/bisect/*.json``) of the results directories, oldest first."""
    return [data for _, data in read_json_documents(dirs, "bisect/bisect-*.json", BISECT_SCHEMAS)]


def write_result(res: BisectResult, results_dir: Path) -> Path:
    out = Path(results_dir) / "bisect" / f"bisect-{res.good}-{res.bad}-{file_stamp()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"schema": BISECT_SCHEMA, **res.to_dict()}, indent=2, default=str))
    return out


def run_bisect(good: str, bad: str, releases: Sequence[str], pytest_args: Sequence[str], results_dir: Path, *,
               retries: int = 0, verify_ends: bool = True, python: str = sys.executable, cwd: Path | None = None,
               env: dict[str, str] | None = None,
               progress: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True)
               ) -> tuple[BisectResult, Path]:
    """Bisect with real pytest runs; the JSON result is written even when interrupted (with the probes that
    finished, whose records are in ``results_dir`` like any run's)."""
    check_pytest_args(pytest_args)
    t0 = time.monotonic()
    finished: list[Probe] = []

    def oracle(v: str) -> Probe:
        return pytest_probe(v, pytest_args, results_dir, python=python, retries=retries, cwd=cwd, env=env,
                            progress=progress)

    def on_probe(p: Probe) -> None:
        finished.append(p)
        progress(f"[vllm-compat bisect] {p.version}: {p.verdict}" + (f" ({p.reason})" if p.reason else "")
                 + f" in {p.wall_s:.0f} s")

    try:
        res = search(releases, good, bad, oracle, verify_ends=verify_ends, on_probe=on_probe)
        res.selection = list(pytest_args)
    except KeyboardInterrupt:
        direction = "regression" if version_key(good) < version_key(bad) else "fix"
        res = BisectResult(good=good, bad=bad, direction=direction,
                           releases=sorted(dict.fromkeys(releases), key=version_key), probes=finished,
                           interrupted=True, conclusion="interrupted: no conclusion; the finished probes' records "
                           f"are in {results_dir}", wall_s=round(time.monotonic() - t0, 1),
                           selection=list(pytest_args))
    return res, write_result(res, results_dir)
