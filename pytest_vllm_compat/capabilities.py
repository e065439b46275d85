"""Per-version capabilities of vLLM, read from ``data/capabilities.toml``.

The table is data (one row per version range, each citing the vLLM source files it was read
from); this module only loads it and turns a row into argv / env / request fields.  It never
imports vllm.  See docs/capabilities.md for the fields and how to add a version.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

from packaging.version import InvalidVersion, Version

from .record_types import JSONObject, JSONValue

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

__all__ = [
    "FALLBACK_CONDITIONS",
    "STRUCTURED_KINDS",
    "StructuredFallback",
    "UnknownVersion",
    "Unsupported",
    "VersionCaps",
    "attention_selection",
    "capabilities",
    "engine_for",
    "expected_structured_backend",
    "fallback_conditions",
    "help_has_flag",
    "parse_version",
    "structured_fallback_path",
    "structured_request_fields",
    "structured_server_args",
    "table_versions",
]

STRUCTURED_KINDS: tuple[str, ...] = ("json", "regex", "choice", "grammar")
# Backends whose whitespace can be switched off (vllm/config/structured_outputs.py rejects
# disable_any_whitespace for any other backend; the 0.8.x suffix is read by these two only).
_WHITESPACE_BACKENDS = ("xgrammar", "guidance")


# What a ``structured_fallbacks`` entry's ``when`` may name besides a request kind (STRUCTURED_KINDS and
# "json_object"): request properties the caller knows (see :func:`fallback_conditions`), the platform, and
# "always" (the entry applies to every request of that backend).
FALLBACK_CONDITIONS: tuple[str, ...] = (
    "always", "json_object", "json_unsupported_features", "lark_grammar_unconvertible", "non_x86_cpu",
    "import_failure", "xgrammar_rejects", "mistral_tokenizer", "guidance_unsupported_json",
)
_X86 = ("x86", "x86_64", "amd64", "i386", "i686")


class UnknownVersion(ValueError):
    """Version string not parseable, or older than the table's first row."""


class Unsupported(Exception):
    """The version lacks what was asked for; the suite reports it as an "unsupported" result."""


@dataclass(frozen=True)
class StructuredFallback:
    """One place where a release hands a structured-output request to another backend than the one named
    (a ``structured_fallbacks`` entry of ``data/capabilities.toml``): on ``engine``, a request for ``backend``
    that meets ``when`` is served by ``to``. ``logged``: a warning names it ("... Falling back to use X
    instead."); otherwise nothing in the log or the response shows it. ``file``/``marker``: the call site, a
    regex over that file of the release's wheel (``vllm-compat capabilities check`` looks for it).
    ``json_keywords``: for ``json_unsupported_features``, the schema keywords the release's check looks for."""

    engine: str
    backend: str
    when: str
    to: str
    logged: bool
    file: str
    marker: str
    json_keywords: tuple[str, ...] = ()


@dataclass(frozen=True)
class VersionCaps:
    """What one vLLM version supports and how to drive it: the row of ``data/capabilities.toml`` whose range
    contains the version (see docs/capabilities.md)."""

    version: str
    range: str
    sources: tuple[str, ...]
    entry_point: tuple[str, ...]
    engine: str
    v1_available: bool
    structured_backends: tuple[str, ...]
    structured_server: str
    structured_request: str
    structured_request_kinds: tuple[str, ...]
    disable_any_whitespace: str
    attention_selection: str
    attention_env_ignored: bool
    attention_backends: dict[str, tuple[str, ...]]
    attention_min_compute_capability: dict[str, str]
    # backends that serve only a configuration the suites' plain models do not have -> what they need
    attention_backend_requires: dict[str, str]
    # conditions under which a release whose default engine is V1 runs V0 instead (see engine_for)
    engine_v0_when: dict[str, Any]
    kv_log_formats: tuple[str, ...]
    cpu_kv_env: str
    cpu_tensor_parallel: bool
    cpu_tp_env: dict[str, str]
    log_requests_flag: str | None
    notes: tuple[str, ...]
    api_key_env: str | None = "VLLM_API_KEY"
    # the claims `vllm-compat capabilities check` verified against the source of every release of the row;
    # every other field was read by hand
    machine_verified: tuple[str, ...] = ()
    # who wins when both --api-key and VLLM_API_KEY are set: "env" (0.5-0.8.4: `envs.VLLM_API_KEY or
    # args.api_key`) or "flag" (0.8.5 on: `args.api_key or envs.VLLM_API_KEY`)
    api_key_precedence: str = "flag"
    # silent structured-output fallbacks, in the order the release applies them (see expected_structured_backend)
    structured_fallbacks: tuple[StructuredFallback, ...] = ()
    # the backends the server accepts disable_any_whitespace for (any other, the default "auto" included, is a
    # startup error); empty: the release has no such check
    disable_any_whitespace_backends: tuple[str, ...] = ()
    # per-request disable_any_whitespace / whitespace_pattern are accepted and not applied
    request_whitespace_ignored: bool = False
    # what the opt-in V1 engine (VLLM_USE_V1=1 on a V0-default release) leaves out: "guided_decoding" (guided
    # requests answered unconstrained), "attention_env" (VLLM_ATTENTION_BACKEND not read)
    v1_opt_in_ignores: tuple[str, ...] = ()

    def __hash__(self) -> int:  # dict fields make the generated hash fail
        return hash((self.version, self.range))


# --------------------------------------------------------------------------- versions

def parse_version(version: str) -> tuple[int, int, int]:
    """``"0.6.4.post1"`` -> ``(0, 6, 4)`` (PEP 440, ``packaging.version``): the release's first three numbers,
    rc/dev/post/local suffixes dropped."""
    if not isinstance(version, str):
        raise UnknownVersion(f"not a version string: {version!r}")
    try:
        release = Version(version).release
    except InvalidVersion:
        raise UnknownVersion(f"cannot parse vLLM version {version!r}") from None
    major, minor, patch = (*release, 0, 0)[:3]
    return (major, minor, patch)


def _parse_range(spec: str) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    lo = hi = None
    for clause in spec.split(","):
        part = clause.strip()
        if part.startswith(">="):
            lo = parse_version(part[2:])
        elif part.startswith("<"):
            hi = parse_version(part[1:])
        else:
            raise ValueError(f"bad range clause {part!r} in {spec!r} (use '>=A,<B')")
    if lo is None or hi is None or not lo < hi:
        raise ValueError(f"bad range {spec!r}")
    return lo, hi


# --------------------------------------------------------------------------- loading


@dataclass(frozen=True)
class _Row:
    lo: tuple[int, int, int]
    hi: tuple[int, int, int]
    data: dict[str, Any]  # a TOML row, defaults merged in


def _load_text() -> str:
    return resources.files("pytest_vllm_compat").joinpath("data/capabilities.toml").read_text("utf-8")


@lru_cache(maxsize=1)
def _table() -> tuple[dict[str, Any], tuple[_Row, ...]]:
    doc = tomllib.loads(_load_text())
    defaults = doc.get("defaults", {})
    rows = []
    for raw in doc["row"]:
        data = {**defaults, **raw}
        lo, hi = _parse_range(data["range"])
        rows.append(_Row(lo, hi, data))
    rows.sort(key=lambda r: r.lo)
    return doc, tuple(rows)


def table_versions() -> list[str]:
    """The vLLM versions whose sources the table was checked against."""
    return list(_table()[0]["checked_versions"])


def _fmt(v: tuple[int, int, int]) -> str:
    return ".".join(map(str, v))


def _caps_from(version: str, data: dict[str, Any], extra_notes: tuple[str, ...] = ()) -> VersionCaps:
    return VersionCaps(
        version=version,
        range=data["range"],
        sources=tuple(data["sources"]),
        entry_point=tuple(data["entry_point"]),
        engine=data["engine"],
        v1_available=bool(data["v1_available"]),
        structured_backends=tuple(data["structured_backends"]),
        structured_server=data["structured_server"],
        structured_request=data["structured_request"],
        structured_request_kinds=tuple(data["structured_request_kinds"]),
        disable_any_whitespace=data["disable_any_whitespace"],
        attention_selection=data["attention_selection"],
        attention_env_ignored=bool(data["attention_env_ignored"]),
        attention_backends={k: tuple(v) for k, v in data["attention_backends"].items()},
        attention_min_compute_capability=dict(data.get("attention_min_compute_capability", {})),
        attention_backend_requires=dict(data.get("attention_backend_requires", {})),
        engine_v0_when=dict(data.get("engine_v0_when", {})),
        kv_log_formats=tuple(data["kv_log_formats"]),
        cpu_kv_env=data["cpu_kv_env"],
        cpu_tensor_parallel=bool(data["cpu_tensor_parallel"]),
        cpu_tp_env=dict(data.get("cpu_tp_env", {})),
        log_requests_flag=data.get("log_requests_flag") or None,
        notes=tuple(data.get("notes", ())) + extra_notes,
        api_key_env=data.get("api_key_env") or None,
        machine_verified=tuple(data.get("machine_verified", ())),
        api_key_precedence=data["api_key_precedence"],
        structured_fallbacks=tuple(_fallback(f) for f in data.get("structured_fallbacks", ())),
        disable_any_whitespace_backends=tuple(data.get("disable_any_whitespace_backends", ())),
        request_whitespace_ignored=bool(data.get("request_whitespace_ignored", False)),
        v1_opt_in_ignores=tuple(data.get("v1_opt_in_ignores", ())),
    )


def _fallback(raw: Mapping[str, Any]) -> StructuredFallback:
    return StructuredFallback(
        engine=raw["engine"], backend=raw["backend"], when=raw["when"], to=raw["to"], logged=bool(raw["logged"]),
        file=raw["file"], marker=raw["marker"], json_keywords=tuple(raw.get("json_keywords", ())),
    )


def capabilities(version: str) -> VersionCaps:
    """The capabilities of ``version`` (the row whose range contains it).

    A version newer than the last row gets the last row, with a note saying so; a version
    older than the first row raises :class:`UnknownVersion`.
    """
    key = parse_version(version)
    _, rows = _table()
    if key < rows[0].lo:
        raise UnknownVersion(f"vLLM {version} is older than the table's first row ({rows[0].data['range']})")
    for row in rows:
        if row.lo <= key < row.hi:
            return _caps_from(version, row.data)
    last = rows[-1]
    note = (
        f"vLLM {version} is newer than the table (checked up to {table_versions()[-1]}); "
        f"assuming the last row {last.data['range']}."
    )
    return _caps_from(version, last.data, (note,))


# --------------------------------------------------------------------------- adapters


def engine_for(caps: VersionCaps, device: str | None = None, *, compute_capability: str | None = None,
               attention_backend: str | None = None, structured_backend: str | None = None,
               cpu_arch: str | None = None) -> str:
    """The engine a server of this release runs under these conditions: the row's ``engine``, unless one of its
    ``engine_v0_when`` conditions holds (0.8.x: the CPU platform; 0.8.x-0.9.x: a GPU below compute capability
    8.0, an attention backend or a structured-output backend V1 does not have; 0.9.x: a CPU that is not x86,
    ``cpu_v1_architectures``). ``cpu_arch`` is ``platform.machine()`` of the server's host. Unknown conditions
    (None) do not count."""
    when = caps.engine_v0_when
    if caps.engine != "v1" or not when:
        return caps.engine
    if device is not None and device in when.get("devices", ()):
        return "v0"
    v1_archs = when.get("cpu_v1_architectures")
    if device == "cpu" and v1_archs and cpu_arch is not None and _arch(cpu_arch) not in v1_archs:
        return "v0"
    below = when.get("below_compute_capability")
    if below and compute_capability and parse_version(compute_capability) < parse_version(below):
        return "v0"
    if attention_backend is not None and attention_backend in when.get("attention_backends", ()):
        return "v0"
    if structured_backend is not None and structured_backend in when.get("structured_backends", ()):
        return "v0"
    return "v1"


def _arch(machine: str) -> str:
    """``platform.machine()`` -> the name vLLM's CpuArchEnum uses for the families the table names."""
    m = machine.lower()
    if m in _X86:
        return "x86"
    if m in ("aarch64", "arm64") or m.startswith("arm"):
        return "arm"
    if m.startswith(("ppc", "powerpc")):
        return "powerpc"
    return m


def fallback_conditions(caps: VersionCaps, request_kind: str, *, schema: object = None,
                        cpu_arch: str | None = None) -> frozenset[str]:
    """The ``when`` conditions of the release's fallback entries that a request of ``request_kind`` meets, as far
    as they can be known without vLLM: the request kind itself, "json_unsupported_features" when the JSON
    ``schema`` uses a keyword an entry lists (anywhere in the schema: the releases' checks look at nested
    objects too), "non_x86_cpu" from ``cpu_arch`` (``platform.machine()``). Conditions only the server can
    judge (a failed import, a Lark grammar that does not convert, xgrammar rejecting a request under 'auto')
    are left for the caller to add."""
    found = {request_kind}
    if cpu_arch is not None and _arch(cpu_arch) != "x86":
        found.add("non_x86_cpu")
    if request_kind == "json" and isinstance(schema, Mapping):
        keys = _schema_keys(schema)
        if any(f.when == "json_unsupported_features" and keys & set(f.json_keywords)
               for f in caps.structured_fallbacks):
            found.add("json_unsupported_features")
    return frozenset(found)


def _schema_keys(node: object) -> set[str]:
    out: set[str] = set()
    if isinstance(node, Mapping):
        for k, v in node.items():
            out.add(str(k))
            out |= _schema_keys(v)
    elif isinstance(node, list):
        for v in node:
            out |= _schema_keys(v)
    return out


def expected_structured_backend(caps: VersionCaps, engine: str, requested_backend: str, request_kind: str,
                                conditions: Collection[str] = ()) -> str | None:
    """The backend that should serve a structured-output request of ``request_kind`` ("json", "regex",
    "choice", "grammar", "json_object") sent to a server of this release running ``engine`` with
    ``requested_backend``, meeting ``conditions`` (see :func:`fallback_conditions`; the request kind always
    counts).

    The release's ``structured_fallbacks`` are applied in order, each to the backend the previous ones left,
    as the release's own code does (V0 0.6.5-0.9.x: ``maybe_backend_fallback``; V1 0.8.5 on: only the server
    backend 'auto'). ``None``: the engine applies no structured output at all (opt-in V1 before 0.8; the
    request is answered unconstrained). A backend the release does not have raises :class:`Unsupported`."""
    if engine not in ("v0", "v1"):
        raise ValueError(f"unknown engine {engine!r} (expected 'v0' or 'v1')")
    if request_kind not in (*STRUCTURED_KINDS, "json_object"):
        raise ValueError(f"unknown structured-output request kind {request_kind!r}")
    unknown = set(conditions) - set(FALLBACK_CONDITIONS) - set(STRUCTURED_KINDS)
    if unknown:
        raise ValueError(f"unknown fallback condition(s) {sorted(unknown)}; known: {FALLBACK_CONDITIONS}")
    if requested_backend not in caps.structured_backends:
        raise Unsupported(f"vLLM {caps.version} has no structured-output backend {requested_backend!r} "
                          f"(has: {', '.join(caps.structured_backends)})")
    if engine == "v1" and caps.engine == "v0" and "guided_decoding" in caps.v1_opt_in_ignores:
        return None
    met = {request_kind, "always", *conditions}
    backend = requested_backend
    for f in caps.structured_fallbacks:
        if f.engine == engine and f.backend == backend and f.when in met and _after_rejection(f, met):
            backend = f.to
    if backend == "auto" and any(f.engine == engine and f.backend == "auto" for f in caps.structured_fallbacks):
        return "xgrammar"  # V1 'auto' tries xgrammar first; the entries name when it does not keep it
    return backend


def _after_rejection(f: StructuredFallback, met: Collection[str]) -> bool:
    """V1 'auto' looks at the tokenizer and guidance's JSON support only once xgrammar rejected the request."""
    return f.when not in ("mistral_tokenizer", "guidance_unsupported_json") or "xgrammar_rejects" in met


def structured_fallback_path(caps: VersionCaps, engine: str, requested_backend: str, request_kind: str,
                             conditions: Collection[str] = ()) -> tuple[StructuredFallback, ...]:
    """The fallback entries :func:`expected_structured_backend` applies, in order (the evidence for its answer)."""
    met = {request_kind, "always", *conditions}
    backend, used = requested_backend, []
    for f in caps.structured_fallbacks:
        if f.engine == engine and f.backend == backend and f.when in met and _after_rejection(f, met):
            used.append(f)
            backend = f.to
    return tuple(used)


def structured_server_args(caps: VersionCaps, backend: str, disable_any_whitespace: bool = True) -> list[str]:
    """argv that makes the server use ``backend`` for structured outputs.

    Whitespace is switched off only where the version can do it, and only for xgrammar and
    guidance (the server rejects it for other backends); elsewhere the flag is left out.
    """
    if caps.structured_server == "none" or backend not in caps.structured_backends:
        raise Unsupported(
            f"vLLM {caps.version} offers no server-side structured-output backend {backend!r} "
            f"(has: {', '.join(caps.structured_backends) or 'none'})"
        )
    ws = disable_any_whitespace and backend in _WHITESPACE_BACKENDS
    if caps.structured_server == "config_json":
        cfg: dict[str, object] = {"backend": backend}
        if ws and caps.disable_any_whitespace == "config_json":
            cfg["disable_any_whitespace"] = True
        return ["--structured-outputs-config", json.dumps(cfg)]
    if caps.structured_server == "flag":
        value = backend
        if ws and caps.disable_any_whitespace == "backend_suffix":
            value = f"{backend}:disable-any-whitespace"
        args = ["--guided-decoding-backend", value]
        if ws and caps.disable_any_whitespace == "flag":
            args.append("--guided-decoding-disable-any-whitespace")
        return args
    raise ValueError(f"unknown structured_server mode {caps.structured_server!r} for {caps.range}")


def structured_request_fields(
    caps: VersionCaps, kind: str, value: JSONValue, backend: str | None = None
) -> JSONObject:
    """Extra body fields for a chat/completions request asking for structured output ``kind``.

    ``backend`` is sent per request only on V0-default versions (< 0.8); V1 rejects a request
    backend that differs from the server's, and 0.12+ has no per-request backend at all.
    """
    if kind not in STRUCTURED_KINDS:
        raise ValueError(f"unknown structured-output kind {kind!r}; expected one of {STRUCTURED_KINDS}")
    if kind not in caps.structured_request_kinds:
        raise Unsupported(f"vLLM {caps.version} has no {kind!r} structured-output request field")
    if backend is not None and backend not in caps.structured_backends:
        raise Unsupported(f"vLLM {caps.version} has no structured-output backend {backend!r}")
    if caps.structured_request == "guided_fields":
        fields: JSONObject = {f"guided_{kind}": value}
        if backend is not None and engine_for(caps, structured_backend=backend) == "v0":
            fields["guided_decoding_backend"] = backend
        return fields
    if caps.structured_request == "structured_outputs":
        return {"structured_outputs": {kind: value}}
    raise ValueError(f"unknown structured_request mode {caps.structured_request!r} for {caps.range}")


def attention_selection(caps: VersionCaps, backend: str, device: str) -> tuple[list[str], dict[str, str]]:
    """(extra argv, extra env) selecting attention ``backend`` on ``device`` ("cpu"/"cuda")."""
    offered = caps.attention_backends.get(device)
    if offered is None:
        raise Unsupported(f"vLLM {caps.version}: no attention backends known for device {device!r}")
    if backend not in offered:
        raise Unsupported(
            f"vLLM {caps.version} has no {backend!r} attention backend on {device} (has: {', '.join(offered)})"
        )
    needs = caps.attention_backend_requires.get(backend)
    if needs:
        raise Unsupported(f"vLLM {caps.version}: the {backend} attention backend needs {needs}")
    return attention_selector(caps, backend)


def attention_selector(caps: VersionCaps, name: str) -> tuple[list[str], dict[str, str]]:
    """(extra argv, extra env) that name attention backend ``name`` the way the version selects one, whether
    or not the version has it (:func:`attention_selection` checks that first)."""
    if caps.attention_selection == "flag":
        return ["--attention-backend", name], {}
    if caps.attention_selection == "env":
        return [], {"VLLM_ATTENTION_BACKEND": name}
    raise ValueError(f"unknown attention_selection mode {caps.attention_selection!r} for {caps.range}")


def help_has_flag(help_text: str, flag: str) -> bool:
    """True if ``--help`` output lists ``flag`` (``"--x"``, ``"x"``, ``"--x=VALUE"`` all accepted).

    Handles "--flag, -x" and "-x, --flag" forms, usage lines ("[--flag FLAG]"), "--flag=VALUE",
    and prose where argparse/textwrap broke a flag at a hyphen across lines.
    """
    name = flag.strip().split("=", 1)[0].strip()
    if not name:
        return False
    if not name.startswith("-"):
        name = "--" + name
    pattern = re.compile(r"(?<![\w-])" + re.escape(name) + r"(?![\w-])")
    if pattern.search(help_text):
        return True
    # Re-join flags that were wrapped at a hyphen ("--structured-outputs-\n      config").
    joined = re.sub(r"(?<=[\w])-\n[ \t]*(?=[\w])", "-", help_text)
    return bool(pattern.search(joined))
