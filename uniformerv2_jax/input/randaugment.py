"""RandAugment for clips, with timm's semantics (``rand-m7-n4-mstd0.5-inc1``) on uint8 pixels.

``num_layers`` operations are drawn with replacement from the op set; each is applied
with probability 1/2 at a magnitude drawn from N(m, mstd) clipped to [0, 10], with a
random sign for signed ops. One draw per CLIP: every frame gets the same operations,
magnitudes and signs (statistics-based ops such as equalize use each frame's own
histogram, as PIL does frame by frame in the official code).

Pixels are uint8, as the official code's PIL frames are, and each op computes what PIL
computes: blends in float32, clipped and truncated; PIL's integer grey; equalize,
autocontrast, posterize and solarize as PIL's lookup tables; the affine ops (rotate,
shear, translate) resample bicubically as PIL does at its pixel centres, edge pixels
repeated, values clipped and truncated, the fill grey 128: the official code builds the
op set with ``interpolation=cfg.AUG.INTERPOLATION`` ("bicubic") and no ``img_mean``, so
timm's ``_FILL``. Clips are (T, H, W, 3); the ops also compile with XLA (see
:func:`uniformerv2_jax.input.transforms.augment_clip`).
"""

from __future__ import annotations

import math
import re
from typing import NamedTuple

import tensorflow as tf

FILL = 128  # timm's _FILL: the official RandAugment is built without an img_mean
_LUMA = (19595, 38470, 7471)  # PIL's RGB -> L: (r, g, b) . _LUMA + 2**15 >> 16


class RandAugmentSpec(NamedTuple):
    num_layers: int = 2
    magnitude: float = 9.0
    magnitude_std: float = 0.0
    increasing: bool = False


class Draw(NamedTuple):
    """One clip's draw, (num_layers,) each: op index, applied, level in [0, 1], sign +-1."""
    choice: tf.Tensor
    apply: tf.Tensor
    level: tf.Tensor
    sign: tf.Tensor


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


def draw(seed: tf.Tensor, spec: RandAugmentSpec) -> Draw:
    """The clip's operations, keyed by the stateless ``seed`` (2,)."""
    seeds = tf.random.experimental.stateless_split(seed, 4)
    n = spec.num_layers
    choice = tf.random.stateless_uniform([n], seeds[0], 0, len(OP_NAMES), dtype=tf.int32)
    apply = tf.random.stateless_uniform([n], seeds[1]) < 0.5
    magnitude = spec.magnitude + spec.magnitude_std * tf.random.stateless_normal([n], seeds[2])
    level = tf.clip_by_value(magnitude, 0.0, 10.0) / 10.0
    sign = tf.where(tf.random.stateless_uniform([n], seeds[3]) < 0.5, -1.0, 1.0)
    return Draw(choice, apply, level, sign)


def apply(clip: tf.Tensor, ops: Draw, increasing: bool) -> tf.Tensor:
    """(T, H, W, 3) uint8 -> the drawn operations applied, uint8."""
    branches = list(_operations(increasing).values())

    def layer(i, clip):
        def run():
            return tf.switch_case(ops.choice[i], [lambda op=op: op(clip, ops.level[i], ops.sign[i])
                                                  for op in branches])
        return i + 1, tf.ensure_shape(tf.cond(ops.apply[i], run, lambda: clip), clip.shape)

    return tf.while_loop(lambda i, clip: i < tf.size(ops.choice), layer, (0, clip))[1]


def _product(factor: tf.Tensor, values: tf.Tensor) -> tf.Tensor:
    """float32 ``factor * values`` rounded on its own, as C computes it: the float64 product
    is exact, so rounding it once gives the float32 product, and no compiler may fuse it
    into a multiply-add with the next sum."""
    return tf.cast(tf.cast(factor, tf.float64) * tf.cast(values, tf.float64), tf.float32)


def _blend(degenerate: tf.Tensor, clip: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    """PIL's ``Image.blend(degenerate, clip, factor)``: float32, clipped, truncated."""
    difference = tf.cast(clip, tf.int32) - tf.cast(degenerate, tf.int32)
    value = tf.cast(degenerate, tf.float32) + _product(factor, difference)
    return tf.cast(tf.clip_by_value(value, 0.0, 255.0), tf.uint8)


def _gray(clip: tf.Tensor) -> tf.Tensor:
    """PIL's ``convert("L")``: (..., 3) uint8 -> (..., 1) int32."""
    rgb = tf.cast(clip, tf.int32)
    return (tf.reduce_sum(rgb * tf.constant(_LUMA), axis=-1, keepdims=True) + 2**15) // 2**16


def _channels(clip: tf.Tensor) -> tf.Tensor:
    """(T, H, W, 3) uint8 -> int32 values offset by 256 * (3 t + c): one range per channel."""
    frames = tf.shape(clip)[0]
    return tf.cast(clip, tf.int32) + tf.reshape(tf.range(frames * 3) * 256, [frames, 1, 1, 3])


def _lookup(clip: tf.Tensor, table: tf.Tensor) -> tf.Tensor:
    """Per-frame, per-channel lookup: ``table`` (3 T, 256) int32 applied to (T, H, W, 3)."""
    table = tf.reshape(table, [-1])
    # Written through a scatter, the table is computed once: XLA would otherwise fuse its
    # computation (sums over each channel's histogram) into the gather, once per pixel.
    table = tf.tensor_scatter_nd_update(tf.zeros_like(table), tf.range(tf.size(table))[:, None], table)
    return tf.cast(tf.gather(table, _channels(clip)), tf.uint8)


def _equalize(clip: tf.Tensor) -> tf.Tensor:
    """PIL's ImageOps.equalize, per frame and channel."""
    channels = tf.shape(clip)[0] * 3
    hist = tf.raw_ops.DenseBincount(input=tf.reshape(_channels(clip), [-1]), size=channels * 256,
                                    weights=tf.zeros([0], tf.int32))
    hist = tf.reshape(hist, [channels, 256])
    last = tf.gather(hist, tf.argmax(tf.cast(hist > 0, tf.int32) * tf.range(256)[None], axis=1),
                     batch_dims=1)
    step = (tf.reduce_sum(hist, axis=1) - last) // 255
    safe = tf.maximum(step, 1)[:, None]
    table = (tf.concat([tf.zeros_like(hist[:, :1]), tf.cumsum(hist, axis=1)[:, :-1]], 1)
             + safe // 2) // safe
    table = tf.where(step[:, None] > 0, tf.minimum(table, 255), tf.range(256)[None])
    return _lookup(clip, table)


def _autocontrast(clip: tf.Tensor) -> tf.Tensor:
    """PIL's ImageOps.autocontrast: ``int(i * scale + offset)`` per frame and channel."""
    lo = tf.reshape(tf.cast(tf.reduce_min(clip, axis=[1, 2]), tf.float64), [-1, 1])  # (3 T, 1)
    hi = tf.reshape(tf.cast(tf.reduce_max(clip, axis=[1, 2]), tf.float64), [-1, 1])
    scale = 255.0 / tf.maximum(hi - lo, 1.0)
    table = tf.range(256, dtype=tf.float64) * scale + -lo * scale
    table = tf.where(hi > lo, tf.clip_by_value(table, 0.0, 255.0), tf.range(256, dtype=tf.float64))
    return _lookup(clip, tf.cast(table, tf.int32))


def _smooth(clip: tf.Tensor) -> tf.Tensor:
    """PIL's SMOOTH filter (3x3, centre 5, /13, float32 sums, rounded); edge pixels kept."""
    h, w = tf.shape(clip)[1], tf.shape(clip)[2]
    x = tf.pad(tf.cast(clip, tf.int32), [[0, 0], [1, 1], [1, 1], [0, 0]])
    weights = (1 / 13, 5 / 13)

    def row(dy):  # PIL's KERNEL1x3 on row y + dy
        r = x[:, 1 + dy:h + 1 + dy]
        k = [weights[0], weights[1 if dy == 0 else 0], weights[0]]
        terms = [_product(tf.constant(k[i], tf.float32), r[:, :, i:w + i]) for i in range(3)]
        return terms[0] + terms[1] + terms[2]

    total = tf.zeros([], tf.float32) + row(1) + row(0) + row(-1)
    smooth = tf.cast(tf.clip_by_value(total + 0.5, 0.0, 255.0), tf.uint8)
    rows, columns = tf.range(h)[:, None], tf.range(w)[None]
    interior = (rows > 0) & (rows < h - 1) & (columns > 0) & (columns < w - 1)
    return tf.where(interior[None, :, :, None], smooth, clip)


def _cubic(v1, v2, v3, v4, d):
    """PIL's cubic convolution (a = -1) between ``v2`` and ``v3`` at fraction ``d``, its
    terms in its order (Geometry.c's ``BICUBIC``)."""
    p2 = -v1 + v3
    p3 = 2 * (v1 - v2) + v3 - v4
    p4 = -v1 + v2 - v3 + v4
    return v2 + d * (p2 + d * (p3 + d * p4))


def _taps(coordinate: tf.Tensor, size: tf.Tensor):
    """PIL's source coordinate along one axis (pixel centres at +0.5), float64 -> whether it
    falls in the frame, the index of the second of the 4 taps (int32), the fraction."""
    inside = (coordinate >= 0) & (coordinate < tf.cast(size, tf.float64))
    coordinate -= 0.5
    floor = tf.floor(coordinate)
    return inside, tf.cast(floor, tf.int32), coordinate - floor


def _resampled(value: tf.Tensor, inside: tf.Tensor) -> tf.Tensor:
    """PIL's interpolated float64 ``value`` clipped and truncated to uint8; FILL where the
    source point is not ``inside`` the frame."""
    value = tf.cast(tf.clip_by_value(value, 0.0, 255.0), tf.uint8)
    return tf.where(inside, value, tf.constant(FILL, tf.uint8))


def _affine(clip: tf.Tensor, matrix, along: str = "xy") -> tf.Tensor:
    """PIL's ``transform(AFFINE, matrix, BICUBIC, fillcolor=FILL)`` of every frame.
    (T, H, W, 3) uint8 -> (T, H, W, 3) uint8; ``matrix`` the 6 coefficients (PIL's order).

    Output pixel (x, y) reads the input at ``matrix . (x + 0.5, y + 0.5, 1)``; outside the
    frame it is FILL, inside the 4 x 4 neighbours (edge pixels repeated) are interpolated
    along x, then along y, in float64, clipped to [0, 255] and truncated. ``along`` = "x"
    or "y" for a matrix that keeps the other coordinate (shear, translate): there the
    other pass has fraction 0, which PIL's formula returns exactly, so it is left out (4
    taps, not 16).
    """
    matrix = [tf.cast(m, tf.float64) for m in matrix]
    shape = tf.shape(clip)
    h, w = shape[1], shape[2]
    y, x = tf.meshgrid(tf.range(h, dtype=tf.float64) + 0.5, tf.range(w, dtype=tf.float64) + 0.5,
                       indexing="ij")
    x_inside, x0, dx = _taps(matrix[0] * x + matrix[1] * y + matrix[2], w)
    y_inside, y0, dy = _taps(matrix[3] * x + matrix[4] * y + matrix[5], h)
    inside, dx, dy = (tf.reshape(v, [1, h * w]) for v in (x_inside & y_inside, dx, dy))

    def index(row, column):  # (H W,) into a plane, edge pixels repeated
        return tf.reshape(tf.clip_by_value(row, 0, h - 1) * w + tf.clip_by_value(column, 0, w - 1), [-1])

    # Rows of taps, each interpolated along x (a single tap: fraction 0), then across rows.
    if along == "xy":
        tap_rows = [[index(y0 + i, x0 + j) for j in (-1, 0, 1, 2)] for i in (-1, 0, 1, 2)]
    elif along == "x":
        tap_rows = [[index(y0, x0 + j) for j in (-1, 0, 1, 2)]]
    else:
        tap_rows = [[index(y0 + i, x0)] for i in (-1, 0, 1, 2)]

    # Frame by frame (an XLA loop), each frame planar (3, H W): XLA:CPU gathers element by
    # element and then runs the arithmetic along the pixels of a plane, which is faster than
    # gathering every frame at once or unrolling over frames (figures in docs/performance.md).
    def frame_affine(frame):
        planes = tf.reshape(tf.transpose(frame, [2, 0, 1]), [3, h * w])

        def row(taps):
            values = [tf.cast(tf.gather(planes, k, axis=1), tf.float64) for k in taps]
            return values[0] if len(values) == 1 else _cubic(*values, dx)

        rows = [row(taps) for taps in tap_rows]
        value = _resampled(rows[0] if len(rows) == 1 else _cubic(*rows, dy), inside)
        return tf.transpose(tf.reshape(value, [3, h, w]), [1, 2, 0])

    return tf.ensure_shape(tf.map_fn(frame_affine, clip), clip.shape)  # static H, W kept


def _translate_rows(clip: tf.Tensor, pixels: tf.Tensor) -> tf.Tensor:
    """``_affine(clip, [1, 0, 0, 0, 1, pixels], along="y")`` by whole rows: every output row
    reads the same input rows, so each tap is one gather of rows (faster than per pixel)."""
    h = tf.shape(clip)[1]
    # PIL's 0 * x + 1 * y + pixels, exactly; x is read at its own centre, always inside.
    inside, y0, dy = _taps(tf.range(h, dtype=tf.float64) + 0.5 + tf.cast(pixels, tf.float64), h)
    taps = [tf.cast(tf.gather(clip, tf.clip_by_value(y0 + k, 0, h - 1), axis=1), tf.float64)
            for k in (-1, 0, 1, 2)]
    return _resampled(_cubic(*taps, dy[:, None, None]), inside[:, None, None])


def _enhance_factor(level: tf.Tensor, sign: tf.Tensor, increasing: bool) -> tf.Tensor:
    """timm: 1 +- 0.9 * level (increasing), or 1.8 * level + 0.1, in float64 as Python
    computes it, then rounded to the float32 that PIL's blend takes."""
    level, sign = tf.cast(level, tf.float64), tf.cast(sign, tf.float64)
    return tf.cast(1.0 + sign * (level * 0.9) if increasing else level * 1.8 + 0.1, tf.float32)


def _operations(increasing: bool):
    """The op set as functions (clip (T, H, W, 3) uint8, level in [0, 1], sign +-1) -> clip."""
    def rotate(clip, level, sign):  # PIL's Image.rotate about the centre, counter-clockwise
        angle = -(tf.cast(sign, tf.float64) * tf.cast(level, tf.float64) * 30.0 * (math.pi / 180.0))
        cos, sin = tf.cos(angle), tf.sin(angle)
        cx, cy = (tf.cast(tf.shape(clip)[i], tf.float64) / 2.0 for i in (2, 1))
        return _affine(clip, [cos, sin, cos * -cx + sin * -cy + cx,
                              -sin, cos, -sin * -cx + cos * -cy + cy])

    def posterize(clip, level, sign):
        bits = 4 - tf.cast(level * 4, tf.int32) if increasing else tf.cast(level * 4, tf.int32)
        mask = tf.bitwise.bitwise_and(tf.bitwise.left_shift(255, 8 - tf.clip_by_value(bits, 0, 8)), 255)
        return tf.bitwise.bitwise_and(clip, tf.cast(mask, tf.uint8))

    def solarize(clip, level, sign):
        threshold = 256 - tf.cast(level * 256, tf.int32) if increasing else tf.cast(level * 256, tf.int32)
        return tf.where(tf.cast(clip, tf.int32) >= threshold, 255 - clip, clip)

    def solarize_add(clip, level, sign):
        added = tf.minimum(tf.cast(clip, tf.int32) + tf.cast(level * 110, tf.int32), 255)
        return tf.where(clip < 128, tf.cast(added, tf.uint8), clip)

    def enhance(degenerate):
        def op(clip, level, sign):
            return _blend(degenerate(clip), clip, _enhance_factor(level, sign, increasing))
        return op

    def contrast_degenerate(clip):  # PIL: the frame's mean grey, rounded
        gray = tf.cast(_gray(clip), tf.float64)
        return tf.cast(tf.floor(tf.reduce_mean(gray, axis=[1, 2], keepdims=True) + 0.5), tf.uint8)

    def shear(axis):
        def op(clip, level, sign):
            s = tf.cast(sign, tf.float64) * tf.cast(level, tf.float64) * 0.3
            return _affine(clip, [1.0, s, 0.0, 0.0, 1.0, 0.0] if axis == "x"
                           else [1.0, 0.0, 0.0, s, 1.0, 0.0], along=axis)
        return op

    def translate(axis):
        def op(clip, level, sign):
            size = tf.cast(tf.shape(clip)[2 if axis == "x" else 1], tf.float64)
            pixels = tf.cast(sign, tf.float64) * tf.cast(level, tf.float64) * 0.45 * size
            if axis == "y":
                return _translate_rows(clip, pixels)
            return _affine(clip, [1.0, 0.0, pixels, 0.0, 1.0, 0.0], along="x")
        return op

    return {
        "AutoContrast": lambda clip, level, sign: _autocontrast(clip),
        "Equalize": lambda clip, level, sign: _equalize(clip),
        "Invert": lambda clip, level, sign: 255 - clip,
        "Rotate": rotate,
        "Posterize": posterize,
        "Solarize": solarize,
        "SolarizeAdd": solarize_add,
        "Color": enhance(lambda clip: tf.cast(_gray(clip), tf.uint8)),
        "Contrast": enhance(contrast_degenerate),
        "Brightness": enhance(tf.zeros_like),
        "Sharpness": enhance(_smooth),
        "ShearX": shear("x"),
        "ShearY": shear("y"),
        "TranslateXRel": translate("x"),
        "TranslateYRel": translate("y"),
    }


OP_NAMES = tuple(_operations(True))
