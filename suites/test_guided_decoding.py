"""guided_decoding: every structured-output backend the version offers, selected server-side the way
that version expects; outputs validated; bad schemas get a 4xx and leave the engine healthy."""

from __future__ import annotations

import json
import platform
import re
from collections.abc import Callable
from typing import Any

import jsonschema
import pytest
from _pytest.mark import ParameterSet
from suite_helpers import log_since, log_size, server_log

from pytest_vllm_compat.capabilities import (
    Unsupported,
    VersionCaps,
    engine_for,
    expected_structured_backend,
    fallback_conditions,
    structured_fallback_path,
    structured_request_fields,
    structured_server_args,
)
from pytest_vllm_compat.client import VLLMClient, finish_reason, text_of
from pytest_vllm_compat.fixture_types import OpenAISDK, RecordExtras
from pytest_vllm_compat.logparse import backend_fallbacks, parse_engine_config
from pytest_vllm_compat.outcomes import unsupported
from pytest_vllm_compat.record_types import JSONObject, JSONValue
from pytest_vllm_compat.server import VLLMServer
from pytest_vllm_compat.session import Target

pytestmark = pytest.mark.guided_decoding
BACKENDS = ("xgrammar", "guidance", "outlines", "lm-format-enforcer")
SCHEMA: JSONObject = {
    "type": "object",
    "properties": {"color": {"type": "string", "enum": ["red", "green", "blue"]},
                   "n": {"type": "integer", "minimum": 0, "maximum": 9}},
    "required": ["color", "n"],
    "additionalProperties": False,
}
REGEX = r"[a-c]{3}-[0-9]{2}"
CHOICES: list[JSONValue] = ["yes", "no", "maybe"]
GRAMMAR = 'root ::= "alpha" | "beta" | "gamma"'
GRAMMAR_WORDS = {"alpha", "beta", "gamma"}


def _builder(backend: str) -> Callable[[VersionCaps, Target], tuple[list[str], dict[str, str]]]:
    def build(caps: VersionCaps, target: Target) -> tuple[list[str], dict[str, str]]:
        try:
            return structured_server_args(caps, backend), {}
        except Unsupported as e:
            unsupported(str(e))
    return build


def _params() -> list[ParameterSet]:
    out = []
    for b in BACKENDS:
        # eager_ok: a backend constrains the sampled tokens, after the model; --vllm-eager-knob-servers may start
        # these servers with --enforce-eager on CPU (the default server's mixed guided requests stay compiled).
        marks = [pytest.mark.vllm_server(label=f"so-{b}", builder=_builder(b), eager_ok=True),
                 pytest.mark.vllm_feature(f"guided_decoding:{b}")]
        out.append(pytest.param(b, marks=marks, id=b))
    return out


backend_param = pytest.mark.parametrize("backend", _params())


def _fields(caps: VersionCaps, kind: str, value: JSONValue, backend: str) -> JSONObject:
    try:
        return structured_request_fields(caps, kind, value, backend)
    except Unsupported as e:
        unsupported(str(e))


def _guided(client: VLLMClient, caps: VersionCaps, target: Target, kind: str, value: JSONValue, backend: str,
            server: VLLMServer, max_tokens: int = 64) -> dict[str, Any]:
    fields = _fields(caps, kind, value, backend)
    offset = log_size(server)
    r = client.chat("Answer:", max_tokens=max_tokens, temperature=0.0, **fields)
    not_by(backend, kind, server, offset, caps, target, value)
    return r


def not_by(backend: str, kind: str, server: VLLMServer, offset: int, caps: VersionCaps, target: Target,
           value: JSONValue = None) -> None:
    """Which backend served the request, against the one the capability table says should serve it.

    V0 engines (0.6.5-0.9.x) hand a request the named backend cannot do to another backend and only log a
    warning (``structured_fallbacks`` in data/capabilities.toml, read from each release's source). Such a
    request is a result of its own: this backend does not do this kind of request in this version
    ("unsupported", naming the fallback). A fallback the table does not predict, or a predicted one that does
    not happen, fails: either the release behaves otherwise than its source says, or the table is wrong."""
    arch = platform.machine()
    engine = engine_for(caps, target.device, structured_backend=backend, cpu_arch=arch)
    schema = value if kind == "json" else None
    conditions = fallback_conditions(caps, kind, schema=schema, cpu_arch=arch)
    expected = expected_structured_backend(caps, engine, backend, kind, conditions)
    if expected is None:
        unsupported(f"vLLM {caps.version} on the {engine} engine applies no structured output: the {kind} "
                    f"request is answered unconstrained (capability table: v1_opt_in_ignores)")
    fallbacks = backend_fallbacks(log_since(server, offset))
    served, why = fallbacks[-1] if fallbacks else (backend, "")
    where = f"vLLM {caps.version}, {engine} engine"
    if expected != backend:
        path = structured_fallback_path(caps, engine, backend, kind, conditions)
        site = ", ".join(f"{f.when} -> {f.to} ({f.file})" for f in path)
        assert served == expected, (
            f"silent fallback expected: the capability table says {where} hands a {kind} request for {backend} "
            f"to {expected} ({site}); the log shows {'no fallback' if not fallbacks else served}")
        unsupported(f"silent fallback: {backend} does not serve {kind} requests on {where}; the server handed "
                    f"it to {served} (log: {why} Falling back to use {served} instead.; capability table: {site})")
    assert served == backend, (
        f"silent fallback: asked {backend} for a {kind} request, the server handed it to {served} (log: {why}); "
        f"the capability table expects {backend} to serve it on {where}")


@backend_param
def test_backend_in_effect(backend: str, vllm_server: VLLMServer, vllm_record: RecordExtras) -> None:
    """The engine runs with the backend we asked for: read from the engine's own config line ("Initializing a V1
    LLM engine ... with config: ... structured_outputs_config=StructuredOutputsConfig(backend='...')"), not from
    the echo of the command line, which would pass even if the engine ignored the flag."""
    used = parse_engine_config(server_log(vllm_server)).get("structured_outputs_backend")
    assert used, "the engine's config line names no structured-output backend"
    vllm_record.metrics["backend_in_log"] = used
    assert used == backend, f"asked for {backend}, the engine runs {used}"


@backend_param
def test_json_schema(backend: str, vllm_client: VLLMClient, vllm_caps: VersionCaps, vllm_server: VLLMServer,
                     vllm_target: Target) -> None:
    r = _guided(vllm_client, vllm_caps, vllm_target, "json", SCHEMA, backend, vllm_server)
    text = text_of(r)
    assert finish_reason(r) == "stop", (
        f"guided output did not finish within max_tokens (finish_reason={finish_reason(r)}): the backend let the "
        f"output run past the schema's bounds; output so far: {text[:200]!r}")
    jsonschema.validate(json.loads(text), SCHEMA)


@backend_param
def test_regex(backend: str, vllm_client: VLLMClient, vllm_caps: VersionCaps, vllm_server: VLLMServer,
               vllm_target: Target) -> None:
    r = _guided(vllm_client, vllm_caps, vllm_target, "regex", REGEX, backend, vllm_server)
    assert re.fullmatch(REGEX, text_of(r)), repr(text_of(r))
    assert finish_reason(r) == "stop"


@backend_param
def test_choice(backend: str, vllm_client: VLLMClient, vllm_caps: VersionCaps, vllm_server: VLLMServer,
                vllm_target: Target) -> None:
    r = _guided(vllm_client, vllm_caps, vllm_target, "choice", CHOICES, backend, vllm_server)
    assert text_of(r) in CHOICES, repr(text_of(r))
    assert finish_reason(r) == "stop"


@backend_param
def test_grammar(backend: str, vllm_client: VLLMClient, vllm_caps: VersionCaps, vllm_server: VLLMServer,
                 vllm_target: Target) -> None:
    fields = _fields(vllm_caps, "grammar", GRAMMAR, backend)
    offset = log_size(vllm_server)
    resp = vllm_client.chat_raw({"messages": [{"role": "user", "content": "Answer:"}], "max_tokens": 16,
                                 "temperature": 0, **fields})
    not_by(backend, "grammar", vllm_server, offset, vllm_caps, vllm_target)
    if resp.status_code == 400 and "does not support grammar" in resp.text:
        unsupported(f"{backend} rejects grammar requests in this version: {resp.json()['error']['message'][:200]}")
    assert resp.status_code == 200, resp.text[:500]
    body = resp.json()
    assert text_of(body) in GRAMMAR_WORDS, repr(text_of(body))
    assert finish_reason(body) == "stop"


@backend_param
def test_malformed_schema_is_4xx_and_server_stays_healthy(backend: str, vllm_client: VLLMClient,
                                                          vllm_caps: VersionCaps) -> None:
    bad = _fields(vllm_caps, "json", {"type": "objectx", "properties": 7}, backend)
    resp = vllm_client.chat_raw({"messages": [{"role": "user", "content": "x"}], "max_tokens": 8, **bad})
    assert 400 <= resp.status_code < 500, f"malformed schema answered {resp.status_code}: {resp.text[:300]}"
    assert vllm_client.health() == 200


@backend_param
def test_valid_request_after_invalid_one(backend: str, vllm_client: VLLMClient, vllm_caps: VersionCaps,
                                         vllm_server: VLLMServer, vllm_target: Target) -> None:
    """vllm#43920: one bad request must not kill the engine for every later one."""
    bad = _fields(vllm_caps, "regex", "([a-z", backend)
    vllm_client.chat_raw({"messages": [{"role": "user", "content": "x"}], "max_tokens": 8, **bad})
    r = _guided(vllm_client, vllm_caps, vllm_target, "choice", CHOICES, backend, vllm_server)
    assert text_of(r) in CHOICES
    assert vllm_client.health() == 200


@backend_param
def test_json_schema_through_openai_sdk(backend: str, vllm_openai: OpenAISDK, vllm_caps: VersionCaps,
                                        vllm_server: VLLMServer, vllm_target: Target) -> None:
    """The same JSON-schema request through the official OpenAI SDK (the version's fields in ``extra_body``)."""
    fields = _fields(vllm_caps, "json", SCHEMA, backend)
    offset = log_size(vllm_server)
    r = vllm_openai.chat.completions.create(model=vllm_openai.model, max_tokens=64, temperature=0,
                                            messages=[{"role": "user", "content": "Answer:"}], extra_body=fields)
    not_by(backend, "json", vllm_server, offset, vllm_caps, vllm_target, SCHEMA)
    text = r.choices[0].message.content or ""
    assert r.choices[0].finish_reason == "stop", (
        f"guided output did not finish within max_tokens (finish_reason={r.choices[0].finish_reason}): the backend "
        f"let the output run past the schema's bounds; output so far: {text[:200]!r}")
    jsonschema.validate(json.loads(text), SCHEMA)
