"""`vllm-compat matrix --reports-from DIR`: a bisection's reports on the site, its probes' records out of the cells."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from pytest_vllm_compat.cli import matrix_main

ROOT = Path(__file__).resolve().parents[2]
BISECTION = ROOT / "reports" / "runs" / "bisect-outlines-regex-choice"


def _results(tmp_path: Path) -> Path:
    d = tmp_path / "campaign"
    (d / "records").mkdir(parents=True)
    rec = {"run_id": "r-campaign", "model": "smollm2-135m-instruct", "vllm_version": "0.31.0", "platform": "cpu",
           "feature": "guided_decoding", "test_id": "suites/test_guided_decoding.py::test_x", "status": "pass",
           "outcome": "passed"}
    (d / "records" / "r-campaign-main.jsonl").write_text(json.dumps(rec) + "\n")
    return d


def test_the_bisection_is_shown_and_its_records_stay_out_of_the_cells(tmp_path: Path) -> None:
    evidence = tmp_path / "bisect"
    shutil.copytree(BISECTION, evidence)
    probe_runs = {json.loads(line)["run_id"] for f in (evidence / "records").glob("*.jsonl")
                  for line in f.read_text().splitlines() if line.strip()}
    assert probe_runs  # the committed bisection has probe records, so the check below can fail
    out = tmp_path / "site"
    assert matrix_main([str(_results(tmp_path)), "--reports-from", str(evidence), "--output", str(out)]) == 0
    m = json.loads((out / "matrix.json").read_text())
    assert m["bisections"], "the bisection report is on the site"
    assert [r["run_id"] for r in m["runs"]] == ["r-campaign"]
    assert {r["run_id"] for c in m["cells"] for r in c["runs"]} == {"r-campaign"}

    # given as a results dir instead, its probes join the cells
    out2 = tmp_path / "site2"
    assert matrix_main([str(_results(tmp_path / "b")), str(evidence), "--output", str(out2)]) == 0
    assert probe_runs <= {r["run_id"] for r in json.loads((out2 / "matrix.json").read_text())["runs"]}


def test_a_missing_reports_dir_is_an_early_error(tmp_path: Path) -> None:
    assert matrix_main([str(_results(tmp_path)), "--reports-from", str(tmp_path / "nope"),
                        "--output", str(tmp_path / "site")]) == 2
    assert not (tmp_path / "site").exists()
