"""Split a run across machines (``--vllm-shard=i/n``) by server spec, so each server starts on one shard only.

Every shard process computes the same assignment from the same input: ``shard_of`` hashes the
spec key with SHA-256 (Python's ``hash()`` changes with PYTHONHASHSEED), ``balance`` is a
deterministic greedy assignment when the weights (e.g. tests per spec) are known.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping

_SHARD_RE = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


def parse_shard(text: str) -> tuple[int, int]:
    """``"2/4"`` -> ``(2, 4)``: shard 2 of 4, counted from 1."""
    m = _SHARD_RE.match(str(text))
    if not m:
        raise ValueError(f"invalid shard {text!r}: expected INDEX/TOTAL, e.g. 2/4 (shards count from 1)")
    index, total = int(m.group(1)), int(m.group(2))
    if total < 1:
        raise ValueError(f"invalid shard {text!r}: the total must be at least 1")
    if not 1 <= index <= total:
        raise ValueError(f"invalid shard {text!r}: the index must be between 1 and {total} (shards count from 1)")
    return index, total


def shard_of(spec_key: str, total: int) -> int:
    """The 1-based shard of a server spec key; the same in every process and on every machine."""
    if total < 1:
        raise ValueError(f"shard total must be at least 1, got {total}")
    digest = hashlib.sha256(spec_key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % total + 1


def balance(spec_keys_with_weights: Mapping[str, float], total: int) -> dict[str, int]:
    """Assign each key to a shard (1-based), heaviest first onto the least-loaded shard.

    Ties break by key and then by the lower shard number, so the result depends only on the
    mapping's contents, not its order. Every key gets exactly one shard.
    """
    if total < 1:
        raise ValueError(f"shard total must be at least 1, got {total}")
    for key, w in spec_keys_with_weights.items():
        if not w >= 0:  # also rejects NaN
            raise ValueError(f"weight of {key!r} must be >= 0, got {w}")
    loads = [0.0] * total
    out: dict[str, int] = {}
    for key in sorted(spec_keys_with_weights, key=lambda k: (-spec_keys_with_weights[k], k)):
        shard = min(range(total), key=lambda s: (loads[s], s))
        loads[shard] += spec_keys_with_weights[key]
        out[key] = shard + 1
    return out
