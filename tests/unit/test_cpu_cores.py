"""CPU core shares for -n N: disjoint, contiguous, one core per TP rank, KV-cache memory split; the real
two-servers-at-once run is measured by benchmarks/bench_cpu_workers.py."""

from __future__ import annotations

import itertools

import pytest

from pytest_vllm_compat.cpu_cores import (
    BIND_ENV,
    KV_ENV,
    RESERVED_ENV,
    CoreShareError,
    compress,
    kv_share_gib,
    omp_bind,
    share,
    worker_index,
    worker_share,
)


@pytest.mark.parametrize(("cores", "workers"), [(range(2), 2), (range(32), 2), (range(32), 3), (range(64), 8),
                                                (range(7), 4), ([0, 2, 4, 6, 8, 10], 3)])
def test_shares_are_disjoint_contiguous_and_cover_the_cores(cores: range, workers: int) -> None:
    shares = [share(list(cores), i, workers) for i in range(workers)]
    assert sorted(itertools.chain.from_iterable(shares)) == sorted(cores)
    assert all(set(a).isdisjoint(b) for a, b in itertools.combinations(shares, 2))
    sizes = [len(s) for s in shares]
    assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1


def test_a_32_core_runner_with_four_workers() -> None:
    assert [compress(share(range(32), i, 4)) for i in range(4)] == ["0-7", "8-15", "16-23", "24-31"]


def test_more_workers_than_cores_share_round_robin() -> None:
    assert [share([0, 1], i, 3) for i in range(3)] == [[0], [1], [0]]


@pytest.mark.parametrize(("cores", "text"), [([0], "0"), ([0, 1, 2, 5], "0-2,5"), ([3, 1, 2], "1-3"),
                                             ([0, 2, 4], "0,2,4")])
def test_compress(cores: list[int], text: str) -> None:
    assert compress(cores) == text


def test_one_core_set_per_tensor_parallel_rank() -> None:
    assert omp_bind(range(16, 32), 1) == "16-31"
    assert omp_bind(range(16, 32), 2) == "16-23|24-31"
    assert omp_bind([0, 1, 2], 2) == "0-1|2"
    with pytest.raises(CoreShareError, match=r"2 tensor-parallel ranks need 2 cores .* share is 1 \(1\)"):
        omp_bind([1], 2)


def test_kv_share_is_half_the_memory_split_over_workers() -> None:
    assert kv_share_gib(24, 2) == 6 and kv_share_gib(256, 8) == 16 and kv_share_gib(1, 4) == 1


def test_a_serial_run_has_no_share() -> None:
    assert worker_index("main") is None and worker_index("gw11") == 11
    assert worker_share("main", 1, cores=[0, 1], total_gib=24) is None
    assert worker_share("gw0", 1, cores=[0, 1], total_gib=24) is None  # -n 1: nothing to split


def test_a_worker_share_sets_the_binding_unless_the_test_set_one() -> None:
    s1 = worker_share("gw1", 2, cores=list(range(8)), total_gib=24)
    assert s1 is not None and s1.cores == (4, 5, 6, 7) and s1.kv_gib == 6
    assert s1.env({}) == {BIND_ENV: "4-7", RESERVED_ENV: "0"}
    assert s1.env({}, ranks=2) == {BIND_ENV: "4-5|6-7", RESERVED_ENV: "0"}
    assert s1.env({BIND_ENV: "4|5"}, ranks=2) == {}  # the suite's own list (from the worker's affinity) is kept
    assert s1.defaults() == {KV_ENV: "6"}
    assert s1.describe() == {"worker": "gw1", "workers": 2, "cores": "4-7", "kv_gib": 6}
