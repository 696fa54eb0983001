"""Parity with the official PyTorch model, through the converter (../shared/golden)."""

import json

import jax
import numpy as np
import pytest
from helpers import LOGITS_ATOL, TOKENS_ATOL

from uniformerv2_jax import from_official


def to_channels_last(video_ncthw: np.ndarray) -> np.ndarray:
    return np.transpose(video_ncthw, (0, 2, 3, 4, 1))


@pytest.mark.parametrize("filename", ["tiny_a.pyth", "tiny_a.safetensors"])
@pytest.mark.parametrize("scan", [False, True])
def test_converted_tiny_a_reproduces_the_official_logits(golden, tiny_a_config, filename, scan):
    data = np.load(golden / "tiny_a.npz")
    model, variables = from_official(golden / filename, config=tiny_a_config, scan=scan)
    logits = jax.jit(model.apply)(variables, to_channels_last(data["input"]))
    np.testing.assert_allclose(logits, data["logits"], rtol=0, atol=LOGITS_ATOL)
    np.testing.assert_allclose(logits, data["logits_f64"], rtol=0, atol=LOGITS_ATOL)


def test_every_stage_matches_the_official_intermediates(golden):
    """Embedding, each block, each global block, the fusion: the first stage that departs."""
    data = np.load(golden / "tiny_a_layers.npz")
    config = json.loads((golden / "tiny_a_layers.json").read_text())
    model, variables = from_official(golden / "tiny_a_layers.safetensors",
                                     **config["constructor_args"])
    apply = jax.jit(model.apply, static_argnames="mutable")
    logits, state = apply(variables, to_channels_last(data["input"]), mutable=("intermediates",))
    inter = state["intermediates"]
    n, t = data["input"].shape[0], data["input"].shape[2]

    def official_layout(x):  # ours (N, T, L, C) -> official (L, N*T, C)
        return np.asarray(x).reshape(n * t, *x.shape[2:]).transpose(1, 0, 2)

    np.testing.assert_allclose(official_layout(inter["embed"][0]), data["embed"], atol=TOKENS_ATOL)
    for i in range(model.layers):
        np.testing.assert_allclose(official_layout(inter[f"layer_{i}"]["block_out"][0]),
                                   data["block_outputs"][i], atol=TOKENS_ATOL, err_msg=f"block {i}")
    for j, i in enumerate(model.return_list):
        np.testing.assert_allclose(inter[f"layer_{i}"]["query"][0][:, 0], data["dec_outputs"][j],
                                   atol=TOKENS_ATOL, err_msg=f"global block {j}")
    last = inter[f"layer_{model.layers - 1}"]["block_out"][0]
    np.testing.assert_allclose(np.asarray(last)[:, :, 0].mean(1), data["backbone_cls"], atol=TOKENS_ATOL)
    np.testing.assert_allclose(inter["head_input"][0], data["head_input"], atol=TOKENS_ATOL)
    np.testing.assert_allclose(logits, data["logits"], atol=LOGITS_ATOL)
