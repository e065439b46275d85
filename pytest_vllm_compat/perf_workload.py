"""One timed serving workload against a running vLLM server, with the CPU time its process tree spent on it.

The interleaved comparison (perf_compare.py) runs this workload many times, alternating two servers. It is
our own client, the same for both sides, rather than each release's ``vllm bench serve``: a comparison must
not change its load generator with the release under test, and a client in this process starts in no time,
where launching ``vllm bench serve`` imports vLLM (about 10 s a repeat here).

Figures per run:

- ``tokens_per_s``: generated tokens / wall time from the first request sent to the last response finished.
- ``ttft_p50_ms`` / ``itl_p50_ms``: median time to the first streamed token, and between streamed tokens.
- ``cpu_ms_per_token``: CPU time (user + system, /proc) of the server's whole process tree during the
  workload, per generated token. A neighbour that takes the CPU slows the wall clock but barely changes the
  CPU the server needs for the same work, so this moves much less than tokens/s on a shared machine.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

import httpx

PROC = Path("/proc")
_WORDS = ("the quick brown fox jumps over a lazy dog while seven wise owls watch from an old oak tree and "
          "count the stars above the quiet river that flows past the sleeping town toward the distant sea").split()


class WorkloadError(RuntimeError):
    """A request of the workload failed (HTTP error, no tokens): the comparison cannot use this run."""


@dataclass(frozen=True)
class Workload:
    """N streamed completions at concurrency C, a fixed prompt per request and a fixed output length
    (``ignore_eos``), greedy."""

    num_prompts: int = 32
    concurrency: int = 8
    output_len: int = 32
    prompt_words: int = 24

    def prompts(self) -> list[str]:
        """The same prompts for every server and release: request i starts with its number, then words."""
        out = []
        for i in range(self.num_prompts):
            words = [_WORDS[(i * 7 + k) % len(_WORDS)] for k in range(self.prompt_words)]
            out.append(f"Request {i}: " + " ".join(words))
        return out

    def describe(self) -> dict[str, int]:
        return {"num_prompts": self.num_prompts, "concurrency": self.concurrency, "output_len": self.output_len,
                "prompt_words": self.prompt_words}


# --- CPU time of a process tree ---------------------------------------------------------------------

def _clock_ticks() -> int:
    try:
        return int(os.sysconf("SC_CLK_TCK"))
    except (ValueError, OSError, AttributeError):
        return 100


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (state is [0], ppid [1]); None if gone."""
    try:
        text = (PROC / str(pid) / "stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    end = text.rfind(")")
    return text[end + 2:].split() if end >= 0 else None


def tree_pids(root: int) -> list[int]:
    """``root`` and every live descendant (from the ppid of each process in /proc)."""
    children: dict[int, list[int]] = {}
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields and len(fields) > 1:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def tree_cpu_s(root: int) -> float:
    """CPU seconds (user + system, with reaped children's) the process tree of ``root`` has used so far."""
    ticks = 0
    for pid in tree_pids(root):
        fields = _stat_fields(pid)
        if fields and len(fields) > 14:
            ticks += sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
    return ticks / _clock_ticks()


# --- the workload -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Endpoint:
    """A running server to send the workload to: where, with which key, which model, and its pid (for CPU)."""

    base_url: str
    api_key: str
    model: str
    pid: int | None


class _Request(TypedDict):
    sent: float  # perf_counter when the request was sent
    arrivals: list[float]  # perf_counter of each streamed chunk that carried text
    tokens: int


async def _one(client: httpx.AsyncClient, ep: Endpoint, prompt: str, w: Workload, sem: asyncio.Semaphore,
               out: list[_Request]) -> None:
    body = {"model": ep.model, "prompt": prompt, "max_tokens": w.output_len, "temperature": 0.0,
            "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
    async with sem:
        sent = time.perf_counter()
        arrivals: list[float] = []
        usage_tokens = None
        async with client.stream("POST", f"{ep.base_url}/v1/completions", json=body,
                                 headers={"Authorization": f"Bearer {ep.api_key}"}) as resp:
            if resp.status_code != 200:
                text = (await resp.aread()).decode(errors="replace")
                raise WorkloadError(f"HTTP {resp.status_code} from {ep.base_url}/v1/completions: {text[:500]}")
            async for line in resp.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if chunk.get("usage"):
                    usage_tokens = chunk["usage"].get("completion_tokens")
                if any(c.get("text") for c in chunk.get("choices") or ()):
                    arrivals.append(time.perf_counter())
        if not arrivals:
            raise WorkloadError(f"a streamed completion from {ep.base_url} carried no text")
        out.append({"sent": sent, "arrivals": arrivals, "tokens": int(usage_tokens or len(arrivals))})


async def _run(ep: Endpoint, w: Workload) -> tuple[list[_Request], float, float]:
    sem = asyncio.Semaphore(w.concurrency)
    out: list[_Request] = []
    limits = httpx.Limits(max_connections=w.concurrency, max_keepalive_connections=w.concurrency)
    async with httpx.AsyncClient(timeout=httpx.Timeout(300.0), limits=limits) as client:
        start = time.perf_counter()
        await asyncio.gather(*(_one(client, ep, p, w, sem, out) for p in w.prompts()))
        end = time.perf_counter()
    return out, start, end


def _median(values: Sequence[float]) -> float | None:
    return round(statistics.median(values), 3) if values else None


def run_workload(ep: Endpoint, w: Workload, *, idle: Endpoint | None = None) -> dict[str, float | None]:
    """Run ``w`` once against ``ep``; its figures. ``idle``: the other server of a comparison, whose CPU during
    this workload is recorded too (``idle_cpu_s``), to show that a server waiting for its turn costs nothing."""
    cpu0 = tree_cpu_s(ep.pid) if ep.pid else None
    idle0 = tree_cpu_s(idle.pid) if idle is not None and idle.pid else None
    requests, start, end = asyncio.run(_run(ep, w))
    cpu1 = tree_cpu_s(ep.pid) if ep.pid else None
    idle1 = tree_cpu_s(idle.pid) if idle is not None and idle.pid else None
    tokens = sum(r["tokens"] for r in requests)
    ttfts = [(r["arrivals"][0] - r["sent"]) * 1000 for r in requests]
    itls = [(b - a) * 1000 for r in requests for a, b in zip(r["arrivals"], r["arrivals"][1:], strict=False)]
    duration = end - start
    cpu_s = None if cpu0 is None or cpu1 is None else cpu1 - cpu0
    return {
        "tokens": tokens,
        "duration_s": round(duration, 4),
        "tokens_per_s": round(tokens / duration, 3) if duration > 0 else None,
        "ttft_p50_ms": _median(ttfts),
        "itl_p50_ms": _median(itls),
        "cpu_s": None if cpu_s is None else round(cpu_s, 3),
        "cpu_ms_per_token": round(cpu_s * 1000 / tokens, 4) if cpu_s is not None and tokens else None,
        "idle_cpu_s": None if idle0 is None or idle1 is None else round(idle1 - idle0, 3),
    }
