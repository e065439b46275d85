"""The GitHub Actions workflows, read as data: the GPU matrix's shards line up with --vllm-shard, every
shard's artifact reaches the merge job, the merge job builds and publishes the matrix, CPU CI runs .ci/run."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

yaml = pytest.importorskip("yaml", reason="pyyaml is in the [test] extra")

WORKFLOWS = Path(__file__).resolve().parents[2] / ".github" / "workflows"


def _load(name: str) -> dict[str, Any]:
    data: dict[Any, Any] = yaml.safe_load((WORKFLOWS / name).read_text())
    if True in data:  # YAML 1.1 reads the key `on` as a boolean
        data["on"] = data.pop(True)
    return data


def _run_lines(job: dict[str, Any]) -> str:
    return "\n".join(str(step.get("run", "")) for step in job["steps"])


def test_gpu_matrix_runs_every_version_and_shard_on_gpu_runners() -> None:
    from pytest_vllm_compat.capabilities import capabilities

    wf = _load("gpu-compat.yml")
    job = wf["jobs"]["compat"]
    assert {"self-hosted", "gpu"} <= set(job["runs-on"])
    assert job["strategy"]["fail-fast"] is False
    versions, shards = job["strategy"]["matrix"]["vllm"], job["strategy"]["matrix"]["shard"]
    assert versions and all(capabilities(v) for v in versions)  # versions the capability table knows
    assert shards == list(range(1, len(shards) + 1))
    run = _run_lines(job)
    assert f"--vllm-shard=${{{{ matrix.shard }}}}/{len(shards)}" in run
    assert "--vllm=${{ matrix.vllm }}" in run and "--vllm-device=cuda" in run
    assert "--vllm-compile-cache=keep" in run
    # Each version x shard writes its own results directory and uploads it, even when tests failed.
    results = re.search(r"--vllm-results=(.+?)(?= -|$)", run, re.MULTILINE)
    assert results is not None
    upload = next(s for s in job["steps"] if str(s.get("uses", "")).startswith("actions/upload-artifact"))
    assert upload["if"] == "always()" and upload["with"]["path"] == results.group(1)
    assert "matrix.vllm" in upload["with"]["name"] and "matrix.shard" in upload["with"]["name"]


def test_merge_job_builds_one_matrix_from_all_shards_and_publishes_it() -> None:
    wf = _load("gpu-compat.yml")
    upload_name = next(s for s in wf["jobs"]["compat"]["steps"]
                       if str(s.get("uses", "")).startswith("actions/upload-artifact"))["with"]["name"]
    merge = wf["jobs"]["matrix"]
    assert merge["needs"] == "compat" and merge["if"] == "always()"
    download = next(s for s in merge["steps"] if str(s.get("uses", "")).startswith("actions/download-artifact"))
    pattern = download["with"]["pattern"]
    assert upload_name.startswith(pattern.rstrip("*"))  # every shard's artifact is downloaded
    run = _run_lines(merge)
    assert f"vllm-compat matrix {download['with']['path']}/*" in run
    assert any(str(s.get("uses", "")).startswith("actions/deploy-pages") for s in merge["steps"])
    assert merge["permissions"]["pages"] == "write" and wf["permissions"] == {"contents": "read"}


def test_packing_inputs_reach_the_suite() -> None:
    wf = _load("gpu-compat.yml")
    inputs = wf["on"]["workflow_dispatch"]["inputs"]
    assert inputs["workers"]["default"] == "0" and inputs["servers_per_gpu"]["default"] == "1"
    step = next(s for s in wf["jobs"]["compat"]["steps"] if "pytest suites" in str(s.get("run", "")))
    assert "inputs.servers_per_gpu" in step["env"]["VLLM_COMPAT_SERVERS_PER_GPU"]
    assert "inputs.workers" in step["env"]["WORKERS"] and '-n "$WORKERS"' in step["run"]


def test_gpu_workflow_serves_the_hub_registry_by_default() -> None:
    wf = _load("gpu-compat.yml")
    assert wf["on"]["workflow_dispatch"]["inputs"]["models"]["default"] == "suites/models-hub.toml"
    step = next(s for s in wf["jobs"]["compat"]["steps"] if "pytest suites" in str(s.get("run", "")))
    assert "--vllm-models=${{ github.event.inputs.models || 'suites/models-hub.toml' }}" in step["run"]
    assert step["env"]["HF_TOKEN"] == "${{ secrets.HF_TOKEN }}"
    assert (WORKFLOWS.parents[1] / "suites" / "models-hub.toml").is_file()


def test_cpu_ci_runs_the_ci_script() -> None:
    wf = _load("ci.yml")
    (job,) = wf["jobs"].values()
    assert job["timeout-minutes"] <= 90
    assert "bash .ci/run" in _run_lines(job)
    assert "python3 dev.py test" in (WORKFLOWS.parents[1] / ".ci" / "run").read_text()
