"""How a vLLM server process is launched: its argv and its environment (:class:`Runtime`), and the run's
backend that makes those runtimes (:class:`Backend`).

``VLLMServer`` (server.py) owns the process -- start, readiness, the process group, PR_SET_PDEATHSIG,
reaping, the hang watchdog -- and asks its runtime only what to run, with which environment, what the
runtime is (for records and messages) and what is left to clean up once the process is gone.

Runtimes: a provisioned environment's interpreter (:class:`VenvRuntime`), an interpreter the user named
with --vllm-python (:class:`InterpreterRuntime`), and the official Docker image
(``runtime.docker.DockerRuntime``, where everything about Docker lives). The unit tests' stand-in server
script is a runtime too (tests/unit/fake_runtime.py).

Backends, one per way of running vLLM and chosen once per run from the settings (``runtime.backends.backend_for``):
a provisioned environment per line (``runtime.backends.VenvBackend``), the --vllm-python interpreter
(``runtime.backends.InterpreterBackend``), the official Docker image (``runtime.docker.DockerBackend``). A backend
says where a line's environment comes from, how a model becomes something its servers load, whether stacks and
a CPU worker's core share apply, and builds each server's :class:`Runtime`.

Security defaults shared by all of them: the server binds 127.0.0.1 (Docker publishes on 127.0.0.1 only),
argv is a list (never a shell), and the API key travels in the environment, never on the command line
(except, as ``--api-key``, for a release that reads no key variable: ``api_key_env`` None).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from ..server_spec import ServerSpec

if TYPE_CHECKING:
    from ..compile_cache import ServerCache
    from ..environments import Provisioner, VLLMEnvironment
    from ..registry import ModelSpec
    from ..stacks import Stack

HOST = "127.0.0.1"
DEFAULT_ENTRY_POINT = ("-m", "vllm.entrypoints.openai.api_server")
# Offline and quiet by default; a spec's env (and the user's environment) can override.
BASE_ENV = {
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
    "PYTHONUNBUFFERED": "1",
    "TOKENIZERS_PARALLELISM": "false",
}
# vLLM's API server reads its key from here when --api-key is not given (api_server.py, every release in
# the capability table; the table's `api_key_env` names it per version).
API_KEY_ENV = "VLLM_API_KEY"
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
# Variables that choose vLLM behaviour per test; inherited from the shell they would apply to every server.
INHERITED_SELECTORS = ("VLLM_ATTENTION_BACKEND",)
# The pytest process's own settings, never a server's.
_DROPPED_ENV = ("PYTHONHOME", "VIRTUAL_ENV", "PYTEST_ADDOPTS", "PYTEST_XDIST_WORKER", "PYTEST_CURRENT_TEST")


class Runtime(Protocol):
    """What a server process runs and with which environment; ``VLLMServer`` does the rest.

    The server chooses the port and the API key, then calls :meth:`argv` and :meth:`env`; it adds its own
    marker (reaper.MARKER_ENV) to the environment and the key under :attr:`api_key_env`, after dropping any
    key the user's environment holds. :meth:`shown_env` is what a record shows (the server redacts it).
    """

    @property
    def kind(self) -> str:
        """A short name for records and messages: ``venv``, ``interpreter``, ``docker``."""
        ...

    @property
    def api_key_env(self) -> str | None:
        """The variable that hands the API key to the server process; None: ``--api-key`` on argv."""
        ...

    def argv(self, spec: ServerSpec, *, port: int, api_key: str) -> list[str]:
        """The command that serves ``spec`` on 127.0.0.1:``port``. ``api_key`` is only ever used when
        :attr:`api_key_env` is None (a release that reads no key variable)."""
        ...

    def env(self, spec: ServerSpec) -> dict[str, str]:
        """The process's environment, without the server's marker and API key."""
        ...

    def shown_env(self, spec: ServerSpec) -> dict[str, str]:
        """The variables a record shows (what the plugin set, not the whole inherited environment)."""
        ...

    def cleanup_argv(self) -> list[str]:
        """A command that cleans up after the process (Docker: remove the container), [] for none. The
        server runs it once the process group is gone; the guardian (reaper.py) runs it if the pytest
        process dies first."""
        ...

    def describe(self) -> dict[str, Any]:
        """What this runtime is, for records: ``{"kind": ..., ...}`` (no secrets)."""
        ...


def process_env(spec: ServerSpec, *, offline: bool, default_env: Mapping[str, str] | None = None,
                extra_env: Mapping[str, str] | None = None, keep_pythonpath: bool = False) -> dict[str, str]:
    """A server process's environment: the user's, less what must not leak into vLLM (see
    ``INHERITED_SELECTORS``), plus the plugin's defaults, ``default_env``, the spec's env (the registry entry's
    and the test's), then ``extra_env``."""
    env = dict(os.environ)
    # The pytest process's own venv must not leak into a provisioned environment's interpreter; an
    # external one (--vllm-python, e.g. vLLM installed with --target and PYTHONPATH) keeps PYTHONPATH.
    drop = list(_DROPPED_ENV)
    if not keep_pythonpath:
        drop.append("PYTHONPATH")
    # The plugin's own settings are not vLLM's: releases with --fail-on-environ-validation (0.26+) make
    # any unknown VLLM_* variable fatal, and older ones warn about each.
    drop += [k for k in env if k.startswith("VLLM_COMPAT_")]
    # A backend selector left in the shell would silently pick the backend of every server on releases that
    # honour it (and is an unknown variable, fatal with --fail-on-environ-validation, where it is gone,
    # vllm#50292): only a registry entry's env or a test sets it.
    drop += [k for k in INHERITED_SELECTORS if k in env]
    for k in drop:
        env.pop(k, None)
    env.update(BASE_ENV)
    if offline:
        env.update(OFFLINE_ENV)
    env.update(default_env or {})
    env.update(spec.env_dict())
    env.update(extra_env or {})
    return env


def shown_env(spec: ServerSpec, *, offline: bool, default_env: Mapping[str, str] | None = None,
              extra_env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The variables :func:`process_env` sets on top of the user's environment, in the same precedence."""
    offline_env = dict(OFFLINE_ENV) if offline else {}  # shown: a local model is served without the hub
    return offline_env | dict(default_env or {}) | dict(spec.env) | dict(extra_env or {})


@dataclass
class VenvRuntime:
    """A provisioned environment's interpreter: ``PYTHON -m vllm.entrypoints.openai.api_server --model ...``."""

    python: str | Path
    entry_point: tuple[str, ...] = DEFAULT_ENTRY_POINT  # the capability table's, per release
    api_key_env: str | None = API_KEY_ENV  # None: a release that reads no key variable (--api-key)
    offline: bool = True  # a local model directory: no hub access
    default_env: dict[str, str] = field(default_factory=dict)  # the spec's env wins over these (compile caches)
    extra_env: dict[str, str] = field(default_factory=dict)  # wins over the spec's env (a GPU lease's devices)
    extra_args: list[str] = field(default_factory=list)  # after the spec's serve args (a packed GPU's share)

    kind: ClassVar[str] = "venv"
    keep_pythonpath: ClassVar[bool] = False

    def argv(self, spec: ServerSpec, *, port: int, api_key: str) -> list[str]:
        """The entry point under this interpreter, then the spec's serve args and :attr:`extra_args`."""
        argv = [str(self.python), *self.entry_point, "--model", spec.model_path,
                "--served-model-name", spec.model, "--host", HOST, "--port", str(port)]
        if not self.api_key_env:
            argv += ["--api-key", api_key]
        if spec.trust_remote_code:
            argv.append("--trust-remote-code")
        return argv + list(spec.serve_args) + list(self.extra_args)

    def env(self, spec: ServerSpec) -> dict[str, str]:
        """The user's environment made safe for vLLM, then the defaults, the spec's env and :attr:`extra_env`."""
        return process_env(spec, offline=self.offline, default_env=self.default_env, extra_env=self.extra_env,
                           keep_pythonpath=self.keep_pythonpath)

    def shown_env(self, spec: ServerSpec) -> dict[str, str]:
        """What :meth:`env` sets on top of the user's environment."""
        return shown_env(spec, offline=self.offline, default_env=self.default_env, extra_env=self.extra_env)

    def cleanup_argv(self) -> list[str]:
        """None: the process group is everything there is."""
        return []

    def describe(self) -> dict[str, Any]:
        """The kind and the interpreter."""
        return {"kind": self.kind, "python": str(self.python)}


@dataclass
class InterpreterRuntime(VenvRuntime):
    """An interpreter the user named (--vllm-python), not one the plugin provisioned: it keeps the user's
    PYTHONPATH (e.g. vLLM installed with ``pip --target`` and found through PYTHONPATH)."""

    kind: ClassVar[str] = "interpreter"
    keep_pythonpath: ClassVar[bool] = True


class HostModels(Protocol):
    """What the session does on this host to make a model servable (session.CompatSession)."""

    def prepare_on_host(self, model: ModelSpec, env: VLLMEnvironment) -> str:
        """The directory of ``model`` for ``env``: a generated tiny model, a converted packaged model, a given
        path or a fetched hub snapshot, preflighted."""
        ...


class Backend(Protocol):
    """One way of running vLLM for the whole run, chosen once from the settings (``backends.backend_for``)."""

    @property
    def name(self) -> str:
        """A short name for messages: ``venv``, ``interpreter``, ``docker``."""
        ...

    @property
    def python(self) -> Path | None:
        """The interpreter the user named with --vllm-python; None when not given (versions come from the index)."""
        ...

    @property
    def installs_stacks(self) -> bool:
        """Whether a --vllm-with stack can be installed into this backend's environments."""
        ...

    @property
    def host_cores(self) -> bool:
        """Whether servers are processes on this host's cores, so a CPU worker's core share pins them."""
        ...

    def unavailable(self) -> str | None:
        """Why this backend cannot run here (a usage error), None when it can."""
        ...

    def environment(self, provisioner: Provisioner, distribution: str, version: str,
                    stack: Stack) -> VLLMEnvironment:
        """The environment of ``version`` with ``stack``; ProvisionError when there is none."""
        ...

    def model_path(self, model: ModelSpec, env: VLLMEnvironment, host: HostModels) -> str:
        """What a server of ``env`` is given as ``--model``: a local directory, or a hub id."""
        ...

    def runtime(self, spec: ServerSpec, env: VLLMEnvironment, *, devices: Sequence[int] | None, cache: ServerCache,
                extra_env: dict[str, str], extra_args: list[str], defaults: dict[str, str],
                entry_point: tuple[str, ...], api_key_env: str | None) -> Runtime:
        """How one server of ``spec`` is launched: its GPU lease's ``devices`` (None: no lease), its compile
        ``cache``, variables and serve args the session adds (``extra_env`` wins over the spec's env, ``defaults``
        do not), and the release's ``entry_point`` and API-key variable."""
        ...
