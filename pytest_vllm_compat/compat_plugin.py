"""The plugin object: one per pytest process (the controller and each xdist worker), registered by
``plugin.pytest_configure``. It holds the run's state and implements the hooks that drive it: provisioning,
parametrization, ordering, crash checks, records, the manifest and the terminal summary."""

from __future__ import annotations

import json
import time
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pytest

from . import options
from .crash_check import check_servers_after_call, server_error_text
from .environments import (
    ProvisionError,
    UnknownVersionError,
    available_versions,
    cached_index_versions,
    check_version,
)
from .fixture_types import ItemState
from .lockfiles import store_lock
from .log_settle import Settled, http_error_status, settle
from .markers import FEATURES, feature_of, group_of, scope_of, target_of
from .outcomes import NOT_APPLICABLE_PREFIX
from .registry import ModelSpec
from .results import (
    FinishedRun,
    FinishedTest,
    RecordWriter,
    RunSummary,
    compose_manifest,
    compose_record,
    read_run,
    summary_lines,
    write_manifest,
)
from .scheduling import parse_shard, plan
from .server import ServerError, reap_stale
from .session import CompatSession, Target
from .stacks import DEFAULT_STACK, Stack, line_of
from .suite_identity import argument_roots, suite_version
from .timestamps import now_iso
from .versions import version_key
from .watchdog import HangWatchdog

if TYPE_CHECKING:
    from _pytest.mark import ParameterSet

    from .gpu.discovery import GPU

ITEM = pytest.StashKey[ItemState]()


@dataclass(eq=False)  # a plugin is registered by identity
class CompatPlugin:
    """The run: its settings, versions, stacks and models, the :class:`CompatSession` that provisions
    environments and runs servers, and the record writer. Hooks are its methods (xdist's DSession pattern)."""

    config: pytest.Config
    settings: options.Settings
    versions: list[str]
    models: list[ModelSpec]
    registry_error: str | None
    session: CompatSession
    writer: RecordWriter
    is_worker: bool
    started_at: str
    gpus: list[GPU] = field(default_factory=list)
    versions_note: str = ""  # what the range / latest terms of --vllm selected (the report header says it)
    stacks: list[Stack] = field(default_factory=lambda: [DEFAULT_STACK])  # --vllm-with, default stack first
    group_last_index: dict[str, int] = field(default_factory=dict)
    usage_errors: list[str] = field(default_factory=list)
    item_index: dict[str, int] = field(default_factory=dict)
    provisioned: bool = False
    run: RunSummary | None = None  # the run as its files say it, read once at session end (results.read_run)

    @property
    def lines(self) -> list[str]:
        """Every (version, stack) this run tests, as matrix lines (stacks.line_of)."""
        return [line_of(v, st) for v in sorted(self.versions, key=version_key) for st in self.stacks]

    @property
    def platform(self) -> str:
        info = self.session.device_info
        return "cpu" if info.get("kind") == "cpu" else f"cuda:{info.get('name', 'unknown')}"

    # --- header, xdist -------------------------------------------------------------------------------

    def pytest_report_header(self, config: pytest.Config) -> list[str] | None:
        """The versions, stacks, device, registry, env and results dirs of this run, above the collection."""
        if not self.versions:
            return None
        s = self.session
        lines = [f"vllm-compat: {s.distribution} {', '.join(self.versions)}"
                 + (f" (--vllm={self.settings.versions}: {self.versions_note})" if self.versions_note else "")]
        if self.stacks != [DEFAULT_STACK]:
            lines.append("vllm-compat stacks: " + "; ".join(st.describe() for st in self.stacks))
        lines.append(f"vllm-compat device: {s.device_info.get('name')} x{s.device_info.get('count')} ({s.device}); "
                     f"registry: {self.settings.models}; env dir: {s.env_dir}; results: {s.results_dir}")
        return lines

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node: Any) -> None:
        """xdist controller -> worker: the run id, the device and what provisioning found."""
        s = self.session
        node.workerinput["vllm_compat"] = json.dumps({
            "run_id": s.run_id, "device": s.device, "device_info": s.device_info, "env_errors": s.env_errors,
            "dist": getattr(node.config.option, "dist", "no"), "versions": self.versions,
        })

    # --- provisioning (controller only) --------------------------------------------------------------

    def provision(self) -> None:
        """Validate versions against the index, then create/reuse each environment. Once, in the controller."""
        if self.provisioned or self.is_worker or not self.versions:
            return
        self.provisioned = True
        s = self.session
        if self.config.option.collectonly:
            return
        if s.vllm_python is None:
            avail = available_versions(s.distribution, s.env_dir)
            for v in self.versions:
                try:
                    check_version(s.distribution, v, avail, cache_dir=s.env_dir)
                except UnknownVersionError as e:
                    raise pytest.UsageError(str(e)) from None
        reap_stale(s.results_dir / ".servers")
        for line in self.lines:
            try:
                env = s.env_for(line)
                s.progress(f"[vllm-compat] {env.name}: {'created' if env.created else 'reused'} "
                           f"in {env.provision_s:.1f} s ({env.python})")
            except ProvisionError as e:
                s.progress(f"[vllm-compat] {line}: environment FAILED: {e}")

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionstart(self, session: pytest.Session) -> None:
        if getattr(session.config.option, "numprocesses", None) and not self.is_worker:
            self.provision()  # before xdist starts workers, so they find environments ready

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        if any(ITEM in it.stash and it.stash[ITEM].target for it in session.items):
            self.provision()

    # --- parametrization and ordering ----------------------------------------------------------------

    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        if "vllm_target" not in metafunc.fixturenames:
            return
        # Raised as usage errors from pytest_collection_modifyitems (one clear line, exit 4), not here.
        if self.registry_error:
            self.usage_errors.append(self.registry_error)
            return
        if not self.versions:
            self.usage_errors.append(
                f"{metafunc.definition.nodeid} needs a vLLM version: pass --vllm=VERSION[,VERSION] "
                "(or set VLLM_COMPAT_VERSIONS / the vllm_versions ini option)")
            return
        feature_markers = {m.name for m in metafunc.definition.iter_markers() if m.name in FEATURES}
        params = []
        for version in sorted(self.versions, key=version_key):
            for stack in self.stacks:
                for model in self.models:
                    if model.features and feature_markers and not (feature_markers & set(model.features)):
                        continue
                    target = Target(model=model, version=version, distribution=self.session.distribution,
                                    device=self.session.device, stack=stack)
                    marks = [getattr(pytest.mark, fam) for fam in model.families]
                    params.append(pytest.param(target, id=target.id, marks=marks))
        if not params:
            params = [_no_model_param(metafunc, sorted(feature_markers))]
        metafunc.parametrize("vllm_target", params, indirect=True)

    @pytest.hookimpl(tryfirst=True)
    def pytest_collection_modifyitems(self, session: pytest.Session, config: pytest.Config,
                                      items: list[pytest.Item]) -> None:
        if self.usage_errors:
            raise pytest.UsageError(self.usage_errors[0])
        groups = [group_of(it) for it in items]
        for it, g in zip(items, groups, strict=True):
            target = target_of(it)
            if g is None or target is None:
                continue
            it.stash[ITEM] = ItemState(target=target, nodeid=it.nodeid)
            it.add_marker(pytest.mark.xdist_group(name=scope_of(it, g)))
            tm = it.get_closest_marker("timeout")
            if tm is None:
                it.add_marker(pytest.mark.timeout(func_only=True))
            elif "func_only" not in tm.kwargs:
                it.add_marker(pytest.mark.timeout(*tm.args, **tm.kwargs, func_only=True), append=False)
        shard = None
        if self.settings.shard:
            try:
                shard = parse_shard(self.settings.shard)
            except ValueError as e:
                raise pytest.UsageError(f"--vllm-shard: {e}") from None
        # Each server group's tests back to back so its server starts once; plain tests keep their order, first.
        p = plan(groups, shard)
        if p.dropped:
            config.hook.pytest_deselected(items=[items[i] for i in p.dropped])
        items[:] = [items[i] for i in p.order]
        self.item_index = {it.nodeid: i for i, it in enumerate(items)}
        self.group_last_index = p.last_index

    @pytest.hookimpl(trylast=True, specname="pytest_collection_modifyitems")
    def pytest_collection_modifyitems_xdist_group(self, config: pytest.Config, items: list[pytest.Item]) -> None:
        """xdist worker, --dist=loadgroup: make sure each item carries its group in its node id.

        xdist groups work by the "@<group>" suffix its worker hook appends to item node ids. Since pytest
        9.2 node ids are structured and xdist's assignment to ``item._nodeid`` no longer changes them
        (pytest-xdist#1386), so every test is scheduled on its own and a server spec is split across
        workers (each starting its own server). Until xdist handles it, the suffix is set here.
        """
        if not self.is_worker or not config.getvalue("loadgroup"):
            return
        for it in items:
            mark = it.get_closest_marker("xdist_group")
            if mark is None or ITEM not in it.stash:
                continue
            name = str(mark.args[0] if mark.args else mark.kwargs.get("name", "default"))
            if not it.nodeid.endswith(f"@{name}"):
                _set_nodeid(it, f"{it.nodeid}@{name}")

    # --- a test: its target, its call, its reports and its record ------------------------------------

    def item_state(self, node: pytest.Item) -> ItemState:
        if ITEM not in node.stash:
            node.stash[ITEM] = ItemState()
        return node.stash[ITEM]

    def unmet(self, target: Target) -> str | None:
        """Why this run's device cannot run the target's model (a not-applicable reason), or None."""
        device = self.session.device
        req = target.model.requires
        if device not in req.devices:
            return f"{target.model.name} runs on {', '.join(req.devices)} only; this run is on {device}"
        if device == "cuda":
            from .gpu import unmet_requirements

            return unmet_requirements(req, "cuda", self.gpus)
        if req.gpus:
            return f"{target.model.name} needs {req.gpus} GPU(s); this run is on cpu"
        return None

    def target_ready(self, item: pytest.Item, target: Target) -> None:
        self.config.hook.pytest_vllm_compat_target(item=item, target=target, platform=self.platform,
                                                   feature=feature_of(item))

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Generator[None, object, object]:
        st = item.stash.get(ITEM, None)
        if st is None:
            return (yield)
        st.call_started = time.monotonic()
        # A server that stops answering /health while the test runs is killed, so the test fails instead of
        # waiting forever (watchdog.py); crash_check says so.
        with HangWatchdog(st.servers, self.session.hang_timeout):
            return (yield)

    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        if ITEM in item.stash:
            item.stash[ITEM].started_at = now_iso()

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo[None]
                                  ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        rep: pytest.TestReport = yield
        if ITEM not in item.stash or item.stash[ITEM].target is None:
            return rep
        st = item.stash[ITEM]
        if call.excinfo is not None and isinstance(call.excinfo.value, ServerError):
            err = call.excinfo.value
            st.server_error = err
            rep.longrepr = server_error_text(err)
        if rep.failed and st.servers and st.server_error is None:
            # The log line that explains the failure may reach the file after the client got its answer.
            st.log_settled = _settle_log(st, rep.longreprtext)
        if call.when == "call":
            check_servers_after_call(st, self.session, rep, item.nodeid)
        st.reports[call.when] = rep
        if call.when == "teardown":
            self._after_test(item, st)
        return rep

    def _after_test(self, item: pytest.Item, st: ItemState) -> None:
        try:
            self._write_record(item, st)
        finally:
            idx = self.item_index.get(st.nodeid or item.nodeid)
            if idx is not None:
                needed = {g for g, last in self.group_last_index.items() if last > idx}
                self.session.pool.release_groups_not_needed(needed)

    def _write_record(self, item: pytest.Item, st: ItemState) -> None:
        target = st.target
        assert target is not None
        session = self.session
        server = st.servers[-1] if st.servers else None
        record = compose_record(FinishedTest(
            run_id=session.run_id, test_id=st.nodeid or item.nodeid,
            test_name=getattr(item, "originalname", item.name), target=target, env=session.envs.get(target.line),
            reports=st.reports, feature=st.feature or feature_of(item), platform=self.platform,
            device_info=session.device_info, servers=st.servers, server_error=st.server_error,
            crash_note=st.crash_note, log_settled=st.log_settled,
            log_offset=st.log_offsets.get(id(server), 0) if server else 0,
            restarts=session.pool.restarts(server.spec) if server else 0, metrics=st.metrics,
            started_at=st.started_at, server_start_s=st.server_start_s,
            snapshot=session.snapshots.get(target.model.name), packaged=session.packaged.get(target.model.name)))
        self.writer.write(record)
        self.config.hook.pytest_vllm_compat_record(item=item, record=record)

    # --- session end ---------------------------------------------------------------------------------

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        self.session.stop_all()
        if self.session.pool.records:
            self.session.write_worker_summary()
        if self.is_worker or not self.versions:
            return
        self._write_manifest(exitstatus)

    def _write_manifest(self, exitstatus: int) -> None:
        s = self.session
        run = self.run = read_run(s.results_dir, s.run_id)
        if not run.records and not s.pool.records:
            return
        for e in run.environments.values():  # each environment's resolved set, kept with the results
            e["lock_stored"] = store_lock(s.results_dir, e.get("lock_file"), e.get("lock_sha256"))
        manifest = compose_manifest(FinishedRun(
            run_id=s.run_id, started_at=self.started_at, argv=self.config.invocation_params.args,
            versions=self.versions, versions_requested=self.settings.versions, versions_note=self.versions_note,
            stacks=self.stacks,
            index_versions=cached_index_versions(s.distribution, s.env_dir) if s.vllm_python is None else None,
            device_info=s.device_info, env_errors=s.env_errors, options=self.settings.resolved,
            exitstatus=exitstatus,
            suite_version=suite_version(argument_roots(self.config.args, self.config.invocation_params.dir))), run)
        write_manifest(s.results_dir, manifest)
        self.config.hook.pytest_vllm_compat_run_finished(config=self.config, manifest=manifest)

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter, exitstatus: int, config: pytest.Config) -> None:
        if self.is_worker or not self.versions:
            return
        s = self.session
        run = self.run or read_run(s.results_dir, s.run_id)  # read once, by the manifest, when it was written
        if not run.records:
            return
        terminalreporter.section("vllm-compat")
        for line in summary_lines(run, s.results_dir / "records"):
            terminalreporter.write_line(line)


def _settle_log(st: ItemState, error_text: str) -> Settled | None:
    """Wait (bounded, failed tests only) until the test's server log holds what the server logged about the
    failure (log_settle.py); an HTTP error status answered by the server waits for its error line."""
    server = st.servers[-1]
    if server.proc is None:
        return None
    return settle(server.log_path, st.log_offsets.get(id(server), 0),
                  want_error=http_error_status(error_text) is not None and server.alive())


def _no_model_param(metafunc: pytest.Metafunc, features: list[str]) -> ParameterSet:
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


def _set_nodeid(item: pytest.Item, nodeid: str) -> None:
    if hasattr(item, "_id"):  # pytest >= 9.2: a structured NodeId; parse() keeps the exact string
        from _pytest.nodeid import NodeId  # type: ignore[import-not-found,unused-ignore]

        item._id = NodeId.parse(nodeid)
    else:  # pragma: no cover - older pytest: xdist's own assignment already worked
        item._nodeid = nodeid  # type: ignore[attr-defined]
