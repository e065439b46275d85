#!/usr/bin/env python3
"""How often vLLM 0.8.x's --guided-decoding-backend accepts the V0-only backends, per process start.
Writes reports/bench/cli_hash_order.json.

    python3 benchmarks/bench_cli_hash_order.py [--starts 20] [--seeds 0,1,2,3]

vLLM 0.8.5 types DecodingConfig.guided_decoding_backend as Union[GuidedDecodingBackendV0,
GuidedDecodingBackendV1] (config.py ~3136-3148) and engine/arg_utils.py get_kwargs turns the first Literal out
of a *set* of the Union's members into argparse choices (get_type, ~114-117; choices, ~150-153). This script
runs exactly that selection (the two Literals as 0.8.5 defines them, the same set and next()) in fresh
interpreters: per PYTHONHASHSEED, with address-space randomisation as it is and with it off (setarch -R), and
counts which choice list each start got. No vLLM install is needed: only the typing logic decides.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROBE = """
from typing import Literal, Union, get_args
V0 = Literal["auto", "outlines", "lm-format-enforcer", "xgrammar", "guidance"]
V1 = Literal["auto", "xgrammar", "guidance"]
hints = set(get_args(Union[V0, V1]))
print(",".join(sorted(get_args(next(th for th in hints)))))
"""


def starts(seed: int, n: int, no_aslr: bool) -> Counter[str]:
    env = {**os.environ, "PYTHONHASHSEED": str(seed)}
    prefix = ["setarch", platform.machine(), "-R"] if no_aslr else []
    got: Counter[str] = Counter()
    for _ in range(n):
        out = subprocess.run([*prefix, sys.executable, "-c", PROBE], capture_output=True, text=True, env=env,
                             check=True).stdout.strip()
        got["all five (outlines, lm-format-enforcer accepted)" if "outlines" in out
            else "auto, guidance, xgrammar only"] += 1
    return got


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--starts", type=int, default=20)
    ap.add_argument("--seeds", default="0,1,2,3")
    ap.add_argument("--out", type=Path, default=ROOT / "reports" / "bench" / "cli_hash_order.json")
    args = ap.parse_args()
    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        for no_aslr in (False, True):
            if no_aslr and shutil.which("setarch") is None:
                continue
            got = starts(seed, args.starts, no_aslr)
            rows.append({"PYTHONHASHSEED": seed, "aslr": not no_aslr, "starts": args.starts, "choices": dict(got)})
            print(json.dumps(rows[-1]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"python": sys.version.split()[0], "machine": platform.machine(),
                                    "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
