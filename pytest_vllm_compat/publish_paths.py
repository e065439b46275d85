"""Machine paths out of published results: what a run wrote about one machine, readable on any other.

Records, manifests, server logs and the site name files by absolute path: the results dir, the env dir under the
home directory (environments, converted models, compile caches), temporary directories, the checkout. Published
data (``dev.py publish``, the committed ``reports/``) keeps none of them:

* a path inside the results dir becomes relative to it (``logs/<run>/<server>.log``);
* the checkout (the directory holding the results dir's ``reports/``, when it is one) becomes ``<repo>``;
* the home directory (``/root``, ``/home/NAME``) becomes ``~``;
* a temporary directory (``/tmp/…``) becomes ``$TMPDIR/…``.

:func:`scrub_text` rewrites a text; :func:`scrub_tree` every text file of a results dir in place (``vllm-compat
scrub-paths DIR…``). Both are idempotent.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

TEXT_SUFFIXES = (".jsonl", ".json", ".log", ".txt", ".md", ".html", ".xml", ".csv", ".svg")
_HOME_RE = re.compile(r"(?<![\w.~$/-])(?:/root|/home/[A-Za-z0-9_.-]+)(?=/|\b)")
_TMP_RE = re.compile(r"(?<![\w.~$/-])/tmp(?=/)")
# what `grep -rlE '(^|[^[:alnum:]_.])/(root|tmp|home)/'` finds: the published-data check
MACHINE_PATH_RE = re.compile(r"(?:^|[^A-Za-z0-9_.])/(?:root|tmp|home)/", re.MULTILINE)


def scrub_text(text: str, results_dir: Path | None = None, repo: Path | None = None) -> str:
    """``text`` with the machine paths of the module docstring rewritten."""
    for base, repl in ((results_dir, ""), (repo, "<repo>")):
        if base is None:
            continue
        for given in {str(base), os.path.realpath(base)}:
            form = given.rstrip("/")
            if len(form) > 1:
                text = text.replace(form + "/", repl + "/" if repl else "")
                text = re.sub(re.escape(form) + r"(?![\w.-])", repl or ".", text)
    if results_dir is not None and repo is not None:
        try:  # a path written relative to the checkout ("reports/runs/X/logs/..."): relative to the results dir
            rel = Path(os.path.realpath(results_dir)).relative_to(os.path.realpath(repo)).as_posix()
        except ValueError:
            rel = ""
        if rel and rel != ".":
            text = text.replace(f'"{rel}/', '"')
    text = text.replace("file:///tmp/", "file://$TMPDIR/")
    text = re.sub(r"file://(?:/root|/home/[A-Za-z0-9_.-]+)/", "file://~/", text)
    text = _HOME_RE.sub("~", text)
    return _TMP_RE.sub("$TMPDIR", text)


def _repo_of(results_dir: Path) -> Path | None:
    for parent in results_dir.resolve().parents:
        if (parent / ".git").exists() or (parent / "pyproject.toml").is_file():
            return parent
    return None


def scrub_tree(results_dir: Path, *, suffixes: Iterable[str] = TEXT_SUFFIXES) -> list[Path]:
    """Rewrite every text file under ``results_dir`` in place; returns the files that changed."""
    results_dir = Path(results_dir)
    repo = _repo_of(results_dir)
    wanted = tuple(suffixes)
    changed: list[Path] = []
    for path in sorted(results_dir.rglob("*")):
        if not path.is_file() or path.is_symlink() or not path.name.endswith(wanted):
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        new = scrub_text(text, results_dir.resolve(), repo)
        if new != text:
            path.write_text(new, encoding="utf-8")
            changed.append(path)
    return changed


def machine_paths(root: Path) -> list[Path]:
    """The text files under ``root`` that still hold a home or temporary path (the published-data check)."""
    found = []
    for path in sorted(Path(root).rglob("*")):
        if path.is_file() and path.name.endswith(TEXT_SUFFIXES):
            try:
                if MACHINE_PATH_RE.search(path.read_text(encoding="utf-8")):
                    found.append(path)
            except (UnicodeDecodeError, OSError):
                continue
    return found
