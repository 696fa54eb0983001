"""Class probabilities for one video file (any container PyAV decodes: mp4, webm, avi, ...).

The file is decoded at its own frame rate, the official test views are taken (clips x
crops, as in evaluation), and the softmax is averaged over them.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import numpy as np
import tensorflow as tf

from uniformerv2_jax import storage
from uniformerv2_jax.evaluate import video_probabilities
from uniformerv2_jax.input import pipeline, writer
from uniformerv2_jax.model import UniFormerV2


def video_views(path: str | os.PathLike, *, clip_frames: int, crop_size: int, num_clips: int,
                num_crops: int, dense_stride: int = 0, fps: float | None = None
                ) -> np.ndarray:
    """(views, T, S, S, 3) normalised float32 from the file at ``path``."""
    path = os.fspath(path)
    if not storage.path(path).is_file():
        raise FileNotFoundError(f"video not found: {path}")
    try:
        frames, _ = writer.read_video_file(path, crop_size, fps)
    except Exception as e:  # noqa: BLE001 - PyAV raises many kinds; all mean "unreadable"
        raise ValueError(f"{path}: cannot decode the video ({type(e).__name__}: {e})") from None
    video = tf.constant(frames)
    views = pipeline.evaluation_views(
        tf.shape(video)[0], lambda i: tf.gather(video, i), clip_frames=clip_frames,
        crop_size=crop_size, num_clips=num_clips, num_crops=num_crops, dense_stride=dense_stride)
    return views.numpy()


def predict(model: UniFormerV2, variables: dict, views: np.ndarray) -> np.ndarray:
    """Softmax averaged over views: (V, T, S, S, 3) -> (num_classes,)."""
    probs = jax.jit(functools.partial(video_probabilities, model))(variables, views[None])
    return np.asarray(probs[0])


def top_k(probs: np.ndarray, names: Sequence[str], k: int = 5) -> list[tuple[str, float]]:
    order = np.argsort(-probs)[:k]
    return [(names[i], float(probs[i])) for i in order]


def format_top_k(video: str, ranked: list[tuple[str, float]]) -> str:
    lines = [f"{video}:"] + [f"  {p:7.2%}  {name}" for name, p in ranked]
    return "\n".join(lines)


class TrainedModel(NamedTuple):
    """A model ready for inference, with the test views and class list it was trained with."""
    model: UniFormerV2
    variables: dict
    num_clips: int
    num_crops: int
    class_names: str | None  # the class-list file the training config names
    experiment: Any = None  # a training workdir's Experiment (mesh, shardings), else None


def load_trained(directory: str | os.PathLike, which: str = "best") -> TrainedModel:
    """A converted directory (``main.py convert``; 4 clips x 3 crops) or a training workdir
    (its ``which`` checkpoint, the config's views and class list)."""
    from uniformerv2_jax import run_dir
    from uniformerv2_jax.convert.saved import MODEL_FILE, load_converted

    directory = storage.path(directory)
    if (directory / MODEL_FILE).is_file():
        model, variables = load_converted(directory)
        return TrainedModel(model, variables, 4, 3, None)
    config = run_dir.load_config(directory)
    exp, state, _ = run_dir.restore(directory, config, which)
    d = config.data
    return TrainedModel(exp.model, state.variables, d.num_clips, d.num_crops, d.class_names or None, exp)
