"""Batch-level label transforms: label smoothing, mixup and cutmix (timm's semantics).

Each batch is mixed with itself reversed (sample i with sample B-1-i). Mixup blends whole
clips; cutmix pastes one box, the same in every frame, and sets the mixing weight to the
box's actual area. Targets come out as soft labels ``(B, num_classes)``.
"""

from __future__ import annotations

import tensorflow as tf


def smooth_one_hot(labels: tf.Tensor, num_classes: int, smoothing: float) -> tf.Tensor:
    """(B,) int -> (B, C): 1 - smoothing + smoothing / C on the label, smoothing / C elsewhere."""
    off = smoothing / num_classes
    return tf.one_hot(labels, num_classes, on_value=1.0 - smoothing + off, off_value=off)


def _beta(seed: tf.Tensor, alpha: float) -> tf.Tensor:
    seeds = tf.random.experimental.stateless_split(seed, 2)
    a = tf.random.stateless_gamma([], seeds[0], alpha)
    b = tf.random.stateless_gamma([], seeds[1], alpha)
    return a / (a + b)


def mix_batch(batch: dict, seed: tf.Tensor, num_classes: int, mixup_alpha: float = 0.0,
              cutmix_alpha: float = 0.0, switch_prob: float = 0.5,
              label_smoothing: float = 0.0) -> dict:
    """``video`` (B, T, H, W, C), ``label`` (B,) -> adds ``targets`` (B, num_classes).

    With both alphas set, cutmix is chosen with probability ``switch_prob`` per batch.
    """
    targets = smooth_one_hot(batch["label"], num_classes, label_smoothing)
    if mixup_alpha <= 0 and cutmix_alpha <= 0:
        return {**batch, "targets": targets}
    seeds = tf.random.experimental.stateless_split(seed, 4)
    video = batch["video"]
    flipped = tf.reverse(video, axis=[0])

    def mixup():
        lam = _beta(seeds[0], mixup_alpha)
        mixed = lam * tf.cast(video, tf.float32) + (1 - lam) * tf.cast(flipped, tf.float32)
        return tf.cast(mixed, video.dtype), lam

    def cutmix():
        lam = _beta(seeds[1], cutmix_alpha)
        h, w = tf.shape(video)[2], tf.shape(video)[3]
        cut = tf.sqrt(1.0 - lam)
        ch = tf.cast(cut * tf.cast(h, tf.float32), tf.int32)
        cw = tf.cast(cut * tf.cast(w, tf.float32), tf.int32)
        centre = tf.random.stateless_uniform([2], seeds[2])
        cy = tf.cast(centre[0] * tf.cast(h, tf.float32), tf.int32)
        cx = tf.cast(centre[1] * tf.cast(w, tf.float32), tf.int32)
        y0, y1 = tf.maximum(cy - ch // 2, 0), tf.minimum(cy + ch // 2, h)
        x0, x1 = tf.maximum(cx - cw // 2, 0), tf.minimum(cx + cw // 2, w)
        ys, xs = tf.range(h)[:, None], tf.range(w)[None, :]
        box = (ys >= y0) & (ys < y1) & (xs >= x0) & (xs < x1)  # (H, W)
        mixed = tf.where(box[None, None, :, :, None], flipped, video)
        area = tf.cast((y1 - y0) * (x1 - x0), tf.float32) / tf.cast(h * w, tf.float32)
        return mixed, 1.0 - area

    if mixup_alpha > 0 and cutmix_alpha > 0:
        use_cutmix = tf.random.stateless_uniform([], seeds[3]) < switch_prob
        video, lam = tf.cond(use_cutmix, cutmix, mixup)
    else:
        video, lam = cutmix() if cutmix_alpha > 0 else mixup()
    targets = lam * targets + (1 - lam) * tf.reverse(targets, axis=[0])
    return {**batch, "video": video, "targets": targets}
