"""Hub snapshots: reasons from the child's error, the environment the fetch sees, once per model per session
across workers, the KB wording, and which files are fetched. The real download is in
tests/e2e/test_hub_models_real.py."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from pytest_vllm_compat import hub
from pytest_vllm_compat.hub import REASONS, HubError, Snapshot, SnapshotStore, child_env, reason_of
from pytest_vllm_compat.hub_snapshot import choose_patterns, describe, selected
from pytest_vllm_compat.results import classify_failure


@pytest.mark.parametrize(("error", "offline", "reason"), [
    ({"type": "GatedRepoError", "mro": ["GatedRepoError", "RepositoryNotFoundError", "HfHubHTTPError"],
      "status": 401}, False, "gated"),
    ({"type": "HfHubHTTPError", "mro": ["HfHubHTTPError"], "status": 403}, False, "gated"),
    ({"type": "RepositoryNotFoundError", "mro": ["RepositoryNotFoundError", "HfHubHTTPError"], "status": 404},
     False, "missing"),
    ({"type": "RevisionNotFoundError", "mro": ["RevisionNotFoundError", "HfHubHTTPError"], "status": 404},
     False, "revision"),
    ({"type": "LocalEntryNotFoundError", "mro": ["LocalEntryNotFoundError", "FileNotFoundError"]}, True, "offline"),
    ({"type": "LocalEntryNotFoundError", "mro": ["LocalEntryNotFoundError"]}, False, "unreachable"),
    ({"type": "OSError", "mro": ["OSError"], "errno": 28, "message": "[Errno 28] No space left on device"},
     False, "disk_full"),
    ({"type": "RuntimeError", "mro": ["RuntimeError"], "message": "x",
      "cause": "OSError: [Errno 28] No space left on device"}, False, "disk_full"),
    ({"type": "HfHubHTTPError", "mro": ["HfHubHTTPError"], "status": 500}, False, "failed"),
])
def test_the_reason_comes_from_the_root_exception(error: dict[str, Any], offline: bool, reason: str) -> None:
    assert reason_of(error, offline) == reason


@pytest.mark.parametrize(("reason", "kb_id"), [
    ("offline", "hub_offline_not_cached"), ("gated", "hub_gated"), ("missing", "hub_missing"),
    ("revision", "hub_revision_missing"), ("disk_full", "hub_disk_full"), ("unreachable", "hub_unreachable"),
    ("failed", "hub_download_failed"),
])
def test_every_reason_has_its_knowledge_base_entry(reason: str, kb_id: str) -> None:
    err = HubError("acme/tiny", "v1", reason, "SomeError: details")
    text = f"pytest_vllm_compat.hub.HubError: {err}"
    c = classify_failure(text, "", "0.32.0")
    assert c is not None and (c["id"], c["kind"]) == (kb_id, "infrastructure"), c
    assert "acme/tiny@v1" in c["title"]
    assert set(REASONS) == {"offline", "gated", "missing", "revision", "disk_full", "unreachable", "failed"}


def test_the_fetch_sees_the_hub_variables_and_nothing_else() -> None:
    env = child_env({"HF_TOKEN": "hf_secret", "HF_ENDPOINT": "http://127.0.0.1:1", "HF_HOME": "/h",
                     "HF_HUB_OFFLINE": "1", "AWS_SECRET_ACCESS_KEY": "x", "PATH": "/bin",
                     "VLLM_COMPAT_ENV_DIR": "/e"})
    assert env["HF_TOKEN"] == "hf_secret" and env["HF_ENDPOINT"] == "http://127.0.0.1:1"
    assert env["HF_HOME"] == "/h" and env["HF_HUB_OFFLINE"] == "1" and env["PATH"] == "/bin"
    assert "AWS_SECRET_ACCESS_KEY" not in env and "VLLM_COMPAT_ENV_DIR" not in env
    assert env["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"


def test_the_token_travels_in_the_environment_not_argv(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seen: dict[str, Any] = {}

    class Proc:
        returncode = 0
        stderr = iter(["acme/tiny@main: 1 files, 0.0 MB, commit abc\n"])

        def __init__(self, argv: list[str], **kw: Any) -> None:
            seen["argv"], seen["env"] = argv, kw["env"]

        def communicate(self, timeout: float | None = None) -> tuple[str, str]:
            return '{"ok": true, "path": "/p/snapshots/abc", "sha": "abc", "files": 1, "bytes": 3, "cached": false}\n', ""

    monkeypatch.setattr("pytest_vllm_compat.hub.subprocess.Popen", Proc)
    said: list[str] = []
    snap = hub.fetch_snapshot(sys.executable, "acme/tiny", "v1", progress=said.append,
                              environ={"HF_TOKEN": "hf_secret", "HF_ENDPOINT": "http://e"})
    assert "hf_secret" not in " ".join(seen["argv"]) and seen["env"]["HF_TOKEN"] == "hf_secret"
    assert seen["argv"][-2:] == ["--revision", "v1"]
    assert (snap.sha, snap.path, snap.files, snap.endpoint) == ("abc", "/p/snapshots/abc", 1, "http://e")
    assert said == ["[vllm-compat] hub acme/tiny@main: 1 files, 0.0 MB, commit abc"]


def test_a_child_without_a_result_is_a_failed_download(monkeypatch: pytest.MonkeyPatch) -> None:
    class Proc:
        returncode = -9
        stderr = iter(["Killed\n"])

        def __init__(self, argv: list[str], **kw: Any) -> None:
            pass

        def communicate(self, timeout: float | None = None) -> tuple[str, str]:
            return "", ""

    monkeypatch.setattr("pytest_vllm_compat.hub.subprocess.Popen", Proc)
    with pytest.raises(HubError, match=r"the download failed: hub_snapshot.py exited -9 without a result: Killed"):
        hub.fetch_snapshot(sys.executable, "acme/tiny", environ={})


def _snap(sha: str = "abc") -> Snapshot:
    return Snapshot(repo="acme/tiny", revision=None, sha=sha, path=f"/p/{sha}", files=2, bytes=10)


def test_a_snapshot_is_fetched_once_per_session_and_shared_with_other_workers(tmp_path: Path) -> None:
    calls: list[str] = []

    def fetch(python: Any, repo: str, revision: str | None, **kw: Any) -> Snapshot:
        calls.append(repo)
        return _snap()

    state = tmp_path / ".hub" / "run1"
    worker1, worker2 = SnapshotStore(state, fetch=fetch), SnapshotStore(state, fetch=fetch)
    assert worker1.get("py", "acme/tiny") == _snap()
    assert worker1.get("py", "acme/tiny") == _snap()
    assert worker2.get("py", "acme/tiny") == _snap()  # another worker: read from the state file
    assert calls == ["acme/tiny"]
    assert SnapshotStore(tmp_path / ".hub" / "run2", fetch=fetch).get("py", "acme/tiny") == _snap()
    assert calls == ["acme/tiny"] * 2  # a new session asks again (the hub cache makes it cheap)


def test_a_failure_is_remembered_so_every_test_of_the_model_gets_it(tmp_path: Path) -> None:
    calls: list[str] = []

    def fetch(python: Any, repo: str, revision: str | None, **kw: Any) -> Snapshot:
        calls.append(repo)
        raise HubError(repo, revision, "gated", "GatedRepoError: 401")

    state = tmp_path / "state"
    for store in (SnapshotStore(state, fetch=fetch), SnapshotStore(state, fetch=fetch)):
        for _ in range(2):
            with pytest.raises(HubError, match="acme/gated@v2: the repository is gated") as e:
                store.get("py", "acme/gated", "v2")
            assert e.value.reason == "gated"
    assert calls == ["acme/gated"]
    assert SnapshotStore.key("acme/gated", "v2") != SnapshotStore.key("acme/gated", None)


def test_only_what_vllm_loads_is_fetched() -> None:
    files = {"config.json": 1, "tokenizer.json": 1, "tokenizer_config.json": 1, "tokenizer.model": 1,
             "model-00001-of-00002.safetensors": 5, "model-00002-of-00002.safetensors": 5,
             "pytorch_model.bin": 10, "original/consolidated.00.pth": 10, "original/params.json": 1,
             "README.md": 1, "modeling_x.py": 1, "chat_template.jinja": 1}
    got = selected(files, choose_patterns(files))
    assert sorted(got) == ["chat_template.jinja", "config.json", "model-00001-of-00002.safetensors",
                           "model-00002-of-00002.safetensors", "tokenizer.json", "tokenizer.model",
                           "tokenizer_config.json"]
    assert "modeling_x.py" in selected(files, choose_patterns(files, trust_remote_code=True))
    only_bin = {"config.json": 1, "pytorch_model.bin": 10}
    assert sorted(selected(only_bin, choose_patterns(only_bin))) == ["config.json", "pytorch_model.bin"]


def test_describe_keeps_the_root_cause() -> None:
    try:
        try:
            raise OSError(28, "No space left on device")
        except OSError as inner:
            raise RuntimeError("download failed") from inner
    except RuntimeError as e:
        d = describe(e)
    assert d["type"] == "RuntimeError" and d["cause"] == "OSError: [Errno 28] No space left on device"
    assert reason_of(d, offline=False) == "disk_full"
