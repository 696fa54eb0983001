"""RandAugment: timm's spec and op semantics against PIL on uint8 frames, one draw per clip."""

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageEnhance, ImageOps

from uniformerv2_jax.input import randaugment, transforms


def test_parse_spec():
    assert randaugment.parse_spec("rand-m7-n4-mstd0.5-inc1") == (4, 7.0, 0.5, True)
    assert randaugment.parse_spec("rand-m9") == (2, 9.0, 0.0, False)
    with pytest.raises(ValueError, match="unknown part 'x3'"):
        randaugment.parse_spec("rand-m7-x3")


def image(seed=0, h=48, w=64):
    """Blocks of random colours with noise: every pixel value, hard edges."""
    rng = np.random.default_rng(seed)
    coarse = np.kron(rng.integers(0, 256, (h // 4, w // 4, 3)), np.ones((4, 4, 1)))
    return np.clip(coarse + rng.integers(-20, 20, (h, w, 3)), 0, 255).astype(np.uint8)


FILL = (128, 128, 128)  # timm's _FILL: the official create_random_augment passes no img_mean


def pil_op(name, im, level, sign):
    """The official op (timm's, increasing levels) on one PIL frame."""
    factor = 1 + sign * 0.9 * level
    shear, w, h = sign * level * 0.3, *im.size

    def affine(*coefficients):
        return im.transform(im.size, Image.AFFINE, coefficients, resample=Image.BICUBIC, fillcolor=FILL)

    return {
        "AutoContrast": lambda: ImageOps.autocontrast(im),
        "Equalize": lambda: ImageOps.equalize(im),
        "Invert": lambda: ImageOps.invert(im),
        "Rotate": lambda: im.rotate(sign * level * 30, resample=Image.BICUBIC, fillcolor=FILL),
        "Posterize": lambda: ImageOps.posterize(im, 4 - int(level * 4)),
        "Solarize": lambda: ImageOps.solarize(im, 256 - int(level * 256)),
        "SolarizeAdd": lambda: im.point([min(255, i + int(level * 110)) if i < 128 else i
                                         for i in range(256)] * 3),
        "Color": lambda: ImageEnhance.Color(im).enhance(factor),
        "Contrast": lambda: ImageEnhance.Contrast(im).enhance(factor),
        "Brightness": lambda: ImageEnhance.Brightness(im).enhance(factor),
        "Sharpness": lambda: ImageEnhance.Sharpness(im).enhance(factor),
        "ShearX": lambda: affine(1, shear, 0, 0, 1, 0),
        "ShearY": lambda: affine(1, 0, 0, shear, 1, 0),
        "TranslateXRel": lambda: affine(1, 0, sign * level * 0.45 * w, 0, 1, 0),
        "TranslateYRel": lambda: affine(1, 0, 0, 0, 1, sign * level * 0.45 * h),
    }[name]()


OPS = randaugment._operations(increasing=True)
COMPILED = {name: tf.function(op, jit_compile=True) for name, op in OPS.items()}
GEOMETRIC = {"Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel"}


@pytest.mark.parametrize("name", randaugment.OP_NAMES)
def test_ops_compute_what_pil_computes(name):
    frames = np.stack([image(seed) for seed in range(3)])  # (T, H, W, 3), each its own statistics
    for level, sign in ((0.375, 1.0), (0.6875, -1.0), (0.9375, 1.0)):  # exact in float32
        expected = np.stack([np.asarray(pil_op(name, Image.fromarray(f), level, sign)) for f in frames])
        args = (tf.constant(frames), tf.constant(level), tf.constant(sign))
        np.testing.assert_array_equal(OPS[name](*args).numpy(), expected, err_msg=name)
        # Compiled with XLA: the same, but for a fused multiply-add in the interpolation. It
        # moves the interpolated value by about a float32 ulp (255 * 2**-23 ~ 3e-5 of a
        # level): the rounded level changes by at most 1, and only where the exact value is
        # that close to a half level, for far fewer than 1e-3 of the pixels.
        difference = np.abs(COMPILED[name](*args).numpy().astype(int) - expected)
        if name in GEOMETRIC:
            assert difference.max() <= 1 and (difference > 0).mean() < 1e-3, name
        else:
            assert not difference.any(), name


@pytest.mark.parametrize("name", ["Color", "Contrast", "Brightness", "Sharpness"])
def test_enhance_ops_without_increasing_levels_compute_what_pil_computes(name):
    """timm's inc0 factors, 1.8 * level + 0.1: computed in float64 as Python does, then
    rounded to float32 by PIL's blend (float32 arithmetic is one step off at some levels)."""
    frames = np.stack([image(seed) for seed in range(3)])
    op = randaugment._operations(increasing=False)[name]
    for level in (0.2, 0.35, 0.7, 0.95):
        level32 = float(np.float32(level))  # the level our draw holds
        enhance = getattr(ImageEnhance, name)
        expected = np.stack([np.asarray(enhance(Image.fromarray(f)).enhance(level32 * 1.8 + 0.1))
                             for f in frames])
        out = op(tf.constant(frames), tf.constant(level32, tf.float32), tf.constant(1.0))
        np.testing.assert_array_equal(out.numpy(), expected, err_msg=f"{name} at {level}")


def test_one_draw_per_clip_and_deterministic_given_the_seed():
    spec = randaugment.parse_spec("rand-m7-n4-mstd0.5-inc1")
    clip = tf.constant(np.repeat(image(2)[None], 4, axis=0))
    outputs = []
    for s in range(12):
        ops = randaugment.draw(tf.constant([s, 9]), spec)
        out = randaugment.apply(clip, ops, spec.increasing).numpy()
        for t in range(1, 4):  # identical frames stay identical: same ops and magnitudes
            np.testing.assert_array_equal(out[t], out[0])
        compiled = transforms.augment_clip(tf.cast(clip, tf.float32), tf.constant(False), ops,
                                           spec.increasing, mean=(0, 0, 0), std=(1, 1, 1))
        # The compiled program: at most one level (as above), plus float32 rounding of /255.
        assert np.abs(compiled.numpy() * 255 - out).max() <= 1.01
        outputs.append(out)
    again = randaugment.apply(clip, randaugment.draw(tf.constant([3, 9]), spec), True).numpy()
    np.testing.assert_array_equal(again, outputs[3])
    changed = [not np.array_equal(o, clip.numpy()) for o in outputs]
    assert sum(changed) >= 8  # with 4 ops at p=0.5 almost every draw changes the clip
