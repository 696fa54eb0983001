"""What a config builds: the model, the mesh, the optimiser and the sharded state's layout.

:func:`build` turns a validated config into one frozen :class:`Experiment`, shared by
training, evaluation and prediction; the mesh is checked against the model and batches
before anything is traced.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import optax

from uniformerv2_jax import config as config_lib
from uniformerv2_jax import presets, sharding
from uniformerv2_jax.model import UniFormerV2
from uniformerv2_jax.optim import learning_rate_schedule, make_optimizer
from uniformerv2_jax.topology import platform_of
from uniformerv2_jax.train_step import TrainState, create_train_state


@dataclasses.dataclass(frozen=True)
class Experiment:
    config: ml_collections.ConfigDict
    model: UniFormerV2
    mesh: jax.sharding.Mesh
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    state_shardings: Any  # TrainState of NamedShardings
    abstract_state: Any  # TrainState of ShapeDtypeStructs with shardings: the restore target
    rules: tuple[tuple[str, Any], ...]  # logical axis -> mesh axes (config.axis_rules)
    steps_per_epoch: int
    total_steps: int


def random_state(model: UniFormerV2, tx: optax.GradientTransformation, rng: jax.Array) -> TrainState:
    """A randomly initialised state whose parameters carry their logical axes (boxed)."""
    params_rng, state_rng = jax.random.split(rng)
    return create_train_state(tx, model.init(params_rng, presets.dummy_video(model)), state_rng)


def build(config: ml_collections.ConfigDict, train_examples: int | None = None,
          devices: list[jax.Device] | None = None) -> Experiment:
    """The experiment of a config that :func:`config.validate` accepted.

    ``train_examples`` (clips per epoch) sets the schedule's length in steps; without it
    (evaluation, prediction) the schedule is a placeholder of ``config.train_steps`` or 1
    step an epoch. ``devices`` (default: all) are those the mesh spans.
    """
    mesh = sharding.make_mesh(config.mesh, devices)
    # Kernels and remat follow the devices compiled for, which need not be the local ones.
    model = config_lib.build_model(config).clone(platform=platform_of(mesh.devices.flat[0]))
    # Before anything is traced: a split the mesh cannot make would fail at the first jit.
    config_lib.check_mesh(config, model, mesh.shape, training=train_examples is not None)
    # The official loader drops the last partial batch: an epoch is whole batches.
    steps_per_epoch = max(1, (train_examples or config.batch_size) // config.batch_size)
    o = config.optim
    total_steps = config.train_steps or max(1, round(o.epochs * steps_per_epoch))
    epochs = config.train_steps / steps_per_epoch if config.train_steps else o.epochs
    schedule = learning_rate_schedule(o.lr, steps_per_epoch, epochs, min(o.warmup_epochs, epochs),
                                      o.warmup_start_lr, o.end_lr)
    tx = make_optimizer(model, schedule, weight_decay=o.weight_decay, b1=o.b1, b2=o.b2,
                        eps=o.eps, clip_norm=o.clip_norm or None)
    rules = tuple(tuple(rule) for rule in config.axis_rules)
    with sharding.activate(mesh, rules):
        # The key is made inside the traced function: the mesh's devices may be described
        # ones (an ahead-of-time compile), on which nothing concrete can be created.
        boxed = jax.eval_shape(lambda: random_state(model, tx, jax.random.key(0)))
        state_shardings = sharding.logical_shardings(boxed, mesh, rules)
    abstract_state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                                  nn.unbox(boxed), state_shardings)
    return Experiment(config, model, mesh, tx, schedule, state_shardings, abstract_state, rules,
                      steps_per_epoch, total_steps)
