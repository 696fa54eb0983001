"""Video transforms: small pure TensorFlow functions on ``(T, H, W, 3)`` clips.

Every random transform takes a stateless ``seed`` (2,) and applies the SAME crop, flip
and colour parameters to every frame of a clip. Geometry follows the official code:
Inception-style random resized crop for training; short-side resize and three spatial
crops with SlowFast's ``ceil`` centre offset for testing.
"""

from __future__ import annotations

from typing import Sequence

import tensorflow as tf

UNIFORMERV2_MEAN = (0.45, 0.45, 0.45)  # the official configs (pixels scaled to [0, 1])
UNIFORMERV2_STD = (0.225, 0.225, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def resize_short_side(video: tf.Tensor, size: int, method: str = "bilinear") -> tf.Tensor:
    """(T, H, W, C) -> short side ``size``, long side ``long * size // short`` (floor)."""
    shape = tf.shape(video)
    h, w = shape[1], shape[2]
    new_h = tf.where(h <= w, size, h * size // w)
    new_w = tf.where(h <= w, w * size // h, size)
    resized = tf.image.resize(video, tf.stack([new_h, new_w]), method=method)
    return tf.cast(resized, video.dtype) if video.dtype == tf.uint8 else resized


def random_resized_crop(video: tf.Tensor, size: int, seed: tf.Tensor,
                        area: Sequence[float] = (0.08, 1.0),
                        ratio: Sequence[float] = (3 / 4, 4 / 3),
                        method: str = "bicubic") -> tf.Tensor:
    """Inception crop (area fraction and aspect ratio ranges), resized to size x size.

    One box for the whole clip. After 10 failed attempts the whole frame is used.
    (T, H, W, C) -> (T, size, size, C) float32.
    """
    shape = tf.shape(video)
    begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
        shape[1:], tf.zeros([1, 0, 4]), seed=seed, min_object_covered=0.0,
        aspect_ratio_range=tuple(ratio), area_range=tuple(area), max_attempts=10,
        use_image_if_no_bounding_boxes=True)
    crop = tf.slice(video, tf.concat([[0], begin], 0),
                    tf.concat([[shape[0]], crop_size], 0))
    return tf.image.resize(tf.cast(crop, tf.float32), (size, size), method=method)


def random_flip(video: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Left-right flip of the whole clip with probability 1/2."""
    flip = tf.random.stateless_uniform([], seed) < 0.5
    return tf.cond(flip, lambda: tf.reverse(video, axis=[2]), lambda: video)


def spatial_crop(video: tf.Tensor, size: int, index: int) -> tf.Tensor:
    """SlowFast's ``uniform_crop``: index 0/1/2 = start/centre/end along the long side.

    The centre offset is ``ceil((L - size) / 2)``, on both axes. (T, H, W, C) with the
    short side already ``size`` -> (T, size, size, C).
    """
    shape = tf.shape(video)
    h, w = shape[1], shape[2]
    y = (h - size + 1) // 2
    x = (w - size + 1) // 2
    if index != 1:
        end = index == 2
        y = tf.where(h > w, (h - size) if end else 0, y)
        x = tf.where(h > w, x, (w - size) if end else 0)
    return video[:, y:y + size, x:x + size]


def normalize(video: tf.Tensor, mean: Sequence[float] = UNIFORMERV2_MEAN,
              std: Sequence[float] = UNIFORMERV2_STD) -> tf.Tensor:
    """uint8 or [0, 255] float pixels -> (x / 255 - mean) / std, float32."""
    video = tf.cast(video, tf.float32) / 255.0
    return (video - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)
