"""A training run's directory: the config it saved, its metrics, its checkpoints, and the
evaluation outputs written into it."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import jax
import ml_collections

from uniformerv2_jax import config as config_lib
from uniformerv2_jax import plots, storage
from uniformerv2_jax.checkpoint import Checkpoints
from uniformerv2_jax.experiment import Experiment, build
from uniformerv2_jax.train_step import TrainState


def read_metrics(workdir: storage.epath.Path) -> list[dict]:
    """The rows of ``workdir/metrics.jsonl`` (none if it does not exist)."""
    path = workdir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def write_outputs(workdir: storage.epath.Path, results: dict, class_names: Sequence[str] | None,
                  history: list[dict]) -> None:
    """eval.json, the confusion-matrix and learning-curve PNGs (process 0)."""
    if jax.process_index() != 0:
        return
    confusion = results["confusion"]
    summary = {k: v for k, v in results.items() if k != "confusion"}
    summary["confusion"] = confusion.tolist()
    storage.write_atomic(workdir / "eval.json", json.dumps(summary, indent=1))
    plots.confusion_matrix_png(confusion, class_names, workdir / "confusion_matrix.png")
    plots.learning_curve_png(history, workdir / "learning_curve.png")


def load_config(workdir: str | os.PathLike) -> ml_collections.ConfigDict:
    """The config a training run saved in its workdir."""
    path = storage.path(workdir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not a training workdir (no config.json)")
    return ml_collections.ConfigDict(json.loads(path.read_text()))


def restore(workdir: str | os.PathLike, config: ml_collections.ConfigDict,
            which: str = "best") -> tuple[Experiment, TrainState, int]:
    """The experiment and the ``best`` (by validation top-1), ``latest`` or numbered step."""
    config_lib.validate(config, training=False)
    exp = build(config)
    directory = storage.path(workdir) / "checkpoints"
    checkpoints = Checkpoints(directory, keep=config.keep, asynchronous=False)
    try:
        # "best" falls back to the newest when no step has a validation score.
        step = (checkpoints.best_step() if which == "best" else None if which == "latest"
                else int(which))
        restored = checkpoints.restore(exp.abstract_state, step)
    finally:
        checkpoints.close()
    if restored is None:
        raise FileNotFoundError(f"{directory}: no checkpoint to evaluate")
    step, state, _ = restored
    return exp, state, step
