"""Run a vLLM server in the official ``vllm/vllm-openai`` image instead of a provisioned venv.

Everything about Docker lives here: :class:`DockerBackend` (a ``runtime.Backend``: the run's choice),
:class:`DockerRuntime` (a ``runtime.Runtime``: one server), the image as the environment
(:func:`docker_environment`), the engine check. Only argv is built (no shell anywhere: every
argument is its own list element); ``VLLMServer`` starts and stops the process like any other server
command. ``docker run --rm --init`` in the foreground makes the docker client's lifetime the container's;
the runtime's cleanup command (``docker rm -f NAME``) removes it when the client is gone but the container
is not.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ..compile_cache import ServerCache
from ..environments import Provisioner, VLLMEnvironment
from ..registry import ModelDirError, ModelSpec, preflight_model_dir
from ..server_spec import ServerSpec
from ..stacks import Stack
from . import API_KEY_ENV, HostModels, process_env, shown_env

DEFAULT_REPOSITORY = "vllm/vllm-openai"
DEFAULT_ENTRYPOINT = ("python3", "-m", "vllm.entrypoints.openai.api_server")
CONTAINER_HF_CACHE = "/root/.cache/huggingface"
CONTAINER_COMPILE_CACHE = "/vllm-compat-cache"  # where the host's compile-cache root is mounted
REDACTED = "***"
DOCKER_INFO_TIMEOUT_S = 20.0

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Inside the container the devices given to --gpus are renumbered from 0, so the host's
# CUDA_VISIBLE_DEVICES (as Lease.env() sets it) would point at the wrong, or no, devices.
_HOST_ONLY_ENV = ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER")


def image_for(version: str, repository: str = DEFAULT_REPOSITORY) -> str:
    """``"0.6.6"`` -> ``"vllm/vllm-openai:v0.6.6"`` (release tags carry a ``v``; ``latest``/``nightly`` do not)."""
    v = version.strip()
    if not v:
        raise ValueError("empty vLLM version")
    tag = v if v.startswith("v") or not v[0].isdigit() else "v" + v
    return f"{repository}:{tag}"


def build_docker_argv(*, version: str, model: str, container_model: str | None, port: int, api_key_env: str,
                      serve_args: Sequence[str], env: Mapping[str, str], devices: Sequence[int] | None,
                      hf_cache: Path | None, name: str, model_dir: Path | None = None,
                      entrypoint: Sequence[str] = DEFAULT_ENTRYPOINT, docker: str = "docker",
                      extra_docker_args: Sequence[str] = (), repository: str = DEFAULT_REPOSITORY) -> list[str]:
    """The ``docker run`` argv for one vLLM server.

    ``devices`` are nvidia-smi indices (``Lease.indices``); ``None`` or empty gives no GPU at all
    (``--gpus all`` is never used: it would ignore the lease). ``model_dir`` is mounted read-only at
    ``container_model`` (default ``/models/<dir name>``) and served under the name ``model``, so
    clients use the same model name as with the venv runtime. ``env`` values and the API key end
    up in argv: log only :func:`redact_argv` of it.
    """
    if not _NAME_RE.match(name):
        raise ValueError(f"invalid container name {name!r}: use letters, digits, '_', '.', '-'")
    if not 0 < port < 65536:
        raise ValueError(f"invalid port {port}")
    argv = [docker, "run", "--rm", "--name", name, "--init",
            # PyTorch shares tensors between tensor-parallel workers through /dev/shm; the
            # container default (64 MiB) makes NCCL fail (NCCL needs a larger /dev/shm, see the vLLM Docker docs).
            "--ipc=host",
            # The server listens on 0.0.0.0 *inside* the container: that is the container's own
            # network interface, and the only one Docker's port forwarding can reach (a server on
            # the container's 127.0.0.1 is unreachable from the host). The host side publishes
            # the port on 127.0.0.1 only, so the server is not exposed to the network.
            "-p", f"127.0.0.1:{port}:{port}"]
    if devices:
        ids = ",".join(str(int(d)) for d in devices)
        # No shell strips quotes here, so the quotes are part of the value: Docker parses
        # --gpus as CSV, and an unquoted "device=0,1" splits into "device=0" and a bare "1"
        # ("cannot set both Count and DeviceIDs on device request").
        argv += ["--gpus", f'"device={ids}"']
    for key, value in env.items():
        if not _ENV_KEY_RE.match(key):
            raise ValueError(f"invalid environment variable name {key!r}")
        if devices and key in _HOST_ONLY_ENV:
            continue
        argv += ["-e", f"{key}={value}"]
    # The API key: only the variable's name is on the command line; docker copies its value from the
    # environment of the `docker` process (VLLMServer.build_env puts it there).
    argv += ["-e", api_key_env]
    if hf_cache is not None:
        argv += ["-v", f"{Path(hf_cache).expanduser().absolute()}:{CONTAINER_HF_CACHE}"]
    served_as = model
    if model_dir is not None:
        # -v needs an absolute host path: a relative one would be taken as a named volume.
        target = container_model or f"/models/{Path(model_dir).name}"
        argv += ["-v", f"{Path(model_dir).expanduser().absolute()}:{target}:ro"]
        served_as = target
    elif container_model:
        served_as = container_model
    argv += list(extra_docker_args)
    if entrypoint:
        argv += ["--entrypoint", entrypoint[0], image_for(version, repository), *entrypoint[1:]]
    else:
        argv += [image_for(version, repository)]
    argv += ["--host", "0.0.0.0", "--port", str(port), "--model", served_as]
    if served_as != model and "--served-model-name" not in serve_args:
        argv += ["--served-model-name", model]
    argv += list(serve_args)
    return argv


def redact_argv(argv: Sequence[str], secrets: Sequence[str] = ()) -> list[str]:
    """A copy of a docker argv safe to log: every ``-e K=V`` value and the API key become ``***``."""
    from ..redact import redact_argv as _redact_argv

    return _redact_argv(argv, secrets, mask_all_env=True)


def docker_available(docker: str = "docker", timeout: float = DOCKER_INFO_TIMEOUT_S) -> str | None:
    """``None`` when a Docker engine answers ``docker info``, else why not (a skip reason)."""
    try:
        proc = subprocess.run([docker, "info", "--format", "{{.ServerVersion}}"], capture_output=True,
                              text=True, timeout=timeout, check=False)
    except FileNotFoundError:
        return f"no Docker engine: {docker!r} is not installed (not found on PATH)"
    except subprocess.TimeoutExpired:
        return f"no Docker engine: '{docker} info' did not answer within {timeout:g} s"
    except OSError as e:
        return f"no Docker engine: cannot run {docker!r}: {e}"
    version = proc.stdout.strip()
    if proc.returncode != 0 or not version:
        lines = [ln.strip() for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
        detail = lines[-1] if lines else f"exit status {proc.returncode}"
        return f"no Docker engine: {detail}"
    return None


def container_cache_env(host_cache_env: Mapping[str, str]) -> dict[str, str]:
    """The compile-cache variables (compile_cache.cache_env of a host root) as seen inside the container,
    where that root is mounted at :data:`CONTAINER_COMPILE_CACHE`."""
    return {k: f"{CONTAINER_COMPILE_CACHE}/{Path(v).name}" for k, v in host_cache_env.items()}


def stop_container_argv(name: str, docker: str = "docker") -> list[str]:
    """``docker rm -f NAME``: stops and removes the container (a no-op error if it is already gone)."""
    return [docker, "rm", "-f", name]


def docker_environment(version: str) -> VLLMEnvironment:
    """The environment of a release under Docker: the official image; nothing is installed on the host."""
    return VLLMEnvironment(name=f"docker-vllm-openai-{version}", distribution="vllm", version=version,
                           python=Path("docker"), path=None,
                           provenance={"packages": {"vllm": version}, "image": image_for(version)})


@dataclass
class DockerRuntime:
    """One server in a ``docker run`` of the official image (a ``runtime.Runtime``).

    The container gets ``container_env`` (``-e``), the lease's ``devices`` (``--gpus``), the model
    directory read-only and the Hugging Face cache; the docker client process gets the same environment a
    venv server would (``process_env``), from which ``-e VLLM_API_KEY`` copies the key into the container.
    """

    version: str
    name: str  # the container's
    container_env: dict[str, str] = field(default_factory=dict)
    devices: list[int] | None = None  # nvidia-smi indices of the lease; None: no GPU
    hf_cache: Path | None = None
    model_dir: Path | None = None  # a local model, mounted read-only; None: a hub id fetched in the container
    extra_docker_args: list[str] = field(default_factory=list)  # docker options (the compile-cache mount)
    extra_args: list[str] = field(default_factory=list)  # after the spec's serve args (a packed GPU's share)
    offline: bool = True  # the client's environment (and what records show), as for a venv server
    api_key_env: str = API_KEY_ENV
    docker: str = "docker"

    kind: ClassVar[str] = "docker"

    @classmethod
    def for_spec(cls, spec: ServerSpec, *, devices: Sequence[int] | None = None, cache_root: Path | None = None,
                 cache_env: Mapping[str, str] | None = None, extra_args: Sequence[str] = (),
                 hf_cache: Path | None = None) -> DockerRuntime:
        """The runtime of one server of ``spec``: a fresh container name; a local model directory mounted; the
        compile-cache root (``cache_root``, with the variables ``cache_env`` of compile_cache.ServerCache)
        mounted and its variables pointed inside; ``hf_cache`` (default ~/.cache/huggingface, if it exists)."""
        name = f"vllm-compat-{spec.key[-8:]}-{int(time.time() * 1000) % 10**8}"
        if hf_cache is None:
            home_cache = Path.home() / ".cache" / "huggingface"
            hf_cache = home_cache if home_cache.is_dir() else None
        local = Path(spec.model_path).is_dir()
        mounts: list[str] = []
        env_in_container = spec.env_dict()
        if cache_root is not None:
            # The kept (or fresh) cache root is mounted into the container and the variables point there.
            mounts = ["-v", f"{cache_root}:{CONTAINER_COMPILE_CACHE}"]
            env_in_container = {**container_cache_env(cache_env or {}), **env_in_container}
        return cls(version=spec.version, name=name, container_env=env_in_container,
                   devices=list(devices) if devices else None, hf_cache=hf_cache,
                   model_dir=Path(spec.model_path) if local else None, extra_docker_args=mounts,
                   extra_args=list(extra_args), offline=local)

    @property
    def image(self) -> str:
        return image_for(self.version)

    def argv(self, spec: ServerSpec, *, port: int, api_key: str) -> list[str]:
        # api_key is not used: the key always travels as -e VLLM_API_KEY, from the client's environment.
        return build_docker_argv(
            version=self.version, model=spec.model, container_model=None, port=port, api_key_env=self.api_key_env,
            serve_args=list(spec.serve_args) + list(self.extra_args), env=self.container_env, devices=self.devices,
            hf_cache=self.hf_cache, name=self.name, model_dir=self.model_dir,
            extra_docker_args=self.extra_docker_args, docker=self.docker)

    def env(self, spec: ServerSpec) -> dict[str, str]:
        return process_env(spec, offline=self.offline)

    def shown_env(self, spec: ServerSpec) -> dict[str, str]:
        return shown_env(spec, offline=self.offline)

    def cleanup_argv(self) -> list[str]:
        return stop_container_argv(self.name, docker=self.docker)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "image": self.image, "container": self.name}


@dataclass(frozen=True)
class DockerBackend:
    """--vllm-runtime=docker (a ``runtime.Backend``): the official image is each line's environment, models are
    given by path (mounted) or hub id (fetched in the container), each server is a :class:`DockerRuntime`."""

    python: Path | None = None  # --vllm-python, which the image wins over (kept for what the run reports)

    name: ClassVar[str] = "docker"
    installs_stacks: ClassVar[bool] = False
    host_cores: ClassVar[bool] = False  # the container's cores are Docker's business

    def unavailable(self) -> str | None:
        reason = docker_available()
        return f"--vllm-runtime=docker: {reason}" if reason else None

    def environment(self, provisioner: Provisioner, distribution: str, version: str,
                    stack: Stack) -> VLLMEnvironment:
        """The image: nothing is installed on the host."""
        return docker_environment(version)

    def model_path(self, model: ModelSpec, env: VLLMEnvironment, host: HostModels) -> str:
        """A given path (preflighted, mounted read-only) or a hub id (the container fetches it into the mounted
        Hugging Face cache); builtin and packaged models need a provisioned environment's libraries."""
        if model.builtin:
            raise ModelDirError(f"{model.name}: builtin tiny models are generated with a provisioned environment's "
                                "transformers; with --vllm-runtime=docker use path= or hub= models")
        if model.package:
            raise ModelDirError(f"{model.name}: packaged models are converted with a provisioned environment's "
                                "torch; with --vllm-runtime=docker use path= or hub= models")
        if model.path:
            preflight_model_dir(model.path)
            return model.path
        assert model.hub
        return model.hub

    def runtime(self, spec: ServerSpec, env: VLLMEnvironment, *, devices: Sequence[int] | None, cache: ServerCache,
                extra_env: dict[str, str], extra_args: list[str], defaults: dict[str, str],
                entry_point: tuple[str, ...], api_key_env: str | None) -> DockerRuntime:
        """A container of the image with the lease's ``devices`` (``--gpus``; the host's CUDA_VISIBLE_DEVICES in
        ``extra_env`` would be wrong inside) and the compile cache mounted. The image has its own entry point
        and key variable."""
        return DockerRuntime.for_spec(spec, devices=list(devices) if devices else None, cache_root=cache.root,
                                      cache_env=cache.env, extra_args=extra_args)
