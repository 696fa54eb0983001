"""The official optimiser: AdamW, warmup then cosine, gradient clipping, frozen backbone.

Official settings (the SlowFast trainer of the UniFormerV2 repository, all 49 configs):
``torch.optim.AdamW`` with betas (0.9, 0.999), eps 1e-8 and weight decay 0.05, whose
parameter groups ``construct_optimizer`` decides from the *official* parameters: BatchNorm
parameters and every parameter that is 1-D in the official model (biases, norms,
``class_embedding``, ``balance``, ``attn.in_proj_bias``) get no decay, everything else
(the positional embedding and the 3-D video query included) is decayed. We store some
arrays in other shapes (``in_proj_bias`` as (3, heads, head_dim)), so the groups are read
from the converter's key table, never from our arrays' ranks. Gradients are clipped as
``torch.nn.utils.clip_grad_norm_(params, 20)`` over the trained parameters; the learning
rate is set every iteration from the fractional epoch (``slowfast/utils/lr_policy.py``).
With ``frozen``, the official recipe trains only what is not CLIP's: the video query,
DPE, the global blocks and the head.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from uniformerv2_jax.convert.mapping import get_path, official_rules
from uniformerv2_jax.model import UniFormerV2
from uniformerv2_jax.presets import abstract_variables

# Official keys that ``frozen=True`` takes out of the optimiser (requires_grad=False).
FROZEN_OFFICIAL_NAMES = ("conv1", "class_embedding", "positional_embedding", "ln_pre",
                         "transformer.resblocks")


def learning_rate_schedule(base_lr: float, steps_per_epoch: int, epochs: float,
                           warmup_epochs: float, warmup_start_lr: float = 1e-6,
                           end_lr: float = 1e-6) -> optax.Schedule:
    """The official ``lr_policy`` (cosine, ``COSINE_AFTER_WARMUP``), per iteration.

    Step s is epoch ``s / steps_per_epoch``; below ``warmup_epochs`` the rate rises
    linearly from ``warmup_start_lr`` to ``base_lr``, then follows a cosine from
    ``base_lr`` at ``warmup_epochs`` to ``end_lr`` at ``epochs``.
    """
    if steps_per_epoch < 1 or epochs <= 0 or not 0 <= warmup_epochs <= epochs:
        raise ValueError(f"needs steps_per_epoch >= 1, epochs > 0 and 0 <= warmup_epochs <= epochs "
                         f"(steps_per_epoch={steps_per_epoch}, epochs={epochs}, "
                         f"warmup_epochs={warmup_epochs})")
    cosine_epochs = max(epochs - warmup_epochs, 1e-12)

    def schedule(step):
        epoch = jnp.asarray(step, jnp.float32) / steps_per_epoch
        cosine = end_lr + (base_lr - end_lr) * 0.5 * (
            jnp.cos(jnp.pi * (epoch - warmup_epochs) / cosine_epochs) + 1.0)
        if warmup_epochs == 0:
            return cosine
        warmup = warmup_start_lr + epoch * (base_lr - warmup_start_lr) / warmup_epochs
        return jnp.where(epoch < warmup_epochs, warmup, cosine)

    return schedule


@dataclasses.dataclass(frozen=True)
class ParamGroup:
    """Where ``construct_optimizer`` puts one official parameter."""
    official: str  # the official key (without ``backbone.``)
    decay: bool
    trained: bool


def official_param_groups(model: UniFormerV2) -> dict[tuple[str, ...], ParamGroup]:
    """Each of our parameters (path under ``params``, loop layout) -> its official group."""
    abstract = abstract_variables(model)
    groups = {}
    for rule in official_rules(model):
        if rule.path[0] != "params":
            continue  # BatchNorm running statistics are buffers, not parameters
        official_shape = jax.eval_shape(rule.to_torch, get_path(abstract, rule.path)).shape
        # BatchNorm weights (BN.WEIGHT_DECAY = 0) are 1-D too: one rule covers both groups.
        trained = not (model.frozen and any(n in rule.official for n in FROZEN_OFFICIAL_NAMES))
        groups[rule.path[1:]] = ParamGroup(rule.official, len(official_shape) > 1, trained)
    return groups


def _loop_path(path) -> tuple[str, ...]:
    """A leaf's path in our (possibly boxed, possibly scanned) params -> the loop layout."""
    names = [str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey)]
    if names and names[0] == "params":
        names = names[1:]
    # A scanned run ``layers_{start}_{stop}`` stacks layers of one structure: ask the first.
    return tuple(f"layer_{n.split('_')[1]}" if n.startswith("layers_") else n for n in names)


def group_tree(model: UniFormerV2, attribute: str) -> Callable[[Any], Any]:
    """A function mapping a params tree to ``ParamGroup.<attribute>`` at every leaf."""
    groups = official_param_groups(model)

    def lookup(path, _):
        key = _loop_path(path)
        if key not in groups:
            raise KeyError(f"parameter {'/'.join(key)} has no official counterpart; "
                           "its optimiser group is undefined")
        return getattr(groups[key], attribute)

    return lambda params: jax.tree_util.tree_map_with_path(lookup, params)


def clip_grad_norm(max_norm: float) -> optax.GradientTransformation:
    """``torch.nn.utils.clip_grad_norm_``: scale by ``min(1, max_norm / (norm + 1e-6))``."""
    def update(updates, state, params=None):
        del params
        scale = jnp.minimum(1.0, max_norm / (optax.tree.norm(updates) + 1e-6))
        return jax.tree.map(lambda g: g * scale.astype(g.dtype), updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def scale_by_adam(b1: float, b2: float, eps: float) -> optax.GradientTransformation:
    """Adam's direction as ``torch.optim.AdamW`` computes it.

    ``m / (1 - b1^t) / (sqrt(v) / sqrt(1 - b2^t) + eps)`` with the bias corrections from
    ``expm1``: optax's float32 ``1 - 0.999**t`` is ~1.3e-5 relatively off at t = 1, which
    shrinks early steps by ~6.5e-6; PyTorch computes them in float64.
    """
    log_b1, log_b2 = math.log(b1), math.log(b2)

    def init(params):
        return optax.ScaleByAdamState(count=jnp.zeros([], jnp.int32),
                                      mu=optax.tree.zeros_like(params),
                                      nu=optax.tree.zeros_like(params))

    def update(updates, state, params=None):
        del params
        mu = jax.tree.map(lambda m, g: m + (1 - b1) * (g - m), state.mu, updates)  # torch's lerp
        nu = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * g * g, state.nu, updates)
        count = optax.safe_increment(state.count)
        t = count.astype(jnp.float32)
        correction1, correction2 = -jnp.expm1(t * log_b1), -jnp.expm1(t * log_b2)
        direction = jax.tree.map(
            lambda m, v: (m / correction1) / (jnp.sqrt(v) / jnp.sqrt(correction2) + eps), mu, nu)
        return direction, optax.ScaleByAdamState(count=count, mu=mu, nu=nu)

    return optax.GradientTransformation(init, update)


def make_optimizer(model: UniFormerV2, schedule: optax.Schedule, *, weight_decay: float = 0.05,
                   b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
                   clip_norm: float | None = 20.0) -> optax.GradientTransformation:
    """The official AdamW for ``model``'s parameters (frozen recipe when ``model.frozen``).

    Frozen parameters get no optimiser state and no update, and do not count in the
    clipping norm (official: they have no gradient). The group functions read only the
    tree's paths, so the same optimiser initialises from boxed or plain, scanned or
    unscanned parameters.
    """
    adamw = optax.chain(
        *([clip_grad_norm(clip_norm)] if clip_norm else []),
        scale_by_adam(b1, b2, eps),
        optax.add_decayed_weights(weight_decay, mask=group_tree(model, "decay")),
        optax.scale_by_learning_rate(schedule))
    trained = group_tree(model, "trained")
    labels = lambda p: jax.tree.map(lambda t: "train" if t else "freeze", trained(p))  # noqa: E731
    return optax.multi_transform({"train": adamw, "freeze": optax.set_to_zero()}, labels)
