"""The docker runtime's argv: exact shape, the quoted --gpus '"device=0,1"' form, loopback-only publishing,
redaction."""

from __future__ import annotations

import shutil
import stat
from pathlib import Path

import pytest

from pytest_vllm_compat.runtime import docker as docker_runtime
from pytest_vllm_compat.runtime.docker import (
    build_docker_argv,
    docker_available,
    image_for,
    redact_argv,
    stop_container_argv,
)

KEY = "sk-test-0123456789abcdef"


def argv_for(**overrides: object) -> list[str]:
    kwargs: dict[str, object] = dict(
        version="0.6.6", model="/srv/models/mistral-7b", container_model=None, port=8123, api_key_env="VLLM_API_KEY",
        serve_args=["--max-model-len", "512", "--tensor-parallel-size", "2"],
        env={"VLLM_USE_V1": "0", "HF_TOKEN": "hf_secret"}, devices=[0, 1],
        hf_cache=Path("/var/cache/hf"), name="vllm-compat-mistral-0.6.6-gw0",
        model_dir=Path("/srv/models/mistral-7b"),
    )
    kwargs.update(overrides)
    return build_docker_argv(**kwargs)  # type: ignore[arg-type]


def after(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == flag]


def test_image_for() -> None:
    assert image_for("0.6.6") == "vllm/vllm-openai:v0.6.6"
    assert image_for("v0.6.6.post1") == "vllm/vllm-openai:v0.6.6.post1"
    assert image_for("0.32.0", repository="registry.local/vllm") == "registry.local/vllm:v0.32.0"
    assert image_for("nightly") == "vllm/vllm-openai:nightly"
    with pytest.raises(ValueError):
        image_for(" ")


def test_argv_exact_shape_for_a_local_model() -> None:
    assert argv_for() == [
        "docker", "run", "--rm", "--name", "vllm-compat-mistral-0.6.6-gw0", "--init", "--ipc=host",
        "-p", "127.0.0.1:8123:8123",
        "--gpus", '"device=0,1"',
        "-e", "VLLM_USE_V1=0", "-e", "HF_TOKEN=hf_secret", "-e", "VLLM_API_KEY",
        "-v", "/var/cache/hf:/root/.cache/huggingface",
        "-v", "/srv/models/mistral-7b:/models/mistral-7b:ro",
        "--entrypoint", "python3", "vllm/vllm-openai:v0.6.6", "-m", "vllm.entrypoints.openai.api_server",
        "--host", "0.0.0.0", "--port", "8123", "--model", "/models/mistral-7b",
        "--served-model-name", "/srv/models/mistral-7b",  # clients keep the venv runtime's model name
        "--max-model-len", "512", "--tensor-parallel-size", "2",
    ]


def test_argv_for_a_hub_model_without_gpus_or_cache() -> None:
    argv = argv_for(model="mistralai/Mistral-7B-Instruct-v0.2", model_dir=None, devices=None, hf_cache=None,
                    env={}, serve_args=[], entrypoint=("vllm", "serve"), docker="/usr/bin/docker",
                    extra_docker_args=["--shm-size", "8g"])
    assert argv == [
        "/usr/bin/docker", "run", "--rm", "--name", "vllm-compat-mistral-0.6.6-gw0", "--init", "--ipc=host",
        "-p", "127.0.0.1:8123:8123", "-e", "VLLM_API_KEY", "--shm-size", "8g",
        "--entrypoint", "vllm", "vllm/vllm-openai:v0.6.6", "serve",
        "--host", "0.0.0.0", "--port", "8123", "--model", "mistralai/Mistral-7B-Instruct-v0.2",
    ]


def test_gpus_element_is_the_quoted_device_form() -> None:
    """No shell strips quotes, so the element itself carries them: the shell's --gpus '"device=0,1"'."""
    assert after(argv_for(devices=[0, 1]), "--gpus") == ['"device=0,1"']
    assert after(argv_for(devices=(4, 5, 6, 7)), "--gpus") == ['"device=4,5,6,7"']
    assert after(argv_for(devices=[3]), "--gpus") == ['"device=3"']
    assert after(argv_for(devices=[]), "--gpus") == []
    assert "all" not in argv_for(devices=None)


def test_publishes_on_loopback_only_while_the_server_listens_on_all_container_interfaces() -> None:
    """The server binds 0.0.0.0 *inside* the container (Docker's port forwarding reaches the container's
    own interface, never its 127.0.0.1); the host publishes the port on 127.0.0.1 only, so nothing
    outside this machine can reach the server."""
    argv = argv_for(port=40001)
    assert after(argv, "-p") == ["127.0.0.1:40001:40001"]
    assert not any(a.startswith("-p=") or a.startswith("--publish") or a == "-P" for a in argv)
    image_at = argv.index("vllm/vllm-openai:v0.6.6")
    assert argv.index("-p") < image_at < argv.index("--host")  # docker's option vs the server's
    assert after(argv, "--host") == ["0.0.0.0"]
    assert after(argv, "--port") == ["40001"]


def test_host_cuda_visible_devices_is_not_forwarded_into_a_gpu_container() -> None:
    env = {"CUDA_VISIBLE_DEVICES": "2,3", "CUDA_DEVICE_ORDER": "PCI_BUS_ID", "VLLM_LOGGING_LEVEL": "INFO"}
    argv = argv_for(env=env, devices=[2, 3])
    assert after(argv, "-e") == ["VLLM_LOGGING_LEVEL=INFO", "VLLM_API_KEY"]
    assert after(argv, "--gpus") == ['"device=2,3"']
    assert "CUDA_VISIBLE_DEVICES=2,3" in argv_for(env=env, devices=None)  # a user's own setting, no lease


def test_container_model_and_relative_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    argv = argv_for(model_dir=Path("models/tiny"), container_model="/models/tiny-mistral",
                    hf_cache=Path("cache"), model="tiny-mistral")
    assert after(argv, "-v") == [f"{tmp_path}/cache:/root/.cache/huggingface",  # relative = named volume
                                 f"{tmp_path}/models/tiny:/models/tiny-mistral:ro"]
    assert after(argv, "--model") == ["/models/tiny-mistral"]
    assert after(argv, "--served-model-name") == ["tiny-mistral"]
    argv = argv_for(serve_args=["--served-model-name", "m"])
    assert after(argv, "--served-model-name") == ["m"]


def test_the_api_key_is_never_on_the_docker_command_line() -> None:
    """Only the variable's name: docker copies its value from its own environment (not visible in ps)."""
    argv = argv_for()
    assert "--api-key" not in argv and not any(KEY in a for a in argv)
    assert "VLLM_API_KEY" in after(argv, "-e")


def test_redacted_argv_hides_the_api_key_and_env_values() -> None:
    argv = [*argv_for(), "--api-key", KEY]
    red = redact_argv(argv)
    assert KEY in argv and "HF_TOKEN=hf_secret" in argv  # the real argv has them
    assert not any(KEY in a or "hf_secret" in a for a in red)
    assert after(red, "--api-key") == ["***"]
    assert after(red, "-e") == ["VLLM_USE_V1=***", "HF_TOKEN=***", "VLLM_API_KEY"]
    assert len(red) == len(argv) and red[:11] == argv[:11]
    assert redact_argv(["x", "--api-key=abc", "--env=A=b", "tok-secret"], secrets=["tok-secret"]) == \
        ["x", "--api-key=***", "--env=A=***", "***"]


def test_invalid_inputs() -> None:
    with pytest.raises(ValueError, match="container name"):
        argv_for(name="bad name; rm -rf /")
    with pytest.raises(ValueError, match="environment variable name"):
        argv_for(env={"A B": "1"})
    with pytest.raises(ValueError, match="port"):
        argv_for(port=0)


def test_stop_container_argv() -> None:
    assert stop_container_argv("vllm-compat-x") == ["docker", "rm", "-f", "vllm-compat-x"]
    assert stop_container_argv("c", docker="podman") == ["podman", "rm", "-f", "c"]


def _fake_docker(tmp_path: Path, body: str) -> str:
    script = tmp_path / "docker"
    script.write_text("#!/bin/sh\n" + body + "\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return str(script)


def test_docker_available_reasons(tmp_path: Path) -> None:
    down = _fake_docker(tmp_path, 'echo "Cannot connect to the Docker daemon at unix:///var/run/docker.sock.'
                                  ' Is the docker daemon running?" >&2; exit 1')
    assert docker_available(down) == ("no Docker engine: Cannot connect to the Docker daemon at "
                                      "unix:///var/run/docker.sock. Is the docker daemon running?")
    assert "not installed" in str(docker_available(str(tmp_path / "nope")))
    hang = _fake_docker(tmp_path, "sleep 5")
    assert docker_available(hang, timeout=0.3) == f"no Docker engine: '{hang} info' did not answer within 0.3 s"
    up = _fake_docker(tmp_path, 'test "$1 $2 $3" = "info --format {{.ServerVersion}}" && echo 27.3.1')
    assert docker_available(up) is None


def test_docker_available_on_this_machine() -> None:
    """Here (no engine) a reason; where an engine answers, None. Either way no exception."""
    reason = docker_available()
    if shutil.which("docker") is None:
        assert reason is not None and "not installed" in reason
    assert reason is None or reason.startswith("no Docker engine: ")


def test_module_never_uses_a_shell() -> None:
    source = Path(docker_runtime.__file__).read_text()
    assert "shell=True" not in source and "os.system" not in source and "os.popen" not in source


# ------------------------------------------------------------------------------ the runtime

def test_docker_runtime_for_a_local_model_with_a_lease_and_a_compile_cache(tmp_path: Path) -> None:
    from pytest_vllm_compat.runtime.docker import DockerRuntime
    from pytest_vllm_compat.server_spec import ServerSpec

    model = tmp_path / "tiny"
    model.mkdir()
    spec = ServerSpec(model="tiny", model_path=str(model), version="0.26.0", distribution="vllm", device="cuda",
                      serve_args=("--max-model-len", "512"), env=(("VLLM_LOGGING_LEVEL", "DEBUG"),))
    runtime = DockerRuntime.for_spec(spec, devices=(2, 3), cache_root=tmp_path / "cache",
                                     cache_env={"VLLM_CACHE_ROOT": str(tmp_path / "cache" / "vllm")},
                                     extra_args=["--gpu-memory-utilization", "0.45"], hf_cache=tmp_path / "hf")
    argv = runtime.argv(spec, port=18123, api_key=KEY)
    name = runtime.name
    assert name.startswith(f"vllm-compat-{spec.key[-8:]}-")
    assert argv == [
        "docker", "run", "--rm", "--name", name, "--init", "--ipc=host", "-p", "127.0.0.1:18123:18123",
        "--gpus", '"device=2,3"',
        "-e", "VLLM_CACHE_ROOT=/vllm-compat-cache/vllm", "-e", "VLLM_LOGGING_LEVEL=DEBUG", "-e", "VLLM_API_KEY",
        "-v", f"{tmp_path}/hf:/root/.cache/huggingface", "-v", f"{model}:/models/tiny:ro",
        "-v", f"{tmp_path}/cache:/vllm-compat-cache",
        "--entrypoint", "python3", "vllm/vllm-openai:v0.26.0", "-m", "vllm.entrypoints.openai.api_server",
        "--host", "0.0.0.0", "--port", "18123", "--model", "/models/tiny", "--served-model-name", "tiny",
        "--max-model-len", "512", "--gpu-memory-utilization", "0.45"]
    assert KEY not in " ".join(argv)  # the key travels in the docker client's environment only
    assert runtime.cleanup_argv() == ["docker", "rm", "-f", name]
    assert runtime.describe() == {"kind": "docker", "image": "vllm/vllm-openai:v0.26.0", "container": name}
    assert runtime.offline and runtime.env(spec)["HF_HUB_OFFLINE"] == "1"
    assert runtime.shown_env(spec) == {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                                       "VLLM_LOGGING_LEVEL": "DEBUG"}


def test_docker_runtime_for_a_hub_model_without_gpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pytest_vllm_compat.runtime.docker import DockerRuntime
    from pytest_vllm_compat.server import VLLMServer
    from pytest_vllm_compat.server_spec import ServerSpec

    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.cache/huggingface: nothing mounted
    spec = ServerSpec(model="org/m", model_path="org/m", version="0.32.0", distribution="vllm", device="cpu")
    runtime = DockerRuntime.for_spec(spec)
    assert (runtime.devices, runtime.hf_cache, runtime.model_dir, runtime.offline) == (None, None, None, False)
    server = VLLMServer(spec, runtime, tmp_path / "d.log")
    server.port = 18200
    server.argv = server.build_argv()
    assert "--gpus" not in server.argv and "-v" not in server.argv
    assert after(server.argv, "--model") == ["org/m"] and "--served-model-name" not in server.argv
    env = server.build_env()
    assert env["VLLM_API_KEY"] == server.api_key and "HF_HUB_OFFLINE" not in server.redacted_env()
    assert server.api_key not in " ".join(server.argv) and server.api_key not in " ".join(server.redacted_argv())


def test_docker_environment_is_the_image() -> None:
    from pytest_vllm_compat.runtime.docker import docker_environment

    env = docker_environment("0.26.0")
    assert (env.name, env.path, str(env.python)) == ("docker-vllm-openai-0.26.0", None, "docker")
    assert env.provenance == {"packages": {"vllm": "0.26.0"}, "image": "vllm/vllm-openai:v0.26.0"}
