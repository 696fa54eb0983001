"""The train and eval steps: loss goes down, metrics are exact, views are averaged."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from helpers import random_video, tiny_fields

from uniformerv2_jax import UniFormerV2
from uniformerv2_jax.evaluate import video_probabilities
from uniformerv2_jax.optim import make_optimizer
from uniformerv2_jax.train_step import (
    create_train_state,
    cross_entropy,
    topk_correct,
    train_step,
)


def test_a_few_steps_reduce_the_loss_on_a_fixed_batch():
    model = UniFormerV2(**tiny_fields(cls_dropout=0.0, mlp_dropout=0.0))
    video = random_video(model, batch=4)
    batch = {"video": video, "label": jnp.array([0, 1, 2, 3])}
    variables = jax.jit(model.init)(jax.random.key(0), video)
    tx = make_optimizer(model, optax.constant_schedule(3e-3))
    state = create_train_state(tx, nn.unbox(variables), jax.random.key(1))
    step = jax.jit(functools.partial(train_step, model=model, tx=tx))
    losses = []
    for _ in range(8):
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
        assert np.isfinite(losses[-1]) and float(metrics["grad_norm"]) > 0
    assert losses[-1] < 0.5 * losses[0]
    assert int(state.step) == 8
    # BatchNorm statistics moved in training mode.
    stats = state.batch_stats["layer_0"]["block"]["lmhra1"]["norm"]["mean"]
    assert float(jnp.abs(stats).max()) > 0


def test_loss_and_accuracy_against_hand_computed_values():
    logits = jnp.array([[2.0, 1.0, 0.0], [0.0, 1.0, 3.0]])
    labels = jnp.array([0, 1])
    expected = -np.mean([np.log(np.exp(2) / np.exp([2, 1, 0]).sum()),
                         np.log(np.exp(1) / np.exp([0, 1, 3]).sum())])
    np.testing.assert_allclose(cross_entropy(logits, labels), expected, rtol=1e-6)
    soft = jnp.array([[0.5, 0.5, 0.0], [0.0, 1.0, 0.0]])
    np.testing.assert_allclose(cross_entropy(logits, soft),
                               -np.mean([0.5 * (2 - np.log(np.exp([2, 1, 0]).sum()))
                                         + 0.5 * (1 - np.log(np.exp([2, 1, 0]).sum())),
                                         1 - np.log(np.exp([0, 1, 3]).sum())]), rtol=1e-6)
    assert topk_correct(logits, labels, 1).tolist() == [1.0, 0.0]
    assert topk_correct(logits, labels, 2).tolist() == [1.0, 1.0]


def test_video_probabilities_average_softmax_over_views():
    model = UniFormerV2(**tiny_fields())
    views = random_video(model, batch=6).reshape(2, 3, 4, 32, 32, 3)
    variables = jax.jit(model.init)(jax.random.key(0), views[0])
    probs = jax.jit(functools.partial(video_probabilities, model))(variables, views)
    per_view = jax.nn.softmax(jax.jit(model.apply)(variables, views.reshape(6, 4, 32, 32, 3)))
    np.testing.assert_allclose(probs, per_view.reshape(2, 3, -1).mean(1), atol=1e-6)
