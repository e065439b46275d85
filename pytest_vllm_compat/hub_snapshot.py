"""Fetch a hub model's snapshot into the user's Hugging Face cache, before any server starts.

Run as a plain script by a vLLM environment's own interpreter (its ``huggingface_hub``), so it imports
nothing from this package and only the standard library at module level:

    <env-python> hub_snapshot.py --repo ORG/NAME [--revision REV] [--trust-remote-code]

It honours the user's ``HF_HOME``, ``HF_HUB_CACHE``, ``HF_ENDPOINT``, ``HF_TOKEN`` and ``HF_HUB_OFFLINE``
(``huggingface_hub`` reads them). Progress goes to stderr, one line every few seconds. The last line on
stdout is one JSON object: ``{"ok": true, "path", "sha", "files", "bytes", "cached"}`` or
``{"ok": false, "error": {"type", "mro", "status", "errno", "message"}}``; hub.py words and classifies it.

Only what vLLM loads is fetched: configs, tokenizer files, and one weight format (safetensors when the
repo has them, like vLLM's ``--load-format auto``); ``original/`` checkpoints are left out.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

SMALL_FILES = ["*.json", "*.model", "*.txt", "*.tiktoken", "*.jinja", "tokenizer*"]
WEIGHT_FORMATS = ["*.safetensors", "*.bin", "*.pt", "*.pth"]
IGNORE = ["original/*", "*/original/*"]
PROGRESS_EVERY_S = 5.0


def choose_patterns(files: Iterable[str], trust_remote_code: bool = False) -> list[str]:
    """The allow patterns for this repo's files: the small files and the first weight format it has."""
    names = list(files)
    patterns = list(SMALL_FILES)
    if trust_remote_code:
        patterns.append("*.py")
    for fmt in WEIGHT_FORMATS:
        if any(fnmatch.fnmatch(n, fmt) and not _ignored(n) for n in names):
            patterns.append(fmt)
            break
    return patterns


def _ignored(name: str) -> bool:
    return any(fnmatch.fnmatch(name, p) for p in IGNORE)


def selected(files: dict[str, int], patterns: list[str]) -> dict[str, int]:
    return {n: s for n, s in files.items()
            if not _ignored(n) and any(fnmatch.fnmatch(n, p) for p in patterns)}


def describe(exc: BaseException) -> dict[str, object]:
    """The exception as data: its type (and bases), HTTP status, errno, message, and its cause."""
    return {"type": type(exc).__name__, "mro": [c.__name__ for c in type(exc).__mro__],
            "status": getattr(getattr(exc, "response", None), "status_code", None),
            "errno": getattr(exc, "errno", None), "message": str(exc)[:3000],
            "cause": (f"{type(exc.__cause__).__name__}: {str(exc.__cause__)[:1000]}"
                      if exc.__cause__ is not None else None)}


def _dir_bytes(path: Path) -> int:
    total = 0
    if path.is_dir():
        for p in path.iterdir():
            try:
                total += p.stat().st_size
            except OSError:
                pass
    return total


def _watch(blobs: Path, label: str, total: int, stop: threading.Event) -> None:
    start = _dir_bytes(blobs)
    t0 = time.monotonic()
    while not stop.wait(PROGRESS_EVERY_S):
        done = max(0, _dir_bytes(blobs) - start)
        pct = f" ({100 * done / total:.0f} %)" if total else ""
        print(f"{label}: {done / 1e6:.1f} MB of {total / 1e6:.1f} MB{pct}, {time.monotonic() - t0:.0f} s",
              file=sys.stderr, flush=True)


def fetch(repo: str, revision: str | None, trust_remote_code: bool) -> dict[str, Any]:
    from huggingface_hub import HfApi, constants, snapshot_download

    label = f"{repo}@{revision or 'main'}"
    if constants.HF_HUB_OFFLINE:
        path = snapshot_download(repo, revision=revision, local_files_only=True)
        return {"ok": True, "path": path, "sha": Path(path).name, "files": None, "bytes": None, "cached": True}
    api = HfApi()
    try:
        info = api.model_info(repo, revision=revision)
    except Exception as e:  # the hub unreachable: the cache may still have it
        if not any(c.__name__ in ("ConnectError", "TimeoutException", "ConnectionError", "Timeout")
                   for c in type(e).__mro__):
            raise
        path = snapshot_download(repo, revision=revision, local_files_only=True)
        return {"ok": True, "path": path, "sha": Path(path).name, "files": None, "bytes": None, "cached": True,
                "note": f"hub unreachable ({type(e).__name__}); served from the cache"}
    sha = str(info.sha)
    files: dict[str, int] = {}
    for entry in api.list_repo_tree(repo, revision=sha, recursive=True):
        if type(entry).__name__ == "RepoFile":
            files[entry.path] = int(getattr(entry, "size", 0) or 0)
    patterns = choose_patterns(files, trust_remote_code)
    wanted = selected(files, patterns)
    total = sum(wanted.values())
    storage = Path(constants.HF_HUB_CACHE) / ("models--" + repo.replace("/", "--"))
    cached = (storage / "snapshots" / sha).is_dir() and all(
        (storage / "snapshots" / sha / n).exists() for n in wanted)
    print(f"{label}: {len(wanted)} files, {total / 1e6:.1f} MB, commit {sha[:12]}"
          f"{' (already in the cache)' if cached else ''}", file=sys.stderr, flush=True)
    stop = threading.Event()
    watcher = threading.Thread(target=_watch, args=(storage / "blobs", label, total, stop), daemon=True)
    watcher.start()
    try:
        # The requested revision (not the sha), so the cache records the branch or tag -> commit ref that an
        # offline run later resolves.
        path = snapshot_download(repo, revision=revision, allow_patterns=patterns, ignore_patterns=IGNORE)
    finally:
        stop.set()
        watcher.join(timeout=2)
    return {"ok": True, "path": path, "sha": Path(path).name, "files": len(wanted), "bytes": total, "cached": cached}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repo", required=True)
    ap.add_argument("--revision", default=None)
    ap.add_argument("--trust-remote-code", action="store_true")
    args = ap.parse_args(argv)
    try:
        out = fetch(args.repo, args.revision, args.trust_remote_code)
    except BaseException as e:  # every failure becomes data for the parent
        out = {"ok": False, "error": describe(e)}
    print(json.dumps(out), flush=True)
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
