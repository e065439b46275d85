"""Output drift: parsing a completions response, verdicts between two output sets, golden files, and the
matrix's per-series comparison (fake outputs: this is pure logic)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pytest_vllm_compat import drift
from pytest_vllm_compat import matrix as mx
from pytest_vllm_compat.drift import Output, compare, compare_one
from pytest_vllm_compat.record_types import Record


def out(ids: list[int], lps: list[float] | None = None, top: list[dict[int, float]] | None = None,
        prompt: str = "p") -> Output:
    lps = lps if lps is not None else [-1.0] * len(ids)
    text = "".join(chr(97 + i % 26) for i in ids)
    return Output(prompt=prompt, text=text, token_ids=ids, logprobs=lps,
                  top=top if top is not None else [{i: lp} for i, lp in zip(ids, lps, strict=True)])


def test_parse_completion_with_token_ids_and_top_logprobs() -> None:
    response = {"choices": [{"text": "ab", "logprobs": {
        "tokens": ["token_id:5", "token_id:7"], "token_logprobs": [-0.5, -1.25],
        "top_logprobs": [{"token_id:5": -0.5, "token_id:9": -0.6}, {"token_id:7": -1.25, "token_id:3": -2.0}],
        "text_offset": [0, 1]}}]}
    o = drift.parse_completion("hi", response)
    assert (o.token_ids, o.logprobs, o.text) == ([5, 7], [-0.5, -1.25], "ab")
    assert o.top == [{5: -0.5, 9: -0.6}, {7: -1.25, 3: -2.0}]
    assert Output.from_dict(json.loads(json.dumps(o.to_dict()))) == o


def test_a_server_that_ignores_token_ids_is_an_error() -> None:
    with pytest.raises(ValueError, match="return_tokens_as_token_ids"):
        drift.parse_completion("hi", {"choices": [{"text": "a", "logprobs": {"tokens": ["a"], "token_logprobs": [-1]}}]})


def test_request_asks_greedy_fixed_length_top_k() -> None:
    body = drift.request_body("hello", "m")
    assert body["temperature"] == 0.0 and body["ignore_eos"] is True and body["logprobs"] == drift.TOP_K >= 5
    assert body["max_tokens"] == drift.MAX_TOKENS and body["return_tokens_as_token_ids"] is True


def test_identical_drift_and_changed() -> None:
    a = out([1, 2, 3], [-1.0, -1.0, -1.0])
    assert compare_one(a, out([1, 2, 3], [-1.0, -1.00001, -1.0]))["verdict"] == "identical"
    moved = compare_one(a, out([1, 2, 3], [-1.0, -1.05, -1.0]))
    assert (moved["verdict"], moved["first_divergence"], moved["max_abs_dlogprob_before"]) == ("drift", None, 0.05)
    assert compare_one(a, out([1, 2, 3], [-1.0, -1.5, -1.0]))["verdict"] == "changed"


def test_a_near_tie_flip_is_drift_a_far_token_is_changed() -> None:
    a = out([1, 2, 3], [-1.0, -1.0, -1.0], top=[{1: -1.0}, {2: -1.0, 8: -1.04}, {3: -1.0}])
    b = out([1, 8, 4], [-1.0, -1.02, -1.0], top=[{1: -1.0}, {8: -1.02, 2: -1.03}, {4: -1.0}])
    r = compare_one(a, b, tolerance=0.1)
    assert (r["verdict"], r["first_divergence"], r["token_a"], r["token_b"], r["offset_a"]) == ("drift", 1, 2, 8, 1)
    far = out([1, 9, 4], [-1.0, -0.2, -1.0], top=[{1: -1.0}, {9: -0.2}, {4: -1.0}])  # 9 not in a's top-k
    assert compare_one(a, far)["verdict"] == "changed"
    before = out([1, 8, 4], [-1.5, -1.02, -1.0], top=[{1: -1.5}, {8: -1.02, 2: -1.03}, {4: -1.0}])
    assert compare_one(a, before)["verdict"] == "changed"  # moved beyond the tolerance before the flip


def test_compare_sets_takes_the_worst_and_names_missing_prompts() -> None:
    a = [out([1, 2], prompt="x"), out([3, 4], prompt="y")]
    b = [out([1, 2], prompt="x"), out([3, 4], [-1.0, -1.05], prompt="y"), out([5], prompt="z")]
    r = compare(a, b)
    assert r["verdict"] == "changed"
    assert [p["verdict"] for p in r["prompts"]] == ["identical", "drift", "changed"]
    assert r["prompts"][2]["missing"] == "a"
    assert compare(a, b[:2])["verdict"] == "drift"


def test_golden_round_trip_and_clear_errors(tmp_path: Path) -> None:
    outs = [out([1, 2], prompt=p) for p in drift.PROMPTS]
    path = drift.save_golden(tmp_path, "tiny/mistral", outs, vllm_version="0.28.0", weights_sha256="ab")
    assert path.parent == tmp_path and path.name.startswith("tiny-mistral-")
    g = drift.load_golden(tmp_path, "tiny/mistral")
    assert g["outputs"] == outs and g["vllm_version"] == "0.28.0"
    with pytest.raises(drift.GoldenError, match="no golden outputs for other"):
        drift.load_golden(tmp_path, "other")
    data = json.loads(path.read_text())
    data["settings"]["max_tokens"] = 99
    path.write_text(json.dumps(data))
    with pytest.raises(drift.GoldenError, match="other prompts or request settings"):
        drift.load_golden(tmp_path, "tiny/mistral")
    path.write_text("{")
    with pytest.raises(drift.GoldenError, match="unreadable"):
        drift.load_golden(tmp_path, "tiny/mistral")


def _rec(version: str, outputs: list[Output], *, sha: str = "w", stack: str = "") -> Record:
    return {"schema": "pytest-vllm-compat/record@1", "run_id": "r", "test_id": f"t[{version}]", "model": "m",
            "vllm_version": version, "platform": "cpu", "feature": "drift", "outcome": "passed", "status": "pass",
            "started_at": "2026-01-01T00:00:00Z", "finished_at": "2026-01-01T00:00:01Z",
            "stack": {"name": stack, "requirements": []},
            "server": {"serve_args": ["--max-model-len", "512", "--dtype", "bfloat16"]},
            "metrics": {"drift_outputs": [o.to_dict() for o in outputs], "weights_sha256": sha,
                        "drift_repeatability": "identical", "drift_repeat_max_abs_dlogprob": 0.0}}


def test_matrix_compares_each_version_with_the_previous_of_its_series() -> None:
    base = [out([1, 2, 3])]
    recs = [_rec("0.30.0", base), _rec("0.31.0", base), _rec("0.32.0", [out([1, 2, 3], [-1.0, -1.05, -1.0])]),
            _rec("0.33.0", [out([7, 7, 7])]), _rec("0.34.0", [out([7, 7, 7])], sha="other"),
            _rec("0.32.0", [out([7, 7, 7])], stack="transformers-5.16.1")]
    m = mx.build_matrix(recs, classifier=None)
    by = {c["vllm_version"]: c["drift"] for c in m["cells"]}
    assert by["0.30.0"]["verdict"] == "baseline"
    assert (by["0.31.0"]["verdict"], by["0.31.0"]["vs"]) == ("identical", "0.30.0")
    assert by["0.32.0"]["verdict"] == "drift"
    assert by["0.33.0"]["verdict"] == "changed"
    prompts = by["0.33.0"]["prompts"]
    assert isinstance(prompts, list) and prompts[0]["first_divergence"] == 0
    assert by["0.34.0"]["verdict"] == "not_comparable"
    assert by["0.32.0+transformers-5.16.1"]["verdict"] == "baseline"  # its own series: another stack
    rows = {r["stack"]: r for r in m["drift"]}
    assert rows[""]["verdicts"] == ["baseline", "identical", "drift", "changed", "not_comparable"]
    assert all(c["status"] == "pass" for c in m["cells"])  # drift is its own status, not a failure
    assert {r["dtype"] for r in m["drift"]} == {"bfloat16"}
    assert drift._dtype({"dtype": "float16"}) == "float16" and drift._dtype(["--dtype=half"]) == "half"
