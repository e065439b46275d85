"""stability: bursts of concurrent requests, streaming, a client that disconnects mid-stream, mixed guided
and plain requests, and a long sequential run; /health stays 200 after each. Latency goes in the record."""

from __future__ import annotations

import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from suite_helpers import client_for

from pytest_vllm_compat.capabilities import Unsupported, VersionCaps, structured_request_fields
from pytest_vllm_compat.client import VLLMClient, text_of
from pytest_vllm_compat.fixture_types import OpenAISDK, RecordExtras
from pytest_vllm_compat.record_types import JSONObject
from pytest_vllm_compat.server import VLLMServer

pytestmark = pytest.mark.stability
BURST_REQUESTS = 256
BURST_CONCURRENCY = 32


def _percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def _one(server: VLLMServer, i: int) -> tuple[bool, float, str]:
    client = client_for(server)
    t0 = time.monotonic()
    try:
        r = client.completion(f"request {i}:", max_tokens=8)
        return bool(r["choices"]), time.monotonic() - t0, ""
    except Exception as e:  # every error is counted and reported
        return False, time.monotonic() - t0, f"{type(e).__name__}: {e}"[:300]
    finally:
        client.close()


def test_concurrent_burst(vllm_server: VLLMServer, vllm_client: VLLMClient,
                          vllm_record: RecordExtras) -> None:
    t0 = time.monotonic()
    with ThreadPoolExecutor(BURST_CONCURRENCY) as pool:
        results = list(pool.map(lambda i: _one(vllm_server, i), range(BURST_REQUESTS)))
    wall = time.monotonic() - t0
    lat = [r[1] for r in results]
    errors = [r[2] for r in results if not r[0]]
    vllm_record.metrics.update(requests=BURST_REQUESTS, concurrency=BURST_CONCURRENCY, errors=len(errors),
                               latency_p50_s=round(statistics.median(lat), 4),
                               latency_p95_s=round(_percentile(lat, 0.95), 4), wall_s=round(wall, 2))
    assert not errors, f"{len(errors)}/{BURST_REQUESTS} requests failed; first: {errors[0]}"
    assert vllm_client.health() == 200


def test_streaming(vllm_client: VLLMClient, vllm_record: RecordExtras) -> None:
    chunks = list(vllm_client.stream_completion("Stream this:", max_tokens=16))
    vllm_record.metrics["stream_chunks"] = len(chunks)
    assert len(chunks) >= 2, f"the stream was truncated: {len(chunks)} chunk(s)"
    assert chunks[-1]["choices"][0].get("finish_reason") in ("length", "stop"), (
        f"the stream was truncated: its last chunk has finish_reason {chunks[-1]['choices'][0].get('finish_reason')!r}")
    assert vllm_client.health() == 200


def test_client_disconnects_mid_stream(vllm_server: VLLMServer, vllm_client: VLLMClient) -> None:
    url = vllm_server.base_url + "/v1/completions"
    body: JSONObject = {"model": vllm_server.served_model_name, "prompt": "long", "max_tokens": 400,
                        "stream": True, "temperature": 0, "ignore_eos": True}
    with requests.post(url, json=body, headers={"Authorization": f"Bearer {vllm_server.api_key}"},
                       stream=True, timeout=60) as r:
        assert r.status_code == 200
        for n, _ in enumerate(r.iter_lines()):
            if n >= 2:
                break  # leave with the generation still running
    time.sleep(1.0)
    assert vllm_client.health() == 200
    assert vllm_client.completion("after the disconnect", max_tokens=4)["choices"]


def test_mixed_guided_and_plain(vllm_server: VLLMServer, vllm_client: VLLMClient, vllm_caps: VersionCaps,
                                vllm_record: RecordExtras) -> None:
    try:
        guided = structured_request_fields(vllm_caps, "choice", ["yes", "no"])
    except Unsupported as e:
        from pytest_vllm_compat.outcomes import unsupported

        unsupported(str(e))

    def one(i: int) -> tuple[str, str]:
        client = client_for(vllm_server)
        try:
            if i % 2:
                return "guided", text_of(client.chat("yes or no?", max_tokens=8, temperature=0.0, **guided))
            return "plain", text_of(client.completion(f"plain {i}", max_tokens=8))
        finally:
            client.close()

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, range(64)))
    bad = [t for kind, t in results if kind == "guided" and t not in ("yes", "no")]
    vllm_record.metrics["mixed_requests"] = len(results)
    assert not bad, f"guided outputs outside the choice set: {bad[:5]}"
    assert vllm_client.health() == 200


def test_long_sequential_run(vllm_client: VLLMClient, vllm_record: RecordExtras) -> None:
    n = 150
    t0 = time.monotonic()
    for i in range(n):
        assert vllm_client.completion(f"seq {i}", max_tokens=4)["choices"]
    vllm_record.metrics.update(sequential_requests=n, sequential_wall_s=round(time.monotonic() - t0, 2))
    assert vllm_client.health() == 200


def test_openai_sdk_streaming(vllm_openai: OpenAISDK, vllm_client: VLLMClient) -> None:
    """A streamed chat through the official OpenAI SDK: chunks arrive, the last one says why it stopped."""
    stream = vllm_openai.chat.completions.create(model=vllm_openai.model, max_tokens=16, stream=True,
                                                 messages=[{"role": "user", "content": "Stream this:"}])
    chunks = list(stream)
    assert len(chunks) >= 2, chunks
    assert any(c.choices and c.choices[0].finish_reason in ("length", "stop") for c in chunks), chunks[-1]
    assert vllm_client.health() == 200
