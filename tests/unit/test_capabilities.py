"""Unit tests for pytest_vllm_compat.capabilities (pure functions over the data table)."""

from __future__ import annotations

import itertools
import json

import pytest

from pytest_vllm_compat import capabilities as capmod
from pytest_vllm_compat.capabilities import (
    UnknownVersion,
    Unsupported,
    attention_selection,
    capabilities,
    help_has_flag,
    parse_version,
    structured_request_fields,
    structured_server_args,
    table_versions,
)

REQUIRED = ["0.5.5", "0.6.3", "0.6.6", "0.7.3", "0.8.5", "0.9.2", "0.10.2"] + [
    f"0.{m}.0" for m in range(11, 34)
]


def _rows() -> tuple[capmod._Row, ...]:
    return capmod._table()[1]


# ----------------------------------------------------------------------------- table shape


def test_rows_load_and_have_sources() -> None:
    rows = _rows()
    assert rows
    for row in rows:
        caps = capabilities(capmod._fmt(row.lo))
        assert caps.sources, row.data["range"]
        assert all("@v" in s for s in caps.sources), caps.sources
        assert caps.engine in ("v0", "v1")
        assert caps.structured_server in ("flag", "config_json", "none")
        assert caps.structured_request in ("guided_fields", "structured_outputs")
        assert caps.disable_any_whitespace in ("config_json", "backend_suffix", "flag", "none")
        assert caps.attention_selection in ("env", "flag")
        assert set(caps.structured_request_kinds) <= set(capmod.STRUCTURED_KINDS)
        assert set(caps.attention_backends) <= {"cpu", "cuda"}
        assert caps.cpu_kv_env == "VLLM_CPU_KVCACHE_SPACE"
        assert caps.log_requests_flag in ("--disable-log-requests", "--enable-log-requests", None)
        assert caps.kv_log_formats
        assert caps.entry_point == ("-m", "vllm.entrypoints.openai.api_server")


def test_ranges_contiguous_and_cover_0_5_5_to_0_33() -> None:
    rows = _rows()
    assert rows[0].lo == (0, 5, 5)
    for a, b in itertools.pairwise(rows):
        assert a.hi == b.lo, (a.data["range"], b.data["range"])  # no gap, no overlap
    assert rows[-1].hi > (0, 33, 99)


def test_every_required_version_checked_and_resolves() -> None:
    checked = table_versions()
    for v in REQUIRED:
        assert v in checked
        caps = capabilities(v)
        lo, hi = capmod._parse_range(caps.range)
        assert lo <= parse_version(v) < hi
    for row in _rows():  # every row's checked versions lie inside it
        for v in row.data["checked"]:
            assert row.lo <= parse_version(v) < row.hi, (v, row.data["range"])


def test_exactly_one_row_per_version() -> None:
    for v in REQUIRED:
        key = parse_version(v)
        assert sum(1 for r in _rows() if r.lo <= key < r.hi) == 1


# ----------------------------------------------------------------------------- version parsing


@pytest.mark.parametrize(
    "text,expected",
    [
        ("0.6.4.post1", (0, 6, 4)),
        ("0.11.1.dev123+g1234abc", (0, 11, 1)),
        ("v0.32.0", (0, 32, 0)),
        ("0.33.0rc1", (0, 33, 0)),
        ("0.12", (0, 12, 0)),
        ("0.10.1.1", (0, 10, 1)),
    ],
)
def test_parse_version(text: str, expected: tuple[int, int, int]) -> None:
    assert parse_version(text) == expected


@pytest.mark.parametrize("bad", ["banana", "0.1.0", "", "0.5.4", "x0.6"])
def test_unknown_version(bad: str) -> None:
    with pytest.raises(UnknownVersion):
        capabilities(bad)


def test_unknown_version_is_valueerror() -> None:
    assert issubclass(UnknownVersion, ValueError)


def test_post_suffix_resolves_to_base() -> None:
    assert capabilities("0.6.4.post1").range == capabilities("0.6.4").range
    assert capabilities("0.6.4.post1").version == "0.6.4.post1"


def test_newer_than_table_uses_last_row_with_note() -> None:
    caps = capabilities("0.40.0")
    assert caps.range == _rows()[-1].data["range"]
    assert any("newer than the table" in n for n in caps.notes)


# ----------------------------------------------------------------------------- spot-checked facts


def test_0_6_6_guided_fields_and_flag() -> None:
    caps = capabilities("0.6.6")
    assert caps.structured_request == "guided_fields"
    assert caps.structured_server == "flag"
    assert caps.engine == "v0"
    assert "xgrammar" in caps.structured_backends
    assert caps.log_requests_flag == "--disable-log-requests"


def test_0_6_3_has_no_xgrammar() -> None:
    assert "xgrammar" not in capabilities("0.6.3").structured_backends


@pytest.mark.parametrize("v", [f"0.{m}.0" for m in range(12, 34)])
def test_structured_outputs_from_0_12(v: str) -> None:
    caps = capabilities(v)
    assert caps.structured_request == "structured_outputs"
    assert caps.structured_server == "config_json"
    assert caps.disable_any_whitespace == "config_json"


def test_0_26_attention_env_ignored_and_flag() -> None:
    caps = capabilities("0.26.0")
    assert caps.attention_env_ignored is True
    assert caps.attention_selection == "flag"


def test_attention_env_boundaries() -> None:
    assert capabilities("0.12.0").attention_selection == "env"
    assert capabilities("0.13.0").attention_selection == "flag"
    assert capabilities("0.14.0").attention_env_ignored is False
    assert capabilities("0.15.0").attention_env_ignored is True


@pytest.mark.parametrize("v", [f"0.{m}.0" for m in range(11, 34)])
def test_v0_removed_in_0_11(v: str) -> None:
    caps = capabilities(v)
    assert caps.engine == "v1"
    assert "v0_gpu_blocks" not in caps.kv_log_formats
    assert not any(f.startswith("v0_") for f in caps.kv_log_formats)


def test_engine_defaults_before_0_11() -> None:
    assert capabilities("0.7.3").engine == "v0"
    assert capabilities("0.7.3").v1_available is True
    assert capabilities("0.6.3").v1_available is False
    assert capabilities("0.8.5").engine == "v1"


def test_cpu_attention_names() -> None:
    assert capabilities("0.11.0").attention_backends["cpu"] == ("TORCH_SDPA",)
    assert capabilities("0.32.0").attention_backends["cpu"] == ("CPU_ATTN",)


def test_kv_formats_for_cpu_runs() -> None:
    assert "v1_device_kv_cache_size_concurrency" in capabilities("0.32.0").kv_log_formats
    assert "v1_kv_cache_size_concurrency" in capabilities("0.28.0").kv_log_formats
    # vllm-cpu's own memory line from 0.20 (0.13-0.19 print only a warning when the env var is unset)
    assert "cpu_kv_memory_set" in capabilities("0.20.0").kv_log_formats
    assert "cpu_kv_memory_set" not in capabilities("0.19.0").kv_log_formats
    assert "v0_cpu_blocks" in capabilities("0.6.6").kv_log_formats


def test_log_requests_flag() -> None:
    assert capabilities("0.9.2").log_requests_flag == "--disable-log-requests"
    assert capabilities("0.10.2").log_requests_flag == "--enable-log-requests"
    assert capabilities("0.32.0").log_requests_flag == "--enable-log-requests"


def test_flashinfer_floor() -> None:
    assert capabilities("0.23.0").attention_min_compute_capability["FLASHINFER"] == "7.5"
    assert capabilities("0.24.0").attention_min_compute_capability["FLASHINFER"] == "8.0"


def test_caps_is_hashable_and_frozen() -> None:
    caps = capabilities("0.32.0")
    hash(caps)
    with pytest.raises(AttributeError):
        caps.engine = "v0"  # type: ignore[misc]


# ----------------------------------------------------------------------------- structured_server_args


def test_server_args_config_json_0_32() -> None:
    args = structured_server_args(capabilities("0.32.0"), "xgrammar")
    assert args[0] == "--structured-outputs-config"
    assert json.loads(args[1]) == {"backend": "xgrammar", "disable_any_whitespace": True}


def test_server_args_config_json_no_whitespace_for_outlines() -> None:
    args = structured_server_args(capabilities("0.28.0"), "outlines")
    assert json.loads(args[1]) == {"backend": "outlines"}
    args = structured_server_args(capabilities("0.28.0"), "xgrammar", disable_any_whitespace=False)
    assert json.loads(args[1]) == {"backend": "xgrammar"}


def test_server_args_flag_versions() -> None:
    assert structured_server_args(capabilities("0.6.6"), "xgrammar") == [
        "--guided-decoding-backend",
        "xgrammar",
    ]
    assert structured_server_args(capabilities("0.8.0"), "xgrammar") == [
        "--guided-decoding-backend",
        "xgrammar:disable-any-whitespace",
    ]
    assert structured_server_args(capabilities("0.9.2"), "guidance") == [
        "--guided-decoding-backend",
        "guidance",
        "--guided-decoding-disable-any-whitespace",
    ]
    assert structured_server_args(capabilities("0.8.5"), "xgrammar") == [
        "--guided-decoding-backend",
        "xgrammar",
    ]


def test_server_args_unsupported_backend() -> None:
    with pytest.raises(Unsupported, match="guidance"):
        structured_server_args(capabilities("0.6.6"), "guidance")
    with pytest.raises(Unsupported):
        structured_server_args(capabilities("0.6.3"), "xgrammar")


# ----------------------------------------------------------------------------- structured_request_fields


def test_request_fields_guided() -> None:
    caps = capabilities("0.6.6")
    assert structured_request_fields(caps, "json", {"type": "object"}) == {"guided_json": {"type": "object"}}
    assert structured_request_fields(caps, "choice", ["a", "b"], backend="outlines") == {
        "guided_choice": ["a", "b"],
        "guided_decoding_backend": "outlines",
    }
    # V1 default: the per-request backend is not sent (V1 rejects one that differs from the server's)
    assert structured_request_fields(capabilities("0.9.2"), "regex", "a+", backend="xgrammar") == {
        "guided_regex": "a+"
    }


def test_request_fields_structured_outputs() -> None:
    caps = capabilities("0.32.0")
    assert structured_request_fields(caps, "grammar", "root ::= 'a'") == {
        "structured_outputs": {"grammar": "root ::= 'a'"}
    }
    assert structured_request_fields(capabilities("0.11.0"), "json", {}) == {
        "structured_outputs": {"json": {}}
    }


def test_request_fields_errors() -> None:
    with pytest.raises(ValueError):
        structured_request_fields(capabilities("0.32.0"), "yaml", "x")
    with pytest.raises(Unsupported):
        structured_request_fields(capabilities("0.6.3"), "json", {}, backend="xgrammar")


# ----------------------------------------------------------------------------- attention_selection


def test_attention_selection_env_and_flag() -> None:
    assert attention_selection(capabilities("0.6.3"), "XFORMERS", "cuda") == (
        [],
        {"VLLM_ATTENTION_BACKEND": "XFORMERS"},
    )
    assert attention_selection(capabilities("0.26.0"), "TRITON_ATTN", "cuda") == (
        ["--attention-backend", "TRITON_ATTN"],
        {},
    )
    assert attention_selection(capabilities("0.32.0"), "CPU_ATTN", "cpu") == (
        ["--attention-backend", "CPU_ATTN"],
        {},
    )
    assert attention_selection(capabilities("0.11.0"), "TORCH_SDPA", "cpu") == (
        [],
        {"VLLM_ATTENTION_BACKEND": "TORCH_SDPA"},
    )


def test_attention_selection_unsupported() -> None:
    with pytest.raises(Unsupported, match="XFORMERS"):
        attention_selection(capabilities("0.13.0"), "XFORMERS", "cuda")
    with pytest.raises(Unsupported):
        attention_selection(capabilities("0.32.0"), "FLASH_ATTN", "cpu")
    with pytest.raises(Unsupported):
        attention_selection(capabilities("0.32.0"), "FLASH_ATTN", "rocm")


# ----------------------------------------------------------------------------- help_has_flag

HELP = """\
usage: api_server.py [-h] [--host HOST] [--port PORT]
                     [--enable-log-requests | --no-enable-log-requests]
                     [--structured-outputs-config STRUCTURED_OUTPUTS_CONFIG]

options:
  -h, --help            show this help message and exit
  --host HOST           Host name.
  --enable-log-requests, --no-enable-log-requests
                        Enable logging requests. (default: False)
  -tp TENSOR_PARALLEL_SIZE, --tensor-parallel-size TENSOR_PARALLEL_SIZE
                        Number of tensor parallel groups.
  --max-model-len MAX_MODEL_LEN, -ml MAX_MODEL_LEN
                        Model context length.
  --attention-config ATTENTION_CONFIG, -ac ATTENTION_CONFIG
                        Should either be a valid JSON string or JSON keys
                        passed individually. Replaces the deprecated
                        --guided-decoding-
                        backend flag.
  --dtype={auto,half,bfloat16}
                        Data type.
"""


@pytest.mark.parametrize(
    "flag",
    [
        "--host",
        "--enable-log-requests",
        "--no-enable-log-requests",
        "--tensor-parallel-size",
        "-tp",
        "--max-model-len",
        "--attention-config",
        "-ac",
        "--structured-outputs-config",
        "--dtype",
        "--dtype=auto",
        "max-model-len",
        "--guided-decoding-backend",
    ],
)
def test_help_has_flag_present(flag: str) -> None:
    assert help_has_flag(HELP, flag)


@pytest.mark.parametrize(
    "flag",
    [
        "--disable-log-requests",
        "--log-requests",
        "--attention-backend",
        "--max-model",
        "--port-x",
        "",
        "--tensor",
    ],
)
def test_help_has_flag_absent(flag: str) -> None:
    assert not help_has_flag(HELP, flag)


def test_turboquant_is_never_selected_for_a_plain_kv_cache() -> None:
    """0.20+ CUDA lists TURBOQUANT, which serves only turboquant_* KV dtypes: selecting it alone is a startup
    error, so the attention test must say what it needs instead of starting a server that refuses it."""
    from pytest_vllm_compat.capabilities import Unsupported, attention_selection, capabilities

    for version in ("0.20.0", "0.26.0", "0.32.0"):
        caps = capabilities(version)
        assert "TURBOQUANT" in caps.attention_backends["cuda"]
        with pytest.raises(Unsupported, match=r"TURBOQUANT attention backend needs a turboquant_\* --kv-cache-dtype"):
            attention_selection(caps, "TURBOQUANT", "cuda")
        assert attention_selection(caps, "FLASH_ATTN", "cuda") == (["--attention-backend", "FLASH_ATTN"], {})


def test_0_8_engine_is_v0_on_cpu_old_gpus_and_v0_only_backends() -> None:
    """0.8.x defaults to V1 but its oracle falls back to V0 for the CPU platform, compute capability < 8.0 and
    V0-only attention or guided backends (arg_utils.py _is_v1_supported_oracle @v0.8.5)."""
    from pytest_vllm_compat.capabilities import capabilities, engine_for, structured_request_fields

    for version in ("0.8.0", "0.8.5"):
        caps = capabilities(version)
        assert caps.engine == "v1"
        assert engine_for(caps, "cuda") == "v1"
        assert engine_for(caps, "cpu") == "v0"
        assert engine_for(caps, "cuda", compute_capability="7.5") == "v0"
        assert engine_for(caps, "cuda", compute_capability="8.0") == "v1"
        assert engine_for(caps, "cuda", attention_backend="XFORMERS") == "v0"
        assert engine_for(caps, "cuda", attention_backend="FLASH_ATTN") == "v1"
        assert engine_for(caps, "cuda", structured_backend="outlines") == "v0"
        assert engine_for(caps, "cuda", structured_backend="xgrammar") == "v1"
    caps = capabilities("0.8.5")
    # a V0 request may name its backend; a V1 one must not (V1 rejects a backend different from the server's)
    assert structured_request_fields(caps, "regex", "a+", "outlines") == {"guided_regex": "a+",
                                                                         "guided_decoding_backend": "outlines"}
    assert structured_request_fields(caps, "regex", "a+", "xgrammar") == {"guided_regex": "a+"}
    # rows without conditions keep their engine wherever they run
    assert engine_for(capabilities("0.10.2"), "cpu") == "v1"
    assert engine_for(capabilities("0.6.6"), "cuda") == capabilities("0.6.6").engine


# ----------------------------------------------------------------------------- engine choice and silent fallbacks


def test_0_9_engine_v0_cases_from_the_oracle() -> None:
    """0.9.x runs V0 for the outlines / lm-format-enforcer backends and compute capability < 8.0
    (engine/arg_utils.py 1345-1363 @v0.9.2) and on non-x86 CPUs (platforms/cpu.py 275-281 default_v1)."""
    from pytest_vllm_compat.capabilities import engine_for

    caps = capabilities("0.9.2")
    assert engine_for(caps, "cuda", structured_backend="outlines") == "v0"
    assert engine_for(caps, "cuda", structured_backend="lm-format-enforcer") == "v0"
    assert engine_for(caps, "cuda", structured_backend="xgrammar") == "v1"
    assert engine_for(caps, "cuda", compute_capability="7.5") == "v0"
    assert engine_for(caps, "cuda", compute_capability="9.0") == "v1"
    assert engine_for(caps, "cpu", cpu_arch="aarch64") == "v0"
    assert engine_for(caps, "cpu", cpu_arch="ppc64le") == "v0"
    assert engine_for(caps, "cpu", cpu_arch="x86_64") == "v1"
    assert engine_for(caps, "cuda", cpu_arch="aarch64") == "v1"  # a GH200 host: the CPU rule is the CPU platform's
    assert engine_for(caps, "cpu") == "v1"  # architecture unknown: not counted
    # a V0 request names its backend on 0.9.x too, now that outlines runs V0 there
    assert structured_request_fields(caps, "regex", "a+", "outlines") == {"guided_regex": "a+",
                                                                         "guided_decoding_backend": "outlines"}


def test_0_8_0_flashinfer_runs_v0() -> None:
    from pytest_vllm_compat.capabilities import engine_for

    assert engine_for(capabilities("0.8.0"), "cuda", attention_backend="FLASHINFER") == "v0"  # V1_BACKENDS @v0.8.0
    assert engine_for(capabilities("0.8.5"), "cuda", attention_backend="FLASHINFER") == "v1"


SUITE_SCHEMA = {"type": "object", "properties": {"color": {"type": "string", "enum": ["red", "green", "blue"]},
                                                  "n": {"type": "integer", "minimum": 0, "maximum": 9}}}


def test_v0_silent_fallbacks_0_6_to_0_9() -> None:
    from pytest_vllm_compat.capabilities import expected_structured_backend as exp
    from pytest_vllm_compat.capabilities import fallback_conditions

    c065, c073, c080, c092 = (capabilities(v) for v in ("0.6.5", "0.7.3", "0.8.0", "0.9.2"))
    # regex (and on 0.6.x choice) go from xgrammar to outlines
    assert exp(c065, "v0", "xgrammar", "choice") == exp(c065, "v0", "xgrammar", "regex") == "outlines"
    assert exp(c073, "v0", "xgrammar", "regex") == "outlines" and exp(c073, "v0", "xgrammar", "choice") == "xgrammar"
    assert exp(c080, "v0", "xgrammar", "regex") == "outlines"
    assert exp(c092, "v0", "xgrammar", "regex") == "xgrammar"  # the regex fallback is gone by 0.8.5
    # the suite's schema (enum, integer bounds) leaves xgrammar on 0.6.5-0.8.4, not on 0.8.5+
    for caps, want in ((c065, "outlines"), (c073, "outlines"), (c080, "outlines"), (c092, "xgrammar")):
        assert exp(caps, "v0", "xgrammar", "json", fallback_conditions(caps, "json", schema=SUITE_SCHEMA)) == want
    assert exp(c073, "v0", "xgrammar", "json", fallback_conditions(c073, "json", schema={"type": "object"})) == "xgrammar"
    # non-x86 CPUs, failed imports, chains (lm-format-enforcer grammar -> xgrammar), json_object
    assert exp(c073, "v0", "xgrammar", "grammar", fallback_conditions(c073, "grammar", cpu_arch="aarch64")) == "outlines"
    assert exp(c092, "v0", "xgrammar", "grammar", fallback_conditions(c092, "grammar", cpu_arch="aarch64")) == "xgrammar"
    assert exp(c073, "v0", "xgrammar", "json", {"import_failure"}) == "outlines"
    assert exp(c073, "v0", "lm-format-enforcer", "grammar") == "xgrammar"
    assert exp(c073, "v0", "lm-format-enforcer", "grammar", {"non_x86_cpu"}) == "outlines"
    assert exp(c073, "v0", "outlines", "json_object") == "xgrammar" and exp(c092, "v0", "outlines", "json_object") == "guidance"
    assert exp(c092, "v0", "auto", "regex") == "xgrammar"  # V0 treats auto as xgrammar
    # 0.7.x opt-in V1 applies no guided decoding; 0.5/0.6.3 have no fallback at all
    assert exp(c073, "v1", "xgrammar", "json") is None
    assert exp(capabilities("0.6.3"), "v0", "outlines", "regex") == "outlines"
    with pytest.raises(Unsupported):
        exp(capabilities("0.6.3"), "v0", "xgrammar", "json")
    with pytest.raises(ValueError):
        exp(c073, "v0", "xgrammar", "json", {"no_such_condition"})


def test_v1_only_auto_falls_back() -> None:
    """V1 (0.8.5 on): only the server backend 'auto' falls back (v1/engine/processor.py 272-288 @v0.11.0); a named
    backend serves or errors. The vllm-cpu releases run here (0.27-0.32) keep every named backend."""
    from pytest_vllm_compat.capabilities import STRUCTURED_KINDS
    from pytest_vllm_compat.capabilities import expected_structured_backend as exp

    for v in ("0.8.5", "0.9.2", "0.10.2", "0.11.0", "0.12.0", "0.20.0", *tuple(f"0.{m}.0" for m in range(27, 34))):
        caps = capabilities(v)
        for backend in caps.structured_backends:
            for kind in STRUCTURED_KINDS:
                want = "xgrammar" if backend == "auto" else backend
                assert exp(caps, "v1", backend, kind, {"non_x86_cpu", "json_unsupported_features"}) == want, (v, backend, kind)
        assert exp(caps, "v1", "auto", "json", {"xgrammar_rejects"}) == "guidance"
    assert exp(capabilities("0.11.0"), "v1", "auto", "json", {"xgrammar_rejects", "mistral_tokenizer"}) == "guidance"
    assert exp(capabilities("0.32.0"), "v1", "auto", "json", {"xgrammar_rejects", "mistral_tokenizer"}) == "outlines"


def test_fallback_fields_are_well_formed() -> None:
    import re as re_

    from pytest_vllm_compat.capabilities import FALLBACK_CONDITIONS, STRUCTURED_KINDS

    for row in _rows():
        caps = capabilities(capmod._fmt(row.lo))
        assert caps.api_key_precedence == ("env" if row.lo < (0, 8, 5) else "flag"), caps.range
        for f in caps.structured_fallbacks:
            assert f.engine in ("v0", "v1") and f.when in FALLBACK_CONDITIONS + STRUCTURED_KINDS, f
            assert f.backend in caps.structured_backends and f.to in caps.structured_backends, (caps.range, f)
            assert f.file.startswith("vllm/") and re_.compile(f.marker)
            assert (f.when == "json_unsupported_features") == bool(f.json_keywords), f
            assert f.engine == "v0" or (f.backend == "auto" and not f.logged), f  # V1: only auto, silently
        if row.lo >= (0, 9, 0):
            assert caps.disable_any_whitespace_backends == ("xgrammar", "guidance")
            # the default backend 'auto' is not among them: disable_any_whitespace needs a named backend
            assert "auto" not in caps.disable_any_whitespace_backends
