"""The official optimiser: AdamW, warmup then cosine, gradient clipping, frozen backbone.

Official settings (SlowFast trainer of the UniFormerV2 repository): AdamW with betas
(0.9, 0.999), eps 1e-8, weight decay 0.05 on every parameter of two or more dimensions
(1-D parameters — biases, norms, ``class_embedding``, ``balance`` — get none; the
positional embedding and the 3-D video query are decayed); the learning rate rises
linearly from ``warmup_start_lr`` over the warmup, then follows a cosine to ``end_lr``;
gradients are clipped to global norm 20. With ``frozen``, only the global path
(``temporal_cls_token`` and the global blocks) and the head are trained.
"""

from __future__ import annotations

from typing import Any

import jax
import optax

# Parameters the official ``frozen`` recipe keeps trainable (everything else is CLIP's).
TRAINABLE_WHEN_FROZEN = ("temporal_cls_token", "global", "head_norm", "head", "balance")


def learning_rate_schedule(base_lr: float, total_steps: int, warmup_steps: int,
                           warmup_start_lr: float = 1e-6, end_lr: float = 1e-6) -> optax.Schedule:
    """Linear warmup from ``warmup_start_lr`` to ``base_lr``, then cosine to ``end_lr``."""
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"warmup_steps={warmup_steps} must be in [0, total_steps={total_steps}]")
    cosine = optax.cosine_decay_schedule(base_lr, max(total_steps - warmup_steps, 1),
                                         alpha=end_lr / base_lr if base_lr else 0.0)
    if warmup_steps == 0:
        return cosine
    warmup = optax.linear_schedule(warmup_start_lr, base_lr, warmup_steps)
    return optax.join_schedules([warmup, cosine], [warmup_steps])


def _path_names(path) -> list[str]:
    return [str(getattr(k, "key", getattr(k, "name", k))) for k in path]


def decay_mask(params: Any, decay_embeddings: bool = True) -> Any:
    """True where weight decay applies: parameters with 2+ dims (official rule).

    ``decay_embeddings=False`` also exempts the positional embedding and the video query.
    """
    def decays(path, leaf):
        names = _path_names(path)
        scanned = any(n.startswith("layers_") for n in names)  # a leading layer axis
        if leaf.ndim - int(scanned) < 2:
            return False
        return decay_embeddings or not ({"positional_embedding", "temporal_cls_token"} & set(names))

    return jax.tree_util.tree_map_with_path(decays, params)


def trainable_mask(params: Any, frozen: bool) -> Any:
    """True for trained parameters: all, or with ``frozen`` only the global path and head."""
    def trained(path, leaf):
        if not frozen:
            return True
        names = _path_names(path)
        # Inside a layer, only its global block trains; at top level, the named modules.
        return bool(set(names) & set(TRAINABLE_WHEN_FROZEN))

    return jax.tree_util.tree_map_with_path(trained, params)


def make_optimizer(*, base_lr: float, total_steps: int, warmup_steps: int,
                   weight_decay: float = 0.05, b1: float = 0.9, b2: float = 0.999,
                   eps: float = 1e-8, clip_norm: float | None = 20.0,
                   warmup_start_lr: float = 1e-6, end_lr: float = 1e-6, frozen: bool = False,
                   decay_embeddings: bool = True) -> optax.GradientTransformation:
    """The official AdamW. Its masks are functions of the parameter tree, so the same
    optimiser initialises from boxed (logically annotated) or plain parameters."""
    schedule = learning_rate_schedule(base_lr, total_steps, warmup_steps, warmup_start_lr, end_lr)
    adamw = optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay,
                        mask=lambda p: decay_mask(p, decay_embeddings))
    chain = [optax.clip_by_global_norm(clip_norm)] if clip_norm else []
    labels = lambda p: jax.tree.map(lambda t: "train" if t else "freeze",  # noqa: E731
                                    trainable_mask(p, frozen))
    chain.append(optax.multi_transform({"train": adamw, "freeze": optax.set_to_zero()}, labels))
    return optax.chain(*chain)
