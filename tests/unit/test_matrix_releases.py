"""The matrix knows releases: the index the runs saw puts untested releases between tested ones on the site
as gaps, and regressions / first passes say which untested releases the change may be in."""

from __future__ import annotations

import json
from pathlib import Path

from pytest_vllm_compat import matrix as mx
from pytest_vllm_compat.cli import matrix_main
from pytest_vllm_compat.matrix.cell_types import Matrix
from pytest_vllm_compat.record_types import Record

INDEX = ["0.33.0rc1", "0.32.0", "0.31.0", "0.30.0", "0.29.0", "0.28.0", "0.27.1", "0.27.0", "0.26.0",
         "0.12.0.post2"]


def rec(version: str, status: str, feature: str = "guided_decoding:outlines", run: str = "r1") -> Record:
    return {"schema": "pytest-vllm-compat/record@1", "run_id": run, "test_id": f"t.py::test_regex[{version}]",
            "model": "tiny-mistral", "vllm_version": version, "platform": "cpu", "feature": feature,
            "outcome": "passed" if status == "pass" else "failed", "status": status,
            "started_at": "2026-12-01T10:00:00Z", "finished_at": "2026-12-01T10:00:01Z",
            "classification": {"category": "guided_decoding_output", "kind": "vllm"} if status == "fail" else None}


def build(records: list[Record], index: list[str] | None = INDEX) -> Matrix:
    return mx.build_matrix(records, [{"run_id": "r1", "index_versions": index}], classifier=None)


def test_releases_between_the_tested_ones_are_columns_and_the_untested_are_named() -> None:
    m = build([rec("0.27.0", "pass"), rec("0.30.0", "fail"), rec("0.32.0", "fail")])
    assert m["versions"] == ["0.27.0", "0.30.0", "0.32.0"]
    # final releases only, and only inside the tested span (not 0.26.0, not 0.33.0rc1)
    assert m["releases"] == ["0.27.0", "0.27.1", "0.28.0", "0.29.0", "0.30.0", "0.31.0", "0.32.0"]
    assert m["untested_releases"] == ["0.27.1", "0.28.0", "0.29.0", "0.31.0"]
    (reg,) = m["regressions"]
    assert (reg["from_version"], reg["to_version"]) == ("0.27.0", "0.30.0")
    assert reg["untested_between"] == ["0.27.1", "0.28.0", "0.29.0"]


def test_first_pass_reads_the_range_around_it() -> None:
    m = build([rec("0.27.0", "fail"), rec("0.29.0", "fail"), rec("0.31.0", "pass"), rec("0.32.0", "pass")])
    (ins,) = m["insights"]
    assert ins["first_pass"] == "0.31.0" and ins["first_pass_after"] == "0.29.0"
    assert ins["first_pass_untested_before"] == ["0.30.0"]  # fixed in 0.31.0, or already in 0.30.0
    m = build([rec("0.28.0", "pass")])
    assert m["insights"][0]["first_pass_after"] is None and m["releases"] == ["0.28.0"]


def test_without_an_index_the_columns_are_the_tested_versions() -> None:
    m = build([rec("0.27.0", "pass"), rec("0.32.0", "pass"), rec("current", "pass")], index=None)
    assert m["releases"] == m["versions"] == ["0.27.0", "0.32.0", "current"]
    assert m["untested_releases"] == []
    assert m["insights"][0]["first_pass_untested_before"] == []


def test_site_shows_untested_releases_as_gaps(tmp_path: Path) -> None:
    results = tmp_path / "results"
    (results / "records").mkdir(parents=True)
    (results / "manifests").mkdir()
    (results / "records" / "r.jsonl").write_text(
        "\n".join(json.dumps(rec(v, s)) for v, s in (("0.27.0", "pass"), ("0.30.0", "fail"))) + "\n")
    (results / "manifests" / "r1.json").write_text(json.dumps({"run_id": "r1", "index_versions": INDEX}))
    assert matrix_main([str(results), "--output", str(tmp_path / "site")]) == 0
    index = (tmp_path / "site" / "index.html").read_text()
    for v in ("0.27.1", "0.28.0", "0.29.0"):
        assert f'title="a release no run tested">vLLM {v}<span class="n">not tested</span></th>' in index
    assert "0.31.0" not in index  # outside the tested span
    assert "fail</b> in vLLM 0.30.0 or earlier: 0.27.1, 0.28.0, 0.29.0 not tested" in index
    assert "vLLM 0.27.0, 0.30.0; not tested: 0.27.1, 0.28.0, 0.29.0" in index
    assert index.count('class="chip st-untested') >= 3  # one dashed chip per untested release
