"""From the resolved options to the run's :class:`CompatPlugin`: the device, the versions (ranges and "latest"
resolved once, by the controller), the stacks, the model registry, the session, and the usage errors and
warnings a bad combination deserves."""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import signal
import sys
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from . import options
from .compat_plugin import CompatPlugin
from .environments import DISTRIBUTIONS, available_versions, default_env_dir
from .registry import ModelSpec, RegistryError, load_registry
from .results import RecordWriter, new_run_id
from .runtime import INHERITED_SELECTORS
from .runtime.backends import backend_for
from .session import CompatSession
from .stacks import StackError, parse_stacks
from .timestamps import now_iso
from .version_spec import VersionSpecError, is_dynamic, resolve_versions


def load_models(settings: options.Settings) -> tuple[list[ModelSpec], str | None]:
    """The model registry; a broken default registry is an error of the tests that need it (not of a run
    that only uses the plugin's other parts), a broken registry the user named is a usage error."""
    try:
        return load_registry(settings.models), None
    except RegistryError as e:
        if settings.source("vllm_models") != "default":
            raise pytest.UsageError(str(e)) from None
        return [], str(e)


def detect_device(requested: str) -> tuple[str, list[Any], dict[str, Any]]:
    """``--vllm-device`` -> (device, the GPUs found, the device summary records carry)."""
    from . import gpu as gpu_mod

    gpus: list[Any] = list(gpu_mod.discover()) if requested in ("auto", "cuda") else []
    device = "cuda" if (requested == "cuda" or (requested == "auto" and gpus)) else "cpu"
    info = (gpu_mod.device_summary(gpus, **gpu_mod.driver_info()) if device == "cuda"
            else {"kind": "cpu", "name": "cpu", "count": 1})
    info["kind"] = device
    return device, gpus, info


def resolve_version_spec(config: pytest.Config, settings: options.Settings, distribution: str,
                         env_dir: Path) -> tuple[list[str], str]:
    """``--vllm`` as typed (ranges, latest, latest~N, a minor series, exact versions) -> the versions to run,
    and a note of what the dynamic terms selected. The index is listed only when a term needs it."""
    spec = settings.versions
    terms = [t for t in spec.split(",") if t.strip()]
    avail = available_versions(distribution, env_dir) if any(is_dynamic(t) for t in terms) else None
    try:
        res = resolve_versions(spec, avail, pre=settings.pre)
    except VersionSpecError as e:
        raise pytest.UsageError(f"{e} (from {settings.source('vllm_versions')})") from None
    if res.duplicates:
        named = ", ".join(f"{d} (again)" if d == k else f"{d} (same as {k})" for d, k in res.duplicates)
        config.issue_config_time_warning(pytest.PytestConfigWarning(
            f"{settings.given_as('vllm_versions')}={spec}: each version runs once; ignored the duplicate(s) {named}"), stacklevel=2)
    return res.versions, res.describe()


def _progress_to_terminal(config: pytest.Config, is_worker: bool) -> Callable[[str], None]:
    """Progress lines to the terminal, past pytest's capture (the controller only; workers stay quiet)."""
    def progress(msg: str) -> None:
        if is_worker:
            return
        tr = config.pluginmanager.get_plugin("terminalreporter")
        capman = config.pluginmanager.get_plugin("capturemanager")
        if tr is not None:
            # Said during a test (a server start, a hub download): past pytest's capture, on the terminal.
            with capman.global_and_fixture_disabled() if capman is not None else contextlib.nullcontext():
                tr.write_line(msg)
        else:
            print(msg, file=sys.stderr, flush=True)
    return progress


def build_plugin(config: pytest.Config, settings: options.Settings, models: list[ModelSpec],
                 registry_error: str | None) -> CompatPlugin:
    """The run's plugin object, with every usage error raised before anything is provisioned or started."""
    if settings.servers_per_gpu < 1:
        raise pytest.UsageError(f"--vllm-servers-per-gpu: must be 1 or more, not {settings.servers_per_gpu}")
    is_worker = hasattr(config, "workerinput")
    winput: dict[str, Any] = json.loads(config.workerinput["vllm_compat"]) if is_worker else {}  # type: ignore[attr-defined]
    vllm_python = settings.python
    if is_worker:
        device, device_info = winput["device"], winput["device_info"]
        gpus = detect_device("cuda")[1] if device == "cuda" else []  # each worker leases from the same GPUs
    else:
        device, gpus, device_info = detect_device(settings.device)
    distribution = DISTRIBUTIONS[device]
    results_dir = settings.results
    env_dir = settings.env_dir or default_env_dir()
    if is_worker:  # the controller resolved ranges and "latest" once; every worker runs that list
        versions, versions_note = list(winput["versions"]), ""
    else:
        versions, versions_note = resolve_version_spec(config, settings, distribution, env_dir)
    if vllm_python and not versions:
        versions = ["current"]
    if "current" in versions and not vllm_python:
        raise pytest.UsageError("--vllm=current needs --vllm-python=PATH (an interpreter that has vLLM installed)")
    try:
        stacks = parse_stacks(settings.with_)
    except StackError as e:
        raise pytest.UsageError(f"--vllm-with: {e} (from {settings.source('vllm_with')})") from None
    backend = backend_for(settings.runtime, vllm_python)  # the one choice of how vLLM runs
    if any(not st.is_default for st in stacks) and not backend.installs_stacks:
        raise pytest.UsageError("--vllm-with installs a stack into a provisioned environment; it cannot change "
                                "--vllm-python's interpreter or a --vllm-runtime=docker image")
    run_id = winput.get("run_id") or new_run_id()
    # xdist's own worker input, not PYTEST_XDIST_WORKER: a pytest run started inside a worker (pytester) inherits
    # that variable but is a controller of its own.
    worker = str(config.workerinput.get("workerid", "main")) if is_worker else "main"  # type: ignore[attr-defined]
    worker_count = int(config.workerinput.get("workercount", 1)) if is_worker else 1  # type: ignore[attr-defined]
    session = CompatSession(
        results_dir=results_dir, env_dir=env_dir, device=device, distribution=distribution, run_id=run_id,
        worker=worker, installer=settings.installer, backend=backend,
        startup_timeout=settings.startup_timeout, hang_timeout=settings.hang_timeout, port=settings.port,
        max_restarts=settings.max_restarts, max_servers=settings.max_servers,
        progress=_progress_to_terminal(config, is_worker), device_info=device_info,
        env_errors=dict(winput.get("env_errors", {})), gpus=gpus,
        gpu_lock_dir=settings.gpu_lock_dir, lock_dir=settings.lock_dir,
        warn=lambda msg: warnings.warn(msg, stacklevel=1),
        compile_cache=settings.compile_cache, servers_per_gpu=settings.servers_per_gpu, stacks=stacks,
        eager_knob_servers=settings.eager_knob_servers,
    )
    if is_worker and device == "cpu" and backend.host_cores:
        from .cpu_cores import pin, worker_share

        # -n N on a CPU: this worker's servers get its own share of the cores and KV-cache memory (cpu_cores.py).
        session.core_share = worker_share(worker, worker_count)
        if session.core_share is not None:
            pin(session.core_share)
    if not is_worker and versions:
        _warn_about(config, settings, device)
    if not is_worker:
        reason = backend.unavailable()
        if reason:
            raise pytest.UsageError(reason)
    plugin = CompatPlugin(config=config, settings=settings, versions=versions, models=models,
                          registry_error=registry_error, session=session,
                          writer=RecordWriter(results_dir, run_id, worker), is_worker=is_worker,
                          started_at=now_iso(), gpus=gpus, versions_note=versions_note, stacks=stacks)
    # xdist: keep every server spec on one worker. The controller picks the loadgroup scheduler; the
    # workers must know it too, because they are the ones that append "@<group>" to the node ids
    # (xdist sets option.loadgroup from the worker's own command line, which still says "load").
    # The scopes go out in collection order (the plugin's plan: each model's default server and the one-off
    # starts of its group first), not sorted by their number of tests, which says little of their cost: a one-off
    # start that must fail is one test and a full server start.
    if not is_worker and getattr(config.option, "numprocesses", None) and getattr(config.option, "dist", "no") in (
            "load", "no"):
        config.option.dist = "loadgroup"
        config.option.loadscopereorder = False
    if is_worker and winput.get("dist") == "loadgroup":
        config.option.loadgroup = True
    atexit.register(session.stop_all)  # safety net if pytest is torn down without sessionfinish
    if versions:
        terminate_as_interrupt(config)
    return plugin


def _warn_about(config: pytest.Config, settings: options.Settings, device: str) -> None:
    """Warnings of the controller: packing servers where it cannot help, selectors servers do not inherit."""
    packing = settings.servers_per_gpu
    if packing > 1:
        why = None
        if device != "cuda":
            why = f"this run is on {device}: there is no GPU to pack servers on"
        elif not getattr(config.option, "numprocesses", None):
            why = (f"without xdist workers (-n {packing}) only this process's servers share a GPU; "
                   f"run with -n {packing} to have {packing} servers up at once")
        if why:
            config.issue_config_time_warning(
                pytest.PytestConfigWarning(f"--vllm-servers-per-gpu={packing}: {why}"), stacklevel=2)
    stale = {k: os.environ[k] for k in INHERITED_SELECTORS if os.environ.get(k)}
    if stale:
        config.issue_config_time_warning(pytest.PytestConfigWarning(
            f"{', '.join(f'{k}={v}' for k, v in stale.items())} is set in this shell: servers do not inherit it "
            "(it would pick the backend of every server, or be an unknown variable where vLLM dropped it, "
            "vllm#50292); set it per model in the registry (env = {...}) or run the attention suite"), stacklevel=2)


def terminate_as_interrupt(config: pytest.Config) -> None:
    """SIGTERM (a CI runner stopping a job, ``timeout``, ``kill``) ends the session the way Ctrl-C does:
    the running test is interrupted, servers are stopped, finished records and the manifest are written.
    Python's default is to die on the spot. A handler someone else installed is left alone."""
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return

    def interrupt(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the process at once
        raise KeyboardInterrupt(f"received signal {signum} (SIGTERM)")

    signal.signal(signal.SIGTERM, interrupt)

    def restore() -> None:
        if signal.getsignal(signal.SIGTERM) is interrupt:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)

    config.add_cleanup(restore)
