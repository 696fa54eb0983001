"""Class probabilities for one video file (any container PyAV decodes: mp4, webm, avi, ...).

The file is decoded at its own frame rate, the official test views are taken (clips x
crops, as in evaluation), and the softmax is averaged over them.
"""

from __future__ import annotations

import os
from typing import Sequence

import jax
import numpy as np
import tensorflow as tf

from uniformerv2_jax import storage
from uniformerv2_jax.input import pipeline, writer
from uniformerv2_jax.labels import LABELS_DIR, read_class_names
from uniformerv2_jax.model import UniFormerV2

# A head's class count -> the class list it most likely uses (override with --class_names).
DEFAULT_CLASS_NAMES = {400: "kinetics400_uniformerv2_order.txt", 600: "kinetics600.txt",
                       700: "kinetics700.txt", 710: "kinetics710.txt", 339: "moments_in_time_v1.txt",
                       174: "something_something_v2.txt", 200: "activitynet.txt",
                       101: "ucf101.txt", 51: "hmdb51.txt"}


def class_names_for(num_classes: int, path: str | os.PathLike | None = None) -> list[str]:
    """Names from ``path``, else the shipped list for this class count, else ``class_i``."""
    if path is None and num_classes in DEFAULT_CLASS_NAMES:
        path = LABELS_DIR / DEFAULT_CLASS_NAMES[num_classes]
    if path is None:
        return [f"class_{i}" for i in range(num_classes)]
    names = read_class_names(path)
    if len(names) != num_classes:
        raise ValueError(f"{path} lists {len(names)} classes, the model has {num_classes}")
    return names


def video_views(path: str | os.PathLike, *, clip_frames: int, crop_size: int, num_clips: int,
                num_crops: int, dense_stride: int | None = None, fps: float | None = None
                ) -> np.ndarray:
    """(views, T, S, S, 3) normalised float32 from the file at ``path``."""
    path = os.fspath(path)
    if not storage.path(path).is_file():
        raise FileNotFoundError(f"video not found: {path}")
    try:
        with storage.local_copy(path) as local:  # one download for both reads
            frames = writer.read_video(local, fps=fps or native_fps(local), short_side=crop_size)
    except Exception as e:  # noqa: BLE001 - PyAV raises many kinds; all mean "unreadable"
        raise ValueError(f"{path}: cannot decode the video ({type(e).__name__}: {e})") from None
    video = tf.constant(frames)
    views = pipeline.evaluation_views(
        tf.shape(video)[0], lambda i: tf.gather(video, i), clip_frames=clip_frames,
        crop_size=crop_size, num_clips=num_clips, num_crops=num_crops, dense_stride=dense_stride)
    return views.numpy()


def native_fps(path: str) -> float:
    import av

    with av.open(path) as container:
        stream = container.streams.video[0]
        return float(stream.average_rate or stream.guessed_rate or 30.0)


def predict(model: UniFormerV2, variables: dict, views: np.ndarray) -> np.ndarray:
    """Softmax averaged over views: (V, T, S, S, 3) -> (num_classes,)."""
    logits = jax.jit(model.apply)(variables, views)
    return np.asarray(jax.nn.softmax(logits.astype(np.float32), -1).mean(0))


def top_k(probs: np.ndarray, names: Sequence[str], k: int = 5) -> list[tuple[str, float]]:
    order = np.argsort(-probs)[:k]
    return [(names[i], float(probs[i])) for i in order]


def format_top_k(video: str, ranked: list[tuple[str, float]]) -> str:
    lines = [f"{video}:"] + [f"  {p:7.2%}  {name}" for name, p in ranked]
    return "\n".join(lines)

