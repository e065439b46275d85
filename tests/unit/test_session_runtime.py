"""The session's runtime wiring without hardware: GPU leases reach the server's environment and are released on
stop; the docker runtime builds its argv from the chosen port and API key; the memory preflight warns."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

import pytest

from pytest_vllm_compat.cpu_cores import CoreShare
from pytest_vllm_compat.environments import VLLMEnvironment
from pytest_vllm_compat.gpu.discovery import GPU
from pytest_vllm_compat.registry import ModelSpec
from pytest_vllm_compat.runtime import VenvRuntime
from pytest_vllm_compat.runtime.backends import backend_for
from pytest_vllm_compat.server import VLLMServer
from pytest_vllm_compat.server_spec import ServerSpec
from pytest_vllm_compat.session import CompatSession, Target, tensor_parallel_size

if TYPE_CHECKING:
    from typing_extensions import Unpack

GPUS = [GPU(index=i, uuid=f"GPU-{i}", name="NVIDIA H100 80GB HBM3", memory_total_mib=81559,
            memory_free_mib=81000 - i * 1000, compute_capability="9.0") for i in range(4)]


class _SessionOptions(TypedDict, total=False):
    """The CompatSession fields these tests set through :func:`_session`."""

    compile_cache: str
    servers_per_gpu: int
    core_share: CoreShare | None
    eager_knob_servers: bool


def _session(tmp_path: Path, runtime: str = "venv", warnings: list[str] | None = None,
             **kw: Unpack[_SessionOptions]) -> CompatSession:
    s = CompatSession(results_dir=tmp_path / "results", env_dir=tmp_path / "envs", device="cuda",
                      distribution="vllm", run_id="r1", progress=lambda m: None, backend=backend_for(runtime),
                      gpus=list(GPUS),
                      gpu_lock_dir=tmp_path / "locks", warn=(warnings.append if warnings is not None else None),
                      **kw)
    s.envs["0.26.0"] = VLLMEnvironment(name="vllm-0.26.0-py3.11", distribution="vllm", version="0.26.0",
                                       python=Path("/usr/bin/python3"), path=None,
                                       provenance={"packages": {"vllm": "0.26.0"}})
    return s


def _spec(session: CompatSession, model_dir: Path, args: list[str]) -> ServerSpec:
    model = ModelSpec(name="m", families=("llama",), path=str(model_dir))
    target = Target(model=model, version="0.26.0", distribution="vllm", device="cuda")
    return session.spec_for(target, str(model_dir), args=args)


def _model_dir(tmp_path: Path, **cfg: object) -> Path:
    d = tmp_path / "model"
    d.mkdir(exist_ok=True)
    base = {"hidden_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "vocab_size": 320, "intermediate_size": 512}
    (d / "config.json").write_text(json.dumps({**base, **cfg}))
    return d


def _venv_runtime(server: VLLMServer) -> VenvRuntime:
    """The server's runtime, a venv's or an interpreter's (the only kinds that carry a lease's env and args)."""
    assert isinstance(server.runtime, VenvRuntime)
    return server.runtime


def test_tp_size_from_argv() -> None:
    assert tensor_parallel_size(["--tensor-parallel-size", "4"]) == 4
    assert tensor_parallel_size(["--tensor-parallel-size=2"]) == 2
    assert tensor_parallel_size(["-tp", "8"]) == 8
    assert tensor_parallel_size([]) == 1


def test_cuda_server_gets_a_disjoint_lease_of_its_tp_size_and_releases_it(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("pytest_vllm_compat.gpu.wait_memory_released", lambda *a, **k: True)
    s = _session(tmp_path)
    d = _model_dir(tmp_path)
    a = s._make_server(_spec(s, d, ["--tensor-parallel-size", "2"]), tmp_path / "a.log")
    b = s._make_server(_spec(s, d, ["--tensor-parallel-size", "2"]), tmp_path / "b.log")
    va = _venv_runtime(a).extra_env["CUDA_VISIBLE_DEVICES"].split(",")
    vb = _venv_runtime(b).extra_env["CUDA_VISIBLE_DEVICES"].split(",")
    assert len(va) == len(vb) == 2 and not set(va) & set(vb)
    assert set(va) == {"0", "1"}  # the freest GPUs go first (0 and 1 have the most free memory here)
    s._on_stop(a)
    assert a.lease is None
    c = s._make_server(_spec(s, d, []), tmp_path / "c.log")
    assert _venv_runtime(c).extra_env["CUDA_VISIBLE_DEVICES"] in va  # a released GPU is leased again


def test_memory_preflight_warns_before_a_start_that_cannot_fit(tmp_path: Path) -> None:
    warnings: list[str] = []
    s = _session(tmp_path, warnings=warnings)
    big = _model_dir(tmp_path, hidden_size=16384, num_hidden_layers=160, num_attention_heads=128,
                     num_key_value_heads=128, intermediate_size=65536, vocab_size=128000)
    s._make_server(_spec(s, big, ["--max-model-len", "32768"]), tmp_path / "x.log")
    assert warnings and "m-vllm-0.26.0" in warnings[0]


def test_docker_runtime_builds_argv_from_port_key_and_lease(tmp_path: Path) -> None:
    s = _session(tmp_path, runtime="docker")
    d = _model_dir(tmp_path)
    server = s._make_server(_spec(s, d, ["--max-model-len", "512"]), tmp_path / "d.log")
    server.port = 18123
    argv = server.argv = server.build_argv()  # what start() does after choosing the port
    assert argv[:2] == ["docker", "run"] and "vllm/vllm-openai:v0.26.0" in argv
    assert "127.0.0.1:18123:18123" in " ".join(argv)
    gpus = argv[argv.index("--gpus") + 1]
    assert gpus.startswith('"device=') and gpus.endswith('"')
    # The key's value never reaches docker's command line: `-e VLLM_API_KEY` copies it from docker's env.
    assert server.api_key not in " ".join(argv)
    assert "VLLM_API_KEY" in [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "-e"]
    assert server.build_env()["VLLM_API_KEY"] == server.api_key
    assert server.runtime.kind == "docker" and server.runtime.describe()["image"] == "vllm/vllm-openai:v0.26.0"
    assert server.runtime.cleanup_argv() == ["docker", "rm", "-f", server.runtime.describe()["container"]]
    assert server.phase_guard is None and server.pid_dir == tmp_path / "results" / ".servers"


def test_docker_runtime_provisions_nothing_and_refuses_builtin_models(tmp_path: Path) -> None:
    from pytest_vllm_compat.registry import ModelDirError

    s = _session(tmp_path, runtime="docker")
    s.envs.clear()
    env = s.env_for("0.26.0")
    assert env.provenance["image"] == "vllm/vllm-openai:v0.26.0" and env.path is None
    assert not (tmp_path / "envs" / "envs").exists()  # no venv was created
    tiny = ModelSpec(name="tiny", families=("mistral",), builtin="mistral")
    with pytest.raises(ModelDirError, match="use path= or hub= models"):
        s.model_path(tiny, env)


def test_pythonpath_reaches_only_external_interpreters(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The GPU recipe installs vLLM with --target and PYTHONPATH; a provisioned venv must not see ours."""
    from pytest_vllm_compat.runtime import InterpreterRuntime, VenvRuntime
    from pytest_vllm_compat.server import VLLMServer
    from pytest_vllm_compat.server_spec import ServerSpec

    monkeypatch.setenv("PYTHONPATH", "/tmp/site")
    spec = ServerSpec(model="m", model_path="/x", version="0.26.0", distribution="vllm", device="cpu")
    assert "PYTHONPATH" not in VLLMServer(spec, VenvRuntime("python3"), tmp_path / "a.log").build_env()
    external = VLLMServer(spec, InterpreterRuntime("python3"), tmp_path / "b.log")
    assert external.build_env()["PYTHONPATH"] == "/tmp/site"


def test_the_session_picks_the_runtime_of_the_environment(tmp_path: Path) -> None:
    """A provisioned venv (the env has a path), --vllm-python's interpreter (no path: keeps PYTHONPATH)."""
    from pytest_vllm_compat.runtime import InterpreterRuntime, VenvRuntime

    s = _session(tmp_path)
    d = _model_dir(tmp_path)
    external = s._make_server(_spec(s, d, []), tmp_path / "a.log")
    assert type(external.runtime) is InterpreterRuntime and external.runtime.python == Path("/usr/bin/python3")
    assert external.runtime.describe() == {"kind": "interpreter", "python": "/usr/bin/python3"}
    s.envs["0.26.0"] = VLLMEnvironment(name="vllm-0.26.0-py3.11", distribution="vllm", version="0.26.0",
                                       python=tmp_path / "venv" / "bin" / "python", path=tmp_path / "venv",
                                       provenance={"packages": {"vllm": "0.26.0"}})
    venv = s._make_server(_spec(s, d, []), tmp_path / "b.log")
    assert type(venv.runtime) is VenvRuntime and venv.runtime.kind == "venv"
    assert venv.runtime.offline  # a local model directory: no hub access
    assert venv.runtime.entry_point == ("-m", "vllm.entrypoints.openai.api_server")
    assert venv.api_key_env == "VLLM_API_KEY" and venv.startup_timeout == s.startup_timeout



# ------------------------------------------------------------------------- compile caches

def test_kept_compile_cache_reaches_the_server_under_the_env_dir(tmp_path: Path) -> None:
    s = _session(tmp_path)
    server = s._make_server(_spec(s, _model_dir(tmp_path), []), tmp_path / "a.log")
    env = server.build_env()
    root = tmp_path / "envs" / "compile-cache" / "vllm-0.26.0-py3.11"
    assert env["VLLM_CACHE_ROOT"] == str(root / "vllm")
    assert env["TORCHINDUCTOR_CACHE_DIR"] == str(root / "inductor")
    assert env["FLASHINFER_WORKSPACE_BASE"] == str(root / "flashinfer")
    assert server.compile_cache is not None
    assert server.compile_cache.describe() == {"mode": "keep", "root": str(root)}
    assert server.redacted_env()["VLLM_CACHE_ROOT"] == str(root / "vllm")  # what the record shows
    s.stop_one_off(server)
    assert root.is_dir()  # kept for the next run


def test_fresh_compile_cache_is_removed_when_the_server_stops(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("pytest_vllm_compat.gpu.wait_memory_released", lambda *a, **k: True)
    s = _session(tmp_path, compile_cache="fresh")
    server = s._make_server(_spec(s, _model_dir(tmp_path), []), tmp_path / "a.log")
    root = Path(server.build_env()["VLLM_CACHE_ROOT"]).parent
    assert root.is_dir() and root.is_relative_to(tmp_path / "results" / ".compile-cache" / "r1")
    s._on_stop(server)
    assert not root.exists()


def test_a_specs_cache_variable_wins_over_the_mode(tmp_path: Path) -> None:
    s = _session(tmp_path)
    spec = _spec(s, _model_dir(tmp_path), [])
    spec = type(spec)(**{**spec.__dict__, "env": (("VLLM_CACHE_ROOT", "/mine"),)})
    env = s._make_server(spec, tmp_path / "a.log").build_env()
    assert env["VLLM_CACHE_ROOT"] == "/mine"
    assert env["TRITON_CACHE_DIR"].startswith(str(tmp_path / "envs" / "compile-cache"))


def test_user_compile_cache_leaves_the_users_environment_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLLM_CACHE_ROOT", "/home/me/.cache/vllm")
    s = _session(tmp_path, compile_cache="user")
    env = s._make_server(_spec(s, _model_dir(tmp_path), []), tmp_path / "a.log").build_env()
    assert env["VLLM_CACHE_ROOT"] == "/home/me/.cache/vllm"
    assert "FLASHINFER_WORKSPACE_BASE" not in env or not env["FLASHINFER_WORKSPACE_BASE"].startswith(str(tmp_path))


def test_docker_mounts_the_compile_cache_and_points_the_variables_inside(tmp_path: Path) -> None:
    s = _session(tmp_path, runtime="docker")
    s.envs.clear()  # the image is the environment
    server = s._make_server(_spec(s, _model_dir(tmp_path), []), tmp_path / "d.log")
    server.port = 18124
    argv = server.build_argv()
    root = tmp_path / "envs" / "compile-cache" / "docker-vllm-openai-0.26.0"
    assert f"{root}:/vllm-compat-cache" in argv
    assert "VLLM_CACHE_ROOT=/vllm-compat-cache/vllm" in argv
    assert argv.index(f"{root}:/vllm-compat-cache") < argv.index("--entrypoint")  # a docker option, not a vLLM one


# ---------------------------------------------------------------------------- GPU packing

def test_packed_servers_share_a_gpu_with_a_memory_share_each(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[object] = []

    def released(*a: object, **k: object) -> bool:
        calls.append(a)
        return True

    monkeypatch.setattr("pytest_vllm_compat.gpu.wait_memory_released", released)
    one_gpu = [GPUS[0]]
    s = _session(tmp_path, servers_per_gpu=2)
    s.gpus[:] = one_gpu
    assert s._leaser is not None
    s._leaser.gpus = one_gpu
    d = _model_dir(tmp_path)
    a = s._make_server(_spec(s, d, []), tmp_path / "a.log")
    b = s._make_server(_spec(s, d, ["--max-model-len", "256"]), tmp_path / "b.log")
    for server in (a, b):
        assert _venv_runtime(server).extra_env["CUDA_VISIBLE_DEVICES"] == "0"
        assert _venv_runtime(server).extra_args == ["--gpu-memory-utilization", "0.45"]
        assert server.phase_guard is not None
        assert server.build_argv()[-2:] == ["--gpu-memory-utilization", "0.45"]
    lease_a, lease_b = a.lease, b.lease
    assert lease_a is not None and lease_b is not None
    assert {lease_a.slots, lease_b.slots} == {(0,), (1,)}
    s._on_stop(a)
    assert calls == []  # a shared GPU's memory moves with its neighbour: no wait for a baseline
    assert a.lease is None and b.lease is not None and b.lease.held


def test_a_specs_own_memory_fraction_is_kept_when_packing(tmp_path: Path) -> None:
    s = _session(tmp_path, servers_per_gpu=4)
    server = s._make_server(_spec(s, _model_dir(tmp_path), ["--gpu-memory-utilization", "0.2"]), tmp_path / "a.log")
    assert _venv_runtime(server).extra_args == []
    assert server.build_argv().count("--gpu-memory-utilization") == 1


def test_exclusive_servers_get_no_share_and_no_guard(tmp_path: Path) -> None:
    s = _session(tmp_path)
    server = s._make_server(_spec(s, _model_dir(tmp_path), []), tmp_path / "a.log")
    assert server.lease is not None
    assert _venv_runtime(server).extra_args == [] and server.phase_guard is None and not server.lease.shared


def test_packing_preflight_counts_the_share_not_the_whole_gpu(tmp_path: Path) -> None:
    warnings: list[str] = []
    s = _session(tmp_path, warnings=warnings, servers_per_gpu=8)
    # ~7 GiB of bf16 weights: fits in 0.9 x 80 GiB, not in 0.112 x 80 GiB = 8.9 GiB with its KV cache.
    mid = _model_dir(tmp_path, hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                     num_key_value_heads=8, intermediate_size=14336, vocab_size=32000)
    s._make_server(_spec(s, mid, ["--max-model-len", "32768"]), tmp_path / "x.log")
    assert warnings and "0.112" in warnings[0]


def test_a_failing_cache_directory_releases_the_lease(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = _session(tmp_path)

    def broken(*a: object, **k: object) -> object:
        raise PermissionError("read-only env dir")

    monkeypatch.setattr("pytest_vllm_compat.compile_cache.CompileCachePolicy.for_server", broken)
    d = _model_dir(tmp_path)
    with pytest.raises(PermissionError):
        s._make_server(_spec(s, d, ["--tensor-parallel-size", "4"]), tmp_path / "a.log")
    assert s._leaser is not None
    with s._leaser.lease(4, timeout=0) as lease:  # all four GPUs are free again
        assert lease.indices == (0, 1, 2, 3)


def test_stop_all_removes_the_runs_empty_fresh_cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("pytest_vllm_compat.gpu.wait_memory_released", lambda *a, **k: True)
    s = _session(tmp_path, compile_cache="fresh")
    server = s._make_server(_spec(s, _model_dir(tmp_path), []), tmp_path / "a.log")
    s.stop_one_off(server)
    assert s.cache_policy.scratch_dir.is_dir()
    s.stop_all()
    assert not s.cache_policy.scratch_dir.exists()


def test_a_cpu_workers_servers_bind_to_its_share_of_the_cores(tmp_path: Path) -> None:
    from pytest_vllm_compat.cpu_cores import CoreShareError, worker_share

    share = worker_share("gw1", 2, cores=list(range(8)), total_gib=24)
    s = _session(tmp_path, core_share=share)
    s.device, s._leaser = "cpu", None
    server = s._make_server(_spec(s, _model_dir(tmp_path), []), tmp_path / "a.log")
    env = server.build_env()
    assert env["VLLM_CPU_OMP_THREADS_BIND"] == "4-7" and env["VLLM_CPU_NUM_OF_RESERVED_CPU"] == "0"
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "6"
    assert server.redacted_env()["VLLM_CPU_OMP_THREADS_BIND"] == "4-7"  # what the record shows
    assert server.cpu_share == {"worker": "gw1", "workers": 2, "cores": "4-7", "kv_gib": 6}
    s.stop_one_off(server)

    tp2 = s._make_server(_spec(s, _model_dir(tmp_path), ["--tensor-parallel-size", "2"]), tmp_path / "b.log")
    assert tp2.build_env()["VLLM_CPU_OMP_THREADS_BIND"] == "4-5|6-7"
    s.stop_one_off(tp2)
    # The registry's own KV-cache space wins over the share.
    model = ModelSpec(name="m", families=("llama",), path=str(_model_dir(tmp_path)), env={"VLLM_CPU_KVCACHE_SPACE": "1"})
    spec = s.spec_for(Target(model=model, version="0.26.0", distribution="vllm", device="cpu"), str(tmp_path / "model"))
    own = s._make_server(spec, tmp_path / "c.log")
    assert own.build_env()["VLLM_CPU_KVCACHE_SPACE"] == "1"
    s.stop_one_off(own)
    narrow = worker_share("gw0", 8, cores=list(range(8)), total_gib=24)
    s.core_share = narrow
    with pytest.raises(CoreShareError, match="2 tensor-parallel ranks need 2 cores"):
        s._make_server(_spec(s, _model_dir(tmp_path), ["--tensor-parallel-size", "2"]), tmp_path / "d.log")


def test_a_serial_cpu_run_leaves_the_binding_to_vllm(tmp_path: Path) -> None:
    s = _session(tmp_path)
    s.device, s._leaser = "cpu", None
    server = s._make_server(_spec(s, _model_dir(tmp_path), []), tmp_path / "a.log")
    assert "VLLM_CPU_OMP_THREADS_BIND" not in server.build_env() and server.cpu_share is None
    s.stop_one_off(server)


# --- --vllm-eager-knob-servers: knob-only servers on CPU start with --enforce-eager ---------------------------


@pytest.mark.parametrize(("device", "asked", "eager_ok", "registry", "added"), [
    ("cpu", True, True, {}, True),
    ("cpu", False, True, {}, False),  # not asked: every server as vLLM starts it
    ("cpu", True, False, {}, False),  # a server whose tests depend on the compiled model
    ("cuda", True, True, {}, False),  # eager also turns CUDA graphs off there
    ("cpu", True, True, {"enforce_eager": True}, False),  # the registry has it already: not twice
])
def test_knob_servers_start_eager_only_where_asked_and_harmless(
        tmp_path: Path, device: str, asked: bool, eager_ok: bool, registry: dict[str, object], added: bool) -> None:
    s = _session(tmp_path, eager_knob_servers=asked)
    model = ModelSpec(name="m", families=("llama",), path=str(tmp_path), serve_args=registry)
    target = Target(model=model, version="0.26.0", distribution="vllm", device=device)
    args = s.knob_server_args(target, ["--structured-outputs-config", "{}"], eager_ok)
    assert args == ["--structured-outputs-config", "{}", *(["--enforce-eager"] if added else [])]
    spec = s.spec_for(target, str(tmp_path), args=args)
    assert spec.serve_args.count("--enforce-eager") == (1 if added or registry else 0)
