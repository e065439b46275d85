"""Option resolution: CLI > environment variable > ini/pyproject > default, conversion and path bases."""

from __future__ import annotations

import dataclasses
import os
import re
import typing
from pathlib import Path
from typing import Annotated

import pytest

from pytest_vllm_compat import options
from pytest_vllm_compat.options import BY_NAME, OPTIONS, resolve, resolve_all


@pytest.fixture
def ini_dir(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeini("""
        [pytest]
        vllm_startup_timeout = 11
        vllm_port = 8123
        vllm_device = cpu
        vllm_results = ini-results
        vllm_max_restarts = 5
        vllm_compile_cache = user
        vllm_servers_per_gpu = 2
    """)
    return pytester


@pytest.mark.parametrize(("name", "flag", "env", "cli_value", "env_value", "ini_value", "default"), [
    ("vllm_startup_timeout", "--vllm-startup-timeout", "VLLM_COMPAT_STARTUP_TIMEOUT", 33.0, 22.0, 11.0, 900.0),
    ("vllm_port", "--vllm-port", "VLLM_COMPAT_PORT", 8300, 8200, 8123, 0),
    ("vllm_max_restarts", "--vllm-max-restarts", "VLLM_COMPAT_MAX_RESTARTS", 7, 6, 5, 2),
    ("vllm_device", "--vllm-device", "VLLM_COMPAT_DEVICE", "cuda", "auto", "cpu", "auto"),
    ("vllm_compile_cache", "--vllm-compile-cache", "VLLM_COMPAT_COMPILE_CACHE", "keep", "fresh", "user", "keep"),
    ("vllm_servers_per_gpu", "--vllm-servers-per-gpu", "VLLM_COMPAT_SERVERS_PER_GPU", 4, 3, 2, 1),
])
def test_precedence_cli_env_ini_default(ini_dir: pytest.Pytester, name: str, flag: str, env: str,
                                        cli_value: object, env_value: object, ini_value: object,
                                        default: object) -> None:
    environ = {env: str(env_value)}
    # CLI beats env and ini
    r = resolve(ini_dir.parseconfig(f"{flag}={cli_value}"), name, environ)
    assert (r.value, r.source) == (cli_value, "cli")
    # env beats ini
    r = resolve(ini_dir.parseconfig(), name, environ)
    assert (r.value, r.source) == (env_value, "env")
    # ini beats default
    r = resolve(ini_dir.parseconfig(), name, {})
    assert (r.value, r.source) == (ini_value, "ini")
    assert type(r.value) is type(default)


def test_a_session_built_without_options_has_the_options_defaults(pytester: pytest.Pytester) -> None:
    """The defaults are written once: a CompatSession built directly (benchmarks, perf campaigns) starts, keeps and
    restarts servers as a pytest run without options does (max_servers was 1 there and 2 here)."""
    from pytest_vllm_compat.session import CompatSession

    got = resolve_all(pytester.parseconfig(), {})
    session_defaults = {f.name: f.default for f in dataclasses.fields(CompatSession)}
    for name in ("startup_timeout", "max_servers", "max_restarts", "hang_timeout", "port"):
        assert session_defaults[name] == got[f"vllm_{name}"].value, name


def test_defaults_without_ini_or_env(pytester: pytest.Pytester) -> None:
    config = pytester.parseconfig()
    got = resolve_all(config, {})
    assert set(got) == {o.name for o in OPTIONS}
    assert all(r.source == "default" for r in got.values())
    assert got["vllm_startup_timeout"].value == 900.0
    assert got["vllm_port"].value == 0
    assert got["vllm_max_servers"].value == int(BY_NAME["vllm_max_servers"].default) >= 1
    assert got["vllm_device"].value == "auto"
    assert got["vllm_versions"].value == ""
    # empty path defaults mean "not given", not the current directory
    assert got["vllm_env_dir"].value is None
    assert got["vllm_python"].value is None


def test_pyproject_integer_value_is_read(pytester: pytest.Pytester) -> None:
    pytester.makepyprojecttoml("""
        [tool.pytest.ini_options]
        vllm_startup_timeout = 11
        vllm_versions = "0.28.0,0.32.0"
    """)
    config = pytester.parseconfig()
    r = resolve(config, "vllm_startup_timeout", {})
    assert (r.value, r.source) == (11.0, "ini")
    assert resolve(config, "vllm_versions", {}).value == "0.28.0,0.32.0"


def test_empty_environment_variable_does_not_override_ini(ini_dir: pytest.Pytester) -> None:
    r = resolve(ini_dir.parseconfig(), "vllm_port", {"VLLM_COMPAT_PORT": ""})
    assert (r.value, r.source) == (8123, "ini")


def test_os_environ_is_used_when_no_environ_given(ini_dir: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLLM_COMPAT_STARTUP_TIMEOUT", "44.5")
    r = resolve(ini_dir.parseconfig(), "vllm_startup_timeout")
    assert (r.value, r.source) == (44.5, "env")


def test_bad_choice_on_the_command_line_is_a_usage_error(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--vllm-device=tpu")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--vllm-device*invalid choice*tpu*"])


@pytest.mark.parametrize("source", ["env", "ini"])
def test_bad_choice_from_env_or_ini_names_the_flag_and_source(pytester: pytest.Pytester, source: str) -> None:
    environ = {}
    if source == "ini":
        pytester.makeini("[pytest]\nvllm_installer = conda\n")
    else:
        environ = {"VLLM_COMPAT_INSTALLER": "conda"}
    with pytest.raises(pytest.UsageError) as exc:
        resolve(pytester.parseconfig(), "vllm_installer", environ)
    msg = str(exc.value)
    assert "--vllm-installer" in msg
    assert "'conda'" in msg
    assert "auto, uv, pip" in msg
    assert f"from {source}" in msg


@pytest.mark.parametrize(("name", "flag", "raw", "kind"), [
    ("vllm_port", "--vllm-port", "eighty", "int"),
    ("vllm_port", "--vllm-port", "80.5", "int"),
    ("vllm_max_servers", "--vllm-max-servers", "two", "int"),
    ("vllm_startup_timeout", "--vllm-startup-timeout", "15min", "float"),
])
def test_conversion_errors_are_usage_errors(pytester: pytest.Pytester, name: str, flag: str, raw: str,
                                            kind: str) -> None:
    config = pytester.parseconfig(f"{flag}={raw}")
    with pytest.raises(pytest.UsageError) as exc:
        resolve(config, name, {})
    msg = str(exc.value)
    assert msg.startswith(f"{flag}: {raw!r} is not a valid {kind}")
    assert "(from cli)" in msg


def test_conversion_error_in_a_real_run_exits_with_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_plain(): pass")
    result = pytester.runpytest_subprocess("--vllm-port=abc", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--vllm-port: 'abc' is not a valid int (from cli)*"])


def test_relative_paths_ini_against_rootdir_cli_and_env_against_invocation_dir(
        ini_dir: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    sub = ini_dir.mkdir("sub")
    monkeypatch.chdir(sub)
    config = ini_dir.parseconfig()
    assert config.rootpath == ini_dir.path
    assert Path(config.invocation_params.dir) == sub
    ini = resolve(config, "vllm_results", {})
    assert (ini.value, ini.source) == (ini_dir.path / "ini-results", "ini")

    env = resolve(config, "vllm_results", {"VLLM_COMPAT_RESULTS": "env-results"})
    assert (env.value, env.source) == (sub / "env-results", "env")

    cli = resolve(ini_dir.parseconfig("--vllm-results=cli-results"), "vllm_results", {})
    assert (cli.value, cli.source) == (sub / "cli-results", "cli")


def test_absolute_and_home_paths(pytester: pytest.Pytester, tmp_path: Path) -> None:
    config = pytester.parseconfig(f"--vllm-env-dir={tmp_path / 'envs'}")
    assert resolve(config, "vllm_env_dir", {}).value == tmp_path / "envs"
    home = resolve(pytester.parseconfig("--vllm-env-dir=~/somewhere"), "vllm_env_dir", {}).value
    assert home == Path.home() / "somewhere"


def test_help_text_names_env_var_and_ini_key(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--help")
    assert result.ret == 0
    text = result.stdout.str()
    for o in OPTIONS:
        assert o.flag in text
        assert o.name in text  # the ini key is listed among ini options
    result.stdout.fnmatch_lines(["*--vllm-startup-timeout*"])
    assert "VLLM_COMPAT_STARTUP_TIMEOUT" in text


def test_every_option_has_a_unique_flag_env_and_a_valid_default() -> None:
    assert len({o.flag for o in OPTIONS}) == len(OPTIONS)
    assert len({o.env for o in OPTIONS}) == len(OPTIONS)
    for o in OPTIONS:
        assert o.env.startswith("VLLM_COMPAT_")
        assert o.flag == "--" + o.name.replace("_", "-").replace("vllm-versions", "vllm")
        if o.choices:
            assert o.default in o.choices
        if o.kind == "int":
            int(o.default)
        if o.kind == "float":
            float(o.default)
    assert BY_NAME["vllm_versions"].flag == "--vllm"
    assert options.BY_NAME is BY_NAME


def test_vllm_python_bare_name_is_looked_up_on_path(pytester: pytest.Pytester, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The GPU recipe runs `--vllm-python=python3`: a bare name means the interpreter on PATH, not ./python3."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    exe = bindir / "python-with-vllm"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")
    got = resolve(pytester.parseconfig("--vllm-python=python-with-vllm"), "vllm_python", {})
    assert got.value == exe
    rel = resolve(pytester.parseconfig("--vllm-python=venv/bin/python"), "vllm_python", {})
    assert rel.value == Path(pytester.path) / "venv" / "bin" / "python"  # a path stays a path
    with pytest.raises(pytest.UsageError, match=r"--vllm-python: 'no-such-python' is not on PATH \(from env\)"):
        resolve(pytester.parseconfig(), "vllm_python", {"VLLM_COMPAT_PYTHON": "no-such-python"})


def test_settings_has_a_typed_field_per_option_with_its_source(ini_dir: pytest.Pytester) -> None:
    fields = {f.name for f in dataclasses.fields(options.Settings)} - {"resolved"}
    assert fields == {options.field_name(o.name) for o in OPTIONS}
    s = options.resolve_settings(ini_dir.parseconfig("--vllm=0.32.0", "--vllm-with=transformers==5.16.1"),
                                 {"VLLM_COMPAT_HANG_TIMEOUT": "3"})
    assert (s.versions, s.with_, s.port, s.startup_timeout, s.hang_timeout) == (
        "0.32.0", "transformers==5.16.1", 8123, 11.0, 3.0)
    assert (s.source("vllm_versions"), s.source("vllm_port"), s.source("vllm_hang_timeout"),
            s.source("vllm_max_servers")) == ("cli", "ini", "env", "default")
    assert s.given_as("vllm_port") == "vllm_port" and s.given_as("vllm_hang_timeout") == "VLLM_COMPAT_HANG_TIMEOUT"
    assert s.given_as("vllm_versions") == "--vllm" and s.given_as("vllm_max_servers") == "--vllm-max-servers"
    assert isinstance(s.results, Path) and s.env_dir is None and s.pre is False and s.shard == ""
    assert s.resolved["vllm_port"] == resolve(ini_dir.parseconfig(), "vllm_port", {})


SAMPLE = {"str": "x", "flag": "true", "int": "3", "float": "2.5", "path": "p", "command": "bin/python", "multi": "a==1"}


def test_each_settings_field_declares_the_option_that_fills_it(pytester: pytest.Pytester) -> None:
    """One declaration drives all of it: the flag and ini key pytest registers, the conversion, and the typed
    field the value lands in. Every option set in the ini file arrives in its field, as the field's type."""
    hints = typing.get_type_hints(options.Settings)
    assert [o.name for o in OPTIONS] == [options.ini_name(f.name) for f in dataclasses.fields(options.Settings)
                                         if f.name != "resolved"]
    given = {o.name: o.choices[-1] if o.choices else SAMPLE[o.kind] for o in OPTIONS}
    pytester.makeini("[pytest]\n" + "".join(f"{name} = {value}\n" for name, value in given.items()))
    config = pytester.parseconfig()
    s = options.resolve_settings(config, {})
    for o in OPTIONS:
        field = options.field_name(o.name)
        assert config.getini(o.name) == given[o.name], o.name  # the ini key is registered
        assert s.source(o.name) == "ini", o.name
        held = options.field_type(hints[field])
        assert isinstance(getattr(s, field), held), o.name
        assert o.kind == options.KIND_OF_TYPE[held] or options.SPECIAL_KINDS.get(o.kind) is held, o.name
    assert (s.pre, s.port, s.drift_tolerance, s.with_, s.device) == (True, 3, 2.5, "a==1", "cpu")
    assert s.python == pytester.path / "bin" / "python" and s.results == pytester.path / "p"
    # and each flag, with the option's name as its dest
    for o in OPTIONS:
        value = "true" if o.kind == "flag" else given[o.name]
        args = [o.flag] if o.kind == "flag" else [f"{o.flag}={value}"]
        assert pytester.parseconfig(*args).getoption(o.name) in (value, [value]), o.flag


def test_a_new_field_is_a_new_option() -> None:
    @dataclasses.dataclass(frozen=True)
    class Extra:
        retries: Annotated[int, options.Option("--vllm-retries", "VLLM_COMPAT_RETRIES", "1", "how often")]
        cache: Annotated[Path | None, options.Option("--vllm-cache", "VLLM_COMPAT_CACHE", "", "where")]
        not_an_option: str

    assert options.declared_options(Extra) == (
        options.Option("--vllm-retries", "VLLM_COMPAT_RETRIES", "1", "how often", kind="int", name="vllm_retries"),
        options.Option("--vllm-cache", "VLLM_COMPAT_CACHE", "", "where", kind="path", name="vllm_cache"))


def test_a_field_type_or_kind_that_does_not_convert_is_refused() -> None:
    @dataclasses.dataclass(frozen=True)
    class ListField:
        ids: Annotated[list[str], options.Option("--vllm-ids", "VLLM_COMPAT_IDS", "", "ids")]

    @dataclasses.dataclass(frozen=True)
    class MultiPath:
        dirs: Annotated[Path, options.Option("--vllm-dirs", "VLLM_COMPAT_DIRS", "", "dirs", kind="multi")]

    for bad in (ListField, MultiPath):
        with pytest.raises(TypeError, match=f"{bad.__name__}[.]"):
            options.declared_options(bad)


def test_the_readme_table_lists_each_option_with_its_env_and_default() -> None:
    """The README's table of options is the one other place they are written: the same flags, each with its
    environment variable and, where the default is a value, that value."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    rows = {m[1]: (m[2], m[3]) for m in re.finditer(r"^\| `(--vllm[\w-]*)` \| `(\w+)` \| ([^|]*) \|", readme, re.M)}
    assert sorted(rows) == sorted(o.flag for o in OPTIONS)
    for o in OPTIONS:
        env, default = rows[o.flag]
        assert env == o.env, o.flag
        if o.default and o.kind != "flag":
            assert default.strip() == f"`{o.default}`", o.flag
