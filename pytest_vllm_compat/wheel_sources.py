"""Source files out of a released wheel, without downloading or installing it.

A vLLM wheel is 200-500 MB; the capability checker needs a few dozen of its Python files. A wheel is a zip
archive, and package indexes serve files with HTTP range requests, so :class:`RangeFile` gives
:mod:`zipfile` a seekable file over the URL: the archive's central directory and the chosen members are the
only bytes fetched (1.2-5.2 MB per vLLM release). What was fetched is kept under a cache directory, so a
second run reads nothing from the network.

The wheel's URL comes from the index's JSON API for the project (``https://pypi.org/pypi/<name>/json``, read
once per process); the index can be changed with ``index_url``.
"""

from __future__ import annotations

import fnmatch
import io
import json
import os
import re
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_INDEX = "https://pypi.org/pypi"
_BLOCK = 256 * 1024  # bytes per range request: members are small and often neighbours in the archive


class SourceUnavailable(Exception):
    """The release has no wheel on the index, or the index cannot be read."""


def _get(url: str, headers: dict[str, str] | None = None, timeout: float = 60.0) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, headers={"User-Agent": "pytest-vllm-compat", **(headers or {})})
    with urllib.request.urlopen(req, timeout=timeout) as resp:  # https index URLs only
        return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()


class RangeFile(io.RawIOBase):
    """A read-only, seekable file over an HTTP URL that answers range requests, read in blocks."""

    def __init__(self, url: str, size: int | None = None, block: int = _BLOCK) -> None:
        super().__init__()
        self.url = url
        self.block = block
        self.pos = 0
        self.requests = 0
        self.fetched = 0
        self._cache: dict[int, bytes] = {}
        if size is None:
            status, headers, _body = _get(url, {"Range": "bytes=0-0"})
            m = re.search(r"/(\d+)$", headers.get("content-range", ""))
            if status != 206 or not m:
                raise SourceUnavailable(f"{url}: the server does not answer range requests (HTTP {status})")
            size = int(m.group(1))
        self.size = size

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self.pos, os.SEEK_END: self.size}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def _block_at(self, index: int) -> bytes:
        if index not in self._cache:
            start = index * self.block
            end = min(self.size, start + self.block) - 1
            status, _, body = _get(self.url, {"Range": f"bytes={start}-{end}"})
            if status != 206:
                raise SourceUnavailable(f"{self.url}: range request answered HTTP {status}")
            self.requests += 1
            self.fetched += len(body)
            self._cache[index] = body
        return self._cache[index]

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = self.size - self.pos
        n = min(n, self.size - self.pos)
        out = bytearray()
        while n > 0:
            index, offset = divmod(self.pos, self.block)
            chunk = self._block_at(index)[offset:offset + n]
            if not chunk:
                break
            out += chunk
            self.pos += len(chunk)
            n -= len(chunk)
        return bytes(out)

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.read(len(b))
        b[:len(data)] = data
        return len(data)


@dataclass
class WheelSource:
    """The chosen files of one release's wheel: ``files`` path -> text, ``names`` every path in the archive."""

    distribution: str
    version: str
    filename: str
    url: str
    names: frozenset[str]
    files: dict[str, str] = field(default_factory=dict)
    fetched_bytes: int = 0  # what reading it from the index took (the first time, when it comes from the cache)
    requests: int = 0
    cached: bool = False


_PROJECTS: dict[str, dict[str, Any]] = {}  # the index's JSON, as it is


def _project(distribution: str, index_url: str) -> tuple[str, dict[str, Any]]:
    """The index's JSON for the whole project (every release's files), read once per process."""
    api = f"{index_url.rstrip('/')}/{distribution}/json"
    if api not in _PROJECTS:
        try:
            _, _, body = _get(api)
        except OSError as e:  # urllib's HTTPError/URLError are OSErrors
            raise SourceUnavailable(f"{distribution}: {api}: {e}") from e
        _PROJECTS[api] = json.loads(body)
    return api, _PROJECTS[api]


def wheel_url(distribution: str, version: str, index_url: str = DEFAULT_INDEX) -> tuple[str, str, int]:
    """``(filename, url, size)`` of the release's Linux x86-64 wheel, from the index's JSON API."""
    api, project = _project(distribution, index_url)
    releases = project.get("releases", {})
    if version not in releases:
        raise SourceUnavailable(f"{distribution} {version}: not a release on {index_url}")
    files = [u for u in releases[version] if u.get("filename", "").endswith(".whl")]
    files.sort(key=lambda u: ("x86_64" not in u["filename"], "manylinux" not in u["filename"], u["filename"]))
    if not files:
        raise SourceUnavailable(f"{distribution} {version}: no wheel on {index_url}")
    f = files[0]
    return f["filename"], urllib.parse.urljoin(api, f["url"]), int(f.get("size") or 0)


def releases(distribution: str, index_url: str = DEFAULT_INDEX) -> list[str]:
    """Every release of ``distribution`` the index lists (unsorted)."""
    return list(_project(distribution, index_url)[1].get("releases", {}))


def _wanted(names: Iterable[str], patterns: tuple[str, ...]) -> list[str]:
    """The Python files among ``names`` that match a pattern (globs, ``*`` crosses ``/``)."""
    return [n for n in names if n.endswith(".py") and any(fnmatch.fnmatchcase(n, p) for p in patterns)]


def fetch_sources(distribution: str, version: str, patterns: Iterable[str], cache_dir: Path, *,
                  index_url: str = DEFAULT_INDEX) -> WheelSource:
    """The files of ``distribution==version``'s wheel that match ``patterns`` (globs over archive paths),
    from ``cache_dir`` when an earlier call kept them, else by range requests (then kept)."""
    patterns = tuple(patterns)
    where = Path(cache_dir) / f"{distribution}-{version}"
    index_file = where / "index.json"
    if index_file.is_file():
        meta = json.loads(index_file.read_text())
        names = frozenset(meta["names"])
        wanted = _wanted(names, patterns)
        if all((where / "files" / n).is_file() for n in wanted):
            return WheelSource(distribution, version, meta["filename"], meta["url"], names,
                               {n: (where / "files" / n).read_text("utf-8", errors="replace") for n in wanted},
                               meta.get("fetched_bytes", 0), meta.get("requests", 0), cached=True)
    filename, url, size = wheel_url(distribution, version, index_url)
    raw = RangeFile(url, size or None)
    with zipfile.ZipFile(io.BufferedReader(raw, buffer_size=_BLOCK)) as z:
        names = frozenset(z.namelist())
        wanted = _wanted(names, patterns)
        # in archive order, so neighbouring members share range requests
        offsets = {i.filename: i.header_offset for i in z.infolist()}
        files = {n: z.read(n).decode("utf-8", errors="replace") for n in sorted(wanted, key=offsets.__getitem__)}
    for n, text in files.items():
        p = where / "files" / n
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text, encoding="utf-8")
    index_file.parent.mkdir(parents=True, exist_ok=True)
    index_file.write_text(json.dumps({"filename": filename, "url": url, "names": sorted(names),
                                      "fetched_bytes": raw.fetched, "requests": raw.requests}))
    return WheelSource(distribution, version, filename, url, names, files, raw.fetched, raw.requests)
