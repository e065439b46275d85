"""A local Hugging Face hub endpoint for tests: the few routes ``huggingface_hub``'s snapshot download uses.

Point ``HF_ENDPOINT`` at :attr:`LocalHub.url` and the real ``huggingface_hub`` of a vLLM environment
downloads from it. Routes (as ``huggingface_hub`` 1.x/2.x call them):

- ``GET  /api/models/{repo}[/revision/{rev}]``        model info: ``sha`` and ``siblings``
- ``GET  /api/models/{repo}/tree/{sha}?recursive=...`` the file list (one page)
- ``HEAD|GET /{repo}/resolve/{rev}/{path}``            a file, with ``X-Repo-Commit`` and ``ETag``

Errors are the hub's: a gated repo without the right token answers 401 with ``X-Error-Code: GatedRepo``,
an unknown repo 404 ``RepoNotFound``, an unknown revision 404 ``RevisionNotFound``. Every request is
logged in :attr:`LocalHub.requests` (method, path, whether a token was sent), so a test can tell that a
download happened once, or not at all.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit


@dataclass
class Repo:
    files: dict[str, bytes]
    sha: str = ""
    gated_token: str | None = None  # set: the repo is gated and only this token may read it
    branches: tuple[str, ...] = ("main",)

    def __post_init__(self) -> None:
        if not self.sha:
            digest = hashlib.sha1()
            for name in sorted(self.files):
                digest.update(name.encode() + b"\0" + self.files[name])
            self.sha = digest.hexdigest()

    @classmethod
    def from_dir(cls, path: Path, **kw: Any) -> Repo:
        return cls({str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}, **kw)


def git_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class LocalHub:
    repos: dict[str, Repo] = field(default_factory=dict)
    requests: list[tuple[str, str, bool]] = field(default_factory=list)

    def __post_init__(self) -> None:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # the base class's name
                pass

            def do_HEAD(self) -> None:  # http.server's naming
                hub._handle(self, body=False)

            def do_GET(self) -> None:
                hub._handle(self, body=True)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True, name="local-hub")
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def downloads(self, repo: str) -> list[str]:
        """The files of ``repo`` fetched with GET (``resolve`` routes)."""
        prefix = f"/{repo}/resolve/"
        return [p.split("/", 4 + repo.count("/"))[-1] for m, p, _ in self.requests if m == "GET" and p.startswith(prefix)]

    # --- routing ------------------------------------------------------------------------------
    def _handle(self, h: BaseHTTPRequestHandler, body: bool) -> None:
        path = unquote(urlsplit(h.path).path)
        token = (h.headers.get("Authorization") or "").removeprefix("Bearer ").strip() or None
        self.requests.append((h.command, path, token is not None))
        if path.startswith("/api/models/"):
            rest = path[len("/api/models/"):]
            for marker, route in (("/revision/", self._info), ("/tree/", self._tree)):
                if marker in rest:
                    repo_id, arg = rest.split(marker, 1)
                    return route(h, repo_id, arg, token, body)
            if rest.count("/") == 1:  # /api/models/{repo}: the info of the default branch
                return self._info(h, rest, "main", token, body)
            return self._error(h, 404, "EntryNotFound", "no such route", body)
        parts = path.lstrip("/").split("/")
        if "resolve" in parts:
            i = parts.index("resolve")
            repo_id, rev, name = "/".join(parts[:i]), parts[i + 1], "/".join(parts[i + 2:])
            return self._file(h, repo_id, rev, name, token, body)
        return self._error(h, 404, "EntryNotFound", "no such route", body)

    def _repo(self, h: BaseHTTPRequestHandler, repo_id: str, rev: str, token: str | None, body: bool) -> Repo | None:
        repo = self.repos.get(repo_id)
        if repo is None:
            self._error(h, 404, "RepoNotFound", "Repository not found", body)
            return None
        if repo.gated_token is not None and token != repo.gated_token:
            self._error(h, 401, "GatedRepo", "Access to model is restricted. You must have access to it and be "
                                             "authenticated to access it. Please log in.", body)
            return None
        if rev not in repo.branches and rev != repo.sha:
            self._error(h, 404, "RevisionNotFound", f"Invalid rev id: {rev}", body)
            return None
        return repo

    def _info(self, h: BaseHTTPRequestHandler, repo_id: str, rev: str, token: str | None, body: bool) -> None:
        repo = self._repo(h, repo_id, rev, token, body)
        if repo is None:
            return
        self._json(h, {"_id": repo_id, "id": repo_id, "modelId": repo_id, "sha": repo.sha, "private": False,
                       "gated": "manual" if repo.gated_token else False, "disabled": False, "tags": [],
                       "downloads": 0, "likes": 0, "lastModified": "2026-12-03T00:00:00.000Z",
                       "createdAt": "2026-12-03T00:00:00.000Z",
                       "siblings": [{"rfilename": n} for n in sorted(repo.files)]}, body)

    def _tree(self, h: BaseHTTPRequestHandler, repo_id: str, rev: str, token: str | None, body: bool) -> None:
        repo = self._repo(h, repo_id, rev.split("/", 1)[0], token, body)
        if repo is None:
            return
        entries: list[dict[str, Any]] = []
        dirs: set[str] = set()
        for name in sorted(repo.files):
            parent = name.rsplit("/", 1)[0] if "/" in name else ""
            if parent and parent not in dirs:
                dirs.add(parent)
                entries.append({"type": "directory", "oid": "0" * 40, "size": 0, "path": parent})
            entries.append({"type": "file", "oid": git_oid(repo.files[name]), "size": len(repo.files[name]),
                            "path": name})
        self._json(h, entries, body)

    def _file(self, h: BaseHTTPRequestHandler, repo_id: str, rev: str, name: str, token: str | None,
              body: bool) -> None:
        repo = self._repo(h, repo_id, rev, token, body)
        if repo is None:
            return
        data = repo.files.get(name)
        if data is None:
            return self._error(h, 404, "EntryNotFound", f"{name} does not exist on {rev}", body)
        h.send_response(200)
        h.send_header("Content-Type", "application/octet-stream")
        h.send_header("Content-Length", str(len(data)))
        h.send_header("X-Repo-Commit", repo.sha)
        h.send_header("ETag", f'"{git_oid(data)}"')
        h.end_headers()
        if body:
            h.wfile.write(data)

    @staticmethod
    def _json(h: BaseHTTPRequestHandler, payload: Any, body: bool) -> None:
        data = json.dumps(payload).encode()
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        if body:
            h.wfile.write(data)

    @staticmethod
    def _error(h: BaseHTTPRequestHandler, status: int, code: str, message: str, body: bool) -> None:
        data = json.dumps({"error": message}).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("X-Error-Code", code)
        h.send_header("X-Error-Message", message)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        if body:
            h.wfile.write(data)
