"""redact(): secrets and token shapes are masked; ordinary log text survives."""

from __future__ import annotations

import pytest

from pytest_vllm_compat.redact import MASK, redact, redact_argv, redact_env

HF = "hf_" + "a1B2c3D4e5F6g7H8i9J0kLmN"
SK = "sk-" + "proj-" + "Ab12Cd34Ef56Gh78Ij90"


@pytest.mark.parametrize(
    ("text", "gone"),
    [
        (f"token is {HF} here", HF),
        (f"key={SK}", SK),
        ("Authorization: Bearer abc.def-ghi_123", "abc.def-ghi_123"),
        ("curl -H 'Authorization: Basic dXNlcjpwYXNz'", "dXNlcjpwYXNz"),
        ("headers={'Authorization': 'Bearer s3cr3tvalue'}", "s3cr3tvalue"),
        ("Bearer zzzz9999", "zzzz9999"),
        ("api_key='mysecretkey'", "mysecretkey"),
        ('{"api_key": "mysecretkey2"}', "mysecretkey2"),
        ("vllm serve m --api-key topsecret --port 8000", "topsecret"),
        ("vllm serve m --api-key=topsecret2", "topsecret2"),
        ("--hf-token hfsecretvalue", "hfsecretvalue"),
        ("OPENAI_API_KEY=abcd1234", "abcd1234"),
        ("export HF_TOKEN=xyzw9876", "xyzw9876"),
        ("HUGGING_FACE_HUB_TOKEN=qwer5678 vllm serve", "qwer5678"),
        ("password: hunter22", "hunter22"),
    ],
)
def test_patterns_mask_secrets(text: str, gone: str) -> None:
    out = redact(text)
    assert gone not in out
    assert MASK in out


def test_given_secrets_masked_longest_first() -> None:
    out = redact("user pass1234 and pass12345678", secrets=["pass1234", "pass12345678", "abc", ""])
    assert out == f"user {MASK} and {MASK}"
    assert redact("abc abc", secrets=["abc"]) == "abc abc"  # shorter than 4: not a secret


@pytest.mark.parametrize(
    "text",
    [
        "INFO 11-22 11:27:52 [core.py:133] config: tokenizer='/tmp/m', max_num_batched_tokens=2048, max_tokens=16",
        "{'bos_token': '<s>', 'eos_token': '</s>', 'max_tokens': 512}",
        "CPU KV cache size: 1,048,576 tokens, Maximum concurrency for 512 tokens per request: 2048.00x",
        "non-default args: {'api_key': '***', 'model': '/tmp/explore/tiny-mistral'}",
        "the task-abcdefghijklmnopqrstuvwxyz finished",
    ],
)
def test_ordinary_text_unchanged(text: str) -> None:
    assert redact(text) == text


def test_redact_env() -> None:
    env = {"HF_TOKEN": "hf_x", "OPENAI_API_KEY": "k", "DB_PASSWORD": "p", "MY_SECRET": "s", "AUTH_HEADER": "a",
           "VLLM_CPU_KVCACHE_SPACE": "1", "PATH": "/usr/bin", "NOTE": f"uses {HF}", "EMPTY_TOKEN": ""}
    out = redact_env(env)
    assert out["HF_TOKEN"] == out["OPENAI_API_KEY"] == out["DB_PASSWORD"] == out["MY_SECRET"] == MASK
    assert out["AUTH_HEADER"] == MASK
    assert out["VLLM_CPU_KVCACHE_SPACE"] == "1" and out["PATH"] == "/usr/bin"
    assert HF not in out["NOTE"]
    assert out["EMPTY_TOKEN"] == ""
    assert env["HF_TOKEN"] == "hf_x"  # input untouched


def test_redact_argv() -> None:
    argv = ["python", "-m", "vllm.entrypoints.openai.api_server", "--api-key", "k3y", "--hf-token", "t0k",
            "--api-key=abcdef", "--model", "/m", f"--note={HF}", "--served-model-name", "hunter2x"]
    out = redact_argv(argv, secrets=["hunter2x"])
    assert out[:4] == ["python", "-m", "vllm.entrypoints.openai.api_server", "--api-key"]
    assert out[4] == MASK and out[5] == "--hf-token" and out[6] == MASK
    assert out[7] == f"--api-key={MASK}"
    assert out[8:10] == ["--model", "/m"]
    assert HF not in out[10]
    assert out[12] == MASK
    assert argv[4] == "k3y"
