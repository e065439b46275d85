"""Remove secrets (tokens, API keys) from text, environments and command lines before they are recorded."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

MASK = "***"
MIN_SECRET_LEN = 4

_SECRET_KEY_RE = re.compile(r"TOKEN|KEY|SECRET|PASSWORD|PASSWD|AUTH|CREDENTIAL", re.IGNORECASE)
_SECRET_FLAGS = ("--api-key", "--hf-token", "--token", "--api_key", "--hf_token")

# (pattern, replacement): the whole match is the secret, or everything after the group "pre" is.
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(p, flags), MASK) for p, flags in (
        # Hugging Face tokens, OpenAI-style keys
        (r"\bhf_[A-Za-z0-9]{20,}", 0),
        (r"\bsk-(?:proj-|ant-)?[A-Za-z0-9_-]{16,}", 0),
    )
) + tuple(
    (re.compile(p, flags), r"\g<pre>" + MASK) for p, flags in (
        # Authorization: Bearer xxx / Authorization: Basic xxx / Bearer xxx
        (r"(?P<pre>\bAuthorization[\"']?\s*[:=]\s*[\"']?(?:(?:Bearer|Basic|Token)\s+)?)(?!\*\*\*)[^\s\"',}]{4,}",
         re.IGNORECASE),
        (r"(?P<pre>\bBearer\s+)(?!\*\*\*)[A-Za-z0-9._~+/=-]{4,}", 0),
        # api_key='xxx', "api_key": "xxx", api-key=xxx, hf_token: xxx, password=xxx (whole key names only:
        # max_tokens, bos_token or tokenizer are not secrets)
        (r"(?P<pre>[\"']?(?<![\w-])(?:[\w-]*api[_-]?key|[\w-]*_secret|secret(?:_key)?|password|passwd"
         r"|(?:hf|access|auth|hub|api)[_-]?token|token)(?![\w-])[\"']?\s*[:=]\s*[\"']?)(?!\*\*\*)[^\s\"',}]{4,}",
         re.IGNORECASE),
        # --api-key xxx, --hf-token xxx (also --api-key=xxx via the rule above)
        (r"(?P<pre>--(?:api-key|hf-token|token|api_key|hf_token)\s+)(?!\*\*\*)\S+", 0),
        # OPENAI_API_KEY=..., HF_TOKEN=..., HUGGING_FACE_HUB_TOKEN=... (shell and env dumps)
        (r"(?P<pre>\b(?:OPENAI_API_KEY|HF_TOKEN|HUGGING_FACE_HUB_TOKEN|HUGGINGFACE_TOKEN|VLLM_API_KEY)"
         r"[\"']?\s*[:=]\s*[\"']?)(?!\*\*\*)[^\s\"',}]+", 0),
    )
)


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with each given secret (at least 4 characters) and every recognizable token replaced by ``***``.

    Recognized: Hugging Face tokens (``hf_...``), ``sk-...`` keys, ``Bearer``/``Authorization`` values,
    ``api_key='...'`` / ``"api_key": "..."`` / ``--api-key ...`` / ``--hf-token ...``, and
    ``OPENAI_API_KEY=`` / ``HF_TOKEN=`` / ``HUGGING_FACE_HUB_TOKEN=`` assignments.
    """
    if not text:
        return text
    # longest first, so a secret that contains another is masked whole
    for secret in sorted({s for s in secrets if s and len(s) >= MIN_SECRET_LEN}, key=len, reverse=True):
        text = text.replace(secret, MASK)
    for rx, repl in _PATTERNS:
        text = rx.sub(repl, text)
    return text


def is_secret_name(name: str) -> bool:
    """Whether an environment variable name looks like it holds a secret."""
    return bool(_SECRET_KEY_RE.search(name))


def redact_env(env: Mapping[str, str]) -> dict[str, str]:
    """A copy of ``env`` where values of secret-looking keys (TOKEN, KEY, SECRET, PASSWORD, AUTH) are ``***``
    and other values are passed through :func:`redact`."""
    return {k: (MASK if is_secret_name(k) and v else redact(v)) for k, v in env.items()}


def redact_argv(argv: Sequence[str], secrets: Iterable[str] = (), *, mask_all_env: bool = False) -> list[str]:
    """A copy of ``argv`` safe to store or log.

    The value after ``--api-key`` / ``--hf-token`` (or in ``--api-key=...``) becomes ``***``; a
    ``-e K=V`` / ``--env K=V`` (docker) has its value masked when ``K`` looks secret, or always with
    ``mask_all_env``; every element is also passed through :func:`redact`.
    """
    secrets = tuple(secrets)
    out: list[str] = []
    mask_next = False
    env_next = False
    for item in argv:
        arg = str(item)
        if mask_next:
            out.append(MASK)
            mask_next = False
            continue
        if env_next or arg.startswith("--env="):
            prefix = "--env=" if arg.startswith("--env=") else ""
            key, eq, _ = arg[len(prefix):].partition("=")
            env_next = False
            if eq and (mask_all_env or is_secret_name(key)):
                out.append(f"{prefix}{key}={MASK}")
                continue
            out.append(redact(arg, secrets))
            continue
        if arg in ("-e", "--env"):
            out.append(arg)
            env_next = True
            continue
        flag, eq, _ = arg.partition("=")
        if flag in _SECRET_FLAGS:
            if eq:
                out.append(f"{flag}={MASK}")
            else:
                out.append(arg)
                mask_next = True
            continue
        out.append(redact(arg, secrets))
    return out
