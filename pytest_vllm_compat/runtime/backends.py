"""The local backends (a provisioned environment per line, the --vllm-python interpreter) and the one place the
run's backend is chosen from the settings (:func:`backend_for`); Docker's is ``runtime.docker.DockerBackend``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from ..compile_cache import ServerCache
from ..environments import Provisioner, ProvisionError, VLLMEnvironment
from ..registry import ModelSpec
from ..server_spec import ServerSpec
from ..stacks import Stack
from . import Backend, HostModels, InterpreterRuntime, Runtime, VenvRuntime
from .docker import DockerBackend


@dataclass(frozen=True)
class VenvBackend:
    """A provisioned environment per line (uv or pip), models prepared on this host, servers run by the
    environment's interpreter."""

    name: ClassVar[str] = "venv"
    installs_stacks: ClassVar[bool] = True
    host_cores: ClassVar[bool] = True

    @property
    def python(self) -> Path | None:
        return None

    def unavailable(self) -> str | None:
        return None

    def environment(self, provisioner: Provisioner, distribution: str, version: str,
                    stack: Stack) -> VLLMEnvironment:
        if version == "current":
            raise ProvisionError("--vllm=current needs --vllm-python=PATH (an interpreter that has vLLM)")
        return provisioner.ensure(distribution, version, stack)

    def model_path(self, model: ModelSpec, env: VLLMEnvironment, host: HostModels) -> str:
        return host.prepare_on_host(model, env)

    def runtime(self, spec: ServerSpec, env: VLLMEnvironment, *, devices: Sequence[int] | None, cache: ServerCache,
                extra_env: dict[str, str], extra_args: list[str], defaults: dict[str, str],
                entry_point: tuple[str, ...], api_key_env: str | None) -> Runtime:
        """The environment's interpreter: a provisioned venv's, or (an environment without a directory of its
        own) an external one, which keeps PYTHONPATH. The lease's devices are in ``extra_env``."""
        kind = InterpreterRuntime if env.path is None else VenvRuntime
        return kind(env.python, entry_point=entry_point, api_key_env=api_key_env,
                    offline=Path(spec.model_path).is_dir(), default_env={**defaults, **cache.env},
                    extra_env=extra_env, extra_args=extra_args)


@dataclass(frozen=True)
class InterpreterBackend(VenvBackend):
    """--vllm-python: every line is that interpreter's vLLM; nothing is provisioned and no stack installed."""

    interpreter: Path

    name: ClassVar[str] = "interpreter"
    installs_stacks: ClassVar[bool] = False

    @property
    def python(self) -> Path | None:
        return self.interpreter

    def environment(self, provisioner: Provisioner, distribution: str, version: str,
                    stack: Stack) -> VLLMEnvironment:
        return provisioner.from_python(self.interpreter)


# --vllm-runtime's choices (options.py) -> the backend, given --vllm-python (None: not given).
_BACKENDS: dict[str, Callable[[Path | None], Backend]] = {
    "venv": lambda python: VenvBackend() if python is None else InterpreterBackend(python),
    "docker": lambda python: DockerBackend(python=python),  # the image wins over --vllm-python
}


def backend_for(runtime: str, python: Path | None = None) -> Backend:
    """The run's backend from --vllm-runtime and --vllm-python; ValueError for an unknown runtime."""
    try:
        make = _BACKENDS[runtime]
    except KeyError:
        raise ValueError(f"unknown vLLM runtime {runtime!r}: one of {', '.join(_BACKENDS)}") from None
    return make(python)
