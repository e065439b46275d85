"""Result records (JSON lines, one file per process so xdist workers never share one) and the run manifest.

Format: docs/records.md.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import re
import socket
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

RECORD_SCHEMA = "pytest-vllm-compat/record@1"
MANIFEST_SCHEMA = "pytest-vllm-compat/manifest@1"
STATUSES = ("pass", "fail", "error", "conflict", "unsupported", "not_applicable")
UNSUPPORTED_PREFIX = "unsupported: "
NOT_APPLICABLE_PREFIX = "not applicable: "
MAX_ERROR_TEXT = 20_000


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def new_run_id() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]


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

    def write(self, record: dict[str, Any]) -> None:
        record = {"schema": RECORD_SCHEMA, **record}
        line = json.dumps(record, sort_keys=True, default=str)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # One write() of a whole line in append mode: a reader never sees half a record from us.
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
        self.count += 1


def read_records(results_dir: Path, run_id: str | None = None) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    rdir = Path(results_dir) / "records"
    if not rdir.is_dir():
        return out
    for f in sorted(rdir.glob("*.jsonl")):
        if run_id and not f.name.startswith(run_id + "-"):
            continue
        for line in f.read_text(encoding="utf-8").splitlines():
            if line.strip():
                try:
                    out.append(json.loads(line))
                except ValueError:
                    continue
    return out


def host_info() -> dict[str, str]:
    return {"hostname": socket.gethostname(), "os": platform.platform(), "python": platform.python_version(),
            "cpu_count": str(os.cpu_count())}


def write_manifest(results_dir: Path, manifest: dict[str, Any]) -> Path:
    path = Path(results_dir) / "manifests" / f"{manifest['run_id']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"schema": MANIFEST_SCHEMA, **manifest}, indent=2, sort_keys=True, default=str))
    return path


def lease_fields(lease: Any) -> dict[str, Any] | None:
    """The GPUs a server ran on: nvidia-smi indices, plus slots and memory share when packed; None on CPU."""
    if lease is None or not lease.indices:
        return None
    info: dict[str, Any] = {"indices": list(lease.indices)}
    if lease.shared:
        info |= {"slots": list(lease.slots), "gpu_memory_utilization": lease.share}
    return info


def server_fields(server: Any, *, restarts: int, died_during_test: bool) -> dict[str, Any]:
    """A record's ``server`` object (docs/records.md) for a VLLMServer; argv and env redacted."""
    cache = server.compile_cache
    return {"spec_key": server.spec.key, "log_path": str(server.log_path), "argv": server.redacted_argv(),
            "serve_args": list(server.spec.serve_args), "env": server.redacted_env(),
            "start_time_s": server.start_time_s, "compile_cache": cache.describe() if cache else None,
            "gpus": lease_fields(server.lease), "cpu_share": server.cpu_share,
            "restarts": restarts, "died_during_test": died_during_test,
            "hung_after_s": getattr(server, "hung_after_s", None)}


# --- a test's outcome and failure, from its reports and its server's log -----------------------------------


def phase_outcome(reports: Mapping[str, Any]) -> tuple[str, str | None, str | None]:
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


def read_text(path: Any) -> str | None:
    if not path:
        return None
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


def classify_failure(error_text: str, log_text: str | None, version: str) -> dict[str, Any]:
    """The knowledge base's verdict on a failed test (its exception lines, its server's log), as a dict."""
    from .classify import classify, exception_lines

    return classify(exception_lines(error_text), log_text, version=version).to_dict()


def model_slug(model: str) -> str:
    """A model name as a file name (golden files, badges): itself when safe, else a slug with a short hash."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", model).strip("-.") or "model"
    return slug if slug == model else f"{slug}-{hashlib.sha1(model.encode()).hexdigest()[:6]}"
