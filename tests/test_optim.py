"""The official optimiser: parameter groups, Adam's step, clipping, frozen backbone."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import ROOT, randomize, tiny_fields

from uniformerv2_jax import UniFormerV2, create_model
from uniformerv2_jax.optim import group_tree, make_optimizer, official_param_groups, scale_by_adam

FROZEN_NAMES = ("conv1", "class_embedding", "positional_embedding", "ln_pre", "transformer.resblocks")


def official_decays(key: str) -> bool:
    """``construct_optimizer`` (ZERO_WD_1D_PARAM, BN.WEIGHT_DECAY 0) by name: no decay for
    BatchNorm (``pos_embed.0``) and for what is 1-D officially (biases incl. the packed
    ``in_proj_bias``, LayerNorms incl. ``proj.0``, ``class_embedding``, ``balance``)."""
    one_d = (key.endswith(".bias") or key.endswith("in_proj_bias")
             or key in ("class_embedding", "transformer.balance")
             or any(f"{n}.weight" in key for n in ("ln_pre", "ln_1", "ln_2", "ln_3", "proj.0",
                                                    "pos_embed.0")))
    return not one_d


def test_the_name_rule_is_the_official_grouping_of_tiny_a():
    """The official code's own groups (data/fixtures/train_tiny_a.json) vs the rule above."""
    meta = json.loads((ROOT / "data" / "fixtures" / "train_tiny_a.json").read_text())
    groups = meta["optimizer"]["param_groups"]
    assert sum(g["n"] for g in groups) == 155
    for group in groups:
        for key in group["keys"]:
            assert official_decays(key.removeprefix("backbone.")) == (group["weight_decay"] > 0), key


def tiny_params(**fields):
    model = UniFormerV2(**tiny_fields(**fields))
    video = jnp.zeros((1, 4, 32, 32, 3))
    return model, nn.unbox(jax.jit(model.init)(jax.random.key(0), video))["params"]


@pytest.mark.parametrize("variant", ["B/16", "L/14", "L/14@336"])
@pytest.mark.parametrize("fields", [
    dict(), dict(no_lmhra=True), dict(frozen=True, no_lmhra=True), dict(temporal_downsample=True),
    dict(scan=True), dict(scan=True, frozen=True), dict(scan=True, double_lmhra=False)])
def test_every_parameter_lands_in_its_official_group(variant, fields):
    model = create_model(variant, t_size=8, **fields)
    video = jax.ShapeDtypeStruct((1, 8, model.input_resolution, model.input_resolution, 3), jnp.float32)
    boxed = jax.eval_shape(model.init, jax.random.key(0), video)["params"]  # as the trainer has it
    official = jax.tree.leaves(group_tree(model, "official")(boxed))
    decays = jax.tree.leaves(group_tree(model, "decay")(boxed))
    trained = jax.tree.leaves(group_tree(model, "trained")(boxed))
    assert len(official) == len(decays) == len(trained) == len(jax.tree.leaves(boxed))
    for key, decay, train in zip(official, decays, trained):
        assert decay == official_decays(key), key
        assert train == (not model.frozen or not any(n in key for n in FROZEN_NAMES)), key
    # Every official parameter has exactly one of our leaves (scan: the first of each run).
    assert len(official_param_groups(model)) >= len(set(official))
    assert "transformer.resblocks.0.attn.in_proj_bias" in official


@pytest.mark.parametrize("scan", [False, True])
def test_with_zero_gradients_adamw_changes_exactly_the_decayed_parameters(scan):
    model, params = tiny_params(scan=scan)
    params = randomize(params)  # no zero-initialised leaf: decay moves every decayed one
    tx = make_optimizer(model, optax.constant_schedule(1e-2))
    updates, _ = jax.jit(tx.update)(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
    changed = jax.tree.map(lambda u: bool(jnp.any(u != 0)), updates)
    layer = changed["layers_0_1" if scan else "layer_0"]["block"]
    assert layer["mlp"]["c_fc"]["kernel"] and not layer["mlp"]["c_fc"]["bias"]
    assert layer["attn"]["in_proj_kernel"] and not layer["attn"]["in_proj_bias"]  # 1-D officially
    assert changed["positional_embedding"] and changed["temporal_cls_token"]
    assert not changed["class_embedding"] and not changed["ln_pre"]["scale"]


def test_frozen_recipe_trains_only_the_global_path_and_head():
    model, params = tiny_params(frozen=True)
    tx = make_optimizer(model, optax.constant_schedule(1e-3))
    state = tx.init(params)
    updates, _ = jax.jit(tx.update)(jax.tree.map(jnp.ones_like, params), state, params)
    moved = jax.tree.map(lambda u: bool(jnp.any(u != 0)), updates)
    assert not moved["conv1"] and not moved["positional_embedding"]
    assert not moved["layer_2"]["block"]["attn"]["in_proj_kernel"]
    global_block = moved["layer_2"]["global"]
    assert global_block["attn"]["in_proj_kernel"] and global_block["dpe"]["kernel"]
    assert moved["temporal_cls_token"] and moved["head"]["kernel"] and moved["head_norm"]["scale"]
    # Frozen parameters carry no Adam moments.
    mu = optax.tree_utils.tree_get(state, "mu")
    assert jax.tree.leaves(mu["layer_2"]["global"]) and not jax.tree.leaves(mu.get("conv1", ()))


def test_gradients_are_clipped_as_torch_clip_grad_norm():
    model, params = tiny_params()
    tx = make_optimizer(model, optax.constant_schedule(1.0), clip_norm=1.0)
    grads = jax.tree.map(lambda p: jnp.full(p.shape, 100.0), params)
    norm = float(optax.tree.norm(grads))
    _, state = tx.update(grads, tx.init(params), params)
    # Adam normalises the step, so read the clipped gradient from the first moment.
    mu = np.concatenate([np.ravel(m) for m in jax.tree.leaves(optax.tree_utils.tree_get(state, "mu"))])
    np.testing.assert_allclose(np.linalg.norm(mu.astype(np.float64)) / 0.1, norm / (norm + 1e-6), rtol=1e-6)


def test_adam_bias_correction_is_as_precise_as_pytorchs():
    """Step t of Adam on a constant gradient g is g / (|g| + eps) exactly; optax's float32
    ``1 - 0.999**t`` made it ~6.5e-6 smaller at t = 1."""
    tx = scale_by_adam(0.9, 0.999, 1e-8)
    grads = {"w": jnp.array([1.0, -3.0, 0.25])}
    state = tx.init(grads)
    update = jax.jit(tx.update)
    for _ in range(5):
        direction, state = update(grads, state)
        # Exact up to the float32 roundings of the moments, the two bias corrections, the
        # square root and the division: half an ulp each, 4 ulps in all (the float32
        # ``1 - 0.999**t`` was ~50 ulps off).
        np.testing.assert_allclose(direction["w"], [1.0, -1.0, 1.0], rtol=4 * np.finfo(np.float32).eps)
