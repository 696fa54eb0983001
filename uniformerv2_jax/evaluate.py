"""Multi-view evaluation: softmax averaged over each video's views, exact over hosts.

Every video counts once: each host reads its own share, all hosts run the same number of
batches (padding with masked examples), and the counts are summed over the global batch
by the jitted step itself.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from uniformerv2_jax.model import UniFormerV2
from uniformerv2_jax.train_step import TrainState, eval_step, topk_correct


def eval_counts(state: TrainState, batch: dict, model: UniFormerV2) -> dict[str, jax.Array]:
    """Counts of one batch: ``confusion`` (C, C) (rows: true class, columns: predicted),
    ``top5`` correct and ``bad`` records, masked examples left out."""
    probs = eval_step(state, batch, model)
    num_classes = probs.shape[-1]
    mask = batch["mask"].astype(jnp.float32)
    truth = jax.nn.one_hot(batch["label"], num_classes) * mask[:, None]
    predicted = jax.nn.one_hot(jnp.argmax(probs, -1), num_classes)
    return {"confusion": (truth.T @ predicted).astype(jnp.int32),
            "top5": jnp.sum(topk_correct(probs, batch["label"], 5) * mask).astype(jnp.int32),
            "bad": jnp.sum(batch["bad"])}


def accumulate(step: Callable[[dict], dict], batches: Iterable[dict]) -> dict[str, np.ndarray]:
    """Runs ``step`` over ``batches`` and sums its counts (fetched once, at the end)."""
    totals = None
    for batch in batches:
        counts = step(batch)
        totals = counts if totals is None else jax.tree.map(jnp.add, totals, counts)
    if totals is None:
        raise ValueError("the evaluation set is empty")
    return jax.tree.map(lambda x: np.asarray(jax.device_get(x)), totals)


def summarize(counts: dict[str, np.ndarray], class_names: Sequence[str] | None = None) -> dict[str, Any]:
    """Top-1, top-5 and mean per-class accuracy (over classes present) from the counts."""
    confusion = counts["confusion"]
    support = confusion.sum(axis=1)
    total = int(support.sum())
    if total == 0:
        raise ValueError("no valid video was evaluated")
    present = support > 0
    per_class = np.diag(confusion)[present] / support[present]
    out = {
        "videos": total,
        "bad_records": int(counts["bad"]),
        "top1": float(np.trace(confusion) / total),
        "top5": float(counts["top5"] / total),
        "mean_class_accuracy": float(per_class.mean()),
    }
    if class_names is not None:
        names = np.asarray(class_names)[present]
        out["per_class_accuracy"] = {str(n): float(a) for n, a in zip(names, per_class)}
    return out
