"""Memory estimates from config fields, and the hub registry's entries checked against them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pytest_vllm_compat import memory
from pytest_vllm_compat.registry import RegistryError, load_registry, parse_registry

ROOT = Path(__file__).resolve().parents[2]
HUB = ROOT / "suites" / "models-hub.toml"
# Published parameter counts (billions), from each model card / safetensors index.
PUBLISHED_B = {
    "mistral-7b-instruct": 7.25, "llama-3.1-8b-instruct": 8.03, "qwen2.5-7b-instruct": 7.62,
    "gemma-2-9b-it": 9.24, "phi-3.5-mini-instruct": 3.82, "mixtral-8x7b-instruct": 46.7,
    "llama-3.1-70b-instruct": 70.6,
}


def test_every_hub_entry_matches_its_published_size_and_fits_its_gpus() -> None:
    models = {m.name: m for m in load_registry(HUB)}
    assert set(models) == set(PUBLISHED_B)
    for name, m in models.items():
        assert m.hub and m.estimate is not None and m.requires.devices == ("cuda",), name
        params = memory.parameter_count(m.config) / 1e9
        assert params == pytest.approx(PUBLISHED_B[name], rel=0.002), (name, params)
        est = memory.estimate(m.config, dtype=m.serve_args["dtype"], max_model_len=m.serve_args["max_model_len"],
                              tensor_parallel=int(m.serve_args.get("tensor_parallel_size", 1)))
        assert m.estimate == est.to_dict()
        # the registry filled requires.gpu_memory_gib from the estimate: the card it needs at 0.9 utilization
        assert m.requires.gpu_memory_gib == est.card_gib >= est.per_gpu_gib / memory.GPU_MEMORY_UTILIZATION
        assert m.requires.gpus == int(m.serve_args.get("tensor_parallel_size", 1))
    # what each needs per GPU, as a user would check it against their cards
    assert models["llama-3.1-8b-instruct"].requires.gpu_memory_gib == pytest.approx(20.0, abs=0.2)
    assert models["llama-3.1-70b-instruct"].requires.gpu_memory_gib < 80 < memory.estimate(
        models["llama-3.1-70b-instruct"].config, max_model_len=8192).card_gib  # needs its 4-way split


def test_kv_cache_per_token_is_the_formula() -> None:
    cfg = {"hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
           "intermediate_size": 14336, "vocab_size": 32768}
    assert memory.kv_bytes_per_token(cfg) == 2 * 32 * 8 * 128 * 2 == 131072
    # The measured H100 case: a 2-layer model, 2 KV heads, head_dim 64, bf16 -> 23.46 GiB = 24,599,408 tokens.
    tiny = {"hidden_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "intermediate_size": 512, "vocab_size": 300}
    assert int(23.46 * memory.GIB / memory.kv_bytes_per_token(tiny)) == pytest.approx(24_599_408, rel=1e-3)


def test_a_declared_size_below_the_estimate_is_an_early_clear_error() -> None:
    cfg = {"hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
           "intermediate_size": 14336, "vocab_size": 128256}
    raw: dict[str, Any] = {"models": {"llama": {"hub": "meta-llama/Llama-3.1-8B-Instruct", "config": cfg,
                                "requires": {"gpus": 1, "gpu_memory_gib": 16}, "serve_args": {"max_model_len": 8192}}}}
    with pytest.raises(RegistryError, match=r"gpu_memory_gib = 16 but serving it needs about 20 GiB per GPU "
                                            r"\(8\.03 B parameters"):
        parse_registry(raw)
    raw["models"]["llama"]["requires"]["gpu_memory_gib"] = 24
    (m,) = parse_registry(raw)
    assert m.requires.gpu_memory_gib == 24
    raw["models"]["llama"]["config"] = {"hidden_size": 4096}
    with pytest.raises(RegistryError, match="lacks num_hidden_layers, num_attention_heads"):
        parse_registry(raw)


def test_revision_pins_hub_models_only() -> None:
    (m,) = parse_registry({"models": {"m": {"hub": "org/m", "revision": "0123abc"}}})
    assert m.revision == "0123abc"
    with pytest.raises(RegistryError, match="'revision' pins a hub model"):
        parse_registry({"models": {"m": {"builtin": "llama", "revision": "x"}}})


def test_the_preflight_counts_what_the_registry_counts() -> None:
    """One estimator: the server preflight's weights and KV cache are the registry's, for every hub entry."""
    from pytest_vllm_compat.gpu import estimate_memory

    for m in load_registry(HUB):
        est = memory.estimate(m.config, max_model_len=4096)
        pre = estimate_memory(m.config, max_model_len=4096)
        assert pre.params == est.parameters, m.name
        assert pre.weights_gib == pytest.approx(est.weights_gib), m.name
        assert pre.kv_cache_gib == pytest.approx(est.kv_gib), m.name
    # Qwen2's config.json has no key for its q/k/v biases: its model type says so
    qwen = {"model_type": "qwen2", "hidden_size": 3584, "num_hidden_layers": 28, "num_attention_heads": 28,
            "num_key_value_heads": 4, "intermediate_size": 18944, "vocab_size": 152064}
    assert memory.parameter_count(qwen) - memory.parameter_count({**qwen, "model_type": "llama"}) == \
        28 * (28 + 2 * 4) * 128
