"""Multi-view evaluation of a training state or of a workdir's checkpoint.

The softmax is averaged over each video's views (:func:`video_probabilities`),
and the counts are exact over hosts: each host reads its own share, all hosts run the
same number of batches (padding with masked examples), and the jitted step sums the
counts over the global batch. ``evaluate_workdir`` (``main.py eval``) restores a
checkpoint and writes eval.json and the plots.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import einops
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from uniformerv2_jax import config as config_lib
from uniformerv2_jax import run_dir, sharding, storage
from uniformerv2_jax.experiment import Experiment
from uniformerv2_jax.input import pipeline, sources
from uniformerv2_jax.labels import read_class_names
from uniformerv2_jax.model import UniFormerV2
from uniformerv2_jax.train_step import TrainState, topk_correct


def video_probabilities(model: UniFormerV2, variables: dict, videos: jax.Array) -> jax.Array:
    """Softmax averaged over each video's views: (B, V, T, H, W, 3) -> (B, C) float32."""
    logits = model.apply(variables, einops.rearrange(videos, "b v ... -> (b v) ..."))
    probs = jax.nn.softmax(logits.astype(jnp.float32), -1)
    return einops.reduce(probs, "(b v) c -> b c", "mean", v=videos.shape[1])


def eval_counts(state: TrainState, batch: dict, model: UniFormerV2) -> dict[str, jax.Array]:
    """Counts of one batch: ``confusion`` (C, C) (rows: true class, columns: predicted),
    ``top5`` correct and ``bad`` records, masked examples left out."""
    probs = video_probabilities(model, state.variables, batch["video"])
    num_classes = probs.shape[-1]
    mask = batch["mask"].astype(jnp.float32)
    truth = jax.nn.one_hot(batch["label"], num_classes) * mask[:, None]
    predicted = jax.nn.one_hot(jnp.argmax(probs, -1), num_classes)
    return {"confusion": (truth.T @ predicted).astype(jnp.int32),
            "top5": jnp.sum(topk_correct(probs, batch["label"], 5) * mask).astype(jnp.int32),
            "bad": jnp.sum(batch["bad"])}


def jit_eval_step(exp: Experiment) -> Callable:
    """``(state, global batch) -> counts`` (:func:`eval_counts`); call (and lower) it inside
    ``sharding.activate(exp.mesh, exp.rules)``."""
    return jax.jit(functools.partial(eval_counts, model=exp.model),
                   in_shardings=(exp.state_shardings, sharding.batch_sharding(exp.mesh)),
                   out_shardings=sharding.replicated(exp.mesh))


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


def class_names(config: ml_collections.ConfigDict) -> list[str] | None:
    """The names of ``config.data.class_names``, if it is set."""
    return read_class_names(config.data.class_names) if config.data.class_names else None


def eval_batch_count(exp: Experiment, source) -> int:
    """Batches every host runs over ``source`` (reads record counts: once per run)."""
    local = sharding.local_batch_size(exp.config.eval_batch_size, exp.mesh, "config.eval_batch_size")
    return sources.eval_batches(source, local, jax.process_count())


def run_eval(exp: Experiment, state: TrainState, source, class_names: Sequence[str] | None = None,
             num_batches: int = 0) -> dict[str, Any]:
    """Multi-view evaluation of ``state`` over ``source``: counts and accuracies.

    ``num_batches``: :func:`eval_batch_count` of ``source``, if already known.
    """
    c, m = exp.config, exp.model
    batches = pipeline.eval_dataset(
        source, **config_lib.pipeline_args(pipeline.eval_dataset, c),
        batch_size=sharding.local_batch_size(c.eval_batch_size, exp.mesh, "config.eval_batch_size"),
        clip_frames=m.t_size, crop_size=m.input_resolution, num_classes=m.num_classes,
        label_names=config_lib.label_names(c), num_batches=num_batches or eval_batch_count(exp, source))
    with sharding.activate(exp.mesh, exp.rules):
        step = jit_eval_step(exp)
        counts = accumulate(
            lambda b: step(state, sharding.global_batch(b, exp.mesh)),
            ({k: b[k] for k in ("video", "label", "mask", "bad")}
             for b in batches.as_numpy_iterator()))
    return {**summarize(counts, class_names), "confusion": counts["confusion"]}


def evaluate_workdir(workdir: str | os.PathLike, config: ml_collections.ConfigDict,
                     which: str = "best") -> dict[str, Any]:
    """``main.py eval``: evaluates a checkpoint of ``workdir`` on ``config.data.val``."""
    source = sources.resolve(config.data.val, "data.val", config.data.tfds_data_dir)
    exp, state, step = run_dir.restore(workdir, config, which)
    names = class_names(config)
    results = run_eval(exp, state, source, names)
    run_dir.write_outputs(storage.path(workdir), {**results, "step": step}, names,
                          run_dir.read_metrics(storage.path(workdir)))
    return {k: v for k, v in results.items() if k != "confusion"} | {"step": step}
