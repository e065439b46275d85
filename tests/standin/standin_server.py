"""A stand-in that impersonates vLLM's OpenAI-compatible server, to test the tests (README.md beside this file).

Launched exactly as the plugin launches vLLM (``PYTHON -m vllm.entrypoints.openai.api_server --model DIR
--served-model-name NAME --host 127.0.0.1 --port N ...``, the API key in ``VLLM_API_KEY``), it writes log lines
in vLLM's format to stdout and serves ``/health``, ``/v1/models``, completions and chat. It is standard library
only. ``STANDIN_MUTANTS`` (comma-separated, from the registry entry's ``env``) breaks it on purpose:

* ``late_error_log``: a structured-output request (``structured_outputs``/``guided_*``/``response_format``)
  gets HTTP 500 at once, and the engine's error line reaches the log ``STANDIN_LOG_DELAY_MS`` (300) later,
  as vLLM's EngineCore line can reach the plugin's log file after the client has its 500.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

PID = os.getpid()
_LOCK = threading.Lock()


def log(level: str, where: str, message: str, proc: str = "APIServer") -> None:
    """One line as vLLM writes it: ``(APIServer pid=N) INFO 12-05 10:00:00 [file.py:123] message``."""
    stamp = time.strftime("%m-%d %H:%M:%S")
    with _LOCK:
        sys.stdout.write(f"({proc} pid={PID}) {level} {stamp} [{where}] {message}\n")
        sys.stdout.flush()


def mutants() -> set[str]:
    return {m.strip() for m in os.environ.get("STANDIN_MUTANTS", "").split(",") if m.strip()}


STRUCTURED_FIELDS = ("structured_outputs", "guided_json", "guided_regex", "guided_choice", "guided_grammar",
                     "response_format")


class Handler(BaseHTTPRequestHandler):
    server_version = "standin"
    model_name = "model"
    api_key = ""

    def log_message(self, format: str, *args: Any) -> None:
        return

    def _send(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        log("INFO", "launcher.py:50", f'127.0.0.1 - "{self.command} {self.path} HTTP/1.1" {status}')

    def _authorized(self) -> bool:
        if self.api_key and self.headers.get("Authorization") != f"Bearer {self.api_key}":
            self._send(401, {"error": "Unauthorized"})
            return False
        return True

    def do_GET(self) -> None:
        if self.path == "/health":
            self._send(200, {})
        elif self.path == "/v1/models":
            if self._authorized():
                self._send(200, {"object": "list", "data": [{"id": self.model_name, "object": "model"}]})
        else:
            self._send(404, {"error": "Not Found"})

    def do_POST(self) -> None:
        if not self._authorized():
            return
        length = int(self.headers.get("Content-Length") or 0)
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except ValueError:
            self._send(400, {"error": "invalid JSON"})
            return
        if self.path == "/v1/chat/completions":
            self._chat(body)
        elif self.path == "/v1/completions":
            self._completion(body)
        else:
            self._send(404, {"error": "Not Found"})

    def _structured(self, body: dict[str, Any]) -> bool:
        return any(body.get(k) for k in STRUCTURED_FIELDS)

    def _chat(self, body: dict[str, Any]) -> None:
        rid = f"chatcmpl-{uuid.uuid4().hex[:16]}"
        if "late_error_log" in mutants() and self._structured(body):
            self._send(500, {"error": {"message": "Internal server error", "type": "InternalServerError",
                                       "code": 500}})
            delay = int(os.environ.get("STANDIN_LOG_DELAY_MS", "300")) / 1000

            def late() -> None:
                time.sleep(delay)
                log("ERROR", "scheduler.py:1911", f"Unexpected: grammar rejected tokens [2] for request {rid}. "
                    "Terminating request.", proc="EngineCore_DP0")
                log("ERROR", "serving.py:175", f"Request {rid} failed with an internal error during generation")

            threading.Thread(target=late, daemon=True).start()
            return
        text = "The capital of France is Paris."
        self._send(200, {"id": rid, "object": "chat.completion", "model": self.model_name,
                         "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                      "finish_reason": "stop"}],
                         "usage": {"prompt_tokens": 8, "completion_tokens": 7, "total_tokens": 15}})

    def _completion(self, body: dict[str, Any]) -> None:
        rid = f"cmpl-{uuid.uuid4().hex[:16]}"
        n = int(body.get("max_tokens") or 16)
        text = " ".join(["token"] * n)
        self._send(200, {"id": rid, "object": "text_completion", "model": self.model_name,
                         "choices": [{"index": 0, "text": text, "finish_reason": "length", "logprobs": None}],
                         "usage": {"prompt_tokens": 4, "completion_tokens": n, "total_tokens": 4 + n}})


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="vllm.entrypoints.openai.api_server (stand-in)")
    ap.add_argument("--model", required=True)
    ap.add_argument("--served-model-name", default=None)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--api-key", default=None)
    ns, rest = ap.parse_known_args(argv)
    Handler.model_name = ns.served_model_name or ns.model
    Handler.api_key = ns.api_key or os.environ.get("VLLM_API_KEY", "")
    log("INFO", "api_server.py:1900", "vLLM API server version 0.32.0+standin")
    log("INFO", "utils.py:250", f"non-default args: {{'model': {ns.model!r}, 'extra': {rest!r}}}")
    server = ThreadingHTTPServer((ns.host, ns.port), Handler)
    log("INFO", "api_server.py:1971", f"Starting vLLM API server 0 on http://{ns.host}:{ns.port}")
    log("INFO", "launcher.py:46", "Application startup complete.")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
