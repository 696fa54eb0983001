"""Which frames of a video make a clip: the official sparse (TSN) sampling, and dense.

All functions are pure TensorFlow on scalars, for use inside ``tf.data`` before decoding
(only the chosen JPEGs are decoded). ``num_frames`` is the video's frame count.
"""

from __future__ import annotations

import tensorflow as tf


def _segment(num_frames: tf.Tensor, clip_frames: int) -> tf.Tensor:
    """The official segment length: max(0, (num_frames - 1) / T), float64."""
    return tf.maximum(tf.cast(num_frames - 1, tf.float64) / clip_frames, 0.0)


def sparse_train_indices(num_frames: tf.Tensor, clip_frames: int, seed: tf.Tensor) -> tf.Tensor:
    """One random frame in each of T segments (official training sampler) -> (T,) int32.

    Frame i is uniform over ``[round(seg*i), round(seg*(i+1))]`` (inclusive, rounding half
    to even as NumPy does), capped at the last frame. ``seed`` is a stateless seed (2,).
    """
    seg = _segment(num_frames, clip_frames)
    i = tf.range(clip_frames, dtype=tf.float64)
    start = tf.cast(tf.round(seg * i), tf.int32)
    end = tf.cast(tf.round(seg * (i + 1)), tf.int32)
    u = tf.random.stateless_uniform([clip_frames], seed, dtype=tf.float64)
    index = start + tf.cast(tf.floor(u * tf.cast(end - start + 1, tf.float64)), tf.int32)
    return tf.minimum(index, tf.cast(num_frames, tf.int32) - 1)


def sparse_test_indices(num_frames: tf.Tensor, clip_frames: int, clip: int,
                        num_clips: int) -> tf.Tensor:
    """Test clip ``clip`` of ``num_clips``: ``round(seg*i) + int(seg/(K+1) * (clip+1))``."""
    seg = _segment(num_frames, clip_frames)
    i = tf.range(clip_frames, dtype=tf.float64)
    offset = tf.cast(tf.floor(seg / (num_clips + 1) * (clip + 1)), tf.int32)
    index = tf.cast(tf.round(seg * i), tf.int32) + offset
    return tf.minimum(index, tf.cast(num_frames, tf.int32) - 1)


def dense_indices(num_frames: tf.Tensor, clip_frames: int, stride: int,
                  offset: tf.Tensor) -> tf.Tensor:
    """``offset + stride * i``, wrapping around a video that is too short (DMVR's rule)."""
    index = tf.cast(offset, tf.int32) + stride * tf.range(clip_frames, dtype=tf.int32)
    return tf.math.floormod(index, tf.maximum(tf.cast(num_frames, tf.int32), 1))


def dense_train_offset(num_frames: tf.Tensor, clip_frames: int, stride: int,
                       seed: tf.Tensor) -> tf.Tensor:
    """Uniform start in ``[0, max(num_frames - (T - 1) * stride, 1))``."""
    high = tf.maximum(tf.cast(num_frames, tf.int32) - (clip_frames - 1) * stride, 1)
    return tf.random.stateless_uniform([], seed, minval=0, maxval=high, dtype=tf.int32)


def dense_test_offsets(num_frames: tf.Tensor, clip_frames: int, stride: int,
                       num_clips: int) -> tf.Tensor:
    """K evenly spaced starts, ``linspace(0, max(0, n - T*stride), K)`` truncated (DMVR)."""
    last = tf.maximum(tf.cast(num_frames, tf.int32) - clip_frames * stride, 0)
    return tf.cast(tf.linspace(0.0, tf.cast(last, tf.float32), num_clips), tf.int32)
