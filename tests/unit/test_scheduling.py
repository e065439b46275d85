"""Sharding: parse i/n, a stable shard per server spec, a deterministic balanced partition."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from pytest_vllm_compat import scheduling as sharding
from pytest_vllm_compat.scheduling import balance, parse_shard, shard_of

KEYS = [f"{model}|vllm-{v}|{args}" for model in ("tiny-mistral", "tiny-llama", "mistral-7b", "qwen-0.5b")
        for v in ("0.26.0", "0.32.0") for args in ("", "--enforce-eager", "--max-model-len 512")]


@pytest.mark.parametrize(("text", "expected"), [("2/4", (2, 4)), ("1/1", (1, 1)), (" 3 / 3 ", (3, 3))])
def test_parse_shard(text: str, expected: tuple[int, int]) -> None:
    assert parse_shard(text) == expected


@pytest.mark.parametrize(("text", "message"), [
    ("0/4", "between 1 and 4"), ("5/4", "between 1 and 4"), ("x", "expected INDEX/TOTAL"),
    ("1/0", "at least 1"), ("2", "expected INDEX/TOTAL"), ("-1/4", "expected INDEX/TOTAL"), ("", "INDEX/TOTAL"),
])
def test_parse_shard_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_shard(text)


def test_shard_of_is_stable_across_processes_and_hash_seeds() -> None:
    """Each CI machine computes the shard in its own process: hash() would differ, sha256 does not."""
    here = {k: shard_of(k, 4) for k in KEYS}
    code = ("import json, sys; from pytest_vllm_compat.scheduling import shard_of; "
            "keys = json.loads(sys.stdin.read()); print(json.dumps({k: shard_of(k, 4) for k in keys}))")
    for seed in ("1", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        proc = subprocess.run([sys.executable, "-c", code], input=json.dumps(KEYS), capture_output=True,
                              text=True, env=env, check=True, cwd=Path(sharding.__file__).parent.parent)
        assert json.loads(proc.stdout) == here
    assert shard_of("tiny-mistral|vllm-0.32.0|", 4) == shard_of("tiny-mistral|vllm-0.32.0|", 4)
    assert shard_of("anything", 1) == 1


def test_shard_of_pinned_values() -> None:
    """A change of algorithm would silently move specs between shards of a running matrix."""
    assert [shard_of(k, 7) for k in ("a", "b", "tiny-mistral")] == [5, 1, 7]  # sha256sum: first 8 bytes mod n, + 1
    assert [shard_of(k, 2) for k in ("a", "b", "c", "d")] == [1, 1, 1, 2]


def test_every_key_lands_in_exactly_one_shard() -> None:
    for total in (1, 2, 3, 5):
        shards = [{k for k in KEYS if shard_of(k, total) == i} for i in range(1, total + 1)]
        assert sum(len(s) for s in shards) == len(KEYS)
        assert set().union(*shards) == set(KEYS)
    many = Counter(shard_of(f"spec-{i}", 4) for i in range(400))
    assert set(many) == {1, 2, 3, 4} and min(many.values()) > 60  # roughly even


def test_shard_of_rejects_bad_totals() -> None:
    with pytest.raises(ValueError):
        shard_of("x", 0)


def test_balance_partitions_deterministically() -> None:
    weights = {k: float(len(k) % 7 + 1) for k in KEYS}
    result = balance(weights, 3)
    assert set(result) == set(KEYS) and set(result.values()) <= {1, 2, 3}
    assert balance(dict(reversed(list(weights.items()))), 3) == result  # insertion order does not matter
    loads: defaultdict[int, float] = defaultdict(float)
    for k, s in result.items():
        loads[s] += weights[k]
    assert max(loads.values()) - min(loads.values()) <= max(weights.values())


def test_balance_longest_first() -> None:
    assert balance({"big": 10, "a": 4, "b": 3, "c": 3}, 2) == {"big": 1, "a": 2, "b": 2, "c": 2}
    assert balance({"x": 1, "y": 1}, 4) == {"x": 1, "y": 2}
    assert balance({}, 3) == {}
    with pytest.raises(ValueError, match=">= 0"):
        balance({"x": -1}, 2)
    with pytest.raises(ValueError, match="at least 1"):
        balance({"x": 1}, 0)


def test_module_never_uses_a_shell() -> None:
    source = Path(sharding.__file__).read_text()
    assert "shell=True" not in source and "os.system" not in source


# --- server groups and run order ----------------------------------------------------------------------


def test_group_key_strings_stay_what_shards_and_the_pool_used() -> None:
    from pytest_vllm_compat.scheduling import GroupKey

    g = GroupKey("0.32.0", "tiny-mistral", "attn-CPU_ATTN")
    assert g.key == "0.32.0|tiny-mistral|attn-CPU_ATTN"  # shard assignment hashes this exact string
    assert g.xdist_name == "0.32.0_tiny-mistral_attn-CPU_ATTN"
    assert g.side("kv2x") == "0.32.0|tiny-mistral|attn-CPU_ATTN|side:kv2x"
    assert GroupKey("0.32.0", "m") == GroupKey("0.32.0", "m", "") and len({g, GroupKey(*g.key.split("|"))}) == 1


def test_xdist_names_are_groups_xdist_can_read() -> None:
    """xdist takes the text after the last "@" of a node id as the group only when no "]" follows: a label
    written as JSON must not make every test a group of its own."""
    from pytest_vllm_compat.scheduling import GroupKey

    name = GroupKey("0.32.0+transformers-4.57.0", "m", '[["--dtype", "float32"], {}]').xdist_name
    assert "]" not in name and "@" not in name and " " not in name
    assert name.startswith("0.32.0+transformers-4.57.0_m_")
    nodeid = f"suites/test_x.py::test_y[m-0.32.0]@{name}"
    assert nodeid.rfind("@") > nodeid.rfind("]")  # xdist/scheduler/loadgroup.py's test for a group suffix


def test_xdist_scope_keeps_a_group_together_except_where_told() -> None:
    from pytest_vllm_compat.scheduling import GroupKey, xdist_scope

    default, attn = GroupKey("0.32.0", "m"), GroupKey("0.32.0", "m", "attn-CPU_ATTN")
    assert xdist_scope(attn) == attn.xdist_name != default.xdist_name
    # a test comparing with the default server's outputs runs on that server's worker
    assert xdist_scope(attn, same_worker_as="") == default.xdist_name
    assert xdist_scope(GroupKey("0.32.0", "m", "tp2"), same_worker_as="tp1") == GroupKey("0.32.0", "m", "tp1").xdist_name
    # a one-off start goes alone, one scope per test, apart from its group's
    one = xdist_scope(default, one_off=True, test_name="test_a")
    assert one != default.xdist_name and one != xdist_scope(default, one_off=True, test_name="test_b")
    assert one.startswith(default.xdist_name)


def test_plan_orders_plain_tests_first_then_groups_by_release() -> None:
    from pytest_vllm_compat.scheduling import GroupKey, plan

    new, old, old_b = GroupKey("0.10.0", "m"), GroupKey("0.9.2", "m"), GroupKey("0.9.2", "m", "b")
    groups = [new, None, old_b, old, new, None, old]
    p = plan(groups)
    # plain tests (1, 5) first in collection order; 0.9.2 before 0.10.0 (release order, not string order)
    assert p.order == [1, 5, 3, 6, 2, 0, 4] and p.dropped == []
    assert p.last_index == {old.key: 3, old_b.key: 4, new.key: 6}


def test_plan_shards_by_group_and_keeps_plain_tests_in_shard_one() -> None:
    from pytest_vllm_compat.scheduling import GroupKey, plan

    groups = [GroupKey(f"0.{i}.0", "m") for i in range(20)] + [None, None]
    shards = [plan(groups, (i, 3)) for i in (1, 2, 3)]
    kept = sorted(i for p in shards for i in p.order)
    assert kept == list(range(22))  # every test in exactly one shard
    for index, p in zip((1, 2, 3), shards, strict=True):
        assert set(p.order) | set(p.dropped) == set(range(22))
        assert all(shard_of(g.key, 3) == index for i in p.order if (g := groups[i]) is not None)
    assert {20, 21} <= set(shards[0].order) and not ({20, 21} & set(shards[1].order))
