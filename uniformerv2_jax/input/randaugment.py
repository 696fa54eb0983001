"""RandAugment for clips, with timm's semantics (``rand-m7-n4-mstd0.5-inc1``).

``num_layers`` operations are drawn with replacement from the op set; each is applied
with probability 1/2 at a magnitude drawn from N(m, mstd) clipped to [0, 10], with a
random sign for signed ops. One draw per CLIP: every frame gets the same operations,
magnitudes and signs (statistics-based ops such as equalize use each frame's own
histogram, as PIL does frame by frame in the official code). Pixels are float32 in
[0, 255]; the fill of geometric ops is the official mean (0.45 * 255).
"""

from __future__ import annotations

import math
import re
from typing import NamedTuple

import tensorflow as tf

FILL = 115.0  # round(0.45 * 255)
_GRAY = (0.299, 0.587, 0.114)


class RandAugmentSpec(NamedTuple):
    num_layers: int = 2
    magnitude: float = 9.0
    magnitude_std: float = 0.0
    increasing: bool = False


def parse_spec(spec: str) -> RandAugmentSpec:
    """``"rand-m7-n4-mstd0.5-inc1"`` -> RandAugmentSpec(4, 7.0, 0.5, True)."""
    parts = spec.split("-")
    if parts[0] != "rand":
        raise ValueError(f"RandAugment spec {spec!r} must start with 'rand'")
    values = RandAugmentSpec()._asdict()
    keys = {"n": "num_layers", "m": "magnitude", "mstd": "magnitude_std", "inc": "increasing"}
    for part in parts[1:]:
        match = re.fullmatch(r"(mstd|inc|m|n)([\d.]+)", part)
        if not match:
            raise ValueError(f"RandAugment spec {spec!r}: unknown part {part!r}")
        key, value = keys[match.group(1)], float(match.group(2))
        values[key] = int(value) if key == "num_layers" else bool(value) if key == "increasing" else value
    return RandAugmentSpec(**values)


def _blend(degenerate: tf.Tensor, clip: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    return tf.clip_by_value(degenerate + factor * (clip - degenerate), 0.0, 255.0)


def _gray(clip: tf.Tensor) -> tf.Tensor:
    return tf.reduce_sum(clip * tf.constant(_GRAY), axis=-1, keepdims=True)


def _affine(clip: tf.Tensor, transform: tf.Tensor) -> tf.Tensor:
    """Inverse-mapped affine warp (output (x, y) reads input (a0 x + a1 y + a2, ...))."""
    shape = tf.shape(clip)
    transforms = tf.tile(tf.reshape(tf.cast(transform, tf.float32), [1, 8]), [shape[0], 1])
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=clip, transforms=transforms, output_shape=shape[1:3], fill_value=FILL,
        interpolation="BILINEAR", fill_mode="CONSTANT")


def _equalize(clip: tf.Tensor) -> tf.Tensor:
    """PIL's ImageOps.equalize, per frame and channel."""
    t, h, w = tf.shape(clip)[0], tf.shape(clip)[1], tf.shape(clip)[2]
    values = tf.cast(tf.transpose(clip, [0, 3, 1, 2]), tf.int32)
    values = tf.reshape(values, [t * 3, h * w])
    hist = tf.math.bincount(values, minlength=256, maxlength=256, axis=-1)  # (T*3, 256)
    last = tf.gather(hist, tf.argmax(tf.cast(hist > 0, tf.int32) * tf.range(256)[None], axis=1),
                     batch_dims=1)
    step = (tf.reduce_sum(hist, axis=1) - last) // 255
    safe = tf.maximum(step, 1)[:, None]
    lut = (tf.concat([tf.zeros_like(hist[:, :1]), tf.cumsum(hist, axis=1)[:, :-1]], 1)
           + safe // 2) // safe
    lut = tf.where(step[:, None] > 0, tf.minimum(lut, 255), tf.range(256)[None])
    out = tf.gather(lut, values, batch_dims=1)
    return tf.cast(tf.transpose(tf.reshape(out, [t, 3, h, w]), [0, 2, 3, 1]), tf.float32)


def _autocontrast(clip: tf.Tensor) -> tf.Tensor:
    lo = tf.reduce_min(clip, axis=[1, 2], keepdims=True)
    hi = tf.reduce_max(clip, axis=[1, 2], keepdims=True)
    scaled = (clip - lo) * 255.0 / tf.maximum(hi - lo, 1e-6)
    return tf.where(hi > lo, scaled, clip)


def _sharpness(clip: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    """PIL's SMOOTH filter (3x3, centre 5, /13) on the interior, blended with the clip."""
    kernel = tf.constant([[1, 1, 1], [1, 5, 1], [1, 1, 1]], tf.float32) / 13.0
    kernel = tf.tile(kernel[:, :, None, None], [1, 1, 3, 1])
    smooth = tf.nn.depthwise_conv2d(clip, kernel, [1, 1, 1, 1], "VALID")
    smooth = tf.pad(smooth, [[0, 0], [1, 1], [1, 1], [0, 0]])
    h, w = tf.shape(clip)[1], tf.shape(clip)[2]
    interior = tf.pad(tf.ones([h - 2, w - 2]), [[1, 1], [1, 1]])[None, :, :, None] > 0
    degenerate = tf.where(interior, tf.round(smooth), clip)
    return _blend(degenerate, clip, factor)


def _enhance_factor(level: tf.Tensor, sign: tf.Tensor, increasing: bool) -> tf.Tensor:
    """timm: 1 +- 0.9 * level (increasing), or 0.1 + 1.8 * level."""
    return 1.0 + sign * 0.9 * level if increasing else 0.1 + 1.8 * level


def _operations(increasing: bool):
    """The op set as functions (clip, level in [0, 1], sign +-1) -> clip."""
    def rotate(clip, level, sign):
        angle = sign * level * 30.0 * math.pi / 180.0
        h, w = tf.cast(tf.shape(clip)[1], tf.float32), tf.cast(tf.shape(clip)[2], tf.float32)
        cos, sin = tf.cos(angle), tf.sin(angle)
        x_offset = ((w - 1) - (cos * (w - 1) - sin * (h - 1))) / 2.0
        y_offset = ((h - 1) - (sin * (w - 1) + cos * (h - 1))) / 2.0
        return _affine(clip, tf.stack([cos, -sin, x_offset, sin, cos, y_offset, 0.0, 0.0]))

    def posterize(clip, level, sign):
        bits = 4 - tf.cast(level * 4, tf.int32) if increasing else tf.cast(level * 4, tf.int32)
        shift = 8 - tf.clip_by_value(bits, 0, 8)
        return tf.cast(tf.bitwise.left_shift(tf.bitwise.right_shift(tf.cast(clip, tf.int32), shift), shift),
                       tf.float32)

    def solarize(clip, level, sign):
        threshold = 256.0 - tf.floor(level * 256) if increasing else tf.floor(level * 256)
        return tf.where(clip >= threshold, 255.0 - clip, clip)

    def solarize_add(clip, level, sign):
        add = tf.floor(level * 110)
        return tf.where(clip < 128, tf.minimum(clip + add, 255.0), clip)

    def color(clip, level, sign):
        return _blend(_gray(clip), clip, _enhance_factor(level, sign, increasing))

    def contrast(clip, level, sign):
        mean = tf.round(tf.reduce_mean(_gray(clip), axis=[1, 2, 3], keepdims=True))
        return _blend(mean, clip, _enhance_factor(level, sign, increasing))

    def brightness(clip, level, sign):
        return _blend(tf.zeros_like(clip), clip, _enhance_factor(level, sign, increasing))

    def sharpness(clip, level, sign):
        return _sharpness(clip, _enhance_factor(level, sign, increasing))

    def shear(axis):
        def op(clip, level, sign):
            s = sign * level * 0.3
            return _affine(clip, tf.stack([1.0, s, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0]) if axis == "x"
                           else tf.stack([1.0, 0.0, 0.0, s, 1.0, 0.0, 0.0, 0.0]))
        return op

    def translate(axis):
        def op(clip, level, sign):
            size = tf.cast(tf.shape(clip)[2 if axis == "x" else 1], tf.float32)
            pixels = sign * level * 0.45 * size
            return _affine(clip, tf.stack([1.0, 0.0, pixels, 0.0, 1.0, 0.0, 0.0, 0.0]) if axis == "x"
                           else tf.stack([1.0, 0.0, 0.0, 0.0, 1.0, pixels, 0.0, 0.0]))
        return op

    return {
        "AutoContrast": lambda clip, level, sign: _autocontrast(clip),
        "Equalize": lambda clip, level, sign: _equalize(clip),
        "Invert": lambda clip, level, sign: 255.0 - clip,
        "Rotate": rotate,
        "Posterize": posterize,
        "Solarize": solarize,
        "SolarizeAdd": solarize_add,
        "Color": color,
        "Contrast": contrast,
        "Brightness": brightness,
        "Sharpness": sharpness,
        "ShearX": shear("x"),
        "ShearY": shear("y"),
        "TranslateXRel": translate("x"),
        "TranslateYRel": translate("y"),
    }


def rand_augment(clip: tf.Tensor, seed: tf.Tensor, spec: RandAugmentSpec) -> tf.Tensor:
    """(T, H, W, 3) pixels in [0, 255] -> augmented float32 clip, one draw per clip."""
    ops = list(_operations(spec.increasing).values())
    clip = tf.cast(clip, tf.float32)
    seeds = tf.random.experimental.stateless_split(seed, 4)
    n = spec.num_layers
    choice = tf.random.stateless_uniform([n], seeds[0], 0, len(ops), dtype=tf.int32)
    apply = tf.random.stateless_uniform([n], seeds[1]) < 0.5
    magnitude = spec.magnitude + spec.magnitude_std * tf.random.stateless_normal([n], seeds[2])
    level = tf.clip_by_value(magnitude, 0.0, 10.0) / 10.0
    sign = tf.where(tf.random.stateless_uniform([n], seeds[3]) < 0.5, -1.0, 1.0)
    for i in range(n):
        branches = [lambda op=op, i=i, x=clip: op(x, level[i], sign[i]) for op in ops]
        clip = tf.cond(apply[i], lambda i=i, b=branches: tf.switch_case(choice[i], b),
                       lambda x=clip: x)
    return clip
