"""guided_decoding: every structured-output backend the version offers, selected server-side the way
that version expects; outputs validated; bad schemas get a 4xx and leave the engine healthy."""

from __future__ import annotations

import re

import jsonschema
import pytest
from suite_helpers import server_log

from pytest_vllm_compat.capabilities import Unsupported, structured_request_fields, structured_server_args
from pytest_vllm_compat.client import finish_reason, text_of
from pytest_vllm_compat.outcomes import unsupported

pytestmark = pytest.mark.guided_decoding
BACKENDS = ("xgrammar", "guidance", "outlines", "lm-format-enforcer")
SCHEMA = {
    "type": "object",
    "properties": {"color": {"type": "string", "enum": ["red", "green", "blue"]},
                   "n": {"type": "integer", "minimum": 0, "maximum": 9}},
    "required": ["color", "n"],
    "additionalProperties": False,
}
REGEX = r"[a-c]{3}-[0-9]{2}"
CHOICES = ["yes", "no", "maybe"]
GRAMMAR = 'root ::= "alpha" | "beta" | "gamma"'
GRAMMAR_WORDS = {"alpha", "beta", "gamma"}


def _builder(backend: str):
    def build(caps, target):
        try:
            return structured_server_args(caps, backend), {}
        except Unsupported as e:
            unsupported(str(e))
    return build


def _params():
    out = []
    for b in BACKENDS:
        marks = [pytest.mark.vllm_server(label=f"so-{b}", builder=_builder(b)),
                 pytest.mark.vllm_feature(f"guided_decoding:{b}")]
        out.append(pytest.param(b, marks=marks, id=b))
    return out


backend_param = pytest.mark.parametrize("backend", _params())


def _fields(caps, kind, value, backend):
    try:
        return structured_request_fields(caps, kind, value, backend)
    except Unsupported as e:
        unsupported(str(e))


def _guided(client, caps, kind, value, backend, max_tokens=64):
    return client.chat("Answer:", max_tokens=max_tokens, **_fields(caps, kind, value, backend))


@backend_param
def test_backend_in_effect(backend, vllm_server, vllm_record):
    """The server runs with the backend we asked for (its effective config in the log), not a default."""
    log = server_log(vllm_server)
    m = re.search(r"(?:structured_outputs_config=StructuredOutputsConfig\(backend=|guided_decoding_backend=|"
                  r"backend=)'([\w-]+)", log)
    assert m, "the server log shows no structured-output backend"
    vllm_record.metrics["backend_in_log"] = m.group(1)
    assert m.group(1) == backend


@backend_param
def test_json_schema(backend, vllm_client, vllm_caps):
    r = _guided(vllm_client, vllm_caps, "json", SCHEMA, backend)
    text = text_of(r)
    assert finish_reason(r) == "stop", (
        f"guided output did not finish within max_tokens (finish_reason={finish_reason(r)}): the backend let the "
        f"output run past the schema's bounds; output so far: {text[:200]!r}")
    import json

    jsonschema.validate(json.loads(text), SCHEMA)


@backend_param
def test_regex(backend, vllm_client, vllm_caps):
    r = _guided(vllm_client, vllm_caps, "regex", REGEX, backend)
    assert re.fullmatch(REGEX, text_of(r)), repr(text_of(r))
    assert finish_reason(r) == "stop"


@backend_param
def test_choice(backend, vllm_client, vllm_caps):
    r = _guided(vllm_client, vllm_caps, "choice", CHOICES, backend)
    assert text_of(r) in CHOICES, repr(text_of(r))
    assert finish_reason(r) == "stop"


@backend_param
def test_grammar(backend, vllm_client, vllm_caps):
    fields = _fields(vllm_caps, "grammar", GRAMMAR, backend)
    resp = vllm_client.chat_raw({"messages": [{"role": "user", "content": "Answer:"}], "max_tokens": 16,
                                 "temperature": 0, **fields})
    if resp.status_code == 400 and "does not support grammar" in resp.text:
        unsupported(f"{backend} rejects grammar requests in this version: {resp.json()['error']['message'][:200]}")
    assert resp.status_code == 200, resp.text[:500]
    body = resp.json()
    assert text_of(body) in GRAMMAR_WORDS, repr(text_of(body))
    assert finish_reason(body) == "stop"


@backend_param
def test_malformed_schema_is_4xx_and_server_stays_healthy(backend, vllm_client, vllm_caps):
    bad = _fields(vllm_caps, "json", {"type": "objectx", "properties": 7}, backend)
    resp = vllm_client.chat_raw({"messages": [{"role": "user", "content": "x"}], "max_tokens": 8, **bad})
    assert 400 <= resp.status_code < 500, f"malformed schema answered {resp.status_code}: {resp.text[:300]}"
    assert vllm_client.health() == 200


@backend_param
def test_valid_request_after_invalid_one(backend, vllm_client, vllm_caps):
    """vllm#43920: one bad request must not kill the engine for every later one."""
    bad = _fields(vllm_caps, "regex", "([a-z", backend)
    vllm_client.chat_raw({"messages": [{"role": "user", "content": "x"}], "max_tokens": 8, **bad})
    r = _guided(vllm_client, vllm_caps, "choice", CHOICES, backend)
    assert text_of(r) in CHOICES
    assert vllm_client.health() == 200
