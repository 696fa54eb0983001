"""Video transforms: geometry against the official rules, one set of parameters per clip."""

import math

import numpy as np
import pytest
import tensorflow as tf

from uniformerv2_jax.input import randaugment, transforms


def ramp_clip(frames=3, h=40, w=60):
    """Frame t, pixel (y, x) holds (t, y, x): crops can be read off the values."""
    t, y, x = np.meshgrid(np.arange(frames), np.arange(h), np.arange(w), indexing="ij")
    return tf.constant(np.stack([t, y, x], -1).astype(np.float32))


@pytest.mark.parametrize("h, w, expected", [(240, 320, (224, 298)), (320, 240, (298, 224)),
                                            (224, 224, (224, 224)), (101, 50, (452, 224))])
def test_resize_short_side_uses_the_floor_rule(h, w, expected):
    video = tf.zeros((2, h, w, 3), tf.uint8)
    out = transforms.resize_short_side(video, 224)
    assert tuple(out.shape[1:3]) == expected and out.dtype == tf.uint8


@pytest.mark.parametrize("h, w", [(40, 60), (60, 40)])
def test_three_crops_follow_slowfast_uniform_crop(h, w):
    size = 40  # the short side
    video = ramp_clip(h=h, w=w)
    for index in range(3):
        crop = transforms.spatial_crop(video, size, index).numpy()
        # Reference: SlowFast uniform_crop offsets.
        y = int(math.ceil((h - size) / 2))
        x = int(math.ceil((w - size) / 2))
        if h > w:
            y = {0: 0, 1: y, 2: h - size}[index]
        else:
            x = {0: 0, 1: x, 2: w - size}[index]
        assert crop.shape == (3, size, size, 3)
        assert crop[0, 0, 0, 1] == y and crop[0, 0, 0, 2] == x


def cut(video):
    """``frames_in`` of random_resized_crop for a decoded clip."""
    return lambda w: video[:, w[0]:w[0] + w[2], w[1]:w[1] + w[3]]


def test_random_resized_crop_is_one_box_for_the_whole_clip():
    video = ramp_clip(frames=4)
    for s in range(20):
        out = transforms.random_resized_crop(tf.shape(video)[1:3], cut(video), 16,
                                             tf.constant([s, 7]), method="bilinear")
        assert out.shape == (4, 16, 16, 3)
        out = out.numpy()
        # Same box in every frame: only the time channel differs between frames.
        for t in range(4):
            np.testing.assert_allclose(out[t, ..., 0], t, atol=1e-4)
            np.testing.assert_allclose(out[t, ..., 1:], out[0, ..., 1:], atol=1e-4)


def test_crop_area_and_aspect_stay_in_range():
    areas = []
    for s in range(200):
        top, left, height, width = transforms.crop_window(tf.constant([200, 200]), [s, 0]).numpy()
        assert 0 <= top <= 200 - height and 0 <= left <= 200 - width
        assert 3 / 4 - 0.02 <= width / height <= 4 / 3 + 0.02 or height == width == 200
        areas.append(height * width / 200**2)
    assert 0.07 <= min(areas) and max(areas) <= 1.0 and np.std(areas) > 0.1
    video = tf.zeros((1, 200, 200, 3))
    assert transforms.random_resized_crop([200, 200], cut(video), 8, [1, 1]).shape == (1, 8, 8, 3)


def test_flip_mirrors_every_frame_or_none():
    video = ramp_clip(frames=3)
    flips = set()
    for s in range(20):
        out = transforms.random_flip(video, tf.constant([s, 3])).numpy()
        flipped = out[:, 0, 0, 2] == 59
        assert flipped.all() or not flipped.any()
        flips.add(bool(flipped[0]))
    assert flips == {True, False}


def test_normalize_matches_the_official_constants():
    video = tf.constant([[[[0, 114, 255]]]], tf.uint8)
    out = transforms.normalize(video).numpy().ravel()
    np.testing.assert_allclose(out, (np.array([0, 114, 255]) / 255 - 0.45) / 0.225, atol=1e-6)


def test_augment_clip_rounds_flips_augments_and_normalizes():
    """The compiled last steps of a training clip: bicubic overshoot (below 0, above 255) is
    saturated before RandAugment, which sees uint8 frames as PIL would (equalize, drawn
    here, failed on negative values when RandAugment ran on the float clip)."""
    edges = np.zeros((2, 40, 60, 3), np.uint8)
    edges[:, :, 30:] = 255
    edges[:, 10:20] = 0
    video = transforms.random_resized_crop([40, 60], cut(tf.constant(edges)), 32, [1, 2])
    assert video.numpy().min() < 0 and video.numpy().max() > 255
    pixels = np.clip(np.round(video.numpy()), 0, 255)
    nothing = randaugment.Draw(tf.zeros([2], tf.int32), tf.constant([False, False]),
                               tf.zeros([2]), tf.ones([2]))
    for flip in (False, True):
        out = transforms.augment_clip(video, tf.constant(flip), nothing, True).numpy()
        expected = transforms.normalize(pixels[:, :, ::-1] if flip else pixels).numpy()
        np.testing.assert_allclose(out, expected, atol=1e-6)
    equalize = randaugment.OP_NAMES.index("Equalize")
    ops = nothing._replace(choice=tf.constant([equalize, 0]), apply=tf.constant([True, False]))
    out = transforms.augment_clip(video, tf.constant(False), ops, True, (0, 0, 0), (1, 1, 1))
    expected = randaugment.apply(tf.constant(pixels.astype(np.uint8)), ops, True).numpy()
    np.testing.assert_allclose(out.numpy() * 255, expected, atol=1e-3)
