"""Check the capability table's claims against a release's own source, mechanically.

``capabilities.toml`` is what the plugin acts on for every release it cannot run here. This module reads
the Python files of a release (fetched by :mod:`wheel_sources`, never imported or run), takes their facts
(:mod:`source_facts`: flags and args fields, string ``Literal`` choices, enum members, ``envs.py`` variables
and defaults, request model fields, log format strings) and checks each claim of the table's row for that
release against them. Each claim gets a :class:`ClaimResult`: ``verified``, ``contradicted`` or
``not_checkable`` (what the source cannot show without running it), with the evidence (file and fact).

A contradiction is a bug in the table. ``vllm-compat capabilities check --report reports/capabilities`` runs
this over every release the table covers and writes the committed report; ``machine_verified`` in each table row lists the claims it verified.
"""

from __future__ import annotations

import re
import time
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TypedDict

from . import wheel_sources
from .capabilities import VersionCaps, capabilities
from .source_facts import SourceFacts

# The files a check reads, as globs over wheel paths (``*`` crosses ``/``).
PATTERNS = (
    "vllm/engine/arg_utils.py", "vllm/config.py", "vllm/config/*.py", "vllm/envs.py",
    "vllm/platforms/interface.py", "vllm/platforms/cpu.py", "vllm/platforms/cuda.py",
    "vllm/attention/selector.py", "vllm/attention/backends/registry.py", "vllm/v1/attention/backends/registry.py",
    "vllm/v1/attention/selector.py",
    "vllm/entrypoints/openai/*protocol*.py", "vllm/entrypoints/openai/api_server.py",
    "vllm/entrypoints/openai/cli_args.py", "vllm/entrypoints/cli/*.py",
    "vllm/executor/*.py", "vllm/worker/*.py", "vllm/engine/llm_engine.py",
    "vllm/v1/core/*.py", "vllm/v1/worker/*.py", "vllm/v1/executor/*.py", "vllm/v1/engine/*.py",
    "vllm/model_executor/guided_decoding/__init__.py", "vllm/sampling_params.py",
    "vllm/entrypoints/serve/middleware/*.py",
)

# The call sites of the API-key precedence (api_server.py 0.5-0.28, serve/middleware/register.py from 0.29).
API_KEY_PRECEDENCE: dict[str, str] = {
    "env": r"envs\.VLLM_API_KEY or args\.api_key",
    "flag": r"args\.api_key or \[?envs\.VLLM_API_KEY",
}
# engine_v0_when conditions with a call site in the V1 oracle / the CPU platform: (file, regex)
ENGINE_V0_MARKERS: dict[str, tuple[str, str]] = {
    "below_compute_capability": ("vllm/engine/arg_utils.py", r"Compute Capability < 8\.0"),
    "structured_backends": ("vllm/engine/arg_utils.py",
                            r"guided_decoding_backend(?:\.split\(':'\)\[0\])?\s*\\?\s*not in (?:get_args\(\s*GuidedDecodingBackendV1\)|"
                            r"SUPPORTED_GUIDED_DECODING)"),
    "cpu_v1_architectures": ("vllm/platforms/cpu.py", r"get_cpu_architecture\(\) == CpuArchEnum\.X86"),
}
V1_OPT_IN_ATTENTION_MARKER = r'if use_v1:\s*\n\s*logger\.info\("Using Flash Attention backend on V1 engine'
WHITESPACE_MARKER = r"disable_any_whitespace is only supported for xgrammar and guidance"

# The KV-cache log line of each ``kv_log_formats`` id, as a regex over the source's format strings (f-string
# values and %-placeholders read as "{}"); docs/capabilities.md has the lines they print.
KV_LOG_MARKERS: dict[str, str] = {
    "v0_gpu_blocks": r"# GPU blocks: ",
    "v0_device_blocks": r"# (?:\{\}|%s) blocks: ",
    "v0_max_concurrency": r"Maximum concurrency for ",
    "v1_gpu_blocks": r"# GPU blocks: ",
    "v1_kv_cache_size": r"KV cache size: ",
    "v1_max_concurrency": r"Maximum concurrency for ",
    "v1_available_memory": r"Available KV cache memory: ",
    "v1_kv_cache_size_concurrency": r"GPU KV cache size: .*Maximum concurrency for ",
    "v1_device_kv_cache_size_concurrency": r"(?:\{\}|%s) KV cache size: .*Maximum concurrency for ",
    "v0_cpu_blocks": r"^# CPU blocks: \{\}$",
    "cpu_kv_memory_set": r"(?:Explicitly|Auto) set \(\{\}/\{\}\) GiB for KV cache",
}



@dataclass(frozen=True)
class ClaimResult:
    claim: str  # e.g. "structured_backends", "attention_backends.cuda.FLASH_ATTN"
    status: str  # verified | contradicted | not_checkable
    claimed: str
    evidence: str

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


# --------------------------------------------------------------------------- the checks


def _r(claim: str, ok: bool | None, claimed: object, evidence: str) -> ClaimResult:
    status = "not_checkable" if ok is None else ("verified" if ok else "contradicted")
    return ClaimResult(claim, status, claimed if isinstance(claimed, str) else repr(claimed), evidence)


def _flag(facts: SourceFacts, claim: str, flag: str, claimed: str) -> ClaimResult:
    """A claim that holds when the release defines ``flag``."""
    ev = facts.has_flag(flag)
    return _r(claim, ev is not None, claimed, ev or f"no {flag}")


def check(caps: VersionCaps, facts: SourceFacts) -> list[ClaimResult]:
    """Every claim of ``caps`` (the table's row for the release) against the release's ``facts``."""
    out: list[ClaimResult] = []

    # entry point: the module exists
    module = caps.entry_point[1] if caps.entry_point[:1] == ("-m",) else None
    if module:
        path = module.replace(".", "/") + ".py"
        out.append(_r("entry_point", path in facts.names, module,
                      f"{path} in the wheel" if path in facts.names else f"no {path} in the wheel"))

    # engine: VLLM_USE_V1's default, else whether V1 exists
    v1_dir = any(n.startswith("vllm/v1/engine/") for n in facts.names)
    out.append(_r("v1_available", v1_dir == caps.v1_available, caps.v1_available,
                  "vllm/v1/engine/ in the wheel" if v1_dir else "no vllm/v1/engine/"))
    if "VLLM_USE_V1" in facts.envs and facts.envs["VLLM_USE_V1"] is not None:
        default = "v1" if facts.envs["VLLM_USE_V1"] == "1" else "v0"
        out.append(_r("engine", default == caps.engine, caps.engine,
                      f"vllm/envs.py: VLLM_USE_V1 defaults to {facts.envs['VLLM_USE_V1']!r}"))
    else:
        engine = "v1" if v1_dir else "v0"
        out.append(_r("engine", engine == caps.engine, caps.engine,
                      "vllm/envs.py has no VLLM_USE_V1 default; " + ("V1 only" if v1_dir else "no V1 engine")))

    # structured-output backends: the union of the choices lists / Literals that name them
    found: set[str] = set()
    where: list[str] = []
    for path, choices in facts.backend_choices:
        found |= set(choices)
        where.append(f"{path}: {choices}")
    found_b = {c for c in found if c in {"auto", "xgrammar", "guidance", "outlines", "lm-format-enforcer"}}
    claimed = set(caps.structured_backends)
    if found_b:
        diff = []
        if claimed - found_b:
            diff.append(f"not in the source: {sorted(claimed - found_b)}")
        if found_b - claimed:
            diff.append(f"in the source, not in the table: {sorted(found_b - claimed)}")
        out.append(_r("structured_backends", not diff, sorted(claimed),
                      "; ".join(diff + where[:3])))
    else:
        out.append(_r("structured_backends", None, sorted(claimed), "no literal backend choices found"))
    if facts.mixed_backend_literals:
        out.append(_r("structured_backends.choices_deterministic", None, "argparse choices",
                      f"{facts.mixed_backend_literals[0]}: the backend type is a Union of string Literals; the "
                      "accepted choices depend on the process's hash seed (see the failure KB "
                      "guided_backend_choices_vary_per_start)"))

    # how the server selects a backend
    server_flag = {"flag": "--guided-decoding-backend", "config_json": "--structured-outputs-config"}
    if caps.structured_server in server_flag:
        out.append(_flag(facts, "structured_server", server_flag[caps.structured_server], caps.structured_server))

    # the request shape
    want = "guided_json" if caps.structured_request == "guided_fields" else "structured_outputs"
    if facts.request_fields:
        ok = want in facts.request_fields
        out.append(_r("structured_request", ok, caps.structured_request,
                      f"{facts.request_fields[want]}: field {want}" if ok else
                      f"ChatCompletionRequest has no field {want}"))
    else:
        out.append(_r("structured_request", None, caps.structured_request, "no request model found"))

    # whitespace
    daw = caps.disable_any_whitespace
    if daw == "flag":
        out.append(_flag(facts, "disable_any_whitespace", "--guided-decoding-disable-any-whitespace", daw))
    elif daw == "config_json":
        ok = "disable_any_whitespace" in facts.so_config_fields
        out.append(_r("disable_any_whitespace", ok, daw,
                      f"{facts.so_config_fields.get('disable_any_whitespace')}: field disable_any_whitespace"
                      if ok else "no disable_any_whitespace field in the structured outputs config"))
    elif daw == "backend_suffix":
        ev = facts.string_matching(r"disable-any-whitespace")
        out.append(_r("disable_any_whitespace", ev is not None, daw, ev or "no 'disable-any-whitespace' string"))
    else:
        ev = facts.string_matching(r"disable[-_]any[-_]whitespace")
        out.append(_r("disable_any_whitespace", ev is None, daw,
                      f"the source has it: {ev}" if ev else "no 'disable_any_whitespace' in the source"))

    # attention backend selection
    has_env = "VLLM_ATTENTION_BACKEND" in facts.envs
    if caps.attention_selection == "env":
        out.append(_r("attention_selection", has_env, "env",
                      "vllm/envs.py: VLLM_ATTENTION_BACKEND" if has_env else "vllm/envs.py lacks VLLM_ATTENTION_BACKEND"))
    else:
        out.append(_flag(facts, "attention_selection", "--attention-backend", "flag"))
    if facts.envs:
        out.append(_r("attention_env_ignored", caps.attention_env_ignored != has_env, caps.attention_env_ignored,
                      "vllm/envs.py " + ("reads" if has_env else "does not read") + " VLLM_ATTENTION_BACKEND"))
    for device, backends in sorted(caps.attention_backends.items()):
        for b in backends:
            if not facts.attention_enum:
                out.append(_r(f"attention_backends.{device}.{b}", None, b, "no backend enum found"))
            elif b in facts.attention_enum and device == "cpu":
                ref = facts.cpu_attention_refs.get(b)
                out.append(_r(f"attention_backends.{device}.{b}", ref is not None, b,
                              f"{facts.attention_enum[b]}: enum member; {ref} selects it" if ref else
                              f"{facts.attention_enum[b]}: enum member, but no CPU selection code names it"))
            elif b in facts.attention_enum:
                out.append(_r(f"attention_backends.{device}.{b}", True, b, f"{facts.attention_enum[b]}: enum member"))
            else:
                out.append(_r(f"attention_backends.{device}.{b}", False, b,
                              f"not a member of the backend enum ({len(facts.attention_enum)} members)"))
    for b, cc in sorted(caps.attention_min_compute_capability.items()):
        out.append(_r(f"attention_min_compute_capability.{b}", None, cc,
                      "a runtime check in the platform code; read by hand"))

    # KV-cache log lines
    for fmt in caps.kv_log_formats:
        marker = KV_LOG_MARKERS.get(fmt)
        if marker is None:
            out.append(_r(f"kv_log_formats.{fmt}", None, fmt, "no source marker for this id"))
            continue
        ev = facts.string_matching(marker)
        out.append(_r(f"kv_log_formats.{fmt}", ev is not None, fmt, ev or f"no format string matching {marker!r}"))

    # environment variables the plugin sets
    if facts.envs:
        for claim, var in (("cpu_kv_env", caps.cpu_kv_env), ("api_key_env", caps.api_key_env)):
            if var:
                out.append(_r(claim, var in facts.envs, var,
                              f"vllm/envs.py {'reads' if var in facts.envs else 'does not read'} {var}"))
    if caps.log_requests_flag:
        out.append(_flag(facts, "log_requests_flag", caps.log_requests_flag, caps.log_requests_flag))
    out += _check_fallback_fields(caps, facts)
    return out


def _check_fallback_fields(caps: VersionCaps, facts: SourceFacts) -> list[ClaimResult]:
    """Engine choice, silent fallbacks, whitespace and API-key precedence: each claim against its call site."""
    out: list[ClaimResult] = []
    prec = caps.api_key_precedence
    ev = facts.source_matching(API_KEY_PRECEDENCE[prec])
    other = facts.source_matching(API_KEY_PRECEDENCE["flag" if prec == "env" else "env"])
    out.append(_r("api_key_precedence", None if ev is None and other is None else (ev is not None and other is None),
                  prec, ev or (f"the other order: {other}" if other else "no API-key check in the files read")))

    # the conditions only matter where V1 is the default (engine_for); V0-default rows carry them for later
    for cond, claimed in sorted(caps.engine_v0_when.items() if caps.engine == "v1" else ()):
        marker = ENGINE_V0_MARKERS.get(cond)
        if marker is None:
            out.append(_r(f"engine_v0_when.{cond}", None, claimed, "no single call site; read by hand"))
            continue
        ev = facts.source_matching(marker[1], marker[0])
        out.append(_r(f"engine_v0_when.{cond}", ev is not None, claimed, ev or f"no {marker[1]!r} in {marker[0]}"))

    for i, f in enumerate(caps.structured_fallbacks):
        claim = f"structured_fallbacks.{i}"
        claimed = f"{f.engine} {f.backend} --{f.when}--> {f.to}"
        if f.file not in facts.files:
            out.append(_r(claim, False, claimed, f"{f.file} is not in the wheel"))
            continue
        ev = facts.source_matching(f.marker, f.file, then=f'"{re.escape(f.to)}"')
        out.append(_r(claim, ev is not None, claimed, ev or f"no {f.marker!r} followed by '{f.to}' in {f.file}"))

    if caps.disable_any_whitespace_backends:
        ev = facts.string_matching(WHITESPACE_MARKER)  # a string literal split over two source lines
        out.append(_r("disable_any_whitespace_backends", ev is not None,
                      sorted(caps.disable_any_whitespace_backends), ev or "no whitespace backend check found"))
    if caps.request_whitespace_ignored:
        out.append(_r("request_whitespace_ignored", None, True,
                      "what the backends read is runtime behaviour; read by hand (0.15.0, 0.26.0)"))
    for what in caps.v1_opt_in_ignores:
        if what == "guided_decoding":
            v1 = [n for n in facts.files if n.startswith("vllm/v1/")]
            hits = [n for n in v1 if "guided" in facts.files[n]]
            out.append(_r("v1_opt_in_ignores.guided_decoding", bool(v1) and not hits, what,
                          f"{hits[0]} mentions 'guided'" if hits else
                          f"none of the {len(v1)} files read under vllm/v1/ mentions 'guided'"))
        elif what == "attention_env":
            ev = facts.source_matching(V1_OPT_IN_ATTENTION_MARKER, "vllm/platforms/cuda.py")
            out.append(_r("v1_opt_in_ignores.attention_env", ev is not None, what,
                          ev or "the CUDA platform does not return FlashAttention for V1 before the selection"))
        else:
            out.append(_r(f"v1_opt_in_ignores.{what}", None, what, "read by hand"))
    return out


def verified_claims(results: Iterable[ClaimResult]) -> list[str]:
    """The top-level claim names whose every check was verified (``attention_backends.cuda.X`` counts for
    ``attention_backends``)."""
    status: dict[str, set[str]] = {}
    for r in results:
        status.setdefault(r.claim.split(".")[0], set()).add(r.status)
    return sorted(c for c, s in status.items() if s == {"verified"})


# --------------------------------------------------------------------------- over releases: report and table


class ReleaseCheck(TypedDict, total=False):
    """One release's entry of the report (:func:`check_release`); ``error`` instead of the rest when its sources
    could not be read."""

    distribution: str
    version: str
    row: str  # the table row's range
    error: str
    wheel: str
    files_read: int
    fetched_bytes: int
    requests: int
    from_cache: bool
    seconds: float
    results: list[dict[str, str]]  # ClaimResult.as_dict() per claim


class CheckReport(TypedDict):
    """The committed report (``capability-check.json``)."""

    generated_at: str
    index: str
    summary: dict[str, int]
    releases: list[ReleaseCheck]


def check_release(distribution: str, version: str, cache_dir: Path, *,
                  index_url: str = wheel_sources.DEFAULT_INDEX) -> ReleaseCheck:
    """One release's entry of the report: its wheel, the table row, and every claim's result (or, when its
    sources cannot be read, ``error``)."""
    caps = capabilities(version)
    entry: ReleaseCheck = {"distribution": distribution, "version": version, "row": caps.range}
    t0 = time.monotonic()
    try:
        src = wheel_sources.fetch_sources(distribution, version, PATTERNS, cache_dir, index_url=index_url)
    except (wheel_sources.SourceUnavailable, OSError, zipfile.BadZipFile) as e:
        entry["error"] = str(e)
        return entry
    results = check(caps, SourceFacts.extract(src.names, src.files))
    entry.update({"wheel": src.filename, "files_read": len(src.files), "fetched_bytes": src.fetched_bytes,
                  "requests": src.requests, "from_cache": src.cached, "seconds": round(time.monotonic() - t0, 1),
                  "results": [r.as_dict() for r in results]})
    return entry


def summarize(entries: Sequence[ReleaseCheck]) -> dict[str, int]:
    counts = {"releases": len(entries), "unreadable": sum(1 for e in entries if "error" in e),
              "verified": 0, "contradicted": 0, "not_checkable": 0}
    for e in entries:
        for r in e.get("results", []):
            counts[r["status"]] += 1
    return counts


def render_markdown(report: CheckReport) -> str:
    """The committed report: a summary, then one table per release (claim, status, claimed, evidence)."""
    s = report["summary"]
    lines = [
        "# The capability table checked against each release's source",
        "",
        f"Generated by `vllm-compat capabilities check` on {report['generated_at']} from the wheels on "
        f"{report['index']} (range requests: only the archive directory and the files read are fetched).",
        "",
        f"{s['releases']} releases, {s['verified']} claims verified, **{s['contradicted']} contradicted**, "
        f"{s['not_checkable']} not checkable from the source, {s['unreadable']} releases unreadable.",
        "",
        "`not_checkable` claims (compute capability minimums, a CLI whose choices depend on the hash seed) stay "
        "read by hand; each table row's `machine_verified` lists the claims verified at every release of it.",
        "",
    ]
    for e in report["releases"]:
        lines.append(f"## {e['distribution']} {e['version']} (table row `{e['row']}`)")
        lines.append("")
        if "error" in e:
            lines += [f"Sources not readable: {e['error']}", ""]
            continue
        lines.append(f"`{e['wheel']}`: {e['files_read']} files read, {e['fetched_bytes'] / 1e6:.1f} MB in "
                     f"{e['requests']} range requests" + (" (when first fetched; cached since)." if
                                                          e.get("from_cache") else "."))
        lines.append("")
        lines.append("| claim | status | claimed | evidence |")
        lines.append("|---|---|---|---|")
        for r in e["results"]:
            ev = r["evidence"].replace("|", "\\|").replace("\n", " ")
            claimed = r["claimed"].replace("|", "\\|")
            lines.append(f"| `{r['claim']}` | {r['status']} | {claimed} | {ev} |")
        lines.append("")
    return "\n".join(lines)


def machine_verified_by_row(entries: Sequence[ReleaseCheck]) -> dict[str, list[str]]:
    """Row range -> the claims verified at every release checked in it (none when a release of the row could
    not be read)."""
    by_row: dict[str, list[ReleaseCheck]] = {}
    for e in entries:
        by_row.setdefault(e["row"], []).append(e)
    out: dict[str, list[str]] = {}
    for row, es in by_row.items():
        if any("error" in e for e in es):
            out[row] = []
            continue
        sets = [set(verified_claims(ClaimResult(**r) for r in e["results"])) for e in es]
        out[row] = sorted(set.intersection(*sets)) if sets else []
    return out


_ROW_RE = re.compile(r'^range = "(?P<range>[^"]+)"\n', re.M)


def update_table_text(text: str, verified: Mapping[str, list[str]]) -> str:
    """``capabilities.toml`` with each checked row's ``machine_verified = [...]`` line written (after its
    ``range`` line, replacing an earlier one); comments and everything else stay as they are."""
    text = re.sub(r"^machine_verified = \[[^\]]*\]\n", "", text, flags=re.M)

    def put(m: re.Match[str]) -> str:
        claims = verified.get(m.group("range"))
        if claims is None:
            return m.group(0)
        return m.group(0) + "machine_verified = [" + ", ".join(f'"{c}"' for c in claims) + "]\n"

    return _ROW_RE.sub(put, text)
