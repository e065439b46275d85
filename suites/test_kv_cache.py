"""kv_cache: the capacity the log reports matches bytes / (2 x layers x kv_heads x head_dim x dtype bytes),
scales with the memory knob, and an impossible max-model-len fails cleanly (classified, no hang)."""

from __future__ import annotations

import time
from typing import Any

import pytest
from suite_helpers import model_config, server_log

from pytest_vllm_compat.classify import classify
from pytest_vllm_compat.fixture_types import OpenAISDK, RecordExtras, ServerFactory
from pytest_vllm_compat.logparse import KVCacheInfo, parse_kv_cache
from pytest_vllm_compat.server import VLLMServer
from pytest_vllm_compat.session import Target

pytestmark = pytest.mark.kv_cache
GIB = 1024**3
DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "half": 2, "float32": 4, "float": 4, "auto": 2}


def bytes_per_token(cfg: dict[str, Any], dtype: str) -> int:
    layers = int(cfg["num_hidden_layers"])
    heads = int(cfg["num_attention_heads"])
    kv_heads = int(cfg.get("num_key_value_heads") or heads)
    head_dim = int(cfg.get("head_dim") or cfg["hidden_size"] // heads)
    return 2 * layers * kv_heads * head_dim * DTYPE_BYTES.get(dtype, 2)


def kv_memory_gib(server: VLLMServer, info: KVCacheInfo, device: str) -> float:
    if device == "cpu":
        return float(server.spec.env_dict().get("VLLM_CPU_KVCACHE_SPACE") or info.memory_gib or 4)
    assert info.memory_gib, "the log has no 'Available KV cache memory' line"
    return float(info.memory_gib)


def test_capacity_matches_formula(vllm_server: VLLMServer, vllm_target: Target, vllm_model_path: str,
                                  vllm_record: RecordExtras) -> None:
    info = parse_kv_cache(server_log(vllm_server))
    assert info is not None and info.tokens, "no KV-cache capacity line found in the server log"
    per_token = bytes_per_token(model_config(vllm_model_path), str(vllm_target.model.serve_args.get("dtype", "auto")))
    mem = kv_memory_gib(vllm_server, info, vllm_target.device)
    expected = mem * GIB / per_token
    vllm_record.metrics.update(kv_cache_tokens=info.tokens, kv_expected_tokens=int(expected), kv_memory_gib=mem,
                               kv_log_format=info.format)
    assert abs(info.tokens - expected) / expected <= 0.02, f"log {info.tokens:,} tokens vs formula {expected:,.0f}"


def test_max_concurrency_consistent(vllm_server: VLLMServer, vllm_record: RecordExtras) -> None:
    info = parse_kv_cache(server_log(vllm_server))
    assert info is not None and info.tokens and info.max_concurrency and info.concurrency_tokens, info
    expected = info.tokens / info.concurrency_tokens
    vllm_record.metrics["kv_max_concurrency"] = info.max_concurrency
    assert abs(info.max_concurrency - expected) / expected <= 0.02, (info.max_concurrency, expected)


def test_capacity_scales_with_memory_knob(vllm_server: VLLMServer, vllm_server_factory: ServerFactory,
                                          vllm_target: Target, vllm_record: RecordExtras) -> None:
    base = parse_kv_cache(server_log(vllm_server))
    assert base is not None and base.tokens
    if vllm_target.device == "cpu":
        space = int(vllm_server.spec.env_dict().get("VLLM_CPU_KVCACHE_SPACE", "1")) * 2
        # eager_ok: on CPU the KV cache is the memory this variable gives, compiled or not.
        bigger = vllm_server_factory(env={"VLLM_CPU_KVCACHE_SPACE": str(space)}, label="kv2x", eager_ok=True)
        info = parse_kv_cache(server_log(bigger))
        assert info is not None and info.tokens
        vllm_record.metrics.update(kv_tokens_1x=base.tokens, kv_tokens_2x=info.tokens)
        ratio = info.tokens / base.tokens
        assert abs(ratio - 2.0) / 2.0 <= 0.02, f"doubling VLLM_CPU_KVCACHE_SPACE gave x{ratio:.3f} tokens"
    else:
        smaller = vllm_server_factory(args=["--gpu-memory-utilization", "0.3"], label="gmu03")
        info = parse_kv_cache(server_log(smaller))
        assert info is not None and info.tokens and info.memory_gib and base.memory_gib
        vllm_record.metrics.update(kv_tokens_default=base.tokens, kv_tokens_gmu03=info.tokens)
        assert info.tokens < base.tokens
        per_gib_a, per_gib_b = base.tokens / base.memory_gib, info.tokens / info.memory_gib
        assert abs(per_gib_a - per_gib_b) / per_gib_a <= 0.02, (per_gib_a, per_gib_b)


@pytest.mark.vllm_one_off
def test_max_model_len_beyond_capacity_fails_cleanly(vllm_server_factory: ServerFactory, vllm_target: Target,
                                                     vllm_record: RecordExtras) -> None:
    # Ask for a context longer than the KV cache can hold: startup must fail with vLLM's message, not hang.
    env = {"VLLM_ALLOW_LONG_MAX_MODEL_LEN": "1"}
    if vllm_target.device == "cpu":
        env["VLLM_CPU_KVCACHE_SPACE"] = "1"
        too_long = 4 * 1024 * 1024  # 4 GiB of KV for this model's 1 KiB/token; 1 GiB is available
    else:
        too_long = 64 * 1024 * 1024
    t0 = time.monotonic()
    server, error = vllm_server_factory.try_start(args=["--max-model-len", str(too_long)], env=env, label="kvmaxlen",
                                                  eager_ok=True)
    elapsed = time.monotonic() - t0
    vllm_record.metrics["kv_maxlen_failure_s"] = round(elapsed, 1)
    assert error is not None, f"vLLM started with --max-model-len {too_long} beyond its KV capacity"
    c = classify(str(error), server.log_text(), version=vllm_target.version)
    vllm_record.metrics["kv_maxlen_classification"] = c.id
    assert c.category == "kv_cache_capacity", f"startup failed but not with the KV-capacity message: {c.id}: {error}"


def test_full_length_sequence_through_openai_sdk(vllm_openai: OpenAISDK, vllm_target: Target) -> None:
    """A sequence of exactly max_model_len tokens (prompt token ids + completion) through the official OpenAI
    SDK: the KV cache admits the longest sequence the server was configured for."""
    max_len = int(vllm_target.model.serve_args.get("max_model_len") or 256)
    prompt = [10] * (max_len - 16)
    r = vllm_openai.completions.create(model=vllm_openai.model, prompt=prompt, max_tokens=16, temperature=0,
                                       extra_body={"ignore_eos": True})
    assert r.usage.prompt_tokens == max_len - 16
    assert r.usage.completion_tokens == 16, r.choices[0].finish_reason
