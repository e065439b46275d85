"""Output drift: what a fixed prompt set generates (greedy token ids and top-k logprobs) and how two
versions' outputs compare.

Same prompt, temperature 0, different answer after an upgrade is a common report (vllm#21096, #5653,
#15381). The drift suite asks the completions API for ``max_tokens`` greedy tokens per prompt with
``logprobs=k``, one request at a time in a fixed order (batch conditions fixed), twice (the within-version
repeatability check); the matrix compares each version with the previous tested one, and a golden file
(``--vllm-save-golden`` / ``--vllm-golden``) pins the outputs of a trusted version.

Verdicts, per prompt and overall (the worst):

- ``identical``: the same token ids, every chosen token's logprob within ``IDENTICAL_EPS``;
- ``drift``: numerical drift within ``tolerance``: the same tokens with logprobs that moved, or the
  first diverging token is a near tie (the other version's token is in this one's top-k within
  ``tolerance`` of the chosen one) after positions that moved by no more than ``tolerance``;
- ``changed``: anything beyond that.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypedDict

from .outcomes import GOLDEN_SCHEMA
from .record_types import JSONObject, JSONValue
from .results import model_slug
from .timestamps import now_iso
from .versions import version_key

if TYPE_CHECKING:  # the matrix imports this module
    from .matrix.cell_types import Cell

PROMPTS = ("The capital of France is", "def fibonacci(n):", "Once upon a time, in a", "1, 2, 3, 4, 5,")
MAX_TOKENS = 16
TOP_K = 5
DEFAULT_TOLERANCE = 0.1  # nats of |delta logprob|
IDENTICAL_EPS = 1e-4
VERDICTS = ("identical", "drift", "changed")
_TOKEN_ID_RE = re.compile(r"^token_id:(-?\d+)$")


class GoldenError(ValueError):
    """A golden file that is missing, unreadable or made with other prompts or settings."""


@dataclass
class Output:
    """One prompt's greedy generation: token ids, each chosen token's logprob and the top-k per position."""

    prompt: str
    text: str
    token_ids: list[int]
    logprobs: list[float]
    top: list[dict[int, float]] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return {"prompt": self.prompt, "text": self.text, "token_ids": self.token_ids,
                "logprobs": [round(x, 6) for x in self.logprobs],
                "top": [[[tid, round(lp, 6)] for tid, lp in sorted(t.items(), key=lambda kv: -kv[1])]
                        for t in self.top]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Output:
        return cls(prompt=str(d["prompt"]), text=str(d.get("text", "")), token_ids=[int(t) for t in d["token_ids"]],
                   logprobs=[float(x) for x in d["logprobs"]],
                   top=[{int(tid): float(lp) for tid, lp in pos} for pos in d.get("top") or []])


def request_body(prompt: str, model: str) -> JSONObject:
    """The completions request of one prompt: greedy, fixed length, top-k logprobs, token ids as tokens."""
    return {"model": model, "prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 0.0, "seed": 0,
            "logprobs": TOP_K, "ignore_eos": True, "return_tokens_as_token_ids": True}


class CompletionClient(Protocol):
    """What :func:`generate` uses of a ``client.VLLMClient``."""

    model: str

    def completion(self, prompt: str, *, max_tokens: int = ..., temperature: float = ...,
                   **extra: JSONValue) -> dict[str, Any]: ...


def generate(client: CompletionClient, prompts: Sequence[str] = PROMPTS) -> list[Output]:
    """Each prompt's output, one request at a time in a fixed order (``client``: a ``VLLMClient``)."""
    out = []
    for prompt in prompts:
        body = request_body(prompt, client.model)
        extra = {k: v for k, v in body.items() if k not in ("model", "prompt", "max_tokens", "temperature")}
        out.append(parse_completion(prompt, client.completion(prompt, max_tokens=MAX_TOKENS, temperature=0.0,
                                                              **extra)))
    return out


def weights_sha256(model_dir: str | Path) -> str | None:
    """sha256 over a local model directory's weight files (None for a hub id): outputs of two versions are
    comparable only when they served the same weights."""
    d = Path(model_dir)
    files = sorted(p for p in d.glob("*.safetensors")) if d.is_dir() else []
    if not files:
        return None
    h = hashlib.sha256()
    for f in files:
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def _token_id(token: str) -> int:
    m = _TOKEN_ID_RE.match(token)
    if not m:
        raise ValueError(f"token {token!r} is not 'token_id:N' (the server ignored return_tokens_as_token_ids)")
    return int(m.group(1))


def parse_completion(prompt: str, response: Mapping[str, Any]) -> Output:
    """An ``Output`` from a completions response asked with :func:`request_body`."""
    choice = response["choices"][0]
    lp = choice.get("logprobs") or {}
    tokens = lp.get("tokens") or []
    if not tokens:
        raise ValueError("the response has no logprobs.tokens")
    top = [{_token_id(t): float(v) for t, v in (pos or {}).items()} for pos in lp.get("top_logprobs") or []]
    return Output(prompt=prompt, text=str(choice.get("text") or ""), token_ids=[_token_id(t) for t in tokens],
                  logprobs=[float(x) if x is not None else 0.0 for x in lp.get("token_logprobs") or []], top=top)


def _near_tie(a: Output, b: Output, pos: int, tolerance: float) -> bool:
    """Whether the two versions' tokens at ``pos`` are within ``tolerance`` of each other in both top-k lists."""
    for x, y in ((a, b), (b, a)):
        if pos >= len(x.top) or pos >= len(y.token_ids):
            return False
        other = x.top[pos].get(y.token_ids[pos])
        if other is None or x.logprobs[pos] - other > tolerance:
            return False
    return True


def compare_one(a: Output, b: Output, tolerance: float = DEFAULT_TOLERANCE) -> dict[str, object]:
    n = min(len(a.token_ids), len(b.token_ids))
    diverge = next((i for i in range(n) if a.token_ids[i] != b.token_ids[i]), None)
    if diverge is None and len(a.token_ids) != len(b.token_ids):
        diverge = n
    upto = n if diverge is None else diverge
    deltas = [abs(a.logprobs[i] - b.logprobs[i]) for i in range(min(upto, len(a.logprobs), len(b.logprobs)))]
    max_delta = max(deltas, default=0.0)
    if diverge is None:
        verdict = "identical" if max_delta <= IDENTICAL_EPS else "drift" if max_delta <= tolerance else "changed"
    elif max_delta <= tolerance and _near_tie(a, b, diverge, tolerance):
        verdict = "drift"
    else:
        verdict = "changed"
    # Where the two texts part (the site marks from there): token ids come back as "token_id:N", so the
    # response's text offsets count those strings, not the text; the common prefix is exact.
    offset = None if diverge is None else len(os.path.commonprefix([a.text, b.text]))  # noqa: RUF071 - texts, by character
    out: dict[str, object] = {"prompt": a.prompt, "verdict": verdict, "first_divergence": diverge,
                           "offset_a": offset, "offset_b": offset,
                           "max_abs_dlogprob_before": round(max_delta, 6), "text_a": a.text, "text_b": b.text,
                           "token_ids_a": a.token_ids, "token_ids_b": b.token_ids}
    if diverge is not None:
        out["token_a"] = a.token_ids[diverge] if diverge < len(a.token_ids) else None
        out["token_b"] = b.token_ids[diverge] if diverge < len(b.token_ids) else None
    return out


def worst(verdicts: Sequence[str]) -> str:
    return max(verdicts, key=VERDICTS.index) if verdicts else "identical"


class DriftComparison(TypedDict):
    """Two output sets compared (:func:`compare`): the worst prompt's verdict and each prompt's comparison."""

    verdict: str  # one of VERDICTS
    tolerance: float
    max_abs_dlogprob: float
    prompts: list[dict[str, object]]  # compare_one per prompt, or a prompt missing on one side


def compare(a: Sequence[Output], b: Sequence[Output], tolerance: float = DEFAULT_TOLERANCE) -> DriftComparison:
    """Compare two output sets prompt by prompt (matched by prompt text); a prompt missing on one side is
    ``changed``."""
    by_prompt = {o.prompt: o for o in b}
    prompts: list[dict[str, object]] = []
    for o in a:
        other = by_prompt.get(o.prompt)
        prompts.append(compare_one(o, other, tolerance) if other is not None else
                       {"prompt": o.prompt, "verdict": "changed", "first_divergence": 0,
                        "max_abs_dlogprob_before": None, "text_a": o.text, "text_b": None, "missing": "b"})
    asked = {o.prompt for o in a}
    missing = [o for o in b if o.prompt not in asked]
    prompts += [{"prompt": o.prompt, "verdict": "changed", "first_divergence": 0, "max_abs_dlogprob_before": None,
                 "text_a": None, "text_b": o.text, "missing": "a"} for o in missing]
    deltas = [d for p in prompts if isinstance(d := p["max_abs_dlogprob_before"], float)]
    return {"verdict": worst([str(p["verdict"]) for p in prompts]), "tolerance": tolerance,
            "max_abs_dlogprob": max(deltas, default=0.0), "prompts": prompts}


def outputs_of(data: Sequence[Mapping[str, Any]]) -> list[Output]:
    return [Output.from_dict(d) for d in data]


def settings() -> dict[str, object]:
    """What makes two output sets comparable at all: the prompts and the request."""
    return {"prompts": list(PROMPTS), "max_tokens": MAX_TOKENS, "top_k": TOP_K, "temperature": 0.0}


# --- golden files ---------------------------------------------------------------------------------

def golden_path(directory: Path, model: str) -> Path:
    return Path(directory) / f"{model_slug(model)}.json"


def save_golden(directory: Path, model: str, outputs: Sequence[Output], *, vllm_version: str, stack: str = "",
                platform: str = "", weights_sha256: str | None = None) -> Path:
    path = golden_path(directory, model)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"schema": GOLDEN_SCHEMA, "model": model, "vllm_version": vllm_version, "stack": stack,
            "platform": platform, "weights_sha256": weights_sha256,
            "saved_at": now_iso(), "settings": settings(),
            "outputs": [o.to_dict() for o in outputs]}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
    tmp.replace(path)
    return path


def load_golden(directory: Path, model: str) -> dict[str, Any]:
    """The golden file of ``model``: its metadata and ``outputs`` as :class:`Output` objects."""
    path = golden_path(directory, model)
    if not path.is_file():
        raise GoldenError(f"no golden outputs for {model} in {directory} (expected {path.name}; write them with "
                          "--vllm-save-golden=DIR on the trusted version)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise GoldenError(f"{path}: unreadable golden file ({e})") from None
    if not isinstance(data, dict) or data.get("schema") != GOLDEN_SCHEMA:
        raise GoldenError(f"{path}: not a {GOLDEN_SCHEMA} file")
    if data.get("settings") != settings():
        raise GoldenError(f"{path}: saved with other prompts or request settings ({data.get('settings')}); "
                          "save it again with this plugin version")
    data["outputs"] = outputs_of(data.get("outputs") or [])
    return data


# --- across versions, in the matrix ---------------------------------------------------------------

def _dtype(serve_args: object) -> str:
    """The ``--dtype`` of a cell's serve args (records keep them as the argv list; a table also works)."""
    if isinstance(serve_args, Mapping):
        return str(serve_args.get("dtype") or "")
    args = [str(a) for a in serve_args] if isinstance(serve_args, (list, tuple)) else []
    for i, a in enumerate(args):
        if a == "--dtype" and i + 1 < len(args):
            return args[i + 1]
        if a.startswith("--dtype="):
            return a.split("=", 1)[1]
    return ""


def stored_outputs(metrics: Mapping[str, object]) -> list[Output]:
    """The drift outputs a cell's metrics carry (``drift_outputs``: a list of ``Output.to_dict()``)."""
    data = metrics.get("drift_outputs")
    return outputs_of([d for d in data if isinstance(d, Mapping)]) if isinstance(data, list) else []


def annotate_cells(cells: Sequence[Cell], tolerance: float = DEFAULT_TOLERANCE) -> list[dict[str, object]]:
    """Give each drift cell (metrics ``drift_outputs``) a ``drift`` verdict against the previous tested version
    of the same model, platform, dtype and stack: ``baseline`` for the first, ``not_comparable`` when the two
    served different weights, else :func:`compare`'s verdict with its per-prompt detail. Returns one summary
    row per series (model, platform, dtype, stack) for the index."""
    groups: dict[tuple[str, str, str, str], list[Cell]] = {}
    for c in cells:
        if (c.get("metrics") or {}).get("drift_outputs"):
            dtype = _dtype(c.get("serve_args"))
            groups.setdefault((c["model"], c["platform"], dtype, str(c.get("stack") or "")), []).append(c)
    rows: list[dict[str, object]] = []
    for (model, platform, dtype, stack), cs in sorted(groups.items()):
        cs.sort(key=lambda c: version_key(c["vllm_version"]))
        prev: Cell | None = None
        for c in cs:
            m = c["metrics"]
            base = {"repeatability": m.get("drift_repeatability"),
                    "repeat_max_abs_dlogprob": m.get("drift_repeat_max_abs_dlogprob")}
            if prev is None:
                c["drift"] = {"verdict": "baseline", "vs": None, **base}
            elif (prev["metrics"].get("weights_sha256") or None) != (m.get("weights_sha256") or None):
                c["drift"] = {"verdict": "not_comparable", "vs": prev["vllm_version"], "vs_cell_id": prev["cell_id"],
                              "reason": "the two versions served different weights", **base}
            else:
                result = compare(stored_outputs(prev["metrics"]), stored_outputs(m), tolerance)
                c["drift"] = {**result, "vs": prev["vllm_version"], "vs_cell_id": prev["cell_id"], **base}
            prev = c
        rows.append({"model": model, "platform": platform, "dtype": dtype, "stack": stack,
                     "versions": [c["vllm_version"] for c in cs], "verdicts": [c["drift"]["verdict"] for c in cs],
                     "cell_ids": [c["cell_id"] for c in cs]})
    return rows
