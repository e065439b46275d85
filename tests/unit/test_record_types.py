"""record_types.py says what records and manifests hold: the committed ones (reports/runs) and a composed one
must have no field it does not declare, and their required parts must have the declared keys."""

from __future__ import annotations

import json
from pathlib import Path

from pytest_vllm_compat.record_types import (
    Classification,
    EnvironmentSummary,
    ErrorInfo,
    Manifest,
    Record,
    ServerInfo,
    ServerSummary,
    StackRecord,
)

RUNS = Path(__file__).resolve().parents[2] / "reports" / "runs"

NESTED = {"stack": StackRecord, "error": ErrorInfo, "classification": Classification,
          "server": ServerInfo}


def committed_records() -> list[dict[str, object]]:
    return [json.loads(line) for path in sorted(RUNS.glob("*/records/*.jsonl"))
            for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_committed_records_have_only_declared_fields() -> None:
    records = committed_records()
    assert records, f"no committed records under {RUNS}"
    declared = set(Record.__annotations__)
    for rec in records:
        assert set(rec) <= declared, (rec["test_id"], set(rec) - declared)
        for name, shape in NESTED.items():
            part = rec.get(name)
            if isinstance(part, dict):
                assert set(part) <= set(shape.__annotations__), (rec["test_id"], name, set(part))


def test_stack_record_requires_its_two_fields() -> None:
    assert StackRecord.__required_keys__ == {"name", "requirements"}
    stacks = [rec["stack"] for rec in committed_records() if "stack" in rec]  # older records have none
    assert stacks
    for stack in stacks:
        assert isinstance(stack, dict) and set(stack) == {"name", "requirements"}


def test_committed_manifests_have_only_declared_fields() -> None:
    manifests = [json.loads(p.read_text(encoding="utf-8")) for p in sorted(RUNS.glob("*/manifests/*.json"))]
    assert manifests
    for man in manifests:
        assert set(man) <= set(Manifest.__annotations__), set(man) - set(Manifest.__annotations__)
        for server in man.get("servers", []):
            assert set(server) <= set(ServerSummary.__annotations__), set(server)
        for env in man.get("environments", {}).values():
            assert set(env) <= set(EnvironmentSummary.__annotations__), set(env)
