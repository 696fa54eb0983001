"""The evaluation's pictures: a confusion matrix and the learning curves (PNG)."""

from __future__ import annotations

import io
import os
from collections.abc import Sequence

import numpy as np

from uniformerv2_jax import storage


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")  # files only; no display on servers
    import matplotlib.pyplot as plt
    return plt


def confusion_matrix_png(confusion: np.ndarray, class_names: Sequence[str] | None,
                         path: str | os.PathLike) -> None:
    """Row-normalised confusion matrix; class names on the axes when there are few."""
    plt = _pyplot()
    rows = confusion.sum(axis=1, keepdims=True)
    normalised = confusion / np.maximum(rows, 1)
    n = confusion.shape[0]
    size = min(4 + 0.3 * n, 16)
    fig, ax = plt.subplots(figsize=(size, size))
    image = ax.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(f"{int(confusion.sum())} videos, row-normalised")
    if class_names is not None and n <= 40:
        ax.set_xticks(range(n), class_names, rotation=90)
        ax.set_yticks(range(n), class_names)
        if n <= 10:
            for i in range(n):
                for j in range(n):
                    ax.text(j, i, str(int(confusion[i, j])), ha="center", va="center",
                            color="white" if normalised[i, j] > 0.5 else "black")
    fig.tight_layout()
    save_png(fig, path)


def learning_curve_png(history: Sequence[dict], path: str | os.PathLike) -> None:
    """Training loss and top-1 by step, with validation top-1 where it was measured."""
    plt = _pyplot()
    train = [h for h in history if "train/loss" in h]
    val = [h for h in history if "val/top1" in h]
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(11, 4))
    if train:
        steps = [h["step"] for h in train]
        loss_ax.plot(steps, [h["train/loss"] for h in train], label="train loss")
        acc_ax.plot(steps, [h["train/top1"] for h in train], label="train top-1 (batch)")
    if val:
        acc_ax.plot([h["step"] for h in val], [h["val/top1"] for h in val], "o-",
                    label="validation top-1")
    loss_ax.set_xlabel("step")
    loss_ax.set_ylabel("cross-entropy")
    acc_ax.set_xlabel("step")
    acc_ax.set_ylabel("top-1")
    acc_ax.set_ylim(0, 1)
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    save_png(fig, path)


def save_png(fig, path: str | os.PathLike) -> None:
    """Renders ``fig`` in memory and writes it in one piece (local or ``gs://``)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    _pyplot().close(fig)
    storage.write_atomic(path, buffer.getvalue())
