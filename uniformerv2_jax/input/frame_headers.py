"""What a frame's first and last bytes say, before any pixel is decoded: JPEG or PNG, whole
or cut, and the size it declares (graph-mode TensorFlow; the input pipeline and the data
doctor both judge frames by these)."""

from __future__ import annotations

import functools

import tensorflow as tf

MAX_FRAME_SIDE = 8192  # pixels; larger declared frames are treated as bad records


def png_sizes(frames: tf.Tensor) -> tf.Tensor:
    """(N, 2) int64 (height, width) from each frame's PNG IHDR (garbage for other frames)."""
    fields = tf.cast(tf.io.decode_raw(tf.strings.substr(frames, 16, 8), tf.uint8), tf.int64)
    fields = tf.reshape(fields, [-1, 2, 4]) * tf.constant([2**24, 2**16, 2**8, 1], tf.int64)
    return tf.reverse(tf.reduce_sum(fields, axis=-1), axis=[1])


@functools.cache
def _blank_jpeg() -> bytes:
    with tf.init_scope():  # eagerly, also while a tf.data function is traced
        return tf.io.encode_jpeg(tf.zeros([1, 1, 3], tf.uint8)).numpy()


def is_jpeg(image: tf.Tensor) -> tf.Tensor:
    """Whether each frame starts with a JPEG start-of-image marker."""
    return tf.strings.substr(image, 0, 2) == b"\xff\xd8"


def declared_side(frames: tf.Tensor, jpeg: tf.Tensor) -> tf.Tensor:
    """(N,) the larger side each frame's header declares (JPEG SOF or PNG IHDR)."""
    # JPEG headers are read 16 to a loop step (the loop, not the reading, is what costs);
    # frames that are not JPEGs are read as a 1x1 JPEG, their sides taken from the IHDR.
    n = tf.size(frames)
    blank = tf.constant(_blank_jpeg())
    padded = tf.concat([tf.where(jpeg, frames, blank), tf.fill([-n % 16], blank)], 0)
    jpeg_sides = tf.map_fn(lambda row: tf.stack([tf.io.extract_jpeg_shape(row[i], tf.int64)[:2]
                                                 for i in range(16)]),
                           tf.reshape(padded, [-1, 16]), fn_output_signature=tf.int64)
    sides = tf.where(jpeg[:, None], tf.reshape(jpeg_sides, [-1, 2])[:n], png_sizes(frames))
    return tf.reduce_max(sides, axis=1)


def kinds(frames: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """(N,) bools: each frame is a whole JPEG (start and end markers: a cut one fails), and
    each is a PNG (its signature)."""
    jpeg = is_jpeg(frames) & (tf.strings.substr(frames, -2, 2) == b"\xff\xd9")
    return jpeg, tf.strings.substr(frames, 0, 8) == b"\x89PNG\r\n\x1a\n"


def frame_size(image: tf.Tensor) -> tf.Tensor:
    """(height, width) int32 of one JPEG or PNG frame, from its header (nothing decoded)."""
    return tf.cond(is_jpeg(image), lambda: tf.io.extract_jpeg_shape(image)[:2],
                   lambda: tf.cast(png_sizes(image[None])[0], tf.int32))
