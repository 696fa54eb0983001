"""Label smoothing, mixup and cutmix on batches."""

import numpy as np
import tensorflow as tf

from uniformerv2_jax.input import mixing


def batch(b=4, t=2, h=8, w=8):
    video = tf.constant(np.arange(b, dtype=np.float32)[:, None, None, None, None]
                        * np.ones((b, t, h, w, 3), np.float32))  # clip i is filled with i
    return {"video": video, "label": tf.constant([0, 1, 2, 3])}


def test_label_smoothing_targets():
    out = mixing.mix_batch(batch(), tf.constant([0, 0]), num_classes=5, label_smoothing=0.1)
    targets = out["targets"].numpy()
    np.testing.assert_allclose(targets.sum(1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(targets[0], [0.92, 0.02, 0.02, 0.02, 0.02], rtol=1e-6)


def test_mixup_blends_clips_and_labels_with_the_same_weight():
    out = mixing.mix_batch(batch(), tf.constant([1, 2]), num_classes=4, mixup_alpha=0.8)
    video, targets = out["video"].numpy(), out["targets"].numpy()
    lam = targets[0, 0]  # clip 0 mixed with clip 3: value = lam * 0 + (1 - lam) * 3
    np.testing.assert_allclose(video[0], (1 - lam) * 3, rtol=1e-5)
    np.testing.assert_allclose(targets[0], [lam, 0, 0, 1 - lam], rtol=1e-5)
    np.testing.assert_allclose(targets.sum(1), 1.0, rtol=1e-6)


def test_cutmix_pastes_one_box_in_every_frame_and_weights_by_its_area():
    for s in range(10):
        out = mixing.mix_batch(batch(), tf.constant([s, 5]), num_classes=4, cutmix_alpha=1.0)
        video, targets = out["video"].numpy(), out["targets"].numpy()
        pasted = video[1] == 2.0  # clip 1 receives pixels of clip 2
        np.testing.assert_array_equal(pasted[0], pasted[1])  # same box in both frames
        area = pasted[0, ..., 0].mean()
        np.testing.assert_allclose(targets[1], [0, 1 - area, area, 0], atol=1e-6)
