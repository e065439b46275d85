"""Hub models' weights, fetched before the server starts: outside the startup timeout, once per model per
session, with a classified error when they cannot be had.

vLLM downloads a ``--model org/name`` itself during startup, so a 15 GB download would count against the
startup timeout and a gated or missing repo would look like a crashed server. Instead the plugin fetches the
snapshot first, with the version's own ``huggingface_hub`` (``hub_snapshot.py`` run by the environment's
interpreter) into the user's Hugging Face cache, and starts the server from the local snapshot directory
with offline mode on, so a flaky network cannot fail a test later.

The user's ``HF_HOME``, ``HF_HUB_CACHE``, ``HF_ENDPOINT``, ``HF_TOKEN`` and ``HF_HUB_OFFLINE`` reach the fetch
(the token through the environment, never argv). Across xdist workers a file lock and a result file per
(repo, revision) under ``<results>/.hub/<run_id>/`` make one worker fetch and the others reuse its answer,
including a failure: every test of that model gets the same error, and no second download is tried.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .locks import file_lock
from .results import model_slug

SCRIPT = Path(__file__).with_name("hub_snapshot.py")

# What the fetch sees of the user's environment: the hub's own variables, proxies and CA bundles.
HUB_ENV = ("HF_HOME", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_ENDPOINT", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN",
           "HF_TOKEN_PATH", "HF_HUB_OFFLINE", "HF_HUB_ETAG_TIMEOUT", "HF_HUB_DOWNLOAD_TIMEOUT", "HF_HUB_DISABLE_XET",
           "HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY", "https_proxy", "http_proxy", "no_proxy", "REQUESTS_CA_BUNDLE",
           "SSL_CERT_FILE", "XDG_CACHE_HOME", "HOME", "PATH")

# Why a snapshot could not be had, as the error says it (failures.toml matches these words).
REASONS = {
    "offline": "HF_HUB_OFFLINE is set and the model is not in the Hugging Face cache",
    "gated": "the repository is gated and the token (HF_TOKEN) is missing or has no access",
    "missing": "no such repository on the hub (or it is private and the token cannot see it)",
    "revision": "the repository has no such revision",
    "disk_full": "no space left on the disk of the Hugging Face cache",
    "unreachable": "the hub cannot be reached and the model is not in the Hugging Face cache",
    "failed": "the download failed",
}
ENOSPC = 28


class HubError(RuntimeError):
    """A hub model's snapshot could not be had. ``str()`` starts ``HubDownloadError: REPO@REV: REASON``."""

    def __init__(self, repo: str, revision: str | None, reason: str, detail: str) -> None:
        self.repo, self.revision, self.reason, self.detail = repo, revision, reason, detail
        super().__init__(f"HubDownloadError: {repo}@{revision or 'main'}: {REASONS[reason]}: {detail}")


@dataclass(frozen=True)
class Snapshot:
    """A model's files in the local Hugging Face cache, and where they came from."""

    repo: str
    revision: str | None  # as asked (registry ``revision``), None = the default branch
    sha: str  # the commit the snapshot is
    path: str
    files: int | None = None
    bytes: int | None = None
    cached: bool = False  # nothing had to be downloaded
    fetch_s: float = 0.0
    endpoint: str = ""

    def record(self) -> dict[str, object]:
        return {"repo": self.repo, "revision": self.revision, "sha": self.sha, "files": self.files,
                "bytes": self.bytes, "cached": self.cached, "fetch_s": round(self.fetch_s, 3),
                "endpoint": self.endpoint}


def reason_of(error: Mapping[str, object], offline: bool) -> str:
    """The reason (a key of REASONS) for the child's error: by the root exception's type, status and errno."""
    mro = error.get("mro")
    names = set(mro) if isinstance(mro, list) and mro else {error.get("type")}
    message = str(error.get("message") or "") + " " + str(error.get("cause") or "")
    if error.get("errno") == ENOSPC or "No space left on device" in message:
        return "disk_full"
    if "GatedRepoError" in names or error.get("status") in (401, 403):
        return "gated"
    if "RevisionNotFoundError" in names:
        return "revision"
    if "RepositoryNotFoundError" in names:
        return "missing"
    if "LocalEntryNotFoundError" in names or "OfflineModeIsEnabled" in names:
        return "offline" if offline else "unreachable"
    return "failed"


def is_offline(env: Mapping[str, str]) -> bool:
    return str(env.get("HF_HUB_OFFLINE", "")).strip().upper() in ("1", "ON", "YES", "TRUE")


def child_env(environ: Mapping[str, str]) -> dict[str, str]:
    env = {k: environ[k] for k in HUB_ENV if k in environ}
    env["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"  # hub_snapshot.py says the progress, a line every few seconds
    env["HF_HUB_DISABLE_TELEMETRY"] = "1"
    return env


def fetch_snapshot(python: Path | str, repo: str, revision: str | None = None, *, trust_remote_code: bool = False,
                   progress: Callable[[str], None] = lambda _m: None, environ: Mapping[str, str] | None = None,
                   timeout: float | None = None) -> Snapshot:
    """Fetch ``repo`` at ``revision`` with ``python``'s huggingface_hub; raise HubError when it cannot."""
    environ = os.environ if environ is None else environ
    argv = [str(python), str(SCRIPT), "--repo", repo]
    if revision:
        argv += ["--revision", revision]
    if trust_remote_code:
        argv.append("--trust-remote-code")
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=child_env(environ), start_new_session=True)
    tail: list[str] = []

    def relay() -> None:
        assert proc.stderr is not None
        for raw in proc.stderr:
            line = raw.rstrip()
            if line:
                tail.append(line)
                del tail[:-40]
                progress(f"[vllm-compat] hub {line}")

    relay_thread = threading.Thread(target=relay, daemon=True, name="vllm-compat-hub")
    relay_thread.start()
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise HubError(repo, revision, "failed", f"no answer within {timeout:.0f} s") from None
    finally:
        relay_thread.join(timeout=5)
    result = _last_json(out)
    if result is None:
        raise HubError(repo, revision, "failed",
                       f"hub_snapshot.py exited {proc.returncode} without a result: " + " | ".join(tail[-5:]))
    if not result.get("ok"):
        err = result.get("error") or {}
        reason = reason_of(err, is_offline(environ))
        first = str(err.get("message") or "").strip().splitlines()
        detail = f"{err.get('type')}: {' '.join(first)[:600]}" if first else str(err.get("type"))
        raise HubError(repo, revision, reason, detail)
    return Snapshot(repo=repo, revision=revision, sha=str(result["sha"]), path=str(result["path"]),
                    files=result.get("files"), bytes=result.get("bytes"), cached=bool(result.get("cached")),
                    fetch_s=time.monotonic() - t0, endpoint=environ.get("HF_ENDPOINT", ""))


def _last_json(out: str) -> dict[str, Any] | None:
    for line in reversed((out or "").strip().splitlines()):
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None


class SnapshotStore:
    """Once per (repo, revision) per session, shared by xdist workers through ``state_dir``."""

    def __init__(self, state_dir: Path, fetch: Callable[..., Snapshot] = fetch_snapshot) -> None:
        self.state_dir = state_dir
        self._fetch = fetch
        self._known: dict[str, Snapshot | HubError] = {}

    @staticmethod
    def key(repo: str, revision: str | None) -> str:
        return model_slug(f"{repo}@{revision or 'main'}")

    def get(self, python: Path | str, repo: str, revision: str | None = None, *, trust_remote_code: bool = False,
            progress: Callable[[str], None] = lambda _m: None) -> Snapshot:
        key = self.key(repo, revision)
        known = self._known.get(key)
        if known is None:
            known = self._load_or_fetch(key, python, repo, revision, trust_remote_code, progress)
            self._known[key] = known
        if isinstance(known, HubError):
            raise known
        return known

    def _load_or_fetch(self, key: str, python: Path | str, repo: str, revision: str | None, trust_remote_code: bool,
                       progress: Callable[[str], None]) -> Snapshot | HubError:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        state = self.state_dir / f"{key}.json"
        with file_lock(self.state_dir / f"{key}.lock"):
            if state.is_file():
                data = json.loads(state.read_text())
                if "error" in data:
                    e = data["error"]
                    return HubError(e["repo"], e["revision"], e["reason"], e["detail"])
                return Snapshot(**data["snapshot"])
            progress(f"[vllm-compat] hub {repo}@{revision or 'main'}: fetching the snapshot before the server "
                     f"starts (with {python})")
            try:
                snap = self._fetch(python, repo, revision, trust_remote_code=trust_remote_code, progress=progress)
            except HubError as e:
                progress(f"[vllm-compat] hub {e}")
                state.write_text(json.dumps({"error": {"repo": e.repo, "revision": e.revision, "reason": e.reason,
                                                       "detail": e.detail}}))
                return e
            state.write_text(json.dumps({"snapshot": asdict(snap)}))
            progress(f"[vllm-compat] hub {repo}@{revision or 'main'}: commit {snap.sha[:12]} in {snap.path} "
                     f"({'from the cache' if snap.cached else 'downloaded'}, {snap.fetch_s:.1f} s)")
            return snap
