"""A small client for a vLLM server's OpenAI-compatible API (requests; no openai SDK needed)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import requests

from .record_types import JSONObject, JSONValue


class APIError(RuntimeError):
    """An HTTP error status from the server, with the status code and the response body."""

    def __init__(self, status: int, body: str, url: str) -> None:
        super().__init__(f"HTTP {status} from {url}: {body[:500]}")
        self.status = status
        self.body = body


class VLLMClient:
    """A client for one served model: completions, chat, streaming, ``/health`` and ``/v1/models``."""

    def __init__(self, base_url: str, api_key: str, model: str, timeout: float = 120.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.timeout = timeout
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {api_key}"

    def close(self) -> None:
        """Close the HTTP session."""
        self.session.close()

    def _post(self, path: str, body: JSONObject, *, check: bool = True) -> requests.Response:
        url = self.base_url + path
        r = self.session.post(url, json=body, timeout=self.timeout)
        if check and r.status_code >= 400:
            raise APIError(r.status_code, r.text, url)
        return r

    def health(self, timeout: float = 5.0) -> int:
        """The status code of ``GET /health`` (200 once the server is ready)."""
        return requests.get(self.base_url + "/health", timeout=timeout).status_code

    def models(self) -> list[str]:
        """The ids ``/v1/models`` lists."""
        r = self.session.get(self.base_url + "/v1/models", timeout=self.timeout)
        if r.status_code >= 400:
            raise APIError(r.status_code, r.text, self.base_url + "/v1/models")
        return [m["id"] for m in r.json().get("data", [])]

    def completion(self, prompt: str, *, max_tokens: int = 16, temperature: float = 0.0, **extra: JSONValue) -> dict[str, Any]:
        """``POST /v1/completions`` (greedy by default); ``extra`` goes into the request body."""
        body = {"model": self.model, "prompt": prompt, "max_tokens": max_tokens, "temperature": temperature, **extra}
        return dict(self._post("/v1/completions", body).json())

    def chat(self, content: str, *, max_tokens: int = 32, temperature: float = 0.0, **extra: JSONValue) -> dict[str, Any]:
        """``POST /v1/chat/completions`` with one user message (greedy by default); ``extra`` goes into the body."""
        body: JSONObject = {"model": self.model, "messages": [{"role": "user", "content": content}],
                "max_tokens": max_tokens, "temperature": temperature, **extra}
        return dict(self._post("/v1/chat/completions", body).json())

    def chat_raw(self, body: JSONObject) -> requests.Response:
        """POST without raising on 4xx/5xx (for tests that expect an error status)."""
        return self._post("/v1/chat/completions", {"model": self.model, **body}, check=False)

    def stream_completion(self, prompt: str, *, max_tokens: int = 16, **extra: JSONValue) -> Iterator[dict[str, Any]]:
        """A streamed greedy completion: each server-sent ``data:`` chunk, decoded, until ``[DONE]``."""
        body = {"model": self.model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0,
                "stream": True, **extra}
        url = self.base_url + "/v1/completions"
        with self.session.post(url, json=body, timeout=self.timeout, stream=True) as r:
            if r.status_code >= 400:
                raise APIError(r.status_code, r.text, url)
            for raw in r.iter_lines():
                line = raw.decode("utf-8", errors="replace").strip()
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    return
                yield json.loads(data)


def text_of(response: dict[str, Any]) -> str:
    """The first choice's text: the message content of a chat response, the text of a completion ("" if none)."""
    choice = response["choices"][0]
    if "message" in choice:
        return str(choice["message"].get("content") or "")
    return str(choice.get("text") or "")


def finish_reason(response: dict[str, Any]) -> str | None:
    """The first choice's ``finish_reason`` (``"stop"``, ``"length"``, ...), or None."""
    reason = response["choices"][0].get("finish_reason")
    return None if reason is None else str(reason)
