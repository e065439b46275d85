"""config: a server starts for each registry model, lists it, and runs with the engine config asked for."""

from __future__ import annotations

import pytest

from pytest_vllm_compat.capabilities import VersionCaps, engine_for, help_has_flag
from pytest_vllm_compat.client import VLLMClient, finish_reason, text_of
from pytest_vllm_compat.fixture_types import OpenAISDK, RecordExtras
from pytest_vllm_compat.logparse import parse_engine_config
from pytest_vllm_compat.outcomes import unsupported
from pytest_vllm_compat.server import VLLMServer
from pytest_vllm_compat.session import Target

pytestmark = pytest.mark.config


def test_server_lists_model(vllm_server: VLLMServer, vllm_client: VLLMClient) -> None:
    listed = vllm_client.models()
    assert listed == [vllm_server.served_model_name], (
        f"the model list is wrong: /v1/models lists {listed}, the server serves {vllm_server.served_model_name!r}")


def test_engine_config_matches_request(vllm_server: VLLMServer, vllm_target: Target, vllm_caps: VersionCaps,
                                       vllm_record: RecordExtras) -> None:
    cfg = parse_engine_config(vllm_server.log_text())
    vllm_record.metrics["engine_config"] = {k: v for k, v in cfg.items() if isinstance(v, (str, int, float, bool))}
    asked = vllm_target.model.serve_args
    assert cfg.get("max_model_len") == int(asked["max_model_len"]), (
        f"the engine's config differs from the request: max_model_len {cfg.get('max_model_len')}, asked "
        f"{asked['max_model_len']}")
    if "dtype" in asked:
        got = str(cfg.get("dtype", "")).removeprefix("torch.")
        assert got == asked["dtype"], f"the engine's config differs from the request: dtype {got}, asked {asked['dtype']}"
    expected = engine_for(vllm_caps, vllm_target.device)
    assert cfg.get("engine") == expected, f"log says engine {cfg.get('engine')}, table says {expected}"


def test_greedy_completion(vllm_client: VLLMClient) -> None:
    first = vllm_client.completion("The quick brown fox", max_tokens=8)
    second = vllm_client.completion("The quick brown fox", max_tokens=8)
    assert first["usage"]["completion_tokens"] == 8 or finish_reason(first) == "stop"
    assert text_of(first) == text_of(second), "temperature 0 must be deterministic"


def test_chat_template_applies(vllm_client: VLLMClient, vllm_target: Target,
                               vllm_record: RecordExtras) -> None:
    """The chat endpoint renders the model's chat template: the prompt is wrapped (more tokens than the bare
    message) and, on a trained model, the answer is right (a random-weight model's cannot be judged)."""
    question = "What is the capital of France? Answer in one word."
    r = vllm_client.chat(question, max_tokens=12)
    raw = vllm_client.completion(question, max_tokens=1)
    assert r["choices"][0]["message"]["role"] == "assistant"
    assert r["usage"]["prompt_tokens"] > raw["usage"]["prompt_tokens"], (
        f"no chat template was applied: the chat prompt has {r['usage']['prompt_tokens']} tokens, the bare message "
        f"{raw['usage']['prompt_tokens']}")
    answer = r["choices"][0]["message"]["content"] or ""
    vllm_record.metrics["answer"] = answer[:200]
    if vllm_target.model.trained:
        assert "paris" in answer.lower(), f"a trained model answered {answer!r} to {question!r}"
        assert r["choices"][0]["finish_reason"] == "stop", "the answer did not end with the model's end of turn"


def test_served_args_are_the_registry_args(vllm_server: VLLMServer, vllm_target: Target,
                                           vllm_record: RecordExtras) -> None:
    """The version parsed the registry's serve args as given: its own "non-default args: {...}" line (what its
    argument parser made of the command line) holds each of them with the registry's value, and the host the
    plugin binds. A flag the release renamed, dropped or reads differently shows here, not as a later oddity."""
    cfg = parse_engine_config(vllm_server.log_text())
    parsed = cfg.get("non_default_args")
    if not isinstance(parsed, dict):
        unsupported("this version logs no 'non-default args' line to read its parsed arguments from")
    vllm_record.metrics["non_default_args"] = {k: v for k, v in parsed.items() if k != "api_key"}
    wrong, matched, at_default = {}, [], []
    for key, value in vllm_target.model.serve_args.items():
        if value is None or value is False:
            continue  # not passed on the command line (serve_args_to_argv)
        if key not in parsed:
            at_default.append(key)  # the line lists non-default values only: the version's default is this value
        elif parsed[key] != value:
            wrong[key] = {"registry": value, "parsed": parsed[key]}
        else:
            matched.append(key)
    vllm_record.metrics["serve_args_at_default"] = at_default
    assert not wrong, f"the server parsed the registry's serve args differently: {wrong}"
    assert matched, f"none of the registry's serve args {sorted(vllm_target.model.serve_args)} is in the parsed arguments"
    assert parsed.get("host") == "127.0.0.1", f"the server parsed host {parsed.get('host')!r}"

def _claimed_flags(caps: VersionCaps) -> list[str]:
    flags = []
    if caps.structured_server == "flag":
        flags.append("--guided-decoding-backend")
    elif caps.structured_server == "config_json":
        flags.append("--structured-outputs-config")
    if caps.disable_any_whitespace == "flag":
        flags.append("--guided-decoding-disable-any-whitespace")
    if caps.attention_selection == "flag":
        flags.append("--attention-backend")
    if caps.log_requests_flag:
        flags.append(caps.log_requests_flag)
    return flags


def test_capability_table_flags_exist(vllm_caps: VersionCaps, vllm_help: str,
                                      vllm_record: RecordExtras) -> None:
    """Every server flag the capability table relies on for this version is in the installed version's --help."""
    assert vllm_help, "the installed version printed no --help"
    flags = _claimed_flags(vllm_caps)
    vllm_record.metrics["flags_checked"] = flags
    missing = [f for f in flags if not help_has_flag(vllm_help, f)]
    assert not missing, f"capability table row {vllm_caps.range} claims flags this version lacks: {missing}"


def test_openai_sdk_lists_completes_and_chats(vllm_openai: OpenAISDK) -> None:
    """The official OpenAI SDK against the server: model list, a greedy completion and a chat."""
    assert [m.id for m in vllm_openai.models.list().data] == [vllm_openai.model]
    c = vllm_openai.completions.create(model=vllm_openai.model, prompt="The quick brown fox", max_tokens=8,
                                       temperature=0)
    assert c.usage.completion_tokens == 8 or c.choices[0].finish_reason == "stop"
    again = vllm_openai.completions.create(model=vllm_openai.model, prompt="The quick brown fox", max_tokens=8,
                                           temperature=0)
    assert c.choices[0].text == again.choices[0].text, "temperature 0 must be deterministic"
    chat = vllm_openai.chat.completions.create(model=vllm_openai.model, max_tokens=4,
                                               messages=[{"role": "user", "content": "Hello"}])
    assert chat.choices[0].message.role == "assistant" and chat.usage.prompt_tokens > 1
