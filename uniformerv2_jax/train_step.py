"""The training state and the train / eval steps, pure functions to be jitted.

One step, top to bottom: forward in training mode (dropout, drop-path, BatchNorm batch
statistics), cross-entropy against hard labels or soft targets (label smoothing,
mixup/cutmix), gradients, the optax update, metrics. A step whose loss or gradients are
not finite, or whose update would make a parameter non-finite, changes nothing but the
step counter and the RNG (``finite`` = 0 in its metrics): a NaN never reaches the
parameters, the optimiser state or a checkpoint.
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from uniformerv2_jax.model import UniFormerV2


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    rng: jax.Array

    @property
    def variables(self) -> dict[str, Any]:
        """The model's variables, as ``model.apply`` takes them."""
        return {"params": self.params, "batch_stats": self.batch_stats}


def create_train_state(tx: optax.GradientTransformation, variables: dict, rng: jax.Array) -> TrainState:
    """The state at step 0 of model ``variables`` (``model.init``'s, boxed with their logical
    axes or not, or converted weights). The key is kept as raw key data (uint32): checkpoints
    hold plain arrays."""
    params = variables["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      batch_stats=variables.get("batch_stats", {}), opt_state=tx.init(params),
                      rng=jax.random.key_data(rng))


def cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Mean cross-entropy; ``targets`` are class ids (B,) or distributions (B, C)."""
    if targets.ndim == 1:
        targets = jax.nn.one_hot(targets, logits.shape[-1])
    return -jnp.mean(jnp.sum(targets * jax.nn.log_softmax(logits.astype(jnp.float32)), -1))


def topk_correct(logits: jax.Array, labels: jax.Array, k: int) -> jax.Array:
    """(B,) 1.0 where the label is among the k largest logits."""
    k = min(k, logits.shape[-1])
    return jnp.any(jax.lax.top_k(logits, k)[1] == labels[:, None], axis=-1).astype(jnp.float32)


def train_step(state: TrainState, batch: dict, model: UniFormerV2,
               tx: optax.GradientTransformation) -> tuple[TrainState, dict]:
    """One optimisation step on ``batch`` (``video``, ``label``, optional ``targets``)."""
    rng, dropout_rng = jax.random.split(state.rng)
    targets = batch.get("targets", batch["label"])

    def loss_fn(params):
        logits, updates = model.apply(
            {"params": params, "batch_stats": state.batch_stats}, batch["video"], train=True,
            rngs={"dropout": dropout_rng}, mutable=["batch_stats"])
        return cross_entropy(logits, targets), (logits, updates.get("batch_stats", {}))

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & jnp.isfinite(optax.tree.norm(params))
    keep_if_finite = lambda new, old: jax.tree.map(  # noqa: E731
        lambda n, o: jnp.where(finite, n, o), new, old)
    new_state = state.replace(
        step=state.step + 1, rng=rng,
        params=keep_if_finite(params, state.params),
        batch_stats=keep_if_finite(batch_stats, state.batch_stats),
        opt_state=keep_if_finite(opt_state, state.opt_state))
    metrics = {
        "loss": loss,
        "top1": topk_correct(logits, batch["label"], 1).mean(),
        "top5": topk_correct(logits, batch["label"], 5).mean(),
        "grad_norm": grad_norm,
        "param_norm": optax.tree.norm(new_state.params),
        "finite": finite.astype(jnp.float32),
    }
    return new_state, metrics
