"""The official optimiser: schedule, decay mask, clipping, frozen backbone."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import tiny_fields

from uniformerv2_jax import UniFormerV2
from uniformerv2_jax.optim import decay_mask, learning_rate_schedule, make_optimizer


def tiny_params(**fields):
    model = UniFormerV2(**tiny_fields(**fields))
    video = jnp.zeros((1, 4, 32, 32, 3))
    return nn.unbox(jax.jit(model.init)(jax.random.key(0), video))["params"]


def test_warmup_then_cosine_to_the_end_lr():
    schedule = learning_rate_schedule(1e-5, total_steps=100, warmup_steps=10)
    assert float(schedule(0)) == pytest.approx(1e-6)
    assert float(schedule(5)) == pytest.approx(1e-6 + 0.5 * (1e-5 - 1e-6))
    assert float(schedule(10)) == pytest.approx(1e-5)
    # Cosine over the remaining 90 steps: halfway is the mean of base and end.
    assert float(schedule(55)) == pytest.approx((1e-5 + 1e-6) / 2, rel=1e-5)
    assert float(schedule(100)) == pytest.approx(1e-6)
    with pytest.raises(ValueError, match="warmup_steps"):
        learning_rate_schedule(1e-5, total_steps=10, warmup_steps=20)


@pytest.mark.parametrize("scan", [False, True])
def test_weight_decay_spares_one_dimensional_parameters(scan):
    params = tiny_params(scan=scan)
    mask = decay_mask(params)
    layer = params["layers_0_1" if scan else "layer_0"]["block"]
    layer_mask = mask["layers_0_1" if scan else "layer_0"]["block"]
    assert layer_mask["mlp"]["c_fc"]["kernel"] and not layer_mask["mlp"]["c_fc"]["bias"]
    assert not layer_mask["ln_1"]["scale"] and layer["ln_1"]["scale"].ndim == (2 if scan else 1)
    assert mask["positional_embedding"] and mask["temporal_cls_token"]  # decayed officially
    assert not mask["class_embedding"] and not mask["balance"]
    assert not decay_mask(params, decay_embeddings=False)["positional_embedding"]

    # With zero gradients, AdamW changes exactly the decayed parameters.
    tx = make_optimizer(base_lr=1e-2, total_steps=10, warmup_steps=0)
    updates, _ = jax.jit(tx.update)(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
    changed = jax.tree.map(lambda u: bool(jnp.any(u != 0)), updates)
    nonzero = jax.tree.map(lambda p: bool(jnp.any(p != 0)), params)
    expected = jax.tree.map(lambda m, nz: m and nz, mask, nonzero)
    assert changed == expected


def test_frozen_recipe_trains_only_the_global_path_and_head():
    params = tiny_params(frozen=True)
    tx = make_optimizer(base_lr=1e-3, total_steps=10, warmup_steps=0, frozen=True)
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
    moved = jax.tree.map(lambda u: bool(jnp.any(u != 0)), updates)
    assert not moved["conv1"] and not moved["positional_embedding"]
    assert not moved["layer_2"]["block"]["attn"]["in_proj_kernel"]
    assert moved["layer_2"]["global"]["attn"]["in_proj_kernel"]
    assert moved["temporal_cls_token"] and moved["head"]["kernel"] and moved["head_norm"]["scale"]


def test_gradients_are_clipped_to_the_global_norm():
    params = {"w": jnp.ones((3, 3))}
    tx = make_optimizer(base_lr=1.0, total_steps=10, warmup_steps=0, clip_norm=1.0,
                        weight_decay=0.0, warmup_start_lr=1.0, end_lr=1.0)
    # Adam normalises the step, so check the clipped gradient through the first moment.
    _, state = tx.update({"w": jnp.full((3, 3), 100.0)}, tx.init(params), params)
    mu = optax.tree_utils.tree_get(state, "mu")["w"]
    np.testing.assert_allclose(np.linalg.norm(np.asarray(mu)) / 0.1, 1.0, rtol=1e-5)  # b1 = 0.9
