"""Bisection over releases with fake oracles: the boundary, the fix direction, releases that cannot be
installed, mixed probes, ends that are not what they were said to be, and how few releases it probes."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeAlias

import pytest

from pytest_vllm_compat import bisection as bs

RELEASES = ["0.27.0", "0.27.1", "0.28.0", "0.29.0", "0.30.0", "0.31.0", "0.32.0"]
CAUSE: bs.FailingTest = {"status": "fail", "category": "guided_decoding_regex", "kind": "vllm", "summary": "regex ignored"}
KEY = "suites/test_guided.py::test_regex[tiny-{version}]"
# a release's outcome: "good" | "bad" | "uninstallable" | its failing tests
Outcome: TypeAlias = str | dict[str, bs.FailingTest]


def oracle_from(outcomes: Mapping[str, Outcome]) -> tuple[Callable[[str], bs.Probe], list[str]]:
    """outcomes: version -> "good" | "bad" | "uninstallable" | a dict of failing tests; records each call."""
    calls: list[str] = []

    def oracle(v: str) -> bs.Probe:
        calls.append(v)
        o = outcomes[v]
        if o == "uninstallable":
            return bs.Probe(version=v, verdict=bs.UNINSTALLABLE, reason="No matching distribution for torch==9")
        if o == "good":
            return bs.Probe(version=v, verdict=bs.GOOD, passing=[KEY])
        failing = o if isinstance(o, dict) else {KEY: CAUSE}
        return bs.Probe(version=v, verdict=bs.BAD, failing=failing)

    return oracle, calls


def states(first_bad: int) -> dict[str, Outcome]:
    return {v: ("bad" if i >= first_bad else "good") for i, v in enumerate(RELEASES)}


@pytest.mark.parametrize("first_bad", range(1, len(RELEASES)))
def test_finds_the_first_bad_release_wherever_it_is(first_bad: int) -> None:
    oracle, calls = oracle_from(states(first_bad))
    res = bs.search(RELEASES, "0.27.0", "0.32.0", oracle)
    assert res.direction == "regression"
    assert res.first_bad == RELEASES[first_bad] and res.last_good == RELEASES[first_bad - 1]
    assert res.conclusion == f"first bad: {RELEASES[first_bad]}; last good: {RELEASES[first_bad - 1]}"
    assert res.compare_url == (f"https://github.com/vllm-project/vllm/compare/v{RELEASES[first_bad - 1]}"
                               f"...v{RELEASES[first_bad]}")
    assert res.flipped == [{"test": KEY, **CAUSE}]
    # the two ends, then a binary search over the five releases between them; nothing probed twice
    assert len(calls) == len(set(calls)) <= 2 + math.ceil(math.log2(len(RELEASES) - 1))
    assert calls[:2] == ["0.32.0", "0.27.0"]


def test_good_newer_than_bad_finds_the_first_release_that_fixed_it() -> None:
    outcomes = {v: ("bad" if i < 4 else "good") for i, v in enumerate(RELEASES)}  # fixed in 0.30.0
    oracle, _ = oracle_from(outcomes)
    res = bs.search(RELEASES, good="0.32.0", bad="0.27.0", oracle=oracle)
    assert res.direction == "fix" and res.first_fixed == "0.30.0" and res.last_bad == "0.29.0"
    assert res.first_bad is None and res.boundary == "0.30.0"
    assert res.conclusion == "first fixed: 0.30.0; last bad: 0.29.0"
    assert res.flipped == [{"test": KEY, **CAUSE}]  # what the fix fixed, as it last failed
    assert res.compare_url is not None and res.compare_url.endswith("/compare/v0.29.0...v0.30.0")


def test_a_range_inside_the_releases_probes_only_its_own() -> None:
    oracle, calls = oracle_from(states(3))
    res = bs.search(RELEASES, "0.27.1", "0.30.0", oracle)
    assert res.releases == ["0.27.1", "0.28.0", "0.29.0", "0.30.0"]
    assert res.first_bad == "0.29.0" and set(calls) <= set(res.releases)


def test_an_uninstallable_release_is_skipped_with_its_reason_and_the_search_goes_on() -> None:
    outcomes = states(4)
    outcomes["0.29.0"] = "uninstallable"  # the first midpoint
    oracle, calls = oracle_from(outcomes)
    res = bs.search(RELEASES, "0.27.0", "0.32.0", oracle)
    assert res.first_bad == "0.30.0" and res.last_good == "0.28.0"  # 0.29.0 could not say
    assert "0.29.0" in calls
    skipped = [p for p in res.probes if p.verdict == bs.UNINSTALLABLE]
    assert [p.version for p in skipped] == ["0.29.0"] and "torch==9" in skipped[0].reason
    assert res.conclusion.endswith("(skipped: 0.29.0 (uninstallable))")


def test_a_probe_whose_tests_only_errored_carries_no_verdict_and_is_skipped() -> None:
    oracle, _ = oracle_from(states(4))

    def flaky_infra(v: str) -> bs.Probe:
        if v == "0.29.0":
            return bs.Probe(version=v, verdict=bs.ERROR, reason="2 test(s) errored, none ran to a verdict: [model_files]")
        return oracle(v)

    res = bs.search(RELEASES, "0.27.0", "0.32.0", flaky_infra)
    assert res.first_bad == "0.30.0" and res.last_good == "0.28.0"
    assert res.conclusion.endswith("(skipped: 0.29.0 (error))")


def test_every_release_between_uninstallable_leaves_the_ends_as_the_boundary() -> None:
    outcomes = {v: "uninstallable" for v in RELEASES}
    outcomes.update({"0.27.0": "good", "0.32.0": "bad"})
    oracle, calls = oracle_from(outcomes)
    res = bs.search(RELEASES, "0.27.0", "0.32.0", oracle)
    assert res.first_bad == "0.32.0" and res.last_good == "0.27.0"
    assert sorted(calls) == sorted(RELEASES)


def test_a_mixed_probe_stops_the_search_and_says_why() -> None:
    two = {KEY: CAUSE, "suites/test_guided.py::test_choice[tiny-{version}]": CAUSE}
    outcomes: dict[str, Outcome] = {v: ("good" if i < 2 else two) for i, v in enumerate(RELEASES)}
    outcomes["0.29.0"] = {KEY: CAUSE}  # one of the two flips here, the other later: not one boundary
    oracle, _calls = oracle_from(outcomes)
    res = bs.search(RELEASES, "0.27.0", "0.32.0", oracle)
    assert res.boundary is None and res.compare_url is None
    assert res.conclusion.startswith("0.29.0 is mixed: 1 of the bad end's failing tests fail, 1 pass")
    assert "between 0.27.0 and 0.32.0" in res.conclusion
    assert [p.verdict for p in res.probes][-1] == bs.MIXED


def test_a_probe_the_oracle_calls_mixed_stays_mixed() -> None:
    oracle, _ = oracle_from(states(3))

    def retrying(v: str) -> bs.Probe:
        if v == "0.29.0":
            return bs.Probe(version=v, verdict=bs.MIXED, failing={KEY: CAUSE}, reason="a retry disagrees: 1 vs 0")
        return oracle(v)

    res = bs.search(RELEASES, "0.27.0", "0.32.0", retrying)
    assert res.boundary is None and res.conclusion.startswith("0.29.0 is mixed: a retry disagrees")


def test_other_tests_failing_make_a_probe_mixed() -> None:
    other: dict[str, bs.FailingTest] = {"suites/test_kv.py::test_blocks[tiny-{version}]": {**CAUSE, "category": "kv"}}
    outcomes = states(5)
    outcomes["0.29.0"] = other
    oracle, _ = oracle_from(outcomes)
    res = bs.search(RELEASES, "0.27.0", "0.32.0", oracle)
    assert res.boundary is None and "other tests fail: suites/test_kv.py::test_blocks" in res.conclusion


@pytest.mark.parametrize(("good_state", "bad_state", "says"), [
    ("good", "good", "the bad release 0.32.0 is not bad (good): nothing to bisect"),
    ("bad", "bad", "the good release 0.27.0 is not good (mixed"),
    ("good", "uninstallable", "the bad release 0.32.0 is not bad (uninstallable: No matching distribution"),
])
def test_ends_that_are_not_what_they_were_said_to_be(good_state: str, bad_state: str, says: str) -> None:
    outcomes = states(3)
    outcomes["0.27.0"] = good_state if good_state != "bad" else {"other::test[{version}]": CAUSE}
    outcomes["0.32.0"] = bad_state
    oracle, calls = oracle_from(outcomes)
    res = bs.search(RELEASES, "0.27.0", "0.32.0", oracle)
    assert res.boundary is None and res.conclusion.startswith(says)
    assert len(calls) <= 2


def test_trusting_the_ends_probes_only_between_them() -> None:
    oracle, calls = oracle_from(states(2))
    res = bs.search(RELEASES, "0.27.0", "0.32.0", oracle, verify_ends=False)
    assert res.first_bad == "0.28.0" and "0.27.0" not in calls and "0.32.0" not in calls


def test_ends_must_be_releases_of_the_range() -> None:
    oracle, _ = oracle_from(states(2))
    with pytest.raises(ValueError, match=re.escape("0.99.0 is not among the releases")):
        bs.search(RELEASES, "0.27.0", "0.99.0", oracle)


def test_judge() -> None:
    assert bs.judge({}, [], {KEY}) == bs.EMPTY
    assert bs.judge({}, [KEY], {KEY}) == bs.GOOD
    assert bs.judge({KEY: CAUSE}, [], {KEY}) == bs.BAD
    assert bs.judge({KEY: CAUSE}, [], None) == bs.BAD
    assert bs.judge({KEY: CAUSE}, [], {KEY, "other"}) == bs.MIXED


def test_reserved_pytest_arguments_are_refused() -> None:
    for arg in ("--vllm=0.32.0", "--vllm", "--vllm-results=x", "--vllm-python=/usr/bin/python3"):
        with pytest.raises(bs.BisectError, match="set by bisect itself"):
            bs.check_pytest_args(["-m", "guided_decoding", arg])
    bs.check_pytest_args(["-m", "guided_decoding", "--vllm-device=cpu", "--vllm-models=m.toml"])


def test_report_and_result_json(tmp_path: Path) -> None:
    oracle, _ = oracle_from(states(3))
    res = bs.search(RELEASES, "0.27.0", "0.32.0", oracle)
    lines = bs.report_lines(res)
    assert lines[0].startswith("bisect 0.27.0 (good) .. 0.32.0 (bad): regression, 7 releases in range, ")
    assert "first bad: 0.29.0; last good: 0.28.0" in lines
    assert any(line.startswith("  FAIL suites/test_guided.py::test_regex[tiny-{version}]: [guided_decoding_regex]")
               for line in lines)
    path = bs.write_result(res, tmp_path)
    import json

    data = json.loads(path.read_text())
    assert data["schema"] == "pytest-vllm-compat/bisect@2" and data["first_bad"] == "0.29.0"
    assert data["attribution"] is None  # bisect@2: a field of its own, filled by --attribute
    assert data["range_size"] == 7 and data["probed"] == len(res.probes) and data["installed"] == 0


def test_all_good_and_all_bad_have_no_boundary_and_say_so() -> None:
    oracle, calls = oracle_from({v: "good" for v in RELEASES})
    res = bs.search(RELEASES, "0.27.0", "0.32.0", oracle)
    assert res.boundary is None and res.conclusion.startswith("the bad release 0.32.0 is not bad (good)")
    assert calls == ["0.32.0"]
    oracle, calls = oracle_from({v: "bad" for v in RELEASES})
    res = bs.search(RELEASES, "0.27.0", "0.32.0", oracle)
    assert res.boundary is None and res.conclusion.startswith("the good release 0.27.0 is not good (bad)")
    assert calls == ["0.32.0", "0.27.0"]
