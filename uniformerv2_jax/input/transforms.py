"""Video transforms: small pure TensorFlow functions on ``(T, H, W, 3)`` clips.

Every random transform takes a stateless ``seed`` (2,) and applies the SAME crop, flip
and colour parameters to every frame of a clip. Geometry follows the official code:
Inception-style random resized crop for training; short-side resize and three spatial
crops with SlowFast's ``ceil`` centre offset for testing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import tensorflow as tf

from uniformerv2_jax.input import randaugment

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


def crop_window(frame_size: tf.Tensor, seed: tf.Tensor, area: Sequence[float] = (0.08, 1.0),
                ratio: Sequence[float] = (3 / 4, 4 / 3)) -> tf.Tensor:
    """Inception crop box (area fraction and aspect ratio ranges) for frames of ``frame_size``
    (height, width): ``(top, left, height, width)``. After 10 failed attempts, the whole frame."""
    frame_shape = tf.concat([tf.cast(frame_size, tf.int32), [3]], 0)
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        frame_shape, tf.zeros([1, 0, 4]), seed=seed, min_object_covered=0.0,
        aspect_ratio_range=tuple(ratio), area_range=tuple(area), max_attempts=10,
        use_image_if_no_bounding_boxes=True)
    return tf.concat([begin[:2], size[:2]], 0)


def random_resized_crop(frame_size: tf.Tensor, frames_in: Callable[[tf.Tensor], tf.Tensor],
                        size: int, seed: tf.Tensor, area: Sequence[float] = (0.08, 1.0),
                        ratio: Sequence[float] = (3 / 4, 4 / 3),
                        method: str = "bicubic") -> tf.Tensor:
    """Inception crop, resized to size x size: one box for the whole clip.

    ``frames_in(window)`` returns the clip's frames cut to the :func:`crop_window` box, as
    (T, h, w, C) (decoding only that part). -> (T, size, size, C) float32.
    """
    window = crop_window(frame_size, seed, area, ratio)
    return tf.image.resize(frames_in(window), (size, size), method=method)


def flip_draw(seed: tf.Tensor) -> tf.Tensor:
    """Whether a clip is flipped: probability 1/2, keyed by ``seed``."""
    return tf.random.stateless_uniform([], seed) < 0.5


def random_flip(video: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Left-right flip of the whole clip with probability 1/2."""
    return tf.cond(flip_draw(seed), lambda: tf.reverse(video, axis=[2]), lambda: video)


@tf.function(jit_compile=True)
def _augment(video, flip, ops, increasing, mean, std):
    clip = tf.saturate_cast(tf.round(video), tf.uint8)
    clip = tf.cond(flip, lambda: tf.reverse(clip, axis=[2]), lambda: clip)
    return normalize(randaugment.apply(clip, ops, increasing), mean, std)


def augment_clip(video: tf.Tensor, flip: tf.Tensor, ops: randaugment.Draw, increasing: bool,
                 mean: Sequence[float] = UNIFORMERV2_MEAN,
                 std: Sequence[float] = UNIFORMERV2_STD) -> tf.Tensor:
    """A training clip's RandAugment, as the official code runs it, on uint8 frames.

    (T, H, W, 3) float pixels (from the resize) -> rounded to uint8 -> flipped if ``flip``
    -> the drawn ``ops`` -> normalised float32. One XLA program per clip shape: each op a
    single pass or two, fused with the steps around it.
    """
    return _augment(video, flip, ops, increasing, tuple(mean), tuple(std))


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
