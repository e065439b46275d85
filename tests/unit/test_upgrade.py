"""The upgrade report (pytest_vllm_compat/upgrade.py, ``vllm-compat upgrade``), checked against the committed
records, locks, bisection and capability-checker report it is built from."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Mapping, Sequence
from html.parser import HTMLParser
from itertools import combinations
from pathlib import Path

import pytest

from pytest_vllm_compat import cli, upgrade
from pytest_vllm_compat.capabilities import table_versions
from pytest_vllm_compat.lockfiles import parse_lock
from pytest_vllm_compat.matrix import build_matrix
from pytest_vllm_compat.record_types import Classification, Record

REPO = Path(__file__).resolve().parents[2]
CHECK = REPO / upgrade.CHECK_REPORT
PUBLISHED = ("0.27.0", "0.27.1", "0.28.0", "0.29.0", "0.30.0", "0.31.0", "0.32.0")
# the verdicts that say a feature works on Y: each needs records of Y that ran and passed
WORKS = ("still works", "works", "newly fixed", "outputs changed")


@pytest.fixture(scope="module")
def inputs() -> upgrade.Inputs:
    dirs = upgrade.default_results_dirs(REPO)
    assert dirs, "the committed results dirs (reports/runs/*) are missing"
    assert all(not (d / "bisect").is_dir() for d in dirs)  # a bisection's probes are not a release's run
    assert [d.name for d in upgrade.default_report_dirs(REPO)] == ["bisect-outlines-regex-choice"]
    return upgrade.load_inputs(dirs, upgrade.default_report_dirs(REPO))


@pytest.fixture(scope="module")
def report(inputs: upgrade.Inputs) -> upgrade.UpgradeReport:
    return upgrade.build_report("0.27.0", "0.32.0", matrix=inputs["matrix"], records=inputs["records"],
                                locks=inputs["locks"], check_report=CHECK, root=REPO)


def _default_stack(rec: Mapping[str, object]) -> bool:
    stack = rec.get("stack")
    return not (isinstance(stack, dict) and stack.get("name"))


def _raw(records: Sequence[Record]) -> dict[tuple[str, str, str, str], dict[str, set[str]]]:
    """{(model, version, platform, feature): {test id with {version}: statuses}} straight from the records."""
    out: dict[tuple[str, str, str, str], dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for r in records:
        if not _default_stack(r):
            continue
        v = str(r["vllm_version"])
        test = str(r["test_id"]).split("@", 1)[0].replace(v, "{version}")
        out[(r["model"], v, r["platform"], r["feature"])][test].add(str(r["status"]))
    return out


def _classification(rec: Record) -> Classification:
    """A failing record's classification (the run classified every failure)."""
    classification = rec["classification"]
    assert classification is not None, rec["test_id"]
    return classification


def _features(rep: upgrade.UpgradeReport) -> dict[tuple[str, str], upgrade.FeatureVerdict]:
    return {(fv.model, fv.feature): fv for sec in rep.models for fv in sec.features}


# --------------------------------------------------------------------------- 0.27.0 -> 0.32.0, line by line


def test_every_behaviour_line_matches_the_records(report: upgrade.UpgradeReport, inputs: upgrade.Inputs) -> None:
    """Each feature's verdict, re-derived from the raw records of 0.27.0 and 0.32.0 (not the matrix cells)."""
    raw = _raw(inputs["records"])
    lines = [fv for sec in report.models for fv in sec.features]
    assert len(lines) > 20
    for fv in lines:
        x = raw.get((fv.model, "0.27.0", fv.platform, fv.feature), {})
        y = raw.get((fv.model, "0.32.0", fv.platform, fv.feature), {})
        y_all = set().union(*y.values()) if y else set()
        x_all = set().union(*x.values()) if x else set()
        where = f"{fv.model} {fv.feature}: {fv.verdict} ({fv.detail})"
        if fv.verdict in WORKS:
            assert "pass" in y_all and not y_all & {"fail", "error"}, where
        if fv.verdict == "still works":
            assert "pass" in x_all and not x_all & {"fail", "error"}, where
        if fv.verdict in ("still broken", "newly broken", "broken"):
            assert "fail" in y_all, where
        if fv.verdict in ("newly fixed", "still broken"):
            assert "fail" in x_all, where
        if fv.verdict == "unsupported":
            assert y_all == {"unsupported"}, where
        if fv.verdict == "untested":
            assert not y_all & {"pass", "fail"}, where
        for tc in fv.tests:  # every test line, both ends
            assert (tc.change == "fixed") == (tc.to_status == "pass" and tc.from_status in ("fail", "error")), where
            assert tc.from_status in x[tc.test] or tc.from_status == "flaky", (where, tc)
            if tc.change == "not run on 0.32.0":  # ran on 0.27.0, skipped (or absent) on 0.32.0
                assert tc.to_status is None or y[tc.test] == {tc.to_status}, (where, tc)
                assert tc.to_status in (None, "unsupported", "not_applicable", "conflict"), (where, tc)
            else:
                assert tc.to_status in y[tc.test] or tc.to_status == "flaky", (where, tc)
                assert tc.to_status in {"pass", "fail", "flaky", "error"}, where


def test_the_outlines_fix_at_0_31_0_is_named_with_its_bisection(report: upgrade.UpgradeReport,
                                                                inputs: upgrade.Inputs) -> None:
    fv = _features(report)[("smollm2-135m-instruct", "guided_decoding:outlines")]
    # the cell fails on both ends (JSON still overruns max_tokens), but regex and choice were fixed in 0.31.0
    assert fv.verdict == "still broken"
    by_test = {tc.test.split("::", 1)[1].split("[", 1)[0]: tc for tc in fv.tests}
    for name in ("test_regex", "test_choice"):
        tc = by_test[name]
        assert (tc.from_status, tc.to_status, tc.change) == ("fail", "pass", "fixed")
        # every release between ran, so the fix release is the campaign's own; the committed bisection found the
        # same release on another model (tiny-mistral) and is not claimed for this one
        assert tc.first_changed == "0.31.0 (last failing tested release: 0.30.0)"
    grammar = by_test["test_grammar"]  # failed on 0.27.0, not run since 0.28.0: said so, with the skip reason
    assert (grammar.from_status, grammar.to_status, grammar.change) == ("fail", "unsupported", "not run on 0.32.0")
    assert grammar.summary
    json_test = by_test["test_json_schema"]
    assert json_test.change == "still failing"
    # its cause and knowledge-base entry are the 0.32.0 record's own classification
    rec = next(r for r in inputs["records"] if r["vllm_version"] == "0.32.0" and r["status"] == "fail"
               and "test_json_schema" in r["test_id"] and r["test_id"].endswith("-outlines]"))
    assert (json_test.category, json_test.kb_entry) == (_classification(rec)["category"], _classification(rec)["id"])
    assert fv.kb_entry == _classification(rec)["id"]


def test_newly_fixed_lmfe_still_broken_and_drift(report: upgrade.UpgradeReport, inputs: upgrade.Inputs) -> None:
    f = _features(report)
    for backend in ("xgrammar", "guidance"):  # the malformed-schema 4xx check: fails on 0.27.x, passes from 0.28.0
        fv = f[("smollm2-135m-instruct", f"guided_decoding:{backend}")]
        assert fv.verdict == "newly fixed"
        assert fv.first_changed == "0.28.0 (last failing tested release: 0.27.1)"
    lmfe = f[("smollm2-135m-instruct", "guided_decoding:lm-format-enforcer")]
    assert lmfe.verdict == "still broken"
    ids = {_classification(r)["id"] for r in inputs["records"] if r["vllm_version"] == "0.32.0"
           and r["status"] == "fail" and r["feature"] == "guided_decoding:lm-format-enforcer"}
    assert lmfe.kb_entry in ids
    drift = f[("smollm2-135m-instruct", "drift")]
    assert drift.verdict == "still works" and drift.drift is not None
    assert drift.drift["verdict"] == "identical"
    steps = drift.drift["steps"]
    assert isinstance(steps, list)
    assert [s["verdict"] for s in steps] == ["identical"] * 6


def test_dependencies_are_the_locks_of_the_two_runs(report: upgrade.UpgradeReport, inputs: upgrade.Inputs) -> None:
    def lock_of(version: str) -> dict[str, str]:
        recs = [r for r in inputs["records"] if r["vllm_version"] == version and _default_stack(r)
                and (r.get("provenance") or {}).get("lock_sha256")]
        recs.sort(key=lambda r: str(r.get("finished_at") or r.get("started_at")))
        sha = recs[-1]["provenance"]["lock_sha256"]
        path = next(REPO.glob(f"reports/runs/*/locks/{sha}.txt"))
        return parse_lock(path.read_text(encoding="utf-8"))

    a, b = lock_of("0.27.0"), lock_of("0.32.0")
    want = {p: (a.get(p), b.get(p)) for p in upgrade.PINNED_PACKAGES if a.get(p) != b.get(p)}
    assert want, "the two locks differ in transformers at least"
    assert {d.package: (d.from_version, d.to_version) for d in report.dependencies} == want


def test_interface_changes_and_gaps_between_0_27_0_and_0_32_0(report: upgrade.UpgradeReport) -> None:
    assert report.from_run and report.to_run
    assert report.untested_releases == []  # every release in between has a committed run
    assert report.untested_features == []
    releases = {c.release for c in report.interface}
    assert releases <= {"0.27.1", "0.28.0", "0.29.0", "0.30.0", "0.31.0", "0.32.0"}
    assert {"0.28.0", "0.30.0"} <= releases  # the KV-cache log line changed twice
    for ch in report.interface:
        assert ch.evidence and all(e.file and e.fact for e in ch.evidence)
    assert all(s.startswith("reports/runs/") for s in report.sources)
    speed = [s for sec in report.models for s in sec.speed]
    assert speed and all("no regression" not in s for s in speed)


# --------------------------------------------------------------------------- never "works" where not run


def test_no_pair_of_published_releases_claims_a_feature_works_where_it_was_not_run(inputs: upgrade.Inputs) -> None:
    raw = _raw(inputs["records"])
    for x, y in combinations(PUBLISHED, 2):
        rep = upgrade.build_report(x, y, matrix=inputs["matrix"], records=inputs["records"], root=REPO)
        for fv in (fv for sec in rep.models for fv in sec.features if fv.verdict in WORKS):
            statuses = set().union(*raw.get((fv.model, y, fv.platform, fv.feature), {}).values())
            assert "pass" in statuses, f"{x}->{y}: {fv.model} {fv.feature} '{fv.verdict}' with no passing run on {y}"


def test_a_feature_whose_records_on_y_are_gone_is_untested(inputs: upgrade.Inputs) -> None:
    """The same records without 0.32.0's config and kv_cache runs (and with its stability run only skipped): the
    report must say what was not run, never that it still works."""
    records = []
    for rec in inputs["records"]:
        if rec["vllm_version"] == "0.32.0" and rec["feature"] in ("config", "kv_cache"):
            continue
        skipped = rec["vllm_version"] == "0.32.0" and rec["feature"] == "stability"
        records.append({**rec, "status": "not_applicable", "outcome": "skipped", "skip_reason": "not run here"}
                       if skipped else rec)

    matrix = build_matrix(records)
    rep = upgrade.build_report("0.27.0", "0.32.0", matrix=matrix, records=records, root=REPO)
    f = _features(rep)
    for feature in ("config", "kv_cache"):
        fv = f[("smollm2-135m-instruct", feature)]
        assert fv.verdict == "untested" and fv.detail.startswith("not run on 0.32.0 (pass on 0.27.0)")
    assert f[("smollm2-135m-instruct", "stability")].verdict == "untested"
    assert "smollm2-135m-instruct: config" in rep.untested_features
    assert "still works" not in "\n".join(ln for ln in upgrade.render_text(rep).splitlines()
                                          if " config [" in ln or " kv_cache [" in ln)


# --------------------------------------------------------------------------- releases that cannot run here


def test_0_6_6_to_0_26_0_from_the_table_with_evidence(inputs: upgrade.Inputs) -> None:
    rep = upgrade.build_report("0.6.6", "0.26.0", matrix=inputs["matrix"], records=inputs["records"],
                               locks=inputs["locks"], check_report=CHECK, root=REPO)
    assert not rep.from_run and not rep.to_run
    assert rep.models == []  # no behaviour claimed for releases never run
    assert any(upgrade.FROM_SOURCE in n for n in rep.notes)
    silent = [c for c in rep.interface if c.silent]
    assert [(c.release, c.area) for c in silent] == [("0.12.0", "request_field")]
    assert "guided_json" in silent[0].old and "unconstrained" in silent[0].effect
    assert any(e.file == upgrade.CHECK_REPORT and "0.12.0" in e.fact for e in silent[0].evidence)
    rename = next(c for c in rep.interface if c.release == "0.11.0" and c.area == "server_flag"
                  and c.old == "--guided-decoding-backend")
    assert rename.new == "--structured-outputs-config"
    facts = " | ".join(e.fact for e in rename.evidence)
    assert "0.11.0: structured_server verified: vllm/engine/arg_utils.py: literal '--structured-outputs-config'" in facts
    assert "0.10.2: structured_server verified: vllm/engine/arg_utils.py: literal '--guided-decoding-backend'" in facts
    # each evidence fact is in the committed checker report
    check = json.loads(CHECK.read_text(encoding="utf-8"))
    known = {f"{rel['distribution']} {rel['version']}: {r['claim']} {r['status']}: {r['evidence']}"
             for rel in check["releases"] for r in rel["results"]}
    for ch in rep.interface:
        for e in ch.evidence:
            if e.file == upgrade.CHECK_REPORT:
                assert e.fact in known, e.fact
    removed = {c.release for c in rep.interface if "--disable-log-requests" in c.old}
    assert removed == {"0.10.0", "0.17.0"}  # deprecated for --enable-log-requests, then removed
    assert rep.dependencies == [] and any("0.6.6: from source, not run" in n for n in rep.dependency_notes)
    assert len(rep.untested_releases) > 10


def test_cli_prints_the_0_6_6_report_and_refuses_a_backwards_pair(capsys: pytest.CaptureFixture[str],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    assert cli.main(["upgrade", "--from", "0.6.6", "--to", "0.26.0"]) == 0
    out = capsys.readouterr().out
    assert "[0.12.0] request_field SILENT: guided_json" in out
    assert "[0.11.0] server_flag: --guided-decoding-backend -> --structured-outputs-config" in out
    assert "0.6.6: from source, not run" in out
    assert cli.main(["upgrade", "--from", "0.32.0", "--to", "0.27.0"]) == 2
    assert "must be an older release" in capsys.readouterr().err


def test_cli_json_and_markdown(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    assert cli.main(["upgrade", "--from", "0.27.0", "--to", "0.32.0", "--model", "tiny-mistral", "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["schema"] == upgrade.SCHEMA and [m["model"] for m in data["models"]] == ["tiny-mistral"]
    assert cli.main(["upgrade", "--from", "0.27.0", "--to", "0.32.0", "--format", "md"]) == 0
    md = capsys.readouterr().out
    assert md.startswith("# Upgrade report: vLLM 0.27.0 → 0.32.0") and "| `guided_decoding:outlines` |" in md


# --------------------------------------------------------------------------- serve args, speed, the data file


def test_serve_args_translated_with_the_plugins_adapters() -> None:
    tr, line = upgrade.translate_serve_args(
        "--guided-decoding-backend xgrammar --disable-log-requests --max-model-len 2048 "
        "VLLM_ATTENTION_BACKEND=XFORMERS VLLM_CPU_KVCACHE_SPACE=8", "0.6.6", "0.26.0")
    assert line == "VLLM_CPU_KVCACHE_SPACE=8 --max-model-len 2048 --structured-outputs-config '{\"backend\": \"xgrammar\"}'"
    by = {t.given: t for t in tr}
    assert by["VLLM_ATTENTION_BACKEND=XFORMERS"].translated is None  # XFORMERS is gone: no equivalent, said so
    assert by["--disable-log-requests"].translated == "" and "--enable-log-requests" in by["--disable-log-requests"].note
    # the CPU backend's renames chain: TORCH_SDPA_VLLM_V1 (0.10) -> TORCH_SDPA (0.11) -> CPU_ATTN (0.12), by flag from 0.13
    _, line = upgrade.translate_serve_args("VLLM_ATTENTION_BACKEND=TORCH_SDPA_VLLM_V1", "0.10.2", "0.13.0")
    assert line == "--attention-backend CPU_ATTN"
    _, line = upgrade.translate_serve_args("--structured-outputs-config '{\"backend\": \"guidance\", "
                                           "\"disable_any_whitespace\": true}'", "0.27.0", "0.32.0")
    assert json.loads(line.split(" ", 1)[1].strip("'")) == {"backend": "guidance", "disable_any_whitespace": True}


def _perf(tmp_path: Path, a: str, b: str, verdict: str = "not measurable") -> None:
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / f"compare-tiny-mistral-{a}-vs-{b}.json").write_text(json.dumps({
        "schema": upgrade.PERF_SCHEMA, "model": "tiny-mistral", "a": {"vllm_version": a}, "b": {"vllm_version": b},
        "measures": {"tokens_per_s": {"ratio": 0.97, "ci": [0.9, 1.05], "confidence": 0.95, "verdict": verdict,
                                      "mde": 0.06, "higher_is_better": True}}}))


def test_speed_uses_the_exact_interleaved_comparison_else_lists_the_steps(tmp_path: Path,
                                                                          inputs: upgrade.Inputs) -> None:
    _perf(tmp_path / "steps", "0.30.0", "0.31.0")
    _perf(tmp_path / "steps", "0.31.0", "0.32.0", "regression")
    rep = upgrade.build_report("0.27.0", "0.32.0", matrix=inputs["matrix"], records=inputs["records"], root=REPO,
                               models=["tiny-mistral"], perf=upgrade.load_perf_comparisons([tmp_path / "steps"]))
    speed = rep.models[0].speed
    assert speed[0] == "speed: no interleaved comparison of 0.27.0 and 0.32.0; consecutive steps:"
    assert [s.split(" (", 1)[0].strip() for s in speed[1:]] == ["0.30.0 -> 0.31.0", "0.31.0 -> 0.32.0"]
    assert "tokens_per_s: regression, ratio 0.97 (95% CI 0.9-1.05" in speed[2]
    _perf(tmp_path / "exact", "0.27.0", "0.32.0")
    rep = upgrade.build_report("0.27.0", "0.32.0", matrix=inputs["matrix"], records=inputs["records"], root=REPO,
                               models=["tiny-mistral"], perf=upgrade.load_perf_comparisons([tmp_path / "exact"]))
    assert rep.models[0].speed == [
        "interleaved comparison 0.27.0 vs 0.32.0 (compare-tiny-mistral-0.27.0-vs-0.32.0.json): tokens_per_s: "
        "not measurable, ratio 0.97 (95% CI 0.9-1.05, smallest detectable change 6%)"]
    assert "no regression" not in upgrade.render_text(rep)


def test_interface_changes_file_cites_claims_the_checker_verified_at_that_release() -> None:
    check = json.loads(CHECK.read_text(encoding="utf-8"))
    verified = {(rel["version"], r["claim"].split(".", 1)[0]) for rel in check["releases"] for r in rel["results"]
                if r["status"] == "verified"}
    checked = set(table_versions())
    changes = upgrade.interface_changes("0.5.5", "0.33.0", CHECK)
    entries = [c for c in changes if c.evidence[0].file.endswith("interface_changes.toml")]
    assert len(entries) >= 13
    for c in entries:
        assert c.release in checked, c
        assert c.area in ("server_flag", "request_field", "env", "default", "command", "attention_backend"), c
        assert any(e.file == upgrade.CHECK_REPORT for e in c.evidence), c
    for c in changes:
        for e in c.evidence:
            if e.file == upgrade.CHECK_REPORT:
                version, claim = e.fact.split(" ", 2)[1].rstrip(":"), e.fact.split(" ", 3)[2].split(".", 1)[0]
                assert (version, claim) in verified or "not_checkable" in e.fact, e.fact


def test_bad_pairs_are_refused(inputs: upgrade.Inputs) -> None:
    for x, y in (("0.32.0", "0.27.0"), ("0.27.0", "0.27.0"), ("0.1.0", "0.27.0"), ("nonsense", "0.27.0")):
        with pytest.raises(upgrade.UpgradeError):
            upgrade.build_report(x, y, matrix=inputs["matrix"])


def test_records_loaded_once_by_the_matrix_reader() -> None:
    """upgrade reads records only through matrix.load_records (no second reader)."""
    src = (REPO / "pytest_vllm_compat" / "upgrade.py").read_text(encoding="utf-8")
    assert "read_record_file" not in src and "json.loads(line" not in src and "load_records(" in src


# --------------------------------------------------------------------------- the site's upgrade pages


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []
        self.scripts = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self.hrefs.append(dict(attrs).get("href") or "")
        if tag == "script":
            self.scripts += 1


def _links(path: Path) -> _Links:
    p = _Links()
    p.feed(path.read_text(encoding="utf-8"))
    return p


@pytest.fixture(scope="module")
def site_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`vllm-compat matrix` over the committed runs, into a temporary dir (the committed site is left alone)."""
    out = tmp_path_factory.mktemp("site")
    dirs = [str(d) for d in upgrade.default_results_dirs(REPO)]
    reports = [a for d in upgrade.default_report_dirs(REPO) for a in ("--reports-from", str(d))]
    assert cli.main(["matrix", *dirs, *reports, "--output", str(out)]) == 0
    return out


def test_matrix_writes_an_upgrade_page_per_published_pair_linked_from_the_index(site_dir: Path) -> None:
    from pytest_vllm_compat.website.upgrade import page_name

    assert "upgrade.html" in _links(site_dir / "index.html").hrefs
    selector = _links(site_dir / "upgrade.html")
    pages = sorted(h for h in selector.hrefs if h.startswith("upgrade-"))
    assert pages == sorted(page_name(x, y) for x, y in combinations(PUBLISHED, 2))  # 7 releases, 21 pairs
    for name in pages:
        page = site_dir / name
        text = page.read_text(encoding="utf-8")
        links = _links(page)
        assert links.scripts == 0 and "script-src &#39;none&#39;" in text  # no script at all: links only
        for href in links.hrefs:
            if href.startswith("https://"):
                continue
            assert not href.startswith(("/", "javascript:", "file:", "http:")), href
            target = href.split("#")[0]
            assert not target or (site_dir / target).is_file(), (name, href)
        assert "/root/" not in text and "/tmp/" not in text and "/home/" not in text


def test_the_0_27_0_to_0_32_0_page_shows_the_sections_linked_to_cells_and_evidence(site_dir: Path,
                                                                                   inputs: upgrade.Inputs) -> None:
    page = site_dir / "upgrade-0.27.0-0.32.0.html"
    text = page.read_text(encoding="utf-8")
    for section in ('id="behaviour"', 'id="interface"', 'id="dependencies"', 'id="gaps"'):
        assert section in text
    outlines = {c["vllm_version"]: c["cell_id"] for c in inputs["matrix"]["cells"]
                if c["model"] == "smollm2-135m-instruct" and c["feature"] == "guided_decoding:outlines"}
    hrefs = _links(page).hrefs
    assert f"cells/{outlines['0.27.0']}.html" in hrefs and f"cells/{outlines['0.32.0']}.html" in hrefs
    assert "0.31.0 (last failing tested release: 0.30.0)" in text
    assert "https://github.com/vllm-project/vllm/blob/v0.28.0/vllm/v1/core/kv_cache_utils.py" in hrefs
    assert "no regression" not in text


def test_a_release_without_run_or_lock_takes_its_wheels_requires_dist(tmp_path: Path, inputs: upgrade.Inputs) -> None:
    """--wheel-metadata: the requirements come from the wheel's METADATA (here a cached copy, no network)."""
    for version, lines in (("0.6.6", ["transformers>=4.45.2", "outlines==0.1.11", "torch==2.5.1",
                                      'xgrammar>=0.1.6; platform_machine == "x86_64"', 'zentorch; extra == "zen"']),
                           ("0.26.0", ["transformers>=5.5.3", "outlines_core==0.2.14", "torch==2.11.0",
                                       'xgrammar<1.0.0,>=0.2.1; platform_machine == "x86_64"'])):
        meta = tmp_path / f"vllm-{version}" / "METADATA"
        meta.parent.mkdir()
        meta.write_text("Metadata-Version: 2.1\nName: vllm\n" + "".join(f"Requires-Dist: {x}\n" for x in lines))
    assert upgrade.wheel_requirements("vllm", "0.6.6", tmp_path) == {
        "transformers": ">=4.45.2", "outlines": "==0.1.11", "torch": "==2.5.1", "xgrammar": ">=0.1.6"}
    rep = upgrade.build_report("0.6.6", "0.26.0", matrix=inputs["matrix"], records=inputs["records"], root=REPO,
                               requires=lambda v: upgrade.wheel_requirements("vllm", v, tmp_path))
    got = {d.package: (d.from_version, d.to_version) for d in rep.dependencies}
    assert got == {"transformers": (">=4.45.2", ">=5.5.3"), "torch": ("==2.5.1", "==2.11.0"),
                   "outlines": ("==0.1.11", None), "outlines-core": (None, "==0.2.14"),
                   "xgrammar": (">=0.1.6", "<1.0.0,>=0.2.1")}
    assert all("from source, not run" in d.source for d in rep.dependencies)

    def unreachable(version: str) -> dict[str, str]:
        raise OSError("index unreachable")

    rep = upgrade.build_report("0.6.6", "0.26.0", matrix=inputs["matrix"], root=REPO, requires=unreachable)
    assert rep.dependencies == [] and any("index unreachable" in n for n in rep.dependency_notes)
