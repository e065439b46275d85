"""Result records (JSON lines, one file per process so xdist workers never share one) and the run manifest.

Format: docs/records.md.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import socket
import uuid
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeGuard

from .outcomes import (
    MANIFEST_SCHEMA,
    RECORD_SCHEMA,
    UNSUPPORTED_PREFIX,
)
from .record_types import (
    Classification,
    EnvironmentSummary,
    ErrorInfo,
    JSONObject,
    Manifest,
    Record,
    ServerInfo,
    ServerSummary,
)
from .redact import redact
from .stacks import stack_record
from .timestamps import file_stamp, now_iso

if TYPE_CHECKING:  # these modules import this one: the types only
    import pytest

    from .environments import VLLMEnvironment
    from .gpu.leasing import Lease
    from .log_settle import Settled
    from .options import Resolved
    from .packaged_model import PackagedModel
    from .registry import ModelSpec
    from .server import ServerError, VLLMServer
    from .stacks import Stack

MAX_ERROR_TEXT = 20_000


def new_run_id() -> str:
    """A run's id: when it started and a random suffix (``20261204T163825Z-a7173b``)."""
    return file_stamp() + "-" + uuid.uuid4().hex[:6]


def status_for(outcome: str, skip_reason: str | None, classification_kind: str | None) -> str:
    """Map pytest's outcome (+ skip reason, + classification) to a matrix status."""
    if outcome == "passed":
        return "pass"
    if outcome == "skipped":
        if skip_reason and skip_reason.startswith(UNSUPPORTED_PREFIX):
            return "unsupported"
        return "not_applicable"
    if classification_kind == "infrastructure":
        return "error"
    if classification_kind == "stack":  # the stack's pins and the release cannot be installed together
        return "conflict"
    return "fail"


def summarize_error(text: str) -> str:
    """One line: the first 'E   ...' line of a pytest failure (the exception), else the last non-empty line."""
    lines = [ln.rstrip() for ln in text.splitlines() if ln.strip()]
    e_lines = [ln[1:].strip() for ln in lines if ln.startswith("E ")]
    if e_lines:
        first = e_lines[0]
        return first[:500]
    return (lines[-1] if lines else "")[:500]


class RecordWriter:
    def __init__(self, results_dir: Path, run_id: str, worker: str) -> None:
        self.path = Path(results_dir) / "records" / f"{run_id}-{worker}.jsonl"
        self.count = 0

    def write(self, record: Record) -> None:
        record = {"schema": RECORD_SCHEMA, **record}
        line = json.dumps(record, sort_keys=True, default=str)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # One write() of a whole line in append mode: a reader never sees half a record from us.
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
        self.count += 1


def is_record(obj: object) -> TypeGuard[Record]:
    """Whether a JSON value is a record of this schema: an object whose ``schema`` is ours or absent."""
    return isinstance(obj, dict) and obj.get("schema", RECORD_SCHEMA) == RECORD_SCHEMA


def read_record_file(path: Path) -> list[Record]:
    """The records of one ``.jsonl`` file: the one reader of records (the plugin's summary, the matrix, bisection).

    A truncated line (a writer killed mid-line) or a malformed one is skipped with a warning, and so is a line
    that is not a record of this schema; a line without a ``schema`` field is taken as one.
    """
    out: list[Record] = []
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            where = "truncated last line" if lineno == len(lines) else "malformed line"
            warnings.warn(f"{path}:{lineno}: {where} skipped ({exc.msg})", stacklevel=3)
            continue
        if not is_record(obj):
            warnings.warn(f"{path}:{lineno}: not a {RECORD_SCHEMA} record, skipped", stacklevel=3)
            continue
        out.append(obj)
    return out


def read_json_documents(paths: Sequence[Path | str], pattern: str,
                        schemas: Sequence[str]) -> list[tuple[Path, JSONObject]]:
    """The JSON documents of the given schemas: in each directory those matching ``pattern`` (sorted), a file
    given directly as it is. Unreadable files and documents of another schema are left out (bisection results,
    attributions and performance comparisons are read this way)."""
    out: list[tuple[Path, JSONObject]] = []
    for p in paths:
        files = sorted(Path(p).glob(pattern)) if Path(p).is_dir() else [Path(p)]
        for path in files:
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if isinstance(data, dict) and data.get("schema") in schemas:
                out.append((path, data))
    return out


def read_records(results_dir: Path, run_id: str | None = None) -> list[Record]:
    """The records of a results directory (``records/*.jsonl``), of one run when ``run_id`` is given."""
    out: list[Record] = []
    rdir = Path(results_dir) / "records"
    if not rdir.is_dir():
        return out
    for f in sorted(rdir.glob("*.jsonl")):
        if run_id and not f.name.startswith(run_id + "-"):
            continue
        out += read_record_file(f)
    return out


def host_info() -> dict[str, str]:
    return {"hostname": socket.gethostname(), "os": platform.platform(), "python": platform.python_version(),
            "cpu_count": str(os.cpu_count())}


def write_manifest(results_dir: Path, manifest: Manifest) -> Path:
    path = Path(results_dir) / "manifests" / f"{manifest['run_id']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"schema": MANIFEST_SCHEMA, **manifest}, indent=2, sort_keys=True, default=str))
    return path


def lease_fields(lease: Lease | None) -> dict[str, object] | None:
    """The GPUs a server ran on: nvidia-smi indices, plus slots and memory share when packed; None on CPU."""
    if lease is None or not lease.indices:
        return None
    info: dict[str, object] = {"indices": list(lease.indices)}
    if lease.shared:
        info |= {"slots": list(lease.slots), "gpu_memory_utilization": lease.share}
    return info


def server_fields(server: VLLMServer, *, restarts: int, died_during_test: bool) -> ServerInfo:
    """A record's ``server`` object (docs/records.md) for a VLLMServer; argv and env redacted."""
    cache = server.compile_cache
    return {"spec_key": server.spec.key, "log_path": str(server.log_path), "argv": server.redacted_argv(),
            "serve_args": list(server.spec.serve_args), "env": server.redacted_env(),
            "start_time_s": server.start_time_s, "compile_cache": cache.describe() if cache else None,
            "gpus": lease_fields(server.lease), "cpu_share": server.cpu_share,
            "restarts": restarts, "died_during_test": died_during_test,
            "hung_after_s": getattr(server, "hung_after_s", None)}


# --- a test's outcome and failure, from its reports and its server's log -----------------------------------


def phase_outcome(reports: Mapping[str, pytest.TestReport]) -> tuple[str, str | None, str | None]:
    """``(outcome, failed_phase, skip_reason)`` of a test from its setup/call/teardown reports (objects with
    ``failed``, ``skipped`` and ``longrepr``): a failed call is "failed", a failed setup or teardown "error"."""
    failed_phase = next((w for w in ("setup", "call", "teardown") if w in reports and reports[w].failed), None)
    skipped = ("setup" in reports and reports["setup"].skipped) or ("call" in reports and reports["call"].skipped)
    if failed_phase == "call":
        outcome = "failed"
    elif failed_phase:
        outcome = "error"
    elif skipped:
        outcome = "skipped"
    else:
        outcome = "passed"
    skip_reason = None
    if outcome == "skipped":
        rep = reports["call"] if "call" in reports and reports["call"].skipped else reports["setup"]
        lr = rep.longrepr
        skip_reason = (str(lr[2]) if isinstance(lr, tuple) else str(lr)).removeprefix("Skipped: ")
    return outcome, failed_phase, skip_reason


def root_cause_suffix(log_slice: str) -> str:
    """``"; the log's deepest exception: RuntimeError: ... (in EngineCore_DP0 pid=42)"`` for the server log
    written during a test, or "" when it has no traceback (a kill from outside leaves none)."""
    from .logparse import root_exception

    root = root_exception(log_slice)
    return f"; the log's deepest exception: {root.describe(300)}" if root is not None else ""


def log_since(path: Path, offset: int) -> str:
    """The server log written while this test ran: an error an earlier test provoked in a shared server
    (a deliberately malformed request, say) must not become this test's cause."""
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read().decode("utf-8", errors="replace")


def file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def read_text(path: Path | str | None) -> str | None:
    if not path:
        return None
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


def classify_failure(error_text: str, log_text: str | None, version: str) -> Classification:
    """The knowledge base's verdict on a failed test (its exception lines, its server's log), as a dict."""
    from .classify import classify, exception_lines

    return classify(exception_lines(error_text), log_text, version=version).to_dict()


def model_slug(model: str) -> str:
    """A model name as a file name (golden files, badges): itself when safe, else a slug with a short hash."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", model).strip("-.") or "model"
    return slug if slug == model else f"{slug}-{hashlib.sha1(model.encode()).hexdigest()[:6]}"


# --- a test's record and a run's manifest, composed from typed inputs ---------------------------------------


class RecordTarget(Protocol):
    """What a record needs of its test's target (``session.Target``, which is not imported here: session imports
    hub, which imports this module)."""

    @property
    def model(self) -> ModelSpec: ...
    @property
    def version(self) -> str: ...
    @property
    def distribution(self) -> str: ...
    @property
    def stack(self) -> Stack: ...


class RecordSnapshot(Protocol):
    """What a record needs of a hub model's snapshot (``hub.Snapshot``; hub imports this module)."""

    @property
    def sha(self) -> str: ...
    def record(self) -> dict[str, object]: ...


@dataclass
class FinishedTest:
    """What the pytest layer knows about one finished compat test; :func:`compose_record` makes its record."""

    run_id: str
    test_id: str
    test_name: str
    target: RecordTarget
    env: VLLMEnvironment | None  # None: the environment could not be provisioned
    reports: Mapping[str, pytest.TestReport]  # phase -> its report
    feature: str
    platform: str
    device_info: Mapping[str, object]
    servers: Sequence[VLLMServer] = ()  # the servers the test used, the last one is "its" server
    server_error: ServerError | None = None  # the server could not start / was given up
    crash_note: str | None = None  # the server died during the test
    log_offset: int = 0  # where the test's part of its server's log starts
    restarts: int = 0
    metrics: dict[str, object] = field(default_factory=dict)
    started_at: str = ""
    server_start_s: float = 0.0
    snapshot: RecordSnapshot | None = None  # a hub model's snapshot
    log_settled: Settled | None = None  # how the failed test's log was settled before classifying
    packaged: PackagedModel | None = None  # a model shipped inside a package


def compose_record(f: FinishedTest) -> Record:
    """The record of one test (docs/records.md): outcome and status, the failure with its classification and
    the server log around it, the server, provenance. Secrets of the test's servers are redacted."""
    outcome, failed_phase, skip_reason = phase_outcome(f.reports)
    server = f.servers[-1] if f.servers else None
    error_log = getattr(f.server_error, "log_path", None)
    log_path = str(server.log_path) if server else (str(error_log) if error_log else None)
    error: ErrorInfo | None = None
    classification: Classification | None = None
    log_excerpt: str | None = None
    if failed_phase:
        # A traceback may quote an API key or token (e.g. with --showlocals): stored records never carry them.
        secrets = [sec for srv in f.servers for sec in srv.secrets()]
        text = redact(f.reports[failed_phase].longreprtext, secrets)
        summary = (str(f.server_error).splitlines()[0][:500] if f.server_error is not None
                   else summarize_error(text))
        error = {"phase": failed_phase, "summary": redact(f.crash_note or summary, secrets), "text": text[-MAX_ERROR_TEXT:]}
        log_text = None
        if f.server_error is not None:
            log_excerpt = f.server_error.log_excerpt
            log_text = read_text(error_log) or log_excerpt
        elif server is not None:
            log_text = log_since(server.log_path, f.log_offset)
            log_excerpt = server.log_excerpt(text=log_text)
        classification = classify_failure(text, log_text, f.target.version)
        if f.log_settled is not None:
            error["log_settled"] = f.log_settled.to_dict()
            if not f.log_settled.complete and classification.get("id") == "unknown":
                classification["explanation"] += (
                    f" (The log was still being written {f.log_settled.waited_s:.1f} s after the failure; it was "
                    "read as it then was.)")
    status = status_for(outcome, skip_reason, classification.get("kind") if classification else None)
    server_info = None
    if server is not None:
        server_info = server_fields(server, restarts=f.restarts, died_during_test=f.crash_note is not None)
        if server.start_time_s is not None:
            f.metrics.setdefault("server_start_s", server.start_time_s)
    duration = sum(r.duration for r in f.reports.values())
    model = f.target.model
    return {
        "run_id": f.run_id, "test_id": f.test_id, "test_name": f.test_name,
        "model": model.name, "model_source": model.source, "families": list(model.families),
        "hub": f.snapshot.record() if f.snapshot else None,
        "packaged_model": f.packaged.record() if f.packaged else None,
        "vllm_version": f.env.vllm_version if f.env else f.target.version, "distribution": f.target.distribution,
        "stack": stack_record(f.target.stack),
        "device": dict(f.device_info), "platform": f.platform, "feature": f.feature,
        "outcome": outcome, "status": status, "duration_s": round(max(0.0, duration - f.server_start_s), 3),
        "server_start_s": round(f.server_start_s, 3),
        "started_at": f.started_at or now_iso(), "finished_at": now_iso(), "error": error,
        "classification": classification, "skip_reason": skip_reason, "server": server_info,
        "log_excerpt": log_excerpt, "metrics": f.metrics, "log_path": log_path,
        "provenance": {**(f.env.record_provenance() if f.env else {}),
                       **({"model_revision": f.snapshot.sha} if f.snapshot else {})},
    }


@dataclass
class FinishedRun:
    """What the pytest layer knows about a finished run; :func:`compose_manifest` makes its manifest."""

    run_id: str
    started_at: str
    argv: Sequence[str]
    versions: Sequence[str]
    versions_requested: str
    versions_note: str
    stacks: Sequence[Stack]
    index_versions: list[str] | None
    device_info: Mapping[str, object]
    env_errors: Mapping[str, str]
    options: Mapping[str, Resolved]  # option name -> its value and where it came from
    exitstatus: int
    suite_version: str = ""  # suite_identity.suite_version: the plugin version and a digest of what judged


def compose_manifest(f: FinishedRun, run: RunSummary) -> Manifest:
    """The run manifest (docs/records.md): what ran, on what, with which options (secrets redacted), and what
    the run's files say (environments, servers, counts, leftover processes)."""
    from . import __version__

    return {
        "run_id": f.run_id, "started_at": f.started_at, "finished_at": now_iso(),
        "plugin_version": __version__, "suite_version": f.suite_version or None,
        "argv": [redact(a) for a in f.argv], "versions": list(f.versions),
        "versions_requested": f.versions_requested, "versions_note": f.versions_note,
        "stacks": [stack_record(st) for st in f.stacks],
        # The releases the index offered (as last listed): the matrix shows the ones no run tested as gaps.
        "index_versions": f.index_versions,
        "device": dict(f.device_info), "host": host_info(), "environments": run.environments,
        "env_errors": dict(f.env_errors), "counts": run.counts, "servers": run.servers,
        "leftover_pids": run.leftover_pids, "exitstatus": int(f.exitstatus),
        # Every plugin option as resolved, with where it came from (cli, env, ini, default).
        "options": {name: {"value": redact(str(r.value)) if r.value is not None else None, "source": r.source}
                    for name, r in f.options.items()},
    }


@dataclass
class RunSummary:
    """A run as its files say it, read once (the manifest and the terminal summary both use it)."""

    records: list[Record]
    counts: dict[str, int]
    servers: list[ServerSummary]
    environments: dict[str, EnvironmentSummary]
    leftover_pids: list[int]


def read_run(results_dir: Path, run_id: str) -> RunSummary:
    records = read_records(results_dir, run_id)
    counts: dict[str, int] = {}
    for r in records:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    servers: list[ServerSummary] = []
    envs: dict[str, EnvironmentSummary] = {}
    leftovers: list[int] = []
    for f in sorted((results_dir / "servers").glob(f"{run_id}-*.json")):
        data = json.loads(f.read_text())
        servers += data.get("servers", [])
        envs.update({e["name"]: e for e in data.get("environments", {}).values()})
        leftovers += data.get("leftover_pids", [])
    return RunSummary(records, counts, servers, envs, leftovers)


def summary_lines(run: RunSummary, records_dir: Path, max_failures: int = 30) -> list[str]:
    """The terminal summary's lines: counts, each server's starts, the first failures with their category."""
    lines = ["results: " + ", ".join(f"{n} {k}" for k, n in sorted(run.counts.items())) +
             f"  ({len(run.records)} records in {records_dir})"]
    for srv in run.servers:
        times = ", ".join(f"{t:.0f}s" for t in srv["start_times_s"])
        extra = f", {len(srv['crashes'])} crash(es)" if srv["crashes"] else ""
        extra += ", FAILED TO START" if srv.get("startup_error") else ""
        lines.append(f"server {srv['spec_key']}: {srv['starts']} start(s) [{times}]{extra}")
    for r in [r for r in run.records if r["status"] in ("fail", "error")][:max_failures]:
        c = r.get("classification") or {}
        lines.append(f"{r['status'].upper()} {r['test_id']}: [{c.get('category', 'unknown')}] "
                     f"{(r.get('error') or {}).get('summary', '')[:160]}")
    return lines
