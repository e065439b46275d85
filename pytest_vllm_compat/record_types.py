"""The shapes of the data path's JSON documents: a result record, its parts, and the run manifest.

Records and manifests are written and read as plain JSON objects (docs/records.md); these TypedDicts say which
fields they have and of what type, so that readers index them by name with the type the writer gave. Fields are
optional (``total=False``) where older records, or records of a failed start, may lack them; a value that is
only passed through (metrics, provenance) is ``object``, narrowed where it is read.
"""

from __future__ import annotations

from typing import TypeAlias, TypedDict

# Every value a JSON document can hold (what ``json.loads`` returns).
JSONValue: TypeAlias = str | int | float | bool | list["JSONValue"] | dict[str, "JSONValue"] | None
JSONObject: TypeAlias = dict[str, JSONValue]


def as_float(value: object) -> float:
    """A JSON number as a float (a bool is not one); TypeError for any other value."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    raise TypeError(f"not a number: {value!r}")


class StackRecord(TypedDict):
    """A dependency stack as records and manifests carry it (``stacks.stack_record``); the default is ``""``."""

    name: str
    requirements: list[str]


class ErrorInfo(TypedDict, total=False):
    """A failed test's error: the phase that failed, one line, the text (up to 20 kB)."""

    phase: str
    summary: str
    text: str
    log_settled: dict[str, object]  # log_settle.Settled.to_dict(): how the log was settled before classifying


class Classification(TypedDict, total=False):
    """The knowledge base's verdict on a failure (``classify.Classification.to_dict``)."""

    id: str
    category: str
    kind: str  # vllm, infrastructure, platform, stack
    title: str
    explanation: str
    refs: list[str]
    workaround: str
    fixed_in: str
    matched: str
    workaround_pin: str


class ServerInfo(TypedDict, total=False):
    """A record's ``server`` object (``results.server_fields``): argv and env are redacted."""

    spec_key: str
    log_path: str
    argv: list[str]
    serve_args: list[str]
    env: dict[str, str]
    start_time_s: float | None
    compile_cache: dict[str, str | None] | None
    gpus: dict[str, object] | None
    cpu_share: dict[str, object] | None
    restarts: int
    died_during_test: bool
    hung_after_s: float | None


class Record(TypedDict, total=False):
    """One test's result record (schema ``pytest-vllm-compat/record@1``, docs/records.md)."""

    schema: str
    run_id: str
    test_id: str
    test_name: str
    model: str
    model_source: str
    hub: dict[str, object] | None  # hub.Snapshot.record()
    packaged_model: dict[str, object] | None  # packaged_model.PackagedModel.record()
    families: list[str]
    vllm_version: str
    distribution: str
    stack: StackRecord
    device: dict[str, object]  # gpu.discovery.device_summary: kind, name, count, driver, cuda
    platform: str
    feature: str
    outcome: str
    status: str
    duration_s: float
    server_start_s: float
    started_at: str
    finished_at: str
    error: ErrorInfo | None
    classification: Classification | None
    skip_reason: str | None
    server: ServerInfo | None
    log_excerpt: str | None
    log_path: str | None
    metrics: dict[str, object]  # what the test measured (docs/records.md), as the suite put it
    provenance: dict[str, object]  # environments.VLLMEnvironment.record_provenance()


class ServerSummary(TypedDict, total=False):
    """A server spec's starts in one process (``ServerPool.summary``), as the manifest lists it."""

    spec_key: str
    starts: int
    markers: list[str]
    start_times_s: list[float]
    start_windows: list[list[float]]  # [launched, ready] unix times
    log_paths: list[str]
    crashes: list[JSONObject]
    startup_error: str | None


class EnvironmentSummary(TypedDict, total=False):
    """A vLLM environment a run used, as the manifest lists it (``CompatSession.write_worker_summary``)."""

    name: str
    provenance: JSONObject
    provision_s: float
    created: bool
    lock_file: str | None
    lock_sha256: str | None
    lock_stored: str | None  # locks/<sha256>.txt in the results dir (lockfiles.store_lock)


class ResolvedOption(TypedDict):
    """An option as the manifest lists it: its value (redacted, as text) and where it came from."""

    value: str | None
    source: str


class Manifest(TypedDict, total=False):
    """A run's manifest (schema ``pytest-vllm-compat/manifest@1``, docs/records.md)."""

    schema: str
    run_id: str
    started_at: str
    finished_at: str
    plugin_version: str
    suite_version: str | None
    argv: list[str]
    versions: list[str]
    versions_requested: str
    versions_note: str
    stacks: list[StackRecord]
    index_versions: list[str] | None
    device: dict[str, object]
    host: dict[str, str]
    environments: dict[str, EnvironmentSummary]
    env_errors: dict[str, str]
    counts: dict[str, int]
    servers: list[ServerSummary]
    leftover_pids: list[int]
    exitstatus: int
    options: dict[str, ResolvedOption]
