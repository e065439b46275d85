"""Which test runs where and when: server groups, their order, and shards. Pure: no pytest, no processes.

Tests that share a vLLM server spec (version x model x server label) form a group, a :class:`GroupKey`. The
plugin runs each group's tests back to back so the group's server starts once, newer-first never: versions in
release order, then model and label (:func:`plan`); a server is released after the last test of its group
(``Plan.last_index``). Under xdist each group is one ``xdist_group`` (:attr:`GroupKey.xdist_name`), with two
exceptions (:func:`xdist_scope`): a test that needs what another group's tests left in the worker (reference
outputs) goes with that group, and a test that only starts one-off servers of its own goes on its own.

Split a run across machines (``--vllm-shard=i/n``) by group, so each server starts on one shard only.
Every shard process computes the same assignment from the same input: ``shard_of`` hashes the
group key with SHA-256 (Python's ``hash()`` changes with PYTHONHASHSEED), ``balance`` is a
deterministic greedy assignment when the weights (e.g. tests per spec) are known.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .versions import version_key

_SHARD_RE = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")
# xdist reads a test's group after the last "@" of its node id, and only when no "]" comes after that "@"
# (xdist/scheduler/loadgroup.py): a label written as JSON ("[[...], {}]") would put every test in a group of its own.
_SCOPE_UNSAFE = re.compile(r"[^A-Za-z0-9._+=-]")


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


@dataclass(frozen=True)
class GroupKey:
    """The server group of a test: the vLLM version, the model, and the ``vllm_server`` marker's label (or its
    args/env as JSON when it has none; "" without a marker)."""

    version: str
    model: str
    label: str = ""

    @property
    def key(self) -> str:
        """The group as one stable string: what shards hash and the server pool names groups by."""
        return f"{self.version}|{self.model}|{self.label}"

    @property
    def xdist_name(self) -> str:
        return _SCOPE_UNSAFE.sub("_", self.key.replace("|", "_"))

    def side(self, label: str) -> str:
        """The pool group of a side server a test starts itself (stopped right after that test)."""
        return f"{self.key}|side:{label}"

    def sort_key(self) -> tuple[tuple[object, ...], str]:
        return version_key(self.version), self.key


def xdist_scope(group: GroupKey, *, same_worker_as: str | None = None, one_off: bool = False,
                test_name: str = "") -> str:
    """The xdist group (scope) a test of ``group`` is sent with; a scope runs on one worker, in collection order.

    - By default the group's own: its server starts on one worker only.
    - ``same_worker_as=LABEL`` (the ``vllm_server`` marker's): the scope of the group with that label, same line
      and model, for a test that compares with outputs that group's tests keep in the worker (the attention
      backends with the default server's, TP=N with TP=1's). On another worker it would start that server again.
    - ``one_off`` (the test starts only one-off servers of its own, e.g. a start that must fail, never its group's):
      a scope of its own, named after the test, so that start runs on whichever worker is free, not after the
      group's tests.
    """
    if same_worker_as is not None:
        return GroupKey(group.version, group.model, same_worker_as).xdist_name
    if one_off:
        return _SCOPE_UNSAFE.sub("_", f"{group.xdist_name}_alone_{test_name}")
    return group.xdist_name


@dataclass(frozen=True)
class Plan:
    order: list[int]  # indices into the collected items, in run order (dropped ones left out)
    dropped: list[int]  # indices deselected by the shard, in collection order
    last_index: dict[str, int]  # GroupKey.key -> position (in ``order``) of the group's last test


def plan(groups: Sequence[GroupKey | None], shard: tuple[int, int] | None = None) -> Plan:
    """The run order of collected tests given each one's group (None: a plain test, no server).

    With ``shard=(i, n)`` only the groups :func:`shard_of` assigns to shard i are kept; plain tests run in
    shard 1 only, so merged shards hold each test once. Plain tests come first, in collection order; then the
    groups in :meth:`GroupKey.sort_key` order, each group's tests in collection order.
    """
    kept: list[int] = []
    dropped: list[int] = []
    for i, g in enumerate(groups):
        if shard is None:
            kept.append(i)
            continue
        index, total = shard
        keep = (g is None and index == 1) or (g is not None and shard_of(g.key, total) == index)
        (kept if keep else dropped).append(i)
    rank = {g: r for r, g in enumerate(sorted({g for g in groups if g is not None}, key=GroupKey.sort_key))}
    order = sorted(kept, key=lambda i: (-1, i) if groups[i] is None else (rank[groups[i]], i))  # type: ignore[index]
    last: dict[str, int] = {}
    for pos, i in enumerate(order):
        g = groups[i]
        if g is not None:
            last[g.key] = pos
    return Plan(order, dropped, last)
