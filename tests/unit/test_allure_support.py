"""Allure support: categories.json from knowledge-base rules, environment.properties, labels."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pytest_vllm_compat import allure_support as al

pytest_plugins = ["pytester"]


@dataclass
class Rule:
    id: str
    category: str
    kind: str
    title: str
    explanation: str
    refs: list[str] = field(default_factory=list)
    patterns: list[str] = field(default_factory=list)


RULES = [
    Rule("port_bind", "port_binding", "vllm", "Server fails to bind its port", "vLLM 0.6.3-0.6.4 bug",
         patterns=[r"OSError: \[Errno 98\] Address already in use", r"(?P<word>bind) failed"]),
    Rule("no_wheel", "wheel_not_found", "infrastructure", "No wheel for this version", "the index lacks it",
         patterns=[re.compile(r"No matching distribution found for vllm")]),  # type: ignore[list-item]
    Rule("no_patterns", "nothing", "vllm", "Never matches", "no patterns"),
]


def java_like_match(regex: str, message: str) -> bool:
    """Allure matches messageRegex against the whole message with java.util.regex; Python's
    fullmatch is close enough for the syntax we emit (no named groups, scoped flags)."""
    return re.fullmatch(regex, message) is not None


def str_field(category: Mapping[str, object], key: str, default: str | None = None) -> str:
    """A category's text field (``default`` when it has none and one is given), narrowed to the str it is:
    categories_from_kb types the values of its JSON objects as object."""
    value = category[key] if default is None else category.get(key, default)
    assert isinstance(value, str), (key, value)
    return value


def test_categories_from_kb() -> None:
    cats = al.categories_from_kb(RULES)
    assert [c["name"] for c in cats] == ["Server fails to bind its port", "No wheel for this version",
                                         "Unclassified vLLM failure"]
    assert all(c["matchedStatuses"] == ["failed", "broken"] for c in cats)
    port, wheel, unclassified = cats
    port_regex, wheel_regex = str_field(port, "messageRegex"), str_field(wheel, "messageRegex")
    assert "(?:bind) failed" in port_regex and "(?P<" not in port_regex  # Java syntax
    assert str_field(port, "description").startswith("vLLM is broken here.")
    assert str_field(wheel, "description").startswith("The test infrastructure failed.")
    msg = "Traceback\nRuntimeError: server died\nOSError: [Errno 98] Address already in use\nmore"
    assert java_like_match(port_regex, msg)
    assert not java_like_match(wheel_regex, msg)
    assert java_like_match(wheel_regex, "ERROR: No matching distribution found for vllm==0.1")
    # the final entry catches exactly what no rule matches
    assert not java_like_match(str_field(unclassified, "messageRegex"), msg)
    assert java_like_match(str_field(unclassified, "messageRegex"), "AssertionError: 3 != 4\nsomething else")


def test_categories_accept_mapping_rules_and_empty_kb(tmp_path: Path) -> None:
    cats = al.categories_from_kb([{"id": "x", "category": "oom", "kind": "vllm", "patterns": ["CUDA out of memory"]}])
    assert cats[0]["name"] == "oom" and "CUDA out of memory" in str_field(cats[0], "messageRegex")
    assert al.categories_from_kb([]) == [{"name": "Unclassified vLLM failure", "matchedStatuses": ["failed", "broken"]}]
    path = al.write_categories(tmp_path / "allure-results", RULES)
    assert path == tmp_path / "allure-results" / "categories.json"
    assert json.loads(path.read_text()) == al.categories_from_kb(RULES)


def test_categories_from_the_real_knowledge_base() -> None:
    classify = pytest.importorskip("pytest_vllm_compat.classify", reason="classify.py is not written yet")
    rules = list(classify.load_knowledge_base())
    cats = al.categories_from_kb(rules)
    assert cats[-1]["name"] == "Unclassified vLLM failure"
    examples = [(rule, ex) for rule in rules for ex in getattr(rule, "examples", ())]
    for rule, example in examples:
        message = f"Traceback (most recent call last):\n{example}\n"
        # the first matching category is a rule's, and the unclassified entry stays out of it
        first = next(c for c in cats if java_like_match(str_field(c, "messageRegex"), message))
        assert first["name"] != "Unclassified vLLM failure", rule.id
        assert not java_like_match(str_field(cats[-1], "messageRegex"), message), rule.id
    assert java_like_match(str_field(cats[-1], "messageRegex"), "AssertionError: 3 != 4")
    assert not any(re.search(r"\(\?P?<[A-Za-z]", str_field(c, "messageRegex", "")) for c in cats)  # Java-safe


def read_properties(text: str) -> dict[str, str]:
    """A small java.util.Properties reader (enough for what write_environment emits)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        key: list[str] = []
        value: list[str] = []
        i = 0
        target = key
        while i < len(line):
            ch = line[i]
            if ch == "\\":
                nxt = line[i + 1]
                if nxt == "u":
                    target.append(chr(int(line[i + 2 : i + 6], 16)))
                    i += 6
                    continue
                target.append({"n": "\n", "r": "\r", "t": "\t", "f": "\f"}.get(nxt, nxt))
                i += 2
                continue
            if target is key and ch in "=:":
                target = value
            else:
                target.append(ch)
            i += 1
        out["".join(key)] = "".join(value)
    return out


def test_write_environment_escapes_per_properties_rules(tmp_path: Path) -> None:
    info = {"vLLM versions": "0.28.0, 0.32.0", "a=b:c": "x=y:z", "multi": "line1\nline2\r\n",
            "path": "C:\\models\\m", "gpu": "NVIDIA H100 80GB HBM3 – µ", "#comment": "!bang", "lead": "  spaced"}
    path = al.write_environment(tmp_path, info)
    text = path.read_text(encoding="ascii")
    assert len(text.splitlines()) == len(info)
    assert "vLLM\\ versions=0.28.0, 0.32.0" in text
    assert "a\\=b\\:c=x\\=y\\:z" in text and "line1\\nline2\\r\\n" in text and "C\\:\\\\models\\\\m" in text
    assert "\\u2013 \\u00b5" in text and text.startswith("vLLM")
    assert read_properties(text) == info


def test_helpers_are_noops_without_allure(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "allure", None)  # import allure -> ImportError
    al.apply_dynamic("m", "0.32.0", "cpu", "config", ["llama"])
    al.attach_text("log", "text")


def test_helpers_are_noops_when_allure_is_not_active() -> None:
    pytest.importorskip("allure")
    al.apply_dynamic("m", "0.32.0", "cpu", "config", ["llama"])
    al.attach_text("log", "text")


def test_labels_and_attachment_reach_allure_results(pytester: pytest.Pytester) -> None:
    pytest.importorskip("allure_pytest")
    pytester.makepyfile("""
        from pytest_vllm_compat.allure_support import apply_dynamic, attach_text

        def test_it():
            apply_dynamic("tiny-llama", "0.32.0", "cpu", "kv_cache", ["llama", "decoder"])
            attach_text("server log", "INFO ready")
    """)
    results = pytester.path / "allure-results"
    run = pytester.runpytest("-p", "no:vllm_compat", f"--alluredir={results}")
    run.assert_outcomes(passed=1)
    (result_file,) = results.glob("*-result.json")
    result = json.loads(result_file.read_text())
    params = {p["name"]: p["value"] for p in result["parameters"]}
    assert params in ({"model": "'tiny-llama'", "vllm_version": "'0.32.0'", "platform": "'cpu'"},
                      {"model": "tiny-llama", "vllm_version": "0.32.0", "platform": "cpu"})
    labels = [(lab["name"], lab["value"]) for lab in result["labels"]]
    assert ("feature", "kv_cache") in labels and ("story", "tiny-llama") in labels
    assert ("tag", "llama") in labels and ("tag", "decoder") in labels
    (attachment,) = result["attachments"]
    assert attachment["name"] == "server log" and attachment["type"] == "text/plain"
    assert (results / attachment["source"]).read_text() == "INFO ready"
